//! Upstream's `setup(...)` arguments and the in-process real client they start.
//! Shared by [`MooncakeStore::setup`](crate::MooncakeStore::setup) and the Python
//! package's `setup`.

use std::net::IpAddr;
use std::path::PathBuf;

use mooncake_proto::Protocol;
use mooncake_realclient::RealClientConfig;
use mooncake_realclient::config::advertise_host;

/// A `setup` argument this build cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// Neither `tcp` nor `rdma`.
    #[error(transparent)]
    Protocol(#[from] mooncake_proto::UnknownProtocol),
    /// `rdma` in a build without the RDMA transport.
    #[error("protocol \"rdma\": this build has no RDMA transport yet; use \"tcp\"")]
    RdmaNotBuilt,
    /// `enable_ssd_offload` without a directory.
    #[error(
        "enable_ssd_offload needs a directory: ssd_offload_path or MOONCAKE_OFFLOAD_FILE_STORAGE_PATH"
    )]
    NoOffloadPath,
}

/// What `setup` was given.
#[derive(Debug, Clone)]
pub struct SetupArgs {
    /// Host name (optionally `host:port`, the port being the transfer port).
    pub local_hostname: String,
    /// Metadata server: URL, `P2PHANDSHAKE`, ...; not needed by this implementation.
    pub metadata_server: String,
    /// Bytes this process contributes to the pool (0 = none).
    pub global_segment_size: u64,
    /// Scratch buffer size (accepted; temporary buffers are used instead).
    pub local_buffer_size: u64,
    /// `tcp` or `rdma`.
    pub protocol: String,
    /// RDMA devices (accepted).
    pub rdma_devices: String,
    /// Master `host:port`.
    pub master_server_addr: String,
    /// Where the in-process real client listens for this process's dummy.
    pub ipc_socket_path: Option<PathBuf>,
    /// Serve `/health` and `/metrics` over HTTP.
    pub enable_client_http_server: bool,
    /// Port of that server.
    pub client_http_port: u16,
    /// A disk tier under the segment (docs/DISK.md).
    pub enable_ssd_offload: bool,
    /// Its directory (upstream: `ssd_offload_path`, else
    /// `MOONCAKE_OFFLOAD_FILE_STORAGE_PATH`); required with `enable_ssd_offload`.
    pub ssd_offload_path: String,
    /// Its size (`MOONCAKE_OFFLOAD_TOTAL_SIZE_LIMIT_BYTES`); `None`: four times
    /// the segment.
    pub ssd_offload_size: Option<u64>,
    /// Tenant (accepted).
    pub tenant_id: String,
    /// The HA cluster an `etcd://` master address names (upstream reads
    /// `MC_STORE_CLUSTER_ID`); `None`: the default cluster.
    pub cluster_id: Option<String>,
}

impl SetupArgs {
    /// Upstream's positional arguments of `setup`, everything else at its default.
    pub fn new(
        local_hostname: &str,
        metadata_server: &str,
        global_segment_size: u64,
        local_buffer_size: u64,
        protocol: &str,
        rdma_devices: &str,
        master_server_addr: &str,
    ) -> SetupArgs {
        SetupArgs {
            local_hostname: local_hostname.to_string(),
            metadata_server: metadata_server.to_string(),
            global_segment_size,
            local_buffer_size,
            protocol: protocol.to_string(),
            rdma_devices: rdma_devices.to_string(),
            master_server_addr: master_server_addr.to_string(),
            ipc_socket_path: None,
            enable_client_http_server: false,
            client_http_port: 9300,
            enable_ssd_offload: false,
            ssd_offload_path: String::new(),
            ssd_offload_size: None,
            tenant_id: "default".to_string(),
            cluster_id: None,
        }
    }

    /// `local_hostname` split into host and optional port.
    fn host_and_port(&self) -> (String, Option<u16>) {
        let h = self.local_hostname.trim();
        if let Some(rest) = h.strip_prefix('[')
            && let Some((host, port)) = rest.split_once("]:")
        {
            return (host.to_string(), port.parse().ok());
        }
        match h.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => match port.parse() {
                Ok(p) => (host.to_string(), Some(p)),
                Err(_) => (h.to_string(), None),
            },
            _ => (h.to_string(), None),
        }
    }

    /// The host this process's segment is named by (the port is the transfer port,
    /// unique on the host).
    pub fn display_host(&self) -> String {
        self.host_and_port().0
    }

    /// The in-process real client's configuration; an error for settings this
    /// build cannot honour.
    pub fn client_config(&self) -> Result<RealClientConfig, SetupError> {
        let protocol: Protocol = self.protocol.trim().parse()?;
        if protocol == Protocol::Rdma {
            return Err(SetupError::RdmaNotBuilt);
        }
        let (host, port) = self.host_and_port();
        let wildcard = host.is_empty() || host == "0.0.0.0" || host == "::";
        let mut config = RealClientConfig::new(0);
        let routed = advertise_host(&self.master_server_addr);
        config.host = if wildcard {
            routed
        } else if host == "localhost" && routed != "127.0.0.1" {
            // The engines' default: with a master on another host, "localhost"
            // would tell peers to connect to themselves.
            routed
        } else {
            host.clone()
        };
        // A literal address is bound exactly; a name may not resolve to a local
        // interface (a pod name, say), so all interfaces are bound for it.
        config.bind_host = match host.parse::<IpAddr>() {
            Ok(ip) if !ip.is_unspecified() => host.clone(),
            _ => "0.0.0.0".into(),
        };
        // Without a port, one from upstream's P2P handshake range, as upstream.
        config.transfer_port = port.unwrap_or_else(|| p2p_port(&config.bind_host));
        config.serve_tcp = false;
        config.http_port = self
            .enable_client_http_server
            .then_some(self.client_http_port);
        config.global_segment_size = self.global_segment_size;
        config.local_buffer_size = self.local_buffer_size;
        config.master_server_address = self.master_server_addr.trim().to_string();
        if let Some(id) = &self.cluster_id {
            config.cluster_id = id.clone();
        }
        config.protocol = protocol;
        config.ipc_socket_path = self
            .ipc_socket_path
            .clone()
            .unwrap_or_else(mooncake_realclient::background::private_socket_path);
        config.ephemeral_segment = true;
        if self.enable_ssd_offload {
            if self.ssd_offload_path.trim().is_empty() {
                return Err(SetupError::NoOffloadPath);
            }
            config.offload = Some(mooncake_realclient::disk::DiskConfig {
                dir: PathBuf::from(self.ssd_offload_path.trim()),
                size: self
                    .ssd_offload_size
                    .unwrap_or(self.global_segment_size.saturating_mul(4)),
                // Processes of this host share the directory: each takes the
                // first set of files no live process holds, so a restarted
                // process finds a previous one's disk tier.
                stem: Some("mooncake_disk".into()),
            });
        }
        Ok(config)
    }
}

/// Upstream draws a client's port from 12300–14300 when `local_hostname` names
/// none; a free one from that range (0, any port, if none is free).
fn p2p_port(bind_host: &str) -> u16 {
    const FIRST: u16 = 12300;
    const COUNT: u16 = 2000;
    let start = (std::process::id() as u16).wrapping_mul(7919) % COUNT;
    (0..COUNT)
        .map(|i| FIRST + (start + i) % COUNT)
        .find(|&p| std::net::TcpListener::bind((bind_host, p)).is_ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(host: &str) -> SetupArgs {
        SetupArgs {
            local_hostname: host.into(),
            metadata_server: "P2PHANDSHAKE".into(),
            global_segment_size: 1 << 20,
            local_buffer_size: 0,
            protocol: "tcp".into(),
            rdma_devices: String::new(),
            master_server_addr: "127.0.0.1:50051".into(),
            ipc_socket_path: None,
            enable_client_http_server: false,
            client_http_port: 9300,
            enable_ssd_offload: false,
            ssd_offload_path: String::new(),
            ssd_offload_size: None,
            tenant_id: "default".into(),
            cluster_id: None,
        }
    }

    #[test]
    fn local_hostname_may_carry_the_transfer_port() {
        assert_eq!(
            args("node1:17000").host_and_port(),
            ("node1".into(), Some(17000))
        );
        assert_eq!(
            args("[::1]:17000").host_and_port(),
            ("::1".into(), Some(17000))
        );
        assert_eq!(
            args("localhost").host_and_port(),
            ("localhost".into(), None)
        );
        let c = args("10.1.2.3:17000").client_config().unwrap();
        assert_eq!(
            (c.host.as_str(), c.bind_host.as_str(), c.transfer_port),
            ("10.1.2.3", "10.1.2.3", 17000)
        );
        let c = args("localhost").client_config().unwrap();
        assert_eq!(
            (c.host.as_str(), c.bind_host.as_str()),
            ("localhost", "0.0.0.0")
        );
    }

    #[test]
    fn rdma_is_refused_with_a_reason() {
        let mut a = args("localhost");
        a.protocol = "rdma".into();
        let err = a.client_config().unwrap_err();
        assert_eq!(err, SetupError::RdmaNotBuilt);
        assert!(err.to_string().contains("RDMA"));
        a.protocol = "carrier-pigeon".into();
        assert!(matches!(
            a.client_config(),
            Err(SetupError::Protocol(p)) if p.0 == "carrier-pigeon"
        ));
    }
}
