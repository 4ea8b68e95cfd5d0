//! [`RealClientConfig`]: what `mooncake_client` is started with.

use std::path::PathBuf;

use mooncake_proto::Protocol;

/// Real client configuration (upstream's `mooncake_client` flags).
#[derive(Debug, Clone)]
pub struct RealClientConfig {
    /// Host name or IP this client is reachable at (segment host, `get_hostname`).
    pub host: String,
    /// Port; also names the default socket and segment paths.
    pub port: u16,
    /// Bytes contributed to the pool (0 = none).
    pub global_segment_size: u64,
    /// Staging buffer for copy-style calls.
    pub local_buffer_size: u64,
    /// `host:port` of the master.
    pub master_server_address: String,
    /// Transfer protocol.
    pub protocol: Protocol,
    /// Unix socket dummies connect to.
    pub ipc_socket_path: PathBuf,
    /// Shared-memory file of the segment (re-attached after a restart).
    pub segment_path: PathBuf,
    /// Cluster token for the master and dummies.
    pub cluster_token: String,
    /// Run a master inside this process.
    pub embedded_master: bool,
    /// Metrics address of the embedded master (`None` = no HTTP).
    pub embedded_metrics_address: Option<String>,
}

impl RealClientConfig {
    /// Defaults for `port`, as upstream: 4 GB segment, master on 127.0.0.1:50051.
    pub fn new(port: u16) -> Self {
        RealClientConfig {
            host: "127.0.0.1".into(),
            port,
            global_segment_size: 4 << 30,
            local_buffer_size: 0,
            master_server_address: "127.0.0.1:50051".into(),
            protocol: Protocol::Tcp,
            ipc_socket_path: default_socket_path(port),
            segment_path: PathBuf::from(format!("/dev/shm/mooncake_client_{port}.segment")),
            cluster_token: String::new(),
            embedded_master: false,
            embedded_metrics_address: None,
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
