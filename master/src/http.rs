//! HTTP servers of the master: the admin/metrics server on `--metrics_port`
//! (Prometheus `/metrics`, `/health`, `/get_all_segments`, `/query_key`, ...) and the
//! optional HTTP metadata server (`GET/PUT/DELETE /metadata?key=`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use parking_lot::RwLock;
use serde::Deserialize;
use serde_json::json;

use mooncake_proto::auth::Credentials;
use mooncake_proto::{ErrorCode, ReplicaList};

use crate::service::MasterService;

/// Most keys `/get_all_keys` lists.
const ALL_KEYS_LIMIT: usize = 1_000_000;

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

#[derive(Deserialize)]
struct KeysQuery {
    keys: Option<String>,
}

#[derive(Deserialize)]
struct SegmentQuery {
    segment: Option<String>,
}

fn error_response(status: StatusCode, code: ErrorCode) -> Response {
    (
        status,
        Json(json!({"error": code.name(), "code": code.as_i32()})),
    )
        .into_response()
}

fn replica_json(list: &ReplicaList) -> serde_json::Value {
    json!({
        "size": list.size,
        "lease_ttl_ms": list.lease_ttl_ms,
        "replicas": list.replicas.iter().map(|r| json!({
            "segment_id": r.segment_id.to_string(),
            "segment_name": r.segment_name,
            "transport_endpoint": r.transport_endpoint,
            "offset": r.offset,
            "buffer_address": r.buffer_address,
            "size": r.size,
            "status": format!("{:?}", r.status).to_uppercase(),
        })).collect::<Vec<_>>(),
    })
}

/// Upstream's error body for the `/api/v1` endpoints.
fn api_error(code: ErrorCode, message: &str) -> Response {
    let status = match code {
        ErrorCode::InvalidParams => StatusCode::BAD_REQUEST,
        ErrorCode::JobNotFound | ErrorCode::SegmentNotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = if message.is_empty() {
        code.name()
    } else {
        message
    };
    (
        status,
        Json(json!({"success": false, "error_code": code.as_i32(), "error_message": message})),
    )
        .into_response()
}

fn default_concurrency() -> u32 {
    4
}

/// Upstream's `CreateDrainJobRequest`.
#[derive(Deserialize)]
struct DrainJobRequest {
    segments: Vec<String>,
    #[serde(default)]
    target_segments: Vec<String>,
    #[serde(default = "default_concurrency")]
    max_concurrency: u32,
}

#[derive(Deserialize)]
struct JobQuery {
    job_id: Option<String>,
}

fn job_id(q: &JobQuery) -> Option<uuid::Uuid> {
    q.job_id
        .as_deref()
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
}

fn bad_job_id() -> Response {
    api_error(ErrorCode::InvalidParams, "Missing or invalid job_id")
}

async fn create_drain_job(State(svc): State<Arc<MasterService>>, body: Bytes) -> Response {
    let request: DrainJobRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(ErrorCode::InvalidParams, &format!("Invalid JSON body: {e}"));
        }
    };
    match svc.create_drain_job(
        &request.segments,
        &request.target_segments,
        request.max_concurrency,
    ) {
        Ok(id) => Json(json!({
            "success": true,
            "job_id": id.to_string(),
            "status": "CREATED",
            "error_code": 0,
            "error_message": "",
        }))
        .into_response(),
        Err(code) => api_error(code, ""),
    }
}

async fn query_drain_job(
    State(svc): State<Arc<MasterService>>,
    Query(q): Query<JobQuery>,
) -> Response {
    let Some(id) = job_id(&q) else {
        return bad_job_id();
    };
    match svc.query_drain_job(&id) {
        Ok(j) => Json(json!({
            "success": true,
            "job_id": j.id.to_string(),
            "type": 0,
            "type_name": "DRAIN",
            "status": j.status as i32,
            "status_name": j.status.name(),
            "created_at_ms_epoch": j.created_at_ms,
            "last_updated_at_ms_epoch": j.updated_at_ms,
            "segments": j.segments,
            "succeeded_units": j.succeeded_units,
            "failed_units": j.failed_units,
            "blocked_units": j.blocked_units,
            "active_units": j.active_units,
            "migrated_bytes": j.migrated_bytes,
            "message": j.message,
            "error_code": 0,
            "error_message": "",
        }))
        .into_response(),
        Err(code) => api_error(code, ""),
    }
}

async fn cancel_drain_job(
    State(svc): State<Arc<MasterService>>,
    Query(q): Query<JobQuery>,
) -> Response {
    let Some(id) = job_id(&q) else {
        return bad_job_id();
    };
    match svc.cancel_drain_job(&id) {
        Ok(()) => Json(json!({
            "success": true,
            "job_id": id.to_string(),
            "status": "CANCELED",
            "error_code": 0,
            "error_message": "",
        }))
        .into_response(),
        Err(code) => api_error(code, ""),
    }
}

/// Who may use a group of admin endpoints.
#[derive(Clone)]
struct AdminGate {
    credentials: Arc<Credentials>,
    /// Checked only when a cluster token is set (read endpoints that disclose
    /// keys and layout); otherwise always (endpoints that change things).
    only_with_token: bool,
}

/// The credential an HTTP request presents: `Authorization: Bearer <secret>` or
/// `X-Mooncake-Token: <secret>` (the cluster token, or on this host the host secret).
fn presented_credential(headers: &axum::http::HeaderMap) -> &str {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(secret) = v.strip_prefix("Bearer ")
    {
        return secret.trim();
    }
    headers
        .get("x-mooncake-token")
        .and_then(|v| v.to_str().ok())
        .map_or("", str::trim)
}

async fn require_credential(
    State(gate): State<AdminGate>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if gate.only_with_token && !gate.credentials.has_token() {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    if gate
        .credentials
        .admits(peer, presented_credential(request.headers()))
    {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({
            "error": ErrorCode::IllegalClient.name(),
            "code": ErrorCode::IllegalClient.as_i32(),
            "message": format!(
                "{}: send it as 'Authorization: Bearer <secret>' (the cluster token, or the host secret in {})",
                gate.credentials.refusal(),
                mooncake_proto::auth::host_secret_path().display()
            ),
        })),
    )
        .into_response()
}

/// The admin router served on the metrics port. Metrics, health and segment names
/// are open (SGLang polls `/get_all_segments`); endpoints that list keys or
/// replica layout need the credential when a cluster token is set; endpoints that
/// change anything (drain jobs) always need it.
pub fn admin_router(svc: Arc<MasterService>) -> Router {
    let credentials = Arc::new(Credentials::new(&svc.config().cluster_token));
    let layout = Router::new()
        .route("/get_segments_detail", get(segments_detail))
        .route("/query_segment", get(query_segment))
        .route("/query_key", get(query_key))
        .route("/batch_query_keys", get(batch_query_keys))
        .route("/get_all_keys", get(all_keys))
        .route("/api/v1/drain_jobs/query", get(query_drain_job))
        .route("/api/v1/segments/status", get(segment_status))
        .route_layer(axum::middleware::from_fn_with_state(
            AdminGate {
                credentials: credentials.clone(),
                only_with_token: true,
            },
            require_credential,
        ));
    let changes = Router::new()
        .route("/api/v1/drain_jobs", post(create_drain_job))
        .route("/api/v1/drain_jobs/cancel", post(cancel_drain_job))
        .route_layer(axum::middleware::from_fn_with_state(
            AdminGate {
                credentials,
                only_with_token: false,
            },
            require_credential,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/metrics/summary", get(summary))
        .route("/health", get(health))
        .route("/role", get(|| async { "leader" }))
        .route("/get_all_segments", get(all_segments))
        .merge(layout)
        .merge(changes)
        .with_state(svc)
}

async fn metrics(State(svc): State<Arc<MasterService>>) -> Response {
    let body = svc.metrics.render(&svc.gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn summary(State(svc): State<Arc<MasterService>>) -> String {
    format!("Master Metrics: {}\n", svc.summary_line())
}

async fn health(State(svc): State<Arc<MasterService>>) -> Json<serde_json::Value> {
    let g = svc.gauges();
    Json(json!({
        "status": "ok",
        "role": "leader",
        "version": mooncake_proto::VERSION,
        "view_version": svc.view_version(),
        "keys": g.key_count,
        "segments": g.segment_count,
        "clients": g.active_clients,
    }))
}

async fn all_segments(State(svc): State<Arc<MasterService>>) -> String {
    let mut names: Vec<String> = svc.all_segments().into_iter().map(|d| d.name).collect();
    names.sort();
    names.dedup();
    names.into_iter().map(|n| n + "\n").collect()
}

fn segment_json(desc: &mooncake_proto::SegmentDesc, used: u64) -> serde_json::Value {
    json!({
        "id": desc.id.to_string(),
        "name": desc.name,
        "host": desc.host,
        "transport_endpoint": desc.transport_endpoint,
        "protocol": desc.protocol.as_str(),
        "capacity_bytes": desc.size,
        "used_bytes": used,
    })
}

async fn segments_detail(State(svc): State<Arc<MasterService>>) -> Json<serde_json::Value> {
    Json(json!(
        svc.segment_usage()
            .iter()
            .map(|(d, used)| segment_json(d, *used))
            .collect::<Vec<_>>()
    ))
}

/// Upstream's `/api/v1/segments/status?segment=NAME` (drain tooling polls it):
/// `status` 1 / `OK` while the segment is mounted.
async fn segment_status(
    State(svc): State<Arc<MasterService>>,
    Query(q): Query<SegmentQuery>,
) -> Response {
    let refuse = |status: StatusCode, code: ErrorCode, message: &str| {
        (
            status,
            Json(json!({"success": false, "error_code": code.as_i32(), "error_message": message})),
        )
            .into_response()
    };
    let Some(name) = q.segment.filter(|s| !s.is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParams,
            "Missing segment query parameter",
        );
    };
    let mounted = svc
        .all_segments()
        .iter()
        .any(|d| d.name == name || d.id.to_string() == name);
    if !mounted {
        return refuse(
            StatusCode::NOT_FOUND,
            ErrorCode::SegmentNotFound,
            ErrorCode::SegmentNotFound.name(),
        );
    }
    Json(json!({
        "success": true,
        "segment": name,
        "status": 1,
        "status_name": "OK",
        "error_code": 0,
        "error_message": "",
    }))
    .into_response()
}

async fn query_segment(
    State(svc): State<Arc<MasterService>>,
    Query(q): Query<SegmentQuery>,
) -> Response {
    let Some(name) = q.segment else {
        return error_response(StatusCode::BAD_REQUEST, ErrorCode::InvalidParams);
    };
    let matches: Vec<_> = svc
        .segment_usage()
        .iter()
        .filter(|(d, _)| d.name == name || d.id.to_string() == name)
        .map(|(d, used)| segment_json(d, *used))
        .collect();
    if matches.is_empty() {
        return error_response(StatusCode::NOT_FOUND, ErrorCode::SegmentNotFound);
    }
    Json(json!(matches)).into_response()
}

async fn query_key(State(svc): State<Arc<MasterService>>, Query(q): Query<KeyQuery>) -> Response {
    let Some(key) = q.key else {
        return error_response(StatusCode::BAD_REQUEST, ErrorCode::InvalidParams);
    };
    match svc.query_key(&key) {
        Ok(list) => Json(replica_json(&list)).into_response(),
        Err(code @ ErrorCode::InvalidKey) => error_response(StatusCode::BAD_REQUEST, code),
        Err(code) => error_response(StatusCode::NOT_FOUND, code),
    }
}

async fn batch_query_keys(
    State(svc): State<Arc<MasterService>>,
    Query(q): Query<KeysQuery>,
) -> Response {
    let Some(keys) = q.keys else {
        return error_response(StatusCode::BAD_REQUEST, ErrorCode::InvalidParams);
    };
    let mut out = serde_json::Map::new();
    for key in keys.split(',').filter(|k| !k.is_empty()) {
        let value = match svc.query_key(key) {
            Ok(list) => replica_json(&list),
            Err(code) => json!({"error": code.name(), "code": code.as_i32()}),
        };
        out.insert(key.to_string(), value);
    }
    Json(serde_json::Value::Object(out)).into_response()
}

async fn all_keys(State(svc): State<Arc<MasterService>>) -> String {
    svc.all_keys(ALL_KEYS_LIMIT)
        .into_iter()
        .map(|k| k + "\n")
        .collect()
}

/// Shared store of the HTTP metadata server.
pub type MetadataStore = Arc<RwLock<HashMap<String, Bytes>>>;

/// The HTTP metadata server (upstream's `http_metadata_server`): a key-value store
/// used by transfer engines to publish segment descriptors.
pub fn metadata_router(store: MetadataStore) -> Router {
    Router::new()
        .route(
            "/metadata",
            get(metadata_get).put(metadata_put).delete(metadata_delete),
        )
        .route("/health", get(|| async { "OK" }))
        .with_state(store)
}

async fn metadata_get(State(store): State<MetadataStore>, Query(q): Query<KeyQuery>) -> Response {
    let Some(key) = q.key else {
        return (StatusCode::BAD_REQUEST, "missing key").into_response();
    };
    match store.read().get(&key) {
        Some(v) => v.clone().into_response(),
        None => (StatusCode::NOT_FOUND, "metadata not found").into_response(),
    }
}

async fn metadata_put(
    State(store): State<MetadataStore>,
    Query(q): Query<KeyQuery>,
    body: Bytes,
) -> Response {
    let Some(key) = q.key else {
        return (StatusCode::BAD_REQUEST, "missing key").into_response();
    };
    store.write().insert(key, body);
    (StatusCode::OK, "metadata updated").into_response()
}

async fn metadata_delete(
    State(store): State<MetadataStore>,
    Query(q): Query<KeyQuery>,
) -> Response {
    let Some(key) = q.key else {
        return (StatusCode::BAD_REQUEST, "missing key").into_response();
    };
    match store.write().remove(&key) {
        Some(_) => (StatusCode::OK, "metadata deleted").into_response(),
        None => (StatusCode::NOT_FOUND, "metadata not found").into_response(),
    }
}
