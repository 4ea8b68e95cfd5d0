//! The single-host store end to end: real `mooncake_master` and `mooncake_client`
//! processes, dummy clients in this process or in a child process (the test binary
//! re-executed), kill -9 and restarts of every process.

#![allow(clippy::disallowed_methods)] // reads its settings from the environment

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mooncake_dummyclient::DummyClient;
use mooncake_integration::*;
use mooncake_proto::{ErrorCode, ReplicateConfig};

#[test]
fn single_host_put_get_through_the_mapped_segment() {
    let paths = Paths::new("basic");
    let _client = start_client(&paths, None, "64MB");
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    assert_eq!(dummy.health(), Ok(()));
    dummy
        .put("warmup", b"warm-up value", &ReplicateConfig::default())
        .unwrap();
    assert_eq!(dummy.get("warmup").unwrap(), b"warm-up value");
    assert_eq!(dummy.is_exist("warmup"), Ok(true));
    // Existing key: success, value unchanged.
    dummy
        .put("warmup", b"other", &ReplicateConfig::default())
        .unwrap();
    assert_eq!(dummy.get("warmup").unwrap(), b"warm-up value");
    // SGLang-sized batches.
    let keys = put_many(&dummy, "page", 256, 16 << 10);
    assert_all_readable(&dummy, &keys, 16 << 10);
    let mut probe = keys.clone();
    probe.push("absent".into());
    let exist = dummy.batch_is_exist(&probe);
    assert_eq!(exist.len(), 257);
    assert!(exist[..256].iter().all(|e| *e == Ok(true)));
    assert_eq!(exist[256], Ok(false));
    assert_eq!(dummy.get_size(&keys[0]), Ok(16 << 10));
    // Error codes.
    let mut small = [0u8; 100];
    let r = dummy.batch_get_into_slices(
        &[keys[0].clone(), "absent".into()],
        &mut [&mut small[..], &mut vec![0u8; 10][..]],
    );
    assert_eq!(
        r,
        vec![
            Err(ErrorCode::InvalidParams),
            Err(ErrorCode::ObjectNotFound)
        ]
    );
    assert_eq!(dummy.get("absent"), Err(ErrorCode::ObjectNotFound));
    assert_eq!(
        dummy.put(&"k".repeat(70_000), b"x", &ReplicateConfig::default()),
        Err(ErrorCode::InvalidKey)
    );
    assert_eq!(
        dummy.put("empty", b"", &ReplicateConfig::default()),
        Err(ErrorCode::InvalidParams)
    );
    // Removal.
    dummy.remove(&keys[0], true).unwrap();
    assert_eq!(dummy.is_exist(&keys[0]), Ok(false));
    assert_eq!(dummy.remove_by_regex("^page-1[0-9]$", true), Ok(10));
    assert_eq!(dummy.remove_all(true), Ok(246));
    // Upsert replaces.
    dummy.put("u", b"one", &ReplicateConfig::default()).unwrap();
    dummy.batch_put(&[("u", b"two-two")], &ReplicateConfig::default(), true)[0].unwrap();
    assert_eq!(dummy.get("u").unwrap(), b"two-two");
}

#[test]
fn a_killed_dummy_process_loses_nothing() {
    let paths = Paths::new("dummykill");
    let _client = start_client(&paths, None, "64MB");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "dummy_child_entry",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MC_DUMMY_SOCKET", &paths.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("child output").unwrap();
        if line.contains("MC:PUT-DONE") {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL the inference process
    child.wait().unwrap();
    let fresh = DummyClient::connect(&paths.socket, "").unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("child-{i}")).collect();
    assert_all_readable(&fresh, &keys, 4096);
}

#[test]
#[ignore = "helper: runs as the child (inference) process of a_killed_dummy_process_loses_nothing"]
fn dummy_child_entry() {
    let Ok(socket) = std::env::var("MC_DUMMY_SOCKET") else {
        return;
    };
    let dummy = DummyClient::connect(Path::new(&socket), "").unwrap();
    put_many(&dummy, "child", 100, 4096);
    println!("MC:PUT-DONE");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn real_client_kill_9_and_sigterm_then_restart_on_the_same_segment() {
    let paths = Paths::new("rckill");
    let (_master, addr) = start_master(0);
    let mut client = start_client(&paths, Some(&addr), "64MB");
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    let keys = put_many(&dummy, "survivor", 200, 8192);
    drop(dummy);

    client.kill9();
    let _client = start_client(&paths, Some(&addr), "64MB");
    let dummy = wait_readable(&paths.socket, &keys[0]);
    assert_all_readable(&dummy, &keys, 8192);
    drop(dummy);
    drop(_client);

    // Graceful stop unmounts (the master drops the objects); the restart restores them.
    let paths2 = Paths::new("rcterm");
    let mut client = start_client(&paths2, Some(&addr), "64MB");
    let dummy = DummyClient::connect(&paths2.socket, "").unwrap();
    let keys = put_many(&dummy, "graceful", 50, 1000);
    drop(dummy);
    client.sigterm();
    let _client = start_client(&paths2, Some(&addr), "64MB");
    let dummy = wait_readable(&paths2.socket, &keys[0]);
    assert_all_readable(&dummy, &keys, 1000);
}

#[test]
fn master_kill_9_and_restart_loses_nothing() {
    let paths = Paths::new("masterkill");
    let (mut master, addr) = start_master(0);
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let _client = start_client(&paths, Some(&addr), "64MB");
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    let keys = put_many(&dummy, "precious", 300, 5000);
    master.kill9();
    assert!(dummy.get(&keys[0]).is_err(), "no master, no lease");
    let (_master, _) = start_master(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while dummy.get(&keys[0]).is_err() {
        assert!(
            Instant::now() < deadline,
            "objects did not come back after the master restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_all_readable(&dummy, &keys, 5000);
}

#[test]
fn filling_beyond_capacity_keeps_puts_succeeding_and_leased_objects_survive() {
    let paths = Paths::new("fill");
    let _client = start_client(&paths, None, "8MB");
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    let first = put_many(&dummy, "first", 4, 256 << 10);
    // Reading grants a lease: these must survive the eviction that follows.
    assert_all_readable(&dummy, &first, 256 << 10);
    for round in 0..8 {
        put_many(&dummy, &format!("round{round}"), 8, 256 << 10);
    }
    assert_all_readable(&dummy, &first, 256 << 10);
}

#[test]
fn mooncake_client_takes_upstreams_command_line_verbatim() {
    let paths = Paths::new("verbatim");
    let client = ClientBuilder::new(&paths)
        .with_arg("--logtostderr=true")
        .with_arg("-logtostderr")
        .with_arg("--metadata_server=P2PHANDSHAKE")
        .with_arg("--enable_offload=false")
        .with_arg("-tenant_id")
        .with_arg("default")
        .with_arg("--nouse_mmap_arena_allocator")
        .start();
    // It came up (start() waits for readiness) and serves.
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    dummy
        .put("verbatim", b"ok", &ReplicateConfig::default())
        .unwrap();
    assert_eq!(dummy.get("verbatim").unwrap(), b"ok");
    drop(client);
}
