//! Starts the master's listeners and background tasks; used by the binary and by
//! in-process embedding (`mooncake_client --embedded-master`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::MasterConfig;
use crate::http::{MetadataStore, admin_router, metadata_router};
use crate::service::MasterService;
use mooncake_daemon::http::serve_http;
use mooncake_daemon::periodic::{every, every_blocking};

/// Where the master listens.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// RPC address (port 0 picks a free port).
    pub rpc_addr: String,
    /// Admin/metrics HTTP address; `None` disables it.
    pub metrics_addr: Option<String>,
    /// HTTP metadata server address; `None` disables it.
    pub metadata_addr: Option<String>,
    /// Interval of the summary log line; `None` disables it.
    pub summary_interval: Option<Duration>,
}

/// Addresses actually bound.
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    /// RPC.
    pub rpc: SocketAddr,
    /// Admin/metrics HTTP.
    pub metrics: Option<SocketAddr>,
    /// HTTP metadata server.
    pub metadata: Option<SocketAddr>,
}

/// Why a master could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A listener could not be bound.
    #[error("cannot bind the {what} listener to {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) async fn bind(addr: &str, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })
}

pub(crate) fn local_addr(
    listener: &TcpListener,
    what: &'static str,
) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        what,
        addr: "?".into(),
        source,
    })
}

/// Binds every listener, then serves until `shutdown` is cancelled. `on_bound`
/// is called once all listeners are bound (before serving).
pub async fn run(
    config: MasterConfig,
    options: ServerOptions,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(&BoundAddrs, &Arc<MasterService>),
) -> Result<(), StartError> {
    config.validate().map_err(StartError::Config)?;
    let svc = Arc::new(MasterService::new(config));
    let rpc = bind(&options.rpc_addr, "RPC").await?;
    let metrics = match &options.metrics_addr {
        Some(a) => Some(bind(a, "metrics HTTP").await?),
        None => None,
    };
    let metadata = match &options.metadata_addr {
        Some(a) => Some(bind(a, "HTTP metadata").await?),
        None => None,
    };
    let bound = BoundAddrs {
        rpc: local_addr(&rpc, "RPC")?,
        metrics: metrics
            .as_ref()
            .map(|l| local_addr(l, "metrics"))
            .transpose()?,
        metadata: metadata
            .as_ref()
            .map(|l| local_addr(l, "HTTP metadata"))
            .transpose()?,
    };
    on_bound(&bound, &svc);

    let tracker = TaskTracker::new();
    tracker.spawn(crate::rpc::serve(
        rpc,
        svc.clone(),
        None,
        shutdown.clone(),
        tracker.clone(),
    ));
    if let Some(listener) = metrics {
        let router = admin_router(svc.clone());
        tracker.spawn(serve_http(listener, router, shutdown.clone()));
    }
    if let Some(listener) = metadata {
        let router = metadata_router(MetadataStore::default());
        tracker.spawn(serve_http(listener, router, shutdown.clone()));
    }
    spawn_service_tasks(&tracker, &svc, &shutdown, options.summary_interval);
    shutdown.cancelled().await;
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    Ok(())
}

/// The service's own loops (eviction, housekeeping, drain jobs, the summary log
/// line) on `tracker` until `stop`.
pub(crate) fn spawn_service_tasks(
    tracker: &TaskTracker,
    svc: &Arc<MasterService>,
    stop: &CancellationToken,
    summary_interval: Option<Duration>,
) {
    let stop = || stop.clone();
    // Eviction watcher: cheap atomic checks every 10 ms, like upstream's thread.
    let s = svc.clone();
    every_blocking(tracker, stop(), Duration::from_millis(10), move || {
        s.evict_if_needed();
    });
    let s = svc.clone();
    every_blocking(tracker, stop(), Duration::from_secs(1), move || {
        s.housekeeping()
    });
    // Drain jobs advance as their moves finish.
    let s = svc.clone();
    every_blocking(tracker, stop(), Duration::from_millis(200), move || {
        s.drive_drain_jobs()
    });
    if let Some(period) = summary_interval {
        let s = svc.clone();
        every(tracker, stop(), period, move || {
            tracing::info!("Master Metrics: {}", s.summary_line());
            std::future::ready(())
        });
    }
}
