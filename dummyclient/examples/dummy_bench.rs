//! `dummy_bench`: dummy-client operations against a running real client on this host
//! (`scripts/bench/dummy.sh` starts one): put/get latency and throughput at 4 KiB,
//! 64 KiB, 1 MiB and 16 MiB, 64 × 1 MiB batches, `is_exist`, 128-key
//! `batch_is_exist`, and single-thread memcpy of the same sizes in the same run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mooncake_dummyclient::DummyClient;
use mooncake_proto::ReplicateConfig;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn memcpy_gbps(size: usize) -> f64 {
    let src = vec![7u8; size];
    let mut dst = vec![0u8; size];
    dst.copy_from_slice(&src);
    let mut best = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        best.push(t.elapsed());
    }
    best.sort();
    gbps(size, best[best.len() / 2])
}

fn main() {
    let socket =
        PathBuf::from(std::env::var("MC_SOCKET").expect("MC_SOCKET: the real client's socket"));
    let dummy = DummyClient::connect(&socket, "").expect("connect");
    let cfg = ReplicateConfig::default();
    for (size, iters) in [
        (4usize << 10, 2000),
        (64 << 10, 1000),
        (1 << 20, 200),
        (16 << 20, 30),
    ] {
        let value = vec![0x5au8; size];
        let mut out = vec![0u8; size];
        let (mut put, mut get) = (Vec::new(), Vec::new());
        for i in 0..iters {
            let key = format!("bench-{size}-{i}");
            let t = Instant::now();
            dummy.put(&key, &value, &cfg).unwrap();
            put.push(t.elapsed());
            let t = Instant::now();
            let r = dummy.batch_get_into(std::slice::from_ref(&key), &mut [&mut out[..]]);
            get.push(t.elapsed());
            assert_eq!(r[0], Ok(size as u64));
        }
        put.sort();
        get.sort();
        let m = memcpy_gbps(size);
        println!(
            "{:>6} KiB: put p50 {:.1} us p99 {:.1} us ({:.2} GB/s) | get_into p50 {:.1} us p99 {:.1} us ({:.2} GB/s) | memcpy {:.2} GB/s",
            size >> 10,
            pct(&put, 0.5).as_secs_f64() * 1e6,
            pct(&put, 0.99).as_secs_f64() * 1e6,
            gbps(size, pct(&put, 0.5)),
            pct(&get, 0.5).as_secs_f64() * 1e6,
            pct(&get, 0.99).as_secs_f64() * 1e6,
            gbps(size, pct(&get, 0.5)),
            m
        );
        dummy.remove_all(true).unwrap();
    }
    // 64 × 1 MiB batches.
    let size = 1 << 20;
    let values: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; size]).collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    let mut outs: Vec<Vec<u8>> = (0..64).map(|_| vec![0u8; size]).collect();
    let (mut put, mut get) = (Vec::new(), Vec::new());
    for round in 0..10 {
        let keys: Vec<String> = (0..64).map(|i| format!("batch-{round}-{i}")).collect();
        let t = Instant::now();
        assert!(
            dummy
                .batch_put(&keys, &refs, &cfg, false)
                .iter()
                .all(|r| r.is_ok())
        );
        put.push(t.elapsed());
        let mut out_refs: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        let t = Instant::now();
        assert!(
            dummy
                .batch_get_into(&keys, &mut out_refs)
                .iter()
                .all(|r| r.is_ok())
        );
        get.push(t.elapsed());
        dummy.remove_all(true).unwrap();
    }
    put.sort();
    get.sort();
    println!(
        "64 x 1 MiB: batch_put_from {:.2} GB/s | batch_get_into {:.2} GB/s | memcpy {:.2} GB/s",
        gbps(64 * size, pct(&put, 0.5)),
        gbps(64 * size, pct(&get, 0.5)),
        memcpy_gbps(64 * size)
    );
    // Existence probes.
    let keys: Vec<String> = (0..128).map(|i| format!("exist-{i}")).collect();
    let small: Vec<&[u8]> = keys.iter().map(|_| &b"x"[..]).collect();
    dummy.batch_put(&keys, &small, &cfg, false);
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
