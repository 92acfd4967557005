//! The local HTTP API (axum): health, readiness, status, peers, metrics, the OpenAPI
//! document ([`openapi`]), secure-aggregation sessions ([`sessions`]), series ([`series`]) and
//! encrypted inference ([`inference`]). Errors are JSON `{"error":{"code","message"}}` with the
//! matching status.
//!
//! Every route is listed once, by [`routes`]: the router is built from that list, and the
//! OpenAPI document's test checks that it describes exactly those routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tracing::{info_span, Instrument};
use utoipa::ToSchema;

use crate::actors::aggregation::AggregationHandle;
use crate::actors::inference::InferenceHandle;
use crate::actors::keys::KeysHandle;
use crate::actors::series::SeriesHandle;
use crate::config::ApiToken;
use crate::crypto::Profile;
use crate::metrics::{NodeMetrics, RouteLabels, RouteOnlyLabels};
use crate::net::{NetworkHandle, PeerInfo};
use crate::store::Store;

mod body;
mod error;
pub mod inference;
pub mod limit;
pub mod openapi;
pub mod series;
pub mod sessions;

pub use error::ApiError;
pub use openapi::openapi_json;

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
    /// `api.sessions_per_minute`.
    pub creations: Arc<limit::CreationLimit>,
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

/// One route the API serves: a method, a path template (written as the OpenAPI document
/// writes it, which axum reads the same) and its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<ApiState>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// The route `method path` served by `handler`.
pub(crate) fn route<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, ApiState>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
    Route {
        method,
        path,
        handler: axum::routing::on(filter, handler),
    }
}

/// Every route the API serves, each once: the router is built from this list.
pub fn routes() -> Vec<Route> {
    let mut routes = vec![
        route(Method::GET, "/healthz", healthz),
        route(Method::GET, "/readyz", readyz),
        route(Method::GET, "/metrics", metrics),
        route(Method::GET, "/v1/status", status),
        route(Method::GET, "/v1/peers", peers),
        route(Method::GET, "/v1/openapi.json", document),
    ];
    routes.extend(sessions::routes());
    routes.extend(series::routes());
    routes.extend(inference::routes());
    routes
}

/// Whether a route needs the API token (when one is configured): everything under `/v1/`.
pub fn needs_token(path: &str) -> bool {
    path.starts_with("/v1/")
}

/// A router serving `routes`; a method given twice for one path panics.
fn table(routes: impl IntoIterator<Item = Route>) -> Router<ApiState> {
    routes
        .into_iter()
        .fold(Router::new(), |router, r| router.route(r.path, r.handler))
}

pub fn router(state: ApiState) -> Router {
    let (v1, open): (Vec<Route>, Vec<Route>) =
        routes().into_iter().partition(|r| needs_token(r.path));
    let v1 = table(v1).route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    table(open)
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

/// Liveness: the process answers.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "get_health",
    tag = "node",
    responses((status = 200, description = "Alive.", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Whether each part of the node runs.
#[derive(Serialize, ToSchema)]
struct Readiness {
    ready: bool,
    network: bool,
    keys: bool,
    aggregation: bool,
    inference: bool,
    /// The store takes writes and its disk has `store.min_free_bytes` free.
    store: bool,
    /// The store's free space and latest write error.
    store_health: crate::store::StoreHealth,
}

/// Readiness: every actor runs, the store takes writes and its disk has room.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "get_readiness",
    tag = "node",
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready: the parts that are not say `false`.", body = Readiness),
    )
)]
async fn readyz(State(state): State<ApiState>) -> Response {
    let network = state.network.status().await.is_ok();
    let keys = state.keys.is_running();
    let aggregation = state.aggregation.is_running();
    let inference = state.inference.is_running();
    let store_health = state.store.health();
    let store =
        store_health.is_healthy() && state.store.tree(crate::store::trees::IDENTITY).is_ok();
    let ready = network && keys && aggregation && inference && store;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let readiness = Readiness {
        network,
        keys,
        aggregation,
        inference,
        store,
        store_health,
        ready,
    };
    (status, Json(readiness)).into_response()
}

/// This node.
#[derive(Serialize, ToSchema)]
struct Status {
    peer_id: String,
    /// The fhenode version.
    version: &'static str,
    listen_addrs: Vec<String>,
    connected_peers: usize,
    uptime_secs: f64,
    /// The profile of sessions that name none.
    #[schema(value_type = crate::crypto::Profile)]
    profile: String,
}

/// This node: peer id, version, listen addresses, uptime, default profile.
#[utoipa::path(
    get,
    path = "/v1/status",
    operation_id = "get_status",
    tag = "node",
    responses(
        (status = 200, description = "The node.", body = Status),
        (status = 503, description = "`unavailable`: the network actor is not running.", body = ApiError),
    )
)]
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
    crate::runtime::off_executor(job)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.0))
}

/// `GET /v1/peers`
#[derive(Serialize, ToSchema)]
struct PeerList {
    #[schema(value_type = Vec<openapi::Peer>)]
    peers: Vec<PeerInfo>,
}

/// Connected peers with their addresses and protocols.
#[utoipa::path(
    get,
    path = "/v1/peers",
    operation_id = "list_peers",
    tag = "node",
    responses(
        (status = 200, description = "The connected peers.", body = PeerList),
        (status = 503, description = "`unavailable`: the network actor is not running.", body = ApiError),
    )
)]
async fn peers(State(state): State<ApiState>) -> Result<Json<PeerList>, ApiError> {
    let peers = state
        .network
        .peers()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(PeerList { peers }))
}

/// Prometheus metrics.
///
/// OpenMetrics for clients that ask for it (`Accept: application/openmetrics-text`, as
/// Prometheus does), the classic text format otherwise.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "get_metrics",
    tag = "node",
    responses(
        (status = 200, description = "The node's metrics.", content(
            (String = "text/plain; version=0.0.4"),
            (String = "application/openmetrics-text; version=1.0.0"),
        )),
        (status = 500, description = "`internal`: the metrics could not be written.", body = ApiError),
    )
)]
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

/// This document: the API in OpenAPI 3.1.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "get_openapi",
    tag = "node",
    responses((status = 200, description = "The OpenAPI document.", body = Object))
)]
async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
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
