//! The master session: connecting, remounting with the inventory, the heartbeat, inventory sync and persistence.

use super::*;

impl RealClient {
    pub(super) fn master(&self) -> MResult<MasterHandle> {
        if let Some(own) = self.thread_master() {
            return Ok(own);
        }
        self.master.read().clone().ok_or(ErrorCode::RpcFail)
    }

    pub(super) fn persist(&self) {
        if let Some(disk) = &self.disk {
            disk.persist(self.client_id);
        }
        let Some((_, desc)) = &self.segment else {
            return;
        };
        if self.config.ephemeral_segment {
            return;
        }
        let path = self.config.inventory_path();
        if let Err(e) = inventory::persist(&self.inventory, &path, self.client_id, desc.clone()) {
            tracing::warn!("cannot persist the inventory: {e}");
        }
    }

    pub(super) async fn connect_and_remount(&self) -> crate::error::Result<()> {
        let _one_at_a_time = self.reconnecting.lock().await;
        let (address, view) = match self.leader_view().await {
            Some(view) => (view.address.clone(), Some(view.version)),
            None => (self.config.master_server_address.clone(), None),
        };
        let remote_address = self.local_master.is_none().then(|| address.clone());
        let master = match &self.local_master {
            Some(local) => MasterHandle::Local(local.clone()),
            None if self.leader.is_some() && view.is_none() => {
                return Err(Error::MasterUnreachable {
                    address,
                    source: mooncake_proto::codec::ConnectError::Timeout,
                });
            }
            None => {
                let connecting = connect_master(&address, &self.config.cluster_token);
                // A leader that stopped (not died) accepts TCP but never answers
                // the handshake: do not let it hold the session for long.
                let connected = match self.leader {
                    Some(_) => tokio::time::timeout(Duration::from_secs(2), connecting)
                        .await
                        .unwrap_or(Err(mooncake_proto::codec::ConnectError::Timeout)),
                    None => connecting.await,
                };
                MasterHandle::Remote(connected.map_err(|source| Error::MasterUnreachable {
                    address: address.clone(),
                    source,
                })?)
            }
        };
        *self.master.write() = Some(master);
        *self.master_address.lock() = remote_address;
        *self.connected_view.lock() = view;
        self.remount_now().await
    }

    /// With an `etcd://` master: the leader, waiting a little for one to appear.
    async fn leader_view(&self) -> Option<LeaderView> {
        let mut rx = self.leader.clone()?;
        let wait = rx.wait_for(|v| v.is_some());
        match tokio::time::timeout(Duration::from_secs(3), wait).await {
            Ok(Ok(view)) => view.clone(),
            _ => None,
        }
    }

    /// With an `etcd://` master: reconnects as soon as etcd shows a new leader,
    /// instead of waiting for pings to fail.
    pub(super) async fn follow_leader(self: Arc<Self>) {
        let Some(mut rx) = self.leader.clone() else {
            return;
        };
        while let Some(Ok(())) = self.shutdown.run_until_cancelled(rx.changed()).await {
            let Some(view) = rx.borrow_and_update().clone() else {
                continue;
            };
            if *self.connected_view.lock() == Some(view.version) {
                continue;
            }
            tracing::info!(
                view_version = view.version,
                "the master leader is now {}; reconnecting",
                view.address
            );
            self.healthy.store(false, Ordering::Relaxed);
            // The new leader writes the view before its RPC port is up: retry
            // briefly (the heartbeat keeps trying after that).
            for attempt in 0..30 {
                match self.connect_and_remount().await {
                    Ok(()) => break,
                    Err(e) if attempt == 29 => {
                        tracing::warn!("cannot reach the new leader yet: {e:#}")
                    }
                    Err(_) => {}
                }
                if rx.has_changed().unwrap_or(true)
                    || self
                        .shutdown
                        .run_until_cancelled(tokio::time::sleep(Duration::from_millis(50)))
                        .await
                        .is_none()
                {
                    break;
                }
            }
        }
    }

    pub(super) async fn remount(&self) -> crate::error::Result<()> {
        let _one_at_a_time = self.reconnecting.lock().await;
        self.remount_now().await
    }

    async fn remount_now(&self) -> crate::error::Result<()> {
        // Grants belong to the mount being replaced: nothing more is placed in
        // them, and the writes placed already are waited for. The master frees
        // what it still has of them when the remount arrives, so none is asked
        // for or used until the remount is over.
        self.begin_remount();
        let remounted = self.remount_granting_nothing().await;
        self.end_remount();
        if remounted.is_ok() {
            self.ask_for_space();
        }
        remounted
    }

    async fn remount_granting_nothing(&self) -> crate::error::Result<()> {
        // What the new mount holds is known once the master accepted it.
        self.exist_index.lock().clear();
        self.settle_own_writes().await;
        let master = self.master().map_err(|code| Error::MasterRefused {
            what: "a connection",
            code,
        })?;
        let mut segments: Vec<SegmentDesc> = self.segment().cloned().into_iter().collect();
        segments.extend(self.extra_segments.lock().iter().map(|e| e.desc.clone()));
        let mut entries = self.inventory.lock().entries();
        if let Some(disk) = &self.disk {
            segments.push(disk.desc.clone());
            entries.extend(disk.inventory.lock().entries());
        }
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
            let mut disk_inv = self.disk.as_ref().map(|d| (d.desc.id, d.inventory.lock()));
            for rejected in &report.rejected {
                match &mut disk_inv {
                    Some((id, disk_inv)) if *id == rejected.segment_id => {
                        disk_inv.remove(rejected.offset, rejected.version)
                    }
                    _ => inv.remove(rejected.offset, rejected.version),
                }
            }
            if let Some((_, disk_inv)) = &mut disk_inv {
                disk_inv.flush();
            }
            inv.flush();
            inv.seq = report.inventory_seq;
            if self.config.local_exist {
                let mut held = inv.entries();
                if let Some((_, disk_inv)) = &disk_inv {
                    held.extend(disk_inv.entries());
                }
                self.exist_index.lock().replace(&held);
            }
        }
        // A new master instance knows nothing of writes started with the last one:
        // those still in flight must not land on space it may hand out again.
        let previous = self.master_view.swap(report.master_view, Ordering::AcqRel);
        if report.master_view != previous
            && let Some(server) = &self.transfer_server
        {
            server.refuse_writes_below(report.version_floor);
        }
        self.persist();
        self.healthy.store(true, Ordering::Relaxed);
        self.master_generation.send_modify(|g| *g += 1);
        tracing::info!(
            restored = report.restored,
            rejected = report.rejected.len(),
            "mounted with the master at {}",
            self.config.master_server_address
        );
        Ok(())
    }

    /// Waits (up to [`SETTLE_WRITES`]) until no dummy is still copying into this
    /// client's own segments for a write started before the remount, and no
    /// replica copy into the own disk tier is under way. A master
    /// that rebuilds from the inventory does not know those writes: once the
    /// remount is in, it may hand their space to other objects, and a copy still
    /// running there would land on them. A dummy is done copying when its
    /// `put_end` / `put_complete` arrives (that call then fails if the master is
    /// a new one: it never knew the write).
    async fn settle_own_writes(&self) {
        let deadline = Instant::now() + SETTLE_WRITES;
        loop {
            let in_flight = {
                let own: Vec<SegmentId> = self
                    .segment()
                    .map(|d| d.id)
                    .into_iter()
                    .chain(self.extra_segments.lock().iter().map(|e| e.desc.id))
                    .collect();
                self.pending
                    .lock()
                    .values()
                    .filter(|w| !w.copied && w.replicas.iter().any(|r| own.contains(&r.segment_id)))
                    .count()
                    + self.local_copies()
            };
            if in_flight == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    in_flight,
                    "remounting with writes into this client's segment still unfinished after {SETTLE_WRITES:?}"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Arguments for [`Self::call_master`]: moved into the first call; kept for
    /// another only when calls can be made again (an `etcd://` master), so that a
    /// client of one master never copies them.
    pub(super) fn call_args<A: Clone>(&self, args: A) -> CallArgs<A> {
        CallArgs {
            kept: self.leader.as_ref().map(|_| args.clone()),
            first: Some(args),
        }
    }

    /// Calls the master. With an `etcd://` master, a call that failed because the
    /// leader went away (connection lost, or a master that is not serving) is made
    /// again once the next leader has this client's remount, until
    /// `master_failover_timeout`; only then does the caller see the error.
    pub(super) async fn call_master<T, F, Fut>(&self, call: F) -> MResult<T>
    where
        F: FnMut(MasterHandle) -> Fut,
        Fut: std::future::Future<Output = MResult<T>>,
    {
        self.call_master_with(call, |r| r.as_ref().err().copied())
            .await
    }

    /// [`Self::call_master`] for per-key answers: a batch every key of which a
    /// deposed or warming-up master refused counts as the leader gone.
    pub(super) async fn call_master_batch<T, F, Fut>(&self, call: F) -> MResult<Vec<MResult<T>>>
    where
        F: FnMut(MasterHandle) -> Fut,
        Fut: std::future::Future<Output = MResult<Vec<MResult<T>>>>,
    {
        self.call_master_with(call, |r| match r {
            Err(code) => Some(*code),
            Ok(list)
                if !list.is_empty()
                    && list
                        .iter()
                        .all(|x| matches!(x, Err(ErrorCode::UnavailableInCurrentStatus))) =>
            {
                Some(ErrorCode::UnavailableInCurrentStatus)
            }
            Ok(_) => None,
        })
        .await
    }

    async fn call_master_with<T, F, Fut>(
        &self,
        mut call: F,
        failure: impl Fn(&MResult<T>) -> Option<ErrorCode>,
    ) -> MResult<T>
    where
        F: FnMut(MasterHandle) -> Fut,
        Fut: std::future::Future<Output = MResult<T>>,
    {
        let connection_lost = |answer: &MResult<T>| {
            matches!(
                failure(answer),
                Some(ErrorCode::RpcFail | ErrorCode::RpcTimeout)
            )
        };
        if self.leader.is_none() {
            let answer = call(self.master()?).await;
            if connection_lost(&answer) {
                self.drop_thread_master();
            }
            return answer;
        }
        let deadline = tokio::time::Instant::now() + self.config.master_failover_timeout;
        loop {
            let generation = *self.master_generation.borrow();
            let own = self.thread_master().is_some();
            let answer = match self.master() {
                Ok(m) if self.healthy() => {
                    // A call to a leader that stopped answering is dropped once the
                    // next leader has this client: a deposed leader acknowledges
                    // nothing after its lease, so nothing is lost by not waiting.
                    let mut next = self.master_generation.subscribe();
                    tokio::select! {
                        answer = call(m) => answer,
                        _ = next.wait_for(|g| *g != generation) => Err(ErrorCode::RpcFail),
                    }
                }
                _ => Err(ErrorCode::RpcFail),
            };
            if own && connection_lost(&answer) {
                // This thread's own connection failed: the shared one, at once.
                self.drop_thread_master();
                continue;
            }
            let wait = match failure(&answer) {
                // A master that is not serving (warming up, or deposed and about
                // to be replaced): ask again shortly.
                Some(ErrorCode::UnavailableInCurrentStatus) => {
                    tokio::time::sleep_until(
                        (tokio::time::Instant::now() + Duration::from_millis(20)).min(deadline),
                    )
                    .await;
                    true
                }
                // The connection is gone: wait for the next session.
                Some(ErrorCode::RpcFail | ErrorCode::RpcTimeout) => {
                    let mut next = self.master_generation.subscribe();
                    let changed = next.wait_for(|g| *g != generation);
                    tokio::time::timeout_at(deadline, changed).await.is_ok()
                }
                _ => false,
            };
            if !wait || tokio::time::Instant::now() >= deadline {
                return answer;
            }
        }
    }

    /// With a disk tier, fetches replica tasks (the offload copies) every 50 ms
    /// instead of at each heartbeat, so copies keep up with a steady put load.
    pub(super) async fn poll_offloads(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while self
            .shutdown
            .run_until_cancelled(tick.tick())
            .await
            .is_some()
        {
            if self.healthy() && !self.running_replica_tasks.swap(true, Ordering::AcqRel) {
                self.clone().run_replica_tasks().await;
            }
        }
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
            self.flush_releases();
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
                self.spawn_task(self.clone().run_replica_tasks());
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
                    // With an etcd:// master this dials the leader etcd shows now
                    // (`follow_leader` usually got there first, at the change).
                    if let Err(e) = self.connect_and_remount().await {
                        tracing::debug!("master still unreachable: {e:#}");
                    }
                }
            }
            let now = Instant::now();
            let mut expired = Vec::new();
            self.pending.lock().retain(|_, w| {
                let keep = now.duration_since(w.started) < PENDING_WRITE_TTL;
                if !keep && let Some(placed) = &w.placed {
                    expired.extend(placed.ranges(w));
                }
                keep
            });
            self.give_back(expired);
        }
    }

    pub(super) async fn inventory_sync(self: Arc<Self>) {
        if self.segment.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_snapshot = Instant::now();
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
            self.report_touched();
            let ack = self.inventory.lock().seq;
            let generation = self.exist_index.lock().generation();
            let Ok(delta) = master.sync_inventory(self.client_id, ack).await else {
                continue;
            };
            // Each inventory takes the changes of its own segment.
            if delta.resync_required {
                if let Ok(snapshot) = master.fetch_inventory(self.client_id).await {
                    {
                        let mine = self.own_segment_ids();
                        let held: Vec<InventoryEntry> = snapshot
                            .entries
                            .iter()
                            .filter(|e| mine.contains(&e.segment_id))
                            .cloned()
                            .collect();
                        let mut index = self.exist_index.lock();
                        if index.generation() == generation {
                            index.replace(&held);
                        } else {
                            index.clear();
                        }
                    }
                    if let Some(disk) = &self.disk {
                        let mut disk_inv = disk.inventory.lock();
                        disk_inv.replace(snapshot.entries.clone());
                        disk_inv.flush();
                    }
                    let mut inv = self.inventory.lock();
                    inv.replace(snapshot.entries);
                    inv.flush();
                    inv.seq = snapshot.seq;
                }
            } else {
                {
                    // Only segments still mounted here: an object reported for
                    // one unmounted since left the pool with it.
                    let mine = self.own_segment_ids();
                    let mut index = self.exist_index.lock();
                    for change in &delta.changes {
                        if let InventoryChange::Added(e) = change
                            && !mine.contains(&e.segment_id)
                        {
                            continue;
                        }
                        index.apply(change, generation);
                    }
                }
                if let Some(disk) = &self.disk {
                    let mut disk_inv = disk.inventory.lock();
                    for change in &delta.changes {
                        disk_inv.apply(change.clone());
                    }
                    disk_inv.flush();
                }
                let mut inv = self.inventory.lock();
                for change in delta.changes {
                    inv.apply(change);
                }
                inv.flush();
                inv.seq = delta.seq;
            }
            // The journal has every change at once; the snapshot is rewritten
            // when the journal has grown (`Inventory::snapshot_due`).
            let dirty = {
                let mut inv = self.inventory.lock();
                inv.snapshot_due(last_snapshot.elapsed()) && inv.take_dirty()
            };
            if dirty {
                last_snapshot = Instant::now();
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.persist()).await;
            }
        }
    }
}

/// See [`RealClient::call_args`].
pub(super) struct CallArgs<A> {
    first: Option<A>,
    kept: Option<A>,
}

impl<A: Clone> CallArgs<A> {
    /// The arguments for one call.
    pub(super) fn take(&mut self) -> A {
        match self.first.take() {
            Some(a) => a,
            // Only a retry gets here, and retries happen only when `kept` is set.
            None => self.kept.clone().expect("arguments kept for a retry"),
        }
    }
}
