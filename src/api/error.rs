//! The API's errors: [`ApiError`] (a status, a stable code and a message, answered as
//! `{"error": {"code", "message"}}`) and the one translation of axum's body rejections into
//! it, which every route that reads a body uses.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// An API error: a status, a stable machine-readable code and a message for humans.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Sent as `Retry-After` (a rate limit's refusal).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

/// The body of every error answer (the OpenAPI document's `ApiError`).
#[derive(Serialize, ToSchema)]
#[schema(description = "An error answer: a stable code and a message, with the matching status.")]
pub(super) struct ErrorBody {
    #[schema(inline)]
    pub(super) error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub(super) struct ErrorDetail {
    /// Stable and machine-readable, e.g. `not_found`, `unauthorized`, `bad_json`,
    /// `unknown_session`, `unavailable`.
    pub(super) code: &'static str,
    /// For humans.
    pub(super) message: String,
}

/// An error answer's schema is its body's: `{"error": {"code", "message"}}`.
impl utoipa::PartialSchema for ApiError {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        ErrorBody::schema()
    }
}

impl ToSchema for ApiError {
    fn name() -> std::borrow::Cow<'static, str> {
        "ApiError".into()
    }
}

/// An error for a request whose body or path could not be read, in our JSON shape.
pub(super) fn body_error(status: StatusCode, text: String, max_body_bytes: usize) -> ApiError {
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

pub(super) fn json_rejection(rejection: JsonRejection, max_body_bytes: usize) -> ApiError {
    match &rejection {
        JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_json", rejection.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected `Content-Type: application/json`",
        ),
        // A body that could not be read (too large, cut off): its own status and words.
        _ => body_error(rejection.status(), rejection.body_text(), max_body_bytes),
    }
}
