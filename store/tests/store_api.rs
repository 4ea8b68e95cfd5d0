//! `mooncake_store::MooncakeStore` against the real `mooncake_client` and
//! `mooncake_master` binaries, in both set-ups.

use std::ffi::c_void;

use mooncake_dummyclient::HostMemAllocator;
use mooncake_integration::*;
use mooncake_store::{HostRoute, MooncakeStore, ReplicateConfig, StoreError};

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[test]
fn upstreams_rust_surface_through_the_hosts_real_client() {
    let paths = Paths::new("store-api");
    let _client = start_client(&paths, None, "64MB");
    let store = MooncakeStore::new().unwrap();
    assert!(matches!(
        store.put("k", b"v", None),
        Err(StoreError::NullHandle)
    ));
    store.setup_dummy(&paths.socket).unwrap();
    assert!(matches!(
        store.setup_dummy(&paths.socket),
        Err(StoreError::InvalidArgument(_))
    ));
    store.health_check().unwrap();
    assert!(!store.get_hostname().unwrap().is_empty());

    store.put("hello", b"world", None).unwrap();
    assert_eq!(store.get("hello").unwrap(), b"world");
    assert!(store.is_exist("hello").unwrap());
    assert_eq!(store.get_size("hello").unwrap(), 5);
    // A put of an existing key keeps its value; an upsert replaces it.
    store.put("hello", b"other", None).unwrap();
    assert_eq!(store.get("hello").unwrap(), b"world");
    store.upsert("hello", b"again!", None).unwrap();
    assert_eq!(store.get("hello").unwrap(), b"again!");
    assert!(matches!(store.get("missing"), Err(StoreError::NotFound)));
    assert!(!store.is_exist("missing").unwrap());
    let err = store.put(&"k".repeat(70_000), b"v", None).unwrap_err();
    assert_eq!(err.code(), -400, "{err}");

    let ks = keys("batch", 8);
    let values: Vec<Vec<u8>> = ks.iter().map(|k| value_for(k, 4096)).collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
    let two = ReplicateConfig::default();
    assert!(
        store
            .batch_put(&ks, &refs, Some(&two))
            .unwrap()
            .iter()
            .all(|r| r.is_ok())
    );
    assert!(matches!(
        store.batch_put(&ks, &refs[..1], None),
        Err(StoreError::InvalidArgument(_))
    ));
    let got = store.batch_get(&ks).unwrap();
    for (g, v) in got.iter().zip(&values) {
        assert_eq!(g.as_ref().unwrap(), v);
    }
    let mut probe = ks.clone();
    probe.push("absent".into());
    let exist = store.batch_is_exist(&probe).unwrap();
    assert_eq!(exist.len(), 9);
    assert!(exist[..8].iter().all(|e| matches!(e, Ok(true))));
    assert!(matches!(exist[8], Ok(false)));

    // Zero-copy through registered memory.
    let mem = HostMemAllocator::new();
    let addr = mem.alloc(1 << 20).unwrap();
    mem.write(addr, &value_for("zc", 8192)).unwrap();
    let buf = addr as *mut c_void;
    // SAFETY: `addr` is 1 MiB of HostMemAllocator memory, owned here and freed
    // only after it is unregistered below.
    unsafe {
        store.register_buffer(buf, 1 << 20).unwrap();
        store.put_from("zc", buf, 8192, None).unwrap();
        let into = (addr + 65536) as *mut c_void;
        assert_eq!(store.get_into("zc", into, 65536).unwrap(), 8192);
        assert_eq!(store.get_into("zc", into, 100).unwrap_err().code(), -600);
        store.unregister_buffer(buf).unwrap();
    }
    let mut back = vec![0u8; 8192];
    mem.read(addr + 65536, &mut back).unwrap();
    assert_eq!(back, value_for("zc", 8192));
    mem.free(addr).unwrap();

    assert!(
        store
            .batch_remove(&ks, true)
            .unwrap()
            .iter()
            .all(|r| r.is_ok())
    );
    store.remove("hello", true).unwrap();
    assert!(matches!(
        store.remove("hello", true),
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.remove_by_regex("^nothing", true).unwrap(), 0);
    store.close();
    assert!(matches!(store.get("zc"), Err(StoreError::NullHandle)));
}

#[test]
fn setup_runs_a_real_client_in_this_process() {
    let (_master, addr) = start_master(0);
    let writer = MooncakeStore::new().unwrap();
    writer
        .setup(
            "127.0.0.1",
            "P2PHANDSHAKE",
            32 << 20,
            16 << 20,
            "tcp",
            "",
            &addr,
        )
        .unwrap();
    let reader = MooncakeStore::new().unwrap();
    reader
        .setup("127.0.0.1", "P2PHANDSHAKE", 0, 16 << 20, "tcp", "", &addr)
        .unwrap();
    // Without a segment, its calls go to the writer's real client (on this
    // host, serving the same master); with the route off, its own client
    // fetches the bytes from the writer's segment.
    let direct = MooncakeStore::new()
        .unwrap()
        .with_host_route(HostRoute::Off);
    direct
        .setup("127.0.0.1", "P2PHANDSHAKE", 0, 16 << 20, "tcp", "", &addr)
        .unwrap();
    let value = value_for("shared", 300 << 10);
    writer.put("shared", &value, None).unwrap();
    assert_eq!(reader.get("shared").unwrap(), value);
    assert_eq!(direct.get("shared").unwrap(), value);
    for (who, store) in [("routed", &reader), ("direct", &direct)] {
        let key = format!("from-{who}");
        let value = value_for(&key, 70 << 10);
        store.put(&key, &value, None).unwrap();
        assert_eq!(writer.get(&key).unwrap(), value, "{who}");
        assert_eq!(store.get(&key).unwrap(), value, "{who}");
    }
    assert!(matches!(
        writer.setup("127.0.0.1", "", 0, 0, "rdma", "", &addr),
        Err(StoreError::InvalidArgument(_))
    ));
    let fresh = MooncakeStore::new().unwrap();
    assert!(matches!(
        fresh.setup("127.0.0.1", "", 0, 0, "rdma", "", &addr),
        Err(StoreError::InvalidArgument(_))
    ));
}
