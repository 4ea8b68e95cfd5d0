//! Writes this client places in its own segment, in space the master granted
//! ahead of time: a write costs one master round trip (`batch_put_commit`, once
//! its bytes are in) instead of two (`put_start`, `put_end`).
//!
//! Only plain puts of one replica that may live here are placed; upserts, writes
//! to other segments and writes larger than a quarter of a grant stay two-phase.
//! The master counts granted space as used and checks every commit against
//! what it granted. A grant belongs to one mount of the segment: when a
//! remount starts this client drops its grants (under the same lock that
//! places writes, so no write is placed in one afterwards) and waits for writes
//! being copied (`settle_own_writes`); the master frees the grants it still has
//! when the remount arrives, and a new master never knew them. Until the
//! remount is over nothing is placed, asked for or taken: a grant answered
//! meanwhile (the remount may free it) is given back unused.

use super::*;

/// A grant is this fraction of the segment...
const GRANT_FRACTION: u64 = 64;
/// ... within these bounds (and at most the quarter of the segment the master
/// allows).
const GRANT_MIN: u64 = 256 << 10;
const GRANT_MAX: u64 = 64 << 20;
/// Grants held at once: the one in use, the next, and a tail being used up.
const MAX_GRANTS: usize = 3;
/// After the master had no room for a grant, the next ask waits this long
/// (writes go two-phase meanwhile).
const ASK_BACKOFF: Duration = Duration::from_millis(100);
/// Versions of placed writes before their commit (the master stamps the real
/// one): this bit keeps them apart from the master's.
const PLACED_VERSION: u64 = 1 << 63;

/// How a pending write was placed in granted space.
#[derive(Clone)]
pub(super) struct Placed {
    /// The config it is committed with.
    pub config: ReplicateConfig,
    /// [`LocalSpace::epoch`] when it was placed.
    pub epoch: u64,
}

impl Placed {
    /// The granted ranges `write` (placed this way) occupies.
    pub(super) fn ranges(&self, write: &PendingWrite) -> Vec<GrantedRange> {
        write
            .replicas
            .iter()
            .map(|r| GrantedRange {
                epoch: self.epoch,
                offset: r.offset,
                len: r.size,
            })
            .collect()
    }
}

/// A replica copy into the own disk tier under way (from
/// [`RealClient::begin_local_copy`]).
pub(super) struct LocalCopy<'a> {
    client: &'a RealClient,
}

impl Drop for LocalCopy<'_> {
    fn drop(&mut self) {
        self.client.local_space.lock().local_copies -= 1;
    }
}

/// Granted space to give back: where, and the grant epoch it was granted in.
pub(super) struct GrantedRange {
    pub epoch: u64,
    pub offset: u64,
    pub len: u64,
}

/// The space granted to this client in its segment and not used yet.
#[derive(Default)]
pub(super) struct LocalSpace {
    /// The grant epoch, bumped when the grants are dropped: a grant asked for
    /// before is not used. The master records each grant with the epoch it
    /// was asked in and commits only into grants of the epoch a write names,
    /// so a write placed before a remount cannot be committed into the same
    /// bytes granted again after it (they may hold the next write).
    epoch: u64,
    /// Free ranges of the grants, `(offset, end)`, used from their start.
    grants: Vec<(u64, u64)>,
    /// A grant is being asked for.
    asking: bool,
    /// A remount is under way: no grant is used, asked for or taken.
    remounting: bool,
    /// No grant is asked for before this (the last ask found no room).
    not_before: Option<Instant>,
    placed: u64,
    /// Replica copies into this client's own disk tier under way (see
    /// [`RealClient::begin_local_copy`]); a remount waits for them.
    local_copies: usize,
}

impl LocalSpace {
    /// Takes `len` bytes (granule-rounded) from the first grant with room.
    fn take(&mut self, len: u64) -> Option<u64> {
        let g = self.grants.iter_mut().find(|(o, e)| e - *o >= len)?;
        let offset = g.0;
        g.0 += len;
        self.grants.retain(|(o, e)| o < e);
        Some(offset)
    }

    fn room(&self) -> u64 {
        self.grants.iter().map(|(o, e)| e - o).sum()
    }
}

impl RealClient {
    /// Bytes of granted space this client holds and can place writes in.
    #[cfg(test)]
    pub(super) fn granted_room(&self) -> u64 {
        self.local_space.lock().room()
    }

    /// Bytes asked for per grant.
    fn grant_len(&self) -> u64 {
        let size = self.segment().map_or(0, |d| d.size);
        let len = (size / GRANT_FRACTION)
            .clamp(GRANT_MIN, GRANT_MAX)
            .min(size / 4);
        len / GRANULE_BYTES * GRANULE_BYTES
    }

    /// Whether a write of `size` bytes with `config` may be placed here.
    fn placeable(&self, size: u64, config: &ReplicateConfig, upsert: bool) -> bool {
        let Some(desc) = self.segment() else {
            return false;
        };
        self.config.local_placement
            && !upsert
            && self.healthy()
            && config.replica_num == 1
            && config.preferred_segments.iter().all(|s| *s == desc.name)
            && size > 0
            && size <= self.grant_len() / 4
    }

    /// Places the writes of `keys` that can be placed in granted space: their
    /// answer (the local replica, or `OBJECT_ALREADY_EXISTS` for a key this
    /// client is writing already), recorded as pending writes; `None` for the
    /// others, which go to the master.
    pub(super) fn place_writes(
        &self,
        keys: &[String],
        sizes: &[u64],
        config: &ReplicateConfig,
        upsert: bool,
        owner: u64,
    ) -> Vec<Option<MResult<Vec<ReplicaDesc>>>> {
        let mut out: Vec<Option<MResult<Vec<ReplicaDesc>>>> = vec![None; keys.len()];
        let Some(desc) = self.segment() else {
            return out;
        };
        if !sizes.iter().any(|&s| self.placeable(s, config, upsert)) {
            return out;
        }
        // A key this host holds already goes to the master: its `put_start`
        // answers that it exists with no copy and no second call. (Only a hint:
        // the master decides either way.)
        let held: Vec<bool> = if self.config.local_exist {
            let index = self.exist_index.lock();
            keys.iter().map(|k| index.contains(k)).collect()
        } else {
            vec![false; keys.len()]
        };
        let now = Instant::now();
        let (low, placed_any) = {
            let mut space = self.local_space.lock();
            if space.remounting {
                return out;
            }
            // Under the space lock: a remount drops the grants under it first,
            // then waits for the pending writes placed in them.
            let mut pending = self.pending.lock();
            let mut placed_any = false;
            for (i, (key, &size)) in keys.iter().zip(sizes).enumerate() {
                if held[i] || !self.placeable(size, config, upsert) {
                    continue;
                }
                if pending.contains_key(key) {
                    // The master would say so of a write it knows.
                    out[i] = Some(Err(ErrorCode::ObjectAlreadyExists));
                    continue;
                }
                let Some(offset) = space.take(allocated_bytes(size)) else {
                    continue;
                };
                space.placed += 1;
                let version = PLACED_VERSION | space.placed;
                let replica = ReplicaDesc {
                    segment_id: desc.id,
                    segment_name: desc.name.clone(),
                    transport_endpoint: desc.transport_endpoint.clone(),
                    offset,
                    buffer_address: desc.base + offset,
                    size,
                    status: ReplicaStatus::Processing,
                    version,
                    medium: Medium::Memory,
                };
                pending.insert(
                    key.clone(),
                    PendingWrite {
                        started: now,
                        owner,
                        version,
                        replicas: vec![replica.clone()],
                        ranged_failures: None,
                        copied: false,
                        placed: Some(Placed {
                            config: config.clone(),
                            epoch: space.epoch,
                        }),
                    },
                );
                out[i] = Some(Ok(vec![replica]));
                placed_any = true;
            }
            (space.room() < self.grant_len() / 2, placed_any)
        };
        if low || !placed_any {
            self.ask_for_space();
        }
        out
    }

    /// Asks the master for another grant in the background, unless one is
    /// being asked for or enough room is left.
    pub(super) fn ask_for_space(&self) {
        let Some(desc) = self.segment() else {
            return;
        };
        if !self.config.local_placement || !self.healthy() {
            return;
        }
        let len = self.grant_len();
        if len == 0 {
            return;
        }
        let epoch = {
            let mut space = self.local_space.lock();
            if space.asking
                || space.remounting
                || space.room() >= len / 2
                || space.not_before.is_some_and(|t| Instant::now() < t)
            {
                return;
            }
            space.asking = true;
            space.epoch
        };
        // The shared connection: the task runs on the client's runtime.
        let Some(master) = self.master.read().clone() else {
            self.local_space.lock().asking = false;
            return;
        };
        let (space, client, segment) = (self.local_space.clone(), self.client_id, desc.id);
        self.spawn_task(async move {
            let granted = master.grant_space(client, segment, len, epoch).await;
            let unused = {
                let mut space = space.lock();
                space.asking = false;
                match granted {
                    Ok((offset, len)) if space.epoch == epoch && !space.remounting => {
                        space.not_before = None;
                        space.grants.push((offset, offset + len));
                        if space.grants.len() > MAX_GRANTS {
                            // The smallest rest goes back.
                            let smallest = (0..space.grants.len())
                                .min_by_key(|&i| space.grants[i].1 - space.grants[i].0)
                                .expect("not empty");
                            let (o, e) = space.grants.remove(smallest);
                            Some((o, e - o))
                        } else {
                            None
                        }
                    }
                    // Asked for before a remount: it may belong to a mount that
                    // is gone; the master ignores it then.
                    Ok((offset, len)) => Some((offset, len)),
                    Err(e) => {
                        tracing::debug!("no space granted: {e}");
                        space.not_before = Some(Instant::now() + ASK_BACKOFF);
                        None
                    }
                }
            };
            if let Some(range) = unused {
                let _ = master
                    .return_space(client, segment, epoch, vec![range])
                    .await;
            }
        });
    }

    /// Starts a replica copy into this client's own disk tier, planned by the
    /// master of session `generation`: `None` while a remount is under way or
    /// once another session began (that master may have handed the target space
    /// out again; the copy's bytes must not land there). Counted until the
    /// guard drops, and a remount waits for the count to reach zero, so no copy
    /// started before it lands after it. (Copies to other hosts go through
    /// their transfer ports, which refuse them by version.)
    pub(super) fn begin_local_copy(&self, generation: u64) -> Option<LocalCopy<'_>> {
        let mut space = self.local_space.lock();
        if space.remounting || *self.master_generation.borrow() != generation {
            return None;
        }
        space.local_copies += 1;
        Some(LocalCopy { client: self })
    }

    /// Replica copies into the own disk tier under way.
    pub(super) fn local_copies(&self) -> usize {
        self.local_space.lock().local_copies
    }

    /// A remount starts: every grant is dropped (the master frees them when
    /// the remount arrives) and none is used, asked for or taken until
    /// [`Self::end_remount`].
    pub(super) fn begin_remount(&self) {
        let mut space = self.local_space.lock();
        space.remounting = true;
        space.epoch += 1;
        space.grants.clear();
    }

    /// The remount is over: grants asked for during it (which it may have
    /// freed) are not taken; new ones may be asked for.
    pub(super) fn end_remount(&self) {
        let mut space = self.local_space.lock();
        space.remounting = false;
        space.epoch += 1;
    }

    /// Drops every grant (the master refused a commit into one): nothing is
    /// placed in them any more. Their unused ranges, with the epoch they were
    /// granted in.
    pub(super) fn drop_grants(&self) -> Vec<GrantedRange> {
        let mut space = self.local_space.lock();
        let epoch = space.epoch;
        space.epoch += 1;
        std::mem::take(&mut space.grants)
            .into_iter()
            .map(|(offset, end)| GrantedRange {
                epoch,
                offset,
                len: end - offset,
            })
            .collect()
    }

    /// Gives granted ranges back to the master in the background, one call per
    /// epoch (the master frees only space it granted in the epoch named).
    pub(super) fn give_back(&self, ranges: impl IntoIterator<Item = GrantedRange>) {
        let Some(desc) = self.segment() else {
            return;
        };
        let mut by_epoch: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
        for r in ranges {
            match by_epoch.iter_mut().find(|(e, _)| *e == r.epoch) {
                Some((_, list)) => list.push((r.offset, r.len)),
                None => by_epoch.push((r.epoch, vec![(r.offset, r.len)])),
            }
        }
        if by_epoch.is_empty() {
            return;
        }
        let Some(master) = self.master.read().clone() else {
            return;
        };
        let (client, segment) = (self.client_id, desc.id);
        self.spawn_task(async move {
            for (epoch, ranges) in by_epoch {
                let _ = master.return_space(client, segment, epoch, ranges).await;
            }
        });
    }

    /// Makes placed writes readable with one `batch_put_commit` per config; per
    /// write 0, or the error. A write whose copy failed is not committed: its
    /// space goes back and it fails with `TRANSFER_FAIL`. A key that exists
    /// keeps its value and the put succeeds, as a two-phase put of it does.
    pub(super) async fn commit_placed(
        &self,
        writes: Vec<(String, PendingWrite, bool)>,
    ) -> Vec<MResult<()>> {
        let mut results: Vec<MResult<()>> = vec![Err(ErrorCode::TransferFail); writes.len()];
        let Some(segment_id) = self.segment().map(|d| d.id) else {
            return vec![Err(ErrorCode::InvalidParams); writes.len()];
        };
        let mut failed_copies = Vec::new();
        // Groups of writes with one config and one grant epoch, in order.
        let mut groups: Vec<(ReplicateConfig, u64, Vec<usize>)> = Vec::new();
        for (i, (_, w, copy_failed)) in writes.iter().enumerate() {
            let Some(placed) = &w.placed else {
                results[i] = Err(ErrorCode::InternalError);
                continue;
            };
            if *copy_failed {
                failed_copies.extend(placed.ranges(w));
                continue;
            }
            match groups.last_mut() {
                Some((c, e, members)) if *c == placed.config && *e == placed.epoch => {
                    members.push(i)
                }
                _ => groups.push((placed.config.clone(), placed.epoch, vec![i])),
            }
        }
        self.give_back(failed_copies);
        let mut stale = false;
        let epoch = self.local_space.lock().epoch;
        let mut inv_changed = false;
        let mut done = Vec::new();
        for (config, grant_epoch, members) in groups {
            let items: Vec<CommitItem> = members
                .iter()
                .map(|&i| {
                    let (key, w, _) = &writes[i];
                    let r = &w.replicas[0];
                    CommitItem {
                        key: key.clone(),
                        offset: r.offset,
                        size: r.size,
                    }
                })
                .collect();
            let mut args = self.call_args((items, config));
            let call = |m: MasterHandle| {
                let (items, config) = args.take();
                async move {
                    m.batch_put_commit(self.client_id, segment_id, grant_epoch, items, config)
                        .await
                }
            };
            let answers = per_key(members.len(), self.call_master_batch(call).await);
            let mut inv = self.inventory.lock();
            for (&i, answer) in members.iter().zip(answers) {
                let (key, w, _) = &writes[i];
                results[i] = match answer {
                    Ok(version) => {
                        let r = &w.replicas[0];
                        let entry = InventoryEntry {
                            segment_id,
                            key: key.clone(),
                            offset: r.offset,
                            size: r.size,
                            version,
                        };
                        inv.add(entry.clone());
                        done.push(entry);
                        inv_changed = true;
                        Ok(())
                    }
                    Err(ErrorCode::ObjectAlreadyExists) => Ok(()),
                    Err(
                        ErrorCode::InvalidWrite
                        | ErrorCode::NoAvailableHandle
                        | ErrorCode::SegmentNotFound,
                    ) => {
                        // The grant is gone (a drain, or a master that does
                        // not know it): place nothing more in the grants of
                        // that mount. The write is lost, not refused: the
                        // caller writes it again (`INVALID_WRITE`).
                        stale |= w.placed.as_ref().is_some_and(|p| p.epoch == epoch);
                        Err(ErrorCode::InvalidWrite)
                    }
                    Err(code) => Err(code),
                };
            }
        }
        if inv_changed {
            // In the journal before the caller hears success.
            self.inventory.lock().flush();
        }
        self.confirmed(&done);
        if stale {
            let unused = self.drop_grants();
            self.give_back(unused);
            self.ask_for_space();
        }
        // Committed ones only (not the keys that existed already).
        self.metrics.add_placed_writes(done.len() as u64);
        results
    }

    /// Takes the pending writes of `keys` that were placed here out of the
    /// pending table: their positions and writes. The caller is done copying.
    pub(super) fn take_placed(
        &self,
        keys: impl Iterator<Item = impl AsRef<str>>,
    ) -> Vec<(usize, String, PendingWrite)> {
        let mut pending = self.pending.lock();
        let mut out = Vec::new();
        for (i, key) in keys.enumerate() {
            let key = key.as_ref();
            if pending.get(key).is_some_and(|w| w.placed.is_some()) {
                let (key, w) = pending.remove_entry(key).expect("present");
                out.push((i, key, w));
            }
        }
        out
    }

    /// Forgets placed writes nobody will end (revoked, or their writer went
    /// away): their space goes back to the master.
    pub(super) fn forget_placed(&self, writes: impl IntoIterator<Item = PendingWrite>) {
        let ranges: Vec<GrantedRange> = writes
            .into_iter()
            .flat_map(|w| w.placed.as_ref().map(|p| p.ranges(&w)).unwrap_or_default())
            .collect();
        self.give_back(ranges);
    }
}

/// Which positions of a batch of `n` the placed writes `placed` (from
/// [`RealClient::take_placed`]) hold.
pub(super) fn placed_mask(n: usize, placed: &[(usize, String, PendingWrite)]) -> Vec<bool> {
    let mut mask = vec![false; n];
    for (i, _, _) in placed {
        mask[*i] = true;
    }
    mask
}

/// The positions of a batch of `n` that no placed write holds.
pub(super) fn unplaced(n: usize, placed: &[(usize, String, PendingWrite)]) -> Vec<usize> {
    let mask = placed_mask(n, placed);
    (0..n).filter(|&i| !mask[i]).collect()
}

/// Allocation granule of the master's allocator: placed writes use the same.
const GRANULE_BYTES: u64 = mooncake_master::allocator::GRANULE;

/// Bytes a write of `size` takes in the segment.
fn allocated_bytes(size: u64) -> u64 {
    size.div_ceil(GRANULE_BYTES) * GRANULE_BYTES
}
