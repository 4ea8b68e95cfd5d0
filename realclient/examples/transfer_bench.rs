//! `transfer_bench`: the TCP transfer engine on loopback: 16 MiB reads and writes
//! between mapped regions with 1, 2 and 4 parallel streams, next to the raw floor
//! of the same machine (one TCP stream moving 16 MiB between plain buffers) and
//! single-thread memcpy, all measured in the same run.
//!
//! ```text
//! transfer_bench [MiB] [split KiB]   # defaults: 16 MiB, the transport's own split
//! ```
//!
//! Each write is also measured with its landed note (`write_and_note`), as a put
//! to another host sends it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mooncake_realclient::transfer::tcp::{TcpTransport, TransferServer};
use mooncake_realclient::transfer::{Direction, Landed, LocalSpan, TransferJob, Transport};
use mooncake_shm::{Region, RegionOptions};

const ITERS: usize = 30;

/// Bytes per transfer (`[MiB]` argument, may be a fraction).
static LEN: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    let mib: f64 = std::env::args()
        .nth(1)
        .map_or(16.0, |a| a.parse().expect("MiB"));
    ((mib * (1 << 20) as f64) as usize).next_multiple_of(4096)
});

fn gbps(d: Duration) -> f64 {
    *LEN as f64 / d.as_secs_f64() / 1e9
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
        let mut buf = vec![0u8; *LEN];
        for _ in 0..ITERS {
            s.read_exact(&mut buf).unwrap();
            s.write_all(&[1]).unwrap();
        }
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let data = vec![3u8; *LEN];
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
    let src = vec![7u8; *LEN];
    let mut dst = vec![0u8; *LEN];
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
    let local = Arc::new(Region::anonymous("local", *LEN as u64, &opts).unwrap());
    let split: Option<u64> = std::env::args()
        .nth(2)
        .map(|a| a.parse::<u64>().expect("split KiB") << 10);
    let size = format!("{:.2} MiB", *LEN as f64 / (1 << 20) as f64);
    let floor = raw_tcp();
    let m = memcpy();
    println!(
        "{size}: raw TCP 1 stream: p50 {:.0} us, {:.2} GB/s | memcpy: {:.2} GB/s",
        floor.as_secs_f64() * 1e6,
        gbps(floor),
        gbps(m)
    );
    for streams in [1, 2, 4] {
        let mut transport = TcpTransport::new("").with_streams(streams);
        if let Some(split) = split {
            transport = transport.with_split_min(split);
        }
        for (dir, noted) in [
            (Direction::Write, false),
            (Direction::Write, true),
            (Direction::Read, false),
        ] {
            let job = TransferJob {
                version: 0,
                direction: dir,
                endpoint: server.local_addr().to_string(),
                segment_id: id,
                remote_offset: 0,
                local: LocalSpan {
                    memory: local.clone().into(),
                    offset: 0,
                    len: *LEN as u64,
                },
            };
            let landed = [Landed {
                offset: 0,
                size: *LEN as u64,
                version: 0,
                key: "k".into(),
            }];
            let mut runs = Vec::new();
            for _ in 0..ITERS {
                let t = Instant::now();
                let deadline = Instant::now() + Duration::from_secs(10);
                if noted {
                    let (written, note) = transport.write_and_note(&job, &landed, deadline);
                    runs.push(t.elapsed());
                    assert!(written.is_ok() && note.is_ok());
                } else {
                    let r = transport.run(std::slice::from_ref(&job), deadline);
                    runs.push(t.elapsed());
                    assert!(r[0].is_ok());
                }
            }
            let d = median(runs);
            println!(
                "{streams} stream(s) {dir:?}{} {size}: p50 {:.0} us, {:.2} GB/s ({:.0}% of raw TCP)",
                if noted { " + note" } else { "" },
                d.as_secs_f64() * 1e6,
                gbps(d),
                100.0 * gbps(d) / gbps(floor)
            );
        }
    }
}
