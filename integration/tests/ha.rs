//! High availability against a real etcd: two `mooncake_master --enable_ha`
//! processes, real clients given `etcd://…`, dummies writing and reading while the
//! leader is killed, paused past its lease, or etcd and every master restart.
//! Skipped, saying why, where etcd is not installed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mooncake_dummyclient::DummyClient;
use mooncake_integration::etcd::Etcd;
use mooncake_integration::*;
use mooncake_proto::ReplicateConfig;

/// An HA master: its daemon, RPC and HTTP addresses.
struct HaMaster {
    daemon: Daemon,
    rpc: String,
    http: String,
    args: Vec<String>,
}

impl HaMaster {
    /// A master on `host` (a loopback address of its own, so that every master
    /// has the same ports, as on separate hosts).
    fn start(etcd: &str, host: &str, rpc_port: u16, http_port: u16) -> HaMaster {
        let args = vec![
            "--enable_ha=true".to_string(),
            "--ha_backend_type=etcd".into(),
            format!("--ha_backend_connstring={etcd}"),
            format!("--rpc_address={host}"),
            format!("--rpc_port={rpc_port}"),
            format!("--metrics_host={host}"),
            format!("--metrics_port={http_port}"),
        ];
        let daemon = Daemon::spawn(
            &workspace_bin("mooncake_master"),
            &args,
            "HTTP metrics server started",
        );
        HaMaster {
            daemon,
            rpc: format!("{host}:{rpc_port}"),
            http: format!("{host}:{http_port}"),
            args,
        }
    }

    fn restart(&mut self) {
        self.daemon.kill9();
        self.daemon = Daemon::spawn(
            &workspace_bin("mooncake_master"),
            &self.args,
            "HTTP metrics server started",
        );
    }

    fn role(&self) -> String {
        http_get(&self.http, "/role")
            .map(|(_, body)| body.trim().to_string())
            .unwrap_or_default()
    }

    fn ha_status(&self) -> String {
        http_get(&self.http, "/ha_status")
            .map(|(_, body)| body.trim().to_string())
            .unwrap_or_default()
    }

    fn serving(&self) -> bool {
        http_get(&self.http, "/ha_status").is_ok_and(|(_, b)| b.trim() == "serving")
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.daemon.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig}");
    }
}

/// Index of the serving leader among `masters`, waiting up to `within`.
fn leader(masters: &[HaMaster], within: Duration) -> Option<usize> {
    let mut found = None;
    wait_until(within, || {
        found = masters.iter().position(|m| m.serving());
        found.is_some()
    });
    found
}

/// The HA tests run one at a time: each starts an etcd, two masters and two real
/// clients, and leases of 2 s are best not fought over for CPU.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn skip_without_etcd(tag: &str) -> Option<Etcd> {
    match Etcd::start(tag) {
        Ok(e) => Some(e),
        Err(reason) => {
            println!("skipped: {reason}");
            None
        }
    }
}

/// Dummies writing fresh keys and reading acknowledged ones back, checking bytes.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, usize)>>>,
    /// Reads that returned bytes other than the key's value (must stay 0).
    wrong: Arc<AtomicU64>,
    /// What each wrong read returned, for the failure message.
    wrong_reads: Arc<Mutex<Vec<String>>>,
    /// Successful puts and gets so far.
    puts: Arc<AtomicU64>,
    gets: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `writers` threads, each with a dummy on one of `sockets` (in turn); every
    /// fourth put of a writer goes to the segment of the next host in
    /// `segments` (same order as `sockets`) and is 64 KiB or more: the other
    /// real client on this host, so its bytes are copied through that segment
    /// mapped here once it is (same-host transfers), across the failovers.
    fn start(sockets: &[std::path::PathBuf], segments: &[String], writers: usize) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            acked: Arc::new(Mutex::new(Vec::new())),
            wrong: Arc::new(AtomicU64::new(0)),
            wrong_reads: Arc::new(Mutex::new(Vec::new())),
            puts: Arc::new(AtomicU64::new(0)),
            gets: Arc::new(AtomicU64::new(0)),
            threads: Vec::new(),
        };
        let mut threads = Vec::new();
        for w in 0..writers {
            let socket = sockets[w % sockets.len()].clone();
            let elsewhere = ReplicateConfig::default()
                .with_preferred_segments(vec![segments[(w + 1) % segments.len()].clone()]);
            let wrong_reads = load.wrong_reads.clone();
            let (stop, acked, wrong, puts, gets) = (
                load.stop.clone(),
                load.acked.clone(),
                load.wrong.clone(),
                load.puts.clone(),
                load.gets.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let dummy = DummyClient::connect(&socket, "").expect("dummy connects");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{i}");
                    let remote = i % 4 == 3;
                    let len = if remote {
                        (64 << 10) + (i as usize % 3) * 4096
                    } else {
                        4096 + (i as usize % 8) * 8192
                    };
                    let config = if remote {
                        elsewhere.clone()
                    } else {
                        ReplicateConfig::default()
                    };
                    i += 1;
                    if dummy.put(&key, &value_for(&key, len), &config).is_ok() {
                        puts.fetch_add(1, Ordering::Relaxed);
                        acked.lock().unwrap().push((key, len));
                    }
                    let probe = {
                        let a = acked.lock().unwrap();
                        (!a.is_empty()).then(|| a[(i as usize * 7919) % a.len()].clone())
                    };
                    if let Some((key, len)) = probe
                        && let Ok(bytes) = dummy.get(&key)
                    {
                        gets.fetch_add(1, Ordering::Relaxed);
                        if bytes != value_for(&key, len) {
                            wrong.fetch_add(1, Ordering::Relaxed);
                            wrong_reads
                                .lock()
                                .unwrap()
                                .push(describe_wrong_read(&key, len, &bytes));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }));
        }
        Load { threads, ..load }
    }

    /// Waits (up to 10 s) until more than `n` puts succeeded.
    fn wait_for_puts(&self, n: u64) {
        assert!(
            wait_until(Duration::from_secs(10), || self
                .puts
                .load(Ordering::Relaxed)
                > n),
            "the load did not get going"
        );
    }

    /// Waits until both a put and a get succeeded after `since`; the time taken.
    fn recovery_after(&self, since: Instant, within: Duration) -> Option<(Duration, Duration)> {
        let (p0, g0) = (
            self.puts.load(Ordering::Relaxed),
            self.gets.load(Ordering::Relaxed),
        );
        let (mut put_at, mut get_at) = (None, None);
        wait_until(within, || {
            if put_at.is_none() && self.puts.load(Ordering::Relaxed) > p0 {
                put_at = Some(since.elapsed());
            }
            if get_at.is_none() && self.gets.load(Ordering::Relaxed) > g0 {
                get_at = Some(since.elapsed());
            }
            put_at.is_some() && get_at.is_some()
        });
        Some((put_at?, get_at?))
    }

    fn finish(mut self) -> Vec<(String, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("load thread");
        }
        assert_eq!(
            self.wrong.load(Ordering::Relaxed),
            0,
            "a read returned wrong bytes: {:?}",
            self.wrong_reads.lock().unwrap()
        );
        self.acked.lock().unwrap().clone()
    }
}

/// What a read of `key` returned instead of its value: lengths, where the bytes
/// first differ and what is there (values spell their key, so this names the
/// object whose bytes were found).
fn describe_wrong_read(key: &str, len: usize, got: &[u8]) -> String {
    let want = value_for(key, len);
    let at = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    let seen = &got[at.saturating_sub(8)..got.len().min(at + 48)];
    format!(
        "{key}: {} bytes read, {len} expected, first difference at {at}: {:?}",
        got.len(),
        String::from_utf8_lossy(seen)
    )
}

/// Every acknowledged object is readable through `socket` with its own bytes.
fn assert_acked_readable(socket: &std::path::Path, acked: &[(String, usize)]) {
    let dummy = DummyClient::connect(socket, "").expect("dummy connects");
    let mut lost = Vec::new();
    for (key, len) in acked {
        match dummy.get(key) {
            Ok(bytes) => assert!(bytes == value_for(key, *len), "bytes of {key} differ"),
            Err(e) => lost.push(format!("{key}: {e}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged objects lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

struct Fleet {
    etcd: Etcd,
    /// Every master's admin HTTP port.
    http_port: u16,
    masters: Vec<HaMaster>,
    paths: Vec<Paths>,
    clients: Vec<Daemon>,
    /// Last: released once the processes above are gone.
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Fleet {
    fn start(tag: &str) -> Option<Fleet> {
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let etcd = skip_without_etcd(tag)?;
        let (rpc_port, http_port) = (test_port(), test_port());
        let masters: Vec<HaMaster> = ["127.0.0.11", "127.0.0.12"]
            .iter()
            .map(|host| HaMaster::start(&etcd.endpoint(), host, rpc_port, http_port))
            .collect();
        leader(&masters, Duration::from_secs(15)).expect("a leader is elected");
        let paths: Vec<Paths> = (0..2).map(|i| Paths::new(&format!("{tag}{i}"))).collect();
        let mut fleet = Fleet {
            etcd,
            http_port,
            masters,
            paths,
            clients: Vec::new(),
            _turn: turn,
        };
        for i in 0..2 {
            let c = fleet.start_client(i);
            fleet.clients.push(c);
        }
        Some(fleet)
    }

    fn master_address(&self) -> String {
        format!("etcd://{}", self.etcd.endpoint())
    }

    fn start_client(&self, i: usize) -> Daemon {
        // Room for everything the load writes (~15 MB/s on a fast machine, over
        // the tests' up to ~30 s) below the eviction watermark: an evicted
        // object would read as one lost.
        ClientBuilder::new(&self.paths[i])
            .with_master(&self.master_address())
            .with_size("512MB")
            .start()
    }

    /// Prints what the daemons logged (shown when a test fails).
    fn dump_logs(&self) {
        for (i, c) in self.clients.iter().enumerate() {
            for line in c.drain_log() {
                println!("client {i}: {line}");
            }
        }
        for (i, m) in self.masters.iter().enumerate() {
            for line in m.daemon.drain_log() {
                println!("master {i}: {line}");
            }
        }
    }

    fn sockets(&self) -> Vec<std::path::PathBuf> {
        self.paths.iter().map(|p| p.socket.clone()).collect()
    }

    /// The real clients' segment names, in the order of [`Fleet::sockets`].
    fn segments(&self) -> Vec<String> {
        self.clients
            .iter()
            .map(|c| c.ready_field("segment").expect("segment name"))
            .collect()
    }
}

#[test]
fn killing_the_leader_loses_no_acknowledged_object() {
    let Some(mut fleet) = Fleet::start("hakill") else {
        return;
    };
    let load = Load::start(&fleet.sockets(), &fleet.segments(), 4);
    load.wait_for_puts(50);
    let old = leader(&fleet.masters, Duration::from_secs(1)).unwrap();
    let killed_at = Instant::now();
    fleet.masters[old].daemon.kill9();
    let (put, get) = load
        .recovery_after(killed_at, Duration::from_secs(20))
        .unwrap_or_else(|| {
            fleet.dump_logs();
            panic!("puts and gets succeed again after the leader was killed")
        });
    println!("failover: first put {put:?}, first get {get:?} after kill -9 of the leader");
    let new = leader(&fleet.masters, Duration::from_secs(5)).expect("a new leader serves");
    assert_ne!(new, old);
    // The operator's command finds the leader through etcd too.
    let out = std::process::Command::new(workspace_bin("mooncake"))
        .arg(format!("--master={}", fleet.master_address()))
        .arg(format!("--admin_port={}", fleet.http_port))
        .args(["--json", "health"])
        .output()
        .unwrap();
    let health = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{health} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(health.contains("\"role\":\"leader\""), "{health}");
    assert!(health.contains(&fleet.masters[new].rpc), "{health}");
    // More load on the new leader, then every acknowledged object, with its bytes.
    std::thread::sleep(Duration::from_millis(500));
    let acked = load.finish();
    assert!(acked.len() > 50);
    // Writes to the other host's segment went through its mapping (same host).
    let copied: u64 = fleet
        .clients
        .iter()
        .map(|c| {
            let http = c.ready_field("http").expect("http");
            let (_, body) = http_get(&http, "/metrics").unwrap();
            body.lines()
                .find_map(|l| l.strip_prefix("mooncake_client_same_host_write_bytes_total "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(copied > 0, "no write was copied through a mapped segment");
    fleet.dump_logs();
    for socket in fleet.sockets() {
        assert_acked_readable(&socket, &acked);
    }
    // The killed master comes back as a standby.
    fleet.masters[old].restart();
    assert!(wait_until(Duration::from_secs(10), || fleet.masters[old]
        .role()
        == "standby"));
    assert_eq!(fleet.masters[new].role(), "leader");
}

#[test]
fn a_leader_paused_past_its_lease_steps_down_and_acknowledges_nothing() {
    let Some(fleet) = Fleet::start("hastop") else {
        return;
    };
    let load = Load::start(&fleet.sockets(), &fleet.segments(), 2);
    load.wait_for_puts(20);
    let old = leader(&fleet.masters, Duration::from_secs(1)).unwrap();
    let stopped_at = Instant::now();
    fleet.masters[old].signal("STOP");
    load.recovery_after(stopped_at, Duration::from_secs(20))
        .expect("the standby takes over from a paused leader");
    let new = leader(&fleet.masters, Duration::from_secs(5)).expect("a new leader serves");
    assert_ne!(new, old);
    fleet.masters[old].signal("CONT");
    // Woken up, it finds its lease gone: it steps down and serves nothing.
    assert!(
        wait_until(Duration::from_secs(10), || fleet.masters[old].role()
            == "standby"),
        "the old leader did not step down"
    );
    let (status, _) = http_get(&fleet.masters[old].http, "/get_all_keys").unwrap();
    assert_eq!(status, 503, "a standby's admin endpoints are not served");
    // Its RPC port closes (its fence already refuses every call; the term's
    // watcher notices within 50 ms and stops the listener): nothing can be
    // acknowledged by it.
    assert!(
        wait_until(Duration::from_secs(2), || std::net::TcpStream::connect(
            &fleet.masters[old].rpc
        )
        .is_err()),
        "the deposed leader's RPC port stayed open"
    );
    std::thread::sleep(Duration::from_millis(300));
    let acked = load.finish();
    for socket in fleet.sockets() {
        assert_acked_readable(&socket, &acked);
    }
}

#[test]
fn etcd_restarts_and_whole_cluster_restarts_lose_nothing() {
    let Some(mut fleet) = Fleet::start("harestart") else {
        return;
    };
    let load = Load::start(&fleet.sockets(), &fleet.segments(), 2);
    load.wait_for_puts(20);
    // etcd restarts under load: the leader keeps or regains leadership.
    fleet.etcd.restart();
    load.recovery_after(Instant::now(), Duration::from_secs(20))
        .expect("service after etcd restarted");
    // etcd gone for longer than a lease: the leader cannot renew, so it stops
    // serving (nothing acknowledged past its lease) until etcd is back.
    fleet.etcd.kill9();
    // Wait for answers that say standby: "not serving" alone is also what an
    // unanswered request or a leader still warming up looks like (the wait once
    // ended while a master still said it led).
    assert!(
        wait_until(Duration::from_secs(8), || fleet.masters.iter().all(|m| m
            .role()
            == "standby"
            && !m.ha_status().is_empty()
            && m.ha_status() != "serving")),
        "a leader cut off from etcd kept leading: roles {:?}",
        fleet.masters.iter().map(|m| m.role()).collect::<Vec<_>>()
    );
    fleet.etcd.restart();
    leader(&fleet.masters, Duration::from_secs(15)).expect("a leader once etcd is back");
    load.recovery_after(Instant::now(), Duration::from_secs(20))
        .expect("service once etcd is back");
    // Every master killed and started again.
    for m in &mut fleet.masters {
        m.restart();
    }
    leader(&fleet.masters, Duration::from_secs(15)).expect("a leader after all masters restarted");
    load.recovery_after(Instant::now(), Duration::from_secs(20))
        .expect("service after every master restarted");
    // The leader and a real client killed at the same moment.
    let old = leader(&fleet.masters, Duration::from_secs(1)).unwrap();
    fleet.masters[old].daemon.kill9();
    fleet.clients[1].kill9();
    fleet.clients[1] = fleet.start_client(1);
    load.recovery_after(Instant::now(), Duration::from_secs(20))
        .expect("service after the leader and a real client died together");
    std::thread::sleep(Duration::from_millis(300));
    let acked = load.finish();
    for socket in fleet.sockets() {
        assert_acked_readable(&socket, &acked);
    }
}
