//! Replica copy / move tasks: queued by the master, fetched after a ping and run here.

use super::*;

impl RealClient {
    /// Fetches the replica tasks queued for this client and runs them, a batch
    /// at a time, until none is left.
    pub(super) async fn run_replica_tasks(self: Arc<Self>) {
        const BATCH: u32 = 16;
        loop {
            let Ok(master) = self.master() else { break };
            let tasks = match master.fetch_tasks(self.client_id, BATCH).await {
                Ok(t) if !t.is_empty() => t,
                _ => break,
            };
            let me = &self;
            let runs = tasks.into_iter().map(|t| {
                let master = master.clone();
                async move {
                    let outcome = me.run_replica_task(&master, &t).await;
                    let (ok, message) = match outcome {
                        Ok(()) => (true, "Task completed successfully".to_string()),
                        Err(e) => (false, e.to_string()),
                    };
                    if !ok {
                        tracing::warn!(task = %t.id, key = %t.key, "replica task failed: {message}");
                    }
                    let _ = master
                        .complete_task(me.client_id, t.id, ok, message)
                        .await;
                }
            });
            futures::future::join_all(runs).await;
            if self.shutdown.is_cancelled() {
                break;
            }
        }
        self.running_replica_tasks.store(false, Ordering::Release);
    }

    /// Copies (or moves) one replica out of this client's segment.
    pub(super) async fn run_replica_task(
        &self,
        master: &MasterHandle,
        task: &TaskAssignment,
    ) -> Result<(), ReplicaTaskError> {
        let failed = |step: &'static str, code: ErrorCode| ReplicaTaskError::Master { step, code };
        // The session the plan comes from: a copy into the own disk tier runs
        // only within it (see `begin_local_copy`).
        let generation = *self.master_generation.borrow();
        let plan = master
            .replica_copy_start(
                self.client_id,
                task.key.clone(),
                task.source,
                task.targets.clone(),
                task.kind == TaskKind::ReplicaMove,
            )
            .await
            .map_err(|e| failed("copy_start", e))?;
        let Some(region) = self.local_region(&plan.source.segment_id) else {
            let _ = master
                .replica_copy_revoke(self.client_id, task.key.clone())
                .await;
            return Err(ReplicaTaskError::NotOurSegment);
        };
        // A copy out of the disk tier (a promotion) passes its checksums first.
        if let Some(disk) = &self.disk
            && disk.desc.id == plan.source.segment_id
            && !disk.sums.verify(plan.source.offset, plan.source.size)
        {
            let _ = master
                .replica_copy_revoke(self.client_id, task.key.clone())
                .await;
            return Err(ReplicaTaskError::Corrupt);
        }
        // A copy into this client's own disk tier (an offload) is a local copy:
        // its blocks are summed and the disk inventory records it here.
        let (local, remote): (Vec<ReplicaDesc>, Vec<ReplicaDesc>) =
            plan.targets.iter().cloned().partition(|t| {
                self.disk
                    .as_ref()
                    .is_some_and(|d| d.desc.id == t.segment_id)
            });
        let mut failed_segments = Vec::new();
        let mut written = 0;
        for t in &local {
            let disk = self.disk.as_ref().expect("partitioned on the disk tier");
            let Some(_copying) = self.begin_local_copy(generation) else {
                tracing::warn!(key = %task.key, "a copy into the disk tier planned before a remount is not made");
                failed_segments.push(t.segment_id);
                continue;
            };
            match region.copy_to(plan.source.offset, &disk.region, t.offset, plan.source.size) {
                Ok(()) => {
                    disk.sums.seal(t.offset, plan.source.size);
                    self.record_landed(
                        t.segment_id,
                        vec![Landed {
                            offset: t.offset,
                            size: plan.source.size,
                            version: plan.source.version,
                            key: task.key.clone(),
                        }],
                    );
                    written += plan.source.size;
                }
                Err(e) => {
                    tracing::warn!(key = %task.key, "copy into the disk tier failed: {e}");
                    failed_segments.push(t.segment_id);
                }
            }
        }
        let plan = ReplicaCopyPlan {
            source: plan.source.clone(),
            targets: remote,
            write_version: plan.write_version,
        };
        let jobs: Vec<TransferJob> = plan
            .targets
            .iter()
            .map(|t| TransferJob {
                // The copy's own version, not the object's (old) one: a holder
                // that remounted with a later master refuses it.
                version: plan.write_version,
                direction: Direction::Write,
                endpoint: t.transport_endpoint.clone(),
                segment_id: t.segment_id,
                remote_offset: t.offset,
                local: LocalSpan {
                    memory: region.clone().into(),
                    offset: plan.source.offset,
                    len: plan.source.size,
                },
            })
            .collect();
        let deadline = Instant::now() + self.config.transfer_timeout;
        for ((result, n), t) in self
            .transfer(jobs, deadline)
            .await
            .into_iter()
            .zip(&plan.targets)
        {
            match result {
                Ok(()) => written += n,
                Err(e) => {
                    tracing::warn!(key = %task.key, segment = %t.segment_id, "replica copy failed: {e}");
                    failed_segments.push(t.segment_id);
                }
            }
        }
        self.metrics.add_transfer_bytes(0, written);
        // The new holders record the copies before the master hears of them: a
        // move then never leaves an object that no inventory lists.
        let mut per_key = vec![failed_segments];
        self.tell_owners(
            std::slice::from_ref(&task.key),
            std::slice::from_ref(&plan.targets),
            &mut per_key,
            &[],
            Some(plan.write_version),
        )
        .await;
        let failed_segments = per_key.pop().unwrap_or_default();
        master
            .replica_copy_end(self.client_id, task.key.clone(), failed_segments)
            .await
            .map_err(|e| failed("copy_end", e))
    }

    /// Queues a copy of `key` to the segments named `targets` (see the master's
    /// `create_copy_task`).
    pub async fn create_copy_task(&self, key: String, targets: Vec<String>) -> MResult<TaskId> {
        self.master()?.create_copy_task(key, targets).await
    }

    /// Queues a move of `key`'s replica on `source` to `target`.
    pub async fn create_move_task(
        &self,
        key: String,
        source: String,
        target: String,
    ) -> MResult<TaskId> {
        self.master()?.create_move_task(key, source, target).await
    }

    /// A task's state.
    pub async fn query_task(&self, id: TaskId) -> MResult<TaskInfo> {
        self.master()?.query_task(id).await
    }
}

/// Why a replica task failed; its text is what the master records for the task.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReplicaTaskError {
    /// The master refused a step of the copy.
    #[error("{step} failed: {code} ({})", code.as_i32())]
    Master {
        /// `copy_start` or `copy_end`.
        step: &'static str,
        /// The master's answer.
        code: ErrorCode,
    },
    /// The task named a source segment this client does not hold.
    #[error("the source segment is not this client's")]
    NotOurSegment,
    /// The source replica in the disk tier failed its checksum.
    #[error("the source replica failed its checksum (CHECKSUM_MISMATCH)")]
    Corrupt,
}
