//! Several "hosts" on loopback: one `mooncake_master`, three `mooncake_client`s on
//! distinct ports, dummies attached to different real clients. Bytes between hosts
//! go through the TCP transfer engine.

use std::path::Path;
use std::time::{Duration, Instant};

use mooncake_dummyclient::{ConnectOptions, DummyClient, HostMemAllocator, Item, StartedRead};
use mooncake_integration::*;
use mooncake_proto::realclient::{BufRef, PutCompletion, RealClientServiceClient};
use mooncake_proto::{ErrorCode, ReplicateConfig};

struct Cluster {
    _master: Daemon,
    master_addr: String,
    paths: Vec<Paths>,
    clients: Vec<Daemon>,
}

impl Cluster {
    fn start(tag: &str, hosts: usize) -> Cluster {
        Self::start_with(tag, hosts, &[])
    }

    /// [`Cluster::start`] with `flags` given to every real client.
    fn start_with(tag: &str, hosts: usize, flags: &[String]) -> Cluster {
        let (master, master_addr) = start_master(0);
        let paths: Vec<Paths> = (0..hosts)
            .map(|i| Paths::new(&format!("{tag}{i}")))
            .collect();
        let clients = paths
            .iter()
            .map(|p| {
                flags
                    .iter()
                    .fold(ClientBuilder::new(p).with_master(&master_addr), |b, f| {
                        b.with_arg(f.clone())
                    })
                    .start()
            })
            .collect();
        Cluster {
            _master: master,
            master_addr,
            paths,
            clients,
        }
    }

    fn dummy(&self, host: usize) -> DummyClient {
        DummyClient::connect(&self.paths[host].socket, "").expect("connect dummy")
    }

    /// The segment name of a host (`host:port`).
    fn segment(&self, host: usize) -> String {
        format!("127.0.0.1:{}", self.paths[host].port)
    }
}

/// Registered host memory of `len` bytes for `dummy`.
fn registered(dummy: &DummyClient, len: u64) -> u64 {
    let addr = HostMemAllocator::new().alloc(len).unwrap();
    dummy.register_buffer(addr, len).unwrap();
    addr
}

fn read_back(addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    HostMemAllocator::new().read(addr, &mut out).unwrap();
    out
}

#[test]
fn put_through_host_a_read_through_host_b() {
    let c = Cluster::start("ab", 3);
    let a = c.dummy(0);
    let b = c.dummy(1);
    assert_ne!(a.hostname(), b.hostname());
    let mem = HostMemAllocator::new();

    // Zero-copy puts on A (they land in A's own segment) ...
    let len = 256u64 << 10;
    let src = registered(&a, 64 * len);
    let keys: Vec<String> = (0..64).map(|i| format!("kv-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        mem.write(src + i as u64 * len, &value_for(k, len as usize))
            .unwrap();
    }
    let items: Vec<Item> = (0..64u64)
        .map(|i| Item::new(keys[i as usize].clone(), src + i * len, len))
        .collect();
    let r = a.batch_put_from(&items, &ReplicateConfig::default(), false);
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    let lists = b.batch_get_replicas(&keys[..1]);
    assert_eq!(
        lists[0].as_ref().unwrap().replicas[0].segment_name,
        c.segment(0)
    );

    // ... read on B straight into B's registered memory by B's real client.
    let dst = registered(&b, 64 * len);
    let dests: Vec<Item> = (0..64u64)
        .map(|i| Item::new(keys[i as usize].clone(), dst + i * len, len))
        .collect();
    let r = b.batch_get_into(&dests);
    assert!(r.iter().all(|r| *r == Ok(len)), "{r:?}");
    for (i, k) in keys.iter().enumerate() {
        assert!(
            read_back(dst + i as u64 * len, len as usize) == value_for(k, len as usize),
            "bytes of {k} on host B"
        );
    }
    // Copy-style reads of remote objects (through a staging buffer).
    assert!(b.get(&keys[3]).unwrap() == value_for(&keys[3], len as usize));
    assert_all_readable(&b, &keys[..8], len as usize);

    // A 16 MiB object (split over parallel streams), written from A into C's
    // segment, read on B: two transfers.
    let big = 16u64 << 20;
    let big_src = registered(&a, big);
    mem.write(big_src, &value_for("big", big as usize)).unwrap();
    let on_c = ReplicateConfig::default().with_preferred_segments(vec![c.segment(2)]);
    a.put_from("big", big_src, big, &on_c).unwrap();
    let list = b.batch_get_replicas(&["big".into()]).remove(0).unwrap();
    assert_eq!(list.replicas[0].segment_name, c.segment(2));
    let big_dst = registered(&b, big);
    assert_eq!(b.get_into("big", big_dst, big), Ok(big));
    assert!(read_back(big_dst, big as usize) == value_for("big", big as usize));

    // Plain bytes written to another host (staged), multi-buffer objects both ways.
    a.put("bytes-on-c", b"hello from A", &on_c).unwrap();
    assert_eq!(b.get("bytes-on-c").unwrap(), b"hello from A");
    let parts = [src, src + 100, src + 5000];
    let part_sizes = [100u64, 4900, 20_000];
    let bufs = |addrs: &[u64], lens: &[u64]| -> Vec<BufRef> {
        addrs
            .iter()
            .zip(lens)
            .map(|(&addr, &len)| BufRef { addr, len })
            .collect()
    };
    a.batch_put_from(
        &[Item::scattered("multi", bufs(&parts, &part_sizes))],
        &on_c,
        false,
    )[0]
    .unwrap();
    let r = b.batch_get_into(&[Item::scattered(
        "multi",
        bufs(&[dst, dst + 10_000], &[10_000, 15_000]),
    )]);
    assert_eq!(r, vec![Ok(25_000)]);
    assert!(read_back(dst, 25_000) == read_back(src, 25_000));

    // Error codes across hosts.
    let r = b.batch_get_into(&[Item::new("kv-0", dst, 100), Item::new("absent", dst, 100)]);
    assert_eq!(
        r,
        vec![
            Err(ErrorCode::InvalidParams),
            Err(ErrorCode::ObjectNotFound)
        ]
    );

    // B's real client counts what it moved; its HTTP health says OK.
    let http = c.clients[1].ready_field("http").unwrap();
    let (status, body) = http_get(&http, "/health").unwrap();
    assert_eq!((status, body.trim()), (200, "OK"));
    let (_, metrics) = http_get(&http, "/metrics").unwrap();
    let read_bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mooncake_client_transfer_read_bytes_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(read_bytes >= 64 * len + big, "metrics: {read_bytes}");
    assert!(metrics.contains("mooncake_client_dummy_connections 1"));
    let ring_calls: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mooncake_client_ring_requests_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(ring_calls > 0, "small calls take the shared-memory ring");
}

/// Two real clients on one host (one network namespace, one user): once one
/// has mapped the other's segment (in the background, after their first
/// transfer), reads and large writes between them are copies through the
/// mapping instead of loopback TCP, byte for byte the same. With
/// `--same_host_transfers=false` every byte goes over TCP.
#[test]
fn transfers_between_real_clients_on_one_host_copy_through_mapped_segments() {
    let metric = |http: &str, name: &str| -> u64 {
        let (_, body) = http_get(http, "/metrics").unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    for same_host in [true, false] {
        let flag = format!("--same_host_transfers={same_host}");
        let c = Cluster::start_with(&format!("sh{}", same_host as u8), 2, &[flag]);
        let a = c.dummy(0);
        let on_b = ReplicateConfig::default().with_preferred_segments(vec![c.segment(1)]);
        let http = c.clients[0].ready_field("http").unwrap();
        let len = 1usize << 20;
        let src = registered(&a, 8 * len as u64);
        let dst = registered(&a, 8 * len as u64);
        let mem = HostMemAllocator::new();
        let give_up = Instant::now() + Duration::from_secs(30);
        let mut keys = Vec::new();
        for round in 0.. {
            // A large value (copied once mapped) and a small one (TCP either way).
            for (key, n) in [
                (format!("big-{round}"), len),
                (format!("small-{round}"), 3000),
            ] {
                mem.write(src, &value_for(&key, n)).unwrap();
                assert_eq!(a.put_from(&key, src, n as u64, &on_b), Ok(()), "{key}");
                mem.write(dst, &vec![0u8; n]).unwrap();
                assert_eq!(a.get_into(&key, dst, n as u64), Ok(n as u64), "{key}");
                assert!(read_back(dst, n) == value_for(&key, n), "{key} read back");
                keys.push((key, n));
            }
            let read = metric(&http, "mooncake_client_same_host_read_bytes_total");
            let written = metric(&http, "mooncake_client_same_host_write_bytes_total");
            if !same_host {
                assert_eq!((read, written), (0, 0), "TCP only when turned off");
                if round == 3 {
                    break;
                }
            } else if read >= 2 * len as u64 && written >= 2 * len as u64 {
                // Small writes keep TCP.
                assert_eq!(written % len as u64, 0, "only large writes are copied");
                break;
            }
            assert!(
                Instant::now() < give_up,
                "the peer's segment was never mapped"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // A batch (8 MiB in all: the copies are shared with the copy helper
        // thread when mapped), every value whole.
        let batch: Vec<(String, usize)> = (0..8)
            .map(|i| (format!("batch-{i}"), len - i * 4096))
            .collect();
        let items: Vec<Item> = batch
            .iter()
            .enumerate()
            .map(|(i, (key, n))| {
                let at = src + (i * len) as u64;
                mem.write(at, &value_for(key, *n)).unwrap();
                Item::new(key.clone(), at, *n as u64)
            })
            .collect();
        assert_eq!(a.batch_put_from(&items, &on_b, false), vec![Ok(()); 8]);
        mem.write(dst, &vec![0u8; 8 * len]).unwrap();
        let into: Vec<Item> = batch
            .iter()
            .enumerate()
            .map(|(i, (key, n))| Item::new(key.clone(), dst + (i * len) as u64, *n as u64))
            .collect();
        let got = a.batch_get_into(&into);
        for (i, (key, n)) in batch.iter().enumerate() {
            assert_eq!(got[i], Ok(*n as u64), "{key}");
            assert!(
                read_back(dst + (i * len) as u64, *n) == value_for(key, *n),
                "{key} read back"
            );
        }
        keys.extend(batch);
        // The holder counts the mapping client as a peer, not as a dummy.
        let holder = c.clients[1].ready_field("http").unwrap();
        assert_eq!(
            metric(&holder, "mooncake_client_peer_mappings"),
            same_host as u64
        );
        assert_eq!(metric(&holder, "mooncake_client_dummy_connections"), 0);
        // The holder serves every object from its own segment to its own dummy.
        let b = c.dummy(1);
        for (key, n) in &keys {
            assert_eq!(b.get(key), Ok(value_for(key, *n)), "{key} on the holder");
        }
        // A holder that dies is unmapped within seconds: its memory is not kept
        // alive by the other client.
        let maps_holder = |c: &Cluster| {
            let maps =
                std::fs::read_to_string(format!("/proc/{}/maps", c.clients[0].pid())).unwrap();
            maps.contains(&*c.paths[1].segment.to_string_lossy())
        };
        assert_eq!(maps_holder(&c), same_host);
        drop(b);
        let mut c = c;
        c.clients[1].kill9();
        assert!(
            wait_until(Duration::from_secs(10), || !maps_holder(&c)),
            "the dead holder's segment is still mapped"
        );
    }
}

/// Reads of values whose size the caller does not know (Python's `get`), from
/// a dummy with a local buffer: a value on another host that fits the room
/// offered comes in the first call, a larger one is read with its lease held
/// and makes the room grow; every byte is the value's, whatever the path.
#[test]
fn reads_of_unknown_size_take_one_call_when_the_value_fits_the_room_offered() {
    let c = Cluster::start("room", 2);
    let options = ConnectOptions::default().with_staging_budget(Some(64 << 20));
    let a = DummyClient::connect_with_options(&c.paths[0].socket, "", options).unwrap();
    let b = c.dummy(1);
    let remote = |key: &str, len: usize| {
        let config = ReplicateConfig::default().with_preferred_segments(vec![c.segment(1)]);
        b.put(key, &value_for(key, len), &config).unwrap();
    };
    let read = |key: &str| -> (bool, Vec<u8>) {
        match a.start_read(key).unwrap() {
            StartedRead::Staged(staged) => {
                let mut v = vec![0u8; staged.size() as usize];
                assert_eq!(staged.read_into(&mut v), Ok(v.len() as u64));
                (true, v)
            }
            StartedRead::Open(opened) => {
                let mut v = vec![0u8; opened.size() as usize];
                assert_eq!(opened.read_into(&mut v), Ok(v.len() as u64));
                (false, v)
            }
        }
    };
    remote("small", 3000);
    remote("big-1", 1 << 20);
    remote("big-2", 1 << 20);
    remote("bigger", (1 << 20) + 4096);
    assert_eq!(read("small"), (true, value_for("small", 3000)));
    // The first value over the room is looked up, then read with its lease...
    assert_eq!(read("big-1"), (false, value_for("big-1", 1 << 20)));
    // ...and values of that size then come in one call.
    assert_eq!(read("big-2"), (true, value_for("big-2", 1 << 20)));
    assert_eq!(read("big-1"), (true, value_for("big-1", 1 << 20)));
    assert_eq!(
        read("bigger"),
        (false, value_for("bigger", (1 << 20) + 4096))
    );
    assert_eq!(read("small"), (true, value_for("small", 3000)));
    // A value in this host's own segment is copied here, not staged.
    let config = ReplicateConfig::default().with_preferred_segments(vec![c.segment(0)]);
    a.put("here", &value_for("here", 70_000), &config).unwrap();
    assert_eq!(read("here"), (false, value_for("here", 70_000)));
    assert!(matches!(
        a.start_read("missing"),
        Err(ErrorCode::ObjectNotFound)
    ));
    // Whole-value reads of a batch, sizes unknown: each value complete.
    let keys: Vec<String> = ["small", "big-1", "here", "missing", "bigger"]
        .map(String::from)
        .to_vec();
    let got = a.batch_get(&keys);
    assert_eq!(got[0], Ok(value_for("small", 3000)));
    assert_eq!(got[1], Ok(value_for("big-1", 1 << 20)));
    assert_eq!(got[2], Ok(value_for("here", 70_000)));
    assert_eq!(got[3], Err(ErrorCode::ObjectNotFound));
    assert_eq!(got[4], Ok(value_for("bigger", (1 << 20) + 4096)));
    // The room offered is given back after each read.
    for _ in 0..80 {
        assert_eq!(read("big-2"), (true, value_for("big-2", 1 << 20)));
    }
}

/// A dummy whose real client has no segment of its own (as Python's `setup()`
/// with no segment) writes everything through it in one call per batch:
/// values from registered memory and from plain bytes, small and large, a key
/// that exists (kept), an upsert (replaced), a second replica; each reads back
/// whole from another host, and a failed item fails alone.
#[test]
fn writes_through_a_client_without_a_segment_land_whole() {
    let mut c = Cluster::start("noseg", 2);
    let no_segment = Paths::new("noseg-x");
    let client = ClientBuilder::new(&no_segment)
        .with_master(&c.master_addr)
        .with_size("0")
        .start();
    let options = ConnectOptions::default().with_staging_budget(Some(8 << 20));
    let w = DummyClient::connect_with_options(&no_segment.socket, "", options).unwrap();
    let r = c.dummy(1);
    let sizes = [1usize, 4096, 100_000, (1 << 20) + 3, 3 << 20];
    let src = registered(&w, 8 << 20);
    let mem = HostMemAllocator::new();
    let mut items = Vec::new();
    let mut at = src;
    for (i, &n) in sizes.iter().enumerate() {
        let key = format!("reg-{i}");
        mem.write(at, &value_for(&key, n)).unwrap();
        items.push(Item::new(key, at, n as u64));
        at += (n as u64).next_multiple_of(4096);
    }
    let config = ReplicateConfig::default();
    assert_eq!(
        w.batch_put_from(&items, &config, false),
        vec![Ok(()); sizes.len()]
    );
    let values: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("bytes-{i}"), value_for(&format!("bytes-{i}"), n)))
        .collect();
    let objects: Vec<(&str, &[u8])> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        w.batch_put(&objects, &config, false),
        vec![Ok(()); sizes.len()]
    );
    for (i, &n) in sizes.iter().enumerate() {
        for key in [format!("reg-{i}"), format!("bytes-{i}")] {
            assert_eq!(r.get(&key), Ok(value_for(&key, n)), "{key}");
        }
    }
    // A plain put of an existing key keeps the old value; an upsert replaces it.
    assert_eq!(w.put("bytes-2", b"other", &config), Ok(()));
    assert_eq!(r.get("bytes-2"), Ok(value_for("bytes-2", 100_000)));
    assert_eq!(
        w.batch_put(&[("bytes-2", b"newer")], &config, true),
        vec![Ok(())]
    );
    assert_eq!(r.get("bytes-2"), Ok(b"newer".to_vec()));
    // Memory that is not registered fails its item only.
    let bad = Item::new("bad", 0x7fff_0000_0000, 4096);
    let good = Item::new("good", src, 4096);
    let out = w.batch_put_from(&[bad, good], &config, false);
    assert_eq!(out, vec![Err(ErrorCode::InvalidParams), Ok(())]);
    assert!(!r.is_exist("bad").unwrap());
    // Two replicas, one on each host with a segment: either one serves.
    let twice = ReplicateConfig::default().with_replica_num(2);
    let big = value_for("twice", 2 << 20);
    assert_eq!(w.put("twice", &big, &twice), Ok(()));
    assert_eq!(r.get("twice"), Ok(big.clone()));
    c.clients[0].kill9();
    assert_eq!(r.get("twice"), Ok(big));
    drop(client);
}

#[test]
fn replica_num_2_survives_a_killed_holder() {
    let mut c = Cluster::start("rep", 3);
    let a = c.dummy(0);
    let two = ReplicateConfig::default().with_replica_num(2);
    let keys = put_many_with(&a, "r2", 60, 64 << 10, &two);
    for l in a.batch_get_replicas(&keys) {
        let l = l.unwrap();
        assert_eq!(l.replicas.len(), 2);
        assert_ne!(l.replicas[0].segment_id, l.replicas[1].segment_id);
    }
    drop(a);
    // Host A held a replica of every key (puts prefer the local segment).
    c.clients[0].kill9();
    for host in [1, 2] {
        let d = c.dummy(host);
        assert_all_readable(&d, &keys, 64 << 10);
    }
    // Writes still succeed while the master still lists the dead host: a replica
    // that cannot be written is dropped, the others are kept.
    let b = c.dummy(1);
    let more = put_many_with(&b, "after", 30, 10_000, &two);
    let cc = c.dummy(2);
    assert_all_readable(&cc, &more, 10_000);
    // Once the master expired host A, no listed replica points at it.
    let dead = c.segment(0);
    assert!(wait_until(Duration::from_secs(20), || {
        cc.batch_get_replicas(&keys).iter().all(|l| {
            l.as_ref()
                .unwrap()
                .replicas
                .iter()
                .all(|r| r.segment_name != dead)
        })
    }));
    assert_all_readable(&cc, &keys, 64 << 10);
}

#[test]
fn bad_input_gets_error_codes_and_harms_no_one() {
    let c = Cluster::start("bad", 2);
    let a = c.dummy(0);
    let bystander = c.dummy(0);
    let cfg = ReplicateConfig::default();
    bystander.put("keep", b"kept value", &cfg).unwrap();
    let b = c.dummy(1);
    b.put("on-one", &[7u8; 4096], &cfg).unwrap();

    // Unregistered pointers, sizes beyond the registration, zero sizes.
    let mem = HostMemAllocator::new();
    let unregistered = mem.alloc(1 << 20).unwrap();
    assert_eq!(
        a.put_from("x", unregistered, 4096, &cfg),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        a.put_from("x", 0xdead_0000, 4096, &cfg),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        a.get_into("keep", unregistered, 4096),
        Err(ErrorCode::InvalidParams)
    );
    let reg = registered(&a, 4096);
    assert_eq!(
        a.put_from("x", reg, 8192, &cfg),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        a.put_from("x", reg + 4000, 200, &cfg),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(a.put_from("x", reg, 0, &cfg), Err(ErrorCode::InvalidParams));
    assert_eq!(
        a.register_buffer(0x1000, 4096),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        a.register_buffer(reg, 1 << 30),
        Err(ErrorCode::InvalidParams)
    );
    // Registering twice and sub-ranges both work.
    a.register_buffer(reg, 4096).unwrap();
    a.register_buffer(reg + 1024, 1024).unwrap();
    // Oversized and empty keys (upstream's codes for the empty key).
    let huge = "k".repeat(70_000);
    assert_eq!(a.put(&huge, b"v", &cfg), Err(ErrorCode::InvalidKey));
    assert_eq!(a.put("", b"v", &cfg), Err(ErrorCode::InvalidParams));
    assert_eq!(a.is_exist(""), Ok(false));
    assert_eq!(a.is_exist(&huge), Err(ErrorCode::InvalidKey));
    // A 5 000-byte key works, as upstream's.
    a.put(&"k".repeat(5000), b"v", &cfg).unwrap();
    // An item without buffers, or with an empty one: that key fails, never a panic.
    assert_eq!(
        a.batch_put_from(
            &[Item::scattered("p", vec![]), Item::new("q", reg, 0)],
            &cfg,
            false
        ),
        vec![Err(ErrorCode::InvalidParams); 2]
    );

    // A hostile dummy skipping the client library: addresses it never registered,
    // sent straight to the real client for remote transfers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let remote = ReplicateConfig::default().with_preferred_segments(vec![c.segment(1)]);
    rt.block_on(async {
        let (_ipc, control) = mooncake_ipc::IpcClient::connect(&c.paths[0].socket, "")
            .await
            .unwrap();
        let rpc = RealClientServiceClient::new(
            Default::default(),
            mooncake_ipc::client::control_transport(control),
        )
        .spawn();
        let ctx = tarpc_ctx();
        let started = rpc
            .put_start(
                ctx,
                vec!["evil".into()],
                vec![4096],
                remote.clone(),
                false,
                true,
            )
            .await
            .unwrap();
        assert!(started[0].is_ok());
        let r = rpc
            .put_complete(
                tarpc_ctx(),
                vec![PutCompletion {
                    key: "evil".into(),
                    local_failed: false,
                    sources: vec![BufRef {
                        addr: 0x7fff_0000_0000,
                        len: 4096,
                    }],
                }],
            )
            .await
            .unwrap();
        assert_eq!(r, vec![Err(ErrorCode::InvalidParams)]);
        for bad in [
            BufRef {
                addr: 0x10,
                len: u64::MAX,
            },
            BufRef {
                addr: 0x7fff_0000_0000,
                len: 1 << 20,
            },
        ] {
            let r = rpc
                .get_into(
                    tarpc_ctx(),
                    vec!["on-one".into()],
                    vec![vec![bad]],
                    vec![],
                    false,
                )
                .await
                .unwrap();
            assert_eq!(r, vec![Err(ErrorCode::InvalidParams)], "{bad:?}");
        }
        let r = rpc
            .get_into(
                tarpc_ctx(),
                vec!["a".into(), "b".into()],
                vec![vec![]],
                vec![],
                false,
            )
            .await
            .unwrap();
        assert_eq!(r, vec![Err(ErrorCode::InvalidParams); 2]);
    });
    // Host 1 reads into a buffer that is too small.
    let mut small = [0u8; 3];
    assert_eq!(
        b.batch_get_into_slices(&["keep".into()], &mut [&mut small[..]]),
        vec![Err(ErrorCode::InvalidParams)]
    );
    // Garbage on the Unix socket.
    {
        use std::io::Write;
        let mut raw = std::os::unix::net::UnixStream::connect(&c.paths[0].socket).unwrap();
        let _ = raw.write_all(&[0xff; 4096]);
    }
    assert!(
        !a.is_exist("evil").unwrap(),
        "the failed write is not visible"
    );
    assert_eq!(bystander.get("keep").unwrap(), b"kept value");
    assert_eq!(b.get("keep").unwrap(), b"kept value");
    assert_eq!(a.health(), Ok(()));
}

fn tarpc_ctx() -> tarpc::context::Context {
    tarpc::context::current()
}

#[test]
fn dummy_reconnects_and_reregisters_after_its_real_client_restarts() {
    let mut c = Cluster::start("reconn", 2);
    let a = c.dummy(0);
    let b = c.dummy(1);
    let len = 1u64 << 20;
    let dst = registered(&a, len);
    b.put(
        "on-b",
        &value_for("on-b", len as usize),
        &ReplicateConfig::default(),
    )
    .unwrap();
    assert_eq!(a.get_into("on-b", dst, len), Ok(len));

    c.clients[0].kill9();
    // Calls fail fast with RPC errors, never hang.
    let t = Instant::now();
    assert_eq!(a.get_into("on-b", dst, len), Err(ErrorCode::RpcFail));
    assert_eq!(a.is_exist("on-b"), Err(ErrorCode::RpcFail));
    assert!(t.elapsed() < Duration::from_secs(10));

    c.clients[0] = ClientBuilder::new(&c.paths[0])
        .with_master(&c.master_addr)
        .start();
    assert!(
        wait_until(Duration::from_secs(20), || a.health() == Ok(())),
        "dummy did not reconnect"
    );
    assert!(a.reconnects() >= 1);
    // The re-registered buffer receives remote bytes again.
    HostMemAllocator::new()
        .write(dst, &vec![0u8; len as usize])
        .unwrap();
    assert_eq!(a.get_into("on-b", dst, len), Ok(len));
    assert!(read_back(dst, len as usize) == value_for("on-b", len as usize));
}

#[test]
fn sigterm_finishes_and_exits_cleanly() {
    let mut c = Cluster::start("term", 2);
    let a = c.dummy(0);
    let keys = put_many(&a, "t", 20, 4096);
    drop(a);
    assert!(c.clients[0].sigterm(), "exit status 0 after SIGTERM");
    assert!(!Path::new(&c.paths[0].socket).exists(), "socket removed");
    c.clients[0] = ClientBuilder::new(&c.paths[0])
        .with_master(&c.master_addr)
        .start();
    let b = wait_readable(&c.paths[1].socket, &keys[0]);
    assert_all_readable(&b, &keys, 4096);
}
