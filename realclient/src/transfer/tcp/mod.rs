//! The TCP transport: every real client listens on a transfer port; peers keep
//! pooled connections to it and read or write `(segment, offset, length)` ranges,
//! which the kernel copies straight between the socket and the mapped memory on both
//! sides. Large jobs are split across parallel connections.
//!
//! Wire format (little endian). A connection opens with `MCXFER01`, a `u16` token
//! length and the cluster token; the server answers an `i32` code (0 or
//! `ILLEGAL_CLIENT`). Then requests follow, each a 40-byte header
//! `op: u8, version: u56, segment: [u8; 16], offset: u64, len: u64`, where
//! `version` is the version a write carries (0: none given): the version of the
//! object a put writes, or the version the master issued for a replica copy:
//! - read (`op` 1): the server answers an `i32` code, then, when 0, `len` bytes;
//! - write (`op` 2): `len` bytes follow the header; the server answers an `i32`
//!   code once they are in place. A refused write closes the connection (the bytes
//!   in flight are not drained). A write whose version is below the floor the
//!   owner's current master gave it (`INVALID_WRITE`) was started with an earlier
//!   master instance, which may have given the same space to another object.
//! - landed (`op` 3): after a writer's bytes are all in place, it tells the
//!   segment's owner which objects they are: `len` bytes of entries follow
//!   (`offset: u64, size: u64, version: u64, key_len: u32, key`), at most
//!   [`MAX_NOTE_LEN`]; the owner records them in its inventory and answers an
//!   `i32` code. So the owner knows every object in its segment before the write
//!   is acknowledged, whatever happens to the master then. The header's
//!   `version` is the one the writes carried, and a note below the floor is
//!   refused (`INVALID_WRITE`) like its writes: recorded, it would list an
//!   object in space the owner's new master may have given to another.
//! - begin (`op` 4): a writer on the same host, about to copy `len` bytes into
//!   the segment through its own mapping of it (see `samehost`), asks first; the
//!   server checks the range and the version as for a write and answers an `i32`
//!   code. No bytes follow; a landed note ends the write as for one over TCP.
//! - local (`op` 5): the server answers an `i32` code, then (when 0) a `u32`
//!   length and that many bytes: its network namespace (`u64`) and the path of
//!   its Unix socket, through which a real client on the same host maps its
//!   segment (code `NOT_SUPPORTED`: it offers none).
//!
//! Blocking sockets on plain threads: each transfer is one long copy loop, which the
//! kernel runs best without an async reactor in between.
//!
//! # Layout
//!
//! - this file: the wire format (header, codes, hello) and socket tuning;
//! - `client`: [`TcpTransport`], the pooled client side;
//! - `server`: [`TransferServer`], the transfer port;
//! - `samehost`: peers on this host, whose segments are mapped here and copied
//!   to and from directly.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use uuid::Uuid;

use mooncake_proto::auth::Credentials;
use mooncake_proto::limits::{ConnectionLimiter, LogGate, accept_backoff};
use mooncake_proto::{ErrorCode, MResult, SegmentId};
use mooncake_shm::{Gate, Region};

use super::{Direction, Landed, TransferJob, Transport};

mod client;
mod samehost;
mod server;

pub use client::TcpTransport;
use client::{PoolFailure, until};
pub use server::TransferServer;

/// Hello magic: "MCXFER" and the two-digit version of this wire format (02: the
/// header carries the object version). A peer whose magic has the prefix but
/// another version is told `INVALID_VERSION`.
const MAGIC: &[u8; 8] = b"MCXFER02";
const MAGIC_PREFIX: &[u8; 6] = b"MCXFER";
const HEADER_LEN: usize = 40;
const OP_READ: u8 = 1;
const OP_WRITE: u8 = 2;
const OP_LANDED: u8 = 3;
const OP_BEGIN: u8 = 4;
const OP_LOCAL: u8 = 5;
/// The largest answer to a local request (a socket path fits in 108 bytes).
const MAX_LOCAL_ANSWER: usize = 4096;
/// The largest landed note (about 10 000 objects of 64-byte keys).
pub const MAX_NOTE_LEN: u64 = 1 << 20;
const MAX_TOKEN_LEN: usize = 4096;
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A peer that stops sending in the middle of a write is dropped after this.
const STALLED_PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per peer.
const MAX_IDLE_PER_PEER: usize = 16;
/// A connection idle this long is closed by the server (clients reconnect).
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);
/// Pooled connections are not reused after this long idle (before the server's
/// idle timeout can close them under us).
const POOL_IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Connections (one thread each) one peer address may hold on a transfer port.
const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// Connections all peers together may hold on a transfer port.
const MAX_CONNECTIONS: usize = 1024;

/// Refused peers and failed accepts are logged at most once a second.
static REFUSALS: LogGate = LogGate::new(Duration::from_secs(1));
static ACCEPT_ERRORS: LogGate = LogGate::new(Duration::from_secs(1));

struct Header {
    op: u8,
    /// The object version a write carries (0: none; 56 bits on the wire).
    version: u64,
    segment: SegmentId,
    offset: u64,
    len: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.op;
        // A version that does not fit (none does before the year 4250) goes untagged.
        let version = if self.version >> 56 == 0 {
            self.version
        } else {
            0
        };
        b[1..8].copy_from_slice(&version.to_le_bytes()[..7]);
        b[8..24].copy_from_slice(self.segment.as_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let word =
            |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        let mut version = [0u8; 8];
        version[..7].copy_from_slice(&b[1..8]);
        Header {
            op: b[0],
            version: u64::from_le_bytes(version),
            segment: Uuid::from_bytes(b[8..24].try_into().expect("16 bytes")),
            offset: word(24..32),
            len: word(32..40),
        }
    }
}

/// Socket buffer size asked for (the kernel caps it at `net.core.{w,r}mem_max`);
/// fixed buffers beat autotuning for multi-MiB transfers on loopback and veth
/// (measured with `transfer_bench`). 0 keeps autotuning (`MC_TRANSFER_SOCKBUF=0`).
pub const DEFAULT_SOCKBUF: usize = 4 << 20;

fn tune(stream: &TcpStream, bytes: usize) {
    let _ = stream.set_nodelay(true);
    if bytes > 0 {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(stream, bytes);
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(stream, bytes);
    }
}

fn read_code(stream: &mut TcpStream) -> std::io::Result<i32> {
    let mut b = [0u8; 4];
    stream.read_exact(&mut b)?;
    Ok(i32::from_le_bytes(b))
}

fn encode_landed(objects: &[Landed]) -> Vec<u8> {
    let mut out = Vec::new();
    for o in objects {
        out.extend_from_slice(&o.offset.to_le_bytes());
        out.extend_from_slice(&o.size.to_le_bytes());
        out.extend_from_slice(&o.version.to_le_bytes());
        out.extend_from_slice(&(o.key.len() as u32).to_le_bytes());
        out.extend_from_slice(o.key.as_bytes());
    }
    out
}

/// `None` for a malformed note (truncated entry, key not UTF-8).
fn decode_landed(mut b: &[u8]) -> Option<Vec<Landed>> {
    let mut out = Vec::new();
    let take = |n: usize, b: &mut &[u8]| -> Option<Vec<u8>> {
        if b.len() < n {
            return None;
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Some(head.to_vec())
    };
    while !b.is_empty() {
        let word = |v: Vec<u8>| u64::from_le_bytes(v.try_into().expect("8 bytes"));
        let offset = word(take(8, &mut b)?);
        let size = word(take(8, &mut b)?);
        let version = word(take(8, &mut b)?);
        let key_len = u32::from_le_bytes(take(4, &mut b)?.try_into().expect("4 bytes"));
        let key = String::from_utf8(take(key_len as usize, &mut b)?).ok()?;
        out.push(Landed {
            offset,
            size,
            version,
            key,
        });
    }
    Some(out)
}

fn code_result(code: i32) -> MResult<()> {
    match code {
        0 => Ok(()),
        c => Err(ErrorCode::from_i32(c).unwrap_or(ErrorCode::TransferFail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::LocalSpan;
    use mooncake_shm::RegionOptions;

    fn region(len: u64) -> Arc<Region> {
        Arc::new(Region::anonymous("t", len, &RegionOptions::default()).unwrap())
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn job(
        dir: Direction,
        server: &TransferServer,
        seg: SegmentId,
        remote: u64,
        local: &Arc<Region>,
        len: u64,
    ) -> TransferJob {
        TransferJob {
            version: 0,
            direction: dir,
            endpoint: server.local_addr().to_string(),
            segment_id: seg,
            remote_offset: remote,
            local: LocalSpan {
                memory: local.clone().into(),
                offset: 0,
                len,
            },
        }
    }

    #[test]
    fn writes_and_reads_round_trip_split_across_streams() {
        let seg = region(64 << 20);
        let id = Uuid::new_v4();
        let server = TransferServer::bind("127.0.0.1:0", "tok", Some((id, seg.clone()))).unwrap();
        let transport = TcpTransport::new("tok");
        let deadline = Instant::now() + Duration::from_secs(10);
        let len = (16 << 20) + 12_345;
        let src = region(len);
        let data = pattern(len as usize, 7);
        src.write(0, &data).unwrap();
        let r = transport.run(
            &[job(Direction::Write, &server, id, 4096, &src, len)],
            deadline,
        );
        assert_eq!(r, vec![Ok(())]);
        let mut in_segment = vec![0u8; len as usize];
        seg.read(4096, &mut in_segment).unwrap();
        assert!(in_segment == data, "bytes landed in the peer's segment");
        let dst = region(len);
        let r = transport.run(
            &[job(Direction::Read, &server, id, 4096, &dst, len)],
            deadline,
        );
        assert_eq!(r, vec![Ok(())]);
        let mut back = vec![0u8; len as usize];
        dst.read(0, &mut back).unwrap();
        assert!(back == data);
        assert_eq!(server.bytes_served(), (len, len));
        // Many small jobs in one call, on pooled connections.
        let jobs: Vec<TransferJob> = (0..32)
            .map(|i| TransferJob {
                version: 0,
                local: LocalSpan {
                    memory: dst.clone().into(),
                    offset: i * 4096,
                    len: 4096,
                },
                remote_offset: 4096 + i * 4096,
                ..job(Direction::Read, &server, id, 0, &dst, 0)
            })
            .collect();
        assert!(transport.run(&jobs, deadline).iter().all(|r| r.is_ok()));
    }

    /// The landed notes a server recorded.
    type Noted = Arc<Mutex<Vec<(SegmentId, Vec<Landed>)>>>;

    /// A transfer server on a 1 MiB segment, recording the landed notes it gets.
    fn noting_server() -> (Arc<Region>, SegmentId, TransferServer, Noted) {
        let seg = region(1 << 20);
        let id = Uuid::new_v4();
        let server = TransferServer::bind("127.0.0.1:0", "tok", Some((id, seg.clone()))).unwrap();
        let noted: Noted = Arc::new(Mutex::new(Vec::new()));
        let sink = noted.clone();
        server.on_landed(Box::new(move |segment, objects| {
            sink.lock().push((segment, objects));
        }));
        (seg, id, server, noted)
    }

    #[test]
    fn writes_started_with_an_earlier_master_are_refused_and_notes_reach_the_owner() {
        let (seg, id, server, noted) = noting_server();
        let transport = TcpTransport::new("tok");
        let deadline = Instant::now() + Duration::from_secs(10);
        let local = region(8192);
        local.write(0, &pattern(8192, 3)).unwrap();
        let write = |version: u64, at: u64| TransferJob {
            version,
            ..job(Direction::Write, &server, id, at, &local, 4096)
        };
        server.refuse_writes_below(1_000);
        assert_eq!(
            transport.run(&[write(999, 0)], deadline),
            vec![Err(ErrorCode::InvalidWrite)]
        );
        let mut untouched = vec![0u8; 4096];
        seg.read(0, &mut untouched).unwrap();
        assert!(
            untouched.iter().all(|&b| b == 0),
            "a refused write lands nothing"
        );
        // The current master's writes pass, and untagged ones (an older peer's).
        assert_eq!(
            transport.run(&[write(1_000, 0), write(0, 4096)], deadline),
            vec![Ok(()), Ok(())]
        );
        // The landed note names the object to the owner, checked against the segment.
        let object = Landed {
            offset: 0,
            size: 4096,
            version: 1_000,
            key: "k".into(),
        };
        let endpoint = server.local_addr().to_string();
        transport
            .note_landed(
                &endpoint,
                id,
                std::slice::from_ref(&object),
                1_000,
                deadline,
            )
            .unwrap();
        assert_eq!(*noted.lock(), vec![(id, vec![object.clone()])]);
        let outside = Landed {
            offset: 1 << 20,
            ..object.clone()
        };
        assert_eq!(
            transport.note_landed(&endpoint, id, &[outside], 1_000, deadline),
            Err(ErrorCode::InvalidParams)
        );
        assert_eq!(noted.lock().len(), 1);
        // A note of writes started with an earlier master (a copy's bytes that
        // landed before the owner remounted, its note after) is refused too: the
        // object it names may lie in space the new master gave to another. The
        // object's own version does not matter (a copy keeps an old one); the
        // version the writes carried does. The connection stays usable.
        assert_eq!(
            transport.note_landed(&endpoint, id, std::slice::from_ref(&object), 999, deadline),
            Err(ErrorCode::InvalidWrite)
        );
        assert_eq!(noted.lock().len(), 1, "a stale note records nothing");
        let old_object = Landed {
            version: 3,
            ..object
        };
        transport
            .note_landed(
                &endpoint,
                id,
                std::slice::from_ref(&old_object),
                1_000,
                deadline,
            )
            .unwrap();
        assert_eq!(noted.lock().len(), 2);
    }

    #[test]
    fn a_note_sent_behind_its_write_is_recorded_only_when_the_write_lands() {
        let (seg, id, server, noted) = noting_server();
        let transport = TcpTransport::new("tok");
        let deadline = Instant::now() + Duration::from_secs(10);
        let local = region(8192);
        let data = pattern(8192, 9);
        local.write(0, &data).unwrap();
        let object = |version: u64| Landed {
            offset: 4096,
            size: 8192,
            version,
            key: "small".into(),
        };
        let write = |version: u64| TransferJob {
            version,
            ..job(Direction::Write, &server, id, 4096, &local, 8192)
        };
        // Lands, and the owner hears of it once.
        assert_eq!(
            transport.write_and_note(&write(5), &[object(5)], deadline),
            (Ok(()), Ok(()))
        );
        let mut landed = vec![0u8; 8192];
        seg.read(4096, &mut landed).unwrap();
        assert!(landed == data);
        assert_eq!(*noted.lock(), vec![(id, vec![object(5)])]);
        // A refused write: nothing lands, nothing is noted.
        server.refuse_writes_below(100);
        local.write(0, &pattern(8192, 1)).unwrap();
        assert_eq!(
            transport.write_and_note(&write(99), &[object(99)], deadline),
            (Err(ErrorCode::InvalidWrite), Err(ErrorCode::TransferFail))
        );
        seg.read(4096, &mut landed).unwrap();
        assert!(landed == data, "a refused write lands nothing");
        assert_eq!(noted.lock().len(), 1, "and its note is not recorded");
        // The pool recovers from the closed connection.
        assert_eq!(
            transport.write_and_note(&write(100), &[object(100)], deadline),
            (Ok(()), Ok(()))
        );
        assert_eq!(noted.lock().len(), 2);
        // A note naming space outside the segment is refused after its write.
        let outside = Landed {
            offset: 1 << 20,
            ..object(101)
        };
        assert_eq!(
            transport.write_and_note(&write(101), &[outside], deadline),
            (Ok(()), Err(ErrorCode::InvalidParams))
        );
        assert_eq!(noted.lock().len(), 2);
    }

    #[test]
    fn landed_notes_that_are_cut_short_or_not_utf8_are_refused_whole() {
        let objects = vec![
            Landed {
                offset: 0,
                size: 10,
                version: 7,
                key: "a".into(),
            },
            Landed {
                offset: 64,
                size: 20,
                version: 8,
                key: "bb".into(),
            },
        ];
        let body = encode_landed(&objects);
        assert_eq!(decode_landed(&body), Some(objects));
        // Cut anywhere but at the end of the first entry (29 bytes: a whole note of
        // one object), a note decodes to nothing rather than to a torn entry.
        for cut in 1..body.len() {
            assert!(
                decode_landed(&body[..cut]).is_none() || cut == 29,
                "cut at {cut}"
            );
        }
        let mut bad = encode_landed(&[Landed {
            offset: 0,
            size: 1,
            version: 1,
            key: "x".into(),
        }]);
        *bad.last_mut().unwrap() = 0xFF;
        assert!(decode_landed(&bad).is_none(), "a key that is not UTF-8");
    }

    #[test]
    fn bad_requests_get_codes_and_the_server_keeps_serving() {
        let seg = region(1 << 20);
        let id = Uuid::new_v4();
        let server = TransferServer::bind("127.0.0.1:0", "tok", Some((id, seg.clone()))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let local = region(1 << 20);
        let transport = TcpTransport::new("tok");
        // Out of the segment's bounds, both ways.
        let r = transport.run(
            &[job(Direction::Read, &server, id, 1 << 20, &local, 4096)],
            deadline,
        );
        assert_eq!(r, vec![Err(ErrorCode::InvalidParams)]);
        let r = transport.run(
            &[job(
                Direction::Write,
                &server,
                id,
                (1 << 20) - 100,
                &local,
                4096,
            )],
            deadline,
        );
        assert_eq!(r, vec![Err(ErrorCode::InvalidParams)]);
        // Another segment id.
        let r = transport.run(
            &[job(
                Direction::Read,
                &server,
                Uuid::new_v4(),
                0,
                &local,
                4096,
            )],
            deadline,
        );
        assert_eq!(r, vec![Err(ErrorCode::SegmentNotFound)]);
        // Wrong token.
        let r = TcpTransport::new("nope").run(
            &[job(Direction::Read, &server, id, 0, &local, 4096)],
            deadline,
        );
        assert_eq!(r, vec![Err(ErrorCode::IllegalClient)]);
        // Garbage and a truncated header.
        let mut raw = TcpStream::connect(server.local_addr()).unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut raw2 = TcpStream::connect(server.local_addr()).unwrap();
        raw2.write_all(MAGIC).unwrap();
        drop(raw2);
        // A peer of an earlier transfer format is told so.
        let mut older = TcpStream::connect(server.local_addr()).unwrap();
        older.write_all(b"MCXFER01\0\0").unwrap();
        assert_eq!(
            read_code(&mut older).unwrap(),
            ErrorCode::InvalidVersion.as_i32()
        );
        // A dead peer: nothing listens there any more.
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let mut j = job(Direction::Read, &server, id, 0, &local, 4096);
        j.endpoint = dead_addr;
        assert_eq!(
            transport.run(&[j], deadline),
            vec![Err(ErrorCode::TransferFail)]
        );
        // Still serving.
        let r = transport.run(
            &[job(Direction::Read, &server, id, 0, &local, 4096)],
            deadline,
        );
        assert_eq!(r, vec![Ok(())]);
        let _ = raw.read(&mut [0u8; 4]);
    }

    #[test]
    fn pooled_connections_to_a_restarted_peer_are_replaced() {
        let seg = region(1 << 20);
        let id = Uuid::new_v4();
        let server = TransferServer::bind("127.0.0.1:0", "", Some((id, seg.clone()))).unwrap();
        let addr = server.local_addr();
        let transport = TcpTransport::new("");
        let local = region(1 << 20);
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(
            transport.run(
                &[job(Direction::Read, &server, id, 0, &local, 4096)],
                deadline
            )[0]
            .is_ok()
        );
        drop(server);
        let again = TransferServer::bind(&addr.to_string(), "", Some((id, seg))).unwrap();
        assert_eq!(again.local_addr(), addr);
        assert!(
            transport.run(
                &[job(Direction::Read, &again, id, 0, &local, 4096)],
                deadline
            )[0]
            .is_ok()
        );
    }

    #[test]
    fn an_expired_deadline_fails_reads_with_lease_expired() {
        let seg = region(1 << 20);
        let id = Uuid::new_v4();
        let server = TransferServer::bind("127.0.0.1:0", "", Some((id, seg))).unwrap();
        let local = region(1 << 20);
        let past = Instant::now();
        let r =
            TcpTransport::new("").run(&[job(Direction::Read, &server, id, 0, &local, 4096)], past);
        assert!(r[0].is_err());
    }

    #[test]
    fn same_host_writers_ask_first_and_are_refused_as_tcp_writers_are() {
        let (_seg, id, server, _noted) = noting_server();
        let transport = TcpTransport::new("tok");
        let deadline = Instant::now() + Duration::from_secs(10);
        let endpoint = server.local_addr().to_string();
        // A port that offers nothing says so.
        assert_eq!(transport.ask_local(&endpoint, deadline), None);
        server.offer_same_host(std::path::Path::new("/tmp/some.sock"));
        let (netns, socket) = transport.ask_local(&endpoint, deadline).unwrap();
        assert_eq!(Some(netns), samehost::network_namespace());
        assert_eq!(socket, std::path::PathBuf::from("/tmp/some.sock"));
        // Begins are checked as writes: range, segment, version floor.
        let local = region(1 << 20);
        let write = |offset: u64, len: u64, version: u64, segment: SegmentId| TransferJob {
            version,
            segment_id: segment,
            ..job(Direction::Write, &server, id, offset, &local, len)
        };
        server.refuse_writes_below(100);
        let jobs = [
            write(0, 4096, 100, id),
            write(0, 4096, 99, id),
            write(1 << 20, 4096, 100, id),
            write(0, 4096, 100, Uuid::new_v4()),
            write(4096, 8192, 0, id),
        ];
        let asked: Vec<&TransferJob> = jobs.iter().collect();
        assert_eq!(
            transport.begin_writes(&endpoint, &asked, deadline),
            vec![
                Ok(()),
                Err(ErrorCode::InvalidWrite),
                Err(ErrorCode::InvalidParams),
                Err(ErrorCode::SegmentNotFound),
                Ok(()),
            ]
        );
        // The connection stays usable after refusals.
        assert!(
            transport.run(
                &[job(Direction::Read, &server, id, 0, &local, 4096)],
                deadline
            )[0]
            .is_ok()
        );
        let (_, written) = server.bytes_served();
        assert_eq!(
            written,
            4096 + 8192,
            "accepted begins count as bytes written"
        );
    }
}
