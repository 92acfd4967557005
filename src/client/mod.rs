//! A small client for a node's local HTTP API, used by the `fhenode session`, `fhenode model`
//! and `fhenode infer` commands.

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::api::inference::{
    CreateContextRequest, DecryptRequest, EncryptRequest, EncryptResponse, InferRequest,
    InferResponse, LegacyInferenceResponse,
};
use crate::api::sessions::{
    HEADER_CLIPPED, HEADER_CONTRIBUTORS, HEADER_ERROR_BOUND, HEADER_KIND, HEADER_TOTAL_WEIGHT,
};
use crate::inference::{ContextInfo, Decrypted, ModelInfo, ModelSpec};
use crate::session::series::{SeriesInfo, SeriesSpec};
use crate::session::{Phase, SessionInfo, SessionResult, SessionSpec, SubmitReceipt};

pub use crate::api::sessions::UpdateFormat;

pub mod progress;

/// Pieces an update body is streamed in, for progress reports.
pub const UPLOAD_PIECE_BYTES: usize = 1 << 20;

/// Where the API listens unless configured otherwise.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8470";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{url}` is not a usable API URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the API token cannot be sent in an HTTP header")]
    InvalidToken,
    #[error("cannot reach the node's API at {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The API answered with an error (`{"error":{"code","message"}}`).
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    Unexpected { url: String, reason: String },
}

/// A session result as raw little-endian `f64` bytes with its facts.
#[derive(Clone, Debug, PartialEq)]
pub struct RawResult {
    /// `values.len() * 8` bytes of little-endian `f64`.
    pub bytes: Vec<u8>,
    pub contributors: u32,
    pub clipped: u64,
    pub error_bound: f64,
    /// `mean`, `sum` or `weighted_mean`.
    pub kind: String,
    /// A weighted mean's Σ wᵢ.
    pub total_weight: Option<f64>,
}

impl RawResult {
    pub fn values(&self) -> Vec<f64> {
        self.bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Deserialize)]
struct SessionList {
    sessions: Vec<SessionInfo>,
}

#[derive(Deserialize)]
struct ContextList {
    contexts: Vec<ContextInfo>,
}

#[derive(Deserialize)]
struct ModelList {
    models: Vec<ModelInfo>,
}

/// A client for one node's API.
#[derive(Clone, Debug)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    authorization: Option<String>,
}

impl ApiClient {
    /// `base` is the API's root, e.g. `http://127.0.0.1:8470` (`http://` is assumed when no
    /// scheme is given). `token` is sent as `Authorization: Bearer <token>`.
    pub fn new(base: &str, token: Option<&str>) -> Result<Self, ClientError> {
        let with_scheme = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: base.to_string(),
            reason,
        };
        let base_url = Url::parse(&with_scheme).map_err(|e| invalid(e.to_string()))?;
        if base_url.scheme() != "http" {
            return Err(invalid(
                "only http:// is supported (the API is local to the node)".into(),
            ));
        }
        if base_url.cannot_be_a_base()
            || base_url.query().is_some()
            || base_url.fragment().is_some()
            || !base_url.username().is_empty()
            || base_url.password().is_some()
        {
            return Err(invalid("expected http://HOST:PORT[/PATH]".into()));
        }
        let authorization = match token {
            Some(t) if t.chars().any(|c| c.is_control()) => return Err(ClientError::InvalidToken),
            Some(t) => Some(format!("Bearer {t}")),
            None => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Transport {
                url: base.to_string(),
                source: e,
            })?;
        Ok(ApiClient {
            http,
            base: base_url,
            authorization,
        })
    }

    /// The API's root URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `POST /v1/sessions`
    pub async fn create_session(&self, spec: &SessionSpec) -> Result<SessionInfo, ClientError> {
        let url = self.url(&["v1", "sessions"])?;
        let request = self.request(Method::POST, &url).json(spec);
        self.send_json(request, &url).await
    }

    /// `GET /v1/sessions`
    pub async fn list_sessions(&self) -> Result<Vec<SessionInfo>, ClientError> {
        let url = self.url(&["v1", "sessions"])?;
        let list: SessionList = self
            .send_json(self.request(Method::GET, &url), &url)
            .await?;
        Ok(list.sessions)
    }

    /// `GET /v1/sessions/{id}`
    pub async fn session(&self, id: &str) -> Result<SessionInfo, ClientError> {
        let url = self.url(&["v1", "sessions", id])?;
        self.send_json(self.request(Method::GET, &url), &url).await
    }

    /// `GET /v1/sessions/{id}?wait=SECS&seen=PHASE`: the session once it is in another phase
    /// than `seen` (at once if it already is), or after `wait_secs` (the node caps a wait at
    /// 60 s).
    pub async fn session_after_change(
        &self,
        id: &str,
        seen: Phase,
        wait_secs: u64,
    ) -> Result<SessionInfo, ClientError> {
        let mut url = self.url(&["v1", "sessions", id])?;
        url.query_pairs_mut()
            .append_pair("wait", &wait_secs.to_string())
            .append_pair("seen", seen.name());
        self.send_json(self.request(Method::GET, &url), &url).await
    }

    /// `POST /v1/sessions/{id}/update`: `body` encoded as `format` says, with the update's
    /// weight for a weighted mean (sent as `?weight=`).
    pub async fn submit_update(
        &self,
        id: &str,
        format: UpdateFormat,
        body: Vec<u8>,
        weight: Option<f64>,
    ) -> Result<SubmitReceipt, ClientError> {
        self.submit_update_reporting(id, format, body, weight, |_| {})
            .await
    }

    /// [`ApiClient::submit_update`], calling `sent` with the bytes handed to the connection so
    /// far as the body goes out (in pieces of [`UPLOAD_PIECE_BYTES`]).
    pub async fn submit_update_reporting(
        &self,
        id: &str,
        format: UpdateFormat,
        body: Vec<u8>,
        weight: Option<f64>,
        sent: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<SubmitReceipt, ClientError> {
        let mut url = self.url(&["v1", "sessions", id, "update"])?;
        if let Some(weight) = weight {
            url.query_pairs_mut()
                .append_pair("weight", &weight.to_string());
        }
        let body = bytes::Bytes::from(body);
        let len = body.len();
        let pieces = (0..len).step_by(UPLOAD_PIECE_BYTES).map(move |at| {
            let end = (at + UPLOAD_PIECE_BYTES).min(len);
            sent(end as u64);
            Ok::<_, std::io::Error>(body.slice(at..end))
        });
        let request = self
            .request(Method::POST, &url)
            .header(CONTENT_TYPE, format.media_type())
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)));
        self.send_json(request, &url).await
    }

    /// `POST /v1/sessions/{id}/update` with values as raw little-endian `f32`.
    pub async fn submit_values(
        &self,
        id: &str,
        values: &[f32],
    ) -> Result<SubmitReceipt, ClientError> {
        let body = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.submit_update(id, UpdateFormat::Raw, body, None).await
    }

    /// `GET /v1/sessions/{id}/result` as JSON.
    pub async fn result(&self, id: &str) -> Result<SessionResult, ClientError> {
        let url = self.url(&["v1", "sessions", id, "result"])?;
        let request = self
            .request(Method::GET, &url)
            .header(ACCEPT, "application/json");
        self.send_json(request, &url).await
    }

    /// `POST /v1/series`: a multi-round series with this node as its coordinator.
    pub async fn create_series(&self, spec: &SeriesSpec) -> Result<SeriesInfo, ClientError> {
        let url = self.url(&["v1", "series"])?;
        self.send_json(self.request(Method::POST, &url).json(spec), &url)
            .await
    }

    /// `GET /v1/series/{id}`: the series with each opened round's phase.
    pub async fn series(&self, id: &str) -> Result<SeriesInfo, ClientError> {
        let url = self.url(&["v1", "series", id])?;
        self.send_json(self.request(Method::GET, &url), &url).await
    }

    /// `GET /v1/sessions/{id}/result` as the node's JSON, which holds the session's named
    /// tensors (nested lists) beside the flat values when it has shapes.
    pub async fn result_json(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        let url = self.url(&["v1", "sessions", id, "result"])?;
        let request = self
            .request(Method::GET, &url)
            .header(ACCEPT, "application/json");
        self.send_json(request, &url).await
    }

    /// `GET /v1/sessions/{id}/result` as a safetensors file (`f64` tensors named as the
    /// session's shapes, the facts in its metadata).
    pub async fn result_safetensors(&self, id: &str) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&["v1", "sessions", id, "result"])?;
        let request = self
            .request(Method::GET, &url)
            .header(ACCEPT, "application/safetensors");
        let response = self.send(request, &url).await?;
        Ok(response
            .bytes()
            .await
            .map_err(|e| transport(&url, e))?
            .to_vec())
    }

    /// `GET /v1/sessions/{id}/result` as raw little-endian `f64`.
    pub async fn result_raw(&self, id: &str) -> Result<RawResult, ClientError> {
        let url = self.url(&["v1", "sessions", id, "result"])?;
        let request = self
            .request(Method::GET, &url)
            .header(ACCEPT, "application/octet-stream");
        let response = self.send(request, &url).await?;
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport(&url, e))?
            .to_vec();
        let unexpected = |reason: String| ClientError::Unexpected {
            url: url.to_string(),
            reason,
        };
        if bytes.len() % 8 != 0 {
            return Err(unexpected(format!(
                "{} bytes is not a whole number of f64 values",
                bytes.len()
            )));
        }
        Ok(RawResult {
            bytes,
            contributors: parse_header(&headers, HEADER_CONTRIBUTORS).map_err(unexpected)?,
            clipped: parse_header(&headers, HEADER_CLIPPED).map_err(unexpected)?,
            error_bound: parse_header(&headers, HEADER_ERROR_BOUND).map_err(unexpected)?,
            kind: parse_header(&headers, HEADER_KIND).map_err(unexpected)?,
            total_weight: match headers.contains_key(HEADER_TOTAL_WEIGHT) {
                true => Some(parse_header(&headers, HEADER_TOTAL_WEIGHT).map_err(unexpected)?),
                false => None,
            },
        })
    }

    /// `POST /v1/fhe/contexts`: a new client context on the node (its secret key stays there).
    pub async fn create_context(
        &self,
        scheme: &str,
        provider: Option<&str>,
    ) -> Result<ContextInfo, ClientError> {
        let url = self.url(&["v1", "fhe", "contexts"])?;
        let body = CreateContextRequest {
            scheme: scheme.to_string(),
            provider: provider.map(str::to_string),
            params: None,
        };
        self.send_json(self.request(Method::POST, &url).json(&body), &url)
            .await
    }

    /// `GET /v1/fhe/contexts`
    pub async fn list_contexts(&self) -> Result<Vec<ContextInfo>, ClientError> {
        let url = self.url(&["v1", "fhe", "contexts"])?;
        let list: ContextList = self
            .send_json(self.request(Method::GET, &url), &url)
            .await?;
        Ok(list.contexts)
    }

    /// `DELETE /v1/fhe/contexts/{id}`
    pub async fn delete_context(&self, id: &str) -> Result<(), ClientError> {
        let url = self.url(&["v1", "fhe", "contexts", id])?;
        self.send(self.request(Method::DELETE, &url), &url).await?;
        Ok(())
    }

    /// `POST /v1/models` with a JSON model (`{"name", "layers"|"weights"+"biases", …}`);
    /// `replace`: replace a model of the same name (else the node answers `duplicate`).
    pub async fn add_model_json(
        &self,
        model: &serde_json::Value,
        replace: bool,
    ) -> Result<ModelInfo, ClientError> {
        let mut url = self.url(&["v1", "models"])?;
        if replace {
            url.query_pairs_mut().append_pair("replace", "true");
        }
        self.send_json(self.request(Method::POST, &url).json(model), &url)
            .await
    }

    /// `POST /v1/models?name=…` with a safetensors file (`<i>.weight`, `<i>.bias`, metadata
    /// `activations`).
    pub async fn add_model_safetensors(
        &self,
        name: &str,
        scheme: Option<&str>,
        input_bound: Option<f64>,
        bytes: Vec<u8>,
        replace: bool,
    ) -> Result<ModelInfo, ClientError> {
        let mut url = self.url(&["v1", "models"])?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("name", name);
            if replace {
                q.append_pair("replace", "true");
            }
            if let Some(s) = scheme {
                q.append_pair("scheme", s);
            }
            if let Some(b) = input_bound {
                q.append_pair("input_bound", &b.to_string());
            }
        }
        let request = self
            .request(Method::POST, &url)
            .header(CONTENT_TYPE, "application/safetensors")
            .body(bytes);
        self.send_json(request, &url).await
    }

    /// `GET /v1/models`
    pub async fn list_models(&self) -> Result<Vec<ModelInfo>, ClientError> {
        let url = self.url(&["v1", "models"])?;
        let list: ModelList = self
            .send_json(self.request(Method::GET, &url), &url)
            .await?;
        Ok(list.models)
    }

    /// `GET /v1/models/{name}/spec[?peer=]`: the scheme, parameter set and inputs of `name` on
    /// `peer` (or on the node), as the model node tells them.
    pub async fn model_spec(
        &self,
        name: &str,
        peer: Option<&str>,
    ) -> Result<ModelSpec, ClientError> {
        let mut url = self.url(&["v1", "models", name, "spec"])?;
        if let Some(p) = peer {
            url.query_pairs_mut().append_pair("peer", p);
        }
        self.send_json(self.request(Method::GET, &url), &url).await
    }

    /// `POST /v1/fhe/encrypt`: encrypts `rows` on the node under `context` for `model` (on
    /// `peer`, or on the node itself).
    pub async fn encrypt(
        &self,
        context: &str,
        model: &str,
        peer: Option<&str>,
        rows: Vec<Vec<f32>>,
    ) -> Result<EncryptResponse, ClientError> {
        let url = self.url(&["v1", "fhe", "encrypt"])?;
        let body = EncryptRequest {
            fhe_context_id: context.to_string(),
            model: model.to_string(),
            peer: peer.map(str::to_string),
            input_data: Some(rows),
            input: None,
        };
        self.send_json(self.request(Method::POST, &url).json(&body), &url)
            .await
    }

    /// `POST /v1/fhe/infer`: evaluates `model` (on `peer`, or on the node) on a ciphertext.
    pub async fn infer(
        &self,
        context: &str,
        model: &str,
        peer: Option<&str>,
        ciphertext: String,
    ) -> Result<InferResponse, ClientError> {
        let url = self.url(&["v1", "fhe", "infer"])?;
        let body = InferRequest {
            fhe_context_id: context.to_string(),
            model: model.to_string(),
            peer: peer.map(str::to_string),
            ciphertext,
        };
        self.send_json(self.request(Method::POST, &url).json(&body), &url)
            .await
    }

    /// `POST /v1/fhe/decrypt`
    pub async fn decrypt(
        &self,
        context: &str,
        encrypted_result: String,
    ) -> Result<Decrypted, ClientError> {
        let url = self.url(&["v1", "fhe", "decrypt"])?;
        let body = DecryptRequest {
            fhe_context_id: context.to_string(),
            encrypted_result,
        };
        self.send_json(self.request(Method::POST, &url).json(&body), &url)
            .await
    }

    /// `POST /v1/ml-zk/fhe/inference`: the original service's request, as JSON.
    pub async fn legacy_inference(
        &self,
        request: &serde_json::Value,
    ) -> Result<LegacyInferenceResponse, ClientError> {
        let url = self.url(&["v1", "ml-zk", "fhe", "inference"])?;
        self.send_json(self.request(Method::POST, &url).json(request), &url)
            .await
    }

    /// The URL of `segments` under the base, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidUrl {
                url: self.base.to_string(),
                reason: "cannot hold a path".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn request(&self, method: Method, url: &Url) -> RequestBuilder {
        let request = self.http.request(method, url.clone());
        match &self.authorization {
            Some(a) => request.header(AUTHORIZATION, a),
            None => request,
        }
    }

    /// Sends the request; an error status becomes [`ClientError::Api`].
    async fn send(
        &self,
        request: RequestBuilder,
        url: &Url,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| transport(url, e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.map_err(|e| transport(url, e))?;
        Err(api_error(status, &body))
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        url: &Url,
    ) -> Result<T, ClientError> {
        let response = self.send(request, url).await?;
        let body = response.bytes().await.map_err(|e| transport(url, e))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Unexpected {
            url: url.to_string(),
            reason: format!("cannot decode the JSON answer: {e}"),
        })
    }
}

fn transport(url: &Url, source: reqwest::Error) -> ClientError {
    ClientError::Transport {
        url: url.to_string(),
        source,
    }
}

/// An error answer: our JSON shape when it is one, else the status and the start of the body.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(300).collect();
            ClientError::Api {
                status: status.as_u16(),
                code: format!("http_{}", status.as_u16()),
                message: if text.trim().is_empty() {
                    status.canonical_reason().unwrap_or("error").to_string()
                } else {
                    text.trim().to_string()
                },
            }
        }
    }
}

fn parse_header<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let value = headers
        .get(name)
        .ok_or_else(|| format!("header `{name}` is missing"))?
        .to_str()
        .map_err(|_| format!("header `{name}` is not text"))?;
    value
        .parse()
        .map_err(|e| format!("header `{name}` ({value:?}): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_and_ids_encoded() {
        let c = ApiClient::new("127.0.0.1:8470", None).unwrap();
        assert_eq!(
            c.url(&["v1", "sessions"]).unwrap().as_str(),
            "http://127.0.0.1:8470/v1/sessions"
        );
        let c = ApiClient::new("http://[::1]:9000/prefix/", None).unwrap();
        assert_eq!(
            c.url(&["v1", "sessions", "a/b?c"]).unwrap().as_str(),
            "http://[::1]:9000/prefix/v1/sessions/a%2Fb%3Fc"
        );
    }

    #[test]
    fn bad_urls_and_tokens_are_refused() {
        for url in [
            "https://example.org",
            "http://h:1/?q=1",
            "mailto:x@y",
            "http://",
        ] {
            assert!(
                matches!(
                    ApiClient::new(url, None),
                    Err(ClientError::InvalidUrl { .. })
                ),
                "{url}"
            );
        }
        assert!(matches!(
            ApiClient::new(DEFAULT_API_URL, Some("a\nb")),
            Err(ClientError::InvalidToken)
        ));
    }

    #[test]
    fn error_bodies_are_decoded() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"unknown_session","message":"unknown session `x`"}}"#,
        );
        assert_eq!(
            e.to_string(),
            "unknown_session: unknown session `x` (HTTP 404)"
        );
        let e = api_error(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(e.to_string(), "http_502: upstream down (HTTP 502)");
        let e = api_error(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(e.to_string(), "http_503: Service Unavailable (HTTP 503)");
    }

    #[test]
    fn raw_values_decode() {
        let raw = RawResult {
            bytes: [1.5f64, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            contributors: 2,
            clipped: 0,
            error_bound: 0.0,
            kind: "mean".into(),
            total_weight: None,
        };
        assert_eq!(raw.values(), vec![1.5, -2.0]);
    }
}
