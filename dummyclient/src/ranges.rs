//! Ranged and session reads and writes (upstream's session API, PR #2881, and
//! `get_into_ranges`): objects moved range by range between registered buffers
//! and the replicas, without asking the master again for every range.
//!
//! A put session reserves the object with one `put_start`, takes any number of
//! range writes, and becomes readable on `batch_put_session_end`. A get session
//! keeps the replica list and read lease from one `get_replicas`; range reads
//! check the lease is still running before and after each copy. Replicas in the
//! local segment are copied here; remote ones are moved by the real client
//! (`transfer_ranges`) straight from or into registered memory, through a
//! temporary shared buffer for memory the real client cannot map.

use std::collections::HashMap;
use std::time::Instant;

use mooncake_proto::realclient::{BufRef, PutCompletion, RangeRef, RangeTransfer};
use mooncake_proto::*;

use crate::{CALL_TIMEOUT, Conn, DummyClient, GetSession, PutSession, Span, Staging, ctx};

/// The ranges of one object: `(offset inside the object, registered memory)`.
type Ranges = Vec<(u64, Span)>;

/// One range of an object and the registered memory its bytes come from (a
/// write) or go to (a read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectRange {
    /// Registered memory: the source of a write, the destination of a read.
    pub addr: u64,
    /// Where the range starts inside the object.
    pub offset: u64,
    /// Bytes in the range; never 0.
    pub len: u64,
}

/// A key and the ranges of its object to move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRanges {
    /// The object.
    pub key: String,
    /// At least one range, each inside the object.
    pub ranges: Vec<ObjectRange>,
}

impl KeyRanges {
    /// A key with its ranges.
    pub fn new(key: impl Into<String>, ranges: Vec<ObjectRange>) -> KeyRanges {
        KeyRanges {
            key: key.into(),
            ranges,
        }
    }
}

fn invalid<T>(n: usize) -> Vec<MResult<T>> {
    (0..n).map(|_| Err(ErrorCode::InvalidParams)).collect()
}

impl DummyClient {
    /// Resolves one key's ranges, checking each is registered and inside an
    /// object of `size` bytes.
    fn ranges(&self, ranges: &[ObjectRange], size: u64) -> MResult<Ranges> {
        if ranges.is_empty() {
            return Err(ErrorCode::InvalidParams);
        }
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let end = r
                .offset
                .checked_add(r.len)
                .ok_or(ErrorCode::InvalidParams)?;
            if r.len == 0 || end > size {
                return Err(ErrorCode::InvalidParams);
            }
            out.push((r.offset, self.resolve(r.addr, r.len)?));
        }
        Ok(out)
    }

    /// Sends ranges to the real client for the remote replicas. Spans of
    /// process memory (which it cannot map) go through one staging buffer:
    /// filled before a write, copied out after a read.
    fn transfer_remote(
        &self,
        conn: &Conn,
        write: bool,
        items: Vec<(String, Vec<ReplicaDesc>, u64, &Ranges)>,
    ) -> Vec<MResult<u64>> {
        let n = items.len();
        let process = conn.process_memory();
        let staged_len: u64 = items
            .iter()
            .flat_map(|it| it.3.iter())
            .filter(|(_, s)| s.reachable_ref(process).is_none())
            .map(|(_, s)| s.len)
            .sum();
        let staging = if staged_len > 0 {
            match Staging::new(
                conn,
                &self.runtime,
                self.shared.staging.as_deref(),
                staged_len,
            ) {
                Ok(st) => Some(st),
                Err(e) => return vec![Err(e); n],
            }
        } else {
            None
        };
        // Where each staged span sits in the staging buffer.
        let mut staged: Vec<(usize, u64, &Span)> = Vec::new();
        let mut at = 0;
        let mut request = Vec::with_capacity(n);
        let mut prepared: Vec<MResult<()>> = vec![Ok(()); n];
        for (i, (key, replicas, lease_left_ms, ranges)) in items.iter().enumerate() {
            let mut refs = Vec::with_capacity(ranges.len());
            for (off, span) in ranges.iter() {
                let buf = match (span.reachable_ref(process), &staging) {
                    (Some(b), _) => b,
                    (None, Some(st)) => {
                        if write && let Err(e) = span.copy_into(st.region(), st.start + at) {
                            prepared[i] = Err(e);
                        }
                        staged.push((i, at, span));
                        let b = BufRef {
                            addr: st.base + at,
                            len: span.len,
                        };
                        at += span.len;
                        b
                    }
                    (None, None) => unreachable!("staging exists when a span needs it"),
                };
                refs.push(RangeRef {
                    object_offset: *off,
                    buf,
                });
            }
            request.push(RangeTransfer {
                key: key.clone(),
                replicas: replicas.clone(),
                lease_left_ms: *lease_left_ms,
                ranges: refs,
            });
        }
        let mut results = per_key(
            n,
            self.call(
                conn,
                conn.rpc.transfer_ranges(ctx(CALL_TIMEOUT), write, request),
            ),
        );
        for (i, p) in prepared.into_iter().enumerate() {
            if let Err(e) = p {
                results[i] = Err(e);
            }
        }
        if !write && let Some(st) = &staging {
            for (i, at, span) in staged {
                if results[i].is_ok()
                    && let Err(e) = span.fill_from(st.region(), st.start + at, span.len)
                {
                    results[i] = Err(e);
                }
            }
        }
        results
    }

    // -------------------------------------------------------- put sessions

    /// Opens writes of `(key, size)` objects (space reserved, not yet
    /// readable). Per key `Ok` or an error: `OBJECT_ALREADY_EXISTS` for a key
    /// that exists, `INVALID_PARAMS` for a size of 0 or a key with a session
    /// already open (or named twice).
    pub fn batch_put_session_start(
        &self,
        objects: &[(String, u64)],
        config: &ReplicateConfig,
    ) -> Vec<MResult<()>> {
        let (keys, sizes): (Vec<String>, Vec<u64>) = objects.iter().cloned().unzip();
        let mut results: Vec<MResult<()>> = invalid(keys.len());
        let mut valid = Vec::new();
        {
            let open = self.put_sessions.lock();
            for (i, k) in keys.iter().enumerate() {
                let repeated = keys[..i].contains(k);
                if sizes[i] > 0 && !repeated && !open.contains_key(k) {
                    valid.push(i);
                }
            }
        }
        if valid.is_empty() {
            return results;
        }
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); keys.len()],
        };
        let req_keys: Vec<String> = valid.iter().map(|&i| keys[i].clone()).collect();
        let req_sizes: Vec<u64> = valid.iter().map(|&i| sizes[i]).collect();
        // A session must hear of an existing key at its start: not placed.
        let started = self.start_puts(&conn, req_keys, req_sizes, config, false, false);
        let ipc_session = conn.ipc.session();
        let mut open = self.put_sessions.lock();
        for (&i, r) in valid.iter().zip(started) {
            results[i] = r.map(|replicas| {
                open.insert(
                    keys[i].clone(),
                    PutSession {
                        ipc_session,
                        replicas,
                        size: sizes[i],
                        local_failed: false,
                    },
                );
            });
        }
        results
    }

    /// Writes ranges into open put sessions, each from registered memory. Per
    /// key the bytes written or an error (`INVALID_PARAMS` without a session,
    /// for no ranges, unregistered memory or a range outside the object).
    pub fn batch_put_from_multi_buffer_ranges(&self, writes: &[KeyRanges]) -> Vec<MResult<u64>> {
        let n = writes.len();
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); n],
        };
        let ipc_session = conn.ipc.session();
        let mut results: Vec<MResult<u64>> = invalid(n);
        let mut remote: Vec<(usize, String, Vec<ReplicaDesc>, Ranges)> = Vec::new();
        let local = conn.local_segment();
        for i in 0..n {
            let session = self.put_sessions.lock().get(&writes[i].key).cloned();
            let Some(session) = session else { continue };
            if session.ipc_session != ipc_session {
                results[i] = Err(ErrorCode::RpcFail);
                continue;
            }
            let ranges = match self.ranges(&writes[i].ranges, session.size) {
                Ok(r) => r,
                Err(e) => {
                    results[i] = Err(e);
                    continue;
                }
            };
            let total: u64 = ranges.iter().map(|(_, s)| s.len).sum();
            let mut has_remote = false;
            let mut local_ok = true;
            for r in &session.replicas {
                match local {
                    Some((segment, id)) if r.segment_id == id => {
                        for (off, span) in &ranges {
                            if let Err(e) = span.copy_into(segment, r.offset + off) {
                                tracing::warn!(key = %writes[i].key, "local range write failed: {e}");
                                local_ok = false;
                            }
                        }
                    }
                    _ => has_remote = true,
                }
            }
            if !local_ok && let Some(s) = self.put_sessions.lock().get_mut(&writes[i].key) {
                s.local_failed = true;
            }
            results[i] = if local_ok || has_remote {
                Ok(total)
            } else {
                Err(ErrorCode::TransferFail)
            };
            if has_remote {
                remote.push((i, writes[i].key.clone(), Vec::new(), ranges));
            }
        }
        if !remote.is_empty() {
            let items = remote
                .iter()
                .map(|(_, k, r, ranges)| (k.clone(), r.clone(), 0, ranges))
                .collect();
            let moved = self.transfer_remote(&conn, true, items);
            for ((i, ..), m) in remote.iter().zip(moved) {
                // The local replica alone keeps the key readable.
                let has_local = self
                    .put_sessions
                    .lock()
                    .get(&writes[*i].key)
                    .is_some_and(|s| {
                        !s.local_failed
                            && local.is_some_and(|(_, id)| {
                                s.replicas.iter().any(|r| r.segment_id == id)
                            })
                    });
                if m.is_err() && !has_local {
                    results[*i] = m;
                }
            }
        }
        results
    }

    /// Makes put sessions readable; per key `Ok` or an error. A key without an
    /// open session (never started, refused at start, or already ended) gives
    /// `INVALID_PARAMS`, as upstream answers.
    pub fn batch_put_session_end(&self, keys: &[String]) -> Vec<MResult<()>> {
        let n = keys.len();
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); n],
        };
        let mut results: Vec<MResult<()>> = invalid(n);
        let mut items = Vec::new();
        let mut owners = Vec::new();
        {
            let mut open = self.put_sessions.lock();
            for (i, k) in keys.iter().enumerate() {
                match open.remove(k) {
                    Some(s) if s.ipc_session == conn.ipc.session() => {
                        items.push(PutCompletion {
                            key: k.clone(),
                            local_failed: s.local_failed,
                            sources: Vec::new(),
                        });
                        owners.push(i);
                    }
                    Some(_) => results[i] = Err(ErrorCode::RpcFail),
                    None => {}
                }
            }
        }
        if !items.is_empty() {
            let ended = self.complete_puts(&conn, items);
            for (i, r) in owners.into_iter().zip(ended) {
                results[i] = r;
            }
        }
        results
    }

    /// Abandons put sessions (space freed, nothing readable); per key `Ok` or an
    /// error (`INVALID_PARAMS` for a key without a session).
    pub fn batch_put_session_revoke(&self, keys: &[String]) -> Vec<MResult<()>> {
        let n = keys.len();
        let mut results: Vec<MResult<()>> = invalid(n);
        let mut owners = Vec::new();
        {
            let mut open = self.put_sessions.lock();
            for (i, k) in keys.iter().enumerate() {
                if open.remove(k).is_some() {
                    owners.push(i);
                }
            }
        }
        if owners.is_empty() {
            return results;
        }
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); n],
        };
        let revoke: Vec<String> = owners.iter().map(|&i| keys[i].clone()).collect();
        let m = revoke.len();
        let revoked = per_key(
            m,
            self.call(&conn, conn.rpc.put_revoke(ctx(CALL_TIMEOUT), revoke)),
        );
        for (i, r) in owners.into_iter().zip(revoked) {
            results[i] = r;
        }
        results
    }

    // -------------------------------------------------------- get sessions

    /// Opens reads: one master round trip for the replicas and a read lease,
    /// which later range reads use. Per key the object size or an error.
    pub fn batch_get_session_start(&self, keys: &[String]) -> Vec<MResult<u64>> {
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); keys.len()],
        };
        let granted = Instant::now();
        let lists = self.batch_get_replicas(keys);
        let ipc_session = conn.ipc.session();
        let mut open = self.get_sessions.lock();
        keys.iter()
            .zip(lists)
            .map(|(k, r)| {
                r.map(|list| {
                    let size = list.size;
                    open.insert(
                        k.clone(),
                        GetSession {
                            ipc_session,
                            list,
                            granted,
                        },
                    );
                    size
                })
            })
            .collect()
    }

    /// Reads ranges of objects with open get sessions into registered memory.
    /// Per key the bytes read or an error: `INVALID_PARAMS` without a session
    /// or for bad ranges, `LEASE_EXPIRED` once the session's lease ran out (the
    /// session is then closed).
    pub fn batch_get_into_multi_buffer_ranges(&self, reads: &[KeyRanges]) -> Vec<MResult<u64>> {
        let n = reads.len();
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); n],
        };
        let mut work = Vec::with_capacity(n);
        for read in reads {
            let session = self.get_sessions.lock().get(&read.key).cloned();
            work.push(match session {
                None => Err(ErrorCode::InvalidParams),
                Some(s) if s.ipc_session != conn.ipc.session() => Err(ErrorCode::RpcFail),
                Some(s) => self.ranges(&read.ranges, s.list.size).map(|r| (s, r)),
            });
        }
        let keys: Vec<String> = reads.iter().map(|r| r.key.clone()).collect();
        let results = self.read_ranges(&conn, &keys, &work);
        let mut open = self.get_sessions.lock();
        for (k, r) in keys.iter().zip(&results) {
            if *r == Err(ErrorCode::LeaseExpired) {
                open.remove(k);
            }
        }
        results
    }

    /// Closes get sessions. Reads through them fail afterwards; the read lease
    /// itself simply runs out.
    pub fn batch_get_session_end(&self, keys: &[String]) -> MResult<()> {
        let mut open = self.get_sessions.lock();
        for k in keys {
            open.remove(k);
        }
        Ok(())
    }

    /// Reads ranges under the sessions' leases: local replicas copied here,
    /// remote ones by the real client.
    pub(super) fn read_ranges(
        &self,
        conn: &Conn,
        keys: &[String],
        work: &[MResult<(GetSession, Ranges)>],
    ) -> Vec<MResult<u64>> {
        let local = conn.local_segment();
        let mut results: Vec<MResult<u64>> = Vec::with_capacity(work.len());
        let mut remote = Vec::new();
        for (i, w) in work.iter().enumerate() {
            let (session, ranges) = match w {
                Ok(w) => w,
                Err(e) => {
                    results.push(Err(*e));
                    continue;
                }
            };
            let lease_left = session.lease_left_ms();
            if lease_left == 0 {
                results.push(Err(ErrorCode::LeaseExpired));
                continue;
            }
            let total: u64 = ranges.iter().map(|(_, s)| s.len).sum();
            let here = local.and_then(|(segment, id)| {
                session
                    .list
                    .replicas
                    .iter()
                    .find(|r| r.segment_id == id)
                    .map(|r| (segment, r.offset))
            });
            match here {
                Some((segment, base)) => {
                    let copied = ranges
                        .iter()
                        .try_for_each(|(off, span)| span.fill_from(segment, base + off, span.len));
                    // The space may have been reused if the lease ran out meanwhile.
                    results.push(match copied {
                        Err(e) => Err(e),
                        Ok(()) if session.lease_left_ms() == 0 => Err(ErrorCode::LeaseExpired),
                        Ok(()) => Ok(total),
                    });
                }
                None => {
                    results.push(Ok(total));
                    remote.push((i, lease_left));
                }
            }
        }
        if !remote.is_empty() {
            let items = remote
                .iter()
                .map(|&(i, lease_left)| {
                    let (session, ranges) = work[i].as_ref().expect("only valid work is remote");
                    (
                        keys[i].clone(),
                        session.list.replicas.clone(),
                        lease_left,
                        ranges,
                    )
                })
                .collect();
            let moved = self.transfer_remote(conn, false, items);
            for ((i, _), m) in remote.into_iter().zip(moved) {
                if m.is_err() {
                    results[i] = m;
                }
            }
        }
        results
    }

    /// Reads ranges of objects into registered memory in one go (upstream's
    /// `get_into_ranges`): one master round trip for all keys, a key named more
    /// than once asked for once. Per entry the bytes read or an error
    /// (`INVALID_PARAMS` for no ranges, unregistered memory or a range outside
    /// the object).
    pub fn get_into_ranges(&self, reads: &[KeyRanges]) -> Vec<MResult<u64>> {
        let conn = match self.conn() {
            Ok(c) => c,
            Err(e) => return vec![Err(e); reads.len()],
        };
        let mut unique: Vec<String> = Vec::new();
        for read in reads {
            if !unique.contains(&read.key) {
                unique.push(read.key.clone());
            }
        }
        let granted = Instant::now();
        let lists: HashMap<String, MResult<ReplicaList>> = unique
            .iter()
            .cloned()
            .zip(self.batch_get_replicas(&unique))
            .collect();
        let ipc_session = conn.ipc.session();
        let work: Vec<_> = reads
            .iter()
            .map(|read| {
                let list = lists[&read.key].clone()?;
                let ranges = self.ranges(&read.ranges, list.size)?;
                Ok((
                    GetSession {
                        ipc_session,
                        list,
                        granted,
                    },
                    ranges,
                ))
            })
            .collect();
        let keys: Vec<String> = reads.iter().map(|r| r.key.clone()).collect();
        self.read_ranges(&conn, &keys, &work)
    }
}
