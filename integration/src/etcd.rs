//! A real etcd server (Debian's `etcd-server`) for the HA tests: one member on
//! free loopback ports with its own data directory, stopped by PID on drop, and
//! restartable on the same data.

use std::path::PathBuf;
use std::time::Duration;

use crate::{Daemon, test_port, wait_until};

/// A running single-member etcd.
pub struct Etcd {
    daemon: Option<Daemon>,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
}

impl Etcd {
    /// Starts etcd, or says why it cannot run here (no binary).
    pub fn start(tag: &str) -> Result<Etcd, String> {
        let binary = etcd_binary().ok_or_else(|| {
            "etcd is not installed (Debian package etcd-server; scripts/test.sh installs it)"
                .to_string()
        })?;
        let data_dir = std::env::temp_dir().join(format!("mc-etcd-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        let mut etcd = Etcd {
            daemon: None,
            data_dir,
            client_port: test_port(),
            peer_port: test_port(),
        };
        etcd.launch(&binary);
        Ok(etcd)
    }

    fn launch(&mut self, binary: &std::path::Path) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let args = vec![
            "--name=mc-test".to_string(),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=mc-test={peer}"),
        ];
        // etcd says it is ready on stderr in every version's log format.
        self.daemon = Some(Daemon::spawn(
            binary,
            &args,
            "ready to serve client requests",
        ));
        let endpoint = self.endpoint();
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
                &endpoint
            )
            .is_ok()),
            "etcd did not listen"
        );
    }

    /// `127.0.0.1:port` of its client URL.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill9();
        }
    }

    /// Starts it again on the same data and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch(&etcd_binary().expect("etcd was found before"));
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn etcd_binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}
