//! Replica copies and moves: the tasks users (and drain jobs) create, and the
//! `replica_copy_start` / `_end` / `_revoke` protocol the assigned client runs
//! them with. The object stays readable throughout; a copy of an object that is
//! replaced or force-removed meanwhile is discarded at `_end`.

use std::sync::atomic::Ordering::Relaxed;

use rand::Rng;

use mooncake_proto::*;

use super::{FAILED_REPLICA_GRACE_MS, MasterService};
use crate::segments::SegmentTable;
use crate::shard::{FLAG_REPLICATING, PendingCopy, Placement, Shard};

impl MasterService {
    /// The placement of `key` (one of its replicas, chosen at random, or the one
    /// on a segment called `source`) with its segment id and owner.
    fn task_source(&self, key: &str, source: Option<&str>) -> MResult<(SegmentId, ClientId)> {
        let hash = self.hash(key);
        let shard = self.shard(hash).lock();
        let o = shard.get(hash, key).ok_or(ErrorCode::ObjectNotFound)?;
        let segs = self.segments.read();
        let candidates: Vec<_> = o
            .replicas
            .as_slice()
            .iter()
            .filter_map(|p| segs.get(p.segment))
            .filter(|s| source.is_none_or(|name| s.desc.name == name))
            .collect();
        if candidates.is_empty() {
            return Err(if source.is_some() {
                ErrorCode::InvalidParams
            } else {
                ErrorCode::InternalError
            });
        }
        let seg = candidates[rand::rng().random_range(0..candidates.len())];
        Ok((seg.desc.id, seg.owner))
    }

    fn segment_name_known(&self, name: &str) -> bool {
        self.segments.read().named(name).next().is_some()
    }

    /// Queues a task adding replicas of `key` on the segments named `targets`.
    pub fn create_copy_task(&self, key: &str, targets: &[String]) -> MResult<TaskId> {
        self.validate_key(key)?;
        if targets.is_empty() || targets.iter().any(|t| !self.segment_name_known(t)) {
            return Err(ErrorCode::InvalidParams);
        }
        let (source, owner) = self.task_source(key, None)?;
        self.tasks
            .lock()
            .submit(TaskKind::ReplicaCopy, owner, key, source, targets.to_vec())
    }

    /// Queues a task moving the replica of `key` on `source` to `target`.
    pub fn create_move_task(&self, key: &str, source: &str, target: &str) -> MResult<TaskId> {
        self.validate_key(key)?;
        // A missing key is OBJECT_NOT_FOUND whatever the segments, as upstream.
        self.query_key(key)?;
        if source == target || !self.segment_name_known(target) {
            return Err(ErrorCode::InvalidParams);
        }
        let (source_id, owner) = self.task_source(key, Some(source))?;
        self.tasks.lock().submit(
            TaskKind::ReplicaMove,
            owner,
            key,
            source_id,
            vec![target.to_string()],
        )
    }

    /// Queues a move of the replica of `key` on segment `source` to wherever the
    /// master places it (drain jobs), or to one of `targets`.
    pub(crate) fn submit_drain_move(
        &self,
        key: &str,
        source: SegmentId,
        targets: &[String],
    ) -> MResult<TaskId> {
        let owner = self
            .segments
            .read()
            .by_id(&source)
            .map(|s| s.owner)
            .ok_or(ErrorCode::SegmentNotFound)?;
        self.tasks
            .lock()
            .submit(TaskKind::ReplicaMove, owner, key, source, targets.to_vec())
    }

    /// A task's state.
    pub fn query_task(&self, id: &TaskId) -> MResult<TaskInfo> {
        self.tasks.lock().query(id)
    }

    /// Replica tasks queued or running (the dashboard shows it).
    pub fn unfinished_tasks(&self) -> usize {
        self.tasks.lock().unfinished()
    }

    /// Up to `max` queued tasks of `client`.
    pub fn fetch_tasks(&self, client: ClientId, max: u32) -> Vec<TaskAssignment> {
        self.tasks
            .lock()
            .fetch(&client, max.clamp(1, 1024) as usize)
    }

    /// Records a task's outcome.
    pub fn complete_task(
        &self,
        client: ClientId,
        id: TaskId,
        success: bool,
        message: String,
    ) -> MResult<()> {
        let (result, key) = {
            let mut tasks = self.tasks.lock();
            let key = tasks.key_of(&id).map(str::to_string);
            (tasks.complete(&client, &id, success, message), key)
        };
        // A failed offload is no longer on the way.
        if !success && let Some(key) = key {
            self.offload_done(&key);
            self.copy_failed(&key);
        }
        result
    }

    /// Allocates one replica of `size` bytes on an active segment not in `taken`:
    /// on a segment called `name`, or anywhere when `name` is `None`.
    fn allocate_target(
        segs: &SegmentTable,
        size: u64,
        name: Option<&str>,
        taken: &[u32],
        unnamed: Medium,
    ) -> Option<Placement> {
        // A named target may be a disk tier (offloads); a placement by the
        // master is in the tier `unnamed` says.
        let active: Vec<u32> = match (name, unnamed) {
            (Some(_), _) => segs
                .active_slots()
                .iter()
                .chain(segs.disk_slots())
                .copied()
                .collect(),
            (None, Medium::Memory) => segs.active_slots().to_vec(),
            (None, Medium::Disk) => segs.disk_slots().to_vec(),
        };
        if active.is_empty() {
            return None;
        }
        let start = rand::rng().random_range(0..active.len());
        (0..active.len())
            .map(|i| active[(start + i) % active.len()])
            .filter(|slot| !taken.contains(slot))
            .filter_map(|slot| segs.get(slot))
            .filter(|s| name.is_none_or(|n| s.desc.name == n))
            .find_map(|s| {
                s.try_allocate(size).map(|offset| Placement {
                    offset,
                    segment: s.slot,
                })
            })
    }

    /// Starts a copy of the replica of `key` on `source` (a segment of `client`)
    /// to new replicas on the segments named `targets` that hold none yet (empty:
    /// one new replica placed by the master).
    pub fn replica_copy_start(
        &self,
        client: ClientId,
        key: &str,
        source: SegmentId,
        targets: &[String],
        remove_source: bool,
    ) -> MResult<ReplicaCopyPlan> {
        match self.replica_copy_start_once(client, key, source, targets, remove_source) {
            // A promotion takes free memory only (see `promotion_order`).
            Err(ErrorCode::NoAvailableHandle) if self.promoting(key) => {
                self.metrics.promotions_skipped.fetch_add(1, Relaxed);
                Err(ErrorCode::NoAvailableHandle)
            }
            // No room: evict in the target's tier as a write would, then try
            // once more.
            Err(ErrorCode::NoAvailableHandle) => {
                let Ok(size) = self.query_key(key).map(|l| l.size) else {
                    return Err(ErrorCode::NoAvailableHandle);
                };
                let to_disk = {
                    let segs = self.segments.read();
                    targets.iter().any(|t| segs.named(t).any(|s| s.on_disk()))
                };
                let room = if to_disk {
                    self.evict_disk_for_space(size)
                } else {
                    self.evict_for_space(size)
                };
                if !room {
                    return Err(ErrorCode::NoAvailableHandle);
                }
                self.replica_copy_start_once(client, key, source, targets, remove_source)
            }
            other => other,
        }
    }

    fn replica_copy_start_once(
        &self,
        client: ClientId,
        key: &str,
        source: SegmentId,
        targets: &[String],
        remove_source: bool,
    ) -> MResult<ReplicaCopyPlan> {
        self.validate_key(key)?;
        let hash = self.hash(key);
        let now = self.now_ms();
        let mut shard = self.shard(hash).lock();
        if shard.copying.contains_key(key) {
            return Err(ErrorCode::ObjectHasReplicationTask);
        }
        let o = shard.get_mut(hash, key).ok_or(ErrorCode::ObjectNotFound)?;
        let segs = self.segments.read();
        let src = segs.by_id(&source).ok_or(ErrorCode::SegmentNotFound)?;
        if src.owner != client {
            return Err(ErrorCode::IllegalClient);
        }
        let source_placement = *o
            .replicas
            .as_slice()
            .iter()
            .find(|p| p.segment == src.slot)
            .ok_or(ErrorCode::ReplicaNotFound)?;
        let mut taken: Vec<u32> = o.replicas.as_slice().iter().map(|p| p.segment).collect();
        let mut new: Vec<Placement> = Vec::new();
        let mut failed = false;
        if targets.is_empty() {
            // A copy out of a disk tier (a drain) goes to another disk tier,
            // or to memory when there is none with room.
            let placed = if src.on_disk() {
                Self::allocate_target(&segs, o.size, None, &taken, Medium::Disk)
            } else {
                None
            }
            .or_else(|| Self::allocate_target(&segs, o.size, None, &taken, Medium::Memory));
            match placed {
                Some(p) => new.push(p),
                None => failed = true,
            }
        } else {
            let mut seen: Vec<&str> = Vec::new();
            for name in targets {
                if seen.contains(&name.as_str()) {
                    continue;
                }
                seen.push(name);
                let present = taken
                    .iter()
                    .filter_map(|&slot| segs.get(slot))
                    .any(|s| s.desc.name == *name);
                if present {
                    continue;
                }
                match Self::allocate_target(&segs, o.size, Some(name), &taken, Medium::Memory) {
                    Some(p) => {
                        taken.push(p.segment);
                        new.push(p);
                    }
                    None => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        if failed {
            for p in &new {
                if let Some(seg) = segs.get(p.segment) {
                    seg.free(p.offset, o.size);
                }
            }
            return Err(ErrorCode::NoAvailableHandle);
        }
        let describe = |p: &Placement, status| Self::describe(&segs, p, o.size, o.version, status);
        let plan = ReplicaCopyPlan {
            source: describe(&source_placement, ReplicaStatus::Complete)
                .ok_or(ErrorCode::InternalError)?,
            targets: new
                .iter()
                .filter_map(|p| describe(p, ReplicaStatus::Processing))
                .collect(),
            write_version: self.next_version(),
        };
        o.flags |= FLAG_REPLICATING;
        let pending = PendingCopy {
            copier: client,
            started: now,
            version: o.version,
            size: o.size,
            source: source_placement,
            targets: new,
            remove_source,
        };
        drop(segs);
        shard.copying.insert(key.into(), pending);
        Ok(plan)
    }

    /// Completes a copy: the new replicas not on `failed` segments become
    /// readable; for a move the source replica is dropped (its space freed once
    /// no read lease covers it).
    pub fn replica_copy_end(
        &self,
        client: ClientId,
        key: &str,
        failed: &[SegmentId],
    ) -> MResult<()> {
        self.validate_key(key)?;
        let hash = self.hash(key);
        let now = self.now_ms();
        let mut shard = self.shard(hash).lock();
        let copy = take_copy(&mut shard, key, client)?;
        let segs = self.segments.read();
        let (lost, kept): (Vec<Placement>, Vec<Placement>) = copy.targets.iter().partition(|p| {
            segs.get(p.segment)
                .is_none_or(|s| failed.contains(&s.desc.id))
        });
        let grace = now + FAILED_REPLICA_GRACE_MS;
        let Some(o) = shard
            .get_mut(hash, key)
            .filter(|o| o.version == copy.version)
        else {
            self.release_later(&segs, &copy.targets, copy.size, copy.version, grace, false);
            return Err(ErrorCode::ReplicaIsGone);
        };
        o.flags &= !FLAG_REPLICATING;
        self.release_later(&segs, &lost, copy.size, copy.version, grace, false);
        if kept.is_empty() && !copy.targets.is_empty() {
            return Err(ErrorCode::TransferFail);
        }
        for p in &kept {
            o.replicas.push(*p);
        }
        Self::emit_added(&segs, key, &kept, o.size, o.version);
        if !kept.is_empty() {
            self.offload_done(key);
        }
        if copy.remove_source
            && o.replicas.as_slice().len() > 1
            && o.replicas.as_slice().contains(&copy.source)
        {
            o.replicas.drop_segment(copy.source.segment);
            let gone = [copy.source];
            if o.leased(now) {
                let until = o.lease_until;
                self.release_later(&segs, &gone, o.size, o.version, until, true);
            } else {
                self.release_now(&segs, &gone, o.size, o.version);
            }
        }
        Ok(())
    }

    /// Abandons a copy; its new replicas are freed.
    pub fn replica_copy_revoke(&self, client: ClientId, key: &str) -> MResult<()> {
        self.validate_key(key)?;
        let hash = self.hash(key);
        let mut shard = self.shard(hash).lock();
        let copy = take_copy(&mut shard, key, client)?;
        if let Some(o) = shard.get_mut(hash, key) {
            o.flags &= !FLAG_REPLICATING;
        }
        let segs = self.segments.read();
        for p in &copy.targets {
            if let Some(seg) = segs.get(p.segment) {
                seg.free(p.offset, copy.size);
            }
        }
        self.free_epoch.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Abandons copies whose copier never ended them (crashed or hung).
    pub(super) fn expire_copies(&self, now: u64) {
        let release_ms = self.config.put_start_release_timeout.as_millis() as u64;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            if shard.copying.is_empty() {
                continue;
            }
            let stale: Vec<Box<str>> = shard
                .copying
                .iter()
                .filter(|(_, c)| now >= c.started + release_ms)
                .map(|(k, _)| k.clone())
                .collect();
            let segs = self.segments.read();
            for key in stale {
                let copy = shard.copying.remove(&key).expect("present");
                let hash = self.hash(&key);
                if let Some(o) = shard.get_mut(hash, &key) {
                    o.flags &= !FLAG_REPLICATING;
                }
                self.release_later(
                    &segs,
                    &copy.targets,
                    copy.size,
                    copy.version,
                    now + FAILED_REPLICA_GRACE_MS,
                    false,
                );
            }
        }
    }
}

/// Removes the copy of `key` started by `client`: `OBJECT_NO_REPLICATION_TASK`
/// when none runs, `ILLEGAL_CLIENT` when another client started it.
fn take_copy(shard: &mut Shard, key: &str, client: ClientId) -> MResult<PendingCopy> {
    match shard.copying.get(key) {
        None => Err(ErrorCode::ObjectNoReplicationTask),
        Some(c) if c.copier != client => Err(ErrorCode::IllegalClient),
        Some(_) => Ok(shard.copying.remove(key).expect("present")),
    }
}
