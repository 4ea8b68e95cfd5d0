//! Harness for the multi-process tests: spawns the real `mooncake_master` and
//! `mooncake_client` binaries (built by `cargo test --workspace` next to the test
//! executables) with temp paths and unique ports, waits for their readiness line,
//! and kills them on drop.
//!
//! # Layout
//!
//! - [`Daemon`]: a spawned binary, its stderr lines, kill -9 / SIGTERM.
//! - [`Paths`]: per-client socket, segment file and port, removed on drop.
//! - [`start_master`], [`ClientBuilder`]: start the two daemons.
//! - [`value_for`], [`put_many`], [`assert_all_readable`], [`wait_readable`]: data checks.
//! - [`netns`]: network namespaces joined by a veth pair (root only).
//! - [`etcd`]: a real etcd server for the HA tests.

pub mod etcd;
pub mod netns;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mooncake_dummyclient::DummyClient;
use mooncake_proto::ReplicateConfig;

/// A spawned daemon whose stderr is scanned for readiness; killed on drop.
pub struct Daemon {
    child: Child,
    log: mpsc::Receiver<String>,
    /// The line that matched the readiness pattern.
    pub ready_line: String,
}

impl Daemon {
    /// Spawns `program args` and waits (30 s) for a stderr line containing `ready`.
    pub fn spawn(program: &Path, args: &[String], ready: &str) -> Daemon {
        Self::spawn_in(None, program, args, ready)
    }

    /// Like [`spawn`](Self::spawn), inside network namespace `netns` when given.
    pub fn spawn_in(netns: Option<&str>, program: &Path, args: &[String], ready: &str) -> Daemon {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        #[allow(clippy::zombie_processes)] // waited for in `Drop`
        let mut child = cmd
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("MOONCAKE_MASTER")
            .env_remove("MOONCAKE_GLOBAL_SEGMENT_SIZE")
            .env_remove("MOONCAKE_TRANSFER_PORT")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(ready) => {
                    return Daemon {
                        child,
                        log: rx,
                        ready_line: line,
                    };
                }
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "{} not ready in time; its output:\n{}",
                    program.display(),
                    seen.join("\n")
                ),
            }
        }
    }

    /// The field after `name ` in the readiness line (`... | http 127.0.0.1:4 | ...`).
    pub fn ready_field(&self, name: &str) -> Option<String> {
        self.ready_line
            .split(" | ")
            .flat_map(|part| part.split(": "))
            .find_map(|part| part.trim().strip_prefix(&format!("{name} ")))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit; returns whether it exited cleanly.
    pub fn sigterm(&mut self) -> bool {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM failed");
        self.child.wait().is_ok_and(|s| s.success())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lines logged since start (drains them).
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        while self.log.try_recv().is_ok() {}
    }
}

/// A workspace binary next to the running test executable.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join(name);
    assert!(
        path.exists(),
        "{} missing: build the workspace first (`cargo test --workspace` or scripts/test.sh)",
        path.display()
    );
    path
}

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// A free-ish port, unique within this test process, below the kernel's ephemeral
/// range (32768+) so no outgoing connection can be holding it.
pub fn test_port() -> u16 {
    let base = 10_000 + (std::process::id() % 800) * 25;
    (base + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % 25) as u16
}

/// Per-client socket, segment file and port; files removed on drop.
pub struct Paths {
    /// Unix socket for dummies.
    pub socket: PathBuf,
    /// Shared-memory segment file.
    pub segment: PathBuf,
    /// The client's `--port` (also names its segment `host:port`).
    pub port: u16,
}

impl Paths {
    /// Fresh paths tagged `tag`.
    pub fn new(tag: &str) -> Paths {
        let id = format!("{}-{tag}", std::process::id());
        let p = Paths {
            socket: std::env::temp_dir().join(format!("mc-it-{id}.sock")),
            segment: PathBuf::from(format!("/dev/shm/mc-it-{id}.segment")),
            port: test_port(),
        };
        p.cleanup();
        p
    }

    fn cleanup(&self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_file(&self.segment);
        let mut inv = self.segment.clone().into_os_string();
        inv.push(".inventory");
        let _ = std::fs::remove_file(&inv);
        inv.push(".journal");
        let _ = std::fs::remove_file(inv);
    }
}

impl Drop for Paths {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Starts `mooncake_master` on `host:port` (port 0 = any); returns it and its RPC address.
pub fn start_master_on(netns: Option<&str>, host: &str, port: u16) -> (Daemon, String) {
    let d = Daemon::spawn_in(
        netns,
        &workspace_bin("mooncake_master"),
        &[
            format!("--rpc_address={host}"),
            format!("--rpc_port={port}"),
            format!("--metrics_host={host}"),
            "--metrics_port=0".into(),
        ],
        "Master service started on port",
    );
    let addr = rpc_address(&d);
    (d, addr)
}

/// The RPC address a master printed at start (`... started on port N (addr)`).
fn rpc_address(master: &Daemon) -> String {
    master
        .ready_line
        .rsplit('(')
        .next()
        .expect("address in parentheses")
        .trim_end_matches(')')
        .to_string()
}

/// Starts `mooncake_master` on loopback.
pub fn start_master(port: u16) -> (Daemon, String) {
    start_master_on(None, "127.0.0.1", port)
}

/// Starts `mooncake_master` on loopback with its admin HTTP on a known port, and
/// `extra` flags; returns it, its RPC address and its admin address, once the
/// admin port answers.
pub fn start_master_with_http(extra: &[&str]) -> (Daemon, String, String) {
    let http_port = test_port();
    let mut args = vec![
        "--rpc_address=127.0.0.1".to_string(),
        "--rpc_port=0".into(),
        "--metrics_host=127.0.0.1".into(),
        format!("--metrics_port={http_port}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let d = Daemon::spawn(
        &workspace_bin("mooncake_master"),
        &args,
        "Master service started on port",
    );
    let rpc = rpc_address(&d);
    let http = format!("127.0.0.1:{http_port}");
    assert!(wait_until(Duration::from_secs(10), || http_get(
        &http, "/health"
    )
    .is_ok()));
    (d, rpc, http)
}

/// Options of a `mooncake_client` to start.
pub struct ClientBuilder<'a> {
    paths: &'a Paths,
    master: Option<String>,
    size: String,
    host: String,
    netns: Option<String>,
    extra: Vec<String>,
}

impl<'a> ClientBuilder<'a> {
    /// A client on `paths` with a 64 MB segment, on 127.0.0.1, with an embedded master.
    pub fn new(paths: &'a Paths) -> Self {
        ClientBuilder {
            paths,
            master: None,
            size: "64MB".into(),
            host: "127.0.0.1".into(),
            netns: None,
            extra: Vec::new(),
        }
    }

    /// Uses the master at `addr` instead of an embedded one.
    pub fn with_master(mut self, addr: &str) -> Self {
        self.master = Some(addr.to_string());
        self
    }

    /// Segment size ("64MB", ...).
    pub fn with_size(mut self, size: &str) -> Self {
        self.size = size.to_string();
        self
    }

    /// `--host`.
    pub fn with_host(mut self, host: &str) -> Self {
        self.host = host.to_string();
        self
    }

    /// Runs inside network namespace `ns`.
    pub fn in_netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    /// Extra flags.
    pub fn with_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// Spawns it and waits until dummies can connect.
    pub fn start(self) -> Daemon {
        let mut args = vec![
            format!("--host={}", self.host),
            format!("--port={}", self.paths.port),
            format!("--global_segment_size={}", self.size),
            format!("--ipc_socket_path={}", self.paths.socket.display()),
            format!("--segment_path={}", self.paths.segment.display()),
            "--http_port=0".into(),
        ];
        match self.master {
            Some(m) => args.push(format!("--master_server_address={m}")),
            None => {
                args.push("--embedded-master".into());
                args.push(format!("--master_server_address={}:0", self.host));
                args.push("--embedded_metrics_port=0".into());
            }
        }
        args.extend(self.extra);
        Daemon::spawn_in(
            self.netns.as_deref(),
            &workspace_bin("mooncake_client"),
            &args,
            "mooncake_client ready",
        )
    }
}

/// Starts a client with an embedded master (`master = None`) or on `master`.
pub fn start_client(paths: &Paths, master: Option<&str>, size: &str) -> Daemon {
    let mut b = ClientBuilder::new(paths).with_size(size);
    if let Some(m) = master {
        b = b.with_master(m);
    }
    b.start()
}

/// A value derived from its key, so every object's bytes are checkable.
pub fn value_for(key: &str, len: usize) -> Vec<u8> {
    key.bytes()
        .chain(b"#".iter().copied())
        .cycle()
        .take(len)
        .collect()
}

/// Puts `n` objects `prefix-i` of `len` bytes through `dummy`; panics on failure.
pub fn put_many(dummy: &DummyClient, prefix: &str, n: usize, len: usize) -> Vec<String> {
    put_many_with(dummy, prefix, n, len, &ReplicateConfig::default())
}

/// [`put_many`] with a replication config.
pub fn put_many_with(
    dummy: &DummyClient,
    prefix: &str,
    n: usize,
    len: usize,
    config: &ReplicateConfig,
) -> Vec<String> {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let values: Vec<Vec<u8>> = keys.iter().map(|k| value_for(k, len)).collect();
    let objects: Vec<(&str, &[u8])> = keys
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(Vec::as_slice))
        .collect();
    for (i, r) in dummy
        .batch_put(&objects, config, false)
        .into_iter()
        .enumerate()
    {
        r.unwrap_or_else(|e| panic!("put {}: {e}", keys[i]));
    }
    keys
}

/// Reads every key back and compares its bytes.
pub fn assert_all_readable(dummy: &DummyClient, keys: &[String], len: usize) {
    let mut bufs: Vec<Vec<u8>> = keys.iter().map(|_| vec![0u8; len]).collect();
    let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let results = dummy.batch_get_into_slices(keys, &mut refs);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(*r, Ok(len as u64), "{}", keys[i]);
        assert!(
            bufs[i] == value_for(&keys[i], len),
            "bytes of {} differ",
            keys[i]
        );
    }
}

/// Connects to `socket` and retries until `key` can be read (after restarts;
/// an existence probe is no proof: the real client answers it for what it
/// holds before it noticed its master is gone).
pub fn wait_readable(socket: &Path, key: &str) -> DummyClient {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(d) = DummyClient::connect(socket, "")
            && d.get(key).is_ok()
        {
            return d;
        }
        assert!(Instant::now() < deadline, "store did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `f` every 50 ms until it is true, up to `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// A plain HTTP GET; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((status, body))
}

/// A value that names its key and a sequence number, with a length of its own:
/// a reader can tell one complete value of the key from any other bytes.
pub fn versioned_value(key: &str, seq: u64) -> Vec<u8> {
    let len = (256 << 10) + (seq as usize * 4099) % (24 << 10);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&(len as u64).to_le_bytes());
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.len() as u64;
    for b in key.bytes() {
        x = x.rotate_left(5) ^ u64::from(b);
    }
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Whether `bytes` is exactly one value `versioned_value(key, _)` wrote.
pub fn is_complete_value(key: &str, bytes: &[u8]) -> bool {
    if bytes.len() < 16 {
        return false;
    }
    let seq = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    seq < 1 << 40 && versioned_value(key, seq) == bytes
}
