//! The encrypted-inference API on a real in-process node on loopback: the original service's
//! request, contexts, model registration (JSON and safetensors), encrypt → infer → decrypt
//! against the float model, and every refusal a client can provoke, with the node still
//! healthy afterwards.

use std::collections::HashMap;
use std::time::Duration;

use fhenode::config::ApiToken;
use fhenode::crypto::inference::{MlpConfig, MlpParams, Model, QuantizedModel};
use fhenode::demo::{loopback_config, start_local_network, wait_for_full_mesh};
use fhenode::node::Node;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

const MIB: usize = 1 << 20;
/// The node's `api.max_body_bytes` in these tests.
const BODY_LIMIT: usize = 2 * MIB;

struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(node: &Node, token: Option<&str>) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            base: format!("http://{}", node.api_addr),
            token: token.map(str::to_string),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn answer(r: reqwest::RequestBuilder) -> (u16, Value) {
        let response = r.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        (status, body)
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::answer(self.request(reqwest::Method::POST, path).json(body)).await
    }

    async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut r = self.request(reqwest::Method::POST, path).body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        Self::answer(r).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        Self::answer(self.request(reqwest::Method::GET, path)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        Self::answer(self.request(reqwest::Method::DELETE, path)).await
    }
}

/// Asserts an error answer: status, code, and a message containing every needle.
#[track_caller]
fn refused(answer: (u16, Value), status: u16, code: &str, needles: &[&str]) {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for needle in needles {
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn seed_request() -> Value {
    json!({
        "scheme": "ckks",
        "provider": "tenseal",
        "input_data": [[1.0, 2.0, 3.0, 4.0]],
        "model": {"weights": [[0.1, 0.2, 0.3, 0.4]], "biases": [0.5]}
    })
}

fn safetensors_file(
    tensors: &[(&str, Vec<usize>, Vec<f32>)],
    activations: Option<&str>,
) -> Vec<u8> {
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&data)
        .map(|((n, s, _), d)| {
            (
                n.to_string(),
                TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
            )
        })
        .collect();
    let meta = activations.map(|a| HashMap::from([("activations".to_string(), a.to_string())]));
    safetensors::serialize(views, meta).unwrap()
}

async fn start(token: Option<&str>) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = loopback_config(dir.path(), vec![]);
    config.api.max_body_bytes = BODY_LIMIT;
    config.api.token = token.map(ApiToken::new);
    (Node::start(config).await.unwrap(), dir)
}

/// Encrypts `rows` for `model` under `context`, evaluates, decrypts; returns the values, the
/// infer answer and the ciphertext hex.
async fn round_trip(
    api: &Api,
    context: &str,
    model: &str,
    rows: &Value,
) -> (Vec<Vec<f64>>, Value, String) {
    let (status, enc) = api
        .post(
            "/v1/fhe/encrypt",
            &json!({"fhe_context_id": context, "model": model, "input_data": rows}),
        )
        .await;
    assert_eq!(status, 200, "{enc}");
    assert_eq!(enc["fhe_context_id"], context);
    assert_eq!(
        enc["rows"].as_u64().unwrap() as usize,
        rows.as_array().unwrap().len()
    );
    let ciphertext = enc["ciphertext"].as_str().unwrap().to_string();
    assert!(is_hex(&ciphertext));
    let (status, inferred) = api
        .post(
            "/v1/fhe/infer",
            &json!({"fhe_context_id": context, "model": model, "ciphertext": ciphertext}),
        )
        .await;
    assert_eq!(status, 200, "{inferred}");
    for field in [
        "fhe_context_id",
        "encrypted_result",
        "result_shape",
        "computation_time_ms",
        "pbs",
        "peer",
    ] {
        assert!(inferred.get(field).is_some(), "{field} missing: {inferred}");
    }
    assert_eq!(inferred["peer"], Value::Null);
    let (status, dec) = api
        .post(
            "/v1/fhe/decrypt",
            &json!({"fhe_context_id": context, "encrypted_result": inferred["encrypted_result"]}),
        )
        .await;
    assert_eq!(status, 200, "{dec}");
    assert_eq!(dec["result_shape"], inferred["result_shape"]);
    let values: Vec<Vec<f64>> = serde_json::from_value(dec["values"].clone()).unwrap();
    (values, inferred, ciphertext)
}

/// Stops a node, within 10 s.
async fn stop(node: Node) {
    tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_api_on_one_node() {
    let (node, _dir) = start(None).await;
    let api = Api::new(&node, None);
    tokio::time::timeout(Duration::from_secs(300), async {
        // --- the original service's request, exactly --------------------------------------
        let (status, seed) = api.post("/v1/ml-zk/fhe/inference", &seed_request()).await;
        assert_eq!(status, 200, "{seed}");
        let ctx = seed["fhe_context_id"].as_str().unwrap().to_string();
        assert!(is_hex(seed["encrypted_result"].as_str().unwrap()), "{seed}");
        assert_eq!(seed["result_shape"], json!([1, 1]));
        assert!(seed["computation_time_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(seed.as_object().unwrap().len(), 4, "{seed}");
        let (status, dec) = api
            .post(
                "/v1/fhe/decrypt",
                &json!({"fhe_context_id": ctx, "encrypted_result": seed["encrypted_result"]}),
            )
            .await;
        assert_eq!(status, 200, "{dec}");
        assert_eq!(dec["result_shape"], json!([1, 1]));
        let v = dec["values"][0][0].as_f64().unwrap();
        assert!((v - 3.5).abs() <= 1e-3, "{v}");

        // The same request reusing its context.
        let mut again = seed_request();
        again["fhe_context_id"] = json!(ctx);
        let (status, seed2) = api.post("/v1/ml-zk/fhe/inference", &again).await;
        assert_eq!(status, 200, "{seed2}");
        assert_eq!(seed2["fhe_context_id"], json!(ctx));
        let (_, dec) = api
            .post(
                "/v1/fhe/decrypt",
                &json!({"fhe_context_id": ctx, "encrypted_result": seed2["encrypted_result"]}),
            )
            .await;
        assert!((dec["values"][0][0].as_f64().unwrap() - 3.5).abs() <= 1e-3, "{dec}");
        again["fhe_context_id"] = json!("ctx_nope");
        refused(api.post("/v1/ml-zk/fhe/inference", &again).await, 404, "unknown_context", &["ctx_nope"]);

        // Unknown schemes and providers are refused, naming what is supported.
        let mut bad = seed_request();
        bad["scheme"] = json!("bgv");
        bad["provider"] = json!("openfhe");
        refused(
            api.post("/v1/ml-zk/fhe/inference", &bad).await,
            400,
            "unsupported_scheme",
            &["bgv", "ckks (tenseal)", "concrete (concrete)", "linear", "mlp"],
        );
        let mut bad = seed_request();
        bad["provider"] = json!("seal");
        refused(
            api.post("/v1/ml-zk/fhe/inference", &bad).await,
            400,
            "unsupported_scheme",
            &["provider `seal`", "ckks (tenseal)"],
        );
        refused(
            api.post("/v1/fhe/contexts", &json!({"scheme": "paillier"})).await,
            400,
            "unsupported_scheme",
            &["paillier", "ckks (tenseal)", "mlp"],
        );
        // A seed model of the wrong shape, and input of the wrong length.
        let mut bad = seed_request();
        bad["model"]["biases"] = json!([0.5, 0.1]);
        refused(api.post("/v1/ml-zk/fhe/inference", &bad).await, 400, "invalid_model", &["layer 0", "2 biases"]);
        let mut bad = seed_request();
        bad["input_data"] = json!([[1.0, 2.0, 3.0]]);
        refused(api.post("/v1/ml-zk/fhe/inference", &bad).await, 400, "wrong_shape", &["3 values", "expects 4"]);

        // --- contexts ---------------------------------------------------------------------
        let response = api
            .request(reqwest::Method::POST, "/v1/fhe/contexts")
            .json(&json!({"scheme": "linear"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let location = response.headers()["location"].to_str().unwrap().to_string();
        let a: Value = response.json().await.unwrap();
        let ctx_a = a["fhe_context_id"].as_str().unwrap().to_string();
        assert_eq!(location, format!("/v1/fhe/contexts/{ctx_a}"));
        assert_eq!(a["scheme"], "linear");
        for field in ["params", "key_id", "created_ms"] {
            assert!(a.get(field).is_some(), "{field}: {a}");
        }
        // The original names and their provider parameters are accepted.
        let (status, b) = api
            .post(
                "/v1/fhe/contexts",
                &json!({"scheme": "ckks", "provider": "tenseal",
                        "params": {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40, 60]}}),
            )
            .await;
        assert_eq!(status, 201, "{b}");
        assert_eq!(b["scheme"], "linear");
        let ctx_b = b["fhe_context_id"].as_str().unwrap().to_string();
        let (status, c) = api.post("/v1/fhe/contexts", &json!({"scheme": "linear"})).await;
        assert_eq!(status, 201, "{c}");
        let ctx_c = c["fhe_context_id"].as_str().unwrap().to_string();
        let (status, list) = api.get("/v1/fhe/contexts").await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = list["contexts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["fhe_context_id"].as_str())
            .collect();
        for id in [&ctx, &ctx_a, &ctx_b, &ctx_c] {
            assert!(ids.contains(&id.as_str()), "{id} not in {ids:?}");
        }
        let (status, shown) = api.get(&format!("/v1/fhe/contexts/{ctx_c}")).await;
        assert_eq!((status, &shown["fhe_context_id"]), (200, &json!(ctx_c)));
        assert_eq!(api.delete(&format!("/v1/fhe/contexts/{ctx_c}")).await.0, 204);
        refused(api.delete(&format!("/v1/fhe/contexts/{ctx_c}")).await, 404, "unknown_context", &[&ctx_c]);
        refused(api.get(&format!("/v1/fhe/contexts/{ctx_c}")).await, 404, "unknown_context", &[]);
        let (_, list) = api.get("/v1/fhe/contexts").await;
        assert!(!list.to_string().contains(&ctx_c));
        refused(
            api.post("/v1/fhe/contexts", &json!({"scheme": "linear", "nope": 1})).await,
            400,
            "bad_json",
            &["nope"],
        );

        // --- models -----------------------------------------------------------------------
        let affine = json!({
            "name": "affine",
            "layers": [{
                "weights": [[0.5, -1.25, 2.0, 0.0, 3.5, -0.75],
                            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                            [-2.5, 0.125, 0.3, -0.7, 0.9, 4.0]],
                "biases": [0.25, -3.0, 1.5]
            }]
        });
        let (status, info) = api.post("/v1/models", &affine).await;
        assert_eq!(status, 201, "{info}");
        assert_eq!(
            (&info["name"], &info["scheme"], &info["inputs"], &info["outputs"], &info["layers"]),
            (&json!("affine"), &json!("linear"), &json!(6), &json!(3), &json!(1))
        );
        let affine_bound = info["error_bound"].as_f64().unwrap();
        assert!(affine_bound > 0.0 && affine_bound.is_finite(), "{info}");
        // The same name again is refused unless the caller asks to replace it.
        let (status, again) = api.post("/v1/models", &affine).await;
        assert_eq!((status, &again["error"]["code"]), (409, &json!("duplicate")), "{again}");
        assert!(again["error"]["message"].as_str().unwrap().contains("replace=true"), "{again}");
        let (status, replaced) = api.post("/v1/models?replace=true", &affine).await;
        assert_eq!((status, &replaced["name"]), (201, &json!("affine")), "{replaced}");
        // The original single-layer shape, with options.
        let (status, info) = api
            .post(
                "/v1/models",
                &json!({"name": "seed-shape", "weights": [[0.1, 0.2, 0.3, 0.4]], "biases": [0.5],
                        "scheme": "ckks", "input_bound": 8}),
            )
            .await;
        assert_eq!(status, 201, "{info}");
        assert_eq!((&info["inputs"], &info["outputs"]), (&json!(4), &json!(1)));
        // Safetensors, two affine layers, names with and without the `layers.` prefix.
        let w0 = vec![0.5, -0.25, 1.0, 2.0, 0.0, -1.5, 0.75, 0.125]; // [2, 4]
        let b0 = vec![0.5, -1.0];
        let w1 = vec![1.0, -2.0, 0.25, 0.5, 3.0, -1.0]; // [3, 2]
        let b1 = vec![0.0, 0.5, -0.25];
        let file = safetensors_file(
            &[
                ("0.weight", vec![2, 4], w0.clone()),
                ("0.bias", vec![2], b0.clone()),
                ("layers.1.weight", vec![3, 2], w1.clone()),
                ("layers.1.bias", vec![3], b1.clone()),
            ],
            Some("none,none"),
        );
        let (status, info) = api
            .post_raw("/v1/models?name=stacked&input_bound=16", Some("application/octet-stream"), file)
            .await;
        assert_eq!(status, 201, "{info}");
        assert_eq!(
            (&info["inputs"], &info["outputs"], &info["layers"], &info["activations"]),
            (&json!(4), &json!(3), &json!(2), &json!(["none", "none"]))
        );
        let stacked_bound = info["error_bound"].as_f64().unwrap();
        // Bad shapes name the layer.
        refused(
            api.post(
                "/v1/models",
                &json!({"name": "bad", "layers": [
                    {"weights": [[1, 2, 3], [4, 5, 6]], "biases": [0, 0]},
                    {"weights": [[1, 2, 3, 4]], "biases": [0]}]}),
            )
            .await,
            400,
            "invalid_model",
            &["layer 1", "4 inputs", "2 outputs"],
        );
        refused(
            api.post("/v1/models", &json!({"name": "ragged", "weights": [[1, 2], [3]], "biases": [0, 0]})).await,
            400,
            "invalid_model",
            &["layer 0", "ragged"],
        );
        let bad_file = safetensors_file(
            &[("0.weight", vec![2, 3], vec![0.0; 6]), ("0.bias", vec![3], vec![0.0; 3])],
            None,
        );
        refused(
            api.post_raw("/v1/models?name=bad-st", Some("application/safetensors"), bad_file).await,
            400,
            "invalid_model",
            &["layer 0", "3 biases"],
        );
        refused(
            api.post_raw("/v1/models?name=junk", Some("application/safetensors"), b"junk".to_vec()).await,
            400,
            "bad_input",
            &["safetensors"],
        );
        refused(
            api.post_raw("/v1/models", Some("text/csv"), b"1,2".to_vec()).await,
            415,
            "unsupported_media_type",
            &["text/csv"],
        );
        refused(
            api.post("/v1/models", &json!({"name": "../x", "weights": [[1]], "biases": [0]})).await,
            400,
            "bad_input",
            &["../x"],
        );
        refused(
            api.post("/v1/models", &json!({"name": "..", "weights": [[1]], "biases": [0]})).await,
            400,
            "bad_input",
            &[".."],
        );
        let (status, list) = api.get("/v1/models").await;
        assert_eq!(status, 200);
        let names: Vec<&str> = list["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        for n in ["affine", "seed-shape", "stacked"] {
            assert!(names.contains(&n), "{n} not in {names:?}");
        }
        assert!(!names.contains(&"bad") && !names.contains(&"bad-st"), "{names:?}");
        assert_eq!(api.get("/v1/models/affine").await.0, 200);
        refused(api.get("/v1/models/nope").await, 404, "unknown_model", &["nope"]);

        // --- encrypt → infer → decrypt against the float model ----------------------------
        let rows = json!([
            [1.0, -2.0, 3.5, 0.0, 100.0, -255.0],
            [0.001, 0.5, -0.25, 7.0, -12.0, 63.0],
            [250.0, -250.0, 1.0, -1.0, 0.0, 0.3]
        ]);
        let float: Model = serde_json::from_value(json!({"layers": affine["layers"]})).unwrap();
        let (values, inferred, ciphertext_a) = round_trip(&api, &ctx_a, "affine", &rows).await;
        assert_eq!(inferred["result_shape"], json!([3, 3]));
        assert_eq!(inferred["pbs"], json!(0));
        for (row, got) in rows.as_array().unwrap().iter().zip(&values) {
            let x: Vec<f64> = serde_json::from_value(row.clone()).unwrap();
            let want = float.eval_plain_f64(&x).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= affine_bound, "{g} vs {w} (bound {affine_bound})");
            }
        }
        let float = Model {
            layers: vec![
                serde_json::from_value(json!({"weights": [&w0[..4], &w0[4..]], "biases": b0})).unwrap(),
                serde_json::from_value(json!({"weights": [&w1[..2], &w1[2..4], &w1[4..]], "biases": b1})).unwrap(),
            ],
        };
        let rows = json!([[1.0, 2.0, -3.0, 15.5], [-16.0, 0.0, 0.25, 9.0]]);
        let (values, _, _) = round_trip(&api, &ctx_b, "stacked", &rows).await;
        for (row, got) in rows.as_array().unwrap().iter().zip(&values) {
            let x: Vec<f64> = serde_json::from_value(row.clone()).unwrap();
            for (g, w) in got.iter().zip(&float.eval_plain_f64(&x).unwrap()) {
                assert!((g - w).abs() <= stacked_bound, "{g} vs {w} (bound {stacked_bound})");
            }
        }
        // One row as `input`.
        let (status, enc) = api
            .post(
                "/v1/fhe/encrypt",
                &json!({"fhe_context_id": ctx_a, "model": "seed-shape", "input": [1.0, 2.0, 3.0, 4.0]}),
            )
            .await;
        assert_eq!((status, &enc["rows"]), (200, &json!(1)), "{enc}");
        let (status, inferred) = api
            .post(
                "/v1/fhe/infer",
                &json!({"fhe_context_id": ctx_a, "model": "seed-shape", "ciphertext": enc["ciphertext"]}),
            )
            .await;
        assert_eq!(status, 200, "{inferred}");
        let (_, dec) = api
            .post(
                "/v1/fhe/decrypt",
                &json!({"fhe_context_id": ctx_a, "encrypted_result": inferred["encrypted_result"]}),
            )
            .await;
        assert!((dec["values"][0][0].as_f64().unwrap() - 3.5).abs() <= 1e-3, "{dec}");

        // --- refusals ---------------------------------------------------------------------
        // Unknown model, at encryption and at evaluation.
        refused(
            api.post("/v1/fhe/encrypt", &json!({"fhe_context_id": ctx_a, "model": "nope", "input": [1.0]})).await,
            404,
            "unknown_model",
            &["nope"],
        );
        refused(
            api.post("/v1/fhe/infer", &json!({"fhe_context_id": ctx_a, "model": "nope", "ciphertext": ciphertext_a})).await,
            404,
            "unknown_model",
            &["nope"],
        );
        // Unknown context.
        refused(
            api.post("/v1/fhe/encrypt", &json!({"fhe_context_id": "ctx_nope", "model": "affine", "input": [1.0]})).await,
            404,
            "unknown_context",
            &["ctx_nope"],
        );
        // Wrong input length.
        refused(
            api.post(
                "/v1/fhe/encrypt",
                &json!({"fhe_context_id": ctx_a, "model": "affine", "input": [1.0, 2.0, 3.0, 4.0, 5.0]}),
            )
            .await,
            400,
            "wrong_shape",
            &["5 values", "expects 6"],
        );
        // Input outside the declared bound, and neither / both input forms.
        refused(
            api.post("/v1/fhe/encrypt", &json!({"fhe_context_id": ctx_a, "model": "seed-shape", "input": [100.0, 0, 0, 0]})).await,
            400,
            "crypto",
            &["outside the declared bound"],
        );
        refused(
            api.post("/v1/fhe/encrypt", &json!({"fhe_context_id": ctx_a, "model": "affine"})).await,
            400,
            "bad_input",
            &["input_data"],
        );
        // A ciphertext made under another context, at evaluation and at decryption.
        refused(
            api.post("/v1/fhe/infer", &json!({"fhe_context_id": ctx_b, "model": "affine", "ciphertext": ciphertext_a})).await,
            400,
            "wrong_context",
            &["another context"],
        );
        let (_, inferred_a) = api
            .post("/v1/fhe/infer", &json!({"fhe_context_id": ctx_a, "model": "affine", "ciphertext": ciphertext_a}))
            .await;
        refused(
            api.post("/v1/fhe/decrypt", &json!({"fhe_context_id": ctx_b, "encrypted_result": inferred_a["encrypted_result"]})).await,
            400,
            "wrong_context",
            &[],
        );
        // A ciphertext for another model (same context, other input count).
        let (_, enc_seed) = api
            .post("/v1/fhe/encrypt", &json!({"fhe_context_id": ctx_a, "model": "seed-shape", "input": [1.0, 2.0, 3.0, 4.0]}))
            .await;
        let (status, body) = api
            .post("/v1/fhe/infer", &json!({"fhe_context_id": ctx_a, "model": "affine", "ciphertext": enc_seed["ciphertext"]}))
            .await;
        assert_eq!(status, 400, "{body}");
        // Garbage hex and garbage bytes.
        for garbage in ["zz", "abc", "", "deadbeef", "0x00"] {
            let (status, body) = api
                .post("/v1/fhe/infer", &json!({"fhe_context_id": ctx_a, "model": "affine", "ciphertext": garbage}))
                .await;
            assert_eq!((status, &body["error"]["code"]), (400, &json!("bad_input")), "{garbage}: {body}");
            let (status, body) = api
                .post("/v1/fhe/decrypt", &json!({"fhe_context_id": ctx_a, "encrypted_result": garbage}))
                .await;
            assert_eq!((status, &body["error"]["code"]), (400, &json!("bad_input")), "{garbage}: {body}");
        }
        // Malformed JSON, a missing field, a missing Content-Type, a bad peer id.
        refused(
            api.post_raw("/v1/fhe/encrypt", Some("application/json"), b"{".to_vec()).await,
            400,
            "bad_json",
            &[],
        );
        refused(
            api.post("/v1/fhe/infer", &json!({"fhe_context_id": ctx_a, "model": "affine"})).await,
            400,
            "bad_json",
            &["ciphertext"],
        );
        refused(
            api.post_raw("/v1/fhe/decrypt", None, b"{}".to_vec()).await,
            415,
            "unsupported_media_type",
            &[],
        );
        refused(
            api.post(
                "/v1/fhe/encrypt",
                &json!({"fhe_context_id": ctx_a, "model": "affine", "peer": "not-a-peer", "input": [1.0]}),
            )
            .await,
            400,
            "bad_input",
            &["not-a-peer"],
        );
        // Oversized bodies.
        let big = format!(
            r#"{{"fhe_context_id":"{ctx_a}","model":"affine","ciphertext":"{}"}}"#,
            "00".repeat(BODY_LIMIT / 2 + 1)
        );
        refused(
            api.post_raw("/v1/fhe/infer", Some("application/json"), big.into_bytes()).await,
            413,
            "payload_too_large",
            &["api.max_body_bytes"],
        );
        refused(
            api.post_raw("/v1/models?name=huge", Some("application/safetensors"), vec![0; BODY_LIMIT + 1]).await,
            413,
            "payload_too_large",
            &[],
        );
        refused(
            api.post_raw("/v1/ml-zk/fhe/inference", Some("application/json"), vec![b' '; BODY_LIMIT + 1]).await,
            413,
            "payload_too_large",
            &[],
        );

        // --- the OpenAPI document describes every inference route -------------------------
        let (status, doc) = api.get("/v1/openapi.json").await;
        assert_eq!(status, 200);
        for path in [
            "/v1/fhe/contexts",
            "/v1/fhe/contexts/{id}",
            "/v1/models",
            "/v1/models/{name}",
            "/v1/models/{name}/spec",
            "/v1/fhe/encrypt",
            "/v1/fhe/infer",
            "/v1/fhe/decrypt",
            "/v1/ml-zk/fhe/inference",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
        }

        // --- the node is unharmed ---------------------------------------------------------
        let (status, health) = api.get("/healthz").await;
        assert_eq!((status, &health["status"]), (200, &json!("ok")));
        let (status, ready) = api.get("/readyz").await;
        assert_eq!((status, &ready["inference"]), (200, &json!(true)), "{ready}");
        let (status, seed) = api.post("/v1/ml-zk/fhe/inference", &seed_request()).await;
        assert_eq!(status, 200, "{seed}");
        let (_, dec) = api
            .post(
                "/v1/fhe/decrypt",
                &json!({"fhe_context_id": seed["fhe_context_id"], "encrypted_result": seed["encrypted_result"]}),
            )
            .await;
        assert!((dec["values"][0][0].as_f64().unwrap() - 3.5).abs() <= 1e-3, "{dec}");
    })
    .await
    .expect("the API test took over 300 s");
    stop(node).await;
}

/// One small network with a ReLU through the `mlp` scheme: the decrypted result equals the
/// quantised plaintext model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlp_model_through_the_api() {
    let (node, _dir) = start(None).await;
    let api = Api::new(&node, None);
    tokio::time::timeout(Duration::from_secs(300), async {
        let layers = json!([
            {"weights": [[1.0, -0.5], [0.25, 1.0], [-1.0, 0.75]], "biases": [0.1, -0.2, 0.0], "activation": "relu"},
            {"weights": [[1.0, -1.0, 0.5]], "biases": [0.0]}
        ]);
        let (status, info) = api
            .post("/v1/models", &json!({"name": "tiny-mlp", "layers": layers, "input_range": [-1.0, 1.0]}))
            .await;
        assert_eq!(status, 201, "{info}");
        assert_eq!(info["scheme"], "mlp");
        let pbs_per_row = info["pbs"].as_u64().unwrap();
        assert!(pbs_per_row >= 3, "{info}");
        let (status, ctx) = api.post("/v1/fhe/contexts", &json!({"scheme": "concrete", "provider": "concrete-ml"})).await;
        assert_eq!(status, 201, "{ctx}");
        assert_eq!(ctx["scheme"], "mlp");
        assert!(ctx["evaluation_key_bytes"].as_u64().unwrap() > 0);
        let ctx = ctx["fhe_context_id"].as_str().unwrap().to_string();
        let rows = json!([[0.5, -0.5], [-1.0, 1.0]]);
        let (values, inferred, _) = round_trip(&api, &ctx, "tiny-mlp", &rows).await;
        assert_eq!(inferred["result_shape"], json!([2, 1]));
        assert_eq!(inferred["pbs"].as_u64().unwrap(), 2 * pbs_per_row);
        let model: Model = serde_json::from_value(json!({
            "layers": [
                {"weights": layers[0]["weights"], "biases": layers[0]["biases"], "activation": {"kind": "relu"}},
                layers[1]
            ]
        }))
        .unwrap();
        let q = QuantizedModel::compile(&model, &MlpConfig::with_range(MlpParams::Message2Carry2, -1.0, 1.0)).unwrap();
        for (row, got) in rows.as_array().unwrap().iter().zip(&values) {
            let x: Vec<f32> = serde_json::from_value(row.clone()).unwrap();
            let want = q.eval_plain(&x).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6, "{g} vs quantised {w}");
            }
        }
        // A linear ciphertext is refused by the mlp model.
        let (_, lin) = api.post("/v1/fhe/contexts", &json!({"scheme": "linear"})).await;
        let (status, body) = api
            .post("/v1/fhe/encrypt", &json!({"fhe_context_id": lin["fhe_context_id"], "model": "tiny-mlp", "input": [0.0, 0.0]}))
            .await;
        assert_eq!((status, &body["error"]["code"]), (400, &json!("wrong_context")), "{body}");
        assert_eq!(api.get("/healthz").await.0, 200);
    })
    .await
    .expect("the mlp API test took over 300 s");
    stop(node).await;
}

/// The inference routes sit behind the API token like the session routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_routes_need_the_token() {
    const TOKEN: &str = "an-inference-test-token-of-some-length";
    let (node, _dir) = start(Some(TOKEN)).await;
    let anonymous = Api::new(&node, None);
    for (method, path) in [
        ("POST", "/v1/fhe/contexts"),
        ("GET", "/v1/fhe/contexts"),
        ("GET", "/v1/models"),
        ("POST", "/v1/ml-zk/fhe/inference"),
        ("POST", "/v1/fhe/decrypt"),
    ] {
        let answer = if method == "POST" {
            anonymous.post(path, &seed_request()).await
        } else {
            anonymous.get(path).await
        };
        refused(answer, 401, "unauthorized", &[]);
    }
    let api = Api::new(&node, Some(TOKEN));
    let (status, seed) = api.post("/v1/ml-zk/fhe/inference", &seed_request()).await;
    assert_eq!(status, 200, "{seed}");
    stop(node).await;
}

/// Runs the `fhenode` binary with `args`; returns (success, stdout, stderr).
async fn fhenode(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhenode"))
            .args(&args)
            .env_remove("FHENODE_API_TOKEN")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `fhenode model add|list` and `fhenode infer` against a node's API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_model_and_infer_commands() {
    let (node, dir) = start(None).await;
    let api_url = format!("http://{}", node.api_addr);
    let args = |list: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        v.extend(["--api".to_string(), api_url.clone()]);
        v
    };
    tokio::time::timeout(Duration::from_secs(300), async {
        let json_file = dir.path().join("seed.json");
        std::fs::write(
            &json_file,
            r#"{"weights": [[0.1, 0.2, 0.3, 0.4]], "biases": [0.5]}"#,
        )
        .unwrap();
        let st_file = dir.path().join("double.safetensors");
        std::fs::write(
            &st_file,
            safetensors_file(&[("0.weight", vec![2, 2], vec![2.0, 0.0, 0.0, -2.0])], None),
        )
        .unwrap();
        let path = |p: &std::path::Path| p.to_str().unwrap().to_string();

        let (ok, out, err) = fhenode(args(&[
            "model",
            "add",
            "cli-seed",
            "--file",
            &path(&json_file),
        ]))
        .await;
        assert!(ok, "{err}");
        let info: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (&info["name"], &info["inputs"]),
            (&json!("cli-seed"), &json!(4))
        );
        let (ok, out, err) = fhenode(args(&[
            "model",
            "add",
            "cli-double",
            "--file",
            &path(&st_file),
            "--scheme",
            "linear",
            "--input-bound",
            "8",
        ]))
        .await;
        assert!(ok, "{err}");
        let info: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (&info["name"], &info["outputs"]),
            (&json!("cli-double"), &json!(2))
        );
        let (ok, out, err) = fhenode(args(&["model", "list"])).await;
        assert!(ok, "{err}");
        assert!(
            out.contains("cli-seed") && out.contains("cli-double"),
            "{out}"
        );

        // A new context, then the seed example end to end, with timings and sizes.
        let (ok, out, err) = fhenode(args(&[
            "infer",
            "--model",
            "cli-seed",
            "--input",
            "[[1, 2, 3, 4]]",
        ]))
        .await;
        assert!(ok, "{err}");
        for step in ["context ", "encrypt ", "infer ", "decrypt "] {
            assert!(err.contains(step), "`{step}` missing: {err}");
        }
        let result: Value = serde_json::from_str(&out).unwrap();
        assert!(
            (result["values"][0][0].as_f64().unwrap() - 3.5).abs() <= 0.03,
            "{result}"
        );
        assert!(
            result["bytes"]["ciphertext"].as_u64().unwrap() > 0,
            "{result}"
        );
        for t in [
            "context",
            "encrypt",
            "infer",
            "evaluation",
            "decrypt",
            "total",
        ] {
            assert!(result["timings_ms"][t].as_f64().is_some(), "{t}: {result}");
        }
        let ctx = result["fhe_context_id"].as_str().unwrap().to_string();

        // The same context again, input from a file.
        let input = dir.path().join("input.json");
        std::fs::write(&input, r#"{"input_data": [[1.5, -3.0], [0.25, 4.0]]}"#).unwrap();
        let (ok, out, err) = fhenode(args(&[
            "infer",
            "--model",
            "cli-double",
            "--input",
            &path(&input),
            "--context",
            &ctx,
        ]))
        .await;
        assert!(ok, "{err}");
        assert!(!err.contains("context "), "no new context expected: {err}");
        let result: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(result["fhe_context_id"], json!(ctx));
        let values: Vec<Vec<f64>> = serde_json::from_value(result["values"].clone()).unwrap();
        for (got, want) in values.iter().flatten().zip([3.0, 6.0, 0.5, -8.0]) {
            assert!((got - want).abs() <= 1e-2, "{values:?}");
        }

        // Failures: one line on stderr, exit status 1.
        for (list, needle) in [
            (vec!["infer", "--model", "nope", "--input", "[1]"], "nope"),
            (
                vec![
                    "infer",
                    "--model",
                    "cli-seed",
                    "--input",
                    "[1, 2]",
                    "--context",
                    &ctx,
                ],
                "wrong_shape",
            ),
            (
                vec![
                    "infer",
                    "--model",
                    "cli-seed",
                    "--input",
                    "[1]",
                    "--context",
                    &ctx,
                    "--peer",
                    "not-a-peer",
                ],
                "not-a-peer",
            ),
            (
                vec!["model", "add", "bad", "--file", "/nonexistent/model.json"],
                "cannot read",
            ),
        ] {
            let (ok, _, err) = fhenode(args(&list)).await;
            assert!(!ok, "{list:?} succeeded");
            assert!(
                err.starts_with("error: ") && err.contains(needle),
                "{list:?}: {err}"
            );
        }
    })
    .await
    .expect("the CLI test took over 300 s");
    stop(node).await;
}

/// A model on another node: `GET /v1/models/{name}/spec?peer=` asks that node over libp2p, and
/// `fhenode infer --peer` uses it to make a context of the model's scheme, so a remote mlp
/// model needs neither `--context` nor `--scheme`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_model_spec_and_cli_infer_across_two_nodes() {
    let (_dirs, nodes) = start_local_network(2).await.unwrap();
    wait_for_full_mesh(&nodes, Duration::from_secs(30))
        .await
        .unwrap();
    let (client, server) = (&nodes[0], &nodes[1]);
    let (client_api, server_api) = (Api::new(client, None), Api::new(server, None));
    let server_id = server.peer_id.to_string();
    tokio::time::timeout(Duration::from_secs(300), async {
        let layers = json!([
            {"weights": [[1.0, -0.5], [0.25, 1.0], [-1.0, 0.75]], "biases": [0.1, -0.2, 0.0], "activation": "relu"},
            {"weights": [[1.0, -1.0, 0.5]], "biases": [0.0]}
        ]);
        let (status, info) = server_api
            .post("/v1/models", &json!({"name": "remote-mlp", "layers": layers, "input_range": [-1.0, 1.0]}))
            .await;
        assert_eq!(status, 201, "{info}");
        let pbs_per_row = info["pbs"].as_u64().unwrap();
        let (status, info) = server_api
            .post(
                "/v1/models",
                &json!({"name": "remote-affine", "weights": [[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]],
                        "biases": [0.25, -0.5], "input_bound": 8.0}),
            )
            .await;
        assert_eq!(status, 201, "{info}");

        // --- the spec: a remote linear model, the same mlp model remote and local ----------
        let (status, spec) = client_api
            .get(&format!("/v1/models/remote-affine/spec?peer={server_id}"))
            .await;
        assert_eq!(status, 200, "{spec}");
        assert_eq!(spec["name"], "remote-affine");
        assert_eq!((&spec["scheme"], &spec["inputs"]), (&json!("linear"), &json!(3)));
        assert_eq!((&spec["input_bound"], &spec["peer"]), (&json!(8.0), &json!(server_id)));
        assert!(spec["input_ranges"].is_null(), "{spec}");
        let (status, remote) = client_api
            .get(&format!("/v1/models/remote-mlp/spec?peer={server_id}"))
            .await;
        assert_eq!(status, 200, "{remote}");
        assert_eq!((&remote["scheme"], &remote["inputs"]), (&json!("mlp"), &json!(2)));
        assert_eq!(remote["peer"], json!(server_id));
        assert!(remote["input_bound"].is_null(), "{remote}");
        let ranges: Vec<[f64; 2]> = serde_json::from_value(remote["input_ranges"].clone()).unwrap();
        assert_eq!(ranges.len(), 2);
        for [lo, hi] in ranges {
            assert!((lo + 1.0).abs() < 1e-9 && (hi - 1.0).abs() < 1e-9, "{remote}");
        }
        let (status, local) = server_api.get("/v1/models/remote-mlp/spec").await;
        assert_eq!(status, 200, "{local}");
        assert_eq!(local["peer"], Value::Null);
        for field in ["name", "scheme", "params", "inputs", "input_ranges"] {
            assert_eq!(local[field], remote[field], "{field}");
        }
        // The parameter set is the one a linear context of the client's node uses.
        let (_, ctx) = client_api.post("/v1/fhe/contexts", &json!({"scheme": "linear"})).await;
        assert_eq!(ctx["params"], spec["params"], "{ctx}");
        // Refusals: a model on neither node, a bad peer id, an unknown parameter.
        refused(client_api.get("/v1/models/remote-mlp/spec").await, 404, "unknown_model", &["remote-mlp"]);
        refused(
            client_api.get(&format!("/v1/models/nope/spec?peer={server_id}")).await,
            404,
            "unknown_model",
            &["nope"],
        );
        refused(
            client_api.get("/v1/models/remote-mlp/spec?peer=not-a-peer").await,
            400,
            "bad_input",
            &["not-a-peer"],
        );
        refused(client_api.get("/v1/models/remote-mlp/spec?node=x").await, 400, "bad_request", &[]);

        // --- the CLI: remote models with neither --context nor --scheme --------------------
        let infer = |model: &str, input: &str| -> Vec<String> {
            ["infer", "--api", &format!("http://{}", client.api_addr), "--peer", &server_id, "--model", model, "--input", input]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let rows = json!([[0.5, -0.5], [-1.0, 1.0]]);
        let (ok, out, err) = fhenode(infer("remote-mlp", &rows.to_string())).await;
        assert!(ok, "{err}");
        assert!(err.contains("(mlp, "), "an mlp context expected: {err}");
        let result: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(result["peer"], json!(server_id));
        assert_eq!(result["pbs"].as_u64().unwrap(), 2 * pbs_per_row);
        let values: Vec<Vec<f64>> = serde_json::from_value(result["values"].clone()).unwrap();
        let model: Model = serde_json::from_value(json!({
            "layers": [
                {"weights": layers[0]["weights"], "biases": layers[0]["biases"], "activation": {"kind": "relu"}},
                layers[1]
            ]
        }))
        .unwrap();
        let q = QuantizedModel::compile(&model, &MlpConfig::with_range(MlpParams::Message2Carry2, -1.0, 1.0)).unwrap();
        assert_eq!(values.len(), 2);
        for (row, got) in rows.as_array().unwrap().iter().zip(&values) {
            let x: Vec<f32> = serde_json::from_value(row.clone()).unwrap();
            let want = q.eval_plain(&x).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6, "{g} vs quantised {w}");
            }
        }
        let (ok, out, err) = fhenode(infer("remote-affine", "[1, 2, 3]")).await;
        assert!(ok, "{err}");
        assert!(err.contains("(linear, "), "a linear context expected: {err}");
        let result: Value = serde_json::from_str(&out).unwrap();
        let values: Vec<Vec<f64>> = serde_json::from_value(result["values"].clone()).unwrap();
        for (got, want) in values[0].iter().zip([4.75, 5.5]) {
            assert!((got - want).abs() <= 1e-2, "{values:?}");
        }
        // An unknown remote model: one line on stderr, exit status 1, no context made.
        let (ok, _, err) = fhenode(infer("nope", "[1]")).await;
        assert!(!ok && err.starts_with("error: ") && err.contains("nope"), "{err}");
        assert!(!err.contains("context "), "{err}");
    })
    .await
    .expect("the two-node spec test took over 300 s");
    for node in nodes {
        stop(node).await;
    }
}
