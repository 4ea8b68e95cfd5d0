//! End-to-end tests of the `mooncake_master` binary: RPC over TCP with the real
//! handshake and codec, the admin HTTP endpoints, the metadata server, flags, bad
//! input, and metadata rebuild after `kill -9`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{MasterProcess, http, metric};
use mooncake_proto::codec::connect_master;
use mooncake_proto::master::MasterClient;
use mooncake_proto::*;
use tarpc::context;
use uuid::Uuid;

fn ctx() -> context::Context {
    context::current()
}

fn segment(name: &str, size: u64) -> SegmentDesc {
    SegmentDesc {
        id: Uuid::new_v4(),
        name: name.into(),
        host: "127.0.0.1".into(),
        base: 0x1000_0000,
        size,
        transport_endpoint: "127.0.0.1:12300".into(),
        protocol: Protocol::Tcp,
        medium: Default::default(),
    }
}

async fn client(m: &MasterProcess) -> MasterClient {
    connect_master(&m.rpc, "").await.expect("connect master")
}

#[tokio::test]
async fn rpc_object_lifecycle_and_http_views() {
    let m = MasterProcess::start(&[]);
    let c = client(&m).await;
    assert_eq!(c.service_ready(ctx()).await.unwrap(), VERSION);
    // SGLang's readiness check: empty until a segment is mounted.
    assert_eq!(
        http("GET", &m.metrics, "/get_all_segments", b"").1.trim(),
        ""
    );
    let me = Uuid::new_v4();
    c.mount_segment(ctx(), me, segment("node-a", 256 << 20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        http("GET", &m.metrics, "/get_all_segments", b"").1.trim(),
        "node-a"
    );
    // Upstream's segment status endpoint (answers compared with its wheel).
    let (status, body) = http(
        "GET",
        &m.metrics,
        "/api/v1/segments/status?segment=node-a",
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(r#""status":1"#) && body.contains(r#""status_name":"OK""#),
        "{body}"
    );
    let (status, body) = http(
        "GET",
        &m.metrics,
        "/api/v1/segments/status?segment=nope",
        b"",
    );
    assert_eq!(status, 404);
    assert!(body.contains("-101"), "{body}");
    let (status, body) = http("GET", &m.metrics, "/api/v1/segments/status", b"");
    assert_eq!(status, 400);
    assert!(body.contains("-600"), "{body}");

    let keys: Vec<String> = (0..256).map(|i| format!("prefix-hash-{i:04}_k")).collect();
    let sizes = vec![4096u64; keys.len()];
    let started = c
        .batch_put_start(ctx(), me, keys.clone(), sizes, ReplicateConfig::default())
        .await
        .unwrap();
    assert_eq!(started.len(), 256);
    assert!(
        started
            .iter()
            .all(|r| r.as_ref().is_ok_and(|v| v.len() == 1))
    );
    // Nothing is visible before put_end.
    let exist = c.batch_exist_key(ctx(), keys.clone()).await.unwrap();
    assert!(exist.iter().all(|e| *e == Ok(false)));
    let ended = c.batch_put_end(ctx(), me, keys.clone()).await.unwrap();
    assert!(ended.iter().all(|r| r.is_ok()));
    let mut probe = keys.clone();
    probe.push("absent".into());
    probe.push(String::new());
    let exist = c.batch_exist_key(ctx(), probe).await.unwrap();
    assert_eq!(exist.len(), 258, "one result per key");
    assert!(exist[..256].iter().all(|e| *e == Ok(true)));
    assert_eq!(exist[256], Ok(false));
    assert_eq!(
        exist[257],
        Ok(false),
        "the empty key names no object (upstream)"
    );

    let list = c
        .get_replica_list(ctx(), keys[0].clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(list.size, 4096);
    assert_eq!(list.replicas[0].segment_name, "node-a");
    assert_eq!(list.replicas[0].transport_endpoint, "127.0.0.1:12300");
    assert_eq!(c.get_size(ctx(), keys[1].clone()).await.unwrap(), Ok(4096));
    // Duplicate put: "already exists" (clients map it to success), value untouched.
    assert_eq!(
        c.put_start(ctx(), me, keys[1].clone(), 10, ReplicateConfig::default())
            .await
            .unwrap(),
        Err(ErrorCode::ObjectAlreadyExists)
    );
    assert_eq!(
        c.remove(ctx(), keys[0].clone(), false).await.unwrap(),
        Err(ErrorCode::ObjectHasLease)
    );
    let removed = c
        .batch_remove(ctx(), vec![keys[2].clone(), "nope".into()], false)
        .await
        .unwrap();
    assert_eq!(removed, vec![Ok(()), Err(ErrorCode::ObjectNotFound)]);
    assert_eq!(
        c.remove_by_regex(ctx(), "-00[0-4][0-9]_k$".into(), false)
            .await
            .unwrap(),
        Ok(48)
    );

    // HTTP views agree with the RPC state.
    let (status, body) = http("GET", &m.metrics, "/metrics", b"");
    assert_eq!(status, 200);
    assert_eq!(metric(&body, "master_key_count"), Some(207.0));
    assert_eq!(
        metric(&body, "master_total_capacity_bytes"),
        Some((256u64 << 20) as f64)
    );
    assert_eq!(
        metric(&body, "master_allocated_bytes"),
        Some(207.0 * 4096.0)
    );
    assert_eq!(
        metric(&body, "master_batch_put_start_items_total"),
        Some(256.0)
    );
    assert_eq!(metric(&body, "master_active_clients"), Some(1.0));
    assert!(metric(&body, "master_get_replica_list_latency_seconds_count").unwrap() >= 1.0);
    let (status, body) = http(
        "GET",
        &m.metrics,
        &format!("/query_key?key={}", keys[100]),
        b"",
    );
    assert_eq!(status, 200);
    // Upstream's shape: success and the replicas' size_ / transport_endpoint_.
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["success"], true);
    assert_eq!(v["data"][0]["size_"], 4096);
    assert_eq!(v["data"][0]["segment_name"], "node-a");
    let (status, body) = http("GET", &m.metrics, "/query_key?key=missing", b"");
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["error_code"].as_i64(), v["error_message"].as_str()),
        (Some(-704), Some("OBJECT_NOT_FOUND"))
    );
    let (status, body) = http(
        "GET",
        &m.metrics,
        &format!("/batch_query_keys?keys={},missing", keys[100]),
        b"",
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][&keys[100]]["values"][0]["size_"], 4096);
    assert_eq!(v["data"]["missing"]["error"], "OBJECT_NOT_FOUND");
    assert_eq!(http("GET", &m.metrics, "/batch_query_keys", b"").0, 400);
    let (status, body) = http("GET", &m.metrics, "/query_segment?segment=node-a", b"");
    assert_eq!(status, 200);
    assert!(
        body.starts_with("node-a\nUsed(bytes): 847872\nCapacity(bytes) : "),
        "{body}"
    );
    assert_eq!(
        http("GET", &m.metrics, "/query_segment?segment=nope", b"").0,
        500
    );
    assert_eq!(
        http("GET", &m.metrics, "/no/such/page", b""),
        (404, "404 Not Found".into())
    );
    let (_, summary) = http("GET", &m.metrics, "/metrics/summary", b"");
    assert!(summary.contains("Keys: 207"), "{summary}");
    assert!(summary.contains("Clients: 1"), "{summary}");
    let (status, health) = http("GET", &m.metrics, "/health", b"");
    assert_eq!(status, 200);
    assert!(health.contains("\"ok\""));
    let (_, keys_body) = http("GET", &m.metrics, "/get_all_keys", b"");
    assert_eq!(keys_body.lines().count(), 207);
    let (_, detail) = http("GET", &m.metrics, "/get_segments_detail", b"");
    let v: serde_json::Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(v["total_segments"], 1);
    assert_eq!(v["segments"][0]["allocator_used_bytes"], 847872);
    assert_eq!(v["segments"][0]["segment_name"], "node-a");
    assert_eq!(c.remove_all(ctx(), true).await.unwrap(), Ok(207));
}

#[tokio::test]
async fn cluster_token_is_enforced() {
    let m = MasterProcess::start(&["--cluster_token=s3cret"]);
    let err = connect_master(&m.rpc, "wrong")
        .await
        .expect_err("wrong token refused");
    assert_eq!(err.code(), ErrorCode::IllegalClient);
    let err = connect_master(&m.rpc, "")
        .await
        .expect_err("missing token refused");
    assert_eq!(err.code(), ErrorCode::IllegalClient);
    assert!(
        m.wait_for_log("wrong cluster token", Duration::from_secs(5))
            .is_some()
    );
    let c = connect_master(&m.rpc, "s3cret").await.unwrap();
    assert_eq!(c.service_ready(ctx()).await.unwrap(), VERSION);
}

#[tokio::test]
async fn malformed_frames_and_dead_peers_do_not_hurt_other_clients() {
    let mut m = MasterProcess::start(&[]);
    let good = client(&m).await;
    let me = Uuid::new_v4();
    good.mount_segment(ctx(), me, segment("s", 16 << 20))
        .await
        .unwrap()
        .unwrap();
    // Garbage instead of a handshake, a huge length prefix, a truncated frame.
    for payload in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        vec![0, 0, 0, 100, 1, 2],
    ] {
        let mut s = TcpStream::connect(&m.rpc).unwrap();
        s.write_all(&payload).unwrap();
        drop(s);
    }
    // A valid handshake followed by a garbage request frame.
    {
        let stream = tokio::net::TcpStream::connect(&m.rpc).await.unwrap();
        let secret = mooncake_proto::auth::shared_host_secret().unwrap();
        let framed = mooncake_proto::codec::client_handshake(stream, "master", &secret)
            .await
            .unwrap();
        let mut raw = framed.into_inner();
        use tokio::io::AsyncWriteExt;
        raw.write_all(&[0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x00])
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        use tokio::io::AsyncReadExt;
        let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(
            n, 0,
            "the master closes a connection that sends a malformed frame"
        );
    }
    // A client that dies with a request half sent.
    {
        let mut s = TcpStream::connect(&m.rpc).unwrap();
        s.write_all(&[0, 0, 0, 50, 1]).unwrap();
    }
    assert!(m.alive());
    good.put_start(
        ctx(),
        me,
        "still-works".into(),
        10,
        ReplicateConfig::default(),
    )
    .await
    .unwrap()
    .unwrap();
    good.put_end(ctx(), me, "still-works".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        good.exist_key(ctx(), "still-works".into()).await.unwrap(),
        Ok(true)
    );
    // Oversized keys and bad sizes get codes, the master stays up.
    let long = "k".repeat(mooncake_proto::DEFAULT_MAX_KEY_LEN + 1);
    assert_eq!(
        good.put_start(ctx(), me, long, 1, ReplicateConfig::default())
            .await
            .unwrap(),
        Err(ErrorCode::InvalidKey)
    );
    assert_eq!(
        good.put_start(ctx(), me, "z".into(), 0, ReplicateConfig::default())
            .await
            .unwrap(),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        good.batch_put_start(
            ctx(),
            me,
            vec!["a".into(), "b".into()],
            vec![1],
            ReplicateConfig::default()
        )
        .await
        .unwrap(),
        vec![Err(ErrorCode::InvalidParams), Err(ErrorCode::InvalidParams)]
    );
    assert_eq!(
        good.get_replica_list_by_regex(ctx(), "(".into())
            .await
            .unwrap(),
        Err(ErrorCode::InvalidParams)
    );
    assert_eq!(
        good.unmount_segment(ctx(), Uuid::new_v4(), Uuid::new_v4())
            .await
            .unwrap(),
        Err(ErrorCode::SegmentNotFound)
    );
    assert!(m.alive());
}

#[tokio::test]
async fn metadata_server_stores_and_deletes() {
    let m = MasterProcess::start(&[
        "--enable_http_metadata_server=true",
        "--http_metadata_server_host=127.0.0.1",
        "--http_metadata_server_port=0",
    ]);
    let md = m.metadata.clone().unwrap();
    assert_eq!(http("GET", &md, "/health", b"").0, 200);
    assert_eq!(http("GET", &md, "/metadata?key=mooncake/ram/a", b"").0, 404);
    assert_eq!(
        http("PUT", &md, "/metadata?key=mooncake/ram/a", b"{\"x\":1}").0,
        200
    );
    assert_eq!(
        http("GET", &md, "/metadata?key=mooncake/ram/a", b""),
        (200, "{\"x\":1}".to_string())
    );
    assert_eq!(
        http("DELETE", &md, "/metadata?key=mooncake/ram/a", b"").0,
        200
    );
    assert_eq!(http("GET", &md, "/metadata?key=mooncake/ram/a", b"").0, 404);
}

#[test]
fn upstream_flag_spellings_are_accepted_and_bad_values_rejected() {
    // The spellings of upstream's guides.
    let m = MasterProcess::start(&[
        "--eviction_high_watermark_ratio=0.95",
        "-v=1",
        "--default_kv_lease_ttl=5s",
        "--enable_metric_reporting",
        "--allocation_strategy",
        "free_ratio_first",
    ]);
    assert!(
        m.rpc.starts_with("127.0.0.1:"),
        "binds exactly the address given: {}",
        m.rpc
    );
    assert!(m.metrics.starts_with("127.0.0.1:"));
    for bad in [
        vec!["--eviction_ratio=2"],
        vec!["--allocation_strategy=bogus"],
        vec!["--default_kv_lease_ttl=soon"],
        vec!["--enable_ha=true"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mooncake_master"))
            .args([
                "--rpc_port=0",
                "--metrics_port=0",
                "--rpc_address=127.0.0.1",
                "--metrics_host=127.0.0.1",
            ])
            .args(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(!out.stderr.is_empty(), "{bad:?} gives a reason");
    }
}

#[test]
fn prints_startup_lines_and_periodic_summary() {
    let m = MasterProcess::start(&[]);
    let line = m
        .wait_for_log("Master Metrics: Storage:", Duration::from_secs(5))
        .expect("summary at start");
    assert!(line.contains("Keys: 0"), "{line}");
    assert!(line.contains("Clients: 0"), "{line}");
}

#[tokio::test]
async fn kill_9_master_restart_rebuilds_from_client_inventories() {
    let mut m = MasterProcess::start(&[]);
    let port = m.rpc.rsplit(':').next().unwrap().to_string();
    let c = client(&m).await;
    let me = Uuid::new_v4();
    let seg = segment("survivor", 64 << 20);
    c.mount_segment(ctx(), me, seg.clone())
        .await
        .unwrap()
        .unwrap();
    // The owner keeps its inventory in sync with the master.
    assert!(
        c.sync_inventory(ctx(), me, 0)
            .await
            .unwrap()
            .unwrap()
            .resync_required
    );
    let snapshot = c.fetch_inventory(ctx(), me).await.unwrap().unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("obj{i}")).collect();
    let started = c
        .batch_put_start(
            ctx(),
            me,
            keys.clone(),
            vec![10_000; 100],
            ReplicateConfig::default(),
        )
        .await
        .unwrap();
    c.batch_put_end(ctx(), me, keys.clone()).await.unwrap();
    let delta = c
        .sync_inventory(ctx(), me, snapshot.seq)
        .await
        .unwrap()
        .unwrap();
    let inventory: Vec<InventoryEntry> = delta
        .changes
        .into_iter()
        .filter_map(|ch| match ch {
            InventoryChange::Added(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(inventory.len(), 100);

    m.kill();
    let m2 = MasterProcess::start_on(&[], &port);
    let c2 = client(&m2).await;
    assert_eq!(
        c2.ping(ctx(), me).await.unwrap().unwrap().status,
        ClientStatus::NeedRemount
    );
    assert_eq!(
        c2.exist_key(ctx(), keys[0].clone()).await.unwrap(),
        Ok(false)
    );
    let report = c2
        .remount_segment(ctx(), me, vec![seg.clone()], inventory, true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.restored, 100);
    assert!(report.rejected.is_empty());
    let lists = c2
        .batch_get_replica_list(ctx(), keys.clone())
        .await
        .unwrap();
    for (i, l) in lists.iter().enumerate() {
        let l = l.as_ref().expect("restored");
        assert_eq!(l.size, 10_000);
        assert_eq!(
            l.replicas[0].offset,
            started[i].as_ref().unwrap()[0].offset,
            "same bytes"
        );
    }
    let (_, body) = http("GET", &m2.metrics, "/metrics", b"");
    assert_eq!(metric(&body, "master_key_count"), Some(100.0));
    assert_eq!(metric(&body, "master_restored_objects_total"), Some(100.0));
}

#[tokio::test]
async fn expired_client_segments_disappear() {
    let m = MasterProcess::start(&["--client_ttl=1"]);
    let c = client(&m).await;
    let me = Uuid::new_v4();
    c.mount_segment(ctx(), me, segment("mortal", 1 << 20))
        .await
        .unwrap()
        .unwrap();
    c.put_start(ctx(), me, "k".into(), 10, ReplicateConfig::default())
        .await
        .unwrap()
        .unwrap();
    c.put_end(ctx(), me, "k".into()).await.unwrap().unwrap();
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.get_all_segments(ctx()).await.unwrap().is_empty() {
            gone = true;
            break;
        }
    }
    assert!(gone, "segment of a silent client unmounted");
    assert_eq!(c.exist_key(ctx(), "k".into()).await.unwrap(), Ok(false));
    assert_eq!(
        c.ping(ctx(), me).await.unwrap().unwrap().status,
        ClientStatus::NeedRemount
    );
}

/// Runs `mooncake_master` with `flags` until it reports its RPC port; its log so far.
fn start_and_collect(flags: &[&str]) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mooncake_master"))
        .args([
            "--rpc_address=127.0.0.1",
            "--rpc_port=0",
            "--metrics_host=127.0.0.1",
            "--metrics_port=0",
        ])
        .args(flags)
        .env("NO_COLOR", "1")
        .env("FLAGS_eviction_ratio", "0.1")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let done = line.contains("Master service started on port");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn upstreams_command_lines_verbatim_with_glog_and_gflags_flags() {
    // The forms upstream's CI, e2e scripts and benchmark docs use.
    let flagfile = std::env::temp_dir().join(format!("mc-master-flags-{}", std::process::id()));
    std::fs::write(
        &flagfile,
        "# from a file\n--eviction_high_watermark_ratio=0.95\n",
    )
    .unwrap();
    let log = start_and_collect(&[
        "--logtostderr=true",
        "-logtostderr",
        "-v=1",
        "--enable_oplog=true",
        "--cluster_id",
        "test-cluster",
        "--noenable_snapshot",
        "-minloglevel=0",
        &format!("--flagfile={}", flagfile.display()),
        "--fromenv=eviction_ratio",
    ]);
    std::fs::remove_file(&flagfile).unwrap();
    let text = log.join("\n");
    assert!(text.contains("Master service started on port"), "{text}");
    // (`--cluster_id` is ours now: it names the HA cluster, no warning.)
    assert!(
        !text.contains("--cluster_id=test-cluster: an upstream flag"),
        "{text}"
    );
    for flag in ["--enable_oplog=true", "--enable_snapshot=false"] {
        assert!(
            text.contains(&format!("{flag}: an upstream flag with no effect")),
            "no warning for {flag}: {text}"
        );
    }
    assert!(
        !text.contains("--logtostderr"),
        "glog's flags are honoured, not warned about"
    );

    // --log_dir writes the log there (and, with --alsologtostderr, to stderr too).
    let dir = std::env::temp_dir().join(format!("mc-master-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log = start_and_collect(&[&format!("--log_dir={}", dir.display()), "--alsologtostderr"]);
    assert!(log.iter().any(|l| l.contains("Master service started")));
    let file = std::fs::read_to_string(dir.join("mooncake_master.log")).unwrap();
    assert!(file.contains("Master service started on port"), "{file}");
    std::fs::remove_dir_all(&dir).unwrap();

    // --config_path: upstream's JSON config file; the command line wins.
    let config = std::env::temp_dir().join(format!("mc-master-config-{}.json", std::process::id()));
    std::fs::write(
        &config,
        r#"{"rpc_port": 1, "enable_oplog": true, "eviction_high_watermark_ratio": 0.9}"#,
    )
    .unwrap();
    let log = start_and_collect(&[&format!("--config_path={}", config.display())]);
    std::fs::remove_file(&config).unwrap();
    let text = log.join("\n");
    assert!(
        text.contains("--enable_oplog=true: an upstream flag with no effect"),
        "{text}"
    );
    assert!(
        !text.contains("port 1 "),
        "--rpc_port=0 on the command line wins: {text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_mooncake_master"))
        .args(["--rpc_port=0", "--config_path=/nonexistent/master.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/master.json"));

    // A flag neither upstream nor this build has is still an error.
    let out = Command::new(env!("CARGO_BIN_EXE_mooncake_master"))
        .args(["--rpc_port=0", "--made_up_flag=1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn ha_settings_that_cannot_work_stop_the_master_with_the_reason() {
    let refuse = |args: &[&str], reason: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_mooncake_master"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    };
    // No etcd endpoints.
    refuse(
        &["--enable_ha=true", "--rpc_address=127.0.0.1"],
        "etcd endpoints",
    );
    // A wildcard address cannot be written to etcd for clients to dial.
    refuse(
        &["--enable_ha", "--ha_backend_connstring=127.0.0.1:2379"],
        "--rpc_address and --rpc_port must be the address clients reach",
    );
    // Upstream's other backends are not built here.
    for backend in ["redis", "k8s"] {
        refuse(
            &[
                "--enable_ha=true",
                &format!("--ha_backend_type={backend}"),
                "--ha_backend_connstring=127.0.0.1:6379",
                "--rpc_address=127.0.0.1",
            ],
            "backend is not built here",
        );
    }
}
