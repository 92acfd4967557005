//! Session routes: create, list and show secure-aggregation sessions, submit this node's
//! update, and fetch a finished session's result.
//!
//! Update bodies are parsed by [`parse_update`], a pure function: JSON `{"values": [...]}` (or a
//! bare array), raw little-endian `f32`, or a NumPy `.npy` file of `float32`/`float64`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use npyz::{DType, Endianness, NpyHeader, Order, TypeChar};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState};
use crate::actors::ActorError;
use crate::session::spec::valid_session_id;
use crate::session::{Phase, ResultKind, SessionError, SessionInfo, SessionResult, SessionSpec};

/// The NPY format's magic string.
pub const NPY_MAGIC: &[u8] = b"\x93NUMPY";
/// Largest NPY header accepted (numpy itself refuses headers over 10 000 bytes by default).
pub const MAX_NPY_HEADER_BYTES: usize = 16 * 1024;
/// Deepest bracket nesting accepted in an NPY header (a float array's header has 1 or 2).
const MAX_NPY_HEADER_NESTING: usize = 16;
/// Update bodies larger than this are parsed off the async workers.
const PARSE_INLINE_BYTES: usize = 1 << 20;

pub const HEADER_CONTRIBUTORS: &str = "x-fhenode-contributors";
pub const HEADER_CLIPPED: &str = "x-fhenode-clipped";
pub const HEADER_ERROR_BOUND: &str = "x-fhenode-error-bound";
pub const HEADER_KIND: &str = "x-fhenode-kind";

/// The session routes, all under `/v1` (the caller adds the token middleware).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/sessions", post(create).get(list))
        .route("/v1/sessions/{id}", get(show))
        .route("/v1/sessions/{id}/events", get(events))
        .route("/v1/sessions/{id}/update", post(submit))
        .route("/v1/sessions/{id}/result", get(result))
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

/// An error for a request whose body or path could not be read, in our JSON shape.
fn body_error(status: StatusCode, text: String, max_body_bytes: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            format!("the request body is larger than api.max_body_bytes ({max_body_bytes} bytes)"),
        )
    } else {
        ApiError::new(status, "bad_request", text)
    }
}

fn json_rejection(rejection: JsonRejection, max_body_bytes: usize) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.body_text())
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(e) => body_error(e.status(), e.body_text(), max_body_bytes),
        other => body_error(other.status(), other.body_text(), max_body_bytes),
    }
}

fn bytes_rejection(rejection: BytesRejection, max_body_bytes: usize) -> ApiError {
    body_error(rejection.status(), rejection.body_text(), max_body_bytes)
}

/// The session id from the path; ids that cannot exist are unknown sessions.
fn session_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    if valid_session_id(&id) {
        Ok(id)
    } else {
        Err(SessionError::UnknownSession(id).into())
    }
}

async fn create(
    State(state): State<ApiState>,
    body: Result<Json<SessionSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = body.map_err(|e| json_rejection(e, state.max_body_bytes))?;
    let info = state.aggregation.create(spec).await?;
    Ok(super::created(&info, &format!("/v1/sessions/{}", info.id)))
}

async fn list(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let sessions = state.aggregation.list().await?;
    Ok(Json(json!({ "sessions": sessions })))
}

/// Longest long poll (`?wait=`): a client that wants longer polls again.
pub const MAX_WAIT_SECS: u64 = 60;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowParams {
    /// Seconds to wait for the session to leave its present phase (a long poll).
    wait: Option<u64>,
}

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
    if wait.is_zero() || info.phase.is_terminal() {
        return Ok(Json(info).into_response());
    }
    let changed = tokio::select! {
        changed = tokio::time::timeout(wait, state.aggregation.wait_change(&id, info.phase)) => {
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

/// `GET /v1/sessions/{id}/events`: server-sent events, a `phase` event with the session (as
/// `GET /v1/sessions/{id}` shows it) now and one each time its phase changes, ending after
/// `done` or `failed`; an `error` event ends it early (the session gone), and the stream
/// simply ends when the node stops.
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

async fn submit(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = session_id(path)?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the Content-Type header is not valid text",
            )
        })?),
    };
    // Refuse an unsupported media type before looking at the body.
    update_format(content_type)?;
    let body = body.map_err(|e| bytes_rejection(e, state.max_body_bytes))?;
    let values = if body.len() <= PARSE_INLINE_BYTES {
        parse_update(content_type, &body)?
    } else {
        let content_type = content_type.map(str::to_owned);
        super::off_executor(move || parse_update(content_type.as_deref(), &body)).await??
    };
    Ok(Json(state.aggregation.submit(&id, values).await?).into_response())
}

async fn result(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = session_id(path)?;
    let result = state.aggregation.result(&id).await?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let octet_stream = accepts_octet_stream(accept);
    // Up to 2^26 values to format: on the blocking pool, not an executor thread.
    super::off_executor(move || {
        if octet_stream {
            raw_result(&result)
        } else {
            Json(result).into_response()
        }
    })
    .await
}

/// The result's values as little-endian `f64`, its facts in `x-fhenode-*` headers.
fn raw_result(result: &SessionResult) -> Response {
    let mut body = Vec::with_capacity(result.values.len().saturating_mul(8));
    for v in &result.values {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let kind = match result.kind {
        ResultKind::Mean => "mean",
        ResultKind::Sum => "sum",
    };
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        )],
        body,
    )
        .into_response();
    let facts = [
        (HEADER_CONTRIBUTORS, result.contributors.to_string()),
        (HEADER_CLIPPED, result.clipped.to_string()),
        (HEADER_ERROR_BOUND, format!("{:e}", result.error_bound)),
        (HEADER_KIND, kind.to_string()),
    ];
    for (name, value) in facts {
        // Numbers and fixed words: always valid header values.
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

/// Whether an `Accept` header asks for `application/octet-stream` (with a non-zero quality).
pub fn accepts_octet_stream(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/octet-stream")
            && !parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            })
    })
}

/// How an update body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateFormat {
    /// `application/json`: `{"values": [...]}` or a bare array of numbers.
    Json,
    /// `application/octet-stream`: little-endian `f32`s (or an `.npy` file, by its magic).
    Raw,
    /// `application/x-npy`: a NumPy `.npy` file.
    Npy,
}

impl UpdateFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            UpdateFormat::Json => "application/json",
            UpdateFormat::Raw => "application/octet-stream",
            UpdateFormat::Npy => "application/x-npy",
        }
    }
}

fn unsupported_media_type(message: String) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        message,
    )
}

/// The update format named by a `Content-Type` header (parameters such as `charset` ignored).
pub fn update_format(content_type: Option<&str>) -> Result<UpdateFormat, ApiError> {
    const SUPPORTED: &str = "application/json, application/octet-stream or application/x-npy";
    let Some(content_type) = content_type else {
        return Err(unsupported_media_type(format!(
            "a Content-Type is required: {SUPPORTED}"
        )));
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(UpdateFormat::Json),
        "application/octet-stream" => Ok(UpdateFormat::Raw),
        "application/x-npy" | "application/npy" => Ok(UpdateFormat::Npy),
        _ => Err(unsupported_media_type(format!(
            "Content-Type `{content_type}` is not supported for updates; use {SUPPORTED}"
        ))),
    }
}

fn bad_input(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_input", message)
}

/// Parses an update body by its `Content-Type` into the values to submit. Every value is
/// finite; NaN, infinities and numbers outside the `f32` range are refused.
pub fn parse_update(content_type: Option<&str>, body: &[u8]) -> Result<Vec<f32>, ApiError> {
    match update_format(content_type)? {
        UpdateFormat::Json => parse_json(body),
        UpdateFormat::Raw if body.starts_with(NPY_MAGIC) => parse_npy(body),
        UpdateFormat::Raw => parse_raw_f32(body),
        UpdateFormat::Npy => parse_npy(body),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonUpdate {
    values: Vec<f64>,
}

/// `{"values": [...]}` or a bare array of numbers.
pub fn parse_json(body: &[u8]) -> Result<Vec<f32>, ApiError> {
    let bare_array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let parsed = if bare_array {
        serde_json::from_slice::<Vec<f64>>(body)
    } else {
        serde_json::from_slice::<JsonUpdate>(body).map(|u| u.values)
    };
    let values =
        parsed.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))?;
    narrow(&values)
}

/// Little-endian `f32`s, 4 bytes each.
pub fn parse_raw_f32(body: &[u8]) -> Result<Vec<f32>, ApiError> {
    if !body.len().is_multiple_of(4) {
        return Err(bad_input(format!(
            "a raw float32 body must be a multiple of 4 bytes long; this one is {} bytes",
            body.len()
        )));
    }
    let values: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    check_finite(&values)?;
    Ok(values)
}

/// A NumPy `.npy` file (versions 1–3) of little-endian `float32` or `float64`, any shape,
/// flattened in C order.
pub fn parse_npy(body: &[u8]) -> Result<Vec<f32>, ApiError> {
    // Check the pre-header here, so that a declared header length can never make us (or
    // npyz) allocate more than the body holds.
    if !body.starts_with(NPY_MAGIC) {
        return Err(bad_input(
            "not an NPY file: the `\\x93NUMPY` magic is missing",
        ));
    }
    let (len_at, len_bytes) = match body.get(6) {
        Some(1) => (8, 2),
        Some(2) | Some(3) => (8, 4),
        Some(v) => {
            return Err(bad_input(format!(
                "NPY format version {v} is not supported (1, 2 or 3)"
            )))
        }
        None => return Err(bad_input("the NPY file is truncated")),
    };
    let header_len = match body.get(len_at..len_at + len_bytes) {
        Some(&[a, b]) => u16::from_le_bytes([a, b]) as usize,
        Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]) as usize,
        _ => return Err(bad_input("the NPY file is truncated")),
    };
    if header_len > MAX_NPY_HEADER_BYTES {
        return Err(bad_input(format!(
            "the NPY header is {header_len} bytes; at most {MAX_NPY_HEADER_BYTES} are accepted"
        )));
    }
    let header_end = len_at + len_bytes + header_len;
    let Some(header_text) = body.get(len_at + len_bytes..header_end) else {
        return Err(bad_input("the NPY header is truncated"));
    };
    if nesting_depth(header_text) > MAX_NPY_HEADER_NESTING {
        return Err(bad_input("the NPY header is nested too deeply"));
    }
    let mut reader = body;
    let header = NpyHeader::from_reader(&mut reader)
        .map_err(|e| bad_input(format!("the NPY header is invalid: {e}")))?;
    let data = reader;
    let dtype = header.dtype();
    let width = match &dtype {
        DType::Plain(ts)
            if ts.type_char() == TypeChar::Float
                && ts.endianness() == Endianness::Little
                && matches!(ts.size_field(), 4 | 8) =>
        {
            ts.size_field() as usize
        }
        other => {
            return Err(bad_input(format!(
                "NPY dtype {} is not supported; use float32 ('<f4') or float64 ('<f8')",
                other.descr()
            )))
        }
    };
    let shape = header.shape();
    // Fortran order lays the values out differently unless at most one axis is longer than 1.
    if header.order() == Order::Fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(bad_input(format!(
            "the NPY array of shape {shape:?} is in Fortran order; save a C-ordered array \
             (numpy.ascontiguousarray)"
        )));
    }
    let expected = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .and_then(|n| n.checked_mul(width as u64))
        .ok_or_else(|| bad_input(format!("the NPY shape {shape:?} is too large")))?;
    if expected != data.len() as u64 {
        return Err(bad_input(format!(
            "the NPY array of shape {shape:?} and dtype {} needs {expected} data bytes; the file has {}",
            dtype.descr(),
            data.len()
        )));
    }
    if width == 4 {
        let values: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        check_finite(&values)?;
        Ok(values)
    } else {
        let values: Vec<f64> = data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        narrow(&values)
    }
}

/// The deepest nesting of brackets in an NPY header's text.
fn nesting_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in text {
        match b {
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn check_finite(values: &[f32]) -> Result<(), ApiError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(bad_input(format!(
            "value {i} is {}; values must be finite",
            values[i]
        ))),
        None => Ok(()),
    }
}

/// `f64`s to `f32`s, refusing non-finite values and values outside the `f32` range.
fn narrow(values: &[f64]) -> Result<Vec<f32>, ApiError> {
    let mut out = Vec::with_capacity(values.len());
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() {
            return Err(bad_input(format!(
                "value {i} is {v}; values must be finite"
            )));
        }
        let narrowed = v as f32;
        if !narrowed.is_finite() {
            return Err(bad_input(format!(
                "value {i} ({v}) is outside the float32 range"
            )));
        }
        out.push(narrowed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use npyz::WriterBuilder;
    use proptest::prelude::*;

    /// An `.npy` file written by npyz.
    fn npy<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
        shape: &[u64],
        values: &[T],
        fortran: bool,
    ) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        {
            let order = if fortran { Order::Fortran } else { Order::C };
            let mut writer = npyz::WriteOptions::<T>::new()
                .default_dtype()
                .shape(shape)
                .order(order)
                .writer(&mut out)
                .begin_nd()
                .unwrap();
            writer.extend(values.iter().copied()).unwrap();
            writer.finish().unwrap();
        }
        out.into_inner()
    }

    fn err(r: Result<Vec<f32>, ApiError>) -> (u16, &'static str, String) {
        let e = r.unwrap_err();
        (e.status.as_u16(), e.code, e.message)
    }

    #[test]
    fn json_object_and_bare_array() {
        let body = br#"{"values": [1, -2.5, 3e2, 0]}"#;
        assert_eq!(
            parse_update(Some("application/json"), body).unwrap(),
            vec![1.0, -2.5, 300.0, 0.0]
        );
        let body = b"  [0.5, 1.5]";
        assert_eq!(
            parse_update(Some("application/json; charset=utf-8"), body).unwrap(),
            vec![0.5, 1.5]
        );
    }

    #[test]
    fn bad_json_is_bad_json() {
        for body in [
            &b"{"[..],
            b"{\"values\": [1, \"x\"]}",
            b"{\"vals\": []}",
            b"",
            b"[1,]",
            b"{\"values\":[1e999]}",
        ] {
            let (status, code, _) = err(parse_update(Some("application/json"), body));
            assert_eq!(
                (status, code),
                (400, "bad_json"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn json_values_outside_f32_are_refused() {
        let (status, code, message) = err(parse_update(
            Some("application/json"),
            b"{\"values\":[0, 1e39]}",
        ));
        assert_eq!((status, code), (400, "bad_input"));
        assert!(message.contains("value 1"), "{message}");
        // The largest f32 is fine, and so are tiny values (they round to zero).
        let body = format!("[{}, 1e-50]", f32::MAX);
        assert_eq!(parse_json(body.as_bytes()).unwrap(), vec![f32::MAX, 0.0]);
    }

    #[test]
    fn raw_f32_round_trip() {
        let values = [1.0f32, -0.0, f32::MIN_POSITIVE, f32::MAX, -123.456];
        let body: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let parsed = parse_update(Some("application/octet-stream"), &body).unwrap();
        assert_eq!(
            parsed.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            values.map(f32::to_bits)
        );
        assert_eq!(
            parse_update(Some("application/octet-stream"), b"").unwrap(),
            Vec::<f32>::new()
        );
    }

    #[test]
    fn raw_length_must_be_a_multiple_of_four() {
        let (status, code, message) =
            err(parse_update(Some("application/octet-stream"), &[0u8; 7]));
        assert_eq!((status, code), (400, "bad_input"));
        assert!(
            message.contains("multiple of 4") && message.contains("7 bytes"),
            "{message}"
        );
    }

    #[test]
    fn raw_non_finite_is_refused() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let body: Vec<u8> = [1.0f32, bad].iter().flat_map(|v| v.to_le_bytes()).collect();
            let (status, code, message) =
                err(parse_update(Some("application/octet-stream"), &body));
            assert_eq!((status, code), (400, "bad_input"));
            assert!(message.contains("value 1"), "{message}");
        }
    }

    #[test]
    fn npy_f32_round_trip_any_shape() {
        let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.25 - 3.0).collect();
        for shape in [&[24u64][..], &[2, 3, 4], &[4, 6], &[1, 24, 1]] {
            let body = npy(shape, &values, false);
            assert_eq!(
                parse_update(Some("application/x-npy"), &body).unwrap(),
                values,
                "{shape:?}"
            );
            // The magic is recognised under octet-stream too.
            assert_eq!(
                parse_update(Some("application/octet-stream"), &body).unwrap(),
                values
            );
        }
        // A 0-d array holds one value.
        assert_eq!(
            parse_npy(&npy::<f32>(&[], &[7.5], false)).unwrap(),
            vec![7.5]
        );
        // An empty array holds none.
        assert_eq!(
            parse_npy(&npy::<f32>(&[0, 3], &[], false)).unwrap(),
            Vec::<f32>::new()
        );
    }

    #[test]
    fn npy_f64_is_converted() {
        let values: Vec<f64> = vec![0.1, -2.0, 1e30, 3.5];
        let body = npy(&[2, 2], &values, false);
        let parsed = parse_update(Some("application/x-npy"), &body).unwrap();
        assert_eq!(parsed, values.iter().map(|&v| v as f32).collect::<Vec<_>>());
        let (status, code, message) = err(parse_npy(&npy(&[2], &[1.0f64, 1e300], false)));
        assert_eq!((status, code), (400, "bad_input"));
        assert!(message.contains("float32 range"), "{message}");
        let (_, code, _) = err(parse_npy(&npy(&[2], &[1.0f64, f64::NAN], false)));
        assert_eq!(code, "bad_input");
    }

    #[test]
    fn npy_other_dtypes_are_named() {
        for (body, dtype) in [
            (npy(&[3], &[1i32, 2, 3], false), "<i4"),
            (npy(&[3], &[1u8, 2, 3], false), "|u1"),
            (npy(&[3], &[1i64, 2, 3], false), "<i8"),
        ] {
            let (status, code, message) = err(parse_update(Some("application/x-npy"), &body));
            assert_eq!((status, code), (400, "bad_input"));
            assert!(message.contains(dtype), "{message}");
        }
        // Big-endian float32, written by hand.
        let body = npy_by_hand(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
            &1.0f32.to_be_bytes(),
        );
        let (_, _, message) = err(parse_npy(&body));
        assert!(message.contains(">f4"), "{message}");
    }

    #[test]
    fn npy_fortran_order_is_refused_unless_it_is_c_order_too() {
        let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let (status, code, message) = err(parse_npy(&npy(&[2, 3], &values, true)));
        assert_eq!((status, code), (400, "bad_input"));
        assert!(message.contains("Fortran"), "{message}");
        // One non-trivial axis: both orders are the same layout.
        assert_eq!(parse_npy(&npy(&[6, 1], &values, true)).unwrap(), values);
    }

    fn npy_by_hand(header: &str, data: &[u8]) -> Vec<u8> {
        let mut text = header.to_string();
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        let mut out = NPY_MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn npy_data_length_must_match_the_shape() {
        let mut body = npy(&[4], &[1.0f32, 2.0, 3.0, 4.0], false);
        body.pop();
        let (_, code, message) = err(parse_npy(&body));
        assert_eq!(code, "bad_input");
        assert!(message.contains("needs 16 data bytes"), "{message}");
        body.extend_from_slice(&[0; 5]);
        assert_eq!(code_of(parse_npy(&body)), "bad_input");
        // A shape whose size overflows.
        let huge = npy_by_hand(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }",
            &[],
        );
        assert_eq!(code_of(parse_npy(&huge)), "bad_input");
    }

    fn code_of(r: Result<Vec<f32>, ApiError>) -> &'static str {
        err(r).1
    }

    #[test]
    fn hostile_npy_headers_are_refused_cheaply() {
        // A version-2 header claiming 4 GiB.
        let mut body = NPY_MAGIC.to_vec();
        body.extend_from_slice(&[2, 0]);
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(code_of(parse_npy(&body)), "bad_input");
        // A header claiming more than the body holds.
        let mut body = NPY_MAGIC.to_vec();
        body.extend_from_slice(&[1, 0, 200, 0]);
        body.extend_from_slice(b"{'descr': '<f4'");
        assert_eq!(code_of(parse_npy(&body)), "bad_input");
        // Deep nesting.
        let deep = format!(
            "{{'descr': {}'<f4'{}, 'fortran_order': False, 'shape': (1,), }}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert_eq!(
            code_of(parse_npy(&npy_by_hand(&deep, &[0; 4]))),
            "bad_input"
        );
        // Unknown versions, truncation, garbage.
        for body in [
            &b"\x93NUMPY\x09\x00\x10\x00"[..],
            b"\x93NUMPY",
            b"\x93NUMPY\x01",
            b"\x93NUMPY\x01\x00\x05",
        ] {
            assert_eq!(code_of(parse_npy(body)), "bad_input");
        }
        assert_eq!(
            code_of(parse_npy(&npy_by_hand("not a dict", &[]))),
            "bad_input"
        );
        assert_eq!(code_of(parse_npy(b"plain bytes")), "bad_input");
    }

    #[test]
    fn content_types() {
        assert_eq!(err(parse_update(None, b"[1]")).1, "unsupported_media_type");
        let (status, code_, message) = err(parse_update(Some("text/plain"), b"[1]"));
        assert_eq!((status, code_), (415, "unsupported_media_type"));
        assert!(message.contains("text/plain"), "{message}");
        assert_eq!(
            update_format(Some("Application/JSON ; charset=UTF-8")).unwrap(),
            UpdateFormat::Json
        );
        assert_eq!(
            update_format(Some("application/npy")).unwrap(),
            UpdateFormat::Npy
        );
        for f in [UpdateFormat::Json, UpdateFormat::Raw, UpdateFormat::Npy] {
            assert_eq!(update_format(Some(f.content_type())).unwrap(), f);
        }
    }

    #[test]
    fn accept_header() {
        assert!(!accepts_octet_stream(None));
        assert!(!accepts_octet_stream(Some("application/json")));
        assert!(!accepts_octet_stream(Some("*/*")));
        assert!(accepts_octet_stream(Some("application/octet-stream")));
        assert!(accepts_octet_stream(Some(
            "application/json;q=0.5, Application/Octet-Stream"
        )));
        assert!(!accepts_octet_stream(Some("application/octet-stream; q=0")));
        assert!(accepts_octet_stream(Some("application/octet-stream;q=0.1")));
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
                post(
                    |headers: HeaderMap, body: Result<Bytes, BytesRejection>| async move {
                        let body = body.map_err(|e| bytes_rejection(e, LIMIT))?;
                        let ct = headers
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok());
                        parse_update(ct, &body).map(Json)
                    },
                ),
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
                "unsupported_media_type",
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

    proptest! {
        #[test]
        fn random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), which in 0usize..4) {
            let ct = [None, Some("application/json"), Some("application/octet-stream"), Some("application/x-npy")][which];
            let _ = parse_update(ct, &body);
        }

        #[test]
        fn random_bodies_after_the_npy_magic_never_panic(
            version in 0u8..5,
            header in "\\{'descr': '[<>|]?[fiu][1248]', 'fortran_order': (True|False), 'shape': \\(([0-9]{1,12}, ){0,3}\\), \\}",
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut body = NPY_MAGIC.to_vec();
            body.extend_from_slice(&[version, 0]);
            if version == 1 {
                body.extend_from_slice(&(header.len() as u16).to_le_bytes());
            } else {
                body.extend_from_slice(&(header.len() as u32).to_le_bytes());
            }
            body.extend_from_slice(header.as_bytes());
            body.extend_from_slice(&tail);
            let _ = parse_update(Some("application/x-npy"), &body);
        }

        #[test]
        fn raw_round_trip(values in proptest::collection::vec(-1e30f32..1e30, 0..64)) {
            let body: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            prop_assert_eq!(parse_update(Some("application/octet-stream"), &body).unwrap(), values);
        }

        #[test]
        fn json_round_trip(values in proptest::collection::vec(-1e30f32..1e30, 0..64)) {
            let body = serde_json::to_vec(&json!({ "values": values })).unwrap();
            prop_assert_eq!(parse_update(Some("application/json"), &body).unwrap(), values);
        }

        #[test]
        fn npy_round_trip(values in proptest::collection::vec(-1e30f32..1e30, 1..64), f64_ in any::<bool>()) {
            let body = if f64_ {
                npy(&[values.len() as u64], &values.iter().map(|&v| v as f64).collect::<Vec<_>>(), false)
            } else {
                npy(&[values.len() as u64], &values, false)
            };
            prop_assert_eq!(parse_update(Some("application/x-npy"), &body).unwrap(), values);
        }
    }
}
