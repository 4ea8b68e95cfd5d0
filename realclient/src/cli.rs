//! The `mooncake_client` command line (upstream's flags: `--global_segment_size=4GB`,
//! `--master_server_address`, ...; `--embedded-master` also runs a master in this
//! process), parsed here so the binary and the Python console script share it.

#![allow(clippy::disallowed_methods)] // reads its settings from the environment

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use mooncake_daemon::gflags::parse_command;
use mooncake_daemon::gflags::upstream::CLIENT as CLIENT_FLAGS;
use mooncake_daemon::logging::report;
use mooncake_daemon::signals::shutdown_on_signals;
use mooncake_proto::Protocol;
use mooncake_proto::units::parse_size;

use crate::RealClientConfig;
use crate::config::advertise_host;

#[derive(Parser, Debug)]
#[command(name = "mooncake_client", version, about = "mooncake-rs real client")]
struct ClientArgs {
    /// Host name or IP this client is reachable at.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Port (names the default socket and segment files).
    #[arg(long, default_value_t = 50052)]
    port: u16,
    /// Memory contributed to the pool ("4 GB", "4gb", bytes).
    #[arg(long = "global_segment_size", env = "MOONCAKE_GLOBAL_SEGMENT_SIZE", default_value = "4 GB", value_parser = parse_size)]
    global_segment_size: u64,
    /// Staging buffer for copy-style calls.
    #[arg(long = "local_buffer_size", env = "MOONCAKE_LOCAL_BUFFER_SIZE", default_value = "0", value_parser = parse_size)]
    local_buffer_size: u64,
    /// Master address (host:port).
    #[arg(
        long = "master_server_address",
        env = "MOONCAKE_MASTER",
        default_value = "127.0.0.1:50051"
    )]
    master_server_address: String,
    /// Metadata server (accepted for compatibility; not needed by this implementation).
    #[arg(
        long = "metadata_server",
        default_value = "http://127.0.0.1:8080/metadata"
    )]
    metadata_server: String,
    /// Transfer protocol: tcp (rdma needs a build with the `rdma` feature).
    #[arg(long, env = "MOONCAKE_PROTOCOL", default_value = "tcp")]
    protocol: Protocol,
    /// RDMA devices (accepted for compatibility).
    #[arg(long = "device_names", alias = "device_name", default_value = "")]
    device_names: String,
    /// RPC worker threads (0 = number of cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// HTTP port for /health and /metrics (0 = any free port).
    #[arg(long = "http_port", default_value_t = 9300)]
    http_port: u16,
    /// Do not serve HTTP.
    #[arg(long = "disable_http")]
    disable_http: bool,
    /// TCP port other real clients move data through (0 = any free port).
    #[arg(
        long = "transfer_port",
        env = "MOONCAKE_TRANSFER_PORT",
        default_value_t = 0
    )]
    transfer_port: u16,
    /// Unix socket for dummy clients (default: <tmp>/mooncake_client_<port>.sock).
    #[arg(long = "ipc_socket_path")]
    ipc_socket_path: Option<PathBuf>,
    /// Shared-memory file of the segment (default: /dev/shm/mooncake_client_<port>.segment).
    #[arg(long = "segment_path")]
    segment_path: Option<PathBuf>,
    /// Keep the segment file after a clean stop so a restart finds the cache
    /// (default); `--keep_segment=false` removes it and its inventory.
    #[arg(
        long = "keep_segment",
        default_value = "true",
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = mooncake_daemon::gflags::bool_value
    )]
    keep_segment: bool,
    /// Place single-replica writes into this client's own segment in space the
    /// master grants ahead of time, so each costs one master round trip instead
    /// of two (default); `--local_placement=false` makes every write two-phase.
    #[arg(
        long = "local_placement",
        default_value = "true",
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = mooncake_daemon::gflags::bool_value
    )]
    local_placement: bool,
    /// Answer `is_exist` for objects this client holds from its own index, kept
    /// up to date by the master's inventory sync (default); removes made through
    /// other hosts show here within one sync (50 ms). `--local_exist=false` asks
    /// the master every time.
    #[arg(
        long = "local_exist",
        default_value = "true",
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = mooncake_daemon::gflags::bool_value
    )]
    local_exist: bool,
    /// Move the bytes of transfers with real clients on this host (the same
    /// network namespace, the same user) through their segments mapped here,
    /// and let them map this one, instead of over loopback TCP (default).
    /// `--same_host_transfers=false` keeps every transfer on TCP.
    #[arg(
        long = "same_host_transfers",
        default_value = "true",
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = mooncake_daemon::gflags::bool_value
    )]
    same_host_transfers: bool,
    /// A disk tier under the segment (upstream's flag): offloaded copies go to a
    /// file in `--offload_dir`, and come back on read (docs/DISK.md).
    #[arg(
        long = "enable_offload",
        default_value = "false",
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = mooncake_daemon::gflags::bool_value
    )]
    enable_offload: bool,
    /// Directory of the disk tier's files (upstream's environment variable).
    #[arg(long = "offload_dir", env = "MOONCAKE_OFFLOAD_FILE_STORAGE_PATH")]
    offload_dir: Option<PathBuf>,
    /// Capacity of the disk tier (default: 4 times the segment).
    #[arg(
        long = "offload_size",
        env = "MOONCAKE_OFFLOAD_TOTAL_SIZE_LIMIT_BYTES",
        value_parser = parse_size
    )]
    offload_size: Option<u64>,
    /// Cluster token.
    #[arg(
        long = "cluster_token",
        env = "MOONCAKE_CLUSTER_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    cluster_token: String,
    /// Also run a master in this process (single-host store in one command).
    #[arg(long = "embedded-master", alias = "embedded_master")]
    embedded_master: bool,
    /// Metrics port of the embedded master.
    #[arg(long = "embedded_metrics_port", default_value_t = 9003)]
    embedded_metrics_port: u16,
    /// With an `etcd://` master address: seconds a call waits for a new leader
    /// before it fails (this project's flag).
    #[arg(long = "master_failover_timeout_sec", default_value_t = 10)]
    master_failover_timeout_sec: u64,
    /// Verbose logging (glog style: -v=1).
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    verbosity: u8,
}

/// `mooncake_client` with these arguments (the first is the program name): parses
/// the flags and serves until SIGTERM / Ctrl-C. Shared by the binary and the Python
/// package's console script.
pub fn client_main<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let env = |name: &str| std::env::var(name).ok();
    match parse_command::<ClientArgs>(argv, CLIENT_FLAGS, "mooncake_client", |a| a.verbosity, env) {
        Ok(args) => report(run_client(args)),
        Err(e) => report(Err(anyhow::anyhow!(e))),
    }
}

fn run_client(args: ClientArgs) -> anyhow::Result<()> {
    let mut config = RealClientConfig::new(args.port);
    let wildcard = args.host.is_empty() || args.host == "0.0.0.0";
    config.bind_host = if wildcard {
        "0.0.0.0".into()
    } else {
        args.host.clone()
    };
    config.host = if wildcard {
        advertise_host(&args.master_server_address)
    } else {
        args.host.clone()
    };
    config.transfer_port = args.transfer_port;
    config.serve_tcp = true;
    config.http_port = (!args.disable_http).then_some(args.http_port);
    config.global_segment_size = args.global_segment_size;
    config.local_buffer_size = args.local_buffer_size;
    config.master_server_address = args.master_server_address.clone();
    if let Some(id) = var_nonempty("MC_STORE_CLUSTER_ID") {
        config.cluster_id = id;
    }
    config.master_failover_timeout = Duration::from_secs(args.master_failover_timeout_sec);
    config.protocol = args.protocol;
    config.cluster_token = args.cluster_token.clone();
    // The environment is read here (and in the Python setup), nowhere below.
    let var = |name: &str| std::env::var(name).ok();
    config.region = mooncake_shm::RegionOptions::from_vars(var);
    if let Some(bytes) = var("MC_TRANSFER_SOCKBUF").and_then(|v| v.trim().parse().ok()) {
        config.transfer_sockbuf = bytes;
    }
    config.embedded_master = args.embedded_master;
    if args.embedded_master {
        config.embedded_metrics_address = Some(format!("0.0.0.0:{}", args.embedded_metrics_port));
    }
    if let Some(p) = args.ipc_socket_path {
        config.ipc_socket_path = p;
    }
    if let Some(p) = args.segment_path {
        config.segment_path = p;
    }
    config.keep_segment = args.keep_segment;
    config.local_placement = args.local_placement;
    config.local_exist = args.local_exist;
    config.same_host_transfers = args.same_host_transfers;
    if args.enable_offload {
        let Some(dir) = args.offload_dir.clone() else {
            anyhow::bail!(
                "--enable_offload needs a directory: --offload_dir or MOONCAKE_OFFLOAD_FILE_STORAGE_PATH"
            );
        };
        let size = args
            .offload_size
            .unwrap_or(config.global_segment_size.saturating_mul(4));
        config.offload = Some(crate::disk::DiskConfig {
            dir,
            size,
            stem: None,
        });
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        runtime.worker_threads(args.threads);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_on_signals();
        let socket = config.ipc_socket_path.clone();
        crate::run(config, shutdown, |client, endpoints| {
            let show = |a: Option<std::net::SocketAddr>| {
                a.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
            };
            tracing::info!(
                "mooncake_client ready: socket {} | tcp {} | http {} | transfer {} | segment {} {} | client {}",
                socket.display(),
                show(endpoints.tcp),
                show(endpoints.http),
                show(endpoints.transfer),
                client.hostname(),
                client.segment().map(|s| s.size).unwrap_or(0),
                client.client_id()
            );
        })
        .await?;
        Ok(())
    })
}

fn var_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
