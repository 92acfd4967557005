//! The API's OpenAPI 3.1 document, served by `GET /v1/openapi.json`: derived with utoipa from
//! the handlers' `#[utoipa::path]` attributes and the `ToSchema` of the types they read and
//! write, built once.
//!
//! Types outside the API (the crypto layer's [`Profile`], a peer as the network reports it)
//! are described here, so that those layers stay free of API concerns.

use std::borrow::Cow;
use std::sync::OnceLock;

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::{inference, series, sessions, ApiError};
use crate::crypto::Profile;

/// The document: every route of [`super::routes`], each with an `operationId`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fhenode local API",
        description = "The local HTTP API of an fhenode node: secure-aggregation sessions and \
            series, and encrypted inference. When `api.token` is set, every `/v1/*` route needs \
            `Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\", \"message\"}}` \
            (`ApiError`) with the matching status."
    ),
    paths(
        super::healthz,
        super::readyz,
        super::metrics,
        super::status,
        super::peers,
        super::document,
        sessions::create,
        sessions::list,
        sessions::show,
        sessions::events,
        sessions::submit,
        sessions::result,
        series::create,
        series::list,
        series::show,
        inference::create_context,
        inference::list_contexts,
        inference::show_context,
        inference::delete_context,
        inference::add_model,
        inference::list_models,
        inference::show_model,
        inference::model_spec,
        inference::encrypt,
        inference::infer,
        inference::decrypt,
        inference::legacy_inference,
    ),
    components(schemas(ApiError)),
    modifiers(&BearerToken),
    tags(
        (name = "node", description = "Health, readiness, metrics, status and peers."),
        (name = "sessions", description = "Secure-aggregation sessions: create one, submit this node's update, read the result."),
        (name = "series", description = "Multi-round series of sessions with the same committee and participants."),
        (name = "inference", description = "Encrypted inference: contexts, models, encrypt → infer → decrypt."),
    )
)]
pub struct ApiDoc;

/// The document as JSON, built on first use.
pub fn openapi_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serialises")
    })
}

/// Every `/v1/*` operation needs the bearer token (when the node has one): its security
/// requirement and its `401`, added where the router adds the token check.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The node's `api.token`, when it has one."))
                    .build(),
            ),
        );
        let unauthorized = ResponseBuilder::new()
            .description("`unauthorized`: the `Authorization: Bearer` token is missing or wrong.")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ApiError::name())))
                    .build(),
            )
            .build();
        for (path, item) in doc.paths.paths.iter_mut() {
            if !super::needs_token(path) {
                continue;
            }
            for operation in operations_mut(item) {
                operation.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                operation
                    .responses
                    .responses
                    .entry("401".to_string())
                    .or_insert_with(|| unauthorized.clone().into());
            }
        }
    }
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// A crypto profile, by name.
impl PartialSchema for Profile {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Profile::ALL.iter().map(|p| p.name())))
            .description(Some(
                "A crypto profile: `secure` (ring dimension 4096, the default) or `fast` \
                 (2048, a smaller margin; docs/CRYPTO.md).",
            ))
            .into()
    }
}

impl ToSchema for Profile {
    fn name() -> Cow<'static, str> {
        "Profile".into()
    }
}

/// A connected peer, as `crate::net::PeerInfo` serialises. A schema only.
#[derive(ToSchema)]
#[schema(description = "A connected peer.")]
#[allow(dead_code)]
pub struct Peer {
    peer_id: String,
    addresses: Vec<String>,
    /// The protocols it speaks (empty until identify has run).
    protocols: Vec<String>,
    agent_version: Option<String>,
    connections: u32,
}

/// A binary body's schema: a type whose schema says what the bytes hold (used `inline`, beside
/// the media type that names them).
macro_rules! binary_body {
    ($name:ident, $media_type:literal, $description:expr) => {
        #[doc = $description]
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
                    .content_media_type($media_type)
                    .description(Some($description))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use binary_body;

binary_body!(
    SafetensorsFile,
    "application/safetensors",
    "A safetensors file. An update: named tensors of any float or integer dtype, matched to the \
     session's `shapes` by name. A result: float64 tensors named and shaped as the session's, \
     its facts (`kind`, `contributors`, `clipped`, `error_bound`, `total_weight`, `session`) in \
     the `__metadata__`."
);
binary_body!(
    NpzFile,
    "application/x-npz",
    "A NumPy `.npz` archive of named arrays, matched to the session's `shapes` by name (also \
     read as `application/npz` or `application/zip`)."
);
binary_body!(
    NpyFile,
    "application/x-npy",
    "A NumPy `.npy` file: one array of any shape, flattened in C order (also read as \
     `application/npy`)."
);
binary_body!(
    RawF32,
    "application/octet-stream",
    "Little-endian float32 values, 4 bytes each (an `.npy` or `.npz` file sent as \
     `application/octet-stream` is recognised by its magic)."
);
binary_body!(
    RawF64,
    "application/octet-stream",
    "The values as little-endian float64, 8 bytes each; the result's facts are in the \
     `x-fhenode-*` headers."
);

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::{json, Value};

    use super::*;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    pub(crate) fn doc() -> Value {
        serde_json::from_str(openapi_json()).expect("the document is JSON")
    }

    /// `(METHOD, path)` → operation of every operation in the document.
    fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
        let mut found = BTreeMap::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if let Some(operation) = item.get(method) {
                    found.insert((method.to_uppercase(), path.clone()), operation.clone());
                }
            }
        }
        found
    }

    /// A named component schema, with the properties and required names it declares.
    pub(crate) fn component<'a>(doc: &'a Value, name: &str) -> &'a Value {
        let schema = &doc["components"]["schemas"][name];
        assert!(schema.is_object(), "no component schema `{name}`");
        schema
    }

    /// Every field `value` has is a property of schema `name`, and every property the schema
    /// requires is there.
    pub(crate) fn assert_fits(name: &str, value: &Value) {
        let doc = doc();
        let schema = component(&doc, name);
        let properties = schema["properties"].as_object().expect("an object schema");
        let fields = value.as_object().expect("an object");
        for field in fields.keys() {
            assert!(
                properties.contains_key(field),
                "`{field}` is not in the schema of {name}"
            );
        }
        for required in schema["required"].as_array().into_iter().flatten() {
            let required = required.as_str().unwrap();
            assert!(
                fields.contains_key(required),
                "{name} requires `{required}`, which {value} lacks"
            );
        }
    }

    #[test]
    fn the_document_is_openapi_3() {
        let doc = doc();
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "{}",
            doc["openapi"]
        );
        assert_eq!(doc["info"]["title"], "fhenode local API");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(!doc["paths"].as_object().unwrap().is_empty());
    }

    /// The router serves exactly the routes the document describes, each with a unique
    /// snake_case `operationId`.
    #[test]
    fn every_route_is_documented_once() {
        let served: BTreeSet<(String, String)> = crate::api::routes()
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(
            served.len(),
            crate::api::routes().len(),
            "a route is listed twice"
        );
        let doc = doc();
        let operations = operations(&doc);
        let documented: BTreeSet<(String, String)> = operations.keys().cloned().collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
        );
        let mut ids = BTreeMap::new();
        for ((method, path), operation) in &operations {
            let id = operation["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(
                !id.is_empty()
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{method} {path}: operationId `{id}` is not snake_case"
            );
            if let Some(other) = ids.insert(id.to_string(), (method, path)) {
                panic!("operationId `{id}` is used by {other:?} and {method} {path}");
            }
            assert!(
                operation["responses"]
                    .as_object()
                    .is_some_and(|r| r.keys().any(|code| code.starts_with('2'))),
                "{method} {path} documents no success"
            );
        }
    }

    /// The router built from the same list (a method given twice for a path would panic).
    #[test]
    fn the_route_table_builds() {
        let _ = crate::api::table(crate::api::routes());
    }

    /// Every `$ref` names a component, and every `/v1/*` operation needs the token.
    #[test]
    fn references_resolve_and_v1_needs_the_token() {
        fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        out.push(r);
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = doc();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(!found.is_empty());
        for r in found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {r}"));
            component(&doc, name);
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        for ((method, path), operation) in operations(&doc) {
            let secured = operation.get("security").is_some();
            assert_eq!(secured, path.starts_with("/v1/"), "{method} {path}");
            assert_eq!(
                operation["responses"].get("401").is_some(),
                secured,
                "{method} {path}"
            );
        }
    }

    /// What the brief of each route promises: its parameters, body types and answers.
    #[test]
    fn routes_have_their_parameters_and_media_types() {
        let doc = doc();
        let ops = operations(&doc);
        let op = |method: &str, path: &str| ops[&(method.to_string(), path.to_string())].clone();
        let params = |operation: &Value| -> BTreeSet<(String, String)> {
            operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        p["in"].as_str().unwrap().to_string(),
                        p["name"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        };
        let set = |items: &[(&str, &str)]| -> BTreeSet<(String, String)> {
            items
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let media = |content: &Value| -> BTreeSet<String> {
            content
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.to_string())
                .collect()
        };

        let show = op("GET", "/v1/sessions/{id}");
        assert_eq!(
            params(&show),
            set(&[("path", "id"), ("query", "wait"), ("query", "seen")])
        );
        let update = op("POST", "/v1/sessions/{id}/update");
        assert_eq!(params(&update), set(&[("path", "id"), ("query", "weight")]));
        assert_eq!(
            media(&update["requestBody"]["content"]),
            BTreeSet::from(
                [
                    "application/json",
                    "application/safetensors",
                    "application/x-npz",
                    "application/x-npy",
                    "application/octet-stream",
                ]
                .map(String::from)
            )
        );
        let result = op("GET", "/v1/sessions/{id}/result");
        assert_eq!(
            media(&result["responses"]["200"]["content"]),
            BTreeSet::from(
                [
                    "application/json",
                    "application/safetensors",
                    "application/octet-stream",
                ]
                .map(String::from)
            )
        );
        assert_eq!(
            result["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/SessionResult"
        );
        assert_eq!(
            params(&op("POST", "/v1/models")),
            set(&[
                ("query", "name"),
                ("query", "scheme"),
                ("query", "input_bound"),
                ("query", "replace")
            ])
        );
        assert_eq!(
            params(&op("GET", "/v1/models/{name}/spec")),
            set(&[("path", "name"), ("query", "peer")])
        );
        assert_eq!(
            op("POST", "/v1/series")["requestBody"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/SeriesSpec"
        );
        assert_eq!(
            op("POST", "/v1/sessions")["responses"]["201"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/SessionInfo"
        );
        // Every error answer is an ApiError.
        for ((method, path), operation) in &ops {
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    let expected = match (path.as_str(), status.as_str()) {
                        ("/readyz", "503") => "#/components/schemas/Readiness",
                        _ => "#/components/schemas/ApiError",
                    };
                    assert_eq!(schema, expected, "{method} {path} {status}");
                }
            }
        }
    }

    #[test]
    fn schemas_describe_what_is_written() {
        use axum::response::IntoResponse;

        let doc = doc();
        // The error shape: `{"error": {"code", "message"}}`, named ApiError.
        let error = component(&doc, "ApiError");
        assert_eq!(error["required"], json!(["error"]));
        assert_eq!(
            error["properties"]["error"]["required"],
            json!(["code", "message"])
        );
        let response = ApiError::unavailable("x").into_response();
        assert_eq!(response.status(), 503);
        let written = serde_json::to_value(super::super::error::ErrorBody {
            error: super::super::error::ErrorDetail {
                code: "unavailable",
                message: "x".into(),
            },
        })
        .unwrap();
        assert_fits("ApiError", &written);

        // Profiles by name, from the crypto layer's list.
        assert_eq!(
            component(&doc, "Profile")["enum"],
            json!(["secure", "fast"])
        );
        // A peer as the network layer serialises it.
        let peer = crate::net::PeerInfo {
            peer_id: "p".into(),
            addresses: vec![],
            protocols: vec![],
            agent_version: Some("a".into()),
            connections: 1,
        };
        assert_fits("Peer", &serde_json::to_value(peer).unwrap());
        // A series spec: the session spec's fields and `rounds`.
        let spec = crate::session::series::SeriesSpec {
            id: Some("s".into()),
            rounds: 2,
            session: crate::session::SessionSpec {
                id: None,
                length: Some(3),
                shapes: Some(BTreeMap::from([("w".to_string(), vec![3])])),
                profile: Some(Profile::Fast),
                threshold: Some(1),
                min_participants: Some(1),
                clip: Some(1.0),
                frac_bits: Some(20),
                max_weight: Some(4),
                deadline_secs: Some(60),
                ..Default::default()
            },
        };
        let written = serde_json::to_value(&spec).unwrap();
        assert_fits("SeriesSpec", &written);
        assert_fits("SessionSpec", &serde_json::to_value(&spec.session).unwrap());
        let series = component(&doc, "SeriesSpec");
        assert_eq!(series["additionalProperties"], json!(false));
        assert!(series["required"]
            .as_array()
            .unwrap()
            .contains(&json!("rounds")));
    }
}
