//! Per-client inventory change logs.
//!
//! Every real client keeps an inventory of the objects in its segments so that the
//! master's metadata can be rebuilt from the fleet after a master restart. The master
//! is the one who learns about writes into a segment (any client may write into any
//! segment) and about removals and evictions, so it queues those changes per owner;
//! the owner drains them with `sync_inventory`, acknowledging what it applied.

use std::collections::VecDeque;

use mooncake_proto::{InventoryChange, InventoryDelta};

/// Most changes returned by one `sync_inventory`.
pub const MAX_CHANGES_PER_SYNC: usize = 65_536;

/// Changes not yet acknowledged by one client.
#[derive(Debug)]
pub struct InventoryLog {
    /// Logging starts at the client's first sync; before that there is no one to
    /// deliver to, and the first sync asks for a full snapshot anyway.
    enabled: bool,
    /// Sequence number of `changes[0]`.
    first_seq: u64,
    changes: VecDeque<InventoryChange>,
    limit: usize,
}

impl InventoryLog {
    /// An empty, disabled log holding at most `limit` changes.
    pub fn new(limit: usize) -> Self {
        InventoryLog {
            enabled: false,
            first_seq: 1,
            changes: VecDeque::new(),
            limit,
        }
    }

    /// Sequence number of the newest change (0 when none yet).
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.changes.len() as u64 - 1
    }

    /// Queues a change; overflowing the limit disables the log, forcing a resync.
    pub fn push(&mut self, change: InventoryChange) {
        if !self.enabled {
            return;
        }
        if self.changes.len() >= self.limit {
            self.enabled = false;
            self.first_seq += self.changes.len() as u64;
            self.changes.clear();
            return;
        }
        self.changes.push_back(change);
    }

    /// Starts (or restarts) logging from now on; returns the sequence number a
    /// snapshot taken now corresponds to.
    pub fn restart(&mut self) -> u64 {
        self.first_seq += self.changes.len() as u64;
        self.changes.clear();
        self.enabled = true;
        self.first_seq - 1
    }

    /// Drops changes up to `ack` and returns the ones after it.
    pub fn sync(&mut self, ack: u64) -> InventoryDelta {
        if !self.enabled {
            return InventoryDelta {
                seq: self.last_seq(),
                changes: Vec::new(),
                resync_required: true,
            };
        }
        while ack >= self.first_seq && !self.changes.is_empty() {
            self.changes.pop_front();
            self.first_seq += 1;
        }
        let changes: Vec<InventoryChange> = self
            .changes
            .iter()
            .take(MAX_CHANGES_PER_SYNC)
            .cloned()
            .collect();
        InventoryDelta {
            seq: self.first_seq + changes.len() as u64 - 1,
            changes,
            resync_required: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn removed(offset: u64) -> InventoryChange {
        InventoryChange::Removed {
            segment_id: Uuid::nil(),
            offset,
            version: 1,
        }
    }

    #[test]
    fn first_sync_asks_for_resync_then_deltas_flow_with_acks() {
        let mut log = InventoryLog::new(10);
        log.push(removed(0));
        assert!(log.sync(0).resync_required);
        let base = log.restart();
        log.push(removed(1));
        log.push(removed(2));
        let d = log.sync(base);
        assert!(!d.resync_required);
        assert_eq!(d.changes, vec![removed(1), removed(2)]);
        // Unacknowledged changes are delivered again.
        let again = log.sync(base);
        assert_eq!(again.changes.len(), 2);
        let d2 = log.sync(d.seq);
        assert!(d2.changes.is_empty());
        assert_eq!(d2.seq, d.seq);
        log.push(removed(3));
        assert_eq!(log.sync(d.seq).changes, vec![removed(3)]);
    }

    #[test]
    fn overflow_forces_resync() {
        let mut log = InventoryLog::new(3);
        let base = log.restart();
        for i in 0..5 {
            log.push(removed(i));
        }
        let d = log.sync(base);
        assert!(d.resync_required);
        let seq = log.restart();
        log.push(removed(9));
        assert_eq!(log.sync(seq).changes, vec![removed(9)]);
    }
}
