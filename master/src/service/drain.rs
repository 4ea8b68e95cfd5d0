//! Segment drain jobs (`/api/v1/drain_jobs`): move every object off some
//! segments before they leave. The segments stop taking new objects at once;
//! each object on them becomes a move task run by the segment's owner, at most
//! `max_concurrency` at a time, retried a few times; objects that appear or stay
//! behind are picked up by a final rescan. A finished job leaves its segments
//! out of service (empty, ready to unmount); a failed or cancelled one puts them
//! back.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;
use uuid::Uuid;

use mooncake_proto::*;

use super::MasterService;
use crate::tasks::epoch_ms;

/// Attempts per object before it counts as failed.
const MAX_ATTEMPTS: u32 = 3;
/// Upper bound on `max_concurrency`.
const MAX_CONCURRENCY: u32 = 1024;

/// Job states, numbered as upstream's `JobStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JobStatus {
    /// Accepted.
    Created = 0,
    /// Listing the objects to move.
    Planning = 1,
    /// Moving.
    Running = 2,
    /// Every object moved.
    Succeeded = 3,
    /// Some objects could not be moved.
    Failed = 4,
    /// Cancelled by the operator.
    Canceled = 5,
}

impl JobStatus {
    /// Upstream's spelling.
    pub fn name(self) -> &'static str {
        match self {
            JobStatus::Created => "CREATED",
            JobStatus::Planning => "PLANNING",
            JobStatus::Running => "RUNNING",
            JobStatus::Succeeded => "SUCCEEDED",
            JobStatus::Failed => "FAILED",
            JobStatus::Canceled => "CANCELED",
        }
    }

    fn finished(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled
        )
    }
}

/// A drain job as `/api/v1/drain_jobs/query` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainJobInfo {
    /// The job.
    pub id: Uuid,
    /// Where it stands.
    pub status: JobStatus,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Last change, ms since the Unix epoch.
    pub updated_at_ms: i64,
    /// Names of the segments drained.
    pub segments: Vec<String>,
    /// Objects moved off (or gone by themselves).
    pub succeeded_units: u64,
    /// Objects that could not be moved.
    pub failed_units: u64,
    /// Objects waiting for another attempt after a failed one.
    pub blocked_units: u64,
    /// Moves running now.
    pub active_units: u64,
    /// Objects still waiting to be moved (not upstream's; progress needs it).
    pub pending_units: u64,
    /// Bytes moved.
    pub migrated_bytes: u64,
    /// Outcome, or why it failed.
    pub message: String,
}

/// One object to move: key, size, source segment.
struct Unit {
    key: String,
    size: u64,
    source: SegmentId,
    attempts: u32,
}

pub(super) struct DrainJob {
    info: DrainJobInfo,
    sources: Vec<SegmentId>,
    targets: Vec<String>,
    max_concurrency: usize,
    queue: VecDeque<Unit>,
    active: HashMap<TaskId, Unit>,
    /// Keys that failed for good (not picked up again by the rescan).
    given_up: HashSet<String>,
    rescanned: bool,
}

impl MasterService {
    /// Starts draining the segments named `segments` to those named `targets`
    /// (empty: anywhere else). `INVALID_PARAMS` for no segments, a target that
    /// is also drained, or a segment another running job drains;
    /// `SEGMENT_NOT_FOUND` for an unknown name.
    pub fn create_drain_job(
        &self,
        segments: &[String],
        targets: &[String],
        max_concurrency: u32,
    ) -> MResult<Uuid> {
        if segments.is_empty() || targets.iter().any(|t| segments.contains(t)) {
            return Err(ErrorCode::InvalidParams);
        }
        let mut drains = self.drains.lock();
        let sources: Vec<(SegmentId, u32)> = {
            let mut segs = self.segments.write();
            let mut found = Vec::new();
            for name in segments {
                let named: Vec<(SegmentId, u32)> =
                    segs.named(name).map(|s| (s.desc.id, s.slot)).collect();
                if named.is_empty() {
                    return Err(ErrorCode::SegmentNotFound);
                }
                found.extend(named);
            }
            for t in targets {
                if segs.named(t).next().is_none() {
                    return Err(ErrorCode::SegmentNotFound);
                }
            }
            let busy = drains
                .values()
                .filter(|j| !j.info.status.finished())
                .any(|j| found.iter().any(|(id, _)| j.sources.contains(id)));
            if busy {
                return Err(ErrorCode::InvalidParams);
            }
            for (_, slot) in &found {
                segs.deactivate(*slot);
            }
            found
        };
        let id = Uuid::new_v4();
        let now = epoch_ms();
        let mut job = DrainJob {
            info: DrainJobInfo {
                id,
                status: JobStatus::Planning,
                created_at_ms: now,
                updated_at_ms: now,
                segments: segments.to_vec(),
                succeeded_units: 0,
                failed_units: 0,
                blocked_units: 0,
                active_units: 0,
                pending_units: 0,
                migrated_bytes: 0,
                message: String::new(),
            },
            sources: sources.iter().map(|(id, _)| *id).collect(),
            targets: targets.to_vec(),
            max_concurrency: max_concurrency.clamp(1, MAX_CONCURRENCY) as usize,
            queue: VecDeque::new(),
            active: HashMap::new(),
            given_up: HashSet::new(),
            rescanned: false,
        };
        job.queue = self.units_on(&job.sources, &job.given_up).into();
        job.info.status = JobStatus::Running;
        tracing::info!(job = %id, segments = ?segments, objects = job.queue.len(), "drain job started");
        drains.insert(id, job);
        Ok(id)
    }

    /// Every drain job still remembered, newest first.
    pub fn drain_jobs(&self) -> Vec<DrainJobInfo> {
        let mut jobs: Vec<DrainJobInfo> = self
            .drains
            .lock()
            .keys()
            .copied()
            .collect::<Vec<_>>()
            .iter()
            .filter_map(|id| self.query_drain_job(id).ok())
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.created_at_ms));
        jobs
    }

    /// A drain job's state; `JOB_NOT_FOUND` for an unknown id.
    pub fn query_drain_job(&self, id: &Uuid) -> MResult<DrainJobInfo> {
        let drains = self.drains.lock();
        let job = drains.get(id).ok_or(ErrorCode::JobNotFound)?;
        let mut info = job.info.clone();
        info.active_units = job.active.len() as u64;
        info.blocked_units = job.queue.iter().filter(|u| u.attempts > 0).count() as u64;
        info.pending_units = job.queue.len() as u64;
        Ok(info)
    }

    /// Stops a running drain job: no more moves start, and its segments take new
    /// objects again. Cancelling a cancelled job is a no-op; a finished one gives
    /// `INVALID_PARAMS`.
    pub fn cancel_drain_job(&self, id: &Uuid) -> MResult<()> {
        let mut drains = self.drains.lock();
        let job = drains.get_mut(id).ok_or(ErrorCode::JobNotFound)?;
        match job.info.status {
            JobStatus::Canceled => return Ok(()),
            s if s.finished() => return Err(ErrorCode::InvalidParams),
            _ => {}
        }
        job.queue.clear();
        self.finish_job(job, JobStatus::Canceled, "canceled by request".into());
        Ok(())
    }

    /// Objects with a replica on `sources`, except `skip`.
    fn units_on(&self, sources: &[SegmentId], skip: &HashSet<String>) -> Vec<Unit> {
        let slots: Vec<(u32, SegmentId)> = {
            let segs = self.segments.read();
            sources
                .iter()
                .filter_map(|id| segs.by_id(id).map(|s| (s.slot, *id)))
                .collect()
        };
        let mut units = Vec::new();
        for shard in self.shards.iter() {
            shard.lock().for_each(|k, o| {
                for p in o.replicas.as_slice() {
                    if let Some((_, id)) = slots.iter().find(|(slot, _)| *slot == p.segment)
                        && !skip.contains(k)
                    {
                        units.push(Unit {
                            key: k.to_string(),
                            size: o.size,
                            source: *id,
                            attempts: 0,
                        });
                    }
                }
            });
        }
        units
    }

    /// Whether `key` still has a replica on segment `source`.
    fn still_on(&self, key: &str, source: &SegmentId) -> bool {
        let hash = self.hash(key);
        let shard = self.shard(hash).lock();
        let Some(o) = shard.get(hash, key) else {
            return false;
        };
        let segs = self.segments.read();
        let Some(slot) = segs.by_id(source).map(|s| s.slot) else {
            return false;
        };
        o.replicas.as_slice().iter().any(|p| p.segment == slot)
    }

    fn finish_job(&self, job: &mut DrainJob, status: JobStatus, message: String) {
        if status != JobStatus::Succeeded {
            let mut segs = self.segments.write();
            for id in &job.sources {
                if let Some(slot) = segs.by_id(id).map(|s| s.slot) {
                    segs.activate(slot);
                }
            }
        }
        job.info.status = status;
        job.info.message = message;
        job.info.updated_at_ms = epoch_ms();
        tracing::info!(job = %job.info.id, status = status.name(), moved = job.info.succeeded_units, failed = job.info.failed_units, "drain job finished");
    }

    /// Advances every running drain job: collects finished moves, starts new ones,
    /// finishes jobs with nothing left. Called a few times a second.
    pub fn drive_drain_jobs(&self) {
        let mut drains = self.drains.lock();
        for job in drains.values_mut() {
            if job.info.status != JobStatus::Running {
                continue;
            }
            self.drive_job(job);
        }
    }

    fn drive_job(&self, job: &mut DrainJob) {
        let mut changed = false;
        let done: Vec<(TaskId, TaskState)> = {
            let tasks = self.tasks.lock();
            job.active
                .keys()
                .filter_map(|id| {
                    let state = tasks
                        .query(id)
                        .map(|t| t.state)
                        .unwrap_or(TaskState::Failed);
                    state.finished().then_some((*id, state))
                })
                .collect()
        };
        for (id, state) in done {
            let mut unit = job.active.remove(&id).expect("active");
            changed = true;
            if state == TaskState::Success {
                job.info.succeeded_units += 1;
                job.info.migrated_bytes += unit.size;
            } else if !self.still_on(&unit.key, &unit.source) {
                job.info.succeeded_units += 1;
            } else if unit.attempts < MAX_ATTEMPTS {
                job.queue.push_back(unit);
            } else {
                job.info.failed_units += 1;
                let msg = self
                    .tasks
                    .lock()
                    .query(&id)
                    .map(|t| t.message)
                    .unwrap_or_default();
                job.info.message = format!("{}: {msg}", unit.key);
                unit.attempts = 0;
                job.given_up.insert(unit.key);
            }
        }
        while job.active.len() < job.max_concurrency {
            let Some(mut unit) = job.queue.pop_front() else {
                break;
            };
            if !self.still_on(&unit.key, &unit.source) {
                job.info.succeeded_units += 1;
                changed = true;
                continue;
            }
            unit.attempts += 1;
            match self.submit_drain_move(&unit.key, unit.source, &job.targets) {
                Ok(id) => {
                    job.active.insert(id, unit);
                    changed = true;
                }
                Err(ErrorCode::TaskPendingLimitExceeded) => {
                    unit.attempts -= 1;
                    job.queue.push_front(unit);
                    break;
                }
                Err(e) => {
                    job.info.failed_units += 1;
                    job.info.message = format!("{}: {e}", unit.key);
                    job.given_up.insert(unit.key);
                    changed = true;
                }
            }
        }
        if job.active.is_empty() && job.queue.is_empty() {
            // Writes started before the drain may have landed since the plan.
            if !job.rescanned {
                job.rescanned = true;
                job.queue = self.units_on(&job.sources, &job.given_up).into();
                if !job.queue.is_empty() {
                    return;
                }
            }
            if job.info.failed_units > 0 {
                let why = format!(
                    "{} object(s) could not be moved; last: {}",
                    job.info.failed_units, job.info.message
                );
                self.finish_job(job, JobStatus::Failed, why);
            } else {
                let msg = format!("drained {} object(s)", job.info.succeeded_units);
                self.finish_job(job, JobStatus::Succeeded, msg);
            }
            return;
        }
        if changed {
            job.info.updated_at_ms = epoch_ms();
        }
    }
}
