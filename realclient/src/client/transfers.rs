//! Reads for dummies and ranged transfers: replica lists, remote reads into registered memory with replica fallback, read releases.

use super::*;

/// Read grants held back for the next lookup before they are sent on their own.
const MAX_HELD_RELEASES: usize = 256;

impl RealClient {
    /// Readers are done with values they were granted: tells the master, without
    /// waiting (with a master in another process, along with the next lookup or
    /// within a second), so replaced values are freed as soon as nobody reads
    /// them.
    pub async fn release_reads(&self, reads: Vec<(String, u64)>) {
        if reads.is_empty() {
            return;
        }
        let master = self.master.read().clone();
        match master {
            // A direct call: done at once.
            Some(master @ MasterHandle::Local(_)) => {
                let _ = master.batch_release_reads(reads).await;
            }
            Some(MasterHandle::Remote(_)) => {
                let mut held = self.held_releases.lock();
                held.extend(reads);
                if held.len() >= MAX_HELD_RELEASES {
                    let reads = std::mem::take(&mut *held);
                    drop(held);
                    self.send_releases(reads);
                }
            }
            None => {}
        }
    }

    /// Sends the read grants held back by [`Self::release_reads`] (the heartbeat,
    /// every second).
    pub(super) fn flush_releases(&self) {
        let reads = self.take_held_releases();
        if !reads.is_empty() {
            self.send_releases(reads);
        }
    }

    /// Takes the held-back grants, to go with a lookup.
    pub(super) fn take_held_releases(&self) -> Vec<(String, u64)> {
        std::mem::take(&mut *self.held_releases.lock())
    }

    /// Sends `reads` on the shared connection, off the caller's path (a ring
    /// thread's own connection belongs to another runtime), on the tracker so
    /// shutdown waits for it.
    fn send_releases(&self, reads: Vec<(String, u64)>) {
        let Some(master) = self.master.read().clone() else {
            return;
        };
        self.spawn_task(async move {
            let _ = master.batch_release_reads(reads).await;
        });
    }

    /// Reads objects for a dummy: local replicas are left to the dummy (replicas
    /// in this client's disk tier too when `local_disk`: the dummy maps its
    /// files); remote ones are read straight into its registered `dests`, trying
    /// each replica in turn, all within the read lease.
    pub async fn get_into(
        &self,
        keys: Vec<String>,
        dests: Vec<Vec<BufRef>>,
        memory: Option<&dyn CallerMemory>,
        local_disk: bool,
    ) -> Vec<MResult<GetOutcome>> {
        self.get_into_releasing(keys, dests, Vec::new(), memory, local_disk)
            .await
    }

    /// [`Self::get_into`] that first releases the read grants `released` (the
    /// caller is done with them), in the same master round trip as the lookup.
    pub async fn get_into_releasing(
        &self,
        keys: Vec<String>,
        dests: Vec<Vec<BufRef>>,
        released: Vec<(String, u64)>,
        memory: Option<&dyn CallerMemory>,
        local_disk: bool,
    ) -> Vec<MResult<GetOutcome>> {
        if dests.len() != keys.len() {
            self.release_reads(released).await;
            return keys.iter().map(|_| Err(ErrorCode::InvalidParams)).collect();
        }
        let started = Instant::now();
        let lists = self.get_replicas_releasing(keys.clone(), released).await;
        let own = self.segment().map(|d| d.id);
        let own_disk = self.disk.as_ref().filter(|_| local_disk).map(|d| d.desc.id);
        let mut out: Vec<MResult<GetOutcome>> = Vec::with_capacity(lists.len());
        // Grants this call uses up itself; `Local` and `Remote` lists go to the
        // dummy, which releases them once it has read.
        let mut done_with: Vec<(String, u64)> = Vec::new();
        // Per key wanting a transfer: its remote replicas and destination spans.
        let mut wanted: Vec<(usize, ReplicaList, Vec<HeldSpan>)> = Vec::new();
        for (i, list) in lists.into_iter().enumerate() {
            let list = match list {
                Ok(l) => l,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            if list
                .replicas
                .iter()
                .any(|r| Some(r.segment_id) == own || Some(r.segment_id) == own_disk)
            {
                out.push(Ok(GetOutcome::Local(list)));
                continue;
            }
            // No destination, or one too small (a caller that did not know the
            // size): the list, its lease held, so the caller reads it in a
            // second round without another lookup, or releases it.
            let capacity: u64 = dests[i].iter().map(|d| d.len).sum();
            if dests[i].is_empty() || capacity < list.size {
                out.push(Ok(GetOutcome::Remote(list)));
                continue;
            }
            if let Some(r) = list.replicas.first() {
                done_with.push((keys[i].clone(), r.version));
            }
            match translate_all(memory, &dests[i], list.size) {
                Ok(spans) => {
                    out.push(Ok(GetOutcome::Done(list.size)));
                    wanted.push((i, list, spans));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        // Leave a margin: bytes must be in place before the lease can lapse.
        let lease_ms = wanted.iter().map(|w| w.1.lease_ttl_ms).min().unwrap_or(0);
        let deadline = started + Duration::from_millis(lease_ms.saturating_sub(50));
        // Objects in this client's own disk tier are read here, checked as they
        // are copied, with no trip through the transfer port.
        let mut remote = Vec::with_capacity(wanted.len());
        for (i, list, spans) in wanted {
            match self.read_own_disk(&list, &spans, deadline) {
                Some(Ok(())) => {}
                Some(Err(e)) if list.replicas.len() == 1 => out[i] = Err(e),
                _ => remote.push((i, list, spans)),
            }
        }
        let wanted = remote;
        let owners: Vec<usize> = wanted.iter().map(|w| w.0).collect();
        let reads = wanted
            .into_iter()
            .map(|(_, list, spans)| {
                let mut at = 0;
                let ranges = spans
                    .into_iter()
                    .map(|t| {
                        let off = at;
                        at += t.len();
                        (off, t)
                    })
                    .collect();
                (list.replicas, ranges)
            })
            .collect();
        for (i, r) in owners
            .into_iter()
            .zip(self.read_with_fallback(reads, deadline).await)
        {
            if let Err(e) = r {
                out[i] = Err(e);
            }
        }
        self.release_reads(done_with).await;
        out
    }

    /// Moves object ranges between a dummy's registered memory and the remote
    /// replicas (see [`RealClientService::transfer_ranges`]): writes go to every
    /// remote replica of a pending write, reads come from the first remote replica
    /// that answers.
    ///
    /// [`RealClientService::transfer_ranges`]: mooncake_proto::realclient::RealClientService::transfer_ranges
    pub async fn transfer_ranges(
        &self,
        write: bool,
        items: Vec<RangeTransfer>,
        memory: Option<&dyn CallerMemory>,
    ) -> Vec<MResult<u64>> {
        let started = Instant::now();
        let mut out: Vec<MResult<u64>> = Vec::with_capacity(items.len());
        let mut work: Vec<RangeWork> = Vec::new();
        for (index, item) in items.into_iter().enumerate() {
            match self.prepare_ranges(write, item, memory, started) {
                Ok((total, None)) => out.push(Ok(total)),
                Ok((total, Some(mut w))) => {
                    w.index = index;
                    out.push(Ok(total));
                    work.push(w);
                }
                Err(e) => out.push(Err(e)),
            }
        }
        if write {
            self.write_ranges(work, started, &mut out).await;
        } else {
            self.read_ranges(work, started, &mut out).await;
        }
        out
    }

    /// Checks one item of a ranged transfer and translates its ranges: the bytes
    /// it moves, and the remote work (`None` when nothing remote is to be done).
    fn prepare_ranges(
        &self,
        write: bool,
        item: RangeTransfer,
        memory: Option<&dyn CallerMemory>,
        started: Instant,
    ) -> MResult<(u64, Option<RangeWork>)> {
        let own = self.segment().map(|d| d.id);
        let replicas = if write {
            let pending = self.pending.lock();
            pending
                .get(&item.key)
                .ok_or(ErrorCode::InvalidParams)?
                .replicas
                .clone()
        } else {
            item.replicas
        };
        let size = replicas.first().map_or(0, |r| r.size);
        let remote: Vec<ReplicaDesc> = replicas
            .into_iter()
            .filter(|r| Some(r.segment_id) != own && r.size == size)
            .collect();
        let mut ranges = Vec::with_capacity(item.ranges.len());
        let mut total = 0u64;
        for range in &item.ranges {
            let inside = range
                .object_offset
                .checked_add(range.buf.len)
                .is_some_and(|end| end <= size);
            if !inside || range.buf.len == 0 {
                return Err(ErrorCode::InvalidParams);
            }
            let span = memory
                .ok_or(ErrorCode::InvalidParams)?
                .translate(range.buf.addr, range.buf.len)
                .map_err(|_| ErrorCode::InvalidParams)?;
            ranges.push((range.object_offset, span));
            total += range.buf.len;
        }
        if remote.is_empty() {
            // Writes: nothing remote to write. Reads: the dummy should have copied
            // from the local replica itself.
            return if write {
                Ok((total, None))
            } else {
                Err(ErrorCode::TransferFail)
            };
        }
        let deadline = if write {
            started + self.config.transfer_timeout
        } else {
            started + Duration::from_millis(item.lease_left_ms.saturating_sub(50))
        };
        Ok((
            total,
            Some(RangeWork {
                index: 0,
                key: item.key,
                remote,
                ranges,
                deadline,
            }),
        ))
    }

    /// Writes each item's ranges to all its remote replicas; records the replicas
    /// that failed on the pending write (ended later by `put_complete`). An item
    /// fails when it has no local replica and every remote one failed.
    async fn write_ranges(&self, work: Vec<RangeWork>, started: Instant, out: &mut [MResult<u64>]) {
        let own = self.segment().map(|d| d.id);
        let mut jobs = Vec::new();
        let mut owners: Vec<(usize, SegmentId)> = Vec::new();
        let deadline = work.iter().map(|w| w.deadline).max().unwrap_or(started);
        for (w, item) in work.iter().enumerate() {
            for r in &item.remote {
                for (off, t) in &item.ranges {
                    jobs.push(range_job(Direction::Write, r, *off, t));
                    owners.push((w, r.segment_id));
                }
            }
        }
        let results = self.transfer(jobs, deadline).await;
        let mut failures: Vec<Vec<SegmentId>> = vec![Vec::new(); work.len()];
        let mut bytes = 0;
        for ((r, n), (w, seg)) in results.into_iter().zip(owners) {
            match r {
                Ok(()) => bytes += n,
                Err(e) => {
                    if !failures[w].contains(&seg) {
                        tracing::warn!(key = %work[w].key, segment = %seg, "range write failed: {e}");
                        failures[w].push(seg);
                    }
                }
            }
        }
        self.metrics.add_transfer_bytes(0, bytes);
        let mut pending = self.pending.lock();
        for (item, failed) in work.iter().zip(failures) {
            // A write revoked meanwhile has nothing left to record.
            let Some(entry) = pending.get_mut(&item.key) else {
                continue;
            };
            let recorded = entry.ranged_failures.get_or_insert_with(Vec::new);
            for seg in &failed {
                if !recorded.contains(seg) {
                    recorded.push(*seg);
                }
            }
            let has_local = entry.replicas.iter().any(|d| Some(d.segment_id) == own);
            if !has_local && failed.len() == item.remote.len() {
                out[item.index] = Err(ErrorCode::TransferFail);
            }
        }
    }

    /// Reads each item's ranges from its remote replicas, one after another on
    /// failure, before the earliest lease runs out.
    async fn read_ranges(&self, work: Vec<RangeWork>, started: Instant, out: &mut [MResult<u64>]) {
        let deadline = work.iter().map(|w| w.deadline).min().unwrap_or(started);
        let owners: Vec<usize> = work.iter().map(|w| w.index).collect();
        let reads = work.into_iter().map(|w| (w.remote, w.ranges)).collect();
        for (i, r) in owners
            .into_iter()
            .zip(self.read_with_fallback(reads, deadline).await)
        {
            if let Err(e) = r {
                out[i] = Err(e);
            }
        }
    }

    /// Reads each item's ranges `(object offset, local span)` from its replicas,
    /// moving to the next replica after a failure (never past `deadline`, and
    /// not after `LEASE_EXPIRED`). Per item `Ok` or the last error.
    pub(super) async fn read_with_fallback(
        &self,
        items: Vec<(Vec<ReplicaDesc>, Ranges)>,
        deadline: Instant,
    ) -> Vec<MResult<()>> {
        let mut results: Vec<MResult<()>> = items
            .iter()
            .map(|(r, _)| {
                if r.is_empty() {
                    Err(ErrorCode::TransferFail)
                } else {
                    Ok(())
                }
            })
            .collect();
        let mut pending: Vec<usize> = (0..items.len()).filter(|&i| results[i].is_ok()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            let mut jobs = Vec::new();
            let mut owners = Vec::new();
            for &i in &pending {
                let replica = &items[i].0[attempt];
                for (off, t) in &items[i].1 {
                    jobs.push(range_job(Direction::Read, replica, *off, t));
                    owners.push(i);
                }
            }
            let mut errors: Vec<Option<ErrorCode>> = vec![None; items.len()];
            let mut bytes = 0;
            for ((r, n), i) in self.transfer(jobs, deadline).await.into_iter().zip(owners) {
                match r {
                    Ok(()) => bytes += n,
                    Err(e) => errors[i] = errors[i].or(Some(e)),
                }
            }
            self.metrics.add_transfer_bytes(bytes, 0);
            attempt += 1;
            pending.retain(|&i| match errors[i] {
                None => false,
                Some(e) if e != ErrorCode::LeaseExpired && attempt < items[i].0.len() => {
                    tracing::debug!(
                        "replica {} of a key failed ({e}); trying the next",
                        attempt - 1
                    );
                    true
                }
                Some(e) => {
                    results[i] = Err(e);
                    false
                }
            });
        }
        results
    }

    /// Runs transfer jobs off the async workers; returns per job its result and length.
    pub(super) async fn transfer(
        &self,
        jobs: Vec<TransferJob>,
        deadline: Instant,
    ) -> Vec<(MResult<()>, u64)> {
        let transport = self.transport.clone();
        let lens: Vec<u64> = jobs.iter().map(|j| j.local.len).collect();
        let n = jobs.len();
        let results = thread_master::run_blocking(move || transport.run(&jobs, deadline))
            .await
            .unwrap_or_else(|| vec![Err(ErrorCode::InternalError); n]);
        results.into_iter().zip(lens).collect()
    }
}

/// The job moving the range at `offset` in the object of `replica` from or to `local`.
pub(super) fn range_job(
    direction: Direction,
    replica: &ReplicaDesc,
    offset: u64,
    local: &HeldSpan,
) -> TransferJob {
    TransferJob {
        version: match direction {
            Direction::Write => replica.version,
            Direction::Read => 0,
        },
        direction,
        endpoint: replica.transport_endpoint.clone(),
        segment_id: replica.segment_id,
        remote_offset: replica.offset + offset,
        local: local.span().clone(),
    }
}

/// The jobs moving one object between `replica` and the dummy memory `spans`, which
/// hold the object's bytes in order.
pub(super) fn replica_jobs(
    direction: Direction,
    replica: &ReplicaDesc,
    spans: &[HeldSpan],
) -> Vec<TransferJob> {
    let mut at = 0;
    spans
        .iter()
        .map(|t| {
            let job = range_job(direction, replica, at, t);
            at += t.len();
            job
        })
        .collect()
}

/// Translates a caller's buffer list, checking it holds exactly `size` bytes... or
/// more: a destination may be larger than the object, in which case only the first
/// `size` bytes are used.
impl RealClient {
    /// Reads an object whose replica is in this client's disk tier straight into
    /// `spans`, its blocks checked on the way; `None` when it has no replica
    /// there. Finishing past `deadline` (the read lease) is `LEASE_EXPIRED`: the
    /// space could have been given to another object meanwhile.
    fn read_own_disk(
        &self,
        list: &ReplicaList,
        spans: &[HeldSpan],
        deadline: Instant,
    ) -> Option<MResult<()>> {
        let disk = self.disk.as_ref()?;
        let replica = list
            .replicas
            .iter()
            .find(|r| r.segment_id == disk.desc.id)?;
        // The destinations (held by `spans` until this returns), and where each
        // starts in the object.
        let dests: Vec<LocalSpan> = spans.iter().map(|h| h.span().clone()).collect();
        let starts: Vec<u64> = dests
            .iter()
            .scan(0u64, |at, s| {
                let start = *at;
                *at += s.len;
                Some(start)
            })
            .collect();
        let bad = std::sync::atomic::AtomicBool::new(false);
        let ok = disk
            .sums
            .read_checked(replica.offset, list.size, |mut pos, mut chunk| {
                while !chunk.is_empty() {
                    let at = starts.partition_point(|&s| s <= pos).saturating_sub(1);
                    let Some(d) = dests.get(at) else {
                        bad.store(true, Ordering::Relaxed);
                        return false;
                    };
                    let within = pos - starts[at];
                    let n = (d.len.saturating_sub(within)).min(chunk.len() as u64) as usize;
                    if n == 0 || d.memory.write(d.offset + within, &chunk[..n]).is_err() {
                        bad.store(true, Ordering::Relaxed);
                        return false;
                    }
                    chunk = &chunk[n..];
                    pos += n as u64;
                }
                true
            });
        let bad_destination = bad.load(Ordering::Relaxed);
        Some(if bad_destination {
            Err(ErrorCode::InvalidParams)
        } else if !ok {
            Err(ErrorCode::ChecksumMismatch)
        } else if Instant::now() > deadline {
            Err(ErrorCode::LeaseExpired)
        } else {
            Ok(())
        })
    }
}

pub(super) fn translate_all(
    memory: Option<&dyn CallerMemory>,
    bufs: &[BufRef],
    size: u64,
) -> MResult<Vec<HeldSpan>> {
    let memory = memory.ok_or(ErrorCode::InvalidParams)?;
    let total: u64 = bufs.iter().map(|b| b.len).sum();
    if total < size || bufs.is_empty() {
        return Err(ErrorCode::InvalidParams);
    }
    let mut left = size;
    let mut spans = Vec::new();
    for b in bufs {
        if left == 0 {
            break;
        }
        let len = b.len.min(left);
        if len == 0 {
            continue;
        }
        spans.push(memory.translate(b.addr, len)?);
        left -= len;
    }
    Ok(spans)
}
