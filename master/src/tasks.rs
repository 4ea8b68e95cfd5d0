//! Replica copy / move tasks: created by users (`create_copy_task`,
//! `create_move_task`) and by drain jobs, queued for the client owning the source
//! replica, fetched by that client after its ping says some are waiting, and
//! completed by it. Finished tasks stay queryable for [`FINISHED_RETENTION_MS`].

use std::collections::{HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use mooncake_proto::{
    ClientId, ErrorCode, MResult, SegmentId, TaskAssignment, TaskId, TaskInfo, TaskKind, TaskState,
};
use uuid::Uuid;

/// Tasks not yet finished, over all clients; more are refused with
/// `TASK_PENDING_LIMIT_EXCEEDED`.
pub(crate) const MAX_UNFINISHED_TASKS: usize = 100_000;
/// How long a finished task stays queryable.
pub(crate) const FINISHED_RETENTION_MS: i64 = 3_600_000;
/// A fetched task not completed within this long is failed (its client hung).
pub(crate) const PROCESSING_TIMEOUT_MS: i64 = 600_000;

pub(crate) fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Task {
    info: TaskInfo,
    key: String,
    source: SegmentId,
    targets: Vec<String>,
}

/// Every task the master knows.
#[derive(Default)]
pub(crate) struct TaskTable {
    tasks: HashMap<TaskId, Task>,
    queues: HashMap<ClientId, VecDeque<TaskId>>,
    unfinished: usize,
}

impl TaskTable {
    /// Queues a task for `client`.
    pub fn submit(
        &mut self,
        kind: TaskKind,
        client: ClientId,
        key: &str,
        source: SegmentId,
        targets: Vec<String>,
    ) -> MResult<TaskId> {
        if self.unfinished >= MAX_UNFINISHED_TASKS {
            return Err(ErrorCode::TaskPendingLimitExceeded);
        }
        let id = Uuid::new_v4();
        let now = epoch_ms();
        self.tasks.insert(
            id,
            Task {
                info: TaskInfo {
                    id,
                    kind,
                    state: TaskState::Pending,
                    created_at_ms: now,
                    updated_at_ms: now,
                    assigned_client: client,
                    message: String::new(),
                },
                key: key.to_string(),
                source,
                targets,
            },
        );
        self.queues.entry(client).or_default().push_back(id);
        self.unfinished += 1;
        Ok(id)
    }

    pub fn query(&self, id: &TaskId) -> MResult<TaskInfo> {
        self.tasks
            .get(id)
            .map(|t| t.info.clone())
            .ok_or(ErrorCode::TaskNotFound)
    }

    /// Tasks queued for `client`.
    pub fn pending_for(&self, client: &ClientId) -> usize {
        self.queues.get(client).map_or(0, |q| q.len())
    }

    /// Hands up to `max` queued tasks to `client`; they become PROCESSING.
    pub fn fetch(&mut self, client: &ClientId, max: usize) -> Vec<TaskAssignment> {
        let Some(queue) = self.queues.get_mut(client) else {
            return Vec::new();
        };
        let now = epoch_ms();
        let mut out = Vec::new();
        while out.len() < max {
            let Some(id) = queue.pop_front() else { break };
            let Some(task) = self.tasks.get_mut(&id) else {
                continue;
            };
            task.info.state = TaskState::Processing;
            task.info.updated_at_ms = now;
            out.push(TaskAssignment {
                id,
                kind: task.info.kind,
                key: task.key.clone(),
                source: task.source,
                targets: task.targets.clone(),
            });
        }
        if queue.is_empty() {
            self.queues.remove(client);
        }
        out
    }

    /// Records the outcome reported by the task's client.
    pub fn complete(
        &mut self,
        client: &ClientId,
        id: &TaskId,
        success: bool,
        message: String,
    ) -> MResult<()> {
        let task = self.tasks.get_mut(id).ok_or(ErrorCode::TaskNotFound)?;
        if task.info.assigned_client != *client {
            return Err(ErrorCode::IllegalClient);
        }
        if task.info.state != TaskState::Processing {
            return Err(ErrorCode::InvalidParams);
        }
        self.finish(id, success, message);
        Ok(())
    }

    /// The key a task copies.
    pub fn key_of(&self, id: &TaskId) -> Option<&str> {
        self.tasks.get(id).map(|t| t.key.as_str())
    }

    fn finish(&mut self, id: &TaskId, success: bool, message: String) {
        if let Some(task) = self.tasks.get_mut(id)
            && !task.info.state.finished()
        {
            task.info.state = if success {
                TaskState::Success
            } else {
                TaskState::Failed
            };
            task.info.message = message;
            task.info.updated_at_ms = epoch_ms();
            self.unfinished -= 1;
        }
    }

    /// Fails every unfinished task of a client that went away.
    pub fn fail_client(&mut self, client: &ClientId, why: &str) {
        self.queues.remove(client);
        let ids: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.info.assigned_client == *client && !t.info.state.finished())
            .map(|t| t.info.id)
            .collect();
        for id in ids {
            self.finish(&id, false, why.to_string());
        }
    }

    /// Tasks queued or running.
    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    /// Fails hung tasks and forgets long-finished ones.
    pub fn prune(&mut self) {
        let now = epoch_ms();
        let hung: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| {
                t.info.state == TaskState::Processing
                    && now - t.info.updated_at_ms > PROCESSING_TIMEOUT_MS
            })
            .map(|t| t.info.id)
            .collect();
        for id in hung {
            self.finish(
                &id,
                false,
                "the client did not report the task's outcome".into(),
            );
        }
        self.tasks.retain(|_, t| {
            !t.info.state.finished() || now - t.info.updated_at_ms < FINISHED_RETENTION_MS
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_queue_fetch_complete() {
        let mut t = TaskTable::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let seg = Uuid::new_v4();
        let id = t
            .submit(TaskKind::ReplicaCopy, a, "k", seg, vec!["x".into()])
            .unwrap();
        assert_eq!(t.query(&id).unwrap().state, TaskState::Pending);
        assert_eq!(t.pending_for(&a), 1);
        assert!(t.fetch(&b, 10).is_empty());
        let got = t.fetch(&a, 10);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, "k");
        assert_eq!(t.pending_for(&a), 0);
        assert_eq!(t.query(&id).unwrap().state, TaskState::Processing);
        assert_eq!(
            t.complete(&b, &id, true, String::new()),
            Err(ErrorCode::IllegalClient)
        );
        t.complete(&a, &id, false, "boom".into()).unwrap();
        let info = t.query(&id).unwrap();
        assert_eq!(info.state, TaskState::Failed);
        assert_eq!(info.message, "boom");
        // A finished task cannot be completed again.
        assert_eq!(
            t.complete(&a, &id, true, String::new()),
            Err(ErrorCode::InvalidParams)
        );
        assert_eq!(t.query(&Uuid::new_v4()), Err(ErrorCode::TaskNotFound));
    }

    #[test]
    fn client_loss_fails_its_tasks() {
        let mut t = TaskTable::default();
        let a = Uuid::new_v4();
        let id1 = t
            .submit(TaskKind::ReplicaMove, a, "k1", Uuid::new_v4(), vec![])
            .unwrap();
        let id2 = t
            .submit(TaskKind::ReplicaMove, a, "k2", Uuid::new_v4(), vec![])
            .unwrap();
        t.fetch(&a, 1);
        t.fail_client(&a, "gone");
        for id in [id1, id2] {
            assert_eq!(t.query(&id).unwrap().state, TaskState::Failed);
        }
        assert_eq!(t.unfinished, 0);
        assert_eq!(t.pending_for(&a), 0);
    }
}
