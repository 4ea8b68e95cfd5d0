//! End-to-end tests of the single-host store: real `mooncake_master` and
//! `mooncake_client` processes, dummy clients in this process or in a child process
//! (the test binary re-executed), kill -9 and restarts of every process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mooncake_dummyclient::DummyClient;
use mooncake_proto::{ErrorCode, ReplicateConfig};

/// A spawned daemon whose stderr is scanned for readiness; killed on drop.
struct Daemon {
    child: Child,
    log: mpsc::Receiver<String>,
}

impl Daemon {
    fn spawn(exe: &Path, args: &[String], ready: &str) -> (Daemon, String) {
        #[allow(clippy::zombie_processes)] // waited for in `Drop`
        let mut child = Command::new(exe)
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("MOONCAKE_MASTER")
            .env_remove("MOONCAKE_GLOBAL_SEGMENT_SIZE")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("{} not ready in time", exe.display()));
            if line.contains(ready) {
                return (Daemon { child, log: rx }, line);
            }
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn sigterm(&mut self) {
        let _ = rustix_kill(self.child.id());
        let _ = self.child.wait();
    }
}

fn rustix_kill(pid: u32) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    assert!(status.success());
    Ok(())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        while self.log.try_recv().is_ok() {}
    }
}

fn master_exe() -> PathBuf {
    // Binaries of other workspace packages sit next to this test's directory.
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("mooncake_master");
    assert!(
        path.exists(),
        "{} missing: build the workspace first (scripts/test.sh does)",
        path.display()
    );
    path
}

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

struct Paths {
    socket: PathBuf,
    segment: PathBuf,
    port: String,
}

impl Paths {
    fn new(tag: &str) -> Paths {
        let id = format!("{}-{tag}", std::process::id());
        let p = Paths {
            socket: std::env::temp_dir().join(format!("mc-rc-{id}.sock")),
            segment: PathBuf::from(format!("/dev/shm/mc-rc-{id}.segment")),
            // Unique per test: the port names the segment (`host:port`).
            port: (20_000
                + (std::process::id() % 1_000) * 20
                + NEXT_PORT.fetch_add(1, Ordering::Relaxed))
            .to_string(),
        };
        p.cleanup();
        p
    }
    fn cleanup(&self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.segment);
        let mut inv = self.segment.clone().into_os_string();
        inv.push(".inventory");
        let _ = std::fs::remove_file(inv);
    }
}

impl Drop for Paths {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn start_master(port: &str) -> (Daemon, String) {
    let (d, line) = Daemon::spawn(
        &master_exe(),
        &[
            "--rpc_address=127.0.0.1".into(),
            format!("--rpc_port={port}"),
            "--metrics_host=127.0.0.1".into(),
            "--metrics_port=0".into(),
        ],
        "Master service started on port",
    );
    let addr = line
        .rsplit('(')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    (d, addr)
}

fn start_client(paths: &Paths, master: Option<&str>, size: &str) -> Daemon {
    let mut args = vec![
        format!("--port={}", paths.port),
        format!("--global_segment_size={size}"),
        format!("--ipc_socket_path={}", paths.socket.display()),
        format!("--segment_path={}", paths.segment.display()),
    ];
    match master {
        Some(m) => args.push(format!("--master_server_address={m}")),
        None => {
            args.push("--embedded-master".into());
            args.push("--master_server_address=127.0.0.1:0".into());
            args.push("--embedded_metrics_port=0".into());
        }
    }
    Daemon::spawn(
        Path::new(env!("CARGO_BIN_EXE_mooncake_client")),
        &args,
        "mooncake_client ready",
    )
    .0
}

fn value_for(key: &str, len: usize) -> Vec<u8> {
    key.bytes().cycle().take(len).collect()
}

fn put_many(dummy: &DummyClient, prefix: &str, n: usize, len: usize) -> Vec<String> {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let values: Vec<Vec<u8>> = keys.iter().map(|k| value_for(k, len)).collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    for (i, r) in dummy
        .batch_put(&keys, &refs, &ReplicateConfig::default(), false)
        .into_iter()
        .enumerate()
    {
        r.unwrap_or_else(|e| panic!("put {}: {e}", keys[i]));
    }
    keys
}

fn assert_all_readable(dummy: &DummyClient, keys: &[String], len: usize) {
    let mut bufs: Vec<Vec<u8>> = keys.iter().map(|_| vec![0u8; len]).collect();
    let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let results = dummy.batch_get_into(keys, &mut refs);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(*r, Ok(len as u64), "{}", keys[i]);
        assert_eq!(bufs[i], value_for(&keys[i], len), "bytes of {}", keys[i]);
    }
}

/// Retries until the store answers (after a restart the client remounts within ~1 s).
fn wait_readable(paths: &Paths, key: &str) -> DummyClient {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(d) = DummyClient::connect(&paths.socket, "")
            && d.is_exist(key) == Ok(true)
        {
            return d;
        }
        assert!(Instant::now() < deadline, "store did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

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
    let r = dummy.batch_get_into(
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
        dummy.put(&"k".repeat(5000), b"x", &ReplicateConfig::default()),
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
    dummy.batch_put(
        &["u".into()],
        &[b"two-two"],
        &ReplicateConfig::default(),
        true,
    )[0]
    .unwrap();
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
    let (_master, addr) = start_master("0");
    let mut client = start_client(&paths, Some(&addr), "64MB");
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    let keys = put_many(&dummy, "survivor", 200, 8192);
    drop(dummy);

    client.kill9();
    let _client = start_client(&paths, Some(&addr), "64MB");
    let dummy = wait_readable(&paths, &keys[0]);
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
    let dummy = wait_readable(&paths2, &keys[0]);
    assert_all_readable(&dummy, &keys, 1000);
}

#[test]
fn master_kill_9_and_restart_loses_nothing() {
    let paths = Paths::new("masterkill");
    let (mut master, addr) = start_master("0");
    let port = addr.rsplit(':').next().unwrap().to_string();
    let _client = start_client(&paths, Some(&addr), "64MB");
    let dummy = DummyClient::connect(&paths.socket, "").unwrap();
    let keys = put_many(&dummy, "precious", 300, 5000);
    master.kill9();
    assert!(dummy.get(&keys[0]).is_err(), "no master, no lease");
    let (_master, _) = start_master(&port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while dummy.is_exist(&keys[0]) != Ok(true) {
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
