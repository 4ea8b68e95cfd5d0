//! Helpers for tests that spawn the real `mooncake_master` binary: start it on free
//! ports, read the bound ports from its log, kill it on drop, plus a tiny HTTP client.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `mooncake_master`, killed on drop.
pub struct MasterProcess {
    pub child: Child,
    pub rpc: String,
    pub metrics: String,
    pub metadata: Option<String>,
    pub log: mpsc::Receiver<String>,
}

impl MasterProcess {
    /// Starts the master with `extra` flags on loopback with free ports.
    pub fn start(extra: &[&str]) -> MasterProcess {
        Self::start_on(extra, "0")
    }

    /// Starts the master with a given RPC port (to restart on the same address).
    pub fn start_on(extra: &[&str], rpc_port: &str) -> MasterProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mooncake_master"))
            .args([
                "--rpc_address=127.0.0.1",
                &format!("--rpc_port={rpc_port}"),
                "--metrics_host=127.0.0.1",
                "--metrics_port=0",
            ])
            .args(extra)
            .env("NO_COLOR", "1")
            .env_remove("MOONCAKE_CLUSTER_TOKEN")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn mooncake_master");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proc = MasterProcess {
            child,
            rpc: String::new(),
            metrics: String::new(),
            metadata: None,
            log: rx,
        };
        let want_metadata = extra
            .iter()
            .any(|f| f.starts_with("--enable_http_metadata_server"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while proc.rpc.is_empty()
            || proc.metrics.is_empty()
            || (want_metadata && proc.metadata.is_none())
        {
            let line = proc
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("master did not report its ports in time");
            let addr = || {
                line.rsplit('(')
                    .next()
                    .unwrap()
                    .trim_end_matches(')')
                    .to_string()
            };
            if line.contains("Master service started on port") {
                proc.rpc = addr();
            } else if line.contains("HTTP metrics server started on port") {
                proc.metrics = addr();
            } else if line.contains("HTTP metadata server started on port") {
                proc.metadata = Some(addr());
            }
        }
        proc
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while let Ok(line) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal blocking HTTP/1.1 request; returns (status, body).
pub fn http(method: &str, addr: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// Reads one metric value from a Prometheus text body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
