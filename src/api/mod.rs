//! The local HTTP API (axum): health, readiness, status, peers, metrics, the OpenAPI
//! document, secure-aggregation sessions ([`sessions`]) and encrypted inference
//! ([`inference`]). Errors are JSON `{"error":{"code","message"}}` with the matching status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::json;
use tracing::{info_span, Instrument};

use crate::actors::aggregation::AggregationHandle;
use crate::actors::inference::InferenceHandle;
use crate::actors::keys::KeysHandle;
use crate::actors::series::SeriesHandle;
use crate::config::ApiToken;
use crate::crypto::Profile;
use crate::metrics::{NodeMetrics, RouteLabels, RouteOnlyLabels};
use crate::net::NetworkHandle;
use crate::store::Store;

pub mod inference;
pub mod series;
pub mod sessions;

pub const OPENAPI: &str = include_str!("openapi.json");

/// An API error: a status, a stable machine-readable code and a message for humans.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

/// Everything the handlers need: actor handles and read-only node facts.
#[derive(Clone)]
pub struct ApiState {
    pub network: NetworkHandle,
    pub keys: KeysHandle,
    pub aggregation: AggregationHandle,
    pub series: SeriesHandle,
    pub inference: InferenceHandle,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub metrics: NodeMetrics,
    pub started: Instant,
    pub profile: Profile,
    pub token: Option<ApiToken>,
    pub max_body_bytes: usize,
    /// Cancelled when the API stops: long polls and event streams end then, rather than hold
    /// the graceful shutdown open.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// `201 Created` with `body` and a `Location` header naming the new resource.
pub(crate) fn created(body: &impl Serialize, location: &str) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = header::HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/openapi.json", get(openapi))
        .merge(sessions::routes())
        .merge(series::routes())
        .merge(inference::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// A span per request, and request counts and durations by route template (never by raw
/// path: the label set stays bounded).
async fn observe(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().to_string();
    let span = info_span!("request", %method, %route);
    let start = Instant::now();
    let response = next.run(request).instrument(span).await;
    let status = response.status().as_u16();
    state
        .metrics
        .api_requests
        .get_or_create(&RouteLabels {
            method,
            route: route.clone(),
            status,
        })
        .inc();
    state
        .metrics
        .api_request_duration
        .get_or_create(&RouteOnlyLabels { route })
        .observe(start.elapsed().as_secs_f64());
    response
}

/// `/v1/*` needs `Authorization: Bearer <api.token>` when a token is configured.
async fn require_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &state.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = presented.is_some_and(|p| token.matches(p));
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong `Authorization: Bearer` token",
            )
            .into_response();
        }
    }
    next.run(request).await
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    network: bool,
    keys: bool,
    aggregation: bool,
    inference: bool,
    store: bool,
}

async fn readyz(State(state): State<ApiState>) -> Response {
    let r = Readiness {
        network: state.network.status().await.is_ok(),
        keys: state.keys.is_running(),
        aggregation: state.aggregation.is_running(),
        inference: state.inference.is_running(),
        store: state.store.tree(crate::store::trees::IDENTITY).is_ok(),
        ready: false,
    };
    let ready = r.network && r.keys && r.aggregation && r.inference && r.store;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Readiness { ready, ..r })).into_response()
}

#[derive(Serialize)]
struct Status {
    peer_id: String,
    version: &'static str,
    listen_addrs: Vec<String>,
    connected_peers: usize,
    uptime_secs: f64,
    profile: String,
}

async fn status(State(state): State<ApiState>) -> Result<Json<Status>, ApiError> {
    let net = state
        .network
        .status()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(Status {
        peer_id: net.peer_id,
        version: env!("CARGO_PKG_VERSION"),
        listen_addrs: net.listen_addrs,
        connected_peers: net.connected_peers,
        uptime_secs: state.started.elapsed().as_secs_f64(),
        profile: state.profile.to_string(),
    }))
}

/// Runs `job` on the blocking pool: parsing or formatting megabytes must not hold an executor
/// thread that serves every other request.
pub(crate) async fn off_executor<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

async fn peers(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let peers = state
        .network
        .peers()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(json!({ "peers": peers })))
}

/// OpenMetrics for clients that ask for it (Prometheus does), the classic text format otherwise.
async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    state
        .metrics
        .store_size
        .set(state.store.size_on_disk() as i64);
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let internal = |e: std::fmt::Error| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    };
    let (content_type, body) = if wants_openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::render(&state.registry).map_err(internal)?,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render_classic(&state.registry).map_err(internal)?,
        )
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", request.method(), request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}
