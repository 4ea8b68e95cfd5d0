//! `integrity_load`: a load test that checks every byte. Writer sessions replace
//! values (upsert) and force-remove then re-put them; reader sessions read the same
//! keys and check each value is one complete value that was written for that key.
//! Reports operations per second, p50/p99 per operation and the wrong reads (which
//! must be 0). `scripts/bench/integrity.sh` starts the store and runs it.
//!
//! Usage: `integrity_load SOCKET [SECONDS] [WRITERS] [READERS] [KEYS]`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mooncake_dummyclient::DummyClient;
use mooncake_integration::{is_complete_value, versioned_value};
use mooncake_proto::{ErrorCode, ReplicateConfig};
use parking_lot::Mutex;

#[derive(Default)]
struct Stats {
    latencies: Mutex<Vec<(&'static str, Duration)>>,
    ok: AtomicU64,
    wrong: AtomicU64,
    absent: AtomicU64,
    errors: AtomicU64,
}

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let socket = PathBuf::from(std::env::args().nth(1).expect("SOCKET"));
    let seconds = arg(2, 10);
    let writers = arg(3, 2) as usize;
    let readers = arg(4, 4) as usize;
    let key_count = arg(5, 32) as usize;
    let keys: Arc<Vec<String>> = Arc::new(
        (0..key_count)
            .map(|i| format!("load-{}-{i}", std::process::id()))
            .collect(),
    );
    let seed = DummyClient::connect(&socket, "").expect("connect");
    for k in keys.iter() {
        seed.put(k, &versioned_value(k, 1), &ReplicateConfig::default())
            .expect("seed");
    }
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let seq = Arc::new(AtomicU64::new(10));
    let mut threads = Vec::new();
    for w in 0..writers {
        let (socket, keys, stats, stop, seq) = (
            socket.clone(),
            keys.clone(),
            stats.clone(),
            stop.clone(),
            seq.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let dummy = DummyClient::connect(&socket, "").expect("connect");
            let config = ReplicateConfig::default();
            let mut lat = Vec::new();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                let value = versioned_value(key, seq.fetch_add(1, Ordering::Relaxed));
                let t = Instant::now();
                let (op, r) = if i % 2 == 0 {
                    (
                        "upsert",
                        dummy.batch_put(&[(key, &value)], &config, true)[0],
                    )
                } else {
                    let _ = dummy.remove(key, true);
                    ("remove+put", dummy.put(key, &value, &config))
                };
                lat.push((op, t.elapsed()));
                if r.is_err() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
                i += writers;
            }
            stats.latencies.lock().extend(lat);
        }));
    }
    for r in 0..readers {
        let (socket, keys, stats, stop) =
            (socket.clone(), keys.clone(), stats.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let dummy = DummyClient::connect(&socket, "").expect("connect");
            let mut lat = Vec::new();
            let mut i = r * 13;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                i += 1;
                let t = Instant::now();
                let got = dummy.get(key);
                lat.push(("get", t.elapsed()));
                match got {
                    Ok(v) if is_complete_value(key, &v) => &stats.ok,
                    Ok(_) => &stats.wrong,
                    // Between a force-remove and the put that follows.
                    Err(ErrorCode::ObjectNotFound | ErrorCode::ReplicaIsNotReady) => &stats.absent,
                    Err(_) => &stats.errors,
                }
                .fetch_add(1, Ordering::Relaxed);
            }
            stats.latencies.lock().extend(lat);
        }));
    }
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("worker");
    }
    let lat = stats.latencies.lock();
    println!(
        "{seconds} s, {writers} writer and {readers} reader sessions, {key_count} keys of 256-280 KiB"
    );
    println!("| operation | ops/s | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    for op in ["get", "upsert", "remove+put"] {
        let mut v: Vec<Duration> = lat.iter().filter(|l| l.0 == op).map(|l| l.1).collect();
        if v.is_empty() {
            continue;
        }
        v.sort();
        let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
        println!(
            "| {op} | {:.0} | {:.0} | {:.0} |",
            v.len() as f64 / seconds as f64,
            p(0.5),
            p(0.99)
        );
    }
    let wrong = stats.wrong.load(Ordering::Relaxed);
    println!(
        "reads: {} verified, {wrong} wrong, {} absent between a remove and its put; errors (reads and writes): {}",
        stats.ok.load(Ordering::Relaxed),
        stats.absent.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
    );
    if wrong > 0 {
        eprintln!("FAILED: {wrong} reads returned bytes that are no value of the key");
        std::process::exit(1);
    }
}
