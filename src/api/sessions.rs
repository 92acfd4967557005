//! Session routes: create, list and show secure-aggregation sessions, submit this node's
//! update, and fetch a finished session's result.
//!
//! Update bodies are parsed by [`parse_update`] (the formats live in [`crate::tensors`]): named
//! tensors as safetensors, `.npz` or JSON `{"tensors": …}`, matched to the session's `shapes` by
//! name, or one flat array as JSON `{"values": [...]}` (or a bare array), raw little-endian
//! `f32` or `.npy`. A result comes back as JSON (with `tensors` when the session has shapes),
//! safetensors, or raw `f64`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::{read_limited, BodyLimit};
use super::error::json_rejection;
use super::openapi::{NpyFile, NpzFile, RawF32, RawF64, SafetensorsFile};
use super::{route, ApiError, ApiState, Route};
use crate::actors::ActorError;
use crate::session::spec::valid_session_id;
use crate::session::{
    Phase, ResultKind, SessionError, SessionInfo, SessionResult, SessionSpec, SubmitReceipt, Update,
};
pub use crate::tensors::UpdateFormat;
use crate::tensors::{self, IntegerPolicy, Layout, NestedTensors, TensorError};
/// Update bodies larger than this are parsed off the async workers.
const PARSE_INLINE_BYTES: usize = 1 << 20;

pub const HEADER_CONTRIBUTORS: &str = "x-fhenode-contributors";
pub const HEADER_CLIPPED: &str = "x-fhenode-clipped";
pub const HEADER_ERROR_BOUND: &str = "x-fhenode-error-bound";
pub const HEADER_KIND: &str = "x-fhenode-kind";
pub const HEADER_TOTAL_WEIGHT: &str = "x-fhenode-total-weight";

/// The session routes, all under `/v1` (the caller adds the token middleware).
pub fn routes() -> Vec<Route> {
    vec![
        route(Method::POST, "/v1/sessions", create),
        route(Method::GET, "/v1/sessions", list),
        route(Method::GET, "/v1/sessions/{id}", show),
        route(Method::GET, "/v1/sessions/{id}/events", events),
        route(Method::POST, "/v1/sessions/{id}/update", submit),
        route(Method::GET, "/v1/sessions/{id}/result", result),
    ]
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = e.code(), error = %e, "session request failed");
        }
        ApiError::new(status, e.code(), e.to_string())
    }
}

impl From<ActorError> for ApiError {
    fn from(e: ActorError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

/// The session id from the path; ids that cannot exist are unknown sessions.
fn session_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path_id(path, SessionError::UnknownSession)
}

/// An id (of a session or a series) from the path; ids that cannot exist are refused as
/// `unknown` says, without asking an actor.
pub(super) fn path_id(
    path: Result<Path<String>, PathRejection>,
    unknown: impl FnOnce(String) -> SessionError,
) -> Result<String, ApiError> {
    let Path(id) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    if valid_session_id(&id) {
        Ok(id)
    } else {
        Err(unknown(id).into())
    }
}

/// Create a session with this node as its coordinator.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    operation_id = "create_session",
    tag = "sessions",
    request_body = SessionSpec,
    responses(
        (status = 201, description = "Created; `Location` names the session.", body = SessionInfo,
            headers(("location" = String, description = "`/v1/sessions/{id}`"))),
        (status = 400, description = "`bad_json` (malformed JSON or an unknown field) or `invalid_spec` (the message names the field).", body = ApiError),
        (status = 409, description = "`duplicate`: a session with this id exists.", body = ApiError),
        (status = 413, description = "`payload_too_large`: the body exceeds `api.max_body_bytes`.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/json`.", body = ApiError),
        (status = 429, description = "`rate_limited`: over `api.sessions_per_minute`; `Retry-After` says when to try again.", body = ApiError,
            headers(("retry-after" = u64, description = "Seconds to wait."))),
        (status = 503, description = "`unavailable`: the aggregation actor is not running.", body = ApiError),
    )
)]
async fn create(
    State(state): State<ApiState>,
    body: Result<Json<SessionSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.creations.take()?;
    let Json(spec) = body.map_err(|e| json_rejection(e, state.max_body_bytes))?;
    let info = state.aggregation.create(spec).await?;
    Ok(super::created(&info, &format!("/v1/sessions/{}", info.id)))
}

/// `GET /v1/sessions`
#[derive(Serialize, ToSchema)]
struct SessionList {
    sessions: Vec<SessionInfo>,
}

/// The sessions this node knows.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    operation_id = "list_sessions",
    tag = "sessions",
    responses(
        (status = 200, description = "The sessions.", body = SessionList),
        (status = 503, description = "`unavailable`: the aggregation actor is not running.", body = ApiError),
    )
)]
async fn list(State(state): State<ApiState>) -> Result<Json<SessionList>, ApiError> {
    let sessions = state.aggregation.list().await?;
    Ok(Json(SessionList { sessions }))
}

/// Longest long poll (`?wait=`): a client that wants longer polls again.
pub const MAX_WAIT_SECS: u64 = 60;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ShowParams {
    /// Seconds to wait for the session to leave a phase (a long poll), at most 60: the answer
    /// comes as soon as the session is in another phase than `seen`, at once when it is done or
    /// failed, else after `wait` seconds with the session as it is then.
    #[param(maximum = 60)]
    wait: Option<u64>,
    /// The phase the caller last saw (default: the present one): the long poll answers at once
    /// when the session is in another, so a change between the caller's reads is never waited
    /// through.
    seen: Option<Phase>,
}

/// One session; with `wait`, once it is in another phase than `seen` (a long poll).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    operation_id = "get_session",
    tag = "sessions",
    params(("id" = String, Path, description = "The session id."), ShowParams),
    responses(
        (status = 200, description = "The session.", body = SessionInfo),
        (status = 400, description = "`bad_request`: `wait` is not a whole number of seconds, `seen` is not a phase, or an unknown parameter.", body = ApiError),
        (status = 404, description = "`unknown_session`.", body = ApiError),
        (status = 503, description = "`unavailable`: the aggregation actor is not running.", body = ApiError),
    )
)]
async fn show(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<ShowParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = session_id(path)?;
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let info = state.aggregation.get(&id).await?;
    let wait = Duration::from_secs(params.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let seen = params.seen.unwrap_or(info.phase);
    if wait.is_zero() || info.phase.is_terminal() || info.phase != seen {
        return Ok(Json(info).into_response());
    }
    let changed = tokio::select! {
        changed = tokio::time::timeout(wait, state.aggregation.wait_change(&id, seen)) => {
            changed.ok()
        }
        _ = state.stopping.cancelled() => None,
    };
    let info = match changed {
        Some(info) => info?,
        // The same phase all along (or the node is stopping): its present counts.
        None => state.aggregation.get(&id).await?,
    };
    Ok(Json(info).into_response())
}

/// A session followed for its event stream: the phase it was last seen in, `None` once the
/// stream is over (the session ended, or went missing).
struct Followed {
    aggregation: crate::actors::aggregation::AggregationHandle,
    stopping: tokio_util::sync::CancellationToken,
    id: String,
    last: Option<Phase>,
}

/// A `phase` event carrying the session as `GET /v1/sessions/{id}` shows it.
fn phase_event(info: &SessionInfo) -> Event {
    Event::default()
        .event("phase")
        .json_data(info)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

/// The phase to follow after `info`: none once it is done or failed.
fn still_open(info: &SessionInfo) -> Option<Phase> {
    (!info.phase.is_terminal()).then_some(info.phase)
}

/// A session's phase changes as server-sent events.
///
/// `GET /v1/sessions/{id}/events`: server-sent events, a `phase` event with the session (as
/// `GET /v1/sessions/{id}` shows it) now and one each time its phase changes, ending after
/// `done` or `failed`; an `error` event ends it early (the session gone), and the stream
/// simply ends when the node stops.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/events",
    operation_id = "session_events",
    tag = "sessions",
    params(("id" = String, Path, description = "The session id.")),
    responses(
        (status = 200, description = "The event stream: `event: phase` with `data:` a `SessionInfo` as JSON, or `event: error` with a message.",
            content_type = "text/event-stream", body = String),
        (status = 404, description = "`unknown_session`.", body = ApiError),
        (status = 503, description = "`unavailable`: the aggregation actor is not running.", body = ApiError),
    )
)]
async fn events(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = session_id(path)?;
    let first = state.aggregation.get(&id).await?;
    let followed = Followed {
        aggregation: state.aggregation.clone(),
        stopping: state.stopping.clone(),
        id,
        last: still_open(&first),
    };
    let changes = futures::stream::unfold(followed, |mut f| async move {
        let last = f.last?;
        let next = tokio::select! {
            next = f.aggregation.wait_change(&f.id, last) => next,
            // The API is stopping: the stream ends, the client may reconnect elsewhere.
            _ = f.stopping.cancelled() => return None,
        };
        let event = match next {
            Ok(info) => {
                f.last = still_open(&info);
                phase_event(&info)
            }
            Err(e) => {
                f.last = None;
                Event::default().event("error").data(e.to_string())
            }
        };
        Some((event, f))
    });
    let stream = futures::stream::once(futures::future::ready(phase_event(&first)))
        .chain(changes)
        .map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SubmitParams {
    /// The update's weight (a weighted mean's number of examples), for a binary body; a JSON
    /// body may carry it as `weight` instead (not both).
    weight: Option<f64>,
}

/// A JSON update: one flat vector (`{"values": [...]}` or a bare array) or named tensors
/// (`{"tensors": {name: nested lists}}` matched to the session's `shapes` by name), with the
/// update's `weight` in a weighted mean. A schema only: `crate::tensors` reads the body.
#[derive(ToSchema)]
#[serde(untagged)]
#[schema(
    description = "A JSON update: one flat vector (`{\"values\": [...]}` or a bare array) \
    or named tensors (`{\"tensors\": {name: nested lists}}`, matched to the session's `shapes` \
    by name), with the update's `weight` in a weighted mean (or `?weight=`, not both). Unknown \
    fields are refused."
)]
#[allow(dead_code)]
enum UpdateJson {
    Values {
        values: Vec<f64>,
        weight: Option<f64>,
    },
    Tensors {
        /// Each tensor as nested lists of numbers (a number for a 0-d tensor).
        #[schema(value_type = Object)]
        tensors: (),
        weight: Option<f64>,
    },
    Bare(Vec<f64>),
}

/// Encrypt this node's update and upload it to the coordinator.
///
/// Answers once the coordinator holds the encrypted update durably. The body's encoding
/// follows its `Content-Type`: named tensors (safetensors, `.npz`, JSON `tensors`) are matched
/// to the session's `shapes` by name; a flat vector (JSON `values` or a bare array, raw
/// little-endian float32, `.npy`) must have the session's `length`. Every value must be finite
/// and within the float32 range; integer tensors are refused unless the session's `integers`
/// is `include`.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/update",
    operation_id = "submit_update",
    tag = "sessions",
    params(("id" = String, Path, description = "The session id."), SubmitParams),
    request_body(
        description = "The update.",
        content(
            (UpdateJson = "application/json"),
            (inline(SafetensorsFile) = "application/safetensors"),
            (inline(NpzFile) = "application/x-npz"),
            (inline(NpyFile) = "application/x-npy"),
            (inline(RawF32) = "application/octet-stream"),
        )
    ),
    responses(
        (status = 200, description = "Submitted: the coordinator holds it.", body = SubmitReceipt),
        (status = 400, description = "`bad_json`, `bad_request` (a query parameter), or `bad_input`: wrong length or names, non-finite or out-of-range values, an integer tensor, a malformed file, or the weight given twice.", body = ApiError),
        (status = 403, description = "`not_allowed`: this node is not a participant of the session.", body = ApiError),
        (status = 404, description = "`unknown_session`.", body = ApiError),
        (status = 409, description = "`wrong_phase` (not collecting) or `duplicate` (already submitted).", body = ApiError),
        (status = 413, description = "`payload_too_large`: the body exceeds `api.max_body_bytes`, or the most an update of the session can take in its format (8 bytes per value and 1 MiB for the binary forms, 40 bytes per value and 1 MiB for JSON); refused unread when its `Content-Length` says so.", body = ApiError),
        (status = 415, description = "`unsupported_format`: no `Content-Type`, or one that names no update format.", body = ApiError),
        (status = 502, description = "`remote` or `unreachable`: the coordinator refused the update or could not be reached.", body = ApiError),
        (status = 503, description = "`unavailable`: the aggregation actor is not running, or too few members hold this node's seeds yet.", body = ApiError),
    )
)]
async fn submit(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<SubmitParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let id = session_id(path)?;
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            unsupported_format("the Content-Type header is not valid text".to_string())
        })?),
    };
    // Refuse an unsupported format before looking at the body.
    let format = update_format(content_type)?;
    // The session says how long its update can be: the body is read against that, never
    // more (a length-1,000 session takes a few kilobytes, not api.max_body_bytes).
    let info = state.aggregation.get(&id).await?;
    let (layout, integers) = (info.layout(), info.integers);
    let fits = format.max_body_bytes(layout.length() as u64);
    let limit = if fits < state.max_body_bytes as u64 {
        BodyLimit {
            bytes: fits as usize,
            why: format!(
                "the most an update of session `{id}` ({} values) can take as {}",
                layout.length(),
                format.media_type()
            ),
        }
    } else {
        BodyLimit {
            bytes: state.max_body_bytes,
            why: "api.max_body_bytes".into(),
        }
    };
    let body = read_limited(&headers, body, &limit).await?;
    let (values, body_weight) = if body.len() <= PARSE_INLINE_BYTES {
        parse_update(format, &body, &layout, integers)?
    } else {
        super::off_executor(move || parse_update(format, &body, &layout, integers)).await??
    };
    let weight = match (body_weight, params.weight) {
        (Some(_), Some(_)) => {
            return Err(bad_input(
                "the weight is given twice: in the body and as `?weight=`",
            ))
        }
        (body, query) => body.or(query),
    };
    let update = Update { values, weight };
    Ok(Json(state.aggregation.submit(&id, update).await?).into_response())
}

/// The forms a result is served in, by the request's `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultForm {
    /// The result's fields, with `tensors` (nested lists) when the session has shapes.
    Json,
    /// `application/octet-stream`: the values as little-endian `f64`, facts in headers.
    Raw,
    /// `application/safetensors`: `f64` tensors named and shaped as the session's, facts in
    /// its `__metadata__`.
    Safetensors,
}

impl ResultForm {
    pub fn from_accept(accept: Option<&str>) -> Self {
        if accepts(accept, "application/safetensors") {
            ResultForm::Safetensors
        } else if accepts(accept, "application/octet-stream") {
            ResultForm::Raw
        } else {
            ResultForm::Json
        }
    }
}

/// A finished session's result, as JSON, safetensors or raw float64 by `Accept`.
///
/// `Accept: application/safetensors` answers float64 tensors named and shaped as the session's
/// (its facts in the file's `__metadata__`), `Accept: application/octet-stream` the values as
/// little-endian float64 (its facts in `x-fhenode-*` headers), anything else JSON (with
/// `tensors` when the session has shapes).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/result",
    operation_id = "get_result",
    tag = "sessions",
    params(("id" = String, Path, description = "The session id.")),
    responses(
        (status = 200, description = "The result.",
            headers(
                ("x-fhenode-contributors" = u32, description = "octet-stream only: the number of contributors."),
                ("x-fhenode-clipped" = u64, description = "octet-stream only: values clipped, in total."),
                ("x-fhenode-error-bound" = f64, description = "octet-stream only: the largest |error| of each value."),
                ("x-fhenode-kind" = ResultKind, description = "octet-stream only: the result's kind."),
                ("x-fhenode-total-weight" = f64, description = "octet-stream only, weighted means: the weights' sum."),
            ),
            content(
                (SessionResultJson = "application/json"),
                (inline(SafetensorsFile) = "application/safetensors"),
                (inline(RawF64) = "application/octet-stream"),
            )
        ),
        (status = 404, description = "`unknown_session`.", body = ApiError),
        (status = 409, description = "`no_result`: the session is not done.", body = ApiError),
        (status = 503, description = "`unavailable`: the aggregation actor is not running.", body = ApiError),
    )
)]
async fn result(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = session_id(path)?;
    let result = state.aggregation.result(&id).await?;
    let layout = state.aggregation.get(&id).await?.layout();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let form = ResultForm::from_accept(accept);
    // Up to 2^26 values to format: on the blocking pool, not an executor thread.
    super::off_executor(move || match form {
        ResultForm::Raw => Ok(raw_result(&result)),
        ResultForm::Safetensors => safetensors_result(&result, &layout),
        ResultForm::Json => Ok(Json(JsonResult::new(&result, &layout)).into_response()),
    })
    .await?
}

/// A finished session's result as JSON (the document's `SessionResult`): what [`JsonResult`]
/// writes. A schema only.
#[derive(ToSchema)]
#[schema(
    as = SessionResult,
    description = "A finished session's result: its facts and values, and its named tensors \
        when the session has `shapes`."
)]
#[allow(dead_code)]
struct SessionResultJson {
    session: String,
    kind: ResultKind,
    contributors: u32,
    /// The contributors' peer ids.
    contributor_ids: Vec<String>,
    /// Values clipped by the contributors, in total.
    clipped: u64,
    /// Largest |error| of each value from fixed-point rounding.
    error_bound: f64,
    /// A weighted mean's Σ wᵢ (`null` otherwise).
    total_weight: Option<f64>,
    /// The values, in the session's order.
    values: Vec<f64>,
    /// The values as the session's named tensors, nested lists of numbers (a number for a
    /// 0-d tensor); only when the session has `shapes`.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tensors: Option<()>,
}

/// A result as JSON: its fields, and its tensors when the session named them.
#[derive(Serialize)]
struct JsonResult<'a> {
    #[serde(flatten)]
    result: &'a SessionResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    tensors: Option<NestedTensors<'a>>,
}

impl<'a> JsonResult<'a> {
    fn new(result: &'a SessionResult, layout: &'a Layout) -> Self {
        let named = layout.is_named() && layout.length() == result.values.len();
        JsonResult {
            result,
            tensors: named.then(|| NestedTensors::new(layout, &result.values)),
        }
    }
}

/// The facts of a result beside its values: name (in safetensors metadata), header (of a raw
/// result) and value.
fn result_facts(result: &SessionResult) -> Vec<(&'static str, &'static str, String)> {
    let kind = match result.kind {
        ResultKind::Mean => "mean",
        ResultKind::Sum => "sum",
        ResultKind::WeightedMean => "weighted_mean",
    };
    let mut facts = vec![
        (
            "contributors",
            HEADER_CONTRIBUTORS,
            result.contributors.to_string(),
        ),
        ("clipped", HEADER_CLIPPED, result.clipped.to_string()),
        (
            "error_bound",
            HEADER_ERROR_BOUND,
            format!("{:e}", result.error_bound),
        ),
        ("kind", HEADER_KIND, kind.to_string()),
    ];
    if let Some(total) = result.total_weight {
        facts.push(("total_weight", HEADER_TOTAL_WEIGHT, total.to_string()));
    }
    facts
}

/// The result as a safetensors file of `f64` tensors, its facts in the `__metadata__`.
fn safetensors_result(result: &SessionResult, layout: &Layout) -> Result<Response, ApiError> {
    let mut metadata: std::collections::HashMap<String, String> = result_facts(result)
        .into_iter()
        .map(|(name, _, value)| (name.to_string(), value))
        .collect();
    metadata.insert("session".into(), result.session.clone());
    let body = tensors::write_safetensors(layout, &result.values, metadata)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/safetensors"),
        )],
        body,
    )
        .into_response())
}

/// The result's values as little-endian `f64`, its facts in `x-fhenode-*` headers.
fn raw_result(result: &SessionResult) -> Response {
    let mut body = Vec::with_capacity(result.values.len().saturating_mul(8));
    for v in &result.values {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        body,
    )
        .into_response();
    for (_, header, value) in result_facts(result) {
        // Numbers and fixed words: always valid header values.
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(header), value);
        }
    }
    response
}

/// Whether an `Accept` header asks for `media_type` (with a non-zero quality).
pub fn accepts(accept: Option<&str>, media_type: &str) -> bool {
    let Some(accept) = accept else { return false };
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case(media_type)
            && !parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
    })
}

fn bad_input(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_input", message)
}

fn unsupported_format(message: String) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_format",
        message,
    )
}

/// The update format named by a `Content-Type` header (parameters such as `charset` ignored).
pub fn update_format(content_type: Option<&str>) -> Result<UpdateFormat, ApiError> {
    let Some(content_type) = content_type else {
        return Err(unsupported_format(format!(
            "a Content-Type is required: {}",
            UpdateFormat::SUPPORTED
        )));
    };
    UpdateFormat::from_media_type(content_type).ok_or_else(|| {
        unsupported_format(format!(
            "Content-Type `{content_type}` is not supported for updates; use {}",
            UpdateFormat::SUPPORTED
        ))
    })
}

impl From<TensorError> for ApiError {
    fn from(e: TensorError) -> Self {
        match e {
            TensorError::UnsupportedFormat(m) => unsupported_format(m),
            TensorError::Json(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_json", m),
            other => ApiError::new(StatusCode::BAD_REQUEST, "bad_input", other.to_string()),
        }
    }
}

/// Parses an update body of `format` into the session's vector of values (named tensors put
/// in their places by `layout`) and the weight a JSON body carries. Every value is finite;
/// NaN, infinities and numbers outside the `f32` range are refused.
pub fn parse_update(
    format: UpdateFormat,
    body: &[u8],
    layout: &Layout,
    integers: IntegerPolicy,
) -> Result<(Vec<f32>, Option<f64>), ApiError> {
    // An `.npz` may unpack to no more than the update can need: what a binary body of the
    // session may be (every value as `f64`), which leaves room for the members' headers.
    let max_unpacked = UpdateFormat::Npz.max_body_bytes(layout.length() as u64);
    let (arrays, weight) = tensors::read_body(format, body, max_unpacked)?;
    Ok((layout.flatten(&arrays, integers)?, weight))
}

#[cfg(test)]
mod tests {
    use axum::routing::post;
    use axum::Router;
    use serde_json::json;

    use super::*;

    fn flat(
        format: UpdateFormat,
        body: &[u8],
        length: u64,
    ) -> Result<(Vec<f32>, Option<f64>), ApiError> {
        parse_update(
            format,
            body,
            &Layout::new(None, length),
            IntegerPolicy::Refuse,
        )
    }

    fn code_of<T: std::fmt::Debug>(r: Result<T, ApiError>) -> (u16, &'static str, String) {
        let e = r.unwrap_err();
        (e.status.as_u16(), e.code, e.message)
    }

    #[test]
    fn content_types() {
        assert_eq!(code_of(update_format(None)).1, "unsupported_format");
        let (status, code, message) = code_of(update_format(Some("text/plain")));
        assert_eq!((status, code), (415, "unsupported_format"));
        assert!(
            message.contains("text/plain") && message.contains("safetensors"),
            "{message}"
        );
        assert_eq!(
            update_format(Some("Application/JSON ; charset=UTF-8")).unwrap(),
            UpdateFormat::Json
        );
        assert_eq!(
            update_format(Some("application/safetensors")).unwrap(),
            UpdateFormat::Safetensors
        );
    }

    #[test]
    fn tensor_errors_keep_their_codes() {
        let (status, code, _) = code_of(flat(UpdateFormat::Json, b"{", 1));
        assert_eq!((status, code), (400, "bad_json"));
        let (status, code, message) = code_of(flat(UpdateFormat::Raw, &[0; 7], 1));
        assert_eq!((status, code), (400, "bad_input"));
        assert!(message.contains("multiple of 4"), "{message}");
        let (status, code, message) = code_of(flat(UpdateFormat::Json, b"[1, 2]", 1));
        assert_eq!((status, code), (400, "bad_input"));
        assert!(message.contains("length is 1"), "{message}");
        assert_eq!(
            flat(UpdateFormat::Json, br#"{"values": [0.5], "weight": 3}"#, 1).unwrap(),
            (vec![0.5], Some(3.0))
        );
    }

    #[test]
    fn accept_header() {
        let octet = |accept| accepts(accept, "application/octet-stream");
        assert!(!octet(None));
        assert!(!octet(Some("application/json")));
        assert!(!octet(Some("*/*")));
        assert!(octet(Some("application/octet-stream")));
        assert!(octet(Some(
            "application/json;q=0.5, Application/Octet-Stream"
        )));
        assert!(!octet(Some("application/octet-stream; q=0")));
        assert!(octet(Some("application/octet-stream;q=0.1")));
        assert_eq!(ResultForm::from_accept(None), ResultForm::Json);
        assert_eq!(
            ResultForm::from_accept(Some("application/safetensors, application/json;q=0.5")),
            ResultForm::Safetensors
        );
        assert_eq!(
            ResultForm::from_accept(Some("application/octet-stream")),
            ResultForm::Raw
        );
    }

    #[test]
    fn session_errors_keep_code_and_status() {
        let e: ApiError = SessionError::UnknownSession("x".into()).into();
        assert_eq!((e.status.as_u16(), e.code), (404, "unknown_session"));
        let e: ApiError = ActorError::Stopped("aggregation").into();
        assert_eq!((e.status.as_u16(), e.code), (503, "unavailable"));
    }

    #[test]
    fn raw_result_has_values_and_headers() {
        let result = SessionResult {
            session: "s".into(),
            kind: ResultKind::Sum,
            contributors: 3,
            contributor_ids: vec![],
            clipped: 2,
            error_bound: 0.5,
            total_weight: None,
            values: vec![1.5, -2.0],
        };
        let response = raw_result(&result);
        let h = response.headers();
        assert_eq!(h[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(h[HEADER_CONTRIBUTORS], "3");
        assert_eq!(h[HEADER_CLIPPED], "2");
        assert_eq!(h[HEADER_ERROR_BOUND], "5e-1");
        assert_eq!(
            h[HEADER_ERROR_BOUND]
                .to_str()
                .unwrap()
                .parse::<f64>()
                .unwrap(),
            0.5
        );
        assert_eq!(h[HEADER_KIND], "sum");
    }

    #[tokio::test]
    async fn results_come_back_as_named_tensors() {
        let result = SessionResult {
            session: "s".into(),
            kind: ResultKind::Mean,
            contributors: 2,
            contributor_ids: vec![],
            clipped: 0,
            error_bound: 1e-6,
            total_weight: None,
            values: vec![1.0, 2.0, 3.0],
        };
        let shapes =
            std::collections::BTreeMap::from([("a".into(), vec![2]), ("b".into(), vec![])]);
        let layout = Layout::new(Some(&shapes), 3);
        let json = serde_json::to_value(JsonResult::new(&result, &layout)).unwrap();
        assert_eq!(json["tensors"], json!({"a": [1.0, 2.0], "b": 3.0}));
        assert_eq!(json["values"], json!([1.0, 2.0, 3.0]));
        assert_eq!(json["contributors"], 2);
        let flat = serde_json::to_value(JsonResult::new(&result, &Layout::new(None, 3))).unwrap();
        assert!(flat.get("tensors").is_none(), "{flat}");
        // The OpenAPI document's SessionResult describes both.
        super::super::openapi::tests::assert_fits("SessionResult", &json);
        super::super::openapi::tests::assert_fits("SessionResult", &flat);

        let response = safetensors_result(&result, &layout).unwrap();
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/safetensors"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let file = safetensors::SafeTensors::deserialize(&body).unwrap();
        assert_eq!(file.tensor("a").unwrap().shape(), &[2]);
        assert_eq!(file.tensor("b").unwrap().data(), &3.0f64.to_le_bytes());
        let (_, meta) = safetensors::SafeTensors::read_metadata(&body).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(
            (meta["kind"].as_str(), meta["contributors"].as_str()),
            ("mean", "2")
        );
        assert_eq!(meta["error_bound"].parse::<f64>().unwrap(), 1e-6);
    }

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    /// Rejections by axum's extractors come back in our error shape.
    #[tokio::test]
    async fn rejections_use_our_error_shape() {
        const LIMIT: usize = 64;
        let router = Router::new()
            .route(
                "/json",
                post(
                    |body: Result<Json<SessionSpec>, JsonRejection>| async move {
                        body.map(|_| StatusCode::NO_CONTENT)
                            .map_err(|e| json_rejection(e, LIMIT))
                    },
                ),
            )
            .route(
                "/update",
                post(|headers: HeaderMap, body: Body| async move {
                    let limit = BodyLimit {
                        bytes: LIMIT,
                        why: "the test's limit".into(),
                    };
                    let body = read_limited(&headers, body, &limit).await?;
                    let ct = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok());
                    let format = update_format(ct)?;
                    flat(format, &body, 2).map(|(values, _)| Json(values))
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(LIMIT));
        let base = serve(router).await;
        let http = reqwest::Client::new();
        let cases = [
            (
                "/json",
                Some("application/json"),
                b"{".to_vec(),
                400,
                "bad_json",
                "EOF",
            ),
            (
                "/json",
                Some("application/json"),
                br#"{"nope":1}"#.to_vec(),
                400,
                "bad_json",
                "unknown field `nope`",
            ),
            (
                "/json",
                None,
                b"{}".to_vec(),
                415,
                "unsupported_media_type",
                "application/json",
            ),
            (
                "/json",
                Some("application/json"),
                vec![b' '; LIMIT + 1],
                413,
                "payload_too_large",
                "64 bytes",
            ),
            (
                "/update",
                Some("application/octet-stream"),
                vec![0; LIMIT + 4],
                413,
                "payload_too_large",
                "64 bytes",
            ),
            (
                "/update",
                Some("application/octet-stream"),
                vec![0; 5],
                400,
                "bad_input",
                "multiple of 4",
            ),
            (
                "/update",
                Some("text/csv"),
                vec![0; 4],
                415,
                "unsupported_format",
                "text/csv",
            ),
        ];
        for (path, ct, body, status, code, needle) in cases {
            let mut request = http.post(format!("{base}{path}")).body(body);
            if let Some(ct) = ct {
                request = request.header(header::CONTENT_TYPE.as_str(), ct);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status().as_u16(), status, "{path} {ct:?}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], code, "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(needle), "{path}: {message}");
        }
        let ok = http
            .post(format!("{base}/update"))
            .header(header::CONTENT_TYPE.as_str(), "application/json")
            .body("[1, 2]")
            .send()
            .await
            .unwrap();
        assert_eq!(ok.json::<Vec<f32>>().await.unwrap(), vec![1.0, 2.0]);
    }
}
