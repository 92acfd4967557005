//! Series routes: start a multi-round series on this node (its coordinator), list them, and
//! show one with each round's phase.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::sessions::json_rejection;
use super::{ApiError, ApiState};
use crate::session::series::SeriesSpec;
use crate::session::spec::valid_session_id;
use crate::session::SessionError;

/// The series routes, all under `/v1` (the caller adds the token middleware).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/series", post(create).get(list))
        .route("/v1/series/{id}", get(show))
}

async fn create(
    State(state): State<ApiState>,
    body: Result<Json<SeriesSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(spec) = body.map_err(|e| json_rejection(e, state.max_body_bytes))?;
    let info = state.series.create(spec).await?;
    Ok(super::created(&info, &format!("/v1/series/{}", info.id)))
}

async fn list(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({ "series": state.series.list().await? })))
}

async fn show(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    if !valid_session_id(&id) {
        return Err(SessionError::UnknownSession(format!("{id} (no such series)")).into());
    }
    let info = state.series.get(&id).await?;
    Ok(axum::response::IntoResponse::into_response(Json(info)))
}
