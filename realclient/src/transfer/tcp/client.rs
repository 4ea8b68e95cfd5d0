//! The client side: a connection pool per peer, large jobs split across parallel
//! connections, one retry on a fresh connection for a pooled one found dead.

use super::*;

/// The client side of the TCP transport, with a connection pool per peer.
pub struct TcpTransport {
    credentials: Credentials,
    sockbuf: usize,
    idle: Mutex<HashMap<String, Vec<(TcpStream, Instant)>>>,
    max_streams: usize,
    split_min: u64,
    /// Peers on this host whose segments are mapped here.
    pub(super) same_host: Option<samehost::SameHost>,
}

impl TcpTransport {
    /// A transport presenting `token` to peers (without one, the host secret to
    /// peers on this host); up to 4 parallel streams per call, jobs of 2 MiB or
    /// more split in pieces of at least 1 MiB.
    pub fn new(token: impl Into<String>) -> TcpTransport {
        TcpTransport {
            credentials: Credentials::new(&token.into()),
            sockbuf: DEFAULT_SOCKBUF,
            idle: Mutex::new(HashMap::new()),
            max_streams: 4,
            split_min: 1 << 20,
            same_host: None,
        }
    }

    /// Copies to and from peers on this host through their segments mapped
    /// here (mapped by tasks on `runtime`, presenting `token` on their Unix
    /// sockets) instead of over TCP; see `samehost`.
    pub fn with_same_host(mut self, runtime: tokio::runtime::Handle, token: &str) -> Self {
        self.same_host = samehost::SameHost::new(runtime, token.to_string());
        self
    }

    /// Socket buffer size for its connections (0 = kernel autotuning).
    pub fn with_sockbuf(mut self, bytes: usize) -> Self {
        self.sockbuf = bytes;
        self
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
            .map_err(|e| {
                tracing::debug!("transfer endpoint {endpoint}: {e}");
                ErrorCode::TransferFail
            })?
            .collect();
        let addr = addrs.first().ok_or(ErrorCode::TransferFail)?;
        let mut stream =
            TcpStream::connect_timeout(addr, remaining.min(CONNECT_TIMEOUT)).map_err(|e| {
                tracing::debug!("transfer connect to {endpoint}: {e}");
                ErrorCode::TransferFail
            })?;
        tune(&stream, self.sockbuf);
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
        let code = io(&mut stream).map_err(|e| {
            tracing::debug!("transfer hello to {endpoint}: {e}");
            ErrorCode::TransferFail
        })?;
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

    /// Runs `request` on a pooled connection to `endpoint` (or a new one), once
    /// more on a fresh connection when a pooled one turns out to be dead (every
    /// request here is idempotent). The connection goes back to the pool after a
    /// success, and after a refusal when `keep_after_refusal` (the peer answered
    /// and keeps the connection). `Err` only when no connection could carry it.
    pub(super) fn pooled(
        &self,
        endpoint: &str,
        deadline: Instant,
        keep_after_refusal: bool,
        mut request: impl FnMut(&mut TcpStream) -> std::io::Result<MResult<()>>,
    ) -> Result<MResult<()>, PoolFailure> {
        let pooled = self.checkout(endpoint);
        let was_pooled = pooled.is_some();
        let mut stream = match pooled {
            Some(s) => s,
            None => self
                .connect(endpoint, deadline)
                .map_err(PoolFailure::Connect)?,
        };
        let answer = match request(&mut stream) {
            Err(e) if was_pooled && Instant::now() < deadline => {
                tracing::debug!(
                    "pooled transfer connection to {endpoint} failed ({e}); reconnecting"
                );
                stream = self
                    .connect(endpoint, deadline)
                    .map_err(PoolFailure::Connect)?;
                request(&mut stream)
            }
            other => other,
        };
        match answer {
            Ok(r) => {
                if r.is_ok() || keep_after_refusal {
                    self.checkin(endpoint, stream);
                }
                Ok(r)
            }
            Err(e) => {
                tracing::debug!("transfer with {endpoint} failed: {e}");
                Err(PoolFailure::Io)
            }
        }
    }

    /// Moves `len` bytes at `at` within `job`.
    fn piece(&self, job: &TransferJob, at: u64, len: u64, deadline: Instant) -> MResult<()> {
        // A refused read leaves the connection usable; a refused write closes it.
        let keep = job.direction == Direction::Read;
        match self.pooled(&job.endpoint, deadline, keep, |stream| {
            self.exchange(stream, job, at, len, deadline)
        }) {
            Ok(r) => r,
            Err(PoolFailure::Connect(code)) => Err(code),
            Err(PoolFailure::Io) => Err(self.io_failure(job, deadline)),
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
        until(stream, deadline)?;
        let header = Header {
            version: match job.direction {
                Direction::Write => job.version,
                Direction::Read => 0,
            },
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
                    .memory
                    .recv_from(local, len, stream)
                    .map_err(shm_io)?;
                Ok(Ok(()))
            }
            Direction::Write => {
                let sent = job.local.memory.send_to(local, len, stream).map_err(shm_io);
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

impl TcpTransport {
    /// A write of one piece and its landed note, the note sent right behind the
    /// bytes without waiting for the write's answer: `Err` for I/O failures,
    /// else `(write, note)`. A refused write closes the connection on the
    /// server, so its note is never recorded.
    fn write_then_note(
        stream: &mut TcpStream,
        job: &TransferJob,
        body: &[u8],
        deadline: Instant,
    ) -> std::io::Result<(MResult<()>, MResult<()>)> {
        until(stream, deadline)?;
        let header = Header {
            version: job.version,
            op: OP_WRITE,
            segment: job.segment_id,
            offset: job.remote_offset,
            len: job.local.len,
        };
        stream.write_all(&header.encode())?;
        let sent = job
            .local
            .memory
            .send_to(job.local.offset, job.local.len, stream)
            .map_err(|e| std::io::Error::other(e.to_string()));
        let note = Header {
            version: job.version,
            op: OP_LANDED,
            segment: job.segment_id,
            offset: 0,
            len: body.len() as u64,
        };
        let noted = sent.and_then(|()| {
            let mut message = note.encode().to_vec();
            message.extend_from_slice(body);
            stream.write_all(&message)
        });
        // A refusal arrives before the peer closes: prefer its code.
        let written = match (noted, read_code(stream)) {
            (_, Ok(code)) if code != 0 => {
                return Ok((code_result(code), Err(ErrorCode::TransferFail)));
            }
            (Ok(()), Ok(_)) => Ok(()),
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        };
        written?;
        Ok((Ok(()), code_result(read_code(stream)?)))
    }

    /// Sends one landed note on `stream`: `Err` for I/O failures.
    fn note(
        stream: &mut TcpStream,
        segment: SegmentId,
        body: &[u8],
        write_version: u64,
        deadline: Instant,
    ) -> std::io::Result<MResult<()>> {
        until(stream, deadline)?;
        let header = Header {
            version: write_version,
            op: OP_LANDED,
            segment,
            offset: 0,
            len: body.len() as u64,
        };
        let mut message = header.encode().to_vec();
        message.extend_from_slice(body);
        stream.write_all(&message)?;
        Ok(code_result(read_code(stream)?))
    }
}

impl Transport for TcpTransport {
    fn write_and_note(
        &self,
        job: &TransferJob,
        objects: &[Landed],
        deadline: Instant,
    ) -> (MResult<()>, MResult<()>) {
        let body = encode_landed(objects);
        let one_piece = job.local.len < 2 * self.split_min;
        if job.direction != Direction::Write
            || !one_piece
            || self.writes_same_host(job, deadline)
            || body.len() as u64 > MAX_NOTE_LEN
            || job
                .local
                .memory
                .check(job.local.offset, job.local.len)
                .is_err()
        {
            return crate::transfer::write_then_note(self, job, objects, deadline);
        }
        let noted = std::cell::Cell::new(Err(ErrorCode::TransferFail));
        let written = self.pooled(&job.endpoint, deadline, false, |stream| {
            Self::write_then_note(stream, job, &body, deadline).map(|(w, n)| {
                noted.set(n);
                w
            })
        });
        match written {
            Ok(w) => (w, noted.get()),
            Err(PoolFailure::Connect(code)) => (Err(code), Err(ErrorCode::TransferFail)),
            Err(PoolFailure::Io) => (
                Err(self.io_failure(job, deadline)),
                Err(ErrorCode::TransferFail),
            ),
        }
    }

    fn note_landed(
        &self,
        endpoint: &str,
        segment: SegmentId,
        objects: &[Landed],
        write_version: u64,
        deadline: Instant,
    ) -> MResult<()> {
        // Large batches go in several notes, each under the server's cap.
        let mut chunks: Vec<Vec<u8>> = vec![Vec::new()];
        for o in objects {
            let one = encode_landed(std::slice::from_ref(o));
            let last = chunks.last_mut().expect("one chunk");
            if !last.is_empty() && (last.len() + one.len()) as u64 > MAX_NOTE_LEN {
                chunks.push(one);
            } else {
                last.extend_from_slice(&one);
            }
        }
        for body in chunks.iter().filter(|b| !b.is_empty()) {
            match self.pooled(endpoint, deadline, true, |stream| {
                Self::note(stream, segment, body, write_version, deadline)
            }) {
                Ok(r) => r?,
                Err(PoolFailure::Connect(code)) => return Err(code),
                Err(PoolFailure::Io) => return Err(ErrorCode::TransferFail),
            }
        }
        Ok(())
    }

    fn same_host_bytes(&self) -> (u64, u64) {
        self.same_host.as_ref().map_or((0, 0), |sh| {
            (
                sh.read_bytes.load(Ordering::Relaxed),
                sh.written_bytes.load(Ordering::Relaxed),
            )
        })
    }

    fn local_socket(&self, endpoint: &str, deadline: Instant) -> Option<std::path::PathBuf> {
        self.same_host.as_ref()?.socket_of(self, endpoint, deadline)
    }

    fn run(&self, jobs: &[TransferJob], deadline: Instant) -> Vec<MResult<()>> {
        for job in jobs {
            if job
                .local
                .memory
                .check(job.local.offset, job.local.len)
                .is_err()
            {
                // Caller bug, not a peer failure; never touch memory outside the span.
                return jobs.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
            }
        }
        let mut out: Vec<Option<MResult<()>>> = vec![None; jobs.len()];
        self.run_same_host(jobs, deadline, &mut out);
        if out.iter().all(Option::is_none) {
            return self.run_tcp(jobs, deadline);
        }
        let rest: Vec<usize> = (0..jobs.len()).filter(|&i| out[i].is_none()).collect();
        if !rest.is_empty() {
            let over_tcp: Vec<TransferJob> = rest.iter().map(|&i| jobs[i].clone()).collect();
            for (i, r) in rest.into_iter().zip(self.run_tcp(&over_tcp, deadline)) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Err(ErrorCode::InternalError)))
            .collect()
    }
}

impl TcpTransport {
    /// [`Transport::run`] over TCP: large jobs split across parallel streams.
    fn run_tcp(&self, jobs: &[TransferJob], deadline: Instant) -> Vec<MResult<()>> {
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
            let work = || loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(i, at, n)) = pieces.get(k) else {
                    break;
                };
                if results[i].lock().is_err() {
                    continue; // the job already failed
                }
                record(i, self.piece(&jobs[i], at, n, deadline));
            };
            // This thread takes pieces too: one thread fewer to start.
            std::thread::scope(|scope| {
                for _ in 1..workers {
                    scope.spawn(work);
                }
                work();
            });
        }
        results.into_iter().map(|m| m.into_inner()).collect()
    }
}

/// Bounds every read and write on `stream` by `deadline` (`TimedOut` once past it).
pub(super) fn until(stream: &TcpStream, deadline: Instant) -> std::io::Result<()> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(remaining))?;
    stream.set_write_timeout(Some(remaining))
}

/// Why [`TcpTransport::pooled`] could not carry a request.
pub(super) enum PoolFailure {
    /// No connection could be made (the code says why).
    Connect(ErrorCode),
    /// The connection failed in the middle of the request.
    Io,
}
