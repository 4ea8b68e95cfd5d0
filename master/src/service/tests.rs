//! Unit tests of the master's semantics, with paused tokio time.

use std::time::Duration;

use mooncake_proto::*;
use tokio::time::advance;
use uuid::Uuid;

use super::{JobStatus, MasterService};
use crate::allocator::allocated_len;
use crate::config::MasterConfig;

const MIB: u64 = 1 << 20;

fn segment(name: &str, host: &str, size: u64) -> SegmentDesc {
    SegmentDesc {
        id: Uuid::new_v4(),
        name: name.to_string(),
        host: host.to_string(),
        base: 0x7f00_0000_0000,
        size,
        transport_endpoint: format!("{host}:12345"),
        protocol: Protocol::Tcp,
        medium: Default::default(),
    }
}

fn master() -> MasterService {
    MasterService::new(MasterConfig::default().with_shard_count(64))
}

fn put(m: &MasterService, client: ClientId, key: &str, size: u64) -> MResult<Vec<ReplicaDesc>> {
    put_with(m, client, key, size, &ReplicateConfig::default())
}

fn put_with(
    m: &MasterService,
    client: ClientId,
    key: &str,
    size: u64,
    config: &ReplicateConfig,
) -> MResult<Vec<ReplicaDesc>> {
    let r = m.put_start(client, key, size, config, false)?;
    m.put_end(client, key)?;
    Ok(r)
}

#[tokio::test(start_paused = true)]
async fn write_lifecycle_and_existing_keys_keep_their_value() {
    let m = master();
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h1", 64 * MIB)).unwrap();
    let started = m
        .put_start(c, "k", 4096, &ReplicateConfig::default(), false)
        .unwrap();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].status, ReplicaStatus::Processing);
    // Readers never see an unfinished write.
    assert_eq!(m.get_replica_list("k"), Err(ErrorCode::ReplicaIsNotReady));
    assert_eq!(m.exist_key("k"), Ok(false));
    assert_eq!(m.get_size("k"), Err(ErrorCode::ReplicaIsNotReady));
    // Another writer cannot start the same key while the write is young.
    assert_eq!(
        m.put_start(Uuid::new_v4(), "k", 10, &ReplicateConfig::default(), false),
        Err(ErrorCode::ObjectAlreadyExists)
    );
    // Only the writer may end it.
    assert_eq!(
        m.put_end(Uuid::new_v4(), "k"),
        Err(ErrorCode::IllegalClient)
    );
    m.put_end(c, "k").unwrap();
    m.put_end(c, "k").unwrap(); // idempotent
    let list = m.get_replica_list("k").unwrap();
    assert_eq!(list.size, 4096);
    assert_eq!(list.replicas[0].offset, started[0].offset);
    assert_eq!(list.replicas[0].status, ReplicaStatus::Complete);
    assert_eq!(
        list.replicas[0].buffer_address,
        0x7f00_0000_0000 + started[0].offset
    );
    assert_eq!(m.exist_key("k"), Ok(true));
    assert_eq!(m.get_size("k"), Ok(4096));
    // A second put of a complete key reports "already exists" and changes nothing.
    assert_eq!(
        m.put_start(c, "k", 8192, &ReplicateConfig::default(), false),
        Err(ErrorCode::ObjectAlreadyExists)
    );
    let again = m.get_replica_list("k").unwrap();
    assert_eq!(
        (again.size, again.replicas[0].version),
        (4096, list.replicas[0].version)
    );
    assert_eq!(m.put_end(c, "missing"), Err(ErrorCode::ObjectNotFound));
}

#[tokio::test(start_paused = true)]
async fn revoke_frees_space_and_bad_input_gets_error_codes() {
    let m = MasterService::new(
        MasterConfig::default()
            .with_shard_count(8)
            .with_max_key_len(16),
    );
    let c = Uuid::new_v4();
    assert_eq!(
        put(&m, c, "k", 1),
        Err(ErrorCode::NoAvailableHandle),
        "no segment yet"
    );
    m.mount_segment(c, segment("a", "h1", MIB)).unwrap();
    m.put_start(c, "big", MIB, &ReplicateConfig::default(), false)
        .unwrap();
    assert_eq!(
        m.put_revoke(Uuid::new_v4(), "big"),
        Err(ErrorCode::IllegalClient)
    );
    m.put_revoke(c, "big").unwrap();
    assert_eq!(m.get_replica_list("big"), Err(ErrorCode::ObjectNotFound));
    // The space came back: a full-size object fits again.
    put(&m, c, "big2", MIB).unwrap();
    assert_eq!(m.put_revoke(c, "big2"), Err(ErrorCode::InvalidWrite));

    assert_eq!(put(&m, c, "", 1), Err(ErrorCode::InvalidParams));
    assert_eq!(put(&m, c, &"x".repeat(17), 1), Err(ErrorCode::InvalidKey));
    assert_eq!(m.exist_key(""), Ok(false));
    assert_eq!(m.get_size(""), Err(ErrorCode::ObjectNotFound));
    assert_eq!(m.remove("", true), Err(ErrorCode::ObjectNotFound));
    assert_eq!(put(&m, c, "zero", 0), Err(ErrorCode::InvalidParams));
    assert_eq!(put(&m, c, "huge", MIB + 1), Err(ErrorCode::InvalidParams));
    let none = ReplicateConfig::default().with_replica_num(0);
    assert_eq!(
        put_with(&m, c, "r0", 10, &none),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        m.remove_by_regex("([", false),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        m.unmount_segment(c, Uuid::new_v4()),
        Err(ErrorCode::SegmentNotFound)
    );
    assert_eq!(
        m.sync_inventory(Uuid::new_v4(), 0),
        Err(ErrorCode::ClientNotFound)
    );
    let mut bad = segment("b", "h1", 0);
    assert_eq!(
        m.mount_segment(c, bad.clone()),
        Err(ErrorCode::InvalidParams)
    );
    bad.size = MIB;
    bad.id = Uuid::nil();
    assert_eq!(m.mount_segment(c, bad), Err(ErrorCode::InvalidParams));
}

#[tokio::test(start_paused = true)]
async fn replicas_go_to_distinct_segments_and_hosts_and_preferences_win() {
    let m = master();
    let owners: Vec<ClientId> = (0..4).map(|_| Uuid::new_v4()).collect();
    // Two segments on h1, one on h2, one on h3.
    let segs = [
        segment("s0", "h1", 64 * MIB),
        segment("s1", "h1", 64 * MIB),
        segment("s2", "h2", 64 * MIB),
        segment("s3", "h3", 64 * MIB),
    ];
    for (o, s) in owners.iter().zip(&segs) {
        m.mount_segment(*o, s.clone()).unwrap();
    }
    let w = owners[0];
    for i in 0..50 {
        let r = put_with(
            &m,
            w,
            &format!("k{i}"),
            4096,
            &ReplicateConfig::default().with_replica_num(3),
        )
        .unwrap();
        assert_eq!(r.len(), 3);
        let mut seg_ids: Vec<_> = r.iter().map(|d| d.segment_id).collect();
        seg_ids.sort();
        seg_ids.dedup();
        assert_eq!(seg_ids.len(), 3, "distinct segments");
        let hosts: std::collections::HashSet<_> = r
            .iter()
            .map(|d| {
                segs.iter()
                    .find(|s| s.id == d.segment_id)
                    .unwrap()
                    .host
                    .clone()
            })
            .collect();
        assert_eq!(
            hosts.len(),
            3,
            "three hosts are available, so three distinct hosts"
        );
    }
    // More replicas than segments: best effort, success with what fits.
    let r = put_with(
        &m,
        w,
        "many",
        4096,
        &ReplicateConfig::default().with_replica_num(9),
    )
    .unwrap();
    assert_eq!(r.len(), 4);
    for i in 0..20 {
        let cfg = ReplicateConfig::default().with_preferred_segments(vec!["s2".into()]);
        let r = put_with(&m, w, &format!("p{i}"), 4096, &cfg).unwrap();
        assert_eq!(r[0].segment_name, "s2");
    }
    let same = ReplicateConfig {
        prefer_alloc_in_same_node: true,
        ..Default::default()
    };
    let r = put_with(&m, owners[3], "local", 4096, &same).unwrap();
    assert_eq!(r[0].segment_name, "s3");
}

#[tokio::test(start_paused = true)]
async fn leases_protect_from_remove_until_they_expire_and_probes_grant_none() {
    let m = master();
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h", 16 * MIB)).unwrap();
    put(&m, c, "read", 100).unwrap();
    put(&m, c, "probed", 100).unwrap();
    assert_eq!(m.get_replica_list("read").unwrap().lease_ttl_ms, 10_000);
    for _ in 0..100 {
        assert_eq!(m.exist_key("probed"), Ok(true));
    }
    assert_eq!(m.remove("read", false), Err(ErrorCode::ObjectHasLease));
    m.remove("probed", false)
        .expect("exist probes grant no lease");
    advance(Duration::from_millis(9_000)).await;
    assert_eq!(m.remove("read", false), Err(ErrorCode::ObjectHasLease));
    advance(Duration::from_millis(1_001)).await;
    m.remove("read", false).unwrap();
    assert_eq!(m.remove("read", false), Err(ErrorCode::ObjectNotFound));
    put(&m, c, "forced", 100).unwrap();
    m.get_replica_list("forced").unwrap();
    m.remove("forced", true).unwrap();
    // A hard pin protects from eviction, not from a remove (as upstream).
    put_with(
        &m,
        c,
        "pinned",
        100,
        &ReplicateConfig::default().with_hard_pin(true),
    )
    .unwrap();
    m.remove("pinned", false).unwrap();
}

#[tokio::test(start_paused = true)]
async fn remove_all_and_regex_skip_leased_objects_unless_forced() {
    let m = master();
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h", 16 * MIB)).unwrap();
    for i in 0..10 {
        put(&m, c, &format!("layer0_{i}"), 100).unwrap();
        put(&m, c, &format!("layer1_{i}"), 100).unwrap();
    }
    m.get_replica_list("layer0_0").unwrap();
    assert_eq!(m.remove_by_regex("^layer0_", false), Ok(9));
    assert_eq!(m.exist_key("layer0_0"), Ok(true));
    assert_eq!(m.exist_key("layer1_3"), Ok(true));
    assert_eq!(m.remove_all(false), 10);
    assert_eq!(m.remove_all(true), 1);
    assert_eq!(m.gauges().key_count, 0);
    // The leased object's space comes back when its lease ends.
    assert!(m.gauges().allocated_bytes > 0);
    advance(Duration::from_millis(10_001)).await;
    m.ping(c);
    m.housekeeping();
    assert_eq!(m.gauges().allocated_bytes, 0);
    assert_eq!(m.all_segments().len(), 1, "the client is alive");
}

#[tokio::test(start_paused = true)]
async fn a_soft_pin_lifetime_without_a_soft_pin_is_refused() {
    let m = master();
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h", 16 * MIB)).unwrap();
    let mut cfg = ReplicateConfig {
        soft_pin_ttl_ms: Some(5_000),
        ..Default::default()
    };
    assert_eq!(
        put_with(&m, c, "k", 100, &cfg),
        Err(ErrorCode::InvalidParams)
    );
    cfg.with_soft_pin = true;
    put_with(&m, c, "k", 100, &cfg).unwrap();
}

#[tokio::test(start_paused = true)]
async fn forced_remove_keeps_leased_space_until_the_lease_ends() {
    let m = master();
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h", MIB)).unwrap();
    let first = put(&m, c, "k", MIB).unwrap();
    let lease = m.get_replica_list("k").unwrap();
    m.remove("k", true).unwrap();
    // Gone from the index at once...
    assert_eq!(m.exist_key("k"), Ok(false));
    assert_eq!(m.get_replica_list("k"), Err(ErrorCode::ObjectNotFound));
    // ...but a reader holding the lease may still be copying: its bytes are not
    // handed to a new writer (the segment has no other room).
    assert_eq!(put(&m, c, "k", MIB), Err(ErrorCode::NoAvailableHandle));
    advance(Duration::from_millis(lease.lease_ttl_ms - 1)).await;
    m.ping(c);
    m.housekeeping();
    assert_eq!(put(&m, c, "k", MIB), Err(ErrorCode::NoAvailableHandle));
    advance(Duration::from_millis(2)).await;
    m.housekeeping();
    let again = put(&m, c, "k", MIB).unwrap();
    assert_eq!(again[0].offset, first[0].offset);
    // An unleased object's space is reused at once.
    m.remove("k", true).unwrap();
    put(&m, c, "k2", MIB).unwrap();
}

#[tokio::test(start_paused = true)]
async fn eviction_spares_leased_pinned_and_in_flight_objects_and_takes_the_coldest() {
    let m = MasterService::new(
        MasterConfig::default()
            .with_shard_count(16)
            .with_allow_evict_soft_pinned(true),
    );
    let c = Uuid::new_v4();
    let size = 64 << 10;
    m.mount_segment(c, segment("a", "h", 160 * size)).unwrap();
    put_with(
        &m,
        c,
        "hard",
        size,
        &ReplicateConfig::default().with_hard_pin(true),
    )
    .unwrap();
    put_with(
        &m,
        c,
        "soft",
        size,
        &ReplicateConfig::default().with_soft_pin(true),
    )
    .unwrap();
    m.put_start(c, "inflight", size, &ReplicateConfig::default(), false)
        .unwrap();
    for i in 0..150 {
        put(&m, c, &format!("k{i}"), size).unwrap();
        advance(Duration::from_millis(10)).await;
    }
    m.get_replica_list("k0").unwrap(); // leased (and recent)
    advance(Duration::from_millis(10)).await;
    m.exist_key("k1").unwrap(); // probed: recent, not leased
    advance(Duration::from_millis(10)).await;
    // The segment is full; the next puts succeed through eviction.
    for i in 0..100 {
        put(&m, c, &format!("new{i}"), size).unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    assert!(
        m.metrics
            .evicted_keys
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 93
    );
    assert_eq!(m.exist_key("hard"), Ok(true));
    assert_eq!(m.exist_key("k0"), Ok(true), "leased object evicted");
    assert_eq!(
        m.exist_key("soft"),
        Ok(true),
        "soft pin only goes in a second pass"
    );
    m.put_end(c, "inflight")
        .expect("in-flight write survived eviction");
    // Approximate LRU: the oldest unleased objects went first, recent ones stayed.
    assert_eq!(m.exist_key("k2"), Ok(false));
    assert_eq!(m.exist_key("k1"), Ok(true), "recently probed object kept");
    assert_eq!(m.exist_key("k149"), Ok(true));
}

#[tokio::test(start_paused = true)]
async fn probe_storm_cannot_block_eviction() {
    let m = master();
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h", 4 * MIB)).unwrap();
    let keys: Vec<String> = (0..1024).map(|i| format!("k{i}")).collect();
    for k in &keys {
        put(&m, c, k, 4096).unwrap();
    }
    for round in 0..50 {
        // The engine probes every key before each put (upstream #2187 storm).
        for k in &keys {
            let _ = m.exist_key(k);
        }
        put(&m, c, &format!("fresh{round}"), 4096).expect("put succeeds through eviction");
        advance(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_evictable_fails_fast_with_no_available_handle() {
    let m = master();
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h", MIB)).unwrap();
    for i in 0..16 {
        put(&m, c, &format!("k{i}"), 64 << 10).unwrap();
        m.get_replica_list(&format!("k{i}")).unwrap();
    }
    let attempts_before = m
        .metrics
        .eviction_attempts
        .load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..1000 {
        assert_eq!(put(&m, c, "x", 64 << 10), Err(ErrorCode::NoAvailableHandle));
    }
    let attempts = m
        .metrics
        .eviction_attempts
        .load(std::sync::atomic::Ordering::Relaxed)
        - attempts_before;
    assert!(
        attempts <= 2,
        "a futile eviction is not repeated per put ({attempts} passes)"
    );
    // Once the leases run out, eviction frees space again.
    advance(Duration::from_secs(11)).await;
    put(&m, c, "x", 64 << 10).unwrap();
}

#[tokio::test(start_paused = true)]
async fn watermark_eviction_brings_usage_down() {
    let m = MasterService::new(
        MasterConfig::default()
            .with_shard_count(8)
            .with_high_watermark(0.5)
            .with_eviction_ratio(0.1),
    );
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h", 10 * MIB)).unwrap();
    for i in 0..80 {
        put(&m, c, &format!("k{i}"), 100 << 10).unwrap();
    }
    let before = m.gauges().allocated_bytes;
    assert!(m.evict_if_needed() > 0);
    let after = m.gauges().allocated_bytes;
    assert!(after < before);
    assert!((after as f64) <= 10.0 * MIB as f64 * 0.45, "{after}");
}

#[tokio::test(start_paused = true)]
async fn silent_clients_expire_with_their_objects() {
    let m = master();
    let (alive, dead) = (Uuid::new_v4(), Uuid::new_v4());
    m.mount_segment(alive, segment("alive", "h1", 8 * MIB))
        .unwrap();
    m.mount_segment(dead, segment("dead", "h2", 8 * MIB))
        .unwrap();
    let two = ReplicateConfig::default().with_replica_num(2);
    put_with(&m, alive, "both", 100, &two).unwrap();
    put_with(
        &m,
        alive,
        "only_dead",
        100,
        &ReplicateConfig::default().with_preferred_segments(vec!["dead".into()]),
    )
    .unwrap();
    assert_eq!(m.ping(dead).status, ClientStatus::Ok);
    for _ in 0..11 {
        advance(Duration::from_secs(1)).await;
        m.ping(alive);
        m.housekeeping();
    }
    assert_eq!(m.ping(dead).status, ClientStatus::NeedRemount);
    assert_eq!(m.ping(alive).status, ClientStatus::Ok);
    assert_eq!(
        m.get_replica_list("only_dead"),
        Err(ErrorCode::ObjectNotFound)
    );
    let both = m.get_replica_list("both").unwrap();
    assert_eq!(both.replicas.len(), 1);
    assert_eq!(both.replicas[0].segment_name, "alive");
    assert_eq!(m.all_segments().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn restarted_master_rebuilds_metadata_from_inventories() {
    let old = master();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (sa, sb) = (segment("a", "h1", 8 * MIB), segment("b", "h2", 8 * MIB));
    old.mount_segment(a, sa.clone()).unwrap();
    old.mount_segment(b, sb.clone()).unwrap();
    let two = ReplicateConfig::default().with_replica_num(2);
    for i in 0..200 {
        let cfg = if i % 2 == 0 {
            two.clone()
        } else {
            ReplicateConfig::default()
        };
        put_with(&old, a, &format!("k{i}"), 1000 + i, &cfg).unwrap();
    }
    let inv_a = old.fetch_inventory(a).unwrap().entries;
    let inv_b = old.fetch_inventory(b).unwrap().entries;
    assert_eq!(inv_a.len() + inv_b.len(), 300);

    // The master restarts with nothing; the clients notice and remount.
    let new = master();
    assert_eq!(new.ping(a).status, ClientStatus::NeedRemount);
    // Client a sends its inventory in two chunks.
    let (first, rest) = inv_a.split_at(inv_a.len() / 2);
    let r = new
        .remount_segment(a, vec![sa.clone()], first.to_vec(), false)
        .unwrap();
    assert_eq!(r.restored, 0);
    let r = new.remount_segment(a, vec![], rest.to_vec(), true).unwrap();
    assert!(r.rejected.is_empty());
    let r = new
        .remount_segment(b, vec![sb.clone()], inv_b.clone(), true)
        .unwrap();
    assert!(r.rejected.is_empty());
    assert_eq!(new.ping(a).status, ClientStatus::Ok);
    for i in 0..200u64 {
        let key = format!("k{i}");
        let was = old.query_key(&key).unwrap();
        let now = new.get_replica_list(&key).unwrap();
        assert_eq!(now.size, 1000 + i);
        let mut a_offsets: Vec<_> = was
            .replicas
            .iter()
            .map(|r| (r.segment_id, r.offset))
            .collect();
        let mut b_offsets: Vec<_> = now
            .replicas
            .iter()
            .map(|r| (r.segment_id, r.offset))
            .collect();
        a_offsets.sort();
        b_offsets.sort();
        assert_eq!(a_offsets, b_offsets, "{key}");
    }
    // New writes never land on restored bytes.
    let restored: Vec<(SegmentId, u64, u64)> = inv_a
        .iter()
        .chain(&inv_b)
        .map(|e| (e.segment_id, e.offset, e.offset + e.size))
        .collect();
    for i in 0..500 {
        for r in put(&new, a, &format!("n{i}"), 4096).unwrap() {
            for (seg, start, end) in &restored {
                assert!(r.segment_id != *seg || r.offset + 4096 <= *start || r.offset >= *end);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn remount_rejects_overlaps_and_keeps_newest_versions() {
    let m = master();
    let c = Uuid::new_v4();
    let s = segment("a", "h", MIB);
    let entry = |key: &str, offset: u64, size: u64, version: u64| InventoryEntry {
        segment_id: s.id,
        key: key.into(),
        offset,
        size,
        version,
    };
    let inventory = vec![
        entry("old", 0, 4096, 1),
        entry("new", 0, 4096, 2), // overlaps "old", newer: wins
        entry("dup", 8192, 100, 3),
        entry("dup", 16384, 100, 5),  // same key twice: newest wins
        entry("outside", MIB, 64, 9), // beyond the segment
        entry("misaligned", 100, 64, 9),
    ];
    let stranger = InventoryEntry {
        segment_id: Uuid::new_v4(),
        ..entry("x", 0, 1, 1)
    };
    let mut all = inventory.clone();
    all.push(stranger);
    let report = m.remount_segment(c, vec![s.clone()], all, true).unwrap();
    assert_eq!(report.restored, 2);
    let rejected: Vec<&str> = report.rejected.iter().map(|e| e.key.as_str()).collect();
    for k in ["old", "outside", "misaligned", "x"] {
        assert!(rejected.contains(&k), "{k} in {rejected:?}");
    }
    assert_eq!(m.get_replica_list("new").unwrap().replicas[0].offset, 0);
    assert_eq!(m.get_replica_list("dup").unwrap().replicas[0].offset, 16384);
    assert_eq!(m.get_replica_list("old"), Err(ErrorCode::ObjectNotFound));
}

#[tokio::test(start_paused = true)]
async fn a_remount_cannot_take_over_a_value_written_through_this_master() {
    let m = master();
    let owner = Uuid::new_v4();
    m.mount_segment(owner, segment("real", "h1", 8 * MIB))
        .unwrap();
    put(&m, owner, "victim", 4096).unwrap();
    let genuine = m.get_replica_list("victim").unwrap();
    // An invented client presents a fresh segment claiming a newer version of the
    // key, and one claiming a version from the far future.
    let intruder = Uuid::new_v4();
    let fake = segment("fake", "h9", 8 * MIB);
    let claim = |key: &str, offset: u64, version: u64| InventoryEntry {
        segment_id: fake.id,
        key: key.into(),
        offset,
        size: 4096,
        version,
    };
    let report = m
        .remount_segment(
            intruder,
            vec![fake.clone()],
            vec![
                claim("victim", 0, genuine.replicas[0].version + 1),
                claim("future", 8192, u64::MAX / 2),
            ],
            true,
        )
        .unwrap();
    assert_eq!(report.restored, 0);
    assert_eq!(report.rejected.len(), 2);
    let now = m.get_replica_list("victim").unwrap();
    assert_eq!(now.replicas.len(), 1);
    assert_eq!(now.replicas[0].segment_id, genuine.replicas[0].segment_id);
    assert_eq!(now.replicas[0].version, genuine.replicas[0].version);
    assert_eq!(m.get_replica_list("future"), Err(ErrorCode::ObjectNotFound));
    // A segment of another client cannot be remounted by anyone else.
    let stolen = m
        .all_segments()
        .into_iter()
        .find(|d| d.name == "real")
        .unwrap();
    assert_eq!(
        m.remount_segment(intruder, vec![stolen], vec![], true),
        Err(ErrorCode::SegmentAlreadyExists)
    );
}

#[tokio::test(start_paused = true)]
async fn inventory_changes_reach_the_segment_owner() {
    let m = master();
    let (owner, writer) = (Uuid::new_v4(), Uuid::new_v4());
    let s = segment("owned", "h1", 8 * MIB);
    m.mount_segment(owner, s.clone()).unwrap();
    m.mount_segment(writer, segment("w", "h2", 8 * MIB))
        .unwrap();
    let first = m.sync_inventory(owner, 0).unwrap();
    assert!(first.resync_required);
    let snap = m.fetch_inventory(owner).unwrap();
    assert!(snap.entries.is_empty());
    let cfg = ReplicateConfig::default().with_preferred_segments(vec!["owned".into()]);
    let r = put_with(&m, writer, "remote-write", 500, &cfg).unwrap();
    let delta = m.sync_inventory(owner, snap.seq).unwrap();
    assert_eq!(
        delta.changes,
        vec![InventoryChange::Added(InventoryEntry {
            segment_id: s.id,
            key: "remote-write".into(),
            offset: r[0].offset,
            size: 500,
            version: r[0].version,
        })]
    );
    m.remove("remote-write", false).unwrap();
    let delta2 = m.sync_inventory(owner, delta.seq).unwrap();
    assert_eq!(
        delta2.changes,
        vec![InventoryChange::Removed {
            segment_id: s.id,
            offset: r[0].offset,
            version: r[0].version
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn abandoned_writes_are_taken_over_after_30s_and_reclaimed_after_600s() {
    let m = master();
    let (zombie, next) = (Uuid::new_v4(), Uuid::new_v4());
    m.mount_segment(next, segment("a", "h", MIB)).unwrap();
    m.put_start(zombie, "k", 512 << 10, &ReplicateConfig::default(), false)
        .unwrap();
    advance(Duration::from_secs(29)).await;
    assert_eq!(put(&m, next, "k", 100), Err(ErrorCode::ObjectAlreadyExists));
    advance(Duration::from_secs(2)).await;
    put(&m, next, "k", 100).expect("take-over after the discard timeout");
    assert_eq!(
        m.put_end(zombie, "k"),
        Ok(()),
        "the key is complete now; zombie's end is a no-op"
    );
    // The zombie's 512 KiB stay reserved (it may still be writing) until 600 s.
    assert!(m.gauges().allocated_bytes >= 512 << 10);
    advance(Duration::from_secs(600)).await;
    m.ping(next);
    m.housekeeping();
    assert_eq!(m.all_segments().len(), 1);
    assert!(m.gauges().allocated_bytes < 512 << 10);
    // A write nobody ever ends is reclaimed too.
    m.put_start(
        zombie,
        "never",
        256 << 10,
        &ReplicateConfig::default(),
        false,
    )
    .unwrap();
    advance(Duration::from_secs(601)).await;
    m.ping(next);
    m.housekeeping();
    assert_eq!(m.get_replica_list("never"), Err(ErrorCode::ObjectNotFound));
    assert_eq!(m.gauges().processing_count, 0);
}

#[tokio::test(start_paused = true)]
async fn upsert_replaces_atomically_and_respects_read_leases() {
    let m = master();
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h", MIB)).unwrap();
    let v1 = put(&m, c, "k", 400 << 10).unwrap();
    let lease = m.get_replica_list("k").unwrap();
    let v2 = m
        .put_start(c, "k", 400 << 10, &ReplicateConfig::default(), true)
        .unwrap();
    assert_ne!(
        v1[0].offset, v2[0].offset,
        "a leased value is never overwritten in place"
    );
    // Readers keep the old value until the upsert ends.
    assert_eq!(
        m.get_replica_list("k").unwrap().replicas[0].offset,
        v1[0].offset
    );
    m.put_end(c, "k").unwrap();
    let now = m.get_replica_list("k").unwrap();
    assert_eq!(now.replicas[0].offset, v2[0].offset);
    assert!(now.replicas[0].version > lease.replicas[0].version);
    // The old bytes stay reserved while the old lease lasts.
    assert_eq!(
        put(&m, c, "other", 400 << 10).map(|_| ()),
        Err(ErrorCode::NoAvailableHandle)
    );
    advance(Duration::from_secs(11)).await;
    m.ping(c);
    m.housekeeping();
    put(&m, c, "other", 400 << 10).expect("old value's space released after its lease");
    assert_eq!(
        m.get_replica_list("k").unwrap().replicas[0].offset,
        v2[0].offset
    );
    m.remove("other", true).unwrap();
    // Upsert of a missing key inserts; revoking an upsert keeps the old value.
    put(&m, c, "fresh", 10).ok();
    m.put_start(c, "fresh", 20, &ReplicateConfig::default(), true)
        .unwrap();
    m.put_revoke(c, "fresh").unwrap();
    assert_eq!(m.get_size("fresh"), Ok(10));
}

#[tokio::test(start_paused = true)]
async fn uniform_kv_sizes_fill_the_pool() {
    let m = master();
    let c = Uuid::new_v4();
    let capacity = 64 * MIB;
    m.mount_segment(c, segment("a", "h", capacity)).unwrap();
    let size = 16 << 10;
    let mut n = 0;
    while m
        .put_start(
            c,
            &format!("k{n}"),
            size,
            &ReplicateConfig::default(),
            false,
        )
        .is_ok()
    {
        m.put_end(c, &format!("k{n}")).unwrap();
        n += 1;
        if n > 10_000 {
            break;
        }
    }
    // Eviction kicked in only when the segment was completely full.
    let utilisation = m.gauges().allocated_bytes as f64 / capacity as f64;
    assert!(n >= (capacity / size) as usize, "{n}");
    assert!(utilisation > 0.9, "{utilisation}");
}

#[tokio::test(start_paused = true)]
async fn failed_replicas_are_dropped_at_put_end_and_their_space_comes_back_later() {
    let m = master();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let (sa, sb) = (segment("a", "h1", 4 * MIB), segment("b", "h2", 4 * MIB));
    m.mount_segment(a, sa.clone()).unwrap();
    m.mount_segment(b, sb.clone()).unwrap();
    let two = ReplicateConfig::default().with_replica_num(2);
    let r = m.put_start(a, "k", MIB, &two, false).unwrap();
    assert_eq!(r.len(), 2);
    m.put_end_except(a, "k", &[sb.id]).unwrap();
    let list = m.get_replica_list("k").unwrap();
    assert_eq!(list.replicas.len(), 1, "the failed replica is not listed");
    assert_eq!(list.replicas[0].segment_id, sa.id);
    // Every replica failed: nothing becomes readable and the key is free again.
    m.put_start(a, "gone", MIB, &two, false).unwrap();
    assert_eq!(
        m.put_end_except(a, "gone", &[sa.id, sb.id]),
        Err(ErrorCode::TransferFail)
    );
    assert_eq!(m.exist_key("gone"), Ok(false));
    m.put_start(a, "gone", MIB, &ReplicateConfig::default(), false)
        .unwrap();
    m.put_revoke(a, "gone").unwrap();
    // The failed space returns after the grace period.
    let used = |m: &MasterService| m.segment_usage().iter().map(|(_, u)| *u).sum::<u64>();
    let before = used(&m);
    for _ in 0..2 {
        advance(Duration::from_millis(5_500)).await;
        m.ping(a);
        m.ping(b);
    }
    m.housekeeping();
    assert_eq!(used(&m), before - 3 * MIB, "three failed replicas freed");
    // A remount after a restart updates where the segment is reached.
    let mut moved = sa.clone();
    moved.transport_endpoint = "10.0.0.9:4000".into();
    m.mount_segment(a, moved).unwrap();
    assert_eq!(
        m.get_replica_list("k").unwrap().replicas[0].transport_endpoint,
        "10.0.0.9:4000"
    );
}

#[tokio::test(start_paused = true)]
async fn replica_clear_drops_only_the_callers_unleased_replicas() {
    let m = master();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    m.mount_segment(a, segment("a1", "h1", 64 * MIB)).unwrap();
    m.mount_segment(a, segment("a2", "h1", 64 * MIB)).unwrap();
    m.mount_segment(b, segment("b1", "h2", 64 * MIB)).unwrap();
    let two = ReplicateConfig::default().with_replica_num(2);
    let on_a = ReplicateConfig {
        preferred_segments: vec!["a1".into()],
        ..Default::default()
    };
    put_with(&m, a, "shared", 4096, &two).unwrap();
    put_with(&m, a, "mine", 4096, &on_a).unwrap();
    let on_b = ReplicateConfig {
        preferred_segments: vec!["b1".into()],
        ..Default::default()
    };
    put_with(&m, b, "theirs", 4096, &on_b).unwrap();
    put_with(&m, a, "leased", 4096, &on_a).unwrap();
    let used_before = m.get_replica_list("leased").unwrap(); // grants a lease
    assert_eq!(used_before.replicas.len(), 1);
    let keys: Vec<String> = ["shared", "mine", "theirs", "leased", "missing"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // Another segment name of the client clears nothing it does not hold there.
    assert_eq!(
        m.batch_replica_clear(&["mine".to_string()], a, "a2"),
        Vec::<String>::new()
    );
    let cleared = m.batch_replica_clear(&keys, a, "");
    assert_eq!(cleared, vec!["shared".to_string(), "mine".to_string()]);
    // "shared" keeps its replica on b's segment; "mine" is gone; others untouched.
    let shared = m.get_replica_list("shared").unwrap();
    assert!(shared.replicas.iter().all(|r| r.segment_name == "b1"));
    assert_eq!(m.exist_key("mine"), Ok(false));
    assert_eq!(m.exist_key("theirs"), Ok(true));
    assert_eq!(m.exist_key("leased"), Ok(true));
    // An unknown client clears nothing.
    assert!(m.batch_replica_clear(&keys, Uuid::new_v4(), "").is_empty());
    // Once the lease ran out, the leased object can be cleared too.
    advance(Duration::from_secs(11)).await;
    assert_eq!(
        m.batch_replica_clear(&keys, a, "a1"),
        vec!["leased".to_string()]
    );
}

#[tokio::test(start_paused = true)]
async fn copy_and_move_tasks_run_through_the_source_owner() {
    let m = master();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let seg_a = segment("a", "h1", 64 * MIB);
    let seg_b = segment("b", "h2", 64 * MIB);
    m.mount_segment(a, seg_a.clone()).unwrap();
    m.mount_segment(b, seg_b.clone()).unwrap();
    let cfg = ReplicateConfig {
        preferred_segments: vec!["a".into()],
        ..ReplicateConfig::default()
    };
    put_with(&m, a, "k", 4096, &cfg).unwrap();

    // Validation as upstream.
    assert_eq!(m.create_copy_task("k", &[]), Err(ErrorCode::InvalidParams));
    assert_eq!(
        m.create_copy_task("k", &["nope".into()]),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        m.create_copy_task("missing", &["b".into()]),
        Err(ErrorCode::ObjectNotFound)
    );
    assert_eq!(
        m.create_move_task("k", "a", "a"),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        m.create_move_task("k", "b", "a"),
        Err(ErrorCode::InvalidParams),
        "no replica on b to move"
    );

    // A copy is queued for the owner of the source replica.
    let id = m.create_copy_task("k", &["b".into()]).unwrap();
    let info = m.query_task(&id).unwrap();
    assert_eq!(info.state, TaskState::Pending);
    assert_eq!(info.kind, TaskKind::ReplicaCopy);
    assert_eq!(info.assigned_client, a);
    assert_eq!(m.ping(a).pending_tasks, 1);
    assert_eq!(m.ping(b).pending_tasks, 0);
    let tasks = m.fetch_tasks(a, 8);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].source, seg_a.id);
    assert_eq!(m.query_task(&id).unwrap().state, TaskState::Processing);

    // Only the owner of the source may copy from it.
    assert_eq!(
        m.replica_copy_start(b, "k", seg_a.id, &tasks[0].targets, false),
        Err(ErrorCode::IllegalClient)
    );
    let plan = m
        .replica_copy_start(a, "k", seg_a.id, &tasks[0].targets, false)
        .unwrap();
    assert_eq!(plan.source.segment_id, seg_a.id);
    assert_eq!(plan.targets.len(), 1);
    assert_eq!(plan.targets[0].segment_id, seg_b.id);
    assert_eq!(plan.targets[0].status, ReplicaStatus::Processing);
    // The copy keeps the object's version; its writes carry one issued now,
    // newer than the object's, so that a holder that remounted with a later
    // master (a higher floor) refuses them, and this master's holders do not.
    assert_eq!(plan.targets[0].version, plan.source.version);
    assert!(plan.write_version > plan.source.version);
    let floor = m
        .remount_segment(b, vec![seg_b.clone()], Vec::new(), true)
        .unwrap()
        .version_floor;
    assert!(
        floor >= plan.write_version,
        "a later floor refuses the copy"
    );
    // One copy per key at a time; the object cannot be removed meanwhile (unless
    // forced) and stays readable from its source.
    assert_eq!(
        m.replica_copy_start(a, "k", seg_a.id, &tasks[0].targets, false),
        Err(ErrorCode::ObjectHasReplicationTask)
    );
    assert_eq!(
        m.remove("k", false),
        Err(ErrorCode::ObjectHasReplicationTask)
    );
    assert_eq!(m.query_key("k").unwrap().replicas.len(), 1);
    m.replica_copy_end(a, "k", &[]).unwrap();
    let replicas: Vec<SegmentId> = m
        .query_key("k")
        .unwrap()
        .replicas
        .iter()
        .map(|r| r.segment_id)
        .collect();
    assert_eq!(replicas.len(), 2);
    assert!(replicas.contains(&seg_b.id));
    m.complete_task(a, id, true, "ok".into()).unwrap();
    assert_eq!(m.query_task(&id).unwrap().state, TaskState::Success);

    // A move drops the source once the target is written.
    let c = Uuid::new_v4();
    let seg_c = segment("c", "h3", 64 * MIB);
    m.mount_segment(c, seg_c.clone()).unwrap();
    let id = m.create_move_task("k", "b", "c").unwrap();
    assert_eq!(m.query_task(&id).unwrap().assigned_client, b);
    let t = m.fetch_tasks(b, 8).pop().unwrap();
    let plan = m
        .replica_copy_start(b, "k", t.source, &t.targets, true)
        .unwrap();
    assert_eq!(plan.targets[0].segment_id, seg_c.id);
    m.replica_copy_end(b, "k", &[]).unwrap();
    let names: Vec<String> = m
        .query_key("k")
        .unwrap()
        .replicas
        .iter()
        .map(|r| r.segment_name.clone())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"a".to_string()) && names.contains(&"c".to_string()));
    let used_b = m
        .segment_usage()
        .into_iter()
        .find(|(d, _)| d.id == seg_b.id)
        .unwrap()
        .1;
    assert_eq!(used_b, 0, "the moved-away replica's space is freed");
}

#[tokio::test(start_paused = true)]
async fn failed_or_overtaken_copies_leave_the_object_intact() {
    let m = master();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let seg_a = segment("a", "h1", 64 * MIB);
    m.mount_segment(a, seg_a.clone()).unwrap();
    m.mount_segment(b, segment("b", "h2", 64 * MIB)).unwrap();
    let cfg = ReplicateConfig {
        preferred_segments: vec!["a".into()],
        ..ReplicateConfig::default()
    };
    put_with(&m, a, "k", 4096, &cfg).unwrap();
    let targets = vec!["b".to_string()];

    // Every target failed: TRANSFER_FAIL, the object keeps its one replica.
    let plan = m
        .replica_copy_start(a, "k", seg_a.id, &targets, true)
        .unwrap();
    assert_eq!(
        m.replica_copy_end(a, "k", &[plan.targets[0].segment_id]),
        Err(ErrorCode::TransferFail)
    );
    assert_eq!(m.query_key("k").unwrap().replicas.len(), 1);
    assert_eq!(
        m.replica_copy_end(a, "k", &[]),
        Err(ErrorCode::ObjectNoReplicationTask)
    );

    // Revoke frees the target.
    m.replica_copy_start(a, "k", seg_a.id, &targets, false)
        .unwrap();
    m.replica_copy_revoke(a, "k").unwrap();
    assert_eq!(m.query_key("k").unwrap().replicas.len(), 1);
    m.remove("k", false).unwrap();

    // The object is replaced while copying: the copy is discarded.
    put_with(&m, a, "k", 4096, &cfg).unwrap();
    m.replica_copy_start(a, "k", seg_a.id, &targets, false)
        .unwrap();
    m.remove("k", true).unwrap();
    put_with(&m, a, "k", 8192, &cfg).unwrap();
    assert_eq!(
        m.replica_copy_end(a, "k", &[]),
        Err(ErrorCode::ReplicaIsGone)
    );
    let list = m.query_key("k").unwrap();
    assert_eq!((list.size, list.replicas.len()), (8192, 1));

    // A copier that never ends: the copy is abandoned after the release timeout.
    m.replica_copy_start(a, "k", seg_a.id, &targets, false)
        .unwrap();
    advance(m.config().put_start_release_timeout + Duration::from_secs(1)).await;
    m.ping(a);
    m.ping(b);
    m.housekeeping();
    assert_eq!(
        m.replica_copy_end(a, "k", &[]),
        Err(ErrorCode::ObjectNoReplicationTask)
    );
    m.remove("k", false).unwrap();
}

/// Plays the real clients' part: runs every queued task of `clients`.
fn run_tasks(m: &MasterService, clients: &[ClientId]) {
    for &c in clients {
        for t in m.fetch_tasks(c, 64) {
            let ok = m
                .replica_copy_start(
                    c,
                    &t.key,
                    t.source,
                    &t.targets,
                    t.kind == TaskKind::ReplicaMove,
                )
                .and_then(|_| m.replica_copy_end(c, &t.key, &[]));
            m.complete_task(c, t.id, ok.is_ok(), format!("{ok:?}"))
                .unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn drain_job_moves_every_object_off_and_keeps_the_segment_out_of_service() {
    let m = master();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let seg_a = segment("a", "h1", 64 * MIB);
    m.mount_segment(a, seg_a.clone()).unwrap();
    m.mount_segment(b, segment("b", "h2", 64 * MIB)).unwrap();
    let on_a = ReplicateConfig {
        preferred_segments: vec!["a".into()],
        ..ReplicateConfig::default()
    };
    let keys: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
    for k in &keys {
        put_with(&m, a, k, 4096, &on_a).unwrap();
    }

    assert_eq!(
        m.create_drain_job(&[], &[], 4),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        m.create_drain_job(&["zz".into()], &[], 4),
        Err(ErrorCode::SegmentNotFound)
    );
    assert_eq!(
        m.create_drain_job(&["a".into()], &["a".into()], 4),
        Err(ErrorCode::InvalidParams)
    );
    let id = m.create_drain_job(&["a".into()], &[], 2).unwrap();
    assert_eq!(
        m.create_drain_job(&["a".into()], &[], 2),
        Err(ErrorCode::InvalidParams),
        "already being drained"
    );
    // No new object lands on a draining segment.
    put_with(&m, a, "late", 4096, &on_a).unwrap();
    assert_eq!(m.query_key("late").unwrap().replicas[0].segment_name, "b");

    for _ in 0..20 {
        m.drive_drain_jobs();
        let info = m.query_drain_job(&id).unwrap();
        assert!(info.active_units <= 2, "max_concurrency is honoured");
        if info.status != JobStatus::Running {
            break;
        }
        run_tasks(&m, &[a, b]);
    }
    let info = m.query_drain_job(&id).unwrap();
    assert_eq!(info.status, JobStatus::Succeeded, "{}", info.message);
    assert_eq!(info.succeeded_units, keys.len() as u64);
    assert_eq!(info.failed_units, 0);
    assert_eq!(info.migrated_bytes, 4096 * keys.len() as u64);
    assert_eq!(info.segments, vec!["a".to_string()]);
    for k in &keys {
        let list = m.query_key(k).unwrap();
        assert_eq!(list.replicas.len(), 1);
        assert_eq!(list.replicas[0].segment_name, "b");
    }
    let used_a = m
        .segment_usage()
        .into_iter()
        .find(|(d, _)| d.id == seg_a.id)
        .unwrap()
        .1;
    assert_eq!(used_a, 0);
    put_with(&m, a, "after", 4096, &on_a).unwrap();
    assert_eq!(m.query_key("after").unwrap().replicas[0].segment_name, "b");
    assert_eq!(m.cancel_drain_job(&id), Err(ErrorCode::InvalidParams));
    assert_eq!(
        m.query_drain_job(&Uuid::new_v4()),
        Err(ErrorCode::JobNotFound)
    );
}

#[tokio::test(start_paused = true)]
async fn cancelled_drain_puts_the_segment_back_in_service() {
    let m = master();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    m.mount_segment(a, segment("a", "h1", 64 * MIB)).unwrap();
    m.mount_segment(b, segment("b", "h2", 64 * MIB)).unwrap();
    let on_a = ReplicateConfig {
        preferred_segments: vec!["a".into()],
        ..ReplicateConfig::default()
    };
    for i in 0..4 {
        put_with(&m, a, &format!("k{i}"), 4096, &on_a).unwrap();
    }
    let id = m.create_drain_job(&["a".into()], &["b".into()], 1).unwrap();
    m.drive_drain_jobs();
    assert_eq!(m.query_drain_job(&id).unwrap().active_units, 1);
    m.cancel_drain_job(&id).unwrap();
    m.cancel_drain_job(&id).unwrap();
    let info = m.query_drain_job(&id).unwrap();
    assert_eq!(info.status, JobStatus::Canceled);
    put_with(&m, a, "new", 4096, &on_a).unwrap();
    assert_eq!(m.query_key("new").unwrap().replicas[0].segment_name, "a");
    // Nothing else is started after the cancel.
    run_tasks(&m, &[a]);
    m.drive_drain_jobs();
    let on_b = (0..4)
        .filter(|i| m.query_key(&format!("k{i}")).unwrap().replicas[0].segment_name == "b")
        .count();
    assert_eq!(on_b, 1);
}

#[test]
fn real_clients_report_their_dummies_and_remounts_show_until_complete() {
    let m = master();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    m.mount_segment(a, segment("a", "h1", 16 * MIB)).unwrap();
    m.mount_segment(b, segment("b", "h2", 16 * MIB)).unwrap();
    m.report_load(a, 3);
    m.report_load(b, 2);
    m.report_load(Uuid::new_v4(), 9); // unknown: ignored
    let g = m.gauges();
    assert_eq!((g.active_clients, g.connected_dummies), (2, 5));
    m.report_load(a, 0);
    assert_eq!(m.gauges().connected_dummies, 2);
    assert!(m.remounts_in_progress().is_empty());
    // A remount whose inventory comes in chunks is in progress until the last one.
    let c = Uuid::new_v4();
    let seg = segment("c", "h3", 16 * MIB);
    m.remount_segment(c, vec![seg], Vec::new(), false).unwrap();
    let ongoing = m.remounts_in_progress();
    assert_eq!(ongoing.len(), 1);
    assert_eq!((ongoing[0].0, ongoing[0].1.as_str()), (c, "h3"));
    m.remount_segment(c, Vec::new(), Vec::new(), true).unwrap();
    assert!(m.remounts_in_progress().is_empty());
}

/// Runs every task queued for `client` the way a real client does (the copy's
/// bytes are not moved here: the master only sees the protocol).
fn run_offload_tasks(m: &MasterService, client: ClientId) -> usize {
    let tasks = m.fetch_tasks(client, 1024);
    for t in &tasks {
        let ok = m
            .replica_copy_start(client, &t.key, t.source, &t.targets, false)
            .and_then(|_| m.replica_copy_end(client, &t.key, &[]))
            .is_ok();
        m.complete_task(client, t.id, ok, String::new()).unwrap();
    }
    tasks.len()
}

fn media(list: &ReplicaList) -> Vec<Medium> {
    list.replicas.iter().map(|r| r.medium).collect()
}

#[tokio::test(start_paused = true)]
async fn offloaded_objects_outlive_memory_eviction_and_promote_on_hits() {
    let m = MasterService::new(MasterConfig::default().with_shard_count(64).with_offload(
        crate::config::OffloadPolicy {
            enabled: true,
            promotion_on_hit: true,
            promotion_admission_threshold: 2,
            ..Default::default()
        },
    ));
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h1", 4 * MIB)).unwrap();
    let mut disk = segment("a/disk", "h1", 64 * MIB);
    disk.medium = Medium::Disk;
    m.mount_segment(c, disk.clone()).unwrap();
    // Writes never land on the disk tier.
    for i in 0..3 {
        let r = put(&m, c, &format!("k{i}"), MIB).unwrap();
        assert_eq!(r[0].medium, Medium::Memory);
    }
    assert_eq!(m.gauges().offload_queue_depth, 3);
    assert_eq!(run_offload_tasks(&m, c), 3);
    assert_eq!(m.gauges().offload_queue_depth, 0);
    let list = m.get_replica_list("k0").unwrap();
    assert_eq!(
        media(&list),
        vec![Medium::Memory, Medium::Disk],
        "memory first"
    );
    m.release_reads(&[("k0".into(), list.replicas[0].version)]);
    assert_eq!(m.gauges().disk_allocated_bytes, 3 * MIB);
    let g = m.gauges();
    assert_eq!((g.memory_replicas, g.disk_replicas), (3, 3));
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(count(&m.metrics.memory_hits), 1);
    assert_eq!(count(&m.metrics.memory_hit_bytes), MIB);
    assert_eq!(count(&m.metrics.disk_hits), 0);
    // Memory fills: eviction takes the memory replicas of copied objects first,
    // and they stay readable from disk.
    advance(Duration::from_secs(11)).await;
    for i in 3..6 {
        put(&m, c, &format!("k{i}"), MIB).unwrap();
    }
    let on_disk_only: Vec<String> = (0..3)
        .map(|i| format!("k{i}"))
        .filter(|k| {
            m.query_key(k)
                .is_ok_and(|l| media(&l) == vec![Medium::Disk])
        })
        .collect();
    assert!(
        !on_disk_only.is_empty(),
        "some memory replicas were evicted"
    );
    assert_eq!(m.exist_key(&on_disk_only[0]), Ok(true));
    run_offload_tasks(&m, c);
    let key = &on_disk_only[0];
    m.get_replica_list(key).unwrap();
    assert_eq!(m.fetch_tasks(c, 16).len(), 0);
    // A read served from disk counts as such; the gauges follow eviction.
    assert_eq!(count(&m.metrics.disk_hits), 1);
    assert_eq!(count(&m.metrics.disk_hit_bytes), MIB);
    let replicas_on = |medium: Medium| -> u64 {
        (0..6)
            .filter_map(|i| m.query_key(&format!("k{i}")).ok())
            .map(|l| media(&l).iter().filter(|&&x| x == medium).count() as u64)
            .sum()
    };
    let g = m.gauges();
    assert_eq!(g.memory_replicas, replicas_on(Medium::Memory));
    assert_eq!(g.disk_replicas, replicas_on(Medium::Disk));
    assert!(g.memory_replicas < 6, "evicted replicas are not counted");
    // The second read of an object only on disk would bring it back, but memory
    // is full of fresh writes: promotions take free room only.
    m.get_replica_list(key).unwrap();
    assert_eq!(m.gauges().promotion_queue_depth, 0);
    assert_eq!(
        m.metrics
            .promotions_skipped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // With room, the next read queues its way back.
    for i in 3..6 {
        m.remove(&format!("k{i}"), true).unwrap();
    }
    m.get_replica_list(key).unwrap();
    assert_eq!(m.gauges().promotion_queue_depth, 1);
    assert_eq!(run_offload_tasks(&m, c), 1);
    assert_eq!(m.gauges().promotion_queue_depth, 0);
    let media_now = media(&m.query_key(key).unwrap());
    assert_eq!(media_now, vec![Medium::Memory, Medium::Disk]);
    // Removing the object frees its disk space too.
    advance(Duration::from_secs(11)).await;
    let before = m.gauges().disk_allocated_bytes;
    m.remove(key, true).unwrap();
    advance(Duration::from_secs(11)).await;
    m.housekeeping();
    assert!(m.gauges().disk_allocated_bytes < before);
    assert_eq!(m.gauges().disk_replicas, replicas_on(Medium::Disk));
    assert_eq!(m.gauges().memory_replicas, replicas_on(Medium::Memory));
    let text = m.metrics.render(&m.gauges());
    assert!(text.contains("file_cache_hit_nums_ 3"), "{text}");
    assert!(text.contains("master_disk_replicas "));
}

#[tokio::test(start_paused = true)]
async fn a_full_disk_tier_drops_its_least_recently_used_copies() {
    let m = MasterService::new(MasterConfig::default().with_shard_count(64).with_offload(
        crate::config::OffloadPolicy {
            enabled: true,
            ..Default::default()
        },
    ));
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h1", 16 * MIB)).unwrap();
    let mut disk = segment("a/disk", "h1", 4 * MIB);
    disk.medium = Medium::Disk;
    m.mount_segment(c, disk).unwrap();
    for i in 0..8 {
        put(&m, c, &format!("k{i}"), MIB).unwrap();
        advance(Duration::from_millis(200)).await;
        run_offload_tasks(&m, c);
    }
    let g = m.gauges();
    assert!(
        g.disk_allocated_bytes <= 4 * MIB,
        "{}",
        g.disk_allocated_bytes
    );
    // The newest objects have disk copies; every object is still in memory.
    assert!(media(&m.query_key("k7").unwrap()).contains(&Medium::Disk));
    assert!(!media(&m.query_key("k0").unwrap()).contains(&Medium::Disk));
    for i in 0..8 {
        assert!(media(&m.query_key(&format!("k{i}")).unwrap()).contains(&Medium::Memory));
    }
}

#[tokio::test(start_paused = true)]
async fn draining_a_disk_tier_moves_its_copies_to_another_disk_tier() {
    let m = MasterService::new(MasterConfig::default().with_shard_count(64).with_offload(
        crate::config::OffloadPolicy {
            enabled: true,
            ..Default::default()
        },
    ));
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    m.mount_segment(a, segment("a", "h1", 64 * MIB)).unwrap();
    m.mount_segment(b, segment("b", "h2", 64 * MIB)).unwrap();
    for (c, name, host) in [(a, "a/disk", "h1"), (b, "b/disk", "h2")] {
        let mut d = segment(name, host, 64 * MIB);
        d.medium = Medium::Disk;
        m.mount_segment(c, d).unwrap();
    }
    let on_a = ReplicateConfig {
        preferred_segments: vec!["a".into()],
        ..ReplicateConfig::default()
    };
    for i in 0..4 {
        put_with(&m, a, &format!("k{i}"), MIB, &on_a).unwrap();
    }
    run_tasks(&m, &[a, b]);
    let disk_of = |k: &str| -> Vec<String> {
        m.query_key(k)
            .unwrap()
            .replicas
            .into_iter()
            .filter(|r| r.medium == Medium::Disk)
            .map(|r| r.segment_name)
            .collect()
    };
    assert_eq!(disk_of("k0"), vec!["a/disk".to_string()]);
    let id = m.create_drain_job(&["a/disk".into()], &[], 4).unwrap();
    for _ in 0..20 {
        m.drive_drain_jobs();
        if m.query_drain_job(&id).unwrap().status != JobStatus::Running {
            break;
        }
        run_tasks(&m, &[a, b]);
    }
    let info = m.query_drain_job(&id).unwrap();
    assert_eq!(info.status, JobStatus::Succeeded, "{}", info.message);
    for i in 0..4 {
        let k = format!("k{i}");
        assert_eq!(disk_of(&k), vec!["b/disk".to_string()], "{k}");
        assert!(media(&m.query_key(&k).unwrap()).contains(&Medium::Memory));
    }
}

#[tokio::test(start_paused = true)]
async fn offload_on_evict_with_a_full_disk_tier_falls_back_to_plain_eviction() {
    let m = MasterService::new(MasterConfig::default().with_shard_count(64).with_offload(
        crate::config::OffloadPolicy {
            enabled: true,
            on_evict: true,
            disk_eviction: false,
            ..Default::default()
        },
    ));
    let c = Uuid::new_v4();
    m.mount_segment(c, segment("a", "h1", 4 * MIB)).unwrap();
    let mut disk = segment("a/disk", "h1", 2 * MIB);
    disk.medium = Medium::Disk;
    m.mount_segment(c, disk).unwrap();
    for i in 0..12 {
        let key = format!("k{i}");
        let mut stored = false;
        for _ in 0..10 {
            if put(&m, c, &key, MIB).is_ok() {
                stored = true;
                break;
            }
            // The real client's part: make the copies eviction asked for.
            run_offload_tasks(&m, c);
            advance(Duration::from_millis(200)).await;
        }
        assert!(stored, "{key} never found room");
    }
    let g = m.gauges();
    assert!(g.disk_allocated_bytes <= 2 * MIB);
    assert!(
        m.metrics
            .evicted_keys
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // Copies made before the disk tier filled are still readable from it.
    let on_disk = (0..12)
        .filter(|i| {
            m.query_key(&format!("k{i}"))
                .is_ok_and(|l| media(&l).contains(&Medium::Disk))
        })
        .count();
    assert!(on_disk >= 1, "{on_disk}");
}

/// The grant epoch the tests' clients ask in (a remount bumps it).
const EPOCH: u64 = 7;

fn commit(
    m: &MasterService,
    c: ClientId,
    seg: SegmentId,
    key: &str,
    offset: u64,
    size: u64,
) -> MResult<u64> {
    commit_in(m, c, seg, EPOCH, key, offset, size)
}

fn commit_in(
    m: &MasterService,
    c: ClientId,
    seg: SegmentId,
    epoch: u64,
    key: &str,
    offset: u64,
    size: u64,
) -> MResult<u64> {
    let item = CommitItem {
        key: key.into(),
        offset,
        size,
    };
    m.put_commit(c, seg, epoch, &item, &ReplicateConfig::default())
}

#[tokio::test(start_paused = true)]
async fn granted_space_takes_only_its_owners_commits_and_never_leaks() {
    let m = master();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let sa = segment("a", "h1", 16 * MIB);
    m.mount_segment(a, sa.clone()).unwrap();
    m.mount_segment(b, segment("b", "h2", 16 * MIB)).unwrap();
    // Only the owner gets space in a segment, and not more than a quarter of it.
    assert_eq!(
        m.grant_space(b, sa.id, MIB, EPOCH),
        Err(ErrorCode::IllegalClient)
    );
    assert_eq!(
        m.grant_space(a, sa.id, 8 * MIB, EPOCH),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        m.grant_space(a, Uuid::new_v4(), MIB, EPOCH),
        Err(ErrorCode::SegmentNotFound)
    );
    let (base, len) = m.grant_space(a, sa.id, MIB, EPOCH).unwrap();
    assert_eq!(len, MIB);
    assert_eq!(m.gauges().granted_bytes, MIB);
    assert_eq!(
        m.gauges().allocated_bytes,
        MIB,
        "granted space counts as used"
    );
    // The master places no other object in granted space.
    let other = put(&m, b, "placed", 4096).unwrap();
    assert!(
        other[0].segment_id != sa.id
            || other[0].offset >= base + len
            || other[0].offset + 4096 <= base
    );

    // A commit makes the object readable at once, where its writer put it.
    let v = commit(&m, a, sa.id, "k1", base, 5000).unwrap();
    let list = m.get_replica_list("k1").unwrap();
    assert_eq!((list.size, list.replicas[0].version), (5000, v));
    assert_eq!(list.replicas[0].segment_id, sa.id);
    assert_eq!(list.replicas[0].offset, base);
    assert_eq!(list.replicas[0].status, ReplicaStatus::Complete);
    // Its range left the grant: it cannot be committed twice, nor by another
    // client, nor outside the grant, nor misaligned.
    assert_eq!(
        commit(&m, a, sa.id, "k2", base, 100),
        Err(ErrorCode::InvalidWrite)
    );
    assert_eq!(
        commit(&m, b, sa.id, "k2", base + 8192, 100),
        Err(ErrorCode::IllegalClient)
    );
    assert_eq!(
        commit(&m, a, sa.id, "k2", base + len, 100),
        Err(ErrorCode::InvalidWrite)
    );
    assert_eq!(
        commit(&m, a, sa.id, "k2", base + len - 64, 128),
        Err(ErrorCode::InvalidWrite)
    );
    assert_eq!(
        commit(&m, a, sa.id, "k2", base + 8200, 100),
        Err(ErrorCode::InvalidWrite)
    );
    // An existing key keeps its value; the loser's range is freed, not leaked.
    let before = m.gauges();
    assert_eq!(
        commit(&m, a, sa.id, "k1", base + 8192, 4096),
        Err(ErrorCode::ObjectAlreadyExists)
    );
    assert_eq!(m.get_replica_list("k1").unwrap().replicas[0].offset, base);
    let after = m.gauges();
    assert_eq!(after.granted_bytes, before.granted_bytes - 4096);
    assert_eq!(after.allocated_bytes, before.allocated_bytes - 4096);
    assert_eq!(after.memory_replicas, before.memory_replicas);
    // A key a two-phase write is writing is taken too.
    m.put_start(b, "busy", 100, &ReplicateConfig::default(), false)
        .unwrap();
    assert_eq!(
        commit(&m, a, sa.id, "busy", base + 16384, 100),
        Err(ErrorCode::ObjectAlreadyExists)
    );

    // Removing a committed object frees its space like any other.
    advance(Duration::from_secs(11)).await;
    let used = m.gauges().allocated_bytes;
    m.remove("k1", false).unwrap();
    assert_eq!(m.gauges().allocated_bytes, used - allocated_len(5000));

    // Space given back is free again; a remount forgets every grant.
    m.return_space(a, sa.id, EPOCH, &[(base + 32768, 4096)])
        .unwrap();
    let g = m.gauges();
    assert_eq!(g.granted_bytes, len - 5056 - 4096 - 128 - 4096);
    m.remount_segment(a, vec![sa.clone()], Vec::new(), true)
        .unwrap();
    let g = m.gauges();
    assert_eq!(g.granted_bytes, 0);
    assert_eq!(
        commit(&m, a, sa.id, "k3", base + 65536, 100),
        Err(ErrorCode::InvalidWrite)
    );
    // Only "placed" (and the write in flight) hold space now.
    assert_eq!(g.allocated_bytes, 4096 + 128);
}

#[tokio::test(start_paused = true)]
async fn a_write_placed_before_a_remount_is_never_committed_into_space_granted_after_it() {
    let m = master();
    let a = Uuid::new_v4();
    let sa = segment("a", "h1", 16 * MIB);
    m.mount_segment(a, sa.clone()).unwrap();
    let (base, _) = m.grant_space(a, sa.id, MIB, 1).unwrap();
    // The remount frees the grant; the same bytes are granted again in the
    // client's next epoch, and the client places its next write at their start.
    m.remount_segment(a, vec![sa.clone()], Vec::new(), true)
        .unwrap();
    assert_eq!(m.grant_space(a, sa.id, MIB, 2), Ok((base, MIB)));
    // The write placed before the remount, committed late: refused, so the
    // next write placed there cannot overwrite an object the master serves.
    assert_eq!(
        commit_in(&m, a, sa.id, 1, "before", base, 4096),
        Err(ErrorCode::InvalidWrite)
    );
    assert_eq!(m.get_replica_list("before"), Err(ErrorCode::ObjectNotFound));
    // Giving back the old write's range does not free the new grant either.
    m.return_space(a, sa.id, 1, &[(base, 4096)]).unwrap();
    assert_eq!(m.gauges().granted_bytes, MIB);
    assert!(commit_in(&m, a, sa.id, 2, "after", base, 4096).is_ok());
    assert_eq!(
        m.get_replica_list("after").unwrap().replicas[0].offset,
        base
    );
}

#[tokio::test(start_paused = true)]
async fn a_drained_segment_grants_nothing_and_refuses_commits() {
    let m = master();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let sa = segment("a", "h1", 16 * MIB);
    m.mount_segment(a, sa.clone()).unwrap();
    m.mount_segment(b, segment("b", "h2", 16 * MIB)).unwrap();
    let (base, _) = m.grant_space(a, sa.id, MIB, EPOCH).unwrap();
    m.create_drain_job(&["a".into()], &[], 1).unwrap();
    assert_eq!(
        m.grant_space(a, sa.id, MIB, EPOCH),
        Err(ErrorCode::NoAvailableHandle)
    );
    assert_eq!(
        commit(&m, a, sa.id, "k", base, 100),
        Err(ErrorCode::NoAvailableHandle)
    );
    assert_eq!(m.get_replica_list("k"), Err(ErrorCode::ObjectNotFound));
}
