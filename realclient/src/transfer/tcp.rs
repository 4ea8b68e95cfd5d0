//! The TCP transport: every real client listens on a transfer port; peers keep
//! pooled connections to it and read or write `(segment, offset, length)` ranges,
//! which the kernel copies straight between the socket and the mapped memory on both
//! sides. Large jobs are split across parallel connections.
//!
//! Wire format (little endian). A connection opens with `MCXFER01`, a `u16` token
//! length and the cluster token; the server answers an `i32` code (0 or
//! `ILLEGAL_CLIENT`). Then requests follow, each a 40-byte header
//! `op: u8, 7 × pad, segment: [u8; 16], offset: u64, len: u64`:
//! - read (`op` 1): the server answers an `i32` code, then, when 0, `len` bytes;
//! - write (`op` 2): `len` bytes follow the header; the server answers an `i32`
//!   code once they are in place. A refused write closes the connection (the bytes
//!   in flight are not drained).
//!
//! Blocking sockets on plain threads: each transfer is one long copy loop, which the
//! kernel runs best without an async reactor in between.

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

use super::{Direction, TransferJob, Transport};

const MAGIC: &[u8; 8] = b"MCXFER01";
const HEADER_LEN: usize = 40;
const OP_READ: u8 = 1;
const OP_WRITE: u8 = 2;
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
    segment: SegmentId,
    offset: u64,
    len: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.op;
        b[8..24].copy_from_slice(self.segment.as_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let word =
            |r: std::ops::Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        Header {
            op: b[0],
            segment: Uuid::from_bytes(b[8..24].try_into().expect("16 bytes")),
            offset: word(24..32),
            len: word(32..40),
        }
    }
}

/// Socket buffer size asked for (the kernel caps it at `net.core.{w,r}mem_max`);
/// fixed buffers beat autotuning for multi-MiB transfers on loopback and veth
/// (measured with `transfer_bench`). `MC_TRANSFER_SOCKBUF=0` keeps autotuning.
const DEFAULT_SOCKBUF: usize = 4 << 20;

fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let bytes = std::env::var("MC_TRANSFER_SOCKBUF")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_SOCKBUF);
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

fn code_result(code: i32) -> MResult<()> {
    match code {
        0 => Ok(()),
        c => Err(ErrorCode::from_i32(c).unwrap_or(ErrorCode::TransferFail)),
    }
}

// ------------------------------------------------------------------ client side

/// The client side of the TCP transport, with a connection pool per peer.
pub struct TcpTransport {
    credentials: Credentials,
    idle: Mutex<HashMap<String, Vec<(TcpStream, Instant)>>>,
    max_streams: usize,
    split_min: u64,
}

impl TcpTransport {
    /// A transport presenting `token` to peers (without one, the host secret to
    /// peers on this host); up to 4 parallel streams per call, jobs of 2 MiB or
    /// more split in pieces of at least 1 MiB.
    pub fn new(token: impl Into<String>) -> TcpTransport {
        TcpTransport {
            credentials: Credentials::new(&token.into()),
            idle: Mutex::new(HashMap::new()),
            max_streams: 4,
            split_min: 1 << 20,
        }
    }

    /// Parallel connections used by one call.
    pub fn with_streams(mut self, streams: usize) -> Self {
        self.max_streams = streams.max(1);
        self
    }

    /// Smallest piece a large job is split into.
    pub fn with_split_min(mut self, bytes: u64) -> Self {
        self.split_min = bytes.max(4096);
        self
    }

    fn connect(&self, endpoint: &str, deadline: Instant) -> MResult<TcpStream> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ErrorCode::TransferFail);
        }
        let addrs: Vec<SocketAddr> = endpoint
            .to_socket_addrs()
            .map_err(|_| ErrorCode::TransferFail)?
            .collect();
        let addr = addrs.first().ok_or(ErrorCode::TransferFail)?;
        let mut stream =
            TcpStream::connect_timeout(addr, remaining.min(CONNECT_TIMEOUT)).map_err(|e| {
                tracing::debug!("transfer connect to {endpoint}: {e}");
                ErrorCode::TransferFail
            })?;
        tune(&stream);
        let token = self.credentials.presented_to(Some(addr.ip()));
        let io = |stream: &mut TcpStream| -> std::io::Result<i32> {
            stream.set_read_timeout(Some(remaining.min(HELLO_TIMEOUT)))?;
            let mut hello = Vec::with_capacity(10 + token.len());
            hello.extend_from_slice(MAGIC);
            hello.extend_from_slice(&(token.len() as u16).to_le_bytes());
            hello.extend_from_slice(token.as_bytes());
            stream.write_all(&hello)?;
            read_code(stream)
        };
        let code = io(&mut stream).map_err(|_| ErrorCode::TransferFail)?;
        code_result(code)?;
        Ok(stream)
    }

    fn checkout(&self, endpoint: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(endpoint)?;
        list.retain(|(_, since)| since.elapsed() < POOL_IDLE_LIMIT);
        list.pop().map(|(s, _)| s)
    }

    fn checkin(&self, endpoint: &str, stream: TcpStream) {
        let mut idle = self.idle.lock();
        let list = idle.entry(endpoint.to_string()).or_default();
        if list.len() < MAX_IDLE_PER_PEER {
            list.push((stream, Instant::now()));
        }
    }

    /// Moves `len` bytes at `at` within `job`; retries once on a fresh connection
    /// when a pooled one turns out to be dead (both directions are idempotent).
    fn piece(&self, job: &TransferJob, at: u64, len: u64, deadline: Instant) -> MResult<()> {
        let pooled = self.checkout(&job.endpoint);
        let was_pooled = pooled.is_some();
        let mut stream = match pooled {
            Some(s) => s,
            None => self.connect(&job.endpoint, deadline)?,
        };
        match self.exchange(&mut stream, job, at, len, deadline) {
            Ok(Ok(())) => {
                self.checkin(&job.endpoint, stream);
                Ok(())
            }
            // The peer refused the request but the connection is fine (reads only).
            Ok(Err(code)) => {
                if job.direction == Direction::Read {
                    self.checkin(&job.endpoint, stream);
                }
                Err(code)
            }
            Err(e) if was_pooled && Instant::now() < deadline => {
                tracing::debug!(
                    "pooled transfer connection to {} failed ({e}); reconnecting",
                    job.endpoint
                );
                let mut fresh = self.connect(&job.endpoint, deadline)?;
                match self.exchange(&mut fresh, job, at, len, deadline) {
                    Ok(r) => {
                        if r.is_ok() {
                            self.checkin(&job.endpoint, fresh);
                        }
                        r
                    }
                    Err(_) => Err(self.io_failure(job, deadline)),
                }
            }
            Err(e) => {
                tracing::debug!("transfer with {} failed: {e}", job.endpoint);
                Err(self.io_failure(job, deadline))
            }
        }
    }

    fn io_failure(&self, job: &TransferJob, deadline: Instant) -> ErrorCode {
        if job.direction == Direction::Read && Instant::now() >= deadline {
            ErrorCode::LeaseExpired
        } else {
            ErrorCode::TransferFail
        }
    }

    /// One request on `stream`: `Err` for I/O failures (connection unusable),
    /// `Ok(Err)` for a refusal by the peer.
    fn exchange(
        &self,
        stream: &mut TcpStream,
        job: &TransferJob,
        at: u64,
        len: u64,
        deadline: Instant,
    ) -> std::io::Result<MResult<()>> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(remaining))?;
        stream.set_write_timeout(Some(remaining))?;
        let header = Header {
            op: match job.direction {
                Direction::Read => OP_READ,
                Direction::Write => OP_WRITE,
            },
            segment: job.segment_id,
            offset: job.remote_offset + at,
            len,
        };
        stream.write_all(&header.encode())?;
        let local = job.local.offset + at;
        let shm_io = |e: mooncake_shm::ShmError| match e {
            mooncake_shm::ShmError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        };
        match job.direction {
            Direction::Read => {
                if let Err(code) = code_result(read_code(stream)?) {
                    return Ok(Err(code));
                }
                job.local
                    .region
                    .recv_from(local, len, stream)
                    .map_err(shm_io)?;
                Ok(Ok(()))
            }
            Direction::Write => {
                let sent = job.local.region.send_to(local, len, stream).map_err(shm_io);
                // A refusal arrives before the peer closes: prefer its code.
                match (sent, read_code(stream)) {
                    (_, Ok(code)) if code != 0 => Ok(Err(code_result(code).unwrap_err())),
                    (Ok(()), Ok(_)) => Ok(Ok(())),
                    (Err(e), _) | (Ok(()), Err(e)) => Err(e),
                }
            }
        }
    }
}

impl Transport for TcpTransport {
    fn run(&self, jobs: &[TransferJob], deadline: Instant) -> Vec<MResult<()>> {
        for job in jobs {
            if job
                .local
                .region
                .check(job.local.offset, job.local.len)
                .is_err()
            {
                // Caller bug, not a peer failure; never touch memory outside the span.
                return jobs.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
            }
        }
        let mut pieces: Vec<(usize, u64, u64)> = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            let len = job.local.len;
            let parts = if len >= 2 * self.split_min {
                (len / self.split_min).min(self.max_streams as u64)
            } else {
                1
            };
            let step = len.div_ceil(parts).next_multiple_of(4096);
            let mut at = 0;
            while at < len {
                let n = step.min(len - at);
                pieces.push((i, at, n));
                at += n;
            }
        }
        let results: Vec<Mutex<MResult<()>>> = jobs.iter().map(|_| Mutex::new(Ok(()))).collect();
        let record = |i: usize, r: MResult<()>| {
            if let Err(e) = r {
                let mut slot = results[i].lock();
                if slot.is_ok() {
                    *slot = Err(e);
                }
            }
        };
        let workers = pieces.len().min(self.max_streams);
        if workers <= 1 {
            for &(i, at, n) in &pieces {
                record(i, self.piece(&jobs[i], at, n, deadline));
            }
        } else {
            let next = AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for _ in 0..workers {
                    scope.spawn(|| {
                        loop {
                            let k = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(i, at, n)) = pieces.get(k) else {
                                break;
                            };
                            if results[i].lock().is_err() {
                                continue; // the job already failed
                            }
                            record(i, self.piece(&jobs[i], at, n, deadline));
                        }
                    });
                }
            });
        }
        results.into_iter().map(|m| m.into_inner()).collect()
    }
}

// ------------------------------------------------------------------ server side

struct ServerState {
    credentials: Credentials,
    limiter: ConnectionLimiter,
    /// The segments served: the global segment and any mounted later.
    segments: parking_lot::RwLock<Vec<(SegmentId, Arc<Region>)>>,
    stopping: AtomicBool,
    /// Requests in progress; shutdown waits for them.
    gate: Gate,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    /// Bytes served, for metrics: (read by peers, written by peers).
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
}

/// The transfer port of a real client: serves reads and writes of its segment.
pub struct TransferServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    accept: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl TransferServer {
    /// Listens on `addr` (port 0 = any free port) for peers presenting `token`
    /// (without one: peers on this host present the host secret).
    pub fn bind(
        addr: &str,
        token: impl Into<String>,
        segment: Option<(SegmentId, Arc<Region>)>,
    ) -> std::io::Result<TransferServer> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let state = Arc::new(ServerState {
            credentials: Credentials::new(&token.into()),
            limiter: ConnectionLimiter::new(MAX_CONNECTIONS_PER_PEER, MAX_CONNECTIONS),
            segments: parking_lot::RwLock::new(segment.into_iter().collect()),
            stopping: AtomicBool::new(false),
            gate: Gate::default(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
        });
        let accept_state = state.clone();
        let accept = std::thread::Builder::new()
            .name("mc-xfer-accept".into())
            .spawn(move || accept_loop(listener, accept_state))?;
        Ok(TransferServer {
            addr: bound,
            state,
            accept: Mutex::new(Some(accept)),
        })
    }

    /// Serves one more segment (mounted after start).
    pub fn add_segment(&self, id: SegmentId, region: Arc<Region>) {
        self.state.segments.write().push((id, region));
    }

    /// Stops serving a segment; requests already reading or writing it finish.
    pub fn remove_segment(&self, id: &SegmentId) {
        self.state.segments.write().retain(|(s, _)| s != id);
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes peers read from and wrote into this segment.
    pub fn bytes_served(&self) -> (u64, u64) {
        (
            self.state.bytes_out.load(Ordering::Relaxed),
            self.state.bytes_in.load(Ordering::Relaxed),
        )
    }

    /// Stops accepting, lets requests in progress finish (up to `grace`), then
    /// closes every connection.
    pub fn shutdown(&self, grace: Duration) {
        if self.state.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept loop.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let woken = TcpStream::connect_timeout(&wake, Duration::from_millis(200)).is_ok();
        if let Some(accept) = self.accept.lock().take()
            && woken
        {
            // The listener closes with the thread: the port is free once this returns.
            let _ = accept.join();
        }
        self.state.gate.close();
        if !self.state.gate.wait_idle(grace) {
            tracing::warn!("transfers still running after {grace:?}; closing their connections");
        }
        for (_, conn) in self.state.conns.lock().drain() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TransferServer {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(5));
    }
}

fn accept_loop(listener: TcpListener, state: Arc<ServerState>) {
    let mut failures = 0u32;
    loop {
        let accepted = listener.accept();
        if state.stopping.load(Ordering::SeqCst) {
            break;
        }
        let (stream, peer) = match accepted {
            Ok(a) => {
                failures = 0;
                a
            }
            Err(e) => {
                // Out of fds: sleep instead of spinning on the same error.
                if let Some(held_back) = ACCEPT_ERRORS.admit() {
                    tracing::warn!(error = %e, held_back, "transfer port: accept failed");
                }
                std::thread::sleep(accept_backoff(failures));
                failures += 1;
                continue;
            }
        };
        let Some(permit) = state.limiter.admit(peer.ip()) else {
            if let Some(held_back) = REFUSALS.admit() {
                tracing::warn!(%peer, held_back, "transfer port: too many connections; refused");
            }
            continue;
        };
        let id = state.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = stream.try_clone() {
            state.conns.lock().insert(id, clone);
        }
        let st = state.clone();
        let spawned = std::thread::Builder::new()
            .name("mc-xfer-conn".into())
            .spawn(move || {
                let _permit = permit;
                if let Err(e) = serve_connection(stream, peer, &st) {
                    tracing::debug!("transfer connection from {peer} ended: {e}");
                }
                st.conns.lock().remove(&id);
            });
        if spawned.is_err() {
            state.conns.lock().remove(&id);
        }
    }
}

fn reply(stream: &mut TcpStream, code: i32) -> std::io::Result<()> {
    stream.write_all(&code.to_le_bytes())
}

fn serve_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &ServerState,
) -> std::io::Result<()> {
    tune(&stream);
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let mut magic = [0u8; 10];
    stream.read_exact(&mut magic)?;
    let token_len = u16::from_le_bytes([magic[8], magic[9]]) as usize;
    if &magic[..8] != MAGIC || token_len > MAX_TOKEN_LEN {
        let _ = reply(&mut stream, ErrorCode::InvalidParams.as_i32());
        return Err(std::io::Error::other("not a transfer client"));
    }
    let mut token = vec![0u8; token_len];
    stream.read_exact(&mut token)?;
    let given = String::from_utf8_lossy(&token);
    if !state.credentials.admits(Some(peer.ip()), &given) {
        let _ = reply(&mut stream, ErrorCode::IllegalClient.as_i32());
        if let Some(held_back) = REFUSALS.admit() {
            tracing::warn!(%peer, held_back, "transfer port: refused: {}", state.credentials.refusal());
        }
        return Err(std::io::Error::other("refused credential"));
    }
    reply(&mut stream, 0)?;
    stream.set_write_timeout(Some(STALLED_PEER_TIMEOUT))?;
    loop {
        let mut raw = [0u8; HEADER_LEN];
        // Idle pooled connections wait here, up to the idle timeout.
        stream.set_read_timeout(Some(IDLE_CONNECTION_TIMEOUT))?;
        match stream.read_exact(&mut raw) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(()); // idle too long
            }
            Err(e) => return Err(e),
        }
        stream.set_read_timeout(Some(STALLED_PEER_TIMEOUT))?;
        let Ok(_busy) = state.gate.enter() else {
            return Ok(()); // shutting down
        };
        let h = Header::decode(&raw);
        let found = state
            .segments
            .read()
            .iter()
            .find(|(id, _)| *id == h.segment)
            .map(|(_, r)| r.clone());
        let target = match &found {
            Some(region) => region
                .check(h.offset, h.len)
                .map(|_| region)
                .map_err(|_| ErrorCode::InvalidParams),
            None => Err(ErrorCode::SegmentNotFound),
        };
        match (h.op, target) {
            (OP_READ, Ok(region)) => {
                reply(&mut stream, 0)?;
                region
                    .send_to(h.offset, h.len, &mut stream)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                state.bytes_out.fetch_add(h.len, Ordering::Relaxed);
            }
            (OP_READ, Err(code)) => reply(&mut stream, code.as_i32())?,
            (OP_WRITE, Ok(region)) => {
                region
                    .recv_from(h.offset, h.len, &mut stream)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                state.bytes_in.fetch_add(h.len, Ordering::Relaxed);
                reply(&mut stream, 0)?;
            }
            (OP_WRITE, Err(code)) => {
                let _ = reply(&mut stream, code.as_i32());
                return Err(std::io::Error::other(format!("refused a write: {code}")));
            }
            (op, _) => {
                let _ = reply(&mut stream, ErrorCode::InvalidParams.as_i32());
                return Err(std::io::Error::other(format!("unknown op {op}")));
            }
        }
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
            direction: dir,
            endpoint: server.local_addr().to_string(),
            segment_id: seg,
            remote_offset: remote,
            local: LocalSpan {
                region: local.clone(),
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
                local: LocalSpan {
                    region: dst.clone(),
                    offset: i * 4096,
                    len: 4096,
                },
                remote_offset: 4096 + i * 4096,
                ..job(Direction::Read, &server, id, 0, &dst, 0)
            })
            .collect();
        assert!(transport.run(&jobs, deadline).iter().all(|r| r.is_ok()));
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
}
