//! The command lines of the master and of the standalone HTTP metadata server
//! (flags parsed here so the binaries and the Python console scripts share them),
//! and what every mooncake-rs daemon does the same way: glog-style verbosity
//! (`-v=1`, or `MOONCAKE_LOG` as a tracing filter) and shutdown on SIGTERM / Ctrl-C.

#![allow(clippy::disallowed_methods)] // reads gflags' FLAGS_* variables for --fromenv

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Parser};

use crate::{AllocationStrategy, MasterConfig, OffloadPolicy, ServerOptions};
use mooncake_proto::units::parse_duration_ms;

use mooncake_daemon::gflags::parse_command;
use mooncake_daemon::gflags::upstream::MASTER as MASTER_FLAGS;
pub use mooncake_daemon::logging::{init_logging, report};
pub use mooncake_daemon::signals::shutdown_on_signals;

/// Parses glog-style booleans (`true`, `1`, `yes`, `on`, ...).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "mooncake_master",
    version,
    about = "mooncake-rs master service"
)]
struct MasterArgs {
    /// Address the RPC service binds.
    #[arg(long = "rpc_address", default_value = "0.0.0.0")]
    rpc_address: String,
    /// RPC port (0 picks a free port, printed at start).
    #[arg(long = "rpc_port")]
    rpc_port: Option<u16>,
    /// Deprecated spelling of --rpc_port.
    #[arg(long = "port", default_value_t = 50051)]
    port: u16,
    /// Address the metrics/admin HTTP server binds.
    #[arg(long = "metrics_host", default_value = "0.0.0.0")]
    metrics_host: String,
    /// Metrics/admin HTTP port.
    #[arg(long = "metrics_port", default_value_t = 9003)]
    metrics_port: u16,
    /// Log a summary line every 10 s.
    #[arg(long = "enable_metric_reporting", default_value = "true", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_parser = parse_bool)]
    enable_metric_reporting: bool,
    /// Read lease TTL (ms, or with a unit: 5s, 500ms).
    #[arg(long = "default_kv_lease_ttl", default_value = "10000", value_parser = parse_duration_ms)]
    default_kv_lease_ttl: u64,
    /// Default soft-pin TTL (ms).
    #[arg(long = "default_kv_soft_pin_ttl", default_value = "1800000", value_parser = parse_duration_ms)]
    default_kv_soft_pin_ttl: u64,
    /// Longest soft-pin TTL a client may ask for (ms).
    #[arg(long = "max_kv_soft_pin_ttl", default_value = "86400000", value_parser = parse_duration_ms)]
    max_kv_soft_pin_ttl: u64,
    /// Let eviction take soft-pinned objects when nothing else is left.
    #[arg(long = "allow_evict_soft_pinned_objects", default_value = "true", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_parser = parse_bool)]
    allow_evict_soft_pinned_objects: bool,
    /// Copy objects to the real clients' disk tiers (docs/DISK.md).
    #[arg(long = "enable_offload", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_parser = parse_bool)]
    enable_offload: bool,
    /// Make the disk copy when eviction picks the object, not when its write ends.
    #[arg(long = "offload_on_evict", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_parser = parse_bool)]
    offload_on_evict: bool,
    /// Copy objects only on disk back to memory after repeated reads.
    #[arg(long = "promotion_on_hit", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_parser = parse_bool)]
    promotion_on_hit: bool,
    /// Reads of an object only on disk before it is promoted.
    #[arg(long = "promotion_admission_threshold", default_value_t = 2)]
    promotion_admission_threshold: u32,
    /// Offload copies queued at most at once.
    #[arg(long = "offloading_queue_limit", default_value_t = 50_000)]
    offloading_queue_limit: u64,
    /// A full disk tier drops its least recently used copies.
    #[arg(long = "enable_disk_eviction", default_value = "true", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_parser = parse_bool)]
    enable_disk_eviction: bool,
    /// Fraction of capacity one eviction frees.
    #[arg(long = "eviction_ratio", default_value_t = 0.05)]
    eviction_ratio: f64,
    /// Used fraction above which eviction starts.
    #[arg(long = "eviction_high_watermark_ratio", default_value_t = 0.90)]
    eviction_high_watermark_ratio: f64,
    /// Seconds without a ping after which a client is expired.
    #[arg(long = "client_ttl", default_value_t = 10)]
    client_ttl: u64,
    /// Seconds after which another writer may take over an unfinished write.
    #[arg(long = "put_start_discard_timeout_sec", default_value_t = 30)]
    put_start_discard_timeout_sec: u64,
    /// Seconds after which an unfinished write's space is reclaimed.
    #[arg(long = "put_start_release_timeout_sec", default_value_t = 600)]
    put_start_release_timeout_sec: u64,
    /// Replica placement: random or free_ratio_first.
    #[arg(long = "allocation_strategy", default_value = "random")]
    allocation_strategy: AllocationStrategy,
    /// Allocator kind (only `offset` exists; accepted for compatibility).
    #[arg(long = "memory_allocator", default_value = "offset")]
    memory_allocator: String,
    /// Longest key accepted, in bytes.
    #[arg(long = "max_key_len", default_value_t = mooncake_proto::DEFAULT_MAX_KEY_LEN)]
    max_key_len: usize,
    /// Run the HTTP metadata server.
    #[arg(long = "enable_http_metadata_server", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_parser = parse_bool)]
    enable_http_metadata_server: bool,
    /// Address of the HTTP metadata server.
    #[arg(long = "http_metadata_server_host", default_value = "0.0.0.0")]
    http_metadata_server_host: String,
    /// Port of the HTTP metadata server.
    #[arg(long = "http_metadata_server_port", default_value_t = 8080)]
    http_metadata_server_port: u16,
    /// Token every client must present.
    #[arg(
        long = "cluster_token",
        env = "MOONCAKE_CLUSTER_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    cluster_token: String,
    /// RPC worker threads (0 = number of cores).
    #[arg(long = "rpc_thread_num", default_value_t = 0)]
    rpc_thread_num: usize,
    /// High availability: masters elect a leader through etcd (see docs/HA.md).
    #[arg(long = "enable_ha", default_value = "false", num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set, value_parser = parse_bool)]
    enable_ha: bool,
    /// HA backend: etcd (redis and k8s are upstream's, not built here).
    #[arg(long = "ha_backend_type", default_value = "etcd")]
    ha_backend_type: String,
    /// HA backend endpoints: `h1:2379;h2:2379`.
    #[arg(long = "ha_backend_connstring", default_value = "")]
    ha_backend_connstring: String,
    /// Older spelling of --ha_backend_connstring (etcd endpoints).
    #[arg(long = "etcd_endpoints", default_value = "")]
    etcd_endpoints: String,
    /// Names the cluster in etcd (`mooncake-store/<cluster_id>/master_view`).
    #[arg(long = "cluster_id", default_value = mooncake_daemon::ha::DEFAULT_CLUSTER_ID)]
    cluster_id: String,
    /// Seconds the leader's etcd lease lasts without renewal (this project's flag;
    /// etcd grants at least about 2 s).
    #[arg(long = "ha_lease_ttl_sec", default_value_t = 2)]
    ha_lease_ttl_sec: u64,
    /// Milliseconds a new leader serves only remounts before reads and writes
    /// (this project's flag).
    #[arg(long = "ha_warmup_ms", default_value_t = 200)]
    ha_warmup_ms: u64,
    /// Verbose logging level (glog style: -v=1).
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    verbosity: u8,
}

/// `mooncake_master` with these arguments (the first is the program name): parses
/// the flags, serves until SIGTERM / Ctrl-C. Shared by the binary and the Python
/// package's console script.
pub fn master_main<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let env = |name: &str| std::env::var(name).ok();
    match parse_command::<MasterArgs>(argv, MASTER_FLAGS, "mooncake_master", |a| a.verbosity, env) {
        Ok(args) => report(run_master(args)),
        Err(e) => report(Err(anyhow::anyhow!(e))),
    }
}

fn run_master(args: MasterArgs) -> anyhow::Result<()> {
    let ha = ha_options(&args)?;
    if args.memory_allocator != "offset" && args.memory_allocator != "cachelib" {
        anyhow::bail!("--memory_allocator must be offset (or the deprecated cachelib)");
    }
    let config = MasterConfig {
        default_kv_lease_ttl: Duration::from_millis(args.default_kv_lease_ttl),
        default_kv_soft_pin_ttl: Duration::from_millis(args.default_kv_soft_pin_ttl),
        max_kv_soft_pin_ttl: Duration::from_millis(args.max_kv_soft_pin_ttl),
        allow_evict_soft_pinned_objects: args.allow_evict_soft_pinned_objects,
        eviction_ratio: args.eviction_ratio,
        eviction_high_watermark_ratio: args.eviction_high_watermark_ratio,
        client_ttl: Duration::from_secs(args.client_ttl),
        put_start_discard_timeout: Duration::from_secs(args.put_start_discard_timeout_sec),
        put_start_release_timeout: Duration::from_secs(args.put_start_release_timeout_sec),
        allocation_strategy: args.allocation_strategy,
        max_key_len: args.max_key_len,
        cluster_token: args.cluster_token.clone(),
        offload: OffloadPolicy {
            enabled: args.enable_offload,
            on_evict: args.offload_on_evict,
            promotion_on_hit: args.promotion_on_hit,
            promotion_admission_threshold: args.promotion_admission_threshold.max(1),
            queue_limit: args.offloading_queue_limit.clamp(1, 100_000_000) as usize,
            disk_eviction: args.enable_disk_eviction,
        },
        ..MasterConfig::default()
    };
    config.validate()?;
    let host = join_host_port;
    let options = ServerOptions {
        rpc_addr: host(&args.rpc_address, args.rpc_port.unwrap_or(args.port)),
        metrics_addr: Some(host(&args.metrics_host, args.metrics_port)),
        metadata_addr: args.enable_http_metadata_server.then(|| {
            host(
                &args.http_metadata_server_host,
                args.http_metadata_server_port,
            )
        }),
        summary_interval: args
            .enable_metric_reporting
            .then_some(Duration::from_secs(10)),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.rpc_thread_num > 0 {
        runtime.worker_threads(args.rpc_thread_num);
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_on_signals();
        if let Some(ha) = ha {
            tracing::info!(
                "HA mode: etcd {:?}, cluster {}, advertising {}",
                ha.endpoints,
                ha.cluster_id,
                ha.advertise
            );
            crate::ha::run_ha(config, options, ha, shutdown, |http| {
                if let Some(m) = http {
                    tracing::info!("HTTP metrics server started on port {} ({m})", m.port());
                }
            })
            .await?;
            return Ok(());
        }
        crate::run(config, options, shutdown, |bound, svc| {
            tracing::info!(
                "Master service started on port {} ({})",
                bound.rpc.port(),
                bound.rpc
            );
            if let Some(m) = bound.metrics {
                tracing::info!("HTTP metrics server started on port {} ({m})", m.port());
            }
            if let Some(m) = bound.metadata {
                tracing::info!("HTTP metadata server started on port {} ({m})", m.port());
            }
            tracing::info!("Master Metrics: {}", svc.summary_line());
        })
        .await?;
        Ok(())
    })
}

/// The HA settings, when `--enable_ha` is on.
fn ha_options(args: &MasterArgs) -> anyhow::Result<Option<crate::ha::HaOptions>> {
    if !args.enable_ha {
        return Ok(None);
    }
    match args.ha_backend_type.to_ascii_lowercase().as_str() {
        "etcd" => {}
        "redis" | "k8s" => anyhow::bail!(
            "--ha_backend_type={}: upstream's {} backend is not built here; use etcd",
            args.ha_backend_type,
            args.ha_backend_type
        ),
        other => {
            anyhow::bail!("--ha_backend_type={other}: expected etcd (or upstream's redis, k8s)")
        }
    }
    let connstring = if args.ha_backend_connstring.is_empty() {
        &args.etcd_endpoints
    } else {
        &args.ha_backend_connstring
    };
    let endpoints = mooncake_daemon::ha::parse_endpoints(connstring);
    if endpoints.is_empty() {
        anyhow::bail!(
            "--enable_ha needs the etcd endpoints: --ha_backend_connstring=\"h1:2379;h2:2379\""
        );
    }
    let port = args.rpc_port.unwrap_or(args.port);
    let host = args.rpc_address.trim();
    if host.is_empty() || host == "0.0.0.0" || host == "::" || host == "[::]" || port == 0 {
        anyhow::bail!(
            "--enable_ha: --rpc_address and --rpc_port must be the address clients reach this master at (it is written to etcd), not {host}:{port}"
        );
    }
    Ok(Some(crate::ha::HaOptions {
        endpoints,
        cluster_id: args.cluster_id.clone(),
        advertise: join_host_port(host, port),
        lease_ttl: Duration::from_secs(args.ha_lease_ttl_sec.max(1)),
        warmup: Duration::from_millis(args.ha_warmup_ms),
    }))
}

#[derive(Parser, Debug)]
#[command(
    name = "mooncake_http_metadata_server",
    version,
    about = "standalone HTTP metadata server (GET/PUT/DELETE /metadata?key=, GET /health)"
)]
struct MetadataArgs {
    /// Address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Port to bind.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Verbose logging level.
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    verbosity: u8,
}

/// `mooncake_http_metadata_server` / `python -m mooncake.http_metadata_server`:
/// the key-value store transfer engines publish segment descriptors to.
pub fn metadata_server_main<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = MetadataArgs::parse_from(argv);
    init_logging(args.verbosity);
    report((|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("cannot start the runtime")?;
        runtime.block_on(async move {
            let addr = join_host_port(&args.host, args.port);
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot bind the HTTP metadata server to {addr}"))?;
            let bound = listener.local_addr()?;
            tracing::info!(
                "HTTP metadata server started on port {} ({bound})",
                bound.port()
            );
            let shutdown = shutdown_on_signals();
            let router = crate::http::metadata_router(Default::default());
            mooncake_daemon::http::serve_http(listener, router, shutdown).await;
            Ok(())
        })
    })())
}

/// `host:port`, bracketing IPv6 literals.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
