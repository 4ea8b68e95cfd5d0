//! `raw_tcp_bench`: the floor for cross-host transfers, plain TCP between two
//! hosts (or network namespaces) with nothing of the store in the way, in both
//! directions and over several streams at once, as the transfer engine moves a
//! large value:
//!
//! ```text
//! raw_tcp_bench serve 10.250.0.2:59070 [slots]    # on the holder's host
//! raw_tcp_bench run 10.250.0.2:59070 [MiB] [iterations]
//! raw_tcp_bench echo 127.0.0.1:59070 [iterations]   # small-request round trip
//! ```
//!
//! `run` moves `MiB` (16) per iteration split over 1, 2 and 4 streams, to the
//! server ("write", as a put to another host) and from it ("read", as a get),
//! and prints the median GB/s of each. Sockets are set up as the transfer
//! engine sets up its own (no delay, 4 MiB buffers).
//!
//! A server given `slots` (> 1) receives each write into the next of that many
//! destinations in turn, as a store's segment takes each new value in space
//! not touched since several values ago (out of the CPU caches); by default
//! every write lands in the same buffer, warm from the one before.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const WRITE: u8 = 0;
const READ: u8 = 1;
const SOCKET_BUFFER: usize = 4 << 20;

fn tune(s: &TcpStream) {
    s.set_nodelay(true).expect("nodelay");
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(s, SOCKET_BUFFER);
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(s, SOCKET_BUFFER);
}

/// Answers one connection: a request is the direction and a length; a write is
/// read whole and acknowledged with one byte, a read is answered with the bytes.
fn serve_one(mut s: TcpStream, slots: usize) {
    tune(&s);
    let mut buf: Vec<u8> = Vec::new();
    let mut turn = 0usize;
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).is_err() {
            return;
        }
        let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes")) as usize;
        if buf.len() < len * slots {
            buf.resize(len * slots, 7);
        }
        let at = (turn % slots) * len;
        turn += 1;
        let ok = match head[0] {
            WRITE => s
                .read_exact(&mut buf[at..at + len])
                .and_then(|_| s.write_all(&[1])),
            _ => s.write_all(&buf[..len]),
        };
        if ok.is_err() {
            return;
        }
    }
}

/// Moves `len` bytes in `direction` over `streams` at once; how long it took.
fn once(streams: &mut [TcpStream], bufs: &mut [Vec<u8>], direction: u8) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (s, buf) in streams.iter_mut().zip(bufs.iter_mut()) {
            scope.spawn(move || {
                let mut head = [direction; 9];
                head[1..].copy_from_slice(&(buf.len() as u64).to_le_bytes());
                s.write_all(&head).expect("request");
                if direction == WRITE {
                    s.write_all(buf).expect("write");
                    s.read_exact(&mut [0u8; 1]).expect("ack");
                } else {
                    s.read_exact(buf).expect("read");
                }
            });
        }
    });
    started.elapsed()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let listener = TcpListener::bind(&args[2]).expect("bind");
            let slots: usize = args.get(3).map_or(1, |s| s.parse().expect("slots"));
            println!("serving on {}", listener.local_addr().expect("address"));
            for s in listener.incoming().flatten() {
                std::thread::spawn(move || serve_one(s, slots.max(1)));
            }
        }
        Some("run") => {
            let addr = &args[2];
            let mib: usize = args.get(3).map_or(16, |s| s.parse().expect("MiB"));
            let iterations: usize = args.get(4).map_or(30, |s| s.parse().expect("count"));
            let len = mib << 20;
            for n in [1usize, 2, 4] {
                let mut streams: Vec<TcpStream> = (0..n)
                    .map(|_| {
                        let s = TcpStream::connect(addr).expect("connect");
                        tune(&s);
                        s
                    })
                    .collect();
                let mut bufs: Vec<Vec<u8>> = (0..n)
                    .map(|i| vec![3u8; len / n + usize::from(i < len % n)])
                    .collect();
                for (name, direction) in [("write", WRITE), ("read", READ)] {
                    once(&mut streams, &mut bufs, direction);
                    let mut runs: Vec<Duration> = (0..iterations)
                        .map(|_| once(&mut streams, &mut bufs, direction))
                        .collect();
                    runs.sort();
                    let t = runs[runs.len() / 2];
                    println!(
                        "raw tcp {mib} MiB {name:5} {n} stream(s): {:6.0} us  {:5.2} GB/s",
                        t.as_secs_f64() * 1e6,
                        len as f64 / t.as_secs_f64() / 1e9
                    );
                }
            }
        }
        Some("echo") => {
            // The floor of any request/answer between two processes: 8 bytes
            // asked, 8 answered, blocking sockets, one at a time.
            let iterations: usize = args.get(3).map_or(5000, |s| s.parse().expect("count"));
            let mut s = TcpStream::connect(&args[2]).expect("connect");
            tune(&s);
            let mut answer = [0u8; 8];
            let mut runs: Vec<Duration> = (0..iterations)
                .map(|_| {
                    let started = Instant::now();
                    let mut head = [READ; 9];
                    head[1..].copy_from_slice(&8u64.to_le_bytes());
                    s.write_all(&head).expect("request");
                    s.read_exact(&mut answer).expect("answer");
                    started.elapsed()
                })
                .collect();
            runs.sort();
            println!(
                "raw tcp echo round trip: p50 {:.1} us, p99 {:.1} us",
                runs[runs.len() / 2].as_secs_f64() * 1e6,
                runs[runs.len() * 99 / 100].as_secs_f64() * 1e6
            );
        }
        _ => eprintln!(
            "usage: raw_tcp_bench serve ADDR | run ADDR [MiB] [iterations] | echo ADDR [iterations]"
        ),
    }
}
