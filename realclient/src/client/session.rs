//! The master session: connecting, remounting with the inventory, the heartbeat, inventory sync and persistence.

use super::*;

impl RealClient {
    pub(super) fn master(&self) -> MResult<MasterHandle> {
        self.master.read().clone().ok_or(ErrorCode::RpcFail)
    }

    pub(super) fn persist(&self) {
        let Some((_, desc)) = &self.segment else {
            return;
        };
        if self.config.ephemeral_segment {
            return;
        }
        let entries = {
            let mut inv = self.inventory.lock();
            inv.take_dirty();
            inv.entries()
        };
        let state = PersistedInventory {
            client_id: self.client_id,
            segment: desc.clone(),
            entries,
        };
        if let Err(e) = inventory::save(&self.config.inventory_path(), &state) {
            tracing::warn!("cannot persist the inventory: {e}");
        }
    }

    pub(super) async fn connect_and_remount(&self) -> crate::error::Result<()> {
        let master = match &self.local_master {
            Some(local) => MasterHandle::Local(local.clone()),
            None => MasterHandle::Remote(
                connect_master(
                    &self.config.master_server_address,
                    &self.config.cluster_token,
                )
                .await
                .map_err(|source| Error::MasterUnreachable {
                    address: self.config.master_server_address.clone(),
                    source,
                })?,
            ),
        };
        *self.master.write() = Some(master);
        self.remount().await
    }

    pub(super) async fn remount(&self) -> crate::error::Result<()> {
        let master = self.master().map_err(|code| Error::MasterRefused {
            what: "a connection",
            code,
        })?;
        let mut segments: Vec<SegmentDesc> = self.segment().cloned().into_iter().collect();
        segments.extend(self.extra_segments.lock().iter().map(|e| e.desc.clone()));
        let entries = self.inventory.lock().entries();
        let mut chunks: Vec<Vec<InventoryEntry>> =
            entries.chunks(REMOUNT_CHUNK).map(|c| c.to_vec()).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        let mut report = RemountReport::default();
        let total_objects = entries.len();
        let mut sent = 0;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let segs = if i == 0 { segments.clone() } else { Vec::new() };
            sent += chunk.len();
            // A large inventory takes a while: show how far it is (the master's
            // dashboard shows it too).
            if last > 0 && (i % 8 == 0 || i == last) {
                tracing::info!("remount: {sent} of {total_objects} objects sent to the master");
            }
            report = master
                .remount_segment(self.client_id, segs, chunk, i == last)
                .await
                .map_err(|code| Error::MasterRefused {
                    what: "remount_segment",
                    code,
                })?;
        }
        {
            let mut inv = self.inventory.lock();
            for rejected in &report.rejected {
                inv.remove(rejected.offset, rejected.version);
            }
            inv.seq = report.inventory_seq;
        }
        self.persist();
        self.healthy.store(true, Ordering::Relaxed);
        tracing::info!(
            restored = report.restored,
            rejected = report.rejected.len(),
            "mounted with the master at {}",
            self.config.master_server_address
        );
        Ok(())
    }

    pub(super) async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut repaired = mooncake_shm::guard::repaired_faults();
        // The dummy count the master last heard (reported when it changes, and
        // again after every reconnect).
        let mut reported_dummies: Option<u64> = None;
        while self
            .shutdown
            .run_until_cancelled(tick.tick())
            .await
            .is_some()
        {
            let now_repaired = mooncake_shm::guard::repaired_faults();
            if now_repaired != repaired {
                tracing::error!(
                    faults = now_repaired - repaired,
                    "a local process shrank shared memory this daemon maps (the segment, a mounted file or a dummy's buffer); its size was restored and the bytes it cut are lost"
                );
                repaired = now_repaired;
            }
            let status = match self.master() {
                Ok(m) => match tokio::time::timeout(Duration::from_secs(3), m.ping(self.client_id))
                    .await
                {
                    Ok(Ok(p)) => Some(p),
                    _ => None,
                },
                Err(_) => None,
            };
            if let Some(p) = &status
                && p.pending_tasks > 0
                && !self.running_replica_tasks.swap(true, Ordering::AcqRel)
            {
                self.tasks.spawn(self.clone().run_replica_tasks());
            }
            let dummies = self.metrics.dummies();
            if status.is_some()
                && reported_dummies != Some(dummies)
                && let Ok(m) = self.master()
                && m.report_load(self.client_id, dummies).await.is_ok()
            {
                reported_dummies = Some(dummies);
            }
            let status = status.map(|p| p.status);
            match status {
                Some(ClientStatus::Ok) => self.healthy.store(true, Ordering::Relaxed),
                Some(_) => {
                    reported_dummies = None;
                    tracing::warn!("master asks for a remount (it restarted or expired us)");
                    if let Err(e) = self.remount().await {
                        tracing::warn!("remount failed: {e:#}");
                    }
                }
                None => {
                    reported_dummies = None;
                    self.healthy.store(false, Ordering::Relaxed);
                    if let Err(e) = self.connect_and_remount().await {
                        tracing::debug!("master still unreachable: {e:#}");
                    }
                }
            }
            let now = Instant::now();
            self.pending
                .lock()
                .retain(|_, w| now.duration_since(w.started) < PENDING_WRITE_TTL);
        }
    }

    pub(super) async fn inventory_sync(self: Arc<Self>) {
        if self.segment.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self
            .shutdown
            .run_until_cancelled(tick.tick())
            .await
            .is_some()
        {
            if !self.healthy() {
                continue;
            }
            let Ok(master) = self.master() else { continue };
            let ack = self.inventory.lock().seq;
            let Ok(delta) = master.sync_inventory(self.client_id, ack).await else {
                continue;
            };
            if delta.resync_required {
                if let Ok(snapshot) = master.fetch_inventory(self.client_id).await {
                    let mut inv = self.inventory.lock();
                    inv.replace(snapshot.entries);
                    inv.seq = snapshot.seq;
                }
            } else {
                let mut inv = self.inventory.lock();
                for change in delta.changes {
                    inv.apply(change);
                }
                inv.seq = delta.seq;
            }
            let dirty = self.inventory.lock().take_dirty();
            if dirty {
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.persist()).await;
            }
        }
    }
}
