//! Peers on this host: their global segments mapped here, so the bytes of a
//! transfer are copied straight between mappings instead of crossing a socket
//! twice (loopback TCP copies every byte into the kernel and out again).
//!
//! A peer's transfer port says where its Unix socket is and which network
//! namespace it runs in ([`OP_LOCAL`]). When that is this namespace and the
//! socket exists here, the segment is mapped in the background the way a
//! dummy maps it: through that socket (same uid, same cluster token), the fd
//! passed over it, and kept only if the peer names the same segment id the
//! transfer asked for. Until then, and for any segment not mapped, transfers go
//! over TCP as before.
//!
//! - Reads copy from the mapping and then check the read lease's deadline, as a
//!   dummy does for the local segment: bytes copied after it could be a newer
//!   object's.
//! - Writes ask the peer first ([`OP_BEGIN`]: the same range and version
//!   checks as a write over TCP, so a write started with an earlier master is
//!   refused), then copy, then send the landed note as any writer does. Small
//!   writes keep TCP: one round trip carrying the bytes beats two without them.
//! - A mapped peer is pinged every second; once it stops answering the mapping
//!   is dropped and the next transfer asks again (a restarted peer may have
//!   another segment).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use mooncake_ipc::IpcClient;
use mooncake_ipc::client::control_transport;
use mooncake_proto::realclient::RealClientServiceClient;
use mooncake_shm::RegionOptions;

use super::*;

/// Writes smaller than this go over TCP even to a mapped peer.
pub(super) const SAME_HOST_WRITE_MIN: u64 = 64 << 10;
/// How often a mapped peer is asked whether it is still there.
const PEER_PING: Duration = Duration::from_secs(1);
/// A peer on another host (or one that could not be mapped) is asked again
/// after this long.
const ASK_AGAIN: Duration = Duration::from_secs(30);
/// How long mapping a peer's segment may take.
const MAP_TIMEOUT: Duration = Duration::from_secs(30);

/// This process's network namespace (the inode of `/proc/self/ns/net`).
pub(super) fn network_namespace() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino())
}

/// The peers of one transport that are on this host, and their mappings.
pub(super) struct SameHost {
    netns: u64,
    token: String,
    runtime: tokio::runtime::Handle,
    peers: Arc<Mutex<HashMap<String, PeerState>>>,
    /// Bytes copied from and into mapped peers.
    pub(super) read_bytes: AtomicU64,
    pub(super) written_bytes: AtomicU64,
}

enum PeerState {
    /// Being asked or mapped; TCP meanwhile.
    Asking,
    /// Not on this host (or not mappable) as of then.
    Elsewhere(Instant),
    Mapped(Arc<PeerSegment>),
}

/// A peer's global segment, mapped here.
pub(super) struct PeerSegment {
    id: SegmentId,
    region: Region,
    alive: AtomicBool,
}

impl SameHost {
    /// Maps peers' segments with tasks on `runtime`, presenting `token` on
    /// their sockets. `None` when this process's namespace cannot be told.
    pub(super) fn new(runtime: tokio::runtime::Handle, token: String) -> Option<SameHost> {
        Some(SameHost {
            netns: network_namespace()?,
            token,
            runtime,
            peers: Arc::new(Mutex::new(HashMap::new())),
            read_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
        })
    }

    /// The mapping of `segment` at `endpoint`, when it is mapped; otherwise
    /// starts finding out (once per peer) and answers `None`.
    pub(super) fn mapped(
        &self,
        transport: &TcpTransport,
        endpoint: &str,
        segment: SegmentId,
        deadline: Instant,
    ) -> Option<Arc<PeerSegment>> {
        {
            let mut peers = self.peers.lock();
            match peers.get(endpoint) {
                Some(PeerState::Mapped(p)) if p.alive.load(Ordering::Acquire) => {
                    return (p.id == segment).then(|| p.clone());
                }
                Some(PeerState::Asking) => return None,
                Some(PeerState::Elsewhere(since)) if since.elapsed() < ASK_AGAIN => return None,
                _ => {}
            }
            peers.insert(endpoint.to_string(), PeerState::Asking);
        }
        match transport.ask_local(endpoint, deadline) {
            Some((netns, socket)) if netns == self.netns && socket.exists() => {
                let endpoint = endpoint.to_string();
                let token = self.token.clone();
                let peers = self.peers.clone();
                let table = peers.clone();
                let done = move |endpoint: &str, peer: Option<Arc<PeerSegment>>| {
                    settle(&table, endpoint, peer)
                };
                self.runtime.spawn(async move {
                    let mapped = tokio::time::timeout(MAP_TIMEOUT, map(&socket, &token)).await;
                    let (peer, rpc) = match mapped {
                        Ok(Ok(m)) => m,
                        Ok(Err(e)) => {
                            tracing::debug!("same-host peer {endpoint}: not mapped ({e})");
                            done(&endpoint, None);
                            return;
                        }
                        Err(_) => {
                            done(&endpoint, None);
                            return;
                        }
                    };
                    tracing::info!(
                        segment = %peer.id,
                        "transfers with {endpoint} copy through its segment mapped here ({})",
                        socket.display()
                    );
                    let peer = Arc::new(peer);
                    done(&endpoint, Some(peer.clone()));
                    loop {
                        tokio::time::sleep(PEER_PING).await;
                        let mut ctx = tarpc::context::current();
                        ctx.deadline = Instant::now() + PEER_PING * 2;
                        // Only a connection that fails ends it (a peer between
                        // masters answers, with an error).
                        if rpc.ping(ctx).await.is_err() {
                            break;
                        }
                    }
                    peer.alive.store(false, Ordering::Release);
                    // Unmapped once the copies under way are done with it: a mapping
                    // left in the table would keep a gone peer's memory alive.
                    let mut table = peers.lock();
                    if matches!(table.get(&endpoint), Some(PeerState::Mapped(p)) if Arc::ptr_eq(p, &peer))
                    {
                        table.remove(&endpoint);
                    }
                    drop(table);
                    tracing::info!("same-host peer {endpoint} went away; back to TCP");
                });
            }
            _ => settle(&self.peers, endpoint, None),
        }
        None
    }
}

impl SameHost {
    /// The Unix socket of the peer at `endpoint` when it runs on this host, in
    /// this network namespace, and the socket exists here.
    pub(super) fn socket_of(
        &self,
        transport: &TcpTransport,
        endpoint: &str,
        deadline: Instant,
    ) -> Option<PathBuf> {
        match transport.ask_local(endpoint, deadline) {
            Some((netns, socket)) if netns == self.netns && socket.exists() => Some(socket),
            _ => None,
        }
    }
}

/// Records how asking `endpoint` ended.
fn settle(
    peers: &Mutex<HashMap<String, PeerState>>,
    endpoint: &str,
    peer: Option<Arc<PeerSegment>>,
) {
    let state = match peer {
        Some(p) => PeerState::Mapped(p),
        None => PeerState::Elsewhere(Instant::now()),
    };
    peers.lock().insert(endpoint.to_string(), state);
}

/// Maps the global segment of the real client serving `socket`; the session
/// (kept open by the returned client) is how its liveness is seen.
async fn map(
    socket: &std::path::Path,
    token: &str,
) -> Result<(PeerSegment, RealClientServiceClient), String> {
    let (ipc, control) = IpcClient::connect(socket, token)
        .await
        .map_err(|e| e.to_string())?;
    let rpc = RealClientServiceClient::new(Default::default(), control_transport(control)).spawn();
    let info = rpc
        .info(tarpc::context::current())
        .await
        .map_err(|e| e.to_string())?;
    let id = info.segment.as_ref().ok_or("no segment")?.id;
    // Counted as a peer there, not as one of its dummies.
    rpc.attach_peer(tarpc::context::current())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|code| format!("attach_peer: {code}"))?;
    // Populated now, in the background, so no copy pays first-touch faults
    // (dummies map the segment the same way).
    let region = ipc
        .open(
            &info.segment_export,
            &RegionOptions::default().with_prefault(true),
        )
        .await
        .map_err(|e| e.to_string())?;
    // The fd channel may close now: the mapping holds the file.
    drop(ipc);
    Ok((
        PeerSegment {
            id,
            region,
            alive: AtomicBool::new(true),
        },
        rpc,
    ))
}

impl PeerSegment {
    /// Copies `job`'s bytes between its local memory and this segment. A read
    /// finished after `deadline` (its lease) is `LEASE_EXPIRED`: the space may
    /// hold another object by then.
    pub(super) fn copy(&self, job: &TransferJob, deadline: Instant) -> MResult<()> {
        let local = &job.local;
        let copied = match job.direction {
            Direction::Read => {
                local
                    .memory
                    .copy_from(local.offset, &self.region, job.remote_offset, local.len)
            }
            // Space in the owner's segment no one reads soon: past the caches.
            Direction::Write => local.memory.copy_to_segment(
                local.offset,
                &self.region,
                job.remote_offset,
                local.len,
            ),
        };
        copied.map_err(|_| ErrorCode::InvalidParams)?;
        if job.direction == Direction::Read && Instant::now() > deadline {
            return Err(ErrorCode::LeaseExpired);
        }
        Ok(())
    }
}

impl TcpTransport {
    /// Asks the peer at `endpoint` where it offers its segment on this host:
    /// its network namespace and Unix socket, or `None`.
    pub(super) fn ask_local(&self, endpoint: &str, deadline: Instant) -> Option<(u64, PathBuf)> {
        let answer = std::cell::RefCell::new(None);
        let asked = self.pooled(endpoint, deadline, true, |stream| {
            until(stream, deadline)?;
            let header = Header {
                version: 0,
                op: OP_LOCAL,
                segment: SegmentId::nil(),
                offset: 0,
                len: 0,
            };
            stream.write_all(&header.encode())?;
            if let Err(code) = code_result(read_code(stream)?) {
                return Ok(Err(code));
            }
            let mut len = [0u8; 4];
            stream.read_exact(&mut len)?;
            let len = u32::from_le_bytes(len) as usize;
            if !(8..=MAX_LOCAL_ANSWER).contains(&len) {
                return Err(std::io::Error::other("malformed local answer"));
            }
            let mut body = vec![0u8; len];
            stream.read_exact(&mut body)?;
            let netns = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(&body[8..]));
            *answer.borrow_mut() = Some((netns, path));
            Ok(Ok(()))
        });
        match asked {
            Ok(Ok(())) => answer.into_inner(),
            _ => None,
        }
    }

    /// Asks the peer at `endpoint` to accept `jobs` (writes into its segment that
    /// this side copies itself), all on one connection: one round trip. Per job,
    /// `Ok` or the peer's refusal.
    pub(super) fn begin_writes(
        &self,
        endpoint: &str,
        jobs: &[&TransferJob],
        deadline: Instant,
    ) -> Vec<MResult<()>> {
        let codes = std::cell::RefCell::new(Vec::new());
        let asked = self.pooled(endpoint, deadline, true, |stream| {
            until(stream, deadline)?;
            let mut message = Vec::with_capacity(jobs.len() * HEADER_LEN);
            for job in jobs {
                let header = Header {
                    version: job.version,
                    op: OP_BEGIN,
                    segment: job.segment_id,
                    offset: job.remote_offset,
                    len: job.local.len,
                };
                message.extend_from_slice(&header.encode());
            }
            stream.write_all(&message)?;
            let mut got = Vec::with_capacity(jobs.len());
            for _ in jobs {
                got.push(code_result(read_code(stream)?));
            }
            *codes.borrow_mut() = got;
            Ok(Ok(()))
        });
        match asked {
            Ok(Ok(())) => codes.into_inner(),
            Ok(Err(code)) | Err(PoolFailure::Connect(code)) => vec![Err(code); jobs.len()],
            Err(PoolFailure::Io) => vec![Err(ErrorCode::TransferFail); jobs.len()],
        }
    }

    /// Runs the jobs that go to mapped peers on this host, filling their
    /// places in `out`; the others are left `None` for TCP.
    pub(super) fn run_same_host(
        &self,
        jobs: &[TransferJob],
        deadline: Instant,
        out: &mut [Option<MResult<()>>],
    ) {
        let Some(same_host) = &self.same_host else {
            return;
        };
        // The copies to make: reads at once, writes once their owner accepted them.
        let mut copies: Vec<(usize, Arc<PeerSegment>)> = Vec::new();
        let mut writes: HashMap<&str, Vec<(usize, Arc<PeerSegment>)>> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            if job.direction == Direction::Write && job.local.len < SAME_HOST_WRITE_MIN {
                continue;
            }
            let Some(peer) = same_host.mapped(self, &job.endpoint, job.segment_id, deadline) else {
                continue;
            };
            match job.direction {
                Direction::Read => copies.push((i, peer)),
                Direction::Write => writes.entry(&job.endpoint).or_default().push((i, peer)),
            }
        }
        for (endpoint, list) in writes {
            let asked: Vec<&TransferJob> = list.iter().map(|(i, _)| &jobs[*i]).collect();
            let begun = self.begin_writes(endpoint, &asked, deadline);
            for ((i, peer), begun) in list.into_iter().zip(begun) {
                match begun {
                    Ok(()) => copies.push((i, peer)),
                    Err(code) => out[i] = Some(Err(code)),
                }
            }
        }
        let copy_all = |part: &[(usize, Arc<PeerSegment>)]| -> Vec<(usize, MResult<()>)> {
            part.iter()
                .map(|(i, peer)| (*i, peer.copy(&jobs[*i], deadline)))
                .collect()
        };
        // A batch of values each too small to be split (a copy of 4 MiB or more
        // splits itself) goes half to the copy helper, so both cores copy.
        let total: u64 = copies.iter().map(|(i, _)| jobs[*i].local.len).sum();
        let done = if copies.len() >= 2 && total >= mooncake_shm::copy::PARALLEL_COPY_MIN as u64 {
            let mut half = 0;
            let mut bytes = 0;
            while half < copies.len() && bytes * 2 < total {
                bytes += jobs[copies[half].0].local.len;
                half += 1;
            }
            let (here, there) = copies.split_at(half);
            let (mut done, helped) =
                mooncake_shm::copy::join(|| copy_all(here), || copy_all(there));
            done.extend(helped.unwrap_or_else(|| copy_all(there)));
            done
        } else {
            copy_all(&copies)
        };
        for (i, result) in done {
            if result.is_ok() {
                let counter = match jobs[i].direction {
                    Direction::Read => &same_host.read_bytes,
                    Direction::Write => &same_host.written_bytes,
                };
                counter.fetch_add(jobs[i].local.len, Ordering::Relaxed);
            }
            out[i] = Some(result);
        }
    }

    /// Whether `job` is a write this transport copies itself into a mapped
    /// peer (its landed note then goes on its own, after the copy).
    pub(super) fn writes_same_host(&self, job: &TransferJob, deadline: Instant) -> bool {
        job.direction == Direction::Write
            && job.local.len >= SAME_HOST_WRITE_MIN
            && self.same_host.as_ref().is_some_and(|sh| {
                sh.mapped(self, &job.endpoint, job.segment_id, deadline)
                    .is_some()
            })
    }
}
