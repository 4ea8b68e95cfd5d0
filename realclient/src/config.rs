//! [`RealClientConfig`]: what `mooncake_client` is started with.

use std::path::PathBuf;
use std::time::Duration;

use mooncake_proto::Protocol;

/// Real client configuration (upstream's `mooncake_client` flags).
#[derive(Debug, Clone)]
pub struct RealClientConfig {
    /// Host name or IP this client is reachable at (segment host, `get_hostname`,
    /// the address peers use for transfers).
    pub host: String,
    /// Address the listeners bind (transfer port, TCP service, HTTP).
    pub bind_host: String,
    /// Transfer port (0 = any free port; peers learn it through the master).
    pub transfer_port: u16,
    /// Also serve the dummy service on TCP `bind_host:port` (tools, health probes).
    pub serve_tcp: bool,
    /// HTTP health and metrics port (`None` = no HTTP, 0 = any free port).
    pub http_port: Option<u16>,
    /// Longest a write to another host may take.
    pub transfer_timeout: Duration,
    /// Port; also names the default socket and segment paths.
    pub port: u16,
    /// Bytes contributed to the pool (0 = none).
    pub global_segment_size: u64,
    /// Staging buffer for copy-style calls.
    pub local_buffer_size: u64,
    /// `host:port` of the master, or `etcd://h1:p;h2:p` to follow the leader of
    /// an HA cluster.
    pub master_server_address: String,
    /// The HA cluster's id (upstream reads `MC_STORE_CLUSTER_ID`).
    pub cluster_id: String,
    /// With an `etcd://` master: how long a call waits for a new leader after the
    /// old one went away before it fails.
    pub master_failover_timeout: Duration,
    /// Transfer protocol.
    pub protocol: Protocol,
    /// Unix socket dummies connect to.
    pub ipc_socket_path: PathBuf,
    /// Shared-memory file of the segment (re-attached after a restart).
    pub segment_path: PathBuf,
    /// Keep the segment in anonymous memory that dies with the process, with no
    /// persisted inventory (the in-process client of the Python `setup()`).
    pub ephemeral_segment: bool,
    /// Keep the segment file and its inventory after a clean stop, so that a
    /// restart finds the cache (the default); `false` removes them.
    pub keep_segment: bool,
    /// Cluster token for the master and dummies.
    pub cluster_token: String,
    /// Run a master inside this process.
    pub embedded_master: bool,
    /// Metrics address of the embedded master (`None` = no HTTP).
    pub embedded_metrics_address: Option<String>,
    /// How the segment and other regions are mapped (huge pages).
    pub region: mooncake_shm::RegionOptions,
    /// Socket buffer size for transfers (0 = kernel autotuning).
    pub transfer_sockbuf: usize,
    /// The disk tier, when there is one (`--enable_offload`).
    pub offload: Option<crate::disk::DiskConfig>,
    /// Place single-replica writes into the own segment, in space the master
    /// granted ahead of time: one master round trip per write instead of two.
    pub local_placement: bool,
    /// Answer existence of objects held here without asking the master.
    pub local_exist: bool,
    /// Copy to and from real clients on this host through their segments
    /// mapped here, and let them map this one (`--same_host_transfers`).
    pub same_host_transfers: bool,
}

impl RealClientConfig {
    /// Defaults for `port`, as upstream: 4 GB segment, master on 127.0.0.1:50051.
    pub fn new(port: u16) -> Self {
        RealClientConfig {
            host: "127.0.0.1".into(),
            bind_host: "127.0.0.1".into(),
            transfer_port: 0,
            serve_tcp: false,
            http_port: None,
            transfer_timeout: Duration::from_secs(30),
            port,
            global_segment_size: 4 << 30,
            local_buffer_size: 0,
            master_server_address: "127.0.0.1:50051".into(),
            cluster_id: mooncake_daemon::ha::DEFAULT_CLUSTER_ID.into(),
            master_failover_timeout: Duration::from_secs(10),
            protocol: Protocol::Tcp,
            ipc_socket_path: default_socket_path(port),
            segment_path: PathBuf::from(format!("/dev/shm/mooncake_client_{port}.segment")),
            ephemeral_segment: false,
            keep_segment: true,
            cluster_token: String::new(),
            embedded_master: false,
            embedded_metrics_address: None,
            region: mooncake_shm::RegionOptions::default(),
            transfer_sockbuf: crate::transfer::tcp::DEFAULT_SOCKBUF,
            offload: None,
            local_placement: true,
            local_exist: true,
            same_host_transfers: true,
        }
    }

    /// The segment's name in the cluster (upstream: `local_hostname`).
    pub fn hostname(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Where the inventory of the segment is persisted.
    pub fn inventory_path(&self) -> PathBuf {
        let mut p = self.segment_path.clone().into_os_string();
        p.push(".inventory");
        PathBuf::from(p)
    }
}

/// The socket a real client on `port` listens on by default.
pub fn default_socket_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("mooncake_client_{port}.sock"))
}

/// The address other hosts can reach this one at, for a client started with
/// `--host 0.0.0.0`: the local address of the route to the master (no packet is
/// sent), or loopback when the master is local or unresolvable.
pub fn advertise_host(master_address: &str) -> String {
    use std::net::{ToSocketAddrs, UdpSocket};
    let master = master_address
        .strip_prefix("etcd://")
        .unwrap_or(master_address)
        .split(';')
        .next()
        .unwrap_or_default();
    let route = || -> Option<String> {
        let target = master.to_socket_addrs().ok()?.next()?;
        if target.ip().is_loopback() || target.ip().is_unspecified() {
            return None;
        }
        let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect(target).ok()?;
        Some(socket.local_addr().ok()?.ip().to_string())
    };
    route().unwrap_or_else(|| "127.0.0.1".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_host_follows_the_route_to_the_master() {
        assert_eq!(advertise_host("127.0.0.1:50051"), "127.0.0.1");
        assert_eq!(advertise_host("0.0.0.0:50051"), "127.0.0.1");
        assert_eq!(advertise_host("not a host"), "127.0.0.1");
    }
}
