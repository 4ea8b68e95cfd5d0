//! `transfer_bench`: the TCP transfer engine on loopback: 16 MiB reads and writes
//! between mapped regions with 1, 2 and 4 parallel streams, next to the raw floor
//! of the same machine (one TCP stream moving 16 MiB between plain buffers) and
//! single-thread memcpy, all measured in the same run.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mooncake_realclient::transfer::tcp::{TcpTransport, TransferServer};
use mooncake_realclient::transfer::{Direction, LocalSpan, TransferJob, Transport};
use mooncake_shm::{Region, RegionOptions};

const LEN: usize = 16 << 20;
const ITERS: usize = 30;

fn gbps(d: Duration) -> f64 {
    LEN as f64 / d.as_secs_f64() / 1e9
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn raw_tcp() -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; LEN];
        for _ in 0..ITERS {
            s.read_exact(&mut buf).unwrap();
            s.write_all(&[1]).unwrap();
        }
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let data = vec![3u8; LEN];
    let mut runs = Vec::new();
    for _ in 0..ITERS {
        let t = Instant::now();
        s.write_all(&data).unwrap();
        s.read_exact(&mut [0u8; 1]).unwrap();
        runs.push(t.elapsed());
    }
    median(runs)
}

fn memcpy() -> Duration {
    let src = vec![7u8; LEN];
    let mut dst = vec![0u8; LEN];
    let mut runs = Vec::new();
    for _ in 0..ITERS {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        runs.push(t.elapsed());
    }
    median(runs)
}

fn main() {
    let opts = RegionOptions::default().with_prefault(true);
    let segment = Arc::new(Region::anonymous("seg", 64 << 20, &opts).unwrap());
    let id = uuid::Uuid::new_v4();
    let server = TransferServer::bind("127.0.0.1:0", "", Some((id, segment))).unwrap();
    let local = Arc::new(Region::anonymous("local", LEN as u64, &opts).unwrap());
    let floor = raw_tcp();
    let m = memcpy();
    println!(
        "raw TCP 1 stream: {:.2} GB/s | memcpy: {:.2} GB/s",
        gbps(floor),
        gbps(m)
    );
    for streams in [1, 2, 4] {
        let transport = TcpTransport::new("").with_streams(streams);
        for dir in [Direction::Write, Direction::Read] {
            let job = TransferJob {
                version: 0,
                direction: dir,
                endpoint: server.local_addr().to_string(),
                segment_id: id,
                remote_offset: 0,
                local: LocalSpan {
                    region: local.clone(),
                    offset: 0,
                    len: LEN as u64,
                },
            };
            let mut runs = Vec::new();
            for _ in 0..ITERS {
                let t = Instant::now();
                let r = transport.run(
                    std::slice::from_ref(&job),
                    Instant::now() + Duration::from_secs(10),
                );
                runs.push(t.elapsed());
                assert!(r[0].is_ok());
            }
            let d = median(runs);
            println!(
                "{streams} stream(s) {dir:?} 16 MiB: p50 {:.0} us, {:.2} GB/s ({:.0}% of raw TCP)",
                d.as_secs_f64() * 1e6,
                gbps(d),
                100.0 * gbps(d) / gbps(floor)
            );
        }
    }
}
