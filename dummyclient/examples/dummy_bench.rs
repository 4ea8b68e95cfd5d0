//! `dummy_bench`: dummy-client operations against a running real client
//! (`scripts/bench/dummy.sh` starts the store): zero-copy `put_from` / `get_into`
//! from registered host memory at 4 KiB, 64 KiB, 1 MiB and 16 MiB (p50/p99, GB/s),
//! copy-style `put` / `get` at 4 KiB, 64 × 1 MiB batches, `is_exist`, 128-key
//! `batch_is_exist`, single-thread memcpy of the same sizes in the same run and,
//! when `MC_REMOTE_SEGMENT` names another real client's segment, 16 MiB transfers
//! to and from that host.

#![allow(clippy::disallowed_methods)] // reads its settings from the environment

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mooncake_dummyclient::{DummyClient, HostMemAllocator, Item};
use mooncake_proto::ReplicateConfig;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn memcpy_gbps(size: usize) -> f64 {
    let src = vec![7u8; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src);
    let mut runs = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        runs.push(t.elapsed());
    }
    runs.sort();
    gbps(size, runs[runs.len() / 2])
}

/// memcpy into a different destination each time, cycling through `span` bytes —
/// the access pattern of a store, whose every put lands in fresh space (a hot
/// same-buffer memcpy runs from the last-level cache for sizes that fit).
fn memcpy_cold_gbps(size: usize, span: usize) -> f64 {
    let src = vec![7u8; size];
    let mut dst = vec![1u8; span];
    let slots = span / size;
    let mut runs = Vec::new();
    for i in 0..(3 * slots).max(21) {
        let at = (i % slots) * size;
        let t = Instant::now();
        dst[at..at + size].copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        runs.push(t.elapsed());
    }
    runs.sort();
    gbps(size, runs[runs.len() / 2])
}

/// Registered host memory: `n` buffers of `size` bytes, source and destination.
struct Buffers {
    src: u64,
    dst: u64,
}

fn buffers(dummy: &DummyClient, bytes: u64) -> Buffers {
    let alloc = HostMemAllocator::new();
    let src = alloc.alloc(bytes).expect("alloc");
    let dst = alloc.alloc(bytes).expect("alloc");
    dummy.register_buffer(src, bytes).expect("register");
    dummy.register_buffer(dst, bytes).expect("register");
    // SAFETY: `src` is a fresh, exclusively owned allocation of `bytes` bytes.
    unsafe { std::ptr::write_bytes(src as *mut u8, 0x5a, bytes as usize) };
    Buffers { src, dst }
}

fn single_ops(dummy: &DummyClient, bufs: &Buffers, cfg: &ReplicateConfig, tag: &str) {
    for (size, iters) in [
        (4usize << 10, 2000),
        (64 << 10, 1000),
        (1 << 20, 200),
        (16 << 20, 30),
    ] {
        let (mut put, mut get) = (Vec::new(), Vec::new());
        for i in 0..iters {
            let key = format!("bench-{tag}-{size}-{i}");
            let t = Instant::now();
            dummy.put_from(&key, bufs.src, size as u64, cfg).unwrap();
            put.push(t.elapsed());
            let t = Instant::now();
            let r = dummy.get_into(&key, bufs.dst, size as u64);
            get.push(t.elapsed());
            assert_eq!(r, Ok(size as u64));
        }
        put.sort();
        get.sort();
        let m = memcpy_gbps(size);
        let cold = memcpy_cold_gbps(size, 512 << 20);
        let (p, g) = (gbps(size, pct(&put, 0.5)), gbps(size, pct(&get, 0.5)));
        println!(
            "{tag} {:>6} KiB: put_from p50 {:.1} us p99 {:.1} us ({p:.2} GB/s) | get_into p50 {:.1} us p99 {:.1} us ({g:.2} GB/s) | memcpy hot {m:.2} GB/s, cold-destination {cold:.2} GB/s | put/get = {:.0}%/{:.0}% of cold memcpy",
            size >> 10,
            us(pct(&put, 0.5)),
            us(pct(&put, 0.99)),
            us(pct(&get, 0.5)),
            us(pct(&get, 0.99)),
            100.0 * p / cold,
            100.0 * g / cold,
        );
        dummy.remove_all(true).unwrap();
    }
}

fn batches(dummy: &DummyClient, bufs: &Buffers, cfg: &ReplicateConfig, tag: &str) {
    let size = 1u64 << 20;
    let srcs: Vec<u64> = (0..64).map(|i| bufs.src + i * size).collect();
    let dsts: Vec<u64> = (0..64).map(|i| bufs.dst + i * size).collect();
    let sizes = vec![size; 64];
    let (mut put, mut get) = (Vec::new(), Vec::new());
    for round in 0..10 {
        let keys: Vec<String> = (0..64)
            .map(|i| format!("batch-{tag}-{round}-{i}"))
            .collect();
        let items = |addrs: &[u64]| -> Vec<Item> {
            keys.iter()
                .zip(addrs.iter().zip(&sizes))
                .map(|(k, (&a, &n))| Item::new(k.clone(), a, n))
                .collect()
        };
        let (put_items, get_items) = (items(&srcs), items(&dsts));
        let t = Instant::now();
        let r = dummy.batch_put_from(&put_items, cfg, false);
        put.push(t.elapsed());
        assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
        let t = Instant::now();
        let r = dummy.batch_get_into(&get_items);
        get.push(t.elapsed());
        assert!(r.iter().all(|r| *r == Ok(size)), "{r:?}");
        dummy.remove_all(true).unwrap();
    }
    put.sort();
    get.sort();
    let m = memcpy_gbps(64 << 20);
    let cold = memcpy_cold_gbps(64 << 20, 512 << 20);
    let (p, g) = (
        gbps(64 << 20, pct(&put, 0.5)),
        gbps(64 << 20, pct(&get, 0.5)),
    );
    println!(
        "{tag} 64 x 1 MiB: batch_put_from {p:.2} GB/s | batch_get_into {g:.2} GB/s | memcpy hot {m:.2} GB/s, cold-destination {cold:.2} GB/s | put/get = {:.0}%/{:.0}% of hot, {:.0}%/{:.0}% of cold memcpy",
        100.0 * p / m,
        100.0 * g / m,
        100.0 * p / cold,
        100.0 * g / cold,
    );
}

fn main() {
    let socket =
        PathBuf::from(std::env::var("MC_SOCKET").expect("MC_SOCKET: the real client's socket"));
    let options = mooncake_dummyclient::ConnectOptions::default()
        .with_call_ring(std::env::var_os("MC_DISABLE_CALL_RING").is_none());
    let dummy = DummyClient::connect_with_options(&socket, "", options).expect("connect");
    let bufs = buffers(&dummy, 64 << 20);
    let cfg = ReplicateConfig::default();
    let remote = std::env::var("MC_REMOTE_SEGMENT").ok();

    if std::env::var("MC_ONLY_REMOTE").is_err() {
        single_ops(&dummy, &bufs, &cfg, "local");
        // Copy-style calls (warm-up style, bytes in and out).
        let value = vec![0x33u8; 4096];
        let (mut put, mut get) = (Vec::new(), Vec::new());
        for i in 0..2000 {
            let key = format!("bytes-{i}");
            let t = Instant::now();
            dummy.put(&key, &value, &cfg).unwrap();
            put.push(t.elapsed());
            let t = Instant::now();
            assert_eq!(dummy.get(&key).unwrap().len(), 4096);
            get.push(t.elapsed());
        }
        put.sort();
        get.sort();
        println!(
            "local      4 KiB bytes: put p50 {:.1} us p99 {:.1} us | get p50 {:.1} us p99 {:.1} us",
            us(pct(&put, 0.5)),
            us(pct(&put, 0.99)),
            us(pct(&get, 0.5)),
            us(pct(&get, 0.99))
        );
        dummy.remove_all(true).unwrap();
        batches(&dummy, &bufs, &cfg, "local");
        // Existence probes.
        let keys: Vec<String> = (0..128).map(|i| format!("exist-{i}")).collect();
        let small: Vec<(&str, &[u8])> = keys.iter().map(|k| (k.as_str(), &b"x"[..])).collect();
        dummy.batch_put(&small, &cfg, false);
        let n = 5000;
        let t = Instant::now();
        for i in 0..n {
            assert_eq!(dummy.is_exist(&keys[i % 128]), Ok(true));
        }
        let single = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..500 {
            assert!(dummy.batch_is_exist(&keys).iter().all(|r| *r == Ok(true)));
        }
        let batch = 500.0 * 128.0 / t.elapsed().as_secs_f64();
        println!("is_exist: {single:.0} ops/s | batch_is_exist(128): {batch:.0} keys/s");
        dummy.remove_all(true).unwrap();
    }

    if let Some(remote) = remote {
        // Every replica on the other host: puts are transfers out, gets transfers in.
        let cfg = ReplicateConfig::default().with_preferred_segments(vec![remote.clone()]);
        dummy
            .put_from("placement-probe", bufs.src, 4096, &cfg)
            .unwrap();
        let list = dummy
            .batch_get_replicas(&["placement-probe".into()])
            .remove(0)
            .unwrap();
        assert_eq!(
            list.replicas[0].segment_name, remote,
            "replica placed remotely"
        );
        let size = 16usize << 20;
        let (mut put, mut get) = (Vec::new(), Vec::new());
        for i in 0..30 {
            let key = format!("remote-{i}");
            let t = Instant::now();
            dummy.put_from(&key, bufs.src, size as u64, &cfg).unwrap();
            put.push(t.elapsed());
            let t = Instant::now();
            assert_eq!(dummy.get_into(&key, bufs.dst, size as u64), Ok(size as u64));
            get.push(t.elapsed());
        }
        put.sort();
        get.sort();
        println!(
            "cross-host 16 MiB: put_from p50 {:.0} us ({:.2} GB/s) | get_into p50 {:.0} us ({:.2} GB/s)",
            us(pct(&put, 0.5)),
            gbps(size, pct(&put, 0.5)),
            us(pct(&get, 0.5)),
            gbps(size, pct(&get, 0.5)),
        );
        dummy.remove_all(true).unwrap();
        batches(&dummy, &bufs, &cfg, "cross-host");
    }
}
