//! The real client's core in one process: an embedded master, several clients, an
//! in-process transport that copies between their segments, and caller memory
//! that is plain mapped regions — no socket, no IPC session, no other process.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mooncake_master::{MasterConfig, MasterService};
use mooncake_proto::realclient::{BufRef, GetOutcome, PutCompletion};
use mooncake_proto::*;
use mooncake_shm::{Region, RegionOptions};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::RealClient;
use crate::RealClientConfig;
use crate::transfer::{CallerMemory, Direction, HeldSpan, LocalSpan, TransferJob, Transport};

/// A transport between segments of this process: copies bytes, and can be told
/// to fail reads from some segments or to take longer than a deadline.
#[derive(Default)]
struct Loopback {
    segments: Mutex<HashMap<SegmentId, Arc<Region>>>,
    failing: Mutex<HashSet<SegmentId>>,
    delay: Mutex<Duration>,
}

impl Loopback {
    fn add(&self, client: &RealClient) {
        if let (Some(desc), Some(region)) = (client.segment(), client.segment_region()) {
            self.segments.lock().insert(desc.id, region);
        }
    }
}

impl Transport for Loopback {
    fn run(&self, jobs: &[TransferJob], deadline: Instant) -> Vec<MResult<()>> {
        std::thread::sleep(*self.delay.lock());
        jobs.iter()
            .map(|job| {
                if Instant::now() > deadline {
                    return Err(match job.direction {
                        Direction::Read => ErrorCode::LeaseExpired,
                        Direction::Write => ErrorCode::TransferFail,
                    });
                }
                if self.failing.lock().contains(&job.segment_id) {
                    return Err(ErrorCode::TransferFail);
                }
                let remote = self
                    .segments
                    .lock()
                    .get(&job.segment_id)
                    .cloned()
                    .ok_or(ErrorCode::SegmentNotFound)?;
                let local = &job.local;
                let copied = match job.direction {
                    Direction::Read => {
                        local
                            .memory
                            .copy_from(local.offset, &remote, job.remote_offset, local.len)
                    }
                    Direction::Write => local.memory.copy_to_segment(
                        local.offset,
                        &remote,
                        job.remote_offset,
                        local.len,
                    ),
                };
                copied.map_err(|_| ErrorCode::InvalidParams)
            })
            .collect()
    }
}

/// Caller memory that is one plain region; addresses are the region's own.
struct Plain(Arc<Region>);

impl Plain {
    fn new(len: u64) -> Plain {
        Plain(Arc::new(
            Region::anonymous("test-caller", len, &RegionOptions::default()).unwrap(),
        ))
    }
    fn base(&self) -> u64 {
        self.0.as_ptr() as u64
    }
    fn buf(&self, at: u64, len: u64) -> BufRef {
        BufRef {
            addr: self.base() + at,
            len,
        }
    }
}

impl CallerMemory for Plain {
    fn translate(&self, addr: u64, len: u64) -> MResult<HeldSpan> {
        let offset = addr
            .checked_sub(self.base())
            .ok_or(ErrorCode::InvalidParams)?;
        self.0
            .check(offset, len)
            .map_err(|_| ErrorCode::InvalidParams)?;
        Ok(HeldSpan::new(LocalSpan {
            memory: self.0.clone().into(),
            offset,
            len,
        }))
    }
}

struct Cluster {
    master: Arc<MasterService>,
    transport: Arc<Loopback>,
    stop: CancellationToken,
}

impl Cluster {
    fn new(config: MasterConfig) -> Cluster {
        Cluster {
            master: Arc::new(MasterService::new(config)),
            transport: Arc::new(Loopback::default()),
            stop: CancellationToken::new(),
        }
    }

    fn config(host: &str, segment: u64) -> RealClientConfig {
        let mut c = RealClientConfig::new(0);
        c.host = host.to_string();
        c.global_segment_size = segment;
        c.ephemeral_segment = true;
        c
    }

    async fn client_with(&self, config: RealClientConfig) -> Arc<RealClient> {
        let client = RealClient::builder(config)
            .with_local_master(self.master.clone())
            .with_transport(self.transport.clone())
            .without_transfer_port()
            .start(self.stop.clone())
            .await
            .unwrap();
        self.transport.add(&client);
        client
    }

    async fn client(&self, host: &str, segment: u64) -> Arc<RealClient> {
        self.client_with(Self::config(host, segment)).await
    }
}

fn value(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

const MIB: u64 = 1 << 20;

/// Writes `bytes` under `key` the way a dummy on `client`'s host does: into the
/// local replica itself, then `put_complete` (remote replicas from `memory`).
async fn put(
    client: &RealClient,
    key: &str,
    bytes: &[u8],
    config: ReplicateConfig,
    memory: Option<&Plain>,
) -> MResult<()> {
    let descs = client
        .put_start(vec![key.into()], vec![bytes.len() as u64], config, false, 1)
        .await
        .remove(0)?;
    let own = client.segment().map(|d| d.id);
    for d in &descs {
        if Some(d.segment_id) == own {
            client
                .segment_region()
                .unwrap()
                .write(d.offset, bytes)
                .unwrap();
        }
    }
    let sources = match memory {
        Some(m) => {
            m.0.write(0, bytes).unwrap();
            vec![m.buf(0, bytes.len() as u64)]
        }
        None => Vec::new(),
    };
    let item = PutCompletion {
        key: key.into(),
        local_failed: false,
        sources,
    };
    client
        .put_complete(vec![item], memory.map(|m| m as &dyn CallerMemory))
        .await
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_put_and_get_through_the_segment() {
    let c = Cluster::new(MasterConfig::default());
    let a = c.client("host-a", 4 * MIB).await;
    let bytes = value(3, 100_000);
    put(&a, "k", &bytes, ReplicateConfig::default(), None)
        .await
        .unwrap();
    let out = a
        .get_into(vec!["k".into()], vec![vec![]], None, false)
        .await;
    let Ok(GetOutcome::Local(list)) = &out[0] else {
        panic!("{out:?}");
    };
    let replica = &list.replicas[0];
    assert_eq!(Some(replica.segment_id), a.segment().map(|d| d.id));
    let mut back = vec![0u8; bytes.len()];
    a.segment_region()
        .unwrap()
        .read(replica.offset, &mut back)
        .unwrap();
    assert_eq!(back, bytes);
    assert_eq!(a.inventory_len(), 1, "recorded for a restart");
    a.release_reads(vec![("k".into(), replica.version)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_put_and_get_through_the_transport() {
    let c = Cluster::new(MasterConfig::default());
    let holder = c.client("host-a", 4 * MIB).await;
    let caller = c.client("host-b", 0).await;
    let memory = Plain::new(MIB);
    let bytes = value(9, 200_000);
    put(
        &caller,
        "remote",
        &bytes,
        ReplicateConfig::default(),
        Some(&memory),
    )
    .await
    .unwrap();
    // The bytes are in the holder's segment...
    let list = holder
        .get_replicas(vec!["remote".into()])
        .await
        .remove(0)
        .unwrap();
    let mut there = vec![0u8; bytes.len()];
    holder
        .segment_region()
        .unwrap()
        .read(list.replicas[0].offset, &mut there)
        .unwrap();
    assert_eq!(there, bytes);
    // ...and come back into the caller's memory.
    let dest = memory.buf(MIB / 2, bytes.len() as u64);
    let out = caller
        .get_into(
            vec!["remote".into()],
            vec![vec![dest]],
            Some(&memory),
            false,
        )
        .await;
    assert_eq!(out[0], Ok(GetOutcome::Done(bytes.len() as u64)));
    let mut back = vec![0u8; bytes.len()];
    memory.0.read(MIB / 2, &mut back).unwrap();
    assert_eq!(back, bytes);
    // A destination outside the caller's memory is refused, not written.
    let bad = BufRef {
        addr: 0x1000,
        len: bytes.len() as u64,
    };
    let out = caller
        .get_into(vec!["remote".into()], vec![vec![bad]], Some(&memory), false)
        .await;
    assert_eq!(out[0], Err(ErrorCode::InvalidParams));
    // A destination smaller than the object (a caller that guessed the size)
    // gets the replica list with its lease held, for a second round without
    // another lookup; nothing is written.
    memory.0.write(MIB / 2, &[7u8; 4096]).unwrap();
    let short = memory.buf(MIB / 2, 4096);
    let out = caller
        .get_into(
            vec!["remote".into()],
            vec![vec![short]],
            Some(&memory),
            false,
        )
        .await;
    let Ok(GetOutcome::Remote(list)) = &out[0] else {
        panic!("expected the replica list, got {:?}", out[0]);
    };
    assert_eq!(list.size, bytes.len() as u64);
    let mut untouched = vec![0u8; 4096];
    memory.0.read(MIB / 2, &mut untouched).unwrap();
    assert_eq!(untouched, vec![7u8; 4096]);
    assert_eq!(
        c.master.remove("remote", false),
        Err(ErrorCode::ObjectHasLease),
        "the lease is held for the caller"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_another_replica() {
    let c = Cluster::new(MasterConfig::default());
    let a = c.client("host-a", 4 * MIB).await;
    let _other = c.client("host-c", 4 * MIB).await;
    let caller = c.client("host-b", 0).await;
    let memory = Plain::new(MIB);
    let bytes = value(1, 50_000);
    let two = ReplicateConfig::default().with_replica_num(2);
    put(&caller, "twice", &bytes, two, Some(&memory))
        .await
        .unwrap();
    let dest = || vec![vec![memory.buf(MIB / 2, bytes.len() as u64)]];
    // The replica tried first fails.
    let list = c.master.query_key("twice").unwrap();
    assert_eq!(list.replicas.len(), 2);
    c.transport
        .failing
        .lock()
        .insert(list.replicas[0].segment_id);
    assert!(
        list.replicas
            .iter()
            .any(|r| Some(r.segment_id) == a.segment().map(|d| d.id))
    );
    let out = caller
        .get_into(vec!["twice".into()], dest(), Some(&memory), false)
        .await;
    assert_eq!(out[0], Ok(GetOutcome::Done(bytes.len() as u64)));
    let mut back = vec![0u8; bytes.len()];
    memory.0.read(MIB / 2, &mut back).unwrap();
    assert_eq!(back, bytes);
    // With every replica failing, the read fails.
    let all: Vec<SegmentId> = c.transport.segments.lock().keys().copied().collect();
    c.transport.failing.lock().extend(all);
    let out = caller
        .get_into(vec!["twice".into()], dest(), Some(&memory), false)
        .await;
    assert_eq!(out[0], Err(ErrorCode::TransferFail));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_outlasting_its_lease_reports_lease_expired() {
    let c = Cluster::new(MasterConfig::default().with_lease_ttl(Duration::from_millis(200)));
    let _holder = c.client("host-a", 4 * MIB).await;
    let caller = c.client("host-b", 0).await;
    let memory = Plain::new(MIB);
    let bytes = value(5, 10_000);
    put(
        &caller,
        "slow",
        &bytes,
        ReplicateConfig::default(),
        Some(&memory),
    )
    .await
    .unwrap();
    *c.transport.delay.lock() = Duration::from_millis(300);
    let out = caller
        .get_into(
            vec!["slow".into()],
            vec![vec![memory.buf(MIB / 2, bytes.len() as u64)]],
            Some(&memory),
            false,
        )
        .await;
    assert_eq!(out[0], Err(ErrorCode::LeaseExpired));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sessions_unfinished_writes_are_revoked() {
    let c = Cluster::new(MasterConfig::default());
    let a = c.client("host-a", 4 * MIB).await;
    let start = |owner| {
        a.put_start(
            vec!["orphan".into()],
            vec![4096],
            ReplicateConfig::default(),
            false,
            owner,
        )
    };
    start(7).await.remove(0).unwrap();
    assert_eq!(
        start(8).await.remove(0),
        Err(ErrorCode::ObjectAlreadyExists),
        "in flight"
    );
    a.revoke_writes_of(7).await;
    start(8).await.remove(0).expect("free again once revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_remounts_its_segment_with_the_inventory() {
    let c = Cluster::new(MasterConfig::default());
    let segment = PathBuf::from(format!(
        "/dev/shm/mc-core-test-{}.segment",
        std::process::id()
    ));
    let mut config = Cluster::config("host-a", 4 * MIB);
    config.ephemeral_segment = false;
    config.segment_path = segment.clone();
    let a = c.client_with(config.clone()).await;
    let values: Vec<Vec<u8>> = (0..5).map(|i| value(i, 30_000 + i as usize)).collect();
    for (i, v) in values.iter().enumerate() {
        put(
            &a,
            &format!("kept-{i}"),
            v,
            ReplicateConfig::default(),
            None,
        )
        .await
        .unwrap();
    }
    // A graceful stop persists the inventory and unmounts: the master forgets.
    a.shutdown().await;
    drop(a);
    assert_eq!(
        c.master.get_replica_list("kept-0"),
        Err(ErrorCode::ObjectNotFound)
    );
    let again = c.client_with(config).await;
    for (i, v) in values.iter().enumerate() {
        let out = again
            .get_into(vec![format!("kept-{i}")], vec![vec![]], None, false)
            .await;
        let Ok(GetOutcome::Local(list)) = &out[0] else {
            panic!("kept-{i}: {out:?}");
        };
        let mut back = vec![0u8; v.len()];
        again
            .segment_region()
            .unwrap()
            .read(list.replicas[0].offset, &mut back)
            .unwrap();
        assert_eq!(&back, v, "kept-{i}");
    }
    again.shutdown().await;
    let _ = std::fs::remove_file(&segment);
    let _ = std::fs::remove_file(segment.with_extension("segment.inventory"));
    let _ = std::fs::remove_file(segment.with_extension("segment.inventory.journal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remount_waits_for_copies_into_the_segment_to_end() {
    let c = Cluster::new(MasterConfig::default());
    let a = c.client("host-a", 4 * MIB).await;
    // A dummy has space for a write and is still copying.
    let descs = a
        .put_start(
            vec!["k".into()],
            vec![4096],
            ReplicateConfig::default(),
            false,
            1,
        )
        .await
        .remove(0)
        .unwrap();
    assert_eq!(Some(descs[0].segment_id), a.segment().map(|d| d.id));
    let remounting = {
        let a = a.clone();
        tokio::spawn(async move { a.remount().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !remounting.is_finished(),
        "the remount went ahead while a copy into the segment was running"
    );
    // The copy ends: the remount goes ahead.
    let done = PutCompletion {
        key: "k".into(),
        local_failed: false,
        sources: Vec::new(),
    };
    a.put_complete(vec![done], None).await.remove(0).unwrap();
    tokio::time::timeout(Duration::from_secs(2), remounting)
        .await
        .expect("the remount finished once the copy ended")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remount_waits_for_copies_into_the_disk_tier_and_stops_those_planned_before_it() {
    let c = Cluster::new(MasterConfig::default());
    let a = c.client("host-a", 4 * MIB).await;
    let planned_in = *a.master_generation.borrow();
    // A replica copy into the own disk tier is under way: the remount waits.
    let copying = a.begin_local_copy(planned_in).expect("no remount yet");
    let remounting = {
        let a = a.clone();
        tokio::spawn(async move { a.remount().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !remounting.is_finished(),
        "the remount went ahead while a copy into the disk tier was running"
    );
    // Meanwhile no other copy starts.
    assert!(a.begin_local_copy(planned_in).is_none());
    drop(copying);
    tokio::time::timeout(Duration::from_secs(2), remounting)
        .await
        .expect("the remount finished once the copy ended")
        .unwrap()
        .unwrap();
    // A copy planned before the remount is not made after it (the new mount's
    // master may have given its target space to another object); one planned
    // now is.
    assert!(a.begin_local_copy(planned_in).is_none());
    let now = *a.master_generation.borrow();
    assert_ne!(now, planned_in);
    assert!(a.begin_local_copy(now).is_some());
}

/// Waits until the master granted `client` space in its segment.
/// Waits until `client` holds granted space. (The master's gauge counts a
/// grant before its answer reaches the client.)
async fn until_granted(client: &RealClient) {
    for _ in 0..200 {
        if client.granted_room() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no space was granted");
}

/// The bytes of `key` as its only replica holds them.
async fn stored(client: &RealClient, key: &str) -> MResult<Vec<u8>> {
    let list = client.get_replicas(vec![key.into()]).await.remove(0)?;
    let r = &list.replicas[0];
    let mut back = vec![0u8; list.size as usize];
    client
        .segment_region()
        .unwrap()
        .read(r.offset, &mut back)
        .unwrap();
    client.release_reads(vec![(key.into(), r.version)]).await;
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_placed_in_granted_space_are_one_commit_and_die_with_the_mount() {
    let c = Cluster::new(MasterConfig::default());
    let a = c.client("host-a", 64 * MIB).await;
    until_granted(&a).await;
    let commits = || {
        c.master
            .metrics
            .requests(mooncake_master::metrics::Op::BatchPutCommit)
    };
    let starts = || {
        c.master
            .metrics
            .requests(mooncake_master::metrics::Op::BatchPutStart)
    };
    let (commits0, starts0) = (commits(), starts());

    // A small put is placed here and made readable by one commit.
    let bytes = value(5, 100_000);
    put(&a, "placed", &bytes, ReplicateConfig::default(), None)
        .await
        .unwrap();
    assert_eq!((commits(), starts()), (commits0 + 1, starts0));
    assert_eq!(a.metrics.placed_writes(), 1);
    assert_eq!(stored(&a, "placed").await.unwrap(), bytes);
    assert_eq!(a.inventory_len(), 1, "recorded for a restart");

    // A put of a key held here goes to the master, which says it exists (a
    // dummy maps that to success); the first value stays.
    let again = put(
        &a,
        "placed",
        &value(6, 100_000),
        ReplicateConfig::default(),
        None,
    )
    .await;
    assert_eq!(again, Err(ErrorCode::ObjectAlreadyExists));
    assert_eq!(stored(&a, "placed").await.unwrap(), bytes);
    // A key placed here whose object lives on another host (unknown here) is
    // committed, and the commit keeps the existing value too.
    let other = c.client("host-b", 64 * MIB).await;
    put(
        &other,
        "there",
        &value(9, 4096),
        ReplicateConfig::default(),
        None,
    )
    .await
    .unwrap();
    let (placed, commits_before) = (a.metrics.placed_writes(), commits());
    put(
        &a,
        "there",
        &value(10, 4096),
        ReplicateConfig::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(commits(), commits_before + 1, "placed, then the commit");
    assert_eq!(
        a.metrics.placed_writes(),
        placed,
        "found existing, not committed"
    );
    assert_eq!(stored(&other, "there").await.unwrap(), value(9, 4096));

    // Larger writes, upserts and two replicas stay two-phase.
    let starts0 = starts();
    let big = value(7, 1_500_000);
    put(&a, "big", &big, ReplicateConfig::default(), None)
        .await
        .unwrap();
    assert_eq!(starts(), starts0 + 1);
    assert_eq!(stored(&a, "big").await.unwrap(), big);

    // A revoked placed write gives its space back: the master frees it.
    let (granted, allocated) = (
        c.master.gauges().granted_bytes,
        c.master.gauges().allocated_bytes,
    );
    let started = a
        .put_start(
            vec!["gone".into()],
            vec![4096],
            ReplicateConfig::default(),
            false,
            1,
        )
        .await
        .remove(0)
        .unwrap();
    assert_eq!(started[0].segment_id, a.segment().unwrap().id);
    a.put_revoke(vec!["gone".into()]).await.remove(0).unwrap();
    for _ in 0..200 {
        if c.master.gauges().granted_bytes < granted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let g = c.master.gauges();
    assert_eq!(
        (g.granted_bytes, g.allocated_bytes),
        (granted - 4096, allocated - 4096)
    );
    assert_eq!(
        a.get_replicas(vec!["gone".into()]).await[0],
        Err(ErrorCode::ObjectNotFound)
    );

    // A write placed before a remount cannot be committed after it: the space
    // may belong to someone else by then. (The remount waits for its copy
    // first, up to SETTLE_WRITES, as for any write into the own segment.)
    let stale = value(8, 4096);
    let started = a
        .put_start(
            vec!["stale".into()],
            vec![4096],
            ReplicateConfig::default(),
            false,
            1,
        )
        .await
        .remove(0)
        .unwrap();
    a.segment_region()
        .unwrap()
        .write(started[0].offset, &stale)
        .unwrap();
    a.remount().await.unwrap();
    let item = PutCompletion {
        key: "stale".into(),
        local_failed: false,
        sources: Vec::new(),
    };
    assert_eq!(
        a.put_complete(vec![item], None).await.remove(0),
        Err(ErrorCode::InvalidWrite)
    );
    assert_eq!(
        a.get_replicas(vec!["stale".into()]).await[0],
        Err(ErrorCode::ObjectNotFound)
    );
    // The objects committed before stay, and new grants serve new writes.
    assert_eq!(stored(&a, "placed").await.unwrap(), bytes);
    until_granted(&a).await;
    let placed_before = a.metrics.placed_writes();
    put(&a, "after", &stale, ReplicateConfig::default(), None)
        .await
        .unwrap();
    assert_eq!(a.metrics.placed_writes(), placed_before + 1);
    assert_eq!(stored(&a, "after").await.unwrap(), stale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_placed_before_a_remount_and_committed_after_it_never_overlaps_the_next() {
    // Found by the HA test: a commit held up by a paused leader was made again
    // with the next one, after the remount, when the same bytes had been
    // granted anew; the next write was placed there, over a served object.
    let c = Cluster::new(MasterConfig::default());
    let a = c.client("host-a", 64 * MIB).await;
    until_granted(&a).await;
    let start = |key: &str| {
        a.put_start(
            vec![key.into()],
            vec![4096],
            ReplicateConfig::default(),
            false,
            1,
        )
    };
    let completion = |key: &str| PutCompletion {
        key: key.into(),
        local_failed: false,
        sources: Vec::new(),
    };
    let stale = start("stale").await.remove(0).unwrap();
    let stale_bytes = value(8, 4096);
    a.segment_region()
        .unwrap()
        .write(stale[0].offset, &stale_bytes)
        .unwrap();
    a.remount().await.unwrap();
    // The remount freed the grant and the master grants the same bytes again:
    // the next write is placed where the stale one lies.
    until_granted(&a).await;
    let next = start("next").await.remove(0).unwrap();
    assert_eq!(
        next[0].offset, stale[0].offset,
        "the test needs the same bytes granted again"
    );
    let next_bytes = value(11, 4096);
    a.segment_region()
        .unwrap()
        .write(next[0].offset, &next_bytes)
        .unwrap();
    // The stale write's commit comes late: refused, though its range lies in
    // a grant again.
    assert_eq!(
        a.put_complete(vec![completion("stale")], None)
            .await
            .remove(0),
        Err(ErrorCode::InvalidWrite)
    );
    assert_eq!(
        a.get_replicas(vec!["stale".into()]).await[0],
        Err(ErrorCode::ObjectNotFound)
    );
    a.put_complete(vec![completion("next")], None)
        .await
        .remove(0)
        .unwrap();
    assert_eq!(stored(&a, "next").await.unwrap(), next_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_remounts_never_see_another_writes_bytes() {
    // Writers place small values in granted space while the client remounts
    // again and again (what a master restart or failover does): each remount
    // frees the grants and the same bytes are granted anew. Every put that
    // succeeded must read back as its own value, and the segment must not
    // hold two objects in one range.
    let c = Cluster::new(MasterConfig::default());
    let a = c.client("host-a", 64 * MIB).await;
    until_granted(&a).await;
    let placed_before = a.metrics.placed_writes();
    let writing = Arc::new(AtomicBool::new(true));
    let remounts = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..3u8 {
        let (a, remounts) = (a.clone(), remounts.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            // At least 150 puts each, and on until a few remounts raced them.
            for i in 0usize.. {
                if i >= 150 && remounts.load(Ordering::Relaxed) >= 5 {
                    break;
                }
                let key = format!("race-{w}-{i}");
                let len = 4096 + (i % 5) * 6000;
                let seed = w.wrapping_mul(71).wrapping_add(i as u8);
                if put(
                    &a,
                    &key,
                    &value(seed, len),
                    ReplicateConfig::default(),
                    None,
                )
                .await
                .is_ok()
                {
                    acked.push((key, seed, len));
                }
                if i % 8 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            acked
        }));
    }
    let remounter = {
        let (a, writing, remounts) = (a.clone(), writing.clone(), remounts.clone());
        tokio::spawn(async move {
            while writing.load(Ordering::Relaxed) {
                a.remount().await.unwrap();
                remounts.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    writing.store(false, Ordering::Relaxed);
    remounter.await.unwrap();
    assert!(
        a.metrics.placed_writes() > placed_before,
        "no write was placed in granted space"
    );
    assert!(acked.len() >= 100, "only {} puts succeeded", acked.len());
    let mut ranges = Vec::new();
    for (key, seed, len) in &acked {
        assert_eq!(
            stored(&a, key).await.unwrap(),
            value(*seed, *len),
            "{key} does not hold its own bytes"
        );
        let list = a.get_replicas(vec![key.clone()]).await.remove(0).unwrap();
        let r = &list.replicas[0];
        ranges.push((r.offset, r.offset + list.size, key.clone()));
        a.release_reads(vec![(key.clone(), r.version)]).await;
    }
    ranges.sort();
    for pair in ranges.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "{} and {} share bytes",
            pair[0].2,
            pair[1].2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existence_of_objects_held_here_is_answered_here_and_follows_removes() {
    let c = Cluster::new(MasterConfig::default());
    let a = c.client("host-a", 64 * MIB).await;
    let b = c.client("host-b", 64 * MIB).await;
    let asked = || {
        c.master
            .metrics
            .requests(mooncake_master::metrics::Op::BatchExistKey)
    };
    for k in ["x", "y"] {
        put(&a, k, &value(1, 8192), ReplicateConfig::default(), None)
            .await
            .unwrap();
    }
    put(
        &b,
        "on-b",
        &value(2, 8192),
        ReplicateConfig::default(),
        None,
    )
    .await
    .unwrap();

    // Held here: no master call.
    let before = asked();
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(a.exist(keys(&["x", "y"])).await, vec![Ok(true), Ok(true)]);
    assert_eq!(asked(), before);
    // Held elsewhere, or nowhere, or a bad key: the master answers those.
    assert_eq!(
        a.exist(keys(&["x", "on-b", "none", ""])).await,
        vec![Ok(true), Ok(true), Ok(false), Ok(false)]
    );
    assert_eq!(asked(), before + 1);

    // A remove through this client is seen at once.
    a.remove(keys(&["x"]), false).await.remove(0).unwrap();
    assert_eq!(a.exist(keys(&["x"])).await, vec![Ok(false)]);
    // One through another host is seen once the sync brings it.
    b.remove(keys(&["y"]), false).await.remove(0).unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if a.exist(keys(&["y"])).await == vec![Ok(false)] {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "a remove made elsewhere reached this host's index");

    // Another host's write into this segment counts once the master completed it.
    let to_a = ReplicateConfig {
        preferred_segments: vec![a.segment().unwrap().name.clone()],
        ..ReplicateConfig::default()
    };
    let memory = Plain::new(MIB);
    put(&b, "from-b", &value(3, 8192), to_a, Some(&memory))
        .await
        .unwrap();
    let mut held = false;
    for _ in 0..100 {
        if a.exist_here(&keys(&["from-b"])) == vec![Some(true)] {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "other hosts' completed writes here are known here");

    // Probes answered here keep the objects warm at the master.
    let before = asked();
    for _ in 0..5 {
        let _ = a.exist(keys(&["from-b"])).await;
    }
    for _ in 0..100 {
        if asked() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(asked() > before, "recency reaches the master");

    // remove_all starts the index over.
    a.remove_all(true).await.unwrap();
    assert_eq!(a.exist(keys(&["from-b"])).await, vec![Ok(false)]);
}
