//! The mooncake-rs real client: the long-lived per-host daemon that owns the host's
//! shared-memory segment, keeps the master session (mount, heartbeat, remount with
//! inventory), and serves dummy clients over a Unix socket.
//!
//! # Layout
//!
//! - [`admin`]: the `mooncake` operator command (master admin HTTP, segment files).
//! - [`cli`]: the `mooncake_client` command line (shared with the Python console script).
//! - [`background`]: [`background::BackgroundClient`], a real client inside another
//!   program (the Python `setup()`).
//! - [`config`]: [`RealClientConfig`] (upstream flag names and defaults).
//! - [`disk`]: the disk tier, a file on local disk contributed as a segment, with
//!   per-block checksums and its own inventory.
//! - [`inventory`]: the persistent record of the objects in this client's segment,
//!   which lets a restarted master — or a restarted real client — get them back.
//! - [`client`]: [`RealClient`], the master session and the store operations.
//! - [`master_handle`]: the master, remote over TCP or embedded in this process.
//! - [`metrics`]: operation counters and latencies for `--http_port`.
//! - [`segfiles`]: the lock on this client's segment file, and segment files left
//!   on disk by real clients that stopped.
//! - `fastpath`: serves a dummy's shared-memory call ring.
//! - [`service`]: the tarpc service for dummies ([`mooncake_proto::realclient`]).
//! - [`transfer`]: the transfer engine ([`transfer::Transport`]; TCP in [`transfer::tcp`]).
//! - [`run`](crate::run()): starts everything for the `mooncake_client` binary.

pub mod admin;
pub mod background;
pub mod cli;
pub mod client;
pub mod config;
pub mod disk;
pub mod error;
mod fastpath;
pub mod inventory;
pub mod master_handle;
pub mod metrics;
pub mod segfiles;
pub mod service;
pub mod transfer;

pub use client::RealClient;
pub use config::RealClientConfig;
pub use error::Error;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use mooncake_daemon::GuardedListener;
use mooncake_daemon::http::serve_http;
use mooncake_daemon::rpc::serve_tarpc;
use mooncake_ipc::{IpcServer, IpcServerConfig};
use mooncake_proto::auth::Credentials;
use mooncake_proto::codec::transport;
use mooncake_proto::limits::ConnectionLimiter;
use mooncake_proto::realclient::RealClientService as _;

/// Logs the segment files beside `own` that no running real client holds: memory
/// nobody may come back for (`mooncake segments --reclaim` removes them).
fn report_stale_segments(own: &std::path::Path) {
    let Some(dir) = own.parent() else { return };
    let Ok(files) = segfiles::scan(dir) else {
        return;
    };
    for f in files.iter().filter(|f| !f.owner_alive && f.path != own) {
        let age = f
            .modified
            .and_then(|m| m.elapsed().ok())
            .map_or("unknown".to_string(), |a| format!("{} s", a.as_secs()));
        tracing::warn!(
            "stale segment {} ({} bytes, {} objects, last written {age} ago, no running owner): \
             `mooncake segments --reclaim` frees it",
            f.path.display(),
            f.size,
            f.objects.map_or("?".to_string(), |n| n.to_string()),
        );
    }
}

/// How long a SIGTERM waits for calls in progress before the session ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a started real client listens.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The Unix socket for dummies.
    pub ipc_socket: std::path::PathBuf,
    /// The TCP service, when enabled.
    pub tcp: Option<std::net::SocketAddr>,
    /// The HTTP health/metrics server, when enabled.
    pub http: Option<std::net::SocketAddr>,
    /// The transfer port, when this client has a segment.
    pub transfer: Option<std::net::SocketAddr>,
}

/// Runs a real client until `shutdown`: embedded master (if asked), segment, master
/// session, IPC listener, TCP service, HTTP. `on_ready` is called once dummies can
/// connect. On shutdown, calls in progress finish (up to 30 s) before the segment is
/// unmounted.
pub async fn run(
    config: RealClientConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Arc<RealClient>, &Endpoints),
) -> error::Result<()> {
    let mut config = config;
    let mut local_master = None;
    // Everything this function starts runs on `tasks` (waited for at the end);
    // calls served run on `requests` (drained first).
    let tasks = TaskTracker::new();
    // The real client's session stops only after the calls it serves drained.
    let client_token = CancellationToken::new();
    if config.embedded_master {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let options = mooncake_master::ServerOptions {
            rpc_addr: config.master_server_address.clone(),
            metrics_addr: config.embedded_metrics_address.clone(),
            metadata_addr: None,
            summary_interval: Some(Duration::from_secs(10)),
        };
        // A client with a disk tier and its own master: the master copies to it.
        let master_config = mooncake_master::MasterConfig::default()
            .with_cluster_token(config.cluster_token.clone())
            .with_offload(mooncake_master::OffloadPolicy {
                enabled: config.offload.is_some(),
                ..Default::default()
            });
        let token = client_token.clone();
        tasks.spawn(async move {
            if let Err(e) =
                mooncake_master::run(master_config, options, token, move |bound, svc| {
                    let _ = tx.send((bound.rpc, svc.clone()));
                })
                .await
            {
                tracing::error!("embedded master failed: {e:#}");
            }
        });
        let (bound, svc) = rx
            .await
            .map_err(|_| Error::Startup("the embedded master did not start".into()))?;
        tracing::info!("embedded master listening on {bound} (this process calls it directly)");
        config.master_server_address = bound.to_string();
        local_master = Some(svc);
    }
    let client = RealClient::start(config.clone(), client_token.clone(), local_master).await?;
    report_stale_segments(&config.segment_path);
    let requests = TaskTracker::new();
    let mut endpoints = Endpoints {
        ipc_socket: config.ipc_socket_path.clone(),
        tcp: None,
        http: None,
        transfer: client.transfer_addr(),
    };

    let mut ipc_config =
        IpcServerConfig::new(&config.ipc_socket_path).with_token(config.cluster_token.clone());
    if let Some(segment) = client.segment_region() {
        ipc_config = ipc_config.with_export(service::SEGMENT_EXPORT, segment);
    }
    // Dummies on this host map the disk tier too and read objects there themselves.
    if let Some(disk) = client.disk() {
        use mooncake_proto::realclient::{DISK_DATA_EXPORT, DISK_STATS_EXPORT, DISK_SUMS_EXPORT};
        ipc_config = ipc_config
            .with_export(DISK_DATA_EXPORT, disk.region.clone())
            .with_export(DISK_SUMS_EXPORT, disk.sums.sums().clone())
            .with_export(DISK_STATS_EXPORT, disk.sums.counters().region().clone());
    }
    let ipc = IpcServer::bind(ipc_config).map_err(|e| {
        Error::Startup(format!(
            "cannot listen on {}: {e}",
            config.ipc_socket_path.display()
        ))
    })?;
    tracing::info!(
        "serving dummy clients on {}",
        config.ipc_socket_path.display()
    );
    client.offer_same_host(&config.ipc_socket_path);

    let tcp = if config.serve_tcp {
        let addr = format!("{}:{}", config.bind_host, config.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(Error::io(format!(
                "cannot listen on {addr} (--host/--port)"
            )))?;
        let bound = listener.local_addr().map_err(Error::io("tcp --port"))?;
        endpoints.tcp = Some(bound);
        tracing::info!("serving tools on tcp {bound}");
        Some(listener)
    } else {
        None
    };

    if let Some(port) = config.http_port {
        let addr = format!("{}:{}", config.bind_host, port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(Error::io(format!("cannot listen on {addr} (--http_port)")))?;
        let bound = listener.local_addr().map_err(Error::io("--http_port"))?;
        endpoints.http = Some(bound);
        tracing::info!("HTTP health and metrics on {bound}");
        let router = http_router(client.clone());
        tasks.spawn(serve_http(listener, router, shutdown.clone()));
    }

    if let Some(listener) = tcp {
        let listener = GuardedListener::new(listener, ConnectionLimiter::default(), "tcp --port");
        let credentials = Arc::new(Credentials::new(&config.cluster_token));
        let (client, requests) = (client.clone(), requests.clone());
        tasks.spawn(serve_tarpc(
            listener,
            "realclient",
            credentials,
            shutdown.clone(),
            tasks.clone(),
            move |framed| {
                let (client, requests) = (client.clone(), requests.clone());
                async move {
                    BaseChannel::with_defaults(transport(framed))
                        .execute(service::Handler::new(client, None).serve())
                        .for_each(|f| {
                            requests.spawn(f);
                            async {}
                        })
                        .await;
                }
            },
        ));
    }

    on_ready(&client, &endpoints);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            conn = ipc.accept() => {
                let conn = conn.map_err(|e| Error::Startup(format!("the IPC listener stopped: {e}")))?;
                let client = client.clone();
                let requests = requests.clone();
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    let (session, transport) = conn.into_transport();
                    client.metrics.dummy_connected(1);
                    let handler = service::Handler::new(client.clone(), Some(session.clone()));
                    let peer = handler.peer_flag();
                    let serving = BaseChannel::with_defaults(transport)
                        .execute(handler.serve())
                        .for_each(|f| {
                            requests.spawn(f);
                            async {}
                        });
                    tokio::select! {
                        _ = serving => {}
                        _ = stop.cancelled() => {}
                    }
                    // Registered buffers stay mapped until the calls using them end.
                    session.close(DRAIN_TIMEOUT).await;
                    // Writes the dummy started and never finished will not be.
                    client.revoke_writes_of(session.id()).await;
                    if peer.load(std::sync::atomic::Ordering::Acquire) {
                        client.metrics.peer_mapping(-1);
                    } else {
                        client.metrics.dummy_connected(-1);
                    }
                });
            }
        }
    }
    tracing::info!("shutting down: finishing calls in progress");
    drop(ipc);
    let _ = std::fs::remove_file(&config.ipc_socket_path);
    requests.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, requests.wait())
        .await
        .is_err()
    {
        tracing::warn!("calls still running after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    client.shutdown().await;
    client_token.cancel();
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running after 5 s; stopping anyway");
    }
    if !config.keep_segment && !config.ephemeral_segment && config.global_segment_size > 0 {
        // Still under this client's lock, so no other client is robbed.
        let inventory = config.inventory_path();
        let journal = crate::inventory::journal_path(&inventory);
        for path in [config.segment_path.clone(), inventory, journal] {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        }
        tracing::info!(
            "removed segment {} (--keep_segment=false)",
            config.segment_path.display()
        );
    }
    tracing::info!("stopped");
    Ok(())
}

fn http_router(client: Arc<RealClient>) -> Router {
    Router::new()
        .route(
            "/health",
            get(|State(c): State<Arc<RealClient>>| async move {
                if c.healthy() {
                    (StatusCode::OK, "OK\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "master unreachable\n")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(c): State<Arc<RealClient>>| async move {
                let mut text = c.metrics.render(c.bytes_served(), c.same_host_bytes());
                if let Some(disk) = c.disk() {
                    text.push_str(&disk.render_metrics());
                }
                text
            }),
        )
        .with_state(client)
}
