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
use mooncake_proto::{ErrorCode, Medium, ReplicaList};

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

/// Upstream's replica entry (`size_`, `buffer_address_`, `protocol_`,
/// `transport_endpoint_`), with this master's own fields after them.
fn replica_values(list: &ReplicaList) -> Vec<serde_json::Value> {
    list.replicas
        .iter()
        .map(|r| {
            let mut v = json!({
                "size_": r.size,
                "buffer_address_": r.buffer_address,
                "protocol_": "tcp",
                "transport_endpoint_": r.transport_endpoint,
                "segment_id": r.segment_id.to_string(),
                "segment_name": r.segment_name,
                "offset": r.offset,
                "status": format!("{:?}", r.status).to_uppercase(),
            });
            // Memory replicas keep upstream's shape; disk-tier ones say so.
            if r.medium == Medium::Disk {
                v["medium"] = json!(r.medium.as_str());
            }
            v
        })
        .collect()
}

/// Upstream's failure body of `/query_key`.
fn key_error(code: ErrorCode) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"success": false, "error_code": code.as_i32(), "error_message": code.name()})),
    )
        .into_response()
}

/// Upstream's error body for the `/api/v1` endpoints.
fn api_error(code: ErrorCode, message: &str) -> Response {
    let status = match code {
        ErrorCode::InvalidParams => StatusCode::BAD_REQUEST,
        ErrorCode::JobNotFound | ErrorCode::SegmentNotFound | ErrorCode::ObjectNotFound => {
            StatusCode::NOT_FOUND
        }
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
            "pending_units": j.pending_units,
            "migrated_bytes": j.migrated_bytes,
            "message": j.message,
            "error_code": 0,
            "error_message": "",
        }))
        .into_response(),
        Err(code) => api_error(code, ""),
    }
}

#[derive(Deserialize)]
struct RemoveQuery {
    keys: Option<String>,
    force: Option<bool>,
}

/// `POST /api/v1/remove?keys=a,b[&force=true]` (the `mooncake remove` command;
/// needs the credential): per key 0 or the error code, as `remove` answers.
async fn remove_keys(
    State(svc): State<Arc<MasterService>>,
    Query(q): Query<RemoveQuery>,
) -> Response {
    let keys: Vec<&str> = q
        .keys
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|k| !k.is_empty())
        .collect();
    if keys.is_empty() {
        return api_error(
            ErrorCode::InvalidParams,
            "No keys provided. Use ?keys=key1,key2,...",
        );
    }
    let force = q.force.unwrap_or(false);
    let results: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|k| {
            let code = match svc.remove(k, force) {
                Ok(()) => 0,
                Err(code) => code.as_i32(),
            };
            (k.to_string(), json!(code))
        })
        .collect();
    Json(json!({"success": true, "results": results})).into_response()
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
        .route("/dashboard/data", get(dashboard_data))
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
        .route("/api/v1/remove", post(remove_keys))
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
        .route("/dashboard", get(dashboard))
        .route("/health", get(health))
        .route("/role", get(|| async { "leader" }))
        .route("/get_all_segments", get(all_segments))
        .merge(layout)
        .merge(changes)
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 Not Found") })
        .with_state(svc)
}

/// The live dashboard: one page with its script inside (no internet needed); it
/// polls `/metrics`, `/health` and `/dashboard/data`.
async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("dashboard.html"),
    )
        .into_response()
}

/// What the dashboard shows beyond `/metrics`: segments with usage and state,
/// drain jobs with progress, unfinished replica tasks.
async fn dashboard_data(State(svc): State<Arc<MasterService>>) -> Json<serde_json::Value> {
    let segments: Vec<serde_json::Value> = svc
        .segment_details()
        .iter()
        .map(|(d, used, _, serving)| {
            json!({
                "name": d.name,
                "host": d.host,
                "capacity_bytes": d.size,
                "used_bytes": used,
                "state": if *serving { "serving" } else { "draining" },
            })
        })
        .collect();
    let drains: Vec<serde_json::Value> = svc
        .drain_jobs()
        .iter()
        .map(|j| {
            json!({
                "job_id": j.id.to_string(),
                "status_name": j.status.name(),
                "segments": j.segments,
                "succeeded_units": j.succeeded_units,
                "failed_units": j.failed_units,
                "active_units": j.active_units,
                "pending_units": j.pending_units,
                "migrated_bytes": j.migrated_bytes,
            })
        })
        .collect();
    let remounts: Vec<serde_json::Value> = svc
        .remounts_in_progress()
        .iter()
        .map(|(client, host, objects)| {
            json!({"client_id": client.to_string(), "host": host, "objects_received": objects})
        })
        .collect();
    Json(json!({
        "segments": segments,
        "drain_jobs": drains,
        "remounts": remounts,
        "unfinished_replica_tasks": svc.unfinished_tasks(),
    }))
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
    // Upstream's fields first; without HA it reports no leader address.
    Json(json!({
        "status": "ok",
        "role": "leader",
        "ha_state": "serving",
        "service_ready": true,
        "leader_address": null,
        "view_version": svc.view_version(),
        "version": mooncake_proto::VERSION,
        "keys": g.key_count,
        "segments": g.segment_count,
        "clients": g.active_clients,
        "dummies": g.connected_dummies,
    }))
}

async fn all_segments(State(svc): State<Arc<MasterService>>) -> String {
    let mut names: Vec<String> = svc.all_segments().into_iter().map(|d| d.name).collect();
    names.sort();
    names.dedup();
    names.into_iter().map(|n| n + "\n").collect()
}

/// `x` as a C++ stream prints a double by default (`%g`, 6 significant digits),
/// as upstream writes `size_human`.
fn general6(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let trim = |t: String| -> String {
        if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            t
        }
    };
    let exp = x.abs().log10().floor() as i32;
    if !(-5..6).contains(&exp) {
        let text = format!("{x:.5e}");
        let (mantissa, e) = text.split_once('e').unwrap_or((&text, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim(mantissa.to_string()), e.abs());
    }
    trim(format!("{x:.*}", (5 - exp).max(0) as usize))
}

/// Upstream's `/get_segments_detail`: `total_segments` and one entry per
/// segment with upstream's fields, then this master's own (`id`, `name`, `host`,
/// `transport_endpoint`, `capacity_bytes`, `used_bytes`).
async fn segments_detail(State(svc): State<Arc<MasterService>>) -> Json<serde_json::Value> {
    let segments: Vec<serde_json::Value> = svc
        .segment_details()
        .iter()
        .map(|(d, used, owner, serving)| {
            let percent = if d.size == 0 {
                0.0
            } else {
                *used as f64 * 100.0 / d.size as f64
            };
            json!({
                "segment_name": d.name,
                "segment_id": d.id.to_string(),
                "client_id": owner.to_string(),
                "base_address": format!("{:#x}", d.base),
                "size_bytes": d.size,
                "size_human": format!("{} GiB", general6(d.size as f64 / (1u64 << 30) as f64)),
                "te_endpoint": d.transport_endpoint,
                "protocol": d.protocol.as_str(),
                "status": "OK",
                "allocator_used_bytes": used,
                "allocator_capacity_bytes": d.size,
                "allocator_usage_percent": percent,
                "id": d.id.to_string(),
                "name": d.name,
                "host": d.host,
                "transport_endpoint": d.transport_endpoint,
                "capacity_bytes": d.size,
                "used_bytes": used,
                "serving": serving,
            })
        })
        .collect();
    Json(json!({"total_segments": segments.len(), "segments": segments}))
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

/// Upstream's `/query_segment?segment=NAME`: the name, used and capacity bytes
/// as text; 500 `Failed to query segment` for an unknown one.
async fn query_segment(
    State(svc): State<Arc<MasterService>>,
    Query(q): Query<SegmentQuery>,
) -> Response {
    let name = q.segment.unwrap_or_default();
    let found = svc
        .segment_usage()
        .into_iter()
        .find(|(d, _)| !name.is_empty() && (d.name == name || d.id.to_string() == name));
    match found {
        Some((d, used)) => format!(
            "{}\nUsed(bytes): {used}\nCapacity(bytes) : {}\n",
            d.name, d.size
        )
        .into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "Failed to query segment").into_response(),
    }
}

/// Upstream's `/query_key?key=K`: `{"success": true, "data": [replica...]}`, or
/// 404 with the error code.
async fn query_key(State(svc): State<Arc<MasterService>>, Query(q): Query<KeyQuery>) -> Response {
    let key = q.key.unwrap_or_default();
    if key.is_empty() {
        return key_error(ErrorCode::ObjectNotFound);
    }
    match svc.query_key(&key) {
        Ok(list) => Json(json!({"success": true, "data": replica_values(&list)})).into_response(),
        Err(code) => key_error(code),
    }
}

/// Upstream's `/batch_query_keys?keys=A,B`: per key `ok`, `error` and `values`
/// (the memory replicas; the disk fields are null: no disk tier).
async fn batch_query_keys(
    State(svc): State<Arc<MasterService>>,
    Query(q): Query<KeysQuery>,
) -> Response {
    let keys: Vec<String> = q
        .keys
        .unwrap_or_default()
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"success": false, "error": "No keys provided. Use ?keys=key1,key2,..."})),
        )
            .into_response();
    }
    let mut data = serde_json::Map::new();
    for key in keys {
        let (ok, error, values) = match svc.query_key(&key) {
            Ok(list) => (true, json!(null), json!(replica_values(&list))),
            Err(code) => (false, json!(code.name()), json!(null)),
        };
        data.insert(
            key,
            json!({
                "ok": ok,
                "error": error,
                "values": values,
                "disk_values": null,
                "local_disk_values": null,
                "nof_values": null,
            }),
        );
    }
    Json(json!({"success": true, "data": data})).into_response()
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

#[cfg(test)]
mod tests {
    use super::general6;

    #[test]
    fn sizes_print_as_a_cpp_stream_prints_doubles() {
        assert_eq!(general6(0.0625), "0.0625");
        assert_eq!(general6(3_355_443_200.0 / (1u64 << 30) as f64), "3.125");
        assert_eq!(general6(3_200_000_000.0 / (1u64 << 30) as f64), "2.98023");
        assert_eq!(general6(1024.0), "1024");
        assert_eq!(general6(4096.0 / (1u64 << 30) as f64), "3.8147e-06");
        assert_eq!(general6(2_000_000.0), "2e+06");
    }
}
