//! The `mooncake` operator command against a real master and real clients:
//! status, keys, query, remove, drain (objects really move and stay readable),
//! segment files (a live owner's kept, a dead one's reclaimed), the segment lock
//! and `--keep_segment=false`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mooncake_dummyclient::DummyClient;
use mooncake_integration::*;
use mooncake_proto::ReplicateConfig;

/// Runs `mooncake ARGS` against the master's admin port; (exit ok, stdout, stderr).
fn mooncake(rpc: &str, admin_port: u16, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(workspace_bin("mooncake"))
        .arg(format!("--master={rpc}"))
        .arg(format!("--admin_port={admin_port}"))
        .args(args)
        .env_remove("MOONCAKE_MASTER")
        .env_remove("MOONCAKE_CLUSTER_TOKEN")
        .output()
        .expect("run mooncake");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn status_keys_query_remove_and_drain_through_the_command() {
    let (_master, rpc, http) = start_master_with_http(&[]);
    let admin_port: u16 = http.rsplit(':').next().unwrap().parse().unwrap();
    let (pa, pb) = (Paths::new("admin-a"), Paths::new("admin-b"));
    let _a = start_client(&pa, Some(&rpc), "64MB");
    let _b = start_client(&pb, Some(&rpc), "64MB");
    let dummy = DummyClient::connect(&pa.socket, "").unwrap();
    let keys = put_many(&dummy, "adm", 20, 100_000);
    let seg_a = format!("127.0.0.1:{}", pa.port);
    let seg_b = format!("127.0.0.1:{}", pb.port);

    // status: both segments, the keys, usage on a.
    let (ok, out, err) = mooncake(&rpc, admin_port, &["status", "--json"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["health"]["keys"], 20);
    let segs = v["segments"].as_array().unwrap();
    assert_eq!(segs.len(), 2);
    let on_a = segs
        .iter()
        .find(|s| s["segment_name"] == seg_a.as_str())
        .unwrap();
    assert!(on_a["allocator_used_bytes"].as_u64().unwrap() >= 20 * 100_000);
    let (ok, table, _) = mooncake(&rpc, admin_port, &["status"]);
    assert!(ok && table.contains("SEGMENT") && table.contains(&seg_a) && table.contains(&seg_b));

    // keys, query.
    let (ok, out, _) = mooncake(&rpc, admin_port, &["keys", "--json"]);
    let mut listed: Vec<String> = serde_json::from_str(out.trim()).unwrap();
    listed.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert!(ok && listed == expected);
    let (ok, out, _) = mooncake(&rpc, admin_port, &["query", &keys[3], "--json"]);
    let v = json(&out);
    assert!(
        ok && v["data"][0]["size_"] == 100_000 && v["data"][0]["segment_name"] == seg_a.as_str()
    );
    let (ok, out, _) = mooncake(&rpc, admin_port, &["query", "no-such-key"]);
    assert!(!ok && out.contains("OBJECT_NOT_FOUND"), "{out}");

    // remove: needs the credential (the host secret, found by the command itself).
    let (ok, out, err) = mooncake(&rpc, admin_port, &["remove", &keys[0], &keys[1], "--json"]);
    assert!(ok, "{out}{err}");
    assert_eq!(json(&out)["results"][&keys[0]], 0);
    // The real client answers existence of what it holds itself: a remove made
    // elsewhere (here, through the master's admin port) reaches it with the next
    // inventory sync (50 ms).
    assert!(wait_until(Duration::from_secs(2), || dummy
        .is_exist(&keys[0])
        == Ok(false)));
    let (ok, out, _) = mooncake(&rpc, admin_port, &["remove", &keys[0]]);
    assert!(!ok && out.contains("OBJECT_NOT_FOUND"), "{out}");
    let (ok, _, err) = mooncake(
        &rpc,
        admin_port,
        &["--token=wrong-guess", "remove", &keys[2]],
    );
    assert!(!ok && err.contains("401"), "{err}");
    assert_eq!(dummy.is_exist(&keys[2]), Ok(true));

    // drain a to b: waits until the job ends, then every object is on b and readable.
    let (ok, out, err) = mooncake(&rpc, admin_port, &["drain", &seg_a, "--to", &seg_b]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("SUCCEEDED"), "{out}");
    assert!(err.contains("18/18 objects"), "progress: {err}");
    for k in &keys[2..] {
        let (_, out, _) = mooncake(&rpc, admin_port, &["query", k, "--json"]);
        assert_eq!(json(&out)["data"][0]["segment_name"], seg_b.as_str(), "{k}");
    }
    assert_all_readable(&dummy, &keys[2..], 100_000);
    let (ok, out, _) = mooncake(&rpc, admin_port, &["health", "--json"]);
    assert!(ok && json(&out)["status"] == "ok");
    // Nothing answers on a port with no master: a clear failure.
    let (ok, _, err) = mooncake(&rpc, test_port(), &["status"]);
    assert!(!ok && err.contains("cannot reach"), "{err}");
    let _ = ReplicateConfig::default();
}

#[test]
fn segment_files_a_live_owner_keeps_and_a_dead_one_is_reclaimed() {
    let paths = Paths::new("segfiles");
    let client = ClientBuilder::new(&paths).with_size("16MB").start();
    // A second real client on the same segment file is refused, and says why.
    let second = Command::new(workspace_bin("mooncake_client"))
        .args([
            "--host=127.0.0.1".to_string(),
            format!("--port={}", test_port()),
            "--global_segment_size=16MB".into(),
            format!("--segment_path={}", paths.segment.display()),
            format!("--ipc_socket_path={}.2", paths.socket.display()),
            "--http_port=0".into(),
            "--embedded-master".into(),
            "--master_server_address=127.0.0.1:0".into(),
            "--embedded_metrics_port=0".into(),
        ])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains("in use by another running real client"),
        "{said}"
    );

    // A directory with the live client's segment and a dead one's.
    let dir = std::env::temp_dir().join(format!("mc-it-segdir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let live = dir.join("mooncake_client_1.segment");
    std::os::unix::fs::symlink(&paths.segment, &live).unwrap();
    let dead = dir.join("mooncake_client_2.segment");
    std::fs::write(&dead, vec![0u8; 1 << 20]).unwrap();
    let dir_arg = format!("--dir={}", dir.display());
    let (ok, out, _) = mooncake("127.0.0.1:1", 1, &["segments", &dir_arg, "--json"]);
    let v = json(&out);
    assert!(ok && v.as_array().unwrap().len() == 2, "{out}");
    let alive = |v: &serde_json::Value, name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"].as_str().unwrap().ends_with(name))
            .map(|f| f["owner_alive"] == true)
    };
    assert_eq!(alive(&v, "mooncake_client_1.segment"), Some(true));
    assert_eq!(alive(&v, "mooncake_client_2.segment"), Some(false));
    let (ok, out, _) = mooncake("127.0.0.1:1", 1, &["segments", &dir_arg]);
    assert!(ok && out.contains("--reclaim removes them"), "{out}");
    let (ok, out, _) = mooncake("127.0.0.1:1", 1, &["segments", &dir_arg, "--reclaim"]);
    assert!(ok && out.contains("reclaimed"), "{out}");
    assert!(!dead.exists(), "the dead owner's file is gone");
    assert!(paths.segment.exists(), "the live client's segment is kept");
    drop(client);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn keep_segment_false_removes_the_segment_on_a_clean_stop() {
    let paths = Paths::new("nokeep");
    let mut kept = ClientBuilder::new(&paths).with_size("16MB").start();
    assert!(kept.sigterm());
    assert!(
        paths.segment.exists(),
        "kept by default, for a warm restart"
    );
    let mut client = ClientBuilder::new(&paths)
        .with_size("16MB")
        .with_arg("--keep_segment=false")
        .start();
    // It found the kept file at start and re-attached it.
    assert!(client.sigterm());
    assert!(wait_until(Duration::from_secs(5), || !paths
        .segment
        .exists()));
    let mut inventory = paths.segment.clone().into_os_string();
    inventory.push(".inventory");
    assert!(!Path::new(&inventory).exists());
    inventory.push(".journal");
    assert!(!Path::new(&inventory).exists());
}
