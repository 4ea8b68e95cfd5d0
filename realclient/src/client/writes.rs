//! Writes for dummies: start (with upsert waiting), end, complete with remote replicas, revoke, and revoking a dead session's writes.

use super::*;

impl RealClient {
    /// Starts writes for a dummy; local segment first unless the config says otherwise.
    /// An upsert of a key another write is still writing waits for that write to
    /// end (up to [`UPSERT_WAIT`]), so concurrent upserts each succeed, the last
    /// one's value winning. `owner` is the IPC session starting the writes.
    pub async fn put_start(
        &self,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
        upsert: bool,
        owner: u64,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        self.put_start_with(keys, sizes, config, upsert, owner, true)
            .await
    }

    /// [`Self::put_start`]; `place = false` keeps every write two-phase (a put
    /// session, which must hear of an existing key at its start).
    pub async fn put_start_with(
        &self,
        keys: Vec<String>,
        sizes: Vec<u64>,
        mut config: ReplicateConfig,
        upsert: bool,
        owner: u64,
        place: bool,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        if config.preferred_segments.is_empty() && self.segment.is_some() {
            config.preferred_segments = vec![self.hostname()];
        }
        let placed = if place {
            self.place_writes(&keys, &sizes, &config, upsert, owner)
        } else {
            vec![None; keys.len()]
        };
        if placed.iter().all(Option::is_some) {
            return placed.into_iter().map(|p| p.expect("placed")).collect();
        }
        if placed.iter().any(Option::is_some) {
            let rest: Vec<usize> = (0..keys.len()).filter(|&i| placed[i].is_none()).collect();
            let started = Box::pin(self.put_start_with_master(
                rest.iter().map(|&i| keys[i].clone()).collect(),
                rest.iter().map(|&i| sizes[i]).collect(),
                config,
                upsert,
                owner,
            ))
            .await;
            let mut placed = placed;
            for (i, r) in rest.into_iter().zip(started) {
                placed[i] = Some(r);
            }
            return placed.into_iter().map(|p| p.expect("answered")).collect();
        }
        self.put_start_with_master(keys, sizes, config, upsert, owner)
            .await
    }

    /// [`Self::put_start`] of writes the master places.
    async fn put_start_with_master(
        &self,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: ReplicateConfig,
        upsert: bool,
        owner: u64,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        let mut results = self
            .start_writes(keys.clone(), sizes.clone(), &config, upsert)
            .await;
        self.claim_started(&keys, &mut results, owner).await;
        if upsert {
            let give_up = Instant::now() + UPSERT_WAIT;
            let mut pause = Duration::from_micros(200);
            loop {
                let busy: Vec<usize> = (0..keys.len())
                    .filter(|&i| results[i] == Err(ErrorCode::ObjectAlreadyExists))
                    .collect();
                if busy.is_empty() || Instant::now() >= give_up {
                    break;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
                let busy_keys: Vec<String> = busy.iter().map(|&i| keys[i].clone()).collect();
                let mut retried = self
                    .start_writes(
                        busy_keys.clone(),
                        busy.iter().map(|&i| sizes[i]).collect(),
                        &config,
                        true,
                    )
                    .await;
                self.claim_started(&busy_keys, &mut retried, owner).await;
                for (i, r) in busy.into_iter().zip(retried) {
                    results[i] = r;
                }
            }
        }
        results
    }

    /// Records the writes the master started as pending. A key this client is
    /// meanwhile writing into granted space (which the master does not know of
    /// yet) is not taken from that write: the master's write is revoked and the
    /// key answers `OBJECT_ALREADY_EXISTS`, as the master would have.
    async fn claim_started(
        &self,
        keys: &[String],
        results: &mut [MResult<Vec<ReplicaDesc>>],
        owner: u64,
    ) {
        let mut clashes = Vec::new();
        {
            let now = Instant::now();
            let mut pending = self.pending.lock();
            for (i, (k, r)) in keys.iter().zip(results.iter()).enumerate() {
                let Ok(descs) = r else { continue };
                if pending.get(k).is_some_and(|w| w.placed.is_some()) {
                    clashes.push(i);
                    continue;
                }
                pending.insert(
                    k.clone(),
                    PendingWrite {
                        started: now,
                        owner,
                        version: descs.first().map_or(0, |d| d.version),
                        replicas: descs.clone(),
                        ranged_failures: None,
                        copied: false,
                        placed: None,
                    },
                );
            }
        }
        if clashes.is_empty() {
            return;
        }
        let revoke: Vec<String> = clashes.iter().map(|&i| keys[i].clone()).collect();
        if let Ok(m) = self.master() {
            let _ = m.batch_put_revoke(self.client_id, revoke).await;
        }
        for i in clashes {
            results[i] = Err(ErrorCode::ObjectAlreadyExists);
        }
    }

    pub(super) async fn start_writes(
        &self,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        let n = keys.len();
        let mut args = self.call_args((keys, sizes));
        let call = |master: MasterHandle| {
            let ((keys, sizes), config) = (args.take(), config.clone());
            async move {
                if upsert {
                    master
                        .batch_upsert_start(self.client_id, keys, sizes, config)
                        .await
                } else {
                    master
                        .batch_put_start(self.client_id, keys, sizes, config)
                        .await
                }
            }
        };
        per_key(n, self.call_master_batch(call).await)
    }

    /// The versions of the pending writes of `keys` (0 when there is none), which
    /// the caller is done copying.
    pub(super) fn pending_versions(&self, keys: impl Iterator<Item = impl AsRef<str>>) -> Vec<u64> {
        let mut pending = self.pending.lock();
        keys.map(|k| {
            pending.get_mut(k.as_ref()).map_or(0, |w| {
                w.copied = true;
                w.version
            })
        })
        .collect()
    }

    /// Takes the pending write of `key` if it is still the one of `version` (a
    /// later write of the key may have started once this one ended).
    pub(super) fn take_pending(
        pending: &mut PendingTable,
        key: &str,
        version: u64,
    ) -> Option<PendingWrite> {
        if pending.get(key)?.version == version {
            pending.remove(key)
        } else {
            None
        }
    }

    /// Revokes the writes an IPC session started and did not finish: its dummy
    /// died or disconnected, so nobody will end them, and the keys must not stay
    /// blocked until the master's discard timeout.
    pub async fn revoke_writes_of(&self, owner: u64) {
        if owner == 0 {
            return;
        }
        let (keys, placed) = {
            let mut pending = self.pending.lock();
            let keys: Vec<String> = pending
                .iter()
                .filter(|(_, w)| w.owner == owner)
                .map(|(k, _)| k.clone())
                .collect();
            let mut placed = Vec::new();
            let mut with_master = Vec::new();
            for k in keys {
                let w = pending.remove(&k).expect("listed");
                if w.placed.is_some() {
                    placed.push(w);
                } else {
                    with_master.push(k);
                }
            }
            (with_master, placed)
        };
        self.forget_placed(placed);
        if keys.is_empty() {
            return;
        }
        let n = keys.len();
        let results = match self.master() {
            Ok(m) => per_key(n, m.batch_put_revoke(self.client_id, keys).await),
            Err(e) => vec![Err(e); n],
        };
        let revoked = results.iter().filter(|r| r.is_ok()).count();
        tracing::info!(
            session = owner,
            revoked,
            unfinished = n,
            "revoked the unfinished writes of a dummy that went away"
        );
    }

    /// Ends writes; records local replicas in the inventory at once.
    pub async fn put_end(&self, keys: Vec<String>) -> Vec<MResult<()>> {
        let placed = self.take_placed(keys.iter());
        if placed.is_empty() {
            return self.put_end_with_master(keys).await;
        }
        let mut results: Vec<MResult<()>> = vec![Ok(()); keys.len()];
        let others = grants::unplaced(keys.len(), &placed);
        let positions: Vec<usize> = placed.iter().map(|p| p.0).collect();
        let committed = self
            .commit_placed(placed.into_iter().map(|(_, k, w)| (k, w, false)).collect())
            .await;
        for (i, r) in positions.into_iter().zip(committed) {
            results[i] = r;
        }
        if !others.is_empty() {
            let ended = self
                .put_end_with_master(others.iter().map(|&i| keys[i].clone()).collect())
                .await;
            for (i, r) in others.into_iter().zip(ended) {
                results[i] = r;
            }
        }
        results
    }

    /// [`Self::put_end`] of writes the master placed.
    async fn put_end_with_master(&self, keys: Vec<String>) -> Vec<MResult<()>> {
        let versions = self.pending_versions(keys.iter());
        let call = |m: MasterHandle| {
            let keys = keys.clone();
            async move { m.batch_put_end(self.client_id, keys).await }
        };
        let results = per_key(keys.len(), self.call_master_batch(call).await);
        let own = self.segment().map(|d| d.id);
        let mut done = Vec::new();
        let mut pending = self.pending.lock();
        let mut inv = self.inventory.lock();
        for ((k, r), version) in keys.iter().zip(&results).zip(versions) {
            let Some(PendingWrite {
                replicas: descs, ..
            }) = Self::take_pending(&mut pending, k, version)
            else {
                continue;
            };
            if r.is_ok() {
                for d in descs {
                    let entry = InventoryEntry {
                        segment_id: d.segment_id,
                        key: k.clone(),
                        offset: d.offset,
                        size: d.size,
                        version: d.version,
                    };
                    if Some(d.segment_id) == own {
                        done.push(entry.clone());
                    }
                    inv.add(entry);
                }
            }
        }
        // In the journal before the caller hears success.
        inv.flush();
        drop((inv, pending));
        self.confirmed(&done);
        results
    }

    /// A whole write in one call (see `RealClientService::put_direct`): start,
    /// the copy into this client's segment from the caller's registered memory,
    /// then [`Self::put_complete`] for the replicas elsewhere and the end.
    pub async fn put_direct(
        &self,
        items: Vec<(String, Vec<BufRef>)>,
        config: ReplicateConfig,
        upsert: bool,
        owner: u64,
        memory: Option<&dyn CallerMemory>,
    ) -> Vec<MResult<()>> {
        let mut results: Vec<MResult<()>> = vec![Ok(()); items.len()];
        // Memory that is not registered fails its item before anything starts.
        let mut valid: Vec<DirectItem> = Vec::new();
        for (i, (key, bufs)) in items.into_iter().enumerate() {
            let size: u64 = bufs.iter().map(|b| b.len).sum();
            match translate_all(memory, &bufs, size) {
                Ok(spans) if size > 0 => valid.push(DirectItem {
                    position: i,
                    key,
                    bufs,
                    spans,
                    size,
                }),
                Ok(_) => results[i] = Err(ErrorCode::InvalidParams),
                Err(code) => results[i] = Err(code),
            }
        }
        if valid.is_empty() {
            return results;
        }
        let keys: Vec<String> = valid.iter().map(|v| v.key.clone()).collect();
        let sizes: Vec<u64> = valid.iter().map(|v| v.size).collect();
        let started = self.put_start(keys, sizes, config, upsert, owner).await;
        let own = self
            .segment
            .as_ref()
            .map(|(region, d)| (region.clone(), d.id));
        let mut completions: Vec<PutCompletion> = Vec::new();
        let mut positions: Vec<usize> = Vec::new();
        for (started, item) in started.into_iter().zip(valid) {
            let DirectItem {
                position: i,
                key,
                bufs,
                spans,
                ..
            } = item;
            let replicas = match started {
                // A plain put of an existing key keeps the old value and succeeds.
                Err(ErrorCode::ObjectAlreadyExists) if !upsert => continue,
                Err(e) => {
                    results[i] = Err(e);
                    continue;
                }
                Ok(r) => r,
            };
            let mut local_failed = false;
            let mut remote = false;
            for r in &replicas {
                match &own {
                    Some((segment, id)) if r.segment_id == *id => {
                        if let Err(e) = copy_into_segment(&spans, segment, r.offset) {
                            tracing::warn!(%key, "local replica copy failed: {e}");
                            local_failed = true;
                        }
                    }
                    _ => remote = true,
                }
            }
            completions.push(PutCompletion {
                key,
                local_failed,
                sources: if remote { bufs } else { Vec::new() },
            });
            positions.push(i);
        }
        if !completions.is_empty() {
            let ended = self.put_complete(completions, memory).await;
            for (i, r) in positions.into_iter().zip(ended) {
                results[i] = r;
            }
        }
        results
    }

    /// Finishes writes for a dummy: sends each value from the dummy's registered
    /// buffers to the replicas on other hosts, then ends the batch with the master,
    /// dropping replicas that failed. A key fails only when every replica failed.
    pub async fn put_complete(
        &self,
        items: Vec<PutCompletion>,
        memory: Option<&dyn CallerMemory>,
    ) -> Vec<MResult<()>> {
        let placed = self.take_placed(items.iter().map(|it| &it.key));
        if placed.is_empty() {
            return self.put_complete_with_master(items, memory).await;
        }
        let mut results: Vec<MResult<()>> = vec![Ok(()); items.len()];
        let is_placed = grants::placed_mask(items.len(), &placed);
        let positions: Vec<usize> = placed.iter().map(|p| p.0).collect();
        let writes = placed
            .into_iter()
            .map(|(i, k, w)| (k, w, items[i].local_failed))
            .collect();
        let committed = self.commit_placed(writes).await;
        for (&i, r) in positions.iter().zip(committed) {
            results[i] = r;
        }
        let (others, rest): (Vec<usize>, Vec<PutCompletion>) = items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !is_placed[*i])
            .unzip();
        if !rest.is_empty() {
            let ended = Box::pin(self.put_complete_with_master(rest, memory)).await;
            for (i, r) in others.into_iter().zip(ended) {
                results[i] = r;
            }
        }
        results
    }

    /// [`Self::put_complete`] of writes the master placed.
    async fn put_complete_with_master(
        &self,
        items: Vec<PutCompletion>,
        memory: Option<&dyn CallerMemory>,
    ) -> Vec<MResult<()>> {
        let own = self.segment().map(|d| d.id);
        let mut failed: Vec<Vec<SegmentId>> = vec![Vec::new(); items.len()];
        let mut overrides: Vec<Option<ErrorCode>> = vec![None; items.len()];
        let mut replicas: Vec<Vec<ReplicaDesc>> = Vec::with_capacity(items.len());
        // Per item: the remote replicas were already written by `transfer_ranges`.
        let mut ranged: Vec<bool> = Vec::with_capacity(items.len());
        let mut versions: Vec<u64> = Vec::with_capacity(items.len());
        {
            let mut pending = self.pending.lock();
            for (i, item) in items.iter().enumerate() {
                if let Some(w) = pending.get_mut(&item.key) {
                    w.copied = true;
                }
                let w = pending.get(&item.key);
                versions.push(w.map_or(0, |w| w.version));
                replicas.push(w.map(|w| w.replicas.clone()).unwrap_or_default());
                let done = match w.and_then(|w| w.ranged_failures.as_ref()) {
                    Some(fails) if item.sources.is_empty() => {
                        failed[i].extend(fails.iter().copied());
                        true
                    }
                    _ => false,
                };
                ranged.push(done);
            }
        }
        // Jobs, and for each the (item, replica segment) it belongs to.
        let mut jobs: Vec<TransferJob> = Vec::new();
        let mut owners: Vec<(usize, SegmentId)> = Vec::new();
        let mut held: Vec<HeldSpan> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            for r in &replicas[i] {
                if Some(r.segment_id) == own {
                    if item.local_failed {
                        failed[i].push(r.segment_id);
                    }
                    continue;
                }
                if ranged[i] {
                    continue;
                }
                let spans = match translate_all(memory, &item.sources, r.size) {
                    Ok(spans) => spans,
                    Err(code) => {
                        failed[i].push(r.segment_id);
                        overrides[i] = Some(code);
                        continue;
                    }
                };
                for job in replica_jobs(Direction::Write, r, &spans) {
                    jobs.push(job);
                    owners.push((i, r.segment_id));
                }
                held.extend(spans);
            }
        }
        // One remote replica in one piece (a small put to another host): its
        // landed note goes right behind the bytes, one round trip instead of two.
        let mut told: Vec<(usize, SegmentId)> = Vec::new();
        if let ([job], [(i, seg)]) = (jobs.as_slice(), owners.as_slice())
            && let Some(r) = replicas[*i].iter().find(|r| r.segment_id == *seg)
        {
            let (i, seg, job) = (*i, *seg, job.clone());
            let landed = Landed {
                offset: r.offset,
                size: r.size,
                version: r.version,
                key: items[i].key.clone(),
            };
            let transport = self.transport.clone();
            let deadline = Instant::now() + self.config.transfer_timeout;
            let (written, noted) = thread_master::run_blocking(move || {
                transport.write_and_note(&job, &[landed], deadline)
            })
            .await
            .unwrap_or((Err(ErrorCode::InternalError), Err(ErrorCode::InternalError)));
            match (written, noted) {
                (Ok(()), Ok(())) => {
                    self.metrics.add_transfer_bytes(0, r.size);
                    told.push((i, seg));
                }
                (Ok(()), Err(e)) => {
                    tracing::warn!(key = %items[i].key, segment = %seg, "the owner was not told of the object written ({e}); counting it as failed");
                    failed[i].push(seg);
                }
                (Err(e), _) => {
                    tracing::warn!(key = %items[i].key, segment = %seg, "replica write failed: {e}");
                    failed[i].push(seg);
                }
            }
            jobs.clear();
        }
        if !jobs.is_empty() {
            let deadline = Instant::now() + self.config.transfer_timeout;
            let results = self.transfer(jobs, deadline).await;
            let bytes: u64 = results.iter().filter(|r| r.0.is_ok()).map(|r| r.1).sum();
            self.metrics.add_transfer_bytes(0, bytes);
            for ((result, _), (i, seg)) in results.into_iter().zip(owners) {
                if let Err(e) = result
                    && !failed[i].contains(&seg)
                {
                    tracing::warn!(key = %items[i].key, segment = %seg, "replica write failed: {e}");
                    failed[i].push(seg);
                }
            }
        }
        drop(held);
        let keys: Vec<String> = items.iter().map(|it| it.key.clone()).collect();
        self.tell_owners(&keys, &replicas, &mut failed, &told, None)
            .await;
        let call = |m: MasterHandle| {
            let (keys, failed) = (keys.clone(), failed.clone());
            async move { m.batch_put_end_except(self.client_id, keys, failed).await }
        };
        let mut results = per_key(keys.len(), self.call_master_batch(call).await);
        let mut done = Vec::new();
        let mut pending = self.pending.lock();
        let mut inv = self.inventory.lock();
        for (i, k) in keys.iter().enumerate() {
            let descs = Self::take_pending(&mut pending, k, versions[i])
                .map(|w| w.replicas)
                .unwrap_or_default();
            if results[i].is_ok() {
                for d in descs {
                    if Some(d.segment_id) == own && !failed[i].contains(&d.segment_id) {
                        let entry = InventoryEntry {
                            segment_id: d.segment_id,
                            key: k.clone(),
                            offset: d.offset,
                            size: d.size,
                            version: d.version,
                        };
                        done.push(entry.clone());
                        inv.add(entry);
                    }
                }
            } else if let Some(code) = overrides[i] {
                results[i] = Err(code);
            }
        }
        // In the journal before the caller hears success.
        inv.flush();
        drop((inv, pending));
        self.confirmed(&done);
        results
    }

    /// Tells the owner of every remote replica written which objects landed in
    /// its segment, before the master hears that the writes ended: the owner's
    /// inventory then has every acknowledged object, and a new master rebuilds it
    /// whatever happened to the old one. A replica whose owner could not be told
    /// counts as failed.
    ///
    /// Each note carries the version its writes carried (`write_version` for a
    /// copy; for puts, the oldest write version among its objects), so that an
    /// owner remounted with a later master since refuses it as it refuses the
    /// writes: recorded, it would list an object in space that master may have
    /// handed to another.
    pub(super) async fn tell_owners(
        &self,
        keys: &[String],
        replicas: &[Vec<ReplicaDesc>],
        failed: &mut [Vec<SegmentId>],
        told: &[(usize, SegmentId)],
        write_version: Option<u64>,
    ) {
        let own = self.segment().map(|d| d.id);
        // Per owner (endpoint, segment): the items written there and their notes.
        type Notes = (Vec<usize>, Vec<Landed>);
        let mut groups: HashMap<(String, SegmentId), Notes> = HashMap::new();
        for (i, list) in replicas.iter().enumerate() {
            for r in list {
                if Some(r.segment_id) == own
                    || failed[i].contains(&r.segment_id)
                    || told.contains(&(i, r.segment_id))
                {
                    continue;
                }
                let group = groups
                    .entry((r.transport_endpoint.clone(), r.segment_id))
                    .or_default();
                group.0.push(i);
                group.1.push(Landed {
                    offset: r.offset,
                    size: r.size,
                    version: r.version,
                    key: keys[i].clone(),
                });
            }
        }
        if groups.is_empty() {
            return;
        }
        let groups: Vec<((String, SegmentId), Notes)> = groups.into_iter().collect();
        let targets: Vec<(SegmentId, Vec<usize>)> = groups
            .iter()
            .map(|((_, seg), (items, _))| (*seg, items.clone()))
            .collect();
        let transport = self.transport.clone();
        let deadline = Instant::now() + self.config.transfer_timeout;
        let n = groups.len();
        let outcomes = thread_master::run_blocking(move || {
            groups
                .iter()
                .map(|((endpoint, seg), (_, objects))| {
                    let stamp = write_version
                        .unwrap_or_else(|| objects.iter().map(|o| o.version).min().unwrap_or(0));
                    transport.note_landed(endpoint, *seg, objects, stamp, deadline)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|| vec![Err(ErrorCode::InternalError); n]);
        for ((seg, items), outcome) in targets.into_iter().zip(outcomes) {
            if let Err(e) = outcome {
                tracing::warn!(segment = %seg, "the owner was not told of {} objects written ({e}); counting them as failed", items.len());
                for i in items {
                    if !failed[i].contains(&seg) {
                        failed[i].push(seg);
                    }
                }
            }
        }
    }

    /// Revokes writes.
    pub async fn put_revoke(&self, keys: Vec<String>) -> Vec<MResult<()>> {
        let placed = self.take_placed(keys.iter());
        if !placed.is_empty() {
            // The master never heard of these: their space just goes back.
            let others = grants::unplaced(keys.len(), &placed);
            self.forget_placed(placed.into_iter().map(|p| p.2));
            let mut results: Vec<MResult<()>> = vec![Ok(()); keys.len()];
            if !others.is_empty() {
                let revoked =
                    Box::pin(self.put_revoke(others.iter().map(|&i| keys[i].clone()).collect()))
                        .await;
                for (i, r) in others.into_iter().zip(revoked) {
                    results[i] = r;
                }
            }
            return results;
        }
        {
            let mut pending = self.pending.lock();
            for k in &keys {
                pending.remove(k);
            }
        }
        let call = |m: MasterHandle| {
            let keys = keys.clone();
            async move { m.batch_put_revoke(self.client_id, keys).await }
        };
        per_key(keys.len(), self.call_master_batch(call).await)
    }
}

/// One item of a `put_direct` whose memory resolved.
struct DirectItem {
    /// Its place in the call.
    position: usize,
    key: String,
    bufs: Vec<BufRef>,
    /// `bufs` mapped in this process.
    spans: Vec<HeldSpan>,
    size: u64,
}

/// Copies a value held in caller memory `spans` (in order) into `segment` at
/// `offset`.
fn copy_into_segment(spans: &[HeldSpan], segment: &Region, offset: u64) -> MResult<()> {
    let mut at = offset;
    for held in spans {
        let span = held.span();
        span.memory
            .copy_to_segment(span.offset, segment, at, span.len)
            .map_err(|_| ErrorCode::InvalidParams)?;
        at += span.len;
    }
    Ok(())
}
