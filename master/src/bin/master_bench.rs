//! `master_bench`: throughput of the master's hot operations, in-process and over
//! the RPC on loopback, and resident memory per key. Figures go to
//! `docs/PERFORMANCE.md`; run through `scripts/bench/master.sh`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use mooncake_master::{MasterConfig, MasterService, ServerOptions};
use mooncake_proto::codec::connect_master;
use mooncake_proto::{CommitItem, Protocol, ReplicateConfig, SegmentDesc};

#[derive(Parser)]
struct Args {
    /// What to run: inproc, rpc, memory or all.
    #[arg(long, default_value = "all")]
    mode: String,
    /// Keys per throughput run.
    #[arg(long, default_value_t = 200_000)]
    keys: usize,
    /// Repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Benchmark an already running master at this address instead of an in-process one.
    #[arg(long)]
    master: Option<String>,
    /// Key counts for the memory measurement (comma-separated).
    #[arg(long, default_value = "1000000,10000000")]
    memory_keys: String,
}

/// A realistic KV-cache key: 64 hex chars of a prefix hash, TP rank, K/V.
fn kv_key(i: u64) -> String {
    let mut x = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut parts = [0u64; 4];
    for p in &mut parts {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *p = x ^ (x >> 31);
    }
    format!(
        "{:016x}{:016x}{:016x}{:016x}_0_k",
        parts[0], parts[1], parts[2], parts[3]
    )
}

fn segment(size: u64) -> SegmentDesc {
    SegmentDesc {
        id: Uuid::new_v4(),
        name: "bench".into(),
        host: "127.0.0.1".into(),
        base: 0,
        size,
        transport_endpoint: "127.0.0.1:12300".into(),
        protocol: Protocol::Tcp,
        medium: Default::default(),
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fresh_master() -> (Arc<MasterService>, Uuid) {
    let (svc, client, _) = fresh_master_with_segment();
    (svc, client)
}

fn fresh_master_with_segment() -> (Arc<MasterService>, Uuid, Uuid) {
    let svc = Arc::new(MasterService::new(MasterConfig::default()));
    let client = Uuid::new_v4();
    let seg = segment(1 << 40);
    let id = seg.id;
    svc.mount_segment(client, seg).unwrap();
    (svc, client, id)
}

/// Commits of one 4 KiB key each into space granted up front, the way a real
/// client ends the writes it placed itself.
fn commit_item(key: String, base: u64, i: usize) -> CommitItem {
    CommitItem {
        key,
        offset: base + i as u64 * 4096,
        size: 4096,
    }
}

fn inproc(args: &Args) {
    let keys: Vec<String> = (0..args.keys as u64).map(kv_key).collect();
    let config = ReplicateConfig::default();
    for threads in [1usize, 2] {
        let mut put_rates = Vec::new();
        let mut exist_rates = Vec::new();
        for _ in 0..args.reps {
            let (svc, client) = fresh_master();
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (svc, keys, config) = (&svc, &keys, &config);
                    s.spawn(move || {
                        for k in keys.iter().skip(t).step_by(threads) {
                            svc.put_start(client, k, 4096, config, false).unwrap();
                            svc.put_end(client, k).unwrap();
                        }
                    });
                }
            });
            put_rates.push(keys.len() as f64 / start.elapsed().as_secs_f64());
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (svc, keys) = (&svc, &keys);
                    s.spawn(move || {
                        for batch in keys.chunks(128).skip(t).step_by(threads) {
                            let hits = batch
                                .iter()
                                .filter(|k| svc.exist_key(k) == Ok(true))
                                .count();
                            assert_eq!(hits, batch.len());
                        }
                    });
                }
            });
            exist_rates.push(keys.len() as f64 / start.elapsed().as_secs_f64());
        }
        let mut commit_rates = Vec::new();
        for _ in 0..args.reps {
            let (svc, client, seg) = fresh_master_with_segment();
            let (base, _) = svc
                .grant_space(client, seg, keys.len() as u64 * 4096, 0)
                .unwrap();
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (svc, keys, config) = (&svc, &keys, &config);
                    s.spawn(move || {
                        for (i, k) in keys.iter().enumerate().skip(t).step_by(threads) {
                            let item = commit_item(k.clone(), base, i);
                            svc.put_commit(client, seg, 0, &item, config).unwrap();
                        }
                    });
                }
            });
            commit_rates.push(keys.len() as f64 / start.elapsed().as_secs_f64());
        }
        println!(
            "inproc threads={threads} put_commit (placed writes): {:.0} puts/s",
            median(commit_rates)
        );
        println!(
            "inproc threads={threads} put_start+put_end: {:.0} pairs/s | batch_exist(128): {:.0} keys/s",
            median(put_rates),
            median(exist_rates)
        );
    }
}

async fn rpc(args: &Args) {
    let shutdown = CancellationToken::new();
    let addr = match &args.master {
        Some(addr) => addr.clone(),
        None => {
            // The server gets its own multi-threaded runtime, as in mooncake_master;
            // the benchmark client runs on the caller's single-threaded runtime.
            let (tx, rx) = std::sync::mpsc::channel();
            let token = shutdown.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async move {
                    let options = ServerOptions {
                        rpc_addr: "127.0.0.1:0".into(),
                        metrics_addr: None,
                        metadata_addr: None,
                        summary_interval: None,
                    };
                    mooncake_master::run(MasterConfig::default(), options, token, move |b, _| {
                        let _ = tx.send(b.rpc);
                    })
                    .await
                    .unwrap();
                });
            });
            rx.recv().unwrap().to_string()
        }
    };
    let client = connect_master(&addr, "").await.unwrap();
    let me = Uuid::new_v4();
    let bench_segment = segment(1 << 40);
    let seg_id = bench_segment.id;
    client
        .mount_segment(tarpc::context::current(), me, bench_segment)
        .await
        .unwrap()
        .unwrap();
    // A real client pings every second; without it the master expires the segment.
    let pinger = {
        let client = client.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while token.run_until_cancelled(tick.tick()).await.is_some() {
                let _ = client.ping(tarpc::context::current(), me).await;
            }
        })
    };
    let n = (args.keys / 4).max(1000);
    let ctx = tarpc::context::current;

    // The floor: a raw TCP echo between the same kind of runtimes, same machine.
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let echo_addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let (mut s, _) = listener.accept().await.unwrap();
                s.set_nodelay(true).unwrap();
                let mut buf = [0u8; 64];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        });
        let mut s = tokio::net::TcpStream::connect(echo_addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut rtt = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..n.min(20_000) {
            let t = Instant::now();
            s.write_all(&[7u8; 32]).await.unwrap();
            let mut got = 0;
            while got < 32 {
                got += s.read(&mut buf).await.unwrap();
            }
            rtt.push(t.elapsed());
        }
        rtt.sort();
        println!(
            "floor: raw tcp echo rtt p50 {:.1} us, p99 {:.1} us",
            rtt[rtt.len() / 2].as_secs_f64() * 1e6,
            rtt[rtt.len() * 99 / 100].as_secs_f64() * 1e6
        );
    }

    // One caller, one outstanding request: latency-bound.
    let mut lat = Vec::with_capacity(n);
    let mut rates = Vec::new();
    for rep in 0..args.reps {
        let start = Instant::now();
        for i in 0..n {
            let k = format!("seq{rep}-{}", kv_key(i as u64));
            let t = Instant::now();
            client
                .put_start(ctx(), me, k.clone(), 4096, ReplicateConfig::default())
                .await
                .unwrap()
                .unwrap();
            client.put_end(ctx(), me, k).await.unwrap().unwrap();
            lat.push(t.elapsed());
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    lat.sort();
    println!(
        "rpc 1 caller put_start+put_end: {:.0} pairs/s, p50 pair {:.1} us, p99 {:.1} us",
        median(rates),
        lat[lat.len() / 2].as_secs_f64() * 1e6,
        lat[lat.len() * 99 / 100].as_secs_f64() * 1e6
    );

    // 64 concurrent callers.
    let mut rates = Vec::new();
    for rep in 0..args.reps {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..64 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..n).step_by(64) {
                    let k = format!("par{rep}-{}", kv_key(i as u64));
                    client
                        .put_start(ctx(), me, k.clone(), 4096, ReplicateConfig::default())
                        .await
                        .unwrap()
                        .unwrap();
                    client.put_end(ctx(), me, k).await.unwrap().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "rpc 64 callers put_start+put_end: {:.0} pairs/s",
        median(rates)
    );

    // 64 concurrent callers ending placed writes: one batch_put_commit each.
    let mut rates = Vec::new();
    for rep in 0..args.reps {
        let (base, _) = client
            .grant_space(ctx(), me, seg_id, n as u64 * 4096, 0)
            .await
            .unwrap()
            .unwrap();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..64 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                for i in (t..n).step_by(64) {
                    let item = commit_item(format!("com{rep}-{}", kv_key(i as u64)), base, i);
                    let r = client
                        .batch_put_commit(
                            ctx(),
                            me,
                            seg_id,
                            0,
                            vec![item],
                            ReplicateConfig::default(),
                        )
                        .await
                        .unwrap();
                    r[0].unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "rpc 64 callers batch_put_commit (placed writes): {:.0} puts/s",
        median(rates)
    );

    // Batched writes: 128-key batch_put_start + batch_put_end.
    let mut rates = Vec::new();
    for rep in 0..args.reps {
        let keys: Vec<String> = (0..n)
            .map(|i| format!("bat{rep}-{}", kv_key(i as u64)))
            .collect();
        let start = Instant::now();
        for chunk in keys.chunks(128) {
            let sizes = vec![4096; chunk.len()];
            client
                .batch_put_start(ctx(), me, chunk.to_vec(), sizes, ReplicateConfig::default())
                .await
                .unwrap();
            client
                .batch_put_end(ctx(), me, chunk.to_vec())
                .await
                .unwrap();
        }
        rates.push(n as f64 / start.elapsed().as_secs_f64());
    }
    println!(
        "rpc 1 caller batch_put_start+end (128): {:.0} keys/s",
        median(rates)
    );

    // 128-key batch_exist, one caller and 8 and 64 concurrent callers.
    let keys: Vec<String> = (0..n)
        .map(|i| format!("bat0-{}", kv_key(i as u64)))
        .collect();
    // Shared, not cloned per caller: copying the key list for each caller was
    // timed too (64 copies of 25 000 keys cost more than the calls).
    let keys = Arc::new(keys);
    for callers in [1usize, 8, 64] {
        let mut rates = Vec::new();
        for _ in 0..args.reps {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for t in 0..callers {
                let client = client.clone();
                let keys = keys.clone();
                tasks.push(tokio::spawn(async move {
                    for chunk in keys.chunks(128).skip(t).step_by(callers) {
                        let r = client.batch_exist_key(ctx(), chunk.to_vec()).await.unwrap();
                        assert!(r.iter().all(|e| *e == Ok(true)));
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            rates.push(keys.len() as f64 / start.elapsed().as_secs_f64());
        }
        println!(
            "rpc {callers} caller(s) batch_exist(128): {:.0} keys/s",
            median(rates)
        );
    }
    shutdown.cancel();
    let _ = pinger.await;
}

fn memory(args: &Args) {
    for n in args
        .memory_keys
        .split(',')
        .filter_map(|s| s.trim().parse::<u64>().ok())
    {
        let (svc, client) = fresh_master();
        let config = ReplicateConfig::default();
        let before = rss_bytes();
        let start = Instant::now();
        for i in 0..n {
            let k = kv_key(i);
            svc.put_start(client, &k, 4096, &config, false).unwrap();
            svc.put_end(client, &k).unwrap();
        }
        let elapsed = start.elapsed();
        let after = rss_bytes();
        let per_key = (after.saturating_sub(before)) as f64 / n as f64;
        println!(
            "memory keys={n} key_len={} rss_delta={:.1} MiB per_key={per_key:.0} B ({:.3} KB) fill {:.1} s",
            kv_key(0).len(),
            (after - before) as f64 / (1 << 20) as f64,
            per_key / 1000.0,
            elapsed.as_secs_f64()
        );
        assert_eq!(svc.gauges().key_count, n);
        drop(svc);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let args = Args::parse();
    let all = args.mode == "all";
    if all || args.mode == "inproc" {
        inproc(&args);
    }
    if all || args.mode == "rpc" {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(rpc(&args));
    }
    if all || args.mode == "memory" {
        memory(&args);
    }
}
