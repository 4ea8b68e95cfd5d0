//! The server side: the transfer port, one thread per connection (bounded per
//! peer and in total), each request checked against the segments served.

use super::*;

struct ServerState {
    credentials: Credentials,
    sockbuf: usize,
    limiter: ConnectionLimiter,
    /// The segments served: the global segment, any mounted later, and the
    /// disk tier, with its block sums (its writes are summed, its reads checked).
    segments: parking_lot::RwLock<Vec<Served>>,
    stopping: AtomicBool,
    /// Requests in progress; shutdown waits for them.
    gate: Gate,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    /// Bytes served, for metrics: (read by peers, written by peers).
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    /// Records objects peers wrote (the owner's inventory).
    on_landed: std::sync::OnceLock<LandedHook>,
    /// Writes of an older object version were started with an earlier master.
    write_floor: AtomicU64,
    /// What a real client on this host needs to map the segment itself:
    /// this process's network namespace and its Unix socket.
    local: std::sync::OnceLock<Vec<u8>>,
}

/// Stale writes refused are logged at most once a second.
static STALE_WRITES: LogGate = LogGate::new(Duration::from_secs(1));
/// Disk-tier reads that failed their checksum, likewise.
static CORRUPT_READS: LogGate = LogGate::new(Duration::from_secs(1));

/// One segment the port serves.
struct Served {
    id: SegmentId,
    region: Arc<Region>,
    sums: Option<Arc<mooncake_shm::blocksums::BlockSums>>,
}

/// Called with the objects a peer's write put into one of the served segments.
pub type LandedHook = Box<dyn Fn(SegmentId, Vec<Landed>) + Send + Sync>;

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
        Self::bind_tuned(addr, token, segment, DEFAULT_SOCKBUF)
    }

    /// [`bind`](Self::bind) with the socket buffer size of its connections
    /// (0 = kernel autotuning).
    pub fn bind_tuned(
        addr: &str,
        token: impl Into<String>,
        segment: Option<(SegmentId, Arc<Region>)>,
        sockbuf: usize,
    ) -> std::io::Result<TransferServer> {
        let listener = TcpListener::bind(addr)?;
        let bound = listener.local_addr()?;
        let state = Arc::new(ServerState {
            credentials: Credentials::new(&token.into()),
            sockbuf,
            limiter: ConnectionLimiter::new(MAX_CONNECTIONS_PER_PEER, MAX_CONNECTIONS),
            segments: parking_lot::RwLock::new(
                segment
                    .into_iter()
                    .map(|(id, region)| Served {
                        id,
                        region,
                        sums: None,
                    })
                    .collect(),
            ),
            stopping: AtomicBool::new(false),
            gate: Gate::default(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            on_landed: std::sync::OnceLock::new(),
            write_floor: AtomicU64::new(0),
            local: std::sync::OnceLock::new(),
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

    /// Where landed notes go (set once; notes before it are answered and dropped).
    pub fn on_landed(&self, hook: LandedHook) {
        let _ = self.state.on_landed.set(hook);
    }

    /// Tells real clients on this host (the same network namespace) that they
    /// may map the global segment through the Unix socket at `socket` and copy
    /// to and from it themselves, instead of sending the bytes over TCP.
    pub fn offer_same_host(&self, socket: &std::path::Path) {
        use std::os::unix::ffi::OsStrExt;
        let Some(netns) = samehost::network_namespace() else {
            return;
        };
        let mut answer = netns.to_le_bytes().to_vec();
        answer.extend_from_slice(socket.as_os_str().as_bytes());
        if answer.len() <= MAX_LOCAL_ANSWER {
            let _ = self.state.local.set(answer);
        }
    }

    /// From now on refuses writes of objects older than `version` (with
    /// `INVALID_WRITE`): they were started with a master that is gone, which may
    /// have given their space to another object since (see
    /// [`RemountReport::version_floor`](mooncake_proto::RemountReport)).
    pub fn refuse_writes_below(&self, version: u64) {
        self.state.write_floor.fetch_max(version, Ordering::AcqRel);
    }

    /// Serves one more segment (mounted after start).
    pub fn add_segment(&self, id: SegmentId, region: Arc<Region>) {
        self.state.segments.write().push(Served {
            id,
            region,
            sums: None,
        });
    }

    /// Serves the disk tier's segment: every write into it is checksummed per
    /// block, and a read of a block that does not match is refused with
    /// `CHECKSUM_MISMATCH`.
    pub fn add_disk_segment(
        &self,
        id: SegmentId,
        region: Arc<Region>,
        sums: Arc<mooncake_shm::blocksums::BlockSums>,
    ) {
        self.state.segments.write().push(Served {
            id,
            region,
            sums: Some(sums),
        });
    }

    /// Stops serving a segment; requests already reading or writing it finish.
    pub fn remove_segment(&self, id: &SegmentId) {
        self.state.segments.write().retain(|s| s.id != *id);
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
    tune(&stream, state.sockbuf);
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let mut magic = [0u8; 10];
    stream.read_exact(&mut magic)?;
    let token_len = u16::from_le_bytes([magic[8], magic[9]]) as usize;
    if &magic[..6] == MAGIC_PREFIX && &magic[..8] != MAGIC {
        let _ = reply(&mut stream, ErrorCode::InvalidVersion.as_i32());
        return Err(std::io::Error::other(format!(
            "a transfer peer speaking {} (this build speaks {}): run every host from the same build",
            String::from_utf8_lossy(&magic[..8]),
            String::from_utf8_lossy(MAGIC)
        )));
    }
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
        let (found, sums) = state
            .segments
            .read()
            .iter()
            .find(|s| s.id == h.segment)
            .map_or((None, None), |s| (Some(s.region.clone()), s.sums.clone()));
        let target = match &found {
            Some(region) => region
                .check(h.offset, h.len)
                .map(|_| region)
                .map_err(|_| ErrorCode::InvalidParams),
            None => Err(ErrorCode::SegmentNotFound),
        };
        let floor = state.write_floor.load(Ordering::Acquire);
        // A write or landed note started with an earlier master instance than
        // the one this owner remounted with: that master may have handed the
        // space out again.
        let stale =
            matches!(h.op, OP_WRITE | OP_BEGIN | OP_LANDED) && h.version != 0 && h.version < floor;
        if stale && let Some(held_back) = STALE_WRITES.admit() {
            tracing::warn!(%peer, op = h.op, version = h.version, floor, held_back, "refused a write or landed note started with an earlier master");
        }
        let target = match target {
            Ok(_) if stale && matches!(h.op, OP_WRITE | OP_BEGIN) => Err(ErrorCode::InvalidWrite),
            // The disk tier sums what it receives: only this port writes it.
            Ok(_) if h.op == OP_BEGIN && sums.is_some() => Err(ErrorCode::InvalidParams),
            other => other,
        };
        let target = match target {
            Ok(region)
                if h.op == OP_READ && sums.as_ref().is_some_and(|s| !s.verify(h.offset, h.len)) =>
            {
                if let Some(held_back) = CORRUPT_READS.admit() {
                    tracing::warn!(
                        offset = h.offset,
                        len = h.len,
                        held_back,
                        "disk tier: a read failed its checksum; refused"
                    );
                }
                let _ = region;
                Err(ErrorCode::ChecksumMismatch)
            }
            other => other,
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
                if let Some(sums) = &sums {
                    sums.seal(h.offset, h.len);
                }
                state.bytes_in.fetch_add(h.len, Ordering::Relaxed);
                reply(&mut stream, 0)?;
            }
            (OP_WRITE, Err(code)) => {
                let _ = reply(&mut stream, code.as_i32());
                return Err(std::io::Error::other(format!("refused a write: {code}")));
            }
            (OP_BEGIN, Ok(_)) => {
                state.bytes_in.fetch_add(h.len, Ordering::Relaxed);
                reply(&mut stream, 0)?;
            }
            (OP_BEGIN, Err(code)) => reply(&mut stream, code.as_i32())?,
            (OP_LOCAL, _) => match state.local.get() {
                Some(answer) => {
                    let mut message = 0i32.to_le_bytes().to_vec();
                    message.extend_from_slice(&(answer.len() as u32).to_le_bytes());
                    message.extend_from_slice(answer);
                    stream.write_all(&message)?;
                }
                None => reply(&mut stream, ErrorCode::NotSupported.as_i32())?,
            },
            (OP_LANDED, _) if h.len > MAX_NOTE_LEN => {
                let _ = reply(&mut stream, ErrorCode::InvalidParams.as_i32());
                return Err(std::io::Error::other("landed note too long"));
            }
            (OP_LANDED, _) => {
                let mut body = vec![0u8; h.len as usize];
                stream.read_exact(&mut body)?;
                let code = match (&found, decode_landed(&body)) {
                    _ if stale => ErrorCode::InvalidWrite.as_i32(),
                    (None, _) => ErrorCode::SegmentNotFound.as_i32(),
                    (Some(region), Some(objects))
                        if objects
                            .iter()
                            .all(|o| region.check(o.offset, o.size).is_ok()) =>
                    {
                        if let Some(hook) = state.on_landed.get() {
                            hook(h.segment, objects);
                        }
                        0
                    }
                    _ => ErrorCode::InvalidParams.as_i32(),
                };
                reply(&mut stream, code)?;
            }
            (op, _) => {
                let _ = reply(&mut stream, ErrorCode::InvalidParams.as_i32());
                return Err(std::io::Error::other(format!("unknown op {op}")));
            }
        }
    }
}
