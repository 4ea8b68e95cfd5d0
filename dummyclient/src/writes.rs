//! Writes: put / upsert from bytes, parts or registered memory; one path (`put_core`) for all.

use super::*;

impl DummyClient {
    /// Puts one object (a copy of `value`).
    pub fn put(&self, key: &str, value: &[u8], config: &ReplicateConfig) -> MResult<()> {
        self.batch_put(&[(key, value)], config, false).remove(0)
    }

    /// Puts the concatenation of `parts` as one object.
    pub fn put_parts(&self, key: &str, parts: &[&[u8]], config: &ReplicateConfig) -> MResult<()> {
        self.parts_core(key, parts, config, false)
    }

    /// Puts or replaces the concatenation of `parts` as one object.
    pub fn upsert_parts(
        &self,
        key: &str,
        parts: &[&[u8]],
        config: &ReplicateConfig,
    ) -> MResult<()> {
        self.parts_core(key, parts, config, true)
    }

    pub(super) fn parts_core(
        &self,
        key: &str,
        parts: &[&[u8]],
        config: &ReplicateConfig,
        upsert: bool,
    ) -> MResult<()> {
        let src = vec![Some(Src::Bytes(parts.to_vec()))];
        self.put_core(&[key.to_string()], src, config, upsert)
            .remove(0)
    }

    /// Puts objects from byte slices. `upsert` replaces existing values; a plain
    /// put of an existing key succeeds and keeps the old value.
    pub fn batch_put(
        &self,
        objects: &[(&str, &[u8])],
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>> {
        let keys: Vec<String> = objects.iter().map(|(k, _)| k.to_string()).collect();
        let srcs = objects
            .iter()
            .map(|(_, v)| Some(Src::Bytes(vec![*v])))
            .collect();
        self.put_core(&keys, srcs, config, upsert)
    }

    /// Zero-copy put of `size` bytes at `addr` (registered memory).
    pub fn put_from(
        &self,
        key: &str,
        addr: u64,
        size: u64,
        config: &ReplicateConfig,
    ) -> MResult<()> {
        self.batch_put_from(&[Item::new(key, addr, size)], config, false)
            .remove(0)
    }

    /// Zero-copy puts from registered memory, each object the concatenation of
    /// its item's buffers; per item 0 or an error (`INVALID_PARAMS` for memory
    /// that is not registered).
    pub fn batch_put_from(
        &self,
        items: &[Item],
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>> {
        let keys: Vec<String> = items.iter().map(|it| it.key.clone()).collect();
        let srcs = items
            .iter()
            .map(|it| self.resolve_bufs(&it.buffers).ok().map(Src::Registered))
            .collect();
        self.put_core(&keys, srcs, config, upsert)
    }

    /// The write path: `put_start`, local replica copied here, remote replicas sent
    /// by the real client from registered memory, `put_complete`. `None` sources
    /// (unregistered memory) fail with `INVALID_PARAMS` without a call.
    ///
    /// A write that ends with `INVALID_WRITE` was lost to a change of the
    /// master's view of the space it went to (a master restart or failover, a
    /// drain) after it started; it is written once more, from the start.
    pub(super) fn put_core(
        &self,
        keys: &[String],
        srcs: Vec<Option<Src<'_>>>,
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>> {
        let mut results = self.put_core_once(keys, srcs.clone(), config, upsert);
        let again: Vec<usize> = (0..keys.len())
            .filter(|&i| results[i] == Err(ErrorCode::InvalidWrite))
            .collect();
        if again.is_empty() {
            return results;
        }
        let retried = self.put_core_once(
            &again.iter().map(|&i| keys[i].clone()).collect::<Vec<_>>(),
            again.iter().map(|&i| srcs[i].clone()).collect(),
            config,
            upsert,
        );
        for (i, r) in again.into_iter().zip(retried) {
            results[i] = r;
        }
        results
    }

    fn put_core_once(
        &self,
        keys: &[String],
        srcs: Vec<Option<Src<'_>>>,
        config: &ReplicateConfig,
        upsert: bool,
    ) -> Vec<MResult<()>> {
        if let Some(items) = direct_items(keys, &srcs) {
            // Small values the real client can read: one call does the whole write.
            let conn = match self.conn() {
                Ok(c) => c,
                Err(e) => return vec![Err(e); keys.len()],
            };
            let request = RingRequest::PutDirect {
                items,
                config: config.clone(),
                upsert,
            };
            return self.dispatch_batch(&conn, keys.len(), request, |r| match r {
                RingResponse::Units(v) => Some(v),
                _ => None,
            });
        }
        let mut results: Vec<MResult<()>> = vec![Err(ErrorCode::InvalidParams); keys.len()];
        if !self.copies_fit(srcs.iter().flatten().filter_map(|s| match s {
            Src::Bytes(_) => Some(s.len()),
            Src::Registered(_) => None,
        })) {
            return results;
        }
        let valid: Vec<usize> = (0..keys.len())
            .filter(|&i| srcs[i].as_ref().is_some_and(|s| s.len() > 0))
            .collect();
        if valid.is_empty() {
            return results;
        }
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); keys.len()],
        };
        if conn.local_segment().is_none() {
            // No segment here to copy into: every byte goes through the real
            // client anyway, so one call does the whole write.
            self.put_through_real_client(&conn, keys, &srcs, &valid, config, upsert, &mut results);
            return results;
        }
        let req_keys: Vec<String> = valid.iter().map(|&i| keys[i].clone()).collect();
        let sizes: Vec<u64> = valid
            .iter()
            .map(|&i| srcs[i].as_ref().map_or(0, |s| s.len()))
            .collect();
        let started = self.start_puts(&conn, req_keys, sizes, config, upsert, true);
        let local = conn.local_segment();
        let process = conn.process_memory();
        let mut completions: Vec<(usize, PutCompletion)> = Vec::new();
        let mut to_stage: Vec<usize> = Vec::new();
        for (&i, r) in valid.iter().zip(started) {
            let replicas = match r {
                Err(ErrorCode::ObjectAlreadyExists) if !upsert => {
                    results[i] = Ok(());
                    continue;
                }
                Err(e) => {
                    results[i] = Err(e);
                    continue;
                }
                Ok(r) => r,
            };
            let src = srcs[i].as_ref().expect("valid");
            let mut local_failed = false;
            let mut remote = false;
            for r in &replicas {
                match local {
                    Some((segment, id)) if r.segment_id == id => {
                        if let Err(e) = src.copy_into(segment, r.offset) {
                            tracing::warn!(key = %keys[i], "local replica copy failed: {e}");
                            local_failed = true;
                        }
                    }
                    _ => remote = true,
                }
            }
            let shared = src.reachable_refs(process);
            let sources = match (remote, shared) {
                (false, _) => Vec::new(),
                (true, Some(refs)) => refs,
                (true, None) => {
                    to_stage.push(completions.len());
                    Vec::new()
                }
            };
            completions.push((
                i,
                PutCompletion {
                    key: keys[i].clone(),
                    local_failed,
                    sources,
                },
            ));
        }
        if completions.is_empty() {
            return results;
        }
        // Values in plain memory that must reach other hosts go through one
        // temporary registered buffer for the batch.
        let staging_size: u64 = to_stage
            .iter()
            .map(|&c| srcs[completions[c].0].as_ref().map_or(0, |s| s.len()))
            .sum();
        let staging = self.stage_for_remote(&conn, staging_size).unwrap_or(None);
        if let Some(st) = &staging {
            let mut at = 0;
            for &c in &to_stage {
                let src = srcs[completions[c].0].as_ref().expect("valid");
                let len = src.len();
                if src.copy_into(st.region(), st.start + at).is_ok() {
                    completions[c].1.sources = vec![BufRef {
                        addr: st.base + at,
                        len,
                    }];
                }
                at += len;
            }
        }
        let items: Vec<PutCompletion> = completions.iter().map(|(_, c)| c.clone()).collect();
        let ended = self.complete_puts(&conn, items);
        drop(staging);
        for ((i, _), r) in completions.iter().zip(ended) {
            results[*i] = r;
        }
        results
    }

    /// Registered space for `size` bytes of values in plain memory bound for
    /// other hosts (`None` when there are none); a failure is logged.
    fn stage_for_remote<'a>(&'a self, conn: &'a Conn, size: u64) -> MResult<Option<Staging<'a>>> {
        if size == 0 {
            return Ok(None);
        }
        Staging::new(conn, &self.runtime, self.shared.staging.as_deref(), size)
            .map(Some)
            .inspect_err(|e| tracing::warn!("cannot stage values for remote replicas: {e}"))
    }

    /// A write with no local segment mapped here: the values the real client
    /// cannot read where they are (plain memory) are staged first, then one
    /// `put_direct` call starts the writes, sends the bytes to their replicas
    /// and ends them. Fills `results` at the `valid` positions.
    #[allow(clippy::too_many_arguments)]
    fn put_through_real_client(
        &self,
        conn: &Conn,
        keys: &[String],
        srcs: &[Option<Src<'_>>],
        valid: &[usize],
        config: &ReplicateConfig,
        upsert: bool,
        results: &mut [MResult<()>],
    ) {
        let process = conn.process_memory();
        let shared: Vec<Option<Vec<BufRef>>> = valid
            .iter()
            .map(|&i| srcs[i].as_ref().and_then(|s| s.reachable_refs(process)))
            .collect();
        let staging_size: u64 = valid
            .iter()
            .zip(&shared)
            .filter(|(_, refs)| refs.is_none())
            .map(|(&i, _)| srcs[i].as_ref().map_or(0, |s| s.len()))
            .sum();
        let staging = match self.stage_for_remote(conn, staging_size) {
            Ok(s) => s,
            Err(e) => {
                for &i in valid {
                    results[i] = Err(e);
                }
                return;
            }
        };
        let mut items: Vec<(String, Vec<BufRef>)> = Vec::with_capacity(valid.len());
        let mut positions: Vec<usize> = Vec::with_capacity(valid.len());
        let mut at = 0;
        for (&i, refs) in valid.iter().zip(shared) {
            let refs = match (refs, &staging) {
                (Some(refs), _) => refs,
                (None, Some(st)) => {
                    let src = srcs[i].as_ref().expect("valid");
                    let len = src.len();
                    if let Err(e) = src.copy_into(st.region(), st.start + at) {
                        results[i] = Err(e);
                        continue;
                    }
                    at += len;
                    vec![BufRef {
                        addr: st.base + at - len,
                        len,
                    }]
                }
                (None, None) => {
                    results[i] = Err(ErrorCode::InternalError);
                    continue;
                }
            };
            items.push((keys[i].clone(), refs));
            positions.push(i);
        }
        if items.is_empty() {
            return;
        }
        let request = RingRequest::PutDirect {
            items,
            config: config.clone(),
            upsert,
        };
        let ended = self.dispatch_batch(conn, positions.len(), request, |r| match r {
            RingResponse::Units(v) => Some(v),
            _ => None,
        });
        drop(staging);
        for (i, r) in positions.into_iter().zip(ended) {
            results[i] = r;
        }
    }

    /// `put_start` through the call ring, or the socket when the ring cannot
    /// carry it; one result per key. `place`: see `RealClientService::put_start`.
    pub(super) fn start_puts(
        &self,
        conn: &Conn,
        keys: Vec<String>,
        sizes: Vec<u64>,
        config: &ReplicateConfig,
        upsert: bool,
        place: bool,
    ) -> Vec<MResult<Vec<ReplicaDesc>>> {
        let n = keys.len();
        let request = RingRequest::PutStart {
            keys,
            sizes,
            config: config.clone(),
            upsert,
            place,
        };
        self.dispatch_batch(conn, n, request, |r| match r {
            RingResponse::Started(v) => Some(v),
            _ => None,
        })
    }

    /// `put_complete` through the call ring, or the socket; one result per item.
    pub(super) fn complete_puts(&self, conn: &Conn, items: Vec<PutCompletion>) -> Vec<MResult<()>> {
        let n = items.len();
        let request = RingRequest::PutComplete(items);
        self.dispatch_batch(conn, n, request, |r| match r {
            RingResponse::Units(v) => Some(v),
            _ => None,
        })
    }
}

/// Writes of at most this many bytes in all go in one call ([`direct_items`]); larger
/// ones are copied by the caller itself, in its own process, so that copies scale
/// with the callers. Measured (PERFORMANCE.md): at 4 KiB one call saves a ring round
/// trip (-1.4 µs); at 64 KiB it saves nothing and leaves the bytes in another
/// core's cache.
const DIRECT_PUT_MAX: u64 = 16 << 10;

/// The items of a batch the real client can write in one call: every value in
/// memory it maps, none empty, all together small.
fn direct_items(keys: &[String], srcs: &[Option<Src<'_>>]) -> Option<Vec<(String, Vec<BufRef>)>> {
    let mut total = 0;
    let mut items = Vec::with_capacity(keys.len());
    for (key, src) in keys.iter().zip(srcs) {
        let Some(Src::Registered(spans)) = src else {
            return None;
        };
        let len: u64 = spans.iter().map(|s| s.len).sum();
        total += len;
        if len == 0 || total > DIRECT_PUT_MAX {
            return None;
        }
        let refs: Option<Vec<BufRef>> = spans.iter().map(Span::shared_ref).collect();
        items.push((key.clone(), refs?));
    }
    (!items.is_empty()).then_some(items)
}
