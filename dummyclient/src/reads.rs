//! Reads: whole objects into bytes, slices or registered memory; local replicas copied here, remote ones moved by the real client; read grants released.

use super::*;

impl DummyClient {
    /// Reads a whole object.
    pub fn get(&self, key: &str) -> MResult<Vec<u8>> {
        self.batch_get(&[key.to_string()]).remove(0)
    }

    /// Reads whole objects.
    pub fn batch_get(&self, keys: &[String]) -> Vec<MResult<Vec<u8>>> {
        let mut dsts: Vec<Option<Dst>> =
            keys.iter().map(|_| Some(Dst::Owned(Vec::new()))).collect();
        let results = self.get_core(keys, &mut dsts);
        results
            .into_iter()
            .zip(dsts)
            .map(|(r, d)| match (r, d) {
                (Ok(_), Some(Dst::Owned(v))) => Ok(v),
                (Err(e), _) => Err(e),
                _ => Err(ErrorCode::InternalError),
            })
            .collect()
    }

    /// Looks an object up (one call, one master lookup) and holds its read lease,
    /// so a caller that must size its buffer first (a new `bytes` object) reads
    /// it with [`OpenRead::read_into`] without asking the master again. A copying
    /// read: bound by the local buffer (`local_buffer_size`) when one is set.
    pub fn open_read(&self, key: &str) -> MResult<OpenRead<'_>> {
        let conn = self.conn()?;
        let asked = Instant::now();
        let outcome = self
            .get_into_call(&conn, vec![key.to_string()], vec![Vec::new()], true)
            .pop()
            .unwrap_or(Err(ErrorCode::InternalError))?;
        let list = match outcome {
            GetOutcome::Local(list) | GetOutcome::Remote(list) => list,
            GetOutcome::Done(_) => return Err(ErrorCode::InternalError),
        };
        self.opened(conn, key, list, asked)
    }

    /// An [`OpenRead`] of `list` (looked up at `asked`), when a copying read of
    /// it fits the local buffer; otherwise its grant is released.
    fn opened(
        &self,
        conn: Arc<Conn>,
        key: &str,
        list: ReplicaList,
        asked: Instant,
    ) -> MResult<OpenRead<'_>> {
        if !self.copies_fit([list.size]) {
            self.release_reads(&conn, grant_of(key, &list).into_iter().collect());
            return Err(ErrorCode::InvalidParams);
        }
        Ok(OpenRead {
            client: self,
            conn,
            key: key.to_string(),
            session: GetSession {
                ipc_session: 0,
                list,
                granted: asked,
            },
        })
    }

    /// Begins reading a whole object of unknown size in one call. When it is on
    /// another host, free space in the local buffer (`local_buffer_size`) is
    /// offered for it, as much as the largest value this client read this way
    /// lately (at least 64 KiB): one that fits comes in this call
    /// ([`StartedRead::Staged`]). Otherwise (larger, no local buffer, or a
    /// replica this side copies itself) it is looked up and its lease held
    /// ([`StartedRead::Open`]), to be read without another lookup.
    pub fn start_read(&self, key: &str) -> MResult<StartedRead<'_>> {
        let conn = self.conn()?;
        let pool = self.shared.staging.as_deref();
        let mut room = self.read_room().min(pool.map_or(0, |p| p.capacity() / 4));
        if conn.process_memory() {
            // The real client can write the caller's memory itself: past this
            // size a second call (the read straight into it) costs less than
            // copying the value out of staging.
            room = room.min(PROCESS_READ_ROOM);
        }
        let offered = match (pool, conn.staging_base) {
            (Some(pool), Some(base)) => Staging::offered(pool, base, room),
            _ => None,
        };
        let dests = offered.as_ref().map_or_else(Vec::new, |st| {
            vec![BufRef {
                addr: st.base,
                len: room,
            }]
        });
        let asked = Instant::now();
        let outcome = self
            .get_into_call(&conn, vec![key.to_string()], vec![dests], true)
            .pop()
            .unwrap_or(Err(ErrorCode::InternalError))?;
        let list = match outcome {
            GetOutcome::Done(size) => {
                let staging = offered.ok_or(ErrorCode::InternalError)?;
                return Ok(StartedRead::Staged(StagedRead { staging, size }));
            }
            GetOutcome::Local(list) => list,
            GetOutcome::Remote(list) => {
                self.grow_read_room(list.size);
                list
            }
        };
        drop(offered);
        self.opened(conn, key, list, asked).map(StartedRead::Open)
    }

    /// Reads objects into byte slices; per key the object size, `INVALID_PARAMS`
    /// when the buffer is too small, `OBJECT_NOT_FOUND` when missing.
    pub fn batch_get_into_slices(
        &self,
        keys: &[String],
        buffers: &mut [&mut [u8]],
    ) -> Vec<MResult<u64>> {
        if keys.len() != buffers.len() {
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let mut dsts: Vec<Option<Dst>> = buffers
            .iter_mut()
            .map(|b| Some(Dst::Slice(&mut b[..])))
            .collect();
        self.get_core(keys, &mut dsts)
    }

    /// Reads one object into registered memory; the object size or an error.
    pub fn get_into(&self, key: &str, addr: u64, size: u64) -> MResult<u64> {
        self.batch_get_into(&[Item::new(key, addr, size)]).remove(0)
    }

    /// Reads objects into registered memory (zero-copy for remote replicas), each
    /// spread over its item's buffers in order; per item the object size,
    /// `INVALID_PARAMS` for small or unregistered buffers, `OBJECT_NOT_FOUND` when
    /// missing.
    pub fn batch_get_into(&self, items: &[Item]) -> Vec<MResult<u64>> {
        let keys: Vec<String> = items.iter().map(|it| it.key.clone()).collect();
        let mut dsts: Vec<Option<Dst>> = items
            .iter()
            .map(|it| self.resolve_bufs(&it.buffers).ok().map(Dst::Registered))
            .collect();
        self.get_core(&keys, &mut dsts)
    }

    /// The read path: one `get_into` call; local replicas copied here under the
    /// lease, remote ones already moved by the real client into registered
    /// destinations (or, for plain memory, into a temporary registered buffer).
    pub(super) fn get_core(
        &self,
        keys: &[String],
        dsts: &mut [Option<Dst<'_>>],
    ) -> Vec<MResult<u64>> {
        let mut results: Vec<MResult<u64>> = vec![Err(ErrorCode::InvalidParams); keys.len()];
        let valid: Vec<usize> = (0..keys.len()).filter(|&i| dsts[i].is_some()).collect();
        if valid.is_empty() {
            return results;
        }
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); keys.len()],
        };
        let req_keys: Vec<String> = valid.iter().map(|&i| keys[i].clone()).collect();
        // Memory the real client cannot write where it is (process memory, unless
        // it runs in this process) is staged instead.
        let process = conn.process_memory();
        let mut dests: Vec<Vec<BufRef>> = valid
            .iter()
            .map(|&i| {
                dsts[i]
                    .as_mut()
                    .and_then(|d| d.reachable_refs(process))
                    .unwrap_or_default()
            })
            .collect();
        // Destinations that the real client cannot reach get space in the staging
        // pool up front, so a remote object comes in this one round instead of a
        // second one: their size when known, else the room `start_read` offers
        // (when that much is free now).
        let room = self.read_room();
        let unreachable: Vec<(usize, u64)> = valid
            .iter()
            .enumerate()
            .filter(|&(j, &i)| dests[j].is_empty() && dsts[i].is_some())
            .map(|(j, &i)| match &dsts[i] {
                Some(Dst::Owned(_)) => (j, room),
                d => (j, d.as_ref().map_or(0, Dst::capacity)),
            })
            .collect();
        let wanted: u64 = unreachable.iter().map(|(_, n)| n).sum();
        let unknown = valid
            .iter()
            .any(|&i| matches!(dsts[i], Some(Dst::Owned(_))));
        let prestaged = match (self.shared.staging.as_deref(), conn.staging_base) {
            (Some(pool), Some(base)) if unknown => {
                Staging::offered(pool, base, wanted).filter(|_| wanted <= pool.capacity() / 4)
            }
            _ => match Staging::pooled(&conn, self.shared.staging.as_deref(), wanted) {
                Some(Ok(st)) => Some(st),
                _ => None,
            },
        };
        // Where each prestaged destination's bytes land in the staging space.
        let mut staged_at: HashMap<usize, u64> = HashMap::new();
        if let Some(st) = &prestaged {
            let mut at = 0;
            for &(j, n) in &unreachable {
                dests[j] = vec![BufRef {
                    addr: st.base + at,
                    len: n,
                }];
                staged_at.insert(valid[j], at);
                at += n;
            }
        }
        let asked = Instant::now();
        let outcomes = self.get_into_call(&conn, req_keys, dests, true);
        let mut remote: Vec<(usize, u64)> = Vec::new();
        // Grants handed to this side, released once read (the staged round asks
        // for its own).
        let mut done_with: Vec<(String, u64)> = Vec::new();
        for (&i, outcome) in valid.iter().zip(outcomes) {
            let dst = dsts[i].as_mut().expect("valid");
            // A copying read of a value larger than the local buffer fails, as
            // upstream's does.
            let copies = !matches!(dst, Dst::Registered(_));
            results[i] = match outcome {
                Err(e) => Err(e),
                Ok(GetOutcome::Done(n)) => match (&prestaged, staged_at.get(&i)) {
                    (Some(st), Some(&at)) => {
                        dst.fill_from(st.region(), st.start + at, n).map(|_| n)
                    }
                    _ => Ok(n),
                },
                Ok(GetOutcome::Local(list)) | Ok(GetOutcome::Remote(list))
                    if copies && !self.copies_fit([list.size]) =>
                {
                    done_with.extend(grant_of(&keys[i], &list));
                    Err(ErrorCode::InvalidParams)
                }
                Ok(GetOutcome::Local(list)) => {
                    let r = Self::copy_local(&conn, &list, dst, asked);
                    done_with.extend(grant_of(&keys[i], &list));
                    match r {
                        // A disk copy failed its check: the real client reads
                        // another replica (the second round).
                        Err(ErrorCode::ChecksumMismatch) if list.replicas.len() > 1 => {
                            remote.push((i, list.size));
                            Ok(list.size)
                        }
                        r => r,
                    }
                }
                Ok(GetOutcome::Remote(list)) => {
                    done_with.extend(grant_of(&keys[i], &list));
                    if matches!(dst, Dst::Owned(_)) {
                        self.grow_read_room(list.size);
                    }
                    if dst.capacity() < list.size {
                        Err(ErrorCode::InvalidParams)
                    } else {
                        remote.push((i, list.size));
                        Ok(list.size)
                    }
                }
            };
        }
        // Before the second round, which may want the pool itself.
        drop(prestaged);
        if !remote.is_empty() {
            self.get_staged(&conn, keys, dsts, &remote, &mut results, &mut done_with);
        }
        self.release_reads(&conn, done_with);
        results
    }

    /// Room offered to a value of unknown size read from another host.
    fn read_room(&self) -> u64 {
        self.shared
            .read_room
            .load(Ordering::Relaxed)
            .clamp(MIN_READ_ROOM, MAX_READ_ROOM)
    }

    /// A value of unknown size did not fit the room offered: offer that much
    /// next time.
    fn grow_read_room(&self, size: u64) {
        self.shared
            .read_room
            .fetch_max(size.min(MAX_READ_ROOM), Ordering::Relaxed);
    }

    /// Whether copying calls moving values of these sizes stay within the
    /// local buffer (`local_buffer_size`), when one is set; logs when not.
    pub(super) fn copies_fit(&self, sizes: impl IntoIterator<Item = u64>) -> bool {
        let Some(budget) = self.shared.options.staging_budget else {
            return true;
        };
        let total: u64 = sizes.into_iter().sum();
        if total > budget {
            tracing::warn!(
                "{total} bytes do not fit the local buffer (local_buffer_size = {budget}); \
                 use the zero-copy calls or a larger local_buffer_size"
            );
            return false;
        }
        true
    }

    /// Notes that this side is done reading the values it was granted; the next
    /// `get_into` (or the pinger, within a second) tells the real client, so a
    /// read costs no extra call.
    pub(super) fn release_reads(&self, conn: &Conn, reads: Vec<(String, u64)>) {
        if reads.is_empty() {
            return;
        }
        let mut pending = conn.released.lock();
        pending.extend(reads);
        if pending.len() < MAX_HELD_RELEASES {
            return;
        }
        let reads = std::mem::take(&mut *pending);
        drop(pending);
        let _ = self.dispatch(conn, RingRequest::ReleaseReads(reads));
    }

    /// `local_disk`: replicas in the real client's disk tier may come back
    /// `Local`, for this side to read (when it maps the tier).
    pub(super) fn get_into_call(
        &self,
        conn: &Conn,
        keys: Vec<String>,
        dests: Vec<Vec<BufRef>>,
        local_disk: bool,
    ) -> Vec<MResult<GetOutcome>> {
        let n = keys.len();
        let released = std::mem::take(&mut *conn.released.lock());
        let request = RingRequest::GetInto {
            keys,
            dests,
            released,
            local_disk: local_disk && conn.disk.is_some(),
        };
        self.dispatch_batch(conn, n, request, |r| match r {
            RingResponse::Outcomes(v) => Some(v),
            _ => None,
        })
    }

    pub(super) fn copy_local(
        conn: &Conn,
        list: &ReplicaList,
        dst: &mut Dst<'_>,
        asked: Instant,
    ) -> MResult<u64> {
        if dst.capacity() < list.size {
            return Err(ErrorCode::InvalidParams);
        }
        let on = |id: SegmentId| list.replicas.iter().find(|r| r.segment_id == id);
        if let Some((segment, replica)) = conn
            .local_segment()
            .and_then(|(segment, id)| Some((segment, on(id)?)))
        {
            dst.fill_from(segment, replica.offset, list.size)?;
        } else if let Some((file, replica)) = conn
            .disk
            .as_ref()
            .and_then(|(file, id)| Some((file, on(*id)?)))
        {
            dst.fill_checked(file, replica.offset, list.size)?;
        } else {
            return Err(ErrorCode::TransferFail);
        }
        // The space may have been reused if the lease ran out during the copy.
        if asked.elapsed() > Duration::from_millis(list.lease_ttl_ms) {
            return Err(ErrorCode::LeaseExpired);
        }
        Ok(list.size)
    }

    /// Second round for remote objects bound for plain memory: the real client
    /// reads them into one temporary registered buffer, copied out here.
    pub(super) fn get_staged(
        &self,
        conn: &Conn,
        keys: &[String],
        dsts: &mut [Option<Dst<'_>>],
        remote: &[(usize, u64)],
        results: &mut [MResult<u64>],
        done_with: &mut Vec<(String, u64)>,
    ) {
        let total: u64 = remote.iter().map(|(_, n)| n).sum();
        let staging = match Staging::new(conn, &self.runtime, self.shared.staging.as_deref(), total)
        {
            Ok(s) => s,
            Err(e) => {
                for &(i, _) in remote {
                    results[i] = Err(e);
                }
                return;
            }
        };
        let mut at = 0;
        let mut dests = Vec::new();
        let mut offsets = Vec::new();
        for &(_, n) in remote {
            dests.push(vec![BufRef {
                addr: staging.base + at,
                len: n,
            }]);
            offsets.push(at);
            at += n;
        }
        let req_keys: Vec<String> = remote.iter().map(|&(i, _)| keys[i].clone()).collect();
        let asked = Instant::now();
        // The real client reads them itself, own disk tier included: a disk copy
        // that failed its check here comes back this way.
        let outcomes = self.get_into_call(conn, req_keys, dests, false);
        for ((&(i, _), outcome), off) in remote.iter().zip(outcomes).zip(offsets) {
            let dst = dsts[i].as_mut().expect("valid");
            results[i] = match outcome {
                Err(e) => Err(e),
                Ok(GetOutcome::Done(n)) => dst
                    .fill_from(staging.region(), staging.start + off, n)
                    .map(|_| n),
                Ok(GetOutcome::Local(list)) => {
                    let r = Self::copy_local(conn, &list, dst, asked);
                    done_with.extend(grant_of(&keys[i], &list));
                    r
                }
                Ok(GetOutcome::Remote(list)) => {
                    done_with.extend(grant_of(&keys[i], &list));
                    Err(ErrorCode::TransferFail)
                }
            };
        }
    }
}

/// Least room [`DummyClient::start_read`] offers a value of unknown size.
const MIN_READ_ROOM: u64 = 64 << 10;
/// Most room [`DummyClient::start_read`] offers (and never more than a quarter of
/// the local buffer).
const MAX_READ_ROOM: u64 = 64 << 20;
/// The most room [`DummyClient::start_read`] offers when the real client runs
/// in this process (see there).
const PROCESS_READ_ROOM: u64 = 256 << 10;

/// A read begun by [`DummyClient::start_read`].
pub enum StartedRead<'a> {
    /// The whole value came in the first call and waits in the local buffer.
    Staged(StagedRead<'a>),
    /// The value is looked up and its lease held: read it with [`OpenRead`].
    Open(OpenRead<'a>),
}

/// A value in the local buffer, held there until this is dropped.
pub struct StagedRead<'a> {
    staging: Staging<'a>,
    size: u64,
}

impl StagedRead<'_> {
    /// The value's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies the value into `dst` (at least [`size`](Self::size) bytes); its size.
    pub fn read_into(&self, dst: &mut [u8]) -> MResult<u64> {
        // SAFETY: `dst` is writable memory of this process, exclusively borrowed
        // for the call, `dst.len()` bytes long.
        unsafe { self.read_into_raw(dst.as_mut_ptr(), dst.len()) }
    }

    /// [`read_into`](Self::read_into) memory given by address, which may be
    /// uninitialized.
    ///
    /// # Safety
    /// `[dst, dst + len)` must be writable memory of this process that nothing
    /// else reads or writes until this returns.
    pub unsafe fn read_into_raw(&self, dst: *mut u8, len: usize) -> MResult<u64> {
        if (len as u64) < self.size {
            return Err(ErrorCode::InvalidParams);
        }
        // SAFETY: the caller promises `[dst, dst + len)` is writable and touched by
        // nothing else meanwhile; `size <= len` was checked above.
        unsafe {
            self.staging
                .region()
                .read_into_raw(self.staging.start, dst, self.size)
        }
        .map_err(|e| e.code())?;
        Ok(self.size)
    }
}

/// An object looked up by [`DummyClient::open_read`], its read lease held.
pub struct OpenRead<'a> {
    client: &'a DummyClient,
    conn: Arc<Conn>,
    key: String,
    session: GetSession,
}

impl OpenRead<'_> {
    /// Reads and checks the object here when it is only in this host's disk
    /// tier (mapped here); `None` to read it the other ways (also after a
    /// failed check, when another replica may serve).
    fn read_local_disk(&self, dst: Span) -> Option<MResult<u64>> {
        let list = &self.session.list;
        let (_, disk_id) = self.conn.disk.as_ref()?;
        let on = |id: SegmentId| list.replicas.iter().any(|r| r.segment_id == id);
        let in_memory = self.conn.local_segment().is_some_and(|(_, id)| on(id));
        if in_memory || !on(*disk_id) {
            return None;
        }
        let mut dst = Dst::Registered(vec![dst]);
        match DummyClient::copy_local(&self.conn, list, &mut dst, self.session.granted) {
            Err(ErrorCode::ChecksumMismatch) if list.replicas.len() > 1 => None,
            r => Some(r),
        }
    }

    /// The object's size.
    pub fn size(&self) -> u64 {
        self.session.list.size
    }

    /// Reads the whole object into `dst` (at least [`size`](Self::size) bytes):
    /// copied here from the local segment, or moved by the real client from the
    /// holder through staging, without another master lookup. The object size,
    /// `INVALID_PARAMS` for a short `dst`, `LEASE_EXPIRED` when the lease ran out.
    pub fn read_into(self, dst: &mut [u8]) -> MResult<u64> {
        // SAFETY: `dst` is writable memory of this process, exclusively borrowed
        // for the call, `dst.len()` bytes long.
        unsafe { self.read_into_raw(dst.as_mut_ptr(), dst.len()) }
    }

    /// [`read_into`](Self::read_into) memory given by address, which may be
    /// uninitialized (a new `bytes` object being filled): nothing reads it
    /// before writing it.
    ///
    /// # Safety
    /// `[dst, dst + len)` must be writable memory of this process that nothing
    /// else reads or writes until this returns.
    pub unsafe fn read_into_raw(self, dst: *mut u8, len: usize) -> MResult<u64> {
        let size = self.size();
        // Process memory the real client cannot map: copied here from the local
        // segment or disk tier, or staged for a remote holder.
        let span = Span {
            region: None,
            offset: 0,
            len: size,
            addr: dst as u64,
        };
        let result = if (len as u64) < size {
            Err(ErrorCode::InvalidParams)
        } else if size == 0 {
            Ok(0)
        } else if let Some(r) = self.read_local_disk(span.clone()) {
            r
        } else {
            let work = [Ok((self.session.clone(), vec![(0, span)]))];
            self.client
                .read_ranges(&self.conn, std::slice::from_ref(&self.key), &work)
                .pop()
                .unwrap_or(Err(ErrorCode::InternalError))
        };
        let grant = grant_of(&self.key, &self.session.list);
        self.client
            .release_reads(&self.conn, grant.into_iter().collect());
        result.map(|_| size)
    }
}
