//! The master in HA mode (`--enable_ha`): several masters share one etcd; one at a
//! time is the leader and serves, the others stand by and take over when its lease
//! ends.
//!
//! A term: a standby that finds no leader campaigns (`mooncake_daemon::ha`); the
//! winner starts a fresh [`MasterService`], binds its RPC port and spends a short
//! warm-up accepting only the real clients' remounts (their inventories rebuild
//! the metadata, as after a restart), then serves everything. The term ends when
//! the lease is lost (renewal failed past its end, or etcd says it is gone) or on
//! shutdown (the lease is revoked so a standby takes over at once). Every RPC is
//! checked against the term's [`Fence`] before it is answered: a leader paused past
//! its lease refuses everything with `UNAVAILABLE_IN_CURRENT_STATUS` from the
//! moment the lease could have ended, and then steps down.
//!
//! The HTTP port stays up across terms: `/role`, `/ha_status`, `/leader`,
//! `/health` and `/metrics` answer on standbys too; the admin endpoints answer
//! only on the serving leader (503 elsewhere, as upstream).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use parking_lot::RwLock;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use mooncake_daemon::ha::{self, Fence, LeaderView};
use mooncake_daemon::http::serve_http;
use mooncake_proto::{ErrorCode, MResult};

use crate::config::MasterConfig;
use crate::http::{MetadataStore, admin_router, metadata_router};
use crate::metrics::Op;
use crate::run::{ServerOptions, StartError, bind, local_addr, spawn_service_tasks};
use crate::service::MasterService;

/// How a master takes part in HA.
#[derive(Debug, Clone)]
pub struct HaOptions {
    /// etcd endpoints (`host:port`).
    pub endpoints: Vec<String>,
    /// Names the cluster: the view key is `mooncake-store/<cluster_id>/master_view`.
    pub cluster_id: String,
    /// The RPC address clients reach this master at (written in the view).
    pub advertise: String,
    /// The leader lease's time to live.
    pub lease_ttl: Duration,
    /// After winning, only remounts are served for this long, so that the real
    /// clients' inventories are in before reads and writes are answered.
    pub warmup: Duration,
}

/// The term a service serves: admits calls while the lease holds; data calls only
/// after the warm-up.
pub struct TermGate {
    fence: Arc<Fence>,
    serving_from: Instant,
}

impl TermGate {
    /// `Ok` when `op` may be answered now.
    pub fn admit(&self, op: Op) -> MResult<()> {
        if !self.fence.valid() {
            return Err(ErrorCode::UnavailableInCurrentStatus);
        }
        let session = matches!(
            op,
            Op::Ping
                | Op::MountSegment
                | Op::RemountSegment
                | Op::UnmountSegment
                | Op::ReportLoad
                | Op::SyncInventory
                | Op::FetchInventory
        );
        if session || Instant::now() >= self.serving_from {
            Ok(())
        } else {
            Err(ErrorCode::UnavailableInCurrentStatus)
        }
    }

    /// Whether the lease still holds (checked again before an answer leaves).
    pub fn fence_holds(&self) -> bool {
        self.fence.valid()
    }

    fn state(&self) -> &'static str {
        if !self.fence.valid() {
            "standby"
        } else if Instant::now() < self.serving_from {
            "leader_warmup"
        } else {
            "serving"
        }
    }
}

struct ActiveTerm {
    svc: Arc<MasterService>,
    router: Router,
    gate: Arc<TermGate>,
    view: LeaderView,
}

/// What the HTTP port reports across terms.
struct HaState {
    /// `standby` or `candidate` while no term is active.
    idle_state: RwLock<&'static str>,
    term: RwLock<Option<Arc<ActiveTerm>>>,
    leader: watch::Receiver<Option<LeaderView>>,
    terms_won: AtomicU64,
    terms_lost: AtomicU64,
}

impl HaState {
    fn active(&self) -> Option<Arc<ActiveTerm>> {
        self.term.read().clone()
    }

    /// `(role, state)` as upstream names them.
    fn role_and_state(&self) -> (&'static str, &'static str) {
        match self.active() {
            Some(t) if t.gate.fence.valid() => ("leader", t.gate.state()),
            _ => ("standby", *self.idle_state.read()),
        }
    }
}

/// Runs this master in HA mode until `shutdown`: serves HTTP at once, stands by,
/// campaigns, serves its terms. `on_http` gets the HTTP address once it is bound.
pub async fn run_ha(
    config: MasterConfig,
    options: ServerOptions,
    ha_options: HaOptions,
    shutdown: CancellationToken,
    on_http: impl FnOnce(Option<SocketAddr>),
) -> Result<(), StartError> {
    config.validate().map_err(StartError::Config)?;
    let http = match &options.metrics_addr {
        Some(a) => Some(bind(a, "metrics HTTP").await?),
        None => None,
    };
    on_http(
        http.as_ref()
            .map(|l| local_addr(l, "metrics"))
            .transpose()?,
    );
    let leader = ha::follow_leader(
        ha_options.endpoints.clone(),
        &ha_options.cluster_id,
        shutdown.clone(),
    );
    let state = Arc::new(HaState {
        idle_state: RwLock::new("standby"),
        term: RwLock::new(None),
        leader: leader.clone(),
        terms_won: AtomicU64::new(0),
        terms_lost: AtomicU64::new(0),
    });
    let tracker = TaskTracker::new();
    if let Some(listener) = http {
        tracker.spawn(serve_http(
            listener,
            ha_router(state.clone()),
            shutdown.clone(),
        ));
    }
    if let Some(addr) = &options.metadata_addr {
        let listener = bind(addr, "HTTP metadata").await?;
        let router = metadata_router(MetadataStore::default());
        tracker.spawn(serve_http(listener, router, shutdown.clone()));
    }
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        *state.idle_state.write() = "candidate";
        match campaign_once(&ha_options).await {
            Ok(Some(leadership)) => {
                backoff = Duration::from_millis(100);
                state.terms_won.fetch_add(1, Relaxed);
                serve_term(
                    &config,
                    &options,
                    &ha_options,
                    leadership,
                    &state,
                    &shutdown,
                )
                .await;
                state.terms_lost.fetch_add(1, Relaxed);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("HA: cannot campaign through etcd: {e}");
                *state.idle_state.write() = "standby";
                let _ = shutdown
                    .run_until_cancelled(tokio::time::sleep(backoff))
                    .await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        *state.idle_state.write() = "standby";
        // Someone leads: wait until the view goes away (its lease ended or it
        // resigned), then campaign again. A periodic retry covers a missed event.
        let mut leader = leader.clone();
        let vacant = async {
            loop {
                if leader.borrow_and_update().is_none() {
                    return;
                }
                match tokio::time::timeout(Duration::from_secs(2), leader.changed()).await {
                    Ok(Ok(())) => continue,
                    // The follower stopped, or a quiet while: campaign to recheck.
                    Ok(Err(_)) | Err(_) => return,
                }
            }
        };
        let _ = shutdown.run_until_cancelled(vacant).await;
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    Ok(())
}

async fn campaign_once(o: &HaOptions) -> Result<Option<ha::Leadership>, ha::HaError> {
    let mut client = ha::connect(&o.endpoints).await?;
    ha::campaign(&mut client, &o.cluster_id, &o.advertise, o.lease_ttl).await
}

/// One term: a fresh service on the RPC port until the lease is lost or shutdown.
async fn serve_term(
    config: &MasterConfig,
    options: &ServerOptions,
    ha_options: &HaOptions,
    leadership: ha::Leadership,
    state: &Arc<HaState>,
    shutdown: &CancellationToken,
) {
    let view = leadership.view.clone();
    let fence = leadership.fence.clone();
    let listener = match bind_with_retries(&options.rpc_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("HA: won term {} but {e}; resigning", view.version);
            leadership.resign().await;
            return;
        }
    };
    tracing::info!(
        view_version = view.version,
        "HA: this master leads now at {} (warm-up {:?})",
        view.address,
        ha_options.warmup
    );
    let svc = Arc::new(MasterService::new(config.clone()));
    let gate = Arc::new(TermGate {
        fence: fence.clone(),
        serving_from: Instant::now() + ha_options.warmup,
    });
    let stop = shutdown.child_token();
    let tracker = TaskTracker::new();
    tracker.spawn(crate::rpc::serve(
        listener,
        svc.clone(),
        Some(gate.clone()),
        stop.clone(),
        tracker.clone(),
    ));
    spawn_service_tasks(&tracker, &svc, &stop, options.summary_interval);
    *state.term.write() = Some(Arc::new(ActiveTerm {
        router: admin_router(svc.clone()),
        svc,
        gate,
        view: view.clone(),
    }));
    // The fence ends by time as well as by etcd's word: check it often.
    let lost = async {
        loop {
            tokio::select! {
                _ = fence.lost() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if !fence.valid() {
                        return;
                    }
                }
            }
        }
    };
    let resigning = tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = lost => false,
    };
    if resigning {
        tracing::info!(view_version = view.version, "HA: shutting down; resigning");
    } else {
        tracing::warn!(
            view_version = view.version,
            "HA: the leader lease is lost; stepping down to standby"
        );
    }
    fence.lose();
    stop.cancel();
    *state.term.write() = None;
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    leadership.resign().await;
}

async fn bind_with_retries(addr: &str) -> Result<tokio::net::TcpListener, StartError> {
    let mut attempt = 0;
    loop {
        match bind(addr, "RPC").await {
            Ok(l) => return Ok(l),
            Err(e) if attempt >= 10 => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn ha_router(state: Arc<HaState>) -> Router {
    Router::new()
        .route("/role", get(role))
        .route("/ha_status", get(ha_status))
        .route("/leader", get(leader))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(forward)
        .with_state(state)
}

async fn role(State(st): State<Arc<HaState>>) -> &'static str {
    st.role_and_state().0
}

async fn ha_status(State(st): State<Arc<HaState>>) -> &'static str {
    st.role_and_state().1
}

fn view_json(view: &Option<LeaderView>) -> serde_json::Value {
    json!({
        "present": view.is_some(),
        "leader_address": view.as_ref().map(|v| v.address.clone()),
        "view_version": view.as_ref().map(|v| v.version),
    })
}

async fn leader(State(st): State<Arc<HaState>>) -> Json<serde_json::Value> {
    let view = match st.active() {
        Some(t) if t.gate.fence.valid() => Some(t.view.clone()),
        _ => st.leader.borrow().clone(),
    };
    Json(view_json(&view))
}

async fn health(State(st): State<Arc<HaState>>) -> Json<serde_json::Value> {
    let (role, ha_state) = st.role_and_state();
    let active = st.active().filter(|t| t.gate.fence.valid());
    let view = match &active {
        Some(t) => Some(t.view.clone()),
        None => st.leader.borrow().clone(),
    };
    let mut body = json!({
        "status": "ok",
        "role": role,
        "ha_state": ha_state,
        "service_ready": ha_state == "serving",
        "leader_address": view.as_ref().map(|v| v.address.clone()),
        "view_version": view.as_ref().map(|v| v.version),
        "version": mooncake_proto::VERSION,
    });
    if let Some(t) = active {
        let g = t.svc.gauges();
        body["keys"] = json!(g.key_count);
        body["segments"] = json!(g.segment_count);
        body["clients"] = json!(g.active_clients);
        body["dummies"] = json!(g.connected_dummies);
    }
    Json(body)
}

async fn metrics(State(st): State<Arc<HaState>>) -> Response {
    let (role, ha_state) = st.role_and_state();
    let active = st.active().filter(|t| t.gate.fence.valid());
    let mut body = match &active {
        Some(t) => t.svc.metrics.render(&t.svc.gauges()),
        None => String::new(),
    };
    let version = match &active {
        Some(t) => t.view.version,
        None => st.leader.borrow().as_ref().map_or(0, |v| v.version),
    };
    let is_leader = u8::from(role == "leader");
    let serving = u8::from(ha_state == "serving");
    body.push_str(&format!(
        "# HELP master_ha_is_leader 1 on the leader, 0 on a standby.\n\
         # TYPE master_ha_is_leader gauge\nmaster_ha_is_leader {is_leader}\n\
         # HELP master_ha_serving 1 once the leader's warm-up is over.\n\
         # TYPE master_ha_serving gauge\nmaster_ha_serving {serving}\n\
         # HELP master_ha_view_version The term (etcd revision of the master view) this master knows.\n\
         # TYPE master_ha_view_version gauge\nmaster_ha_view_version {version}\n\
         # HELP master_ha_terms_won_total Terms this master won.\n\
         # TYPE master_ha_terms_won_total counter\nmaster_ha_terms_won_total {}\n\
         # HELP master_ha_terms_lost_total Terms this master ended (lease lost or shutdown).\n\
         # TYPE master_ha_terms_lost_total counter\nmaster_ha_terms_lost_total {}\n",
        st.terms_won.load(Relaxed),
        st.terms_lost.load(Relaxed),
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Everything else goes to the serving leader's admin router.
async fn forward(State(st): State<Arc<HaState>>, request: Request<Body>) -> Response {
    match st.active().filter(|t| t.gate.fence.valid()) {
        Some(t) => match t.router.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        },
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "service plane is not active (this master is a standby)\n",
        )
            .into_response(),
    }
}
