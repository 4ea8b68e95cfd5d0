//! `ipc_bench`: round trips of an empty call over tarpc on the Unix socket and over
//! the shared-memory call ring, between two processes (the bench re-executes itself as
//! the client), and copy throughput into a mapped shared region versus plain memcpy in
//! the same run. Run through `scripts/bench/ipc.sh`; figures in `docs/PERFORMANCE.md`.

#![allow(clippy::disallowed_methods)] // reads its settings from the environment

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};

use mooncake_ipc::client::control_transport;
use mooncake_ipc::{IpcClient, IpcServer, IpcServerConfig};
use mooncake_shm::callring::RingShape;
use mooncake_shm::{CallRing, Region, RegionOptions};

#[tarpc::service]
trait Bench {
    async fn empty();
    async fn ring_ready(base: u64) -> bool;
}

#[derive(Clone)]
struct BenchServer {
    session: Arc<mooncake_ipc::Session>,
}

impl Bench for BenchServer {
    async fn empty(self, _: Context) {}
    async fn ring_ready(self, _: Context, base: u64) -> bool {
        let Some(region) = self.session.region_at(base) else {
            return false;
        };
        let Ok(ring) = CallRing::attach(region) else {
            return false;
        };
        // A dedicated polling thread, as the real client would run per dummy.
        std::thread::spawn(move || {
            let mut server = ring.server();
            while let Ok(Some(req)) = server.recv(Duration::from_secs(5)) {
                if server.reply(req.slot, &[]).is_err() {
                    break;
                }
            }
        });
        true
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The floor: a blocking 1-byte echo over a Unix socket between the two processes.
fn raw_echo_client(path: &std::path::Path, calls: usize) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    let mut b = [0u8; 1];
    let mut lat = Vec::with_capacity(calls);
    for i in 0..calls + 1000 {
        let t = Instant::now();
        s.write_all(&[1]).unwrap();
        s.read_exact(&mut b).unwrap();
        if i >= 1000 {
            lat.push(t.elapsed());
        }
    }
    lat.sort();
    println!(
        "floor: raw unix socket 1-byte echo between the processes: p50 {:.1} us, p99 {:.1} us",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
}

fn raw_echo_server(path: PathBuf) {
    use std::io::{Read, Write};
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() {
                if s.write_all(&b).is_err() {
                    break;
                }
            }
        }
    });
}

async fn client(path: PathBuf, calls: usize) {
    raw_echo_client(&path.with_extension("raw"), calls);
    let (ipc, control) = IpcClient::connect(&path, "").await.unwrap();
    let rpc = BenchClient::new(Default::default(), control_transport(control)).spawn();
    for _ in 0..1000 {
        rpc.empty(tarpc::context::current()).await.unwrap();
    }
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        rpc.empty(tarpc::context::current()).await.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "tarpc over unix socket, empty call: p50 {:.1} us, p99 {:.1} us",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );

    let ring = CallRing::create(RingShape::default()).unwrap();
    let base = ipc
        .register(ring.region(), 0, ring.region().len() as u64)
        .await
        .unwrap();
    assert!(
        rpc.ring_ready(tarpc::context::current(), base)
            .await
            .unwrap()
    );
    let caller = ring.client();
    let (p50, p99) = tokio::task::spawn_blocking(move || {
        for _ in 0..1000 {
            caller.call(&[], Duration::from_secs(5)).unwrap();
        }
        let mut lat = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            caller.call(&[], Duration::from_secs(5)).unwrap();
            lat.push(t.elapsed());
        }
        lat.sort();
        (percentile(&lat, 0.5), percentile(&lat, 0.99))
    })
    .await
    .unwrap();
    println!("shared-memory call ring, empty call: p50 {p50:.1} us, p99 {p99:.1} us");
}

fn copy_throughput(size: usize, reps: usize) {
    let src: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut private = vec![0u8; size];
    let region = Region::anonymous(
        "bench",
        size as u64,
        &RegionOptions::default().with_prefault(true),
    )
    .unwrap();
    // Touch both destinations once so page faults are not timed.
    private.copy_from_slice(&src);
    region.write(0, &src).unwrap();
    let (mut memcpy, mut mapped) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        private.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&private);
        memcpy.push(size as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        region.write(0, std::hint::black_box(&src)).unwrap();
        mapped.push(size as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    let (m, r) = (median(memcpy), median(mapped));
    println!(
        "copy {} MiB: memcpy {m:.2} GB/s, into mapped shared region {r:.2} GB/s ({:.1}% of memcpy)",
        size >> 20,
        100.0 * r / m
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let calls = 20_000;
    if args.get(1).map(String::as_str) == Some("--child") {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(client(PathBuf::from(&args[2]), calls));
        return;
    }
    for size in [1usize << 20, 16 << 20, 64 << 20] {
        copy_throughput(size, 15);
    }
    // MC_BENCH_SERVER_THREADS=1 runs the server on a single-threaded runtime.
    let rt = match std::env::var("MC_BENCH_SERVER_THREADS").ok().as_deref() {
        Some("1") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        _ => tokio::runtime::Runtime::new().unwrap(),
    };
    rt.block_on(async {
        let path = std::env::temp_dir().join(format!("mc-ipc-bench-{}.sock", std::process::id()));
        raw_echo_server(path.with_extension("raw"));
        let server = IpcServer::bind(IpcServerConfig::new(&path)).unwrap();
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .arg("--child")
            .arg(&path)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let conn = server.accept().await.unwrap();
        let (session, transport) = conn.into_transport();
        tokio::spawn(
            BaseChannel::with_defaults(transport)
                .execute(BenchServer { session }.serve())
                .for_each(|f| async move {
                    tokio::spawn(f);
                }),
        );
        assert!(child.wait().await.unwrap().success());
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("raw"));
    });
}
