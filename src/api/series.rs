//! Series routes: start a multi-round series on this node (its coordinator), list them, and
//! show one with each round's phase.

use std::borrow::Cow;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use super::error::json_rejection;
use super::sessions::path_id;
use super::{route, ApiError, ApiState, Route};
use crate::session::series::{SeriesInfo, SeriesSpec, MAX_ROUNDS, MAX_SERIES_ID_LEN};
use crate::session::{SessionError, SessionSpec};

/// The series routes, all under `/v1` (the caller adds the token middleware).
pub fn routes() -> Vec<Route> {
    vec![
        route(Method::POST, "/v1/series", create),
        route(Method::GET, "/v1/series", list),
        route(Method::GET, "/v1/series/{id}", show),
    ]
}

/// A series spec is a session spec's fields with `rounds`, its `id` naming the series (its
/// own `Deserialize` reads it so): the session spec's schema, so amended.
impl PartialSchema for SeriesSpec {
    fn schema() -> RefOr<Schema> {
        let RefOr::T(Schema::Object(mut object)) = SessionSpec::schema() else {
            unreachable!("a session spec is an object");
        };
        object.description = Some(
            "A series as a user asks for it (`POST /v1/series`): a session spec's fields, every \
             round's, with `rounds`; `id` names the series, and its rounds are sessions \
             `{id}-1` … `{id}-{rounds}`."
                .into(),
        );
        let id = ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .max_length(Some(MAX_SERIES_ID_LEN))
            .description(Some("The series id; generated when absent."));
        object.properties.insert("id".into(), id.into());
        let rounds = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(MAX_ROUNDS))
            .description(Some("Rounds to run: one session each."));
        object.properties.insert("rounds".into(), rounds.into());
        object.required.push("rounds".into());
        RefOr::T(Schema::Object(object))
    }
}

impl ToSchema for SeriesSpec {
    fn name() -> Cow<'static, str> {
        "SeriesSpec".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <SessionSpec as ToSchema>::schemas(schemas);
    }
}

/// Start a series of sessions with this node as their coordinator; round 1 opens at once.
#[utoipa::path(
    post,
    path = "/v1/series",
    operation_id = "create_series",
    tag = "series",
    request_body = SeriesSpec,
    responses(
        (status = 201, description = "Created; `Location` names the series.", body = SeriesInfo,
            headers(("location" = String, description = "`/v1/series/{id}`"))),
        (status = 400, description = "`bad_json` (malformed JSON or an unknown field) or `invalid_spec` (the message names the field).", body = ApiError),
        (status = 409, description = "`duplicate`: a series or session with this id exists.", body = ApiError),
        (status = 413, description = "`payload_too_large`: the body exceeds `api.max_body_bytes`.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body must be `application/json`.", body = ApiError),
        (status = 429, description = "`rate_limited`: over `api.sessions_per_minute`; `Retry-After` says when to try again.", body = ApiError,
            headers(("retry-after" = u64, description = "Seconds to wait."))),
        (status = 503, description = "`unavailable`: the series or aggregation actor is not running.", body = ApiError),
    )
)]
async fn create(
    State(state): State<ApiState>,
    body: Result<Json<SeriesSpec>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.creations.take()?;
    let Json(spec) = body.map_err(|e| json_rejection(e, state.max_body_bytes))?;
    let info = state.series.create(spec).await?;
    Ok(super::created(&info, &format!("/v1/series/{}", info.id)))
}

/// `GET /v1/series`
#[derive(Serialize, ToSchema)]
struct SeriesList {
    series: Vec<SeriesInfo>,
}

/// The series this node coordinates.
#[utoipa::path(
    get,
    path = "/v1/series",
    operation_id = "list_series",
    tag = "series",
    responses(
        (status = 200, description = "The series.", body = SeriesList),
        (status = 503, description = "`unavailable`: the series actor is not running.", body = ApiError),
    )
)]
async fn list(State(state): State<ApiState>) -> Result<Json<SeriesList>, ApiError> {
    Ok(Json(SeriesList {
        series: state.series.list().await?,
    }))
}

/// One series (on its coordinator's node), with each opened round's phase.
#[utoipa::path(
    get,
    path = "/v1/series/{id}",
    operation_id = "get_series",
    tag = "series",
    params(("id" = String, Path, description = "The series id.")),
    responses(
        (status = 200, description = "The series.", body = SeriesInfo),
        (status = 404, description = "`unknown_session`: no such series on this node.", body = ApiError),
        (status = 503, description = "`unavailable`: the series actor is not running.", body = ApiError),
    )
)]
async fn show(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(path, |id| {
        SessionError::UnknownSession(format!("{id} (no such series)"))
    })?;
    let info = state.series.get(&id).await?;
    Ok(axum::response::IntoResponse::into_response(Json(info)))
}
