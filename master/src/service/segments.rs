//! Segments and client sessions: mount, unmount, remount with an inventory, ping, inventory sync.

use super::*;

impl MasterService {
    /// Adds a segment.
    pub fn mount_segment(&self, client: ClientId, desc: SegmentDesc) -> MResult<()> {
        if desc.size < GRANULE || desc.id.is_nil() {
            return Err(ErrorCode::InvalidParams);
        }
        let log = self.register_client(client, &desc.host);
        {
            let mut segs = self.segments.write();
            if let Some(existing) = segs.by_id(&desc.id) {
                return if existing.owner == client && existing.desc.size == desc.size {
                    *existing.route.write() = (desc.transport_endpoint.clone(), desc.base);
                    Ok(())
                } else {
                    Err(ErrorCode::SegmentAlreadyExists)
                };
            }
            let id = desc.id;
            let seg = segs.insert(
                desc.clone(),
                client,
                (RangeAllocator::new(desc.size), 0),
                log,
            );
            segs.activate(seg.slot);
            tracing::info!(segment = %id, name = %desc.name, size = desc.size, client = %client, "segment mounted");
        }
        if let Some(c) = self.clients.lock().get_mut(&client)
            && !c.segments.contains(&desc.id)
        {
            c.segments.push(desc.id);
        }
        self.free_epoch.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Removes a segment owned by `client`.
    pub fn unmount_segment(&self, client: ClientId, segment: SegmentId) -> MResult<()> {
        {
            let segs = self.segments.read();
            match segs.by_id(&segment) {
                None => return Err(ErrorCode::SegmentNotFound),
                Some(s) if s.owner != client => return Err(ErrorCode::IllegalClient),
                Some(_) => {}
            }
        }
        if let Some(c) = self.clients.lock().get_mut(&client) {
            c.segments.retain(|s| *s != segment);
        }
        self.drop_segment(&segment);
        Ok(())
    }

    /// Detaches a segment and drops every replica on it; objects left without
    /// replicas disappear. Returns the number of objects dropped.
    pub(super) fn drop_segment(&self, id: &SegmentId) -> u64 {
        let Some(seg) = self.segments.write().detach(id) else {
            return 0;
        };
        let slot = seg.slot;
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain(
                |_, o| {
                    o.replicas.drop_segment(slot);
                    o.replicas.as_slice().is_empty()
                },
                |_, _| dropped += 1,
            );
            for p in shard.processing.values_mut() {
                p.replicas.retain(|pl| pl.segment != slot);
            }
            for c in shard.copying.values_mut() {
                c.targets.retain(|pl| pl.segment != slot);
            }
        }
        self.deferred
            .lock()
            .retain(|d| d.slot != slot || d.segment_id != *id);
        self.replaced.lock().retain(|_, r| {
            r.frees.retain(|d| d.slot != slot || d.segment_id != *id);
            !r.frees.is_empty()
        });
        self.segments.write().release_slot(slot);
        tracing::info!(segment = %id, dropped, "segment unmounted");
        dropped
    }

    /// Re-registers a client's segments with the objects it holds.
    pub fn remount_segment(
        &self,
        client: ClientId,
        segments: Vec<SegmentDesc>,
        inventory: Vec<InventoryEntry>,
        complete: bool,
    ) -> MResult<RemountReport> {
        if segments.iter().any(|d| d.size < GRANULE || d.id.is_nil()) {
            return Err(ErrorCode::InvalidParams);
        }
        let host = segments.first().map(|d| d.host.clone()).unwrap_or_default();
        let log = self.register_client(client, &host);
        let Some(buffer) = self.buffer_remount(client, segments, inventory, complete)? else {
            return Ok(RemountReport::default());
        };
        let mut report = RemountReport {
            inventory_seq: log.lock().restart(),
            ..Default::default()
        };
        // The client forgot the space it was granted before it remounted.
        self.clear_grants_of(client);
        let fresh = self.segments_to_rebuild(client, &buffer.segments)?;
        // Segments this master still has for the client but the client no
        // longer presents (its disk file or a mounted file is gone since it
        // restarted) serve nothing any more: their replicas are dropped.
        let gone: Vec<SegmentId> = self
            .clients
            .lock()
            .get(&client)
            .map(|c| {
                c.segments
                    .iter()
                    .filter(|id| !buffer.segments.iter().any(|d| d.id == **id))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for id in gone {
            tracing::info!(%client, segment = %id, "a remount no longer presents this segment; unmounting it");
            let _ = self.unmount_segment(client, id);
        }
        let mut per_segment = self.sort_inventory(&buffer, &fresh, &mut report);
        let mut mounted: Vec<Arc<Segment>> = Vec::new();
        let mut max_version = 0;
        for d in fresh {
            let entries = per_segment.remove(&d.id).unwrap_or_default();
            let accepted = newest_without_overlaps(entries, d.medium, &mut report);
            max_version = accepted
                .iter()
                .map(|e| e.version)
                .fold(max_version, u64::max);
            let allocated: Vec<(u64, u64)> = accepted
                .iter()
                .map(|e| (e.offset, reserved_len(d.medium, e.size)))
                .collect();
            let allocator = RangeAllocator::with_allocated(d.size, &allocated);
            let seg = self.segments.write().insert(
                d.clone(),
                client,
                (allocator, allocated.len() as u64),
                log.clone(),
            );
            for e in accepted {
                if self.restore_object(seg.slot, &e) {
                    report.restored += 1;
                } else {
                    seg.free(e.offset, e.size);
                    report.rejected.push(e);
                }
            }
            mounted.push(seg);
        }
        self.last_version.fetch_max(max_version, Relaxed);
        report.master_view = self.view_version;
        report.version_floor = self.last_version.load(Relaxed).max(unix_micros());
        {
            let mut segs = self.segments.write();
            for seg in &mounted {
                segs.activate(seg.slot);
            }
        }
        if let Some(c) = self.clients.lock().get_mut(&client) {
            for d in &buffer.segments {
                if !c.segments.contains(&d.id) {
                    c.segments.push(d.id);
                }
            }
        }
        self.free_epoch.fetch_add(1, Relaxed);
        self.metrics
            .restored_objects
            .fetch_add(report.restored, Relaxed);
        tracing::info!(
            client = %client,
            segments = mounted.len(),
            restored = report.restored,
            rejected = report.rejected.len(),
            "client remounted"
        );
        Ok(report)
    }

    /// Adds one chunk of a remount to the client's buffer; the whole remount once
    /// the last chunk (`complete`) arrived.
    fn buffer_remount(
        &self,
        client: ClientId,
        segments: Vec<SegmentDesc>,
        inventory: Vec<InventoryEntry>,
        complete: bool,
    ) -> MResult<Option<RestoreBuffer>> {
        let mut clients = self.clients.lock();
        let entry = clients.get_mut(&client).ok_or(ErrorCode::ClientNotFound)?;
        let buf = entry.restore.get_or_insert_with(RestoreBuffer::default);
        if buf.entries.len() + inventory.len() > MAX_REMOUNT_ENTRIES {
            entry.restore = None;
            return Err(ErrorCode::InvalidParams);
        }
        for d in segments {
            if !buf.segments.iter().any(|s| s.id == d.id) {
                buf.segments.push(d);
            }
        }
        buf.entries.extend(inventory);
        Ok(if complete { entry.restore.take() } else { None })
    }

    /// The segments to rebuild from the inventory: those this master does not
    /// have. Segments it still has keep its state (their route is refreshed); one
    /// owned by another client cannot be claimed.
    fn segments_to_rebuild(
        &self,
        client: ClientId,
        segments: &[SegmentDesc],
    ) -> MResult<Vec<SegmentDesc>> {
        let segs = self.segments.read();
        let mut fresh = Vec::new();
        for d in segments {
            match segs.by_id(&d.id) {
                Some(s) if s.owner != client => return Err(ErrorCode::SegmentAlreadyExists),
                Some(s) => *s.route.write() = (d.transport_endpoint.clone(), d.base),
                None => fresh.push(d.clone()),
            }
        }
        Ok(fresh)
    }

    /// Valid inventory entries of the segments to rebuild, by segment; entries of
    /// unknown segments and invalid ones (bad key, range outside the segment,
    /// misaligned, a version from the future) go to the report's rejected list.
    /// Entries of segments the master still has are ignored: its metadata is newer.
    fn sort_inventory(
        &self,
        buffer: &RestoreBuffer,
        fresh: &[SegmentDesc],
        report: &mut RemountReport,
    ) -> HashMap<SegmentId, Vec<InventoryEntry>> {
        let known: HashSet<SegmentId> = buffer.segments.iter().map(|d| d.id).collect();
        let mut per_segment: HashMap<SegmentId, Vec<InventoryEntry>> = HashMap::new();
        for e in &buffer.entries {
            if !known.contains(&e.segment_id) {
                report.rejected.push(e.clone());
                continue;
            }
            let Some(d) = fresh.iter().find(|d| d.id == e.segment_id) else {
                continue;
            };
            let valid = self.validate_key(&e.key).is_ok()
                && e.version <= unix_micros() + MAX_VERSION_SKEW_US
                && e.size > 0
                && e.offset % GRANULE == 0
                && (d.medium == Medium::Memory || e.offset.is_multiple_of(DISK_BLOCK))
                && e.offset
                    .checked_add(reserved_len(d.medium, e.size))
                    .is_some_and(|end| end <= d.size);
            if valid {
                per_segment.entry(e.segment_id).or_default().push(e.clone());
            } else {
                report.rejected.push(e.clone());
            }
        }
        per_segment
    }

    /// Makes an inventory entry (space already allocated in segment `slot`) an
    /// object again, unless the master has something better: a new key, another
    /// replica of the same version, or a newer copy of a value itself restored.
    /// A value written through this master is never replaced by an inventory.
    fn restore_object(&self, slot: u32, e: &InventoryEntry) -> bool {
        let now = self.now_ms();
        let hash = self.hash(&e.key);
        let mut shard = self.shard(hash).lock();
        let placement = Placement {
            offset: e.offset,
            segment: slot,
        };
        let restored = || Object {
            size: e.size,
            version: e.version,
            lease_until: 0,
            last_access: now,
            replicas: Replicas::One(placement),
            soft_pin_until_s: 0,
            flags: FLAG_RESTORED,
            // Readers of the previous master incarnation may still release
            // grants: their count is not known here.
            readers: READERS_UNKNOWN,
        };
        match shard.get_mut(hash, &e.key) {
            None => {
                shard.insert(hash, &e.key, restored(), &|k: &str| self.hasher.hash_one(k));
                true
            }
            Some(o) if o.version == e.version && o.size == e.size => {
                if !o.replicas.as_slice().iter().any(|p| p.segment == slot) {
                    o.replicas.push(placement);
                }
                true
            }
            Some(o) if e.version > o.version && o.flags & FLAG_RESTORED != 0 => {
                let old = std::mem::replace(o, restored());
                self.release_replaced(&self.segments.read(), &old, now);
                true
            }
            Some(_) => false,
        }
    }

    /// A real client's count of dummies (see [`Gauges::connected_dummies`]); an
    /// unknown client is not an error: it remounts at its next ping.
    pub fn report_load(&self, client: ClientId, dummies: u64) {
        if let Some(c) = self.clients.lock().get_mut(&client) {
            c.dummies = dummies;
        }
    }

    /// Remounts whose inventory is still arriving: `(client, host, objects so far)`.
    pub fn remounts_in_progress(&self) -> Vec<(ClientId, String, usize)> {
        self.clients
            .lock()
            .iter()
            .filter_map(|(id, c)| {
                c.restore
                    .as_ref()
                    .map(|r| (*id, c.host.clone(), r.entries.len()))
            })
            .collect()
    }

    /// Heartbeat.
    pub fn ping(&self, client: ClientId) -> PingResponse {
        let now = self.now_ms();
        let status = match self.clients.lock().get_mut(&client) {
            Some(c) => {
                c.last_seen = now;
                ClientStatus::Ok
            }
            None => ClientStatus::NeedRemount,
        };
        PingResponse {
            view_version: self.view_version,
            status,
            pending_tasks: self.tasks.lock().pending_for(&client) as u32,
        }
    }

    /// Changes to the client's inventory after `ack`.
    pub fn sync_inventory(&self, client: ClientId, ack: u64) -> MResult<InventoryDelta> {
        let log = self
            .clients
            .lock()
            .get(&client)
            .map(|c| c.log.clone())
            .ok_or(ErrorCode::ClientNotFound)?;
        let delta = log.lock().sync(ack);
        Ok(delta)
    }

    /// Every complete object in the client's segments; restarts its change log.
    pub fn fetch_inventory(&self, client: ClientId) -> MResult<InventorySnapshot> {
        let (log, ids) = self
            .clients
            .lock()
            .get(&client)
            .map(|c| (c.log.clone(), c.segments.clone()))
            .ok_or(ErrorCode::ClientNotFound)?;
        let seq = log.lock().restart();
        let mut entries = Vec::new();
        let slots: HashMap<u32, SegmentId> = {
            let segs = self.segments.read();
            ids.iter()
                .filter_map(|id| segs.by_id(id).map(|s| (s.slot, *id)))
                .collect()
        };
        for shard in self.shards.iter() {
            shard.lock().for_each(|k, o| {
                for p in o.replicas.as_slice() {
                    if let Some(id) = slots.get(&p.segment) {
                        entries.push(InventoryEntry {
                            segment_id: *id,
                            key: k.to_string(),
                            offset: p.offset,
                            size: o.size,
                            version: o.version,
                        });
                    }
                }
            });
        }
        Ok(InventorySnapshot { seq, entries })
    }

    /// Every mounted segment.
    pub fn all_segments(&self) -> Vec<SegmentDesc> {
        self.segments
            .read()
            .iter()
            .map(|s| s.current_desc())
            .collect()
    }

    /// Per-segment descriptor, usage, owning client and whether it takes new
    /// objects (not when drained): `(desc, used bytes, owner, serving)`.
    pub fn segment_details(&self) -> Vec<(SegmentDesc, u64, ClientId, bool)> {
        let table = self.segments.read();
        let active = table.active_slots();
        table
            .iter()
            .map(|s| {
                (
                    s.current_desc(),
                    s.used.load(Relaxed),
                    s.owner,
                    active.contains(&s.slot),
                )
            })
            .collect()
    }

    /// Per-segment capacity and usage: `(desc, used bytes)`.
    pub fn segment_usage(&self) -> Vec<(SegmentDesc, u64)> {
        self.segments
            .read()
            .iter()
            .map(|s| (s.current_desc(), s.used.load(Relaxed)))
            .collect()
    }
}

/// The newest version wins, per key and per byte range: the entries kept, in
/// newest-first order; the others go to the report's rejected list.
fn newest_without_overlaps(
    mut entries: Vec<InventoryEntry>,
    medium: Medium,
    report: &mut RemountReport,
) -> Vec<InventoryEntry> {
    entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.version));
    let mut seen_keys: HashSet<String> = HashSet::new();
    let mut ranges: BTreeMap<u64, u64> = BTreeMap::new();
    let mut accepted = Vec::new();
    for e in entries {
        let end = e.offset + reserved_len(medium, e.size);
        let overlaps_before = ranges
            .range(..end)
            .next_back()
            .is_some_and(|(_, &pend)| pend > e.offset);
        if overlaps_before || seen_keys.contains(&e.key) {
            report.rejected.push(e);
            continue;
        }
        ranges.insert(e.offset, end);
        seen_keys.insert(e.key.clone());
        accepted.push(e);
    }
    accepted
}
