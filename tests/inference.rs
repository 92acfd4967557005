//! Encrypted inference across two real nodes in one process on loopback: a client node
//! encrypts under its own context, a model node evaluates over libp2p, the client decrypts.
//! Linear and mlp (with the evaluation key uploaded in pieces), plus refusals that leave both
//! nodes serving, among them an evaluation key over a node's memory budget. A second mlp
//! model, with sigmoid (lookup-table) activations, reuses the context and its uploaded key.

use std::time::Duration;

use fhenode::crypto::inference::{Activation, Layer, MlpConfig, MlpParams, Model, QuantizedModel};
use fhenode::demo::{dial_address, loopback_config, wait_for_full_mesh};
use fhenode::inference::messages::KEY_PIECE_BYTES;
use fhenode::inference::{InferenceActorError, ModelOptions, Scheme};
use fhenode::node::Node;
use rand::{Rng, SeedableRng};

fn random_layer(rng: &mut impl Rng, inputs: usize, outputs: usize, act: Activation) -> Layer {
    Layer {
        weights: (0..outputs)
            .map(|_| (0..inputs).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
            .collect(),
        biases: (0..outputs).map(|_| rng.gen_range(-0.5f32..0.5)).collect(),
        activation: act,
    }
}

/// What the model node computes for `model` on inputs quantised over [-1, 1], in the clear.
fn quantised_outputs(model: &Model, sample: &[Vec<f32>]) -> Vec<Vec<f64>> {
    let quantised = QuantizedModel::compile(
        model,
        &MlpConfig::with_range(MlpParams::Message2Carry2, -1.0, 1.0),
    )
    .unwrap();
    sample
        .iter()
        .map(|row| quantised.eval_plain(row).unwrap())
        .collect()
}

/// The client node's `inference.memory_budget_bytes`: far below one loaded mlp evaluation key
/// (≈ 120 MB), so any mlp evaluation on the client node itself is refused up front. It never
/// matters for evaluations on the model node, which has the default budget.
const TINY_BUDGET: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_inference_across_two_nodes() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let server = Node::start(loopback_config(dirs[0].path(), vec![]))
        .await
        .unwrap();
    let boot = dial_address(&server, Duration::from_secs(10))
        .await
        .unwrap();
    let mut config = loopback_config(dirs[1].path(), vec![boot]);
    config.inference.memory_budget_bytes = TINY_BUDGET;
    let client = Node::start(config).await.unwrap();
    let nodes = [client, server];
    wait_for_full_mesh(&nodes, Duration::from_secs(30))
        .await
        .unwrap();
    let (client, server) = (&nodes[0], &nodes[1]);
    let model_node = Some(server.peer_id);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);

    // --- linear: a 20→3 affine layer, evaluated on the model node ---------------------------
    let linear = Model {
        layers: vec![random_layer(&mut rng, 20, 3, Activation::None)],
    };
    let info = server
        .inference
        .add_model(
            "affine",
            linear.clone(),
            ModelOptions {
                input_bound: Some(4.0),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        (info.scheme, info.inputs, info.outputs),
        (Scheme::Linear, 20, 3)
    );
    let bound = info.error_bound.unwrap();
    let ctx = client
        .inference
        .create_context(Scheme::Linear)
        .await
        .unwrap();
    let rows: Vec<Vec<f32>> = (0..2)
        .map(|_| (0..20).map(|_| rng.gen_range(-4.0f32..4.0)).collect())
        .collect();
    let cts = client
        .inference
        .encrypt(&ctx.fhe_context_id, "affine", model_node, rows.clone())
        .await
        .unwrap();
    let out = client
        .inference
        .infer(&ctx.fhe_context_id, "affine", model_node, cts.clone())
        .await
        .unwrap();
    assert_eq!(out.result_shape, [2, 3]);
    assert_eq!(out.peer, Some(server.peer_id.to_string()));
    let plain = client
        .inference
        .decrypt(&ctx.fhe_context_id, out.encrypted_result.clone())
        .await
        .unwrap();
    for (row, got) in rows.iter().zip(&plain.values) {
        let want = linear.eval_plain(row).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - *w as f64).abs() <= bound, "{g} vs {w} (bound {bound})");
        }
    }

    // --- refusals: each a clear error, nothing changes -------------------------------------
    let unknown = client
        .inference
        .encrypt(&ctx.fhe_context_id, "nope", model_node, rows.clone())
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), "unknown_model", "{unknown}");
    assert_eq!(unknown.http_status(), 404);
    // The peer's own words, not wrapped twice.
    assert_eq!(
        unknown.to_string().matches("unknown model").count(),
        1,
        "{unknown}"
    );
    let short = client
        .inference
        .encrypt(
            &ctx.fhe_context_id,
            "affine",
            model_node,
            vec![vec![1.0; 7]],
        )
        .await
        .unwrap_err();
    assert_eq!(short.http_status(), 400, "{short}");
    let other = client
        .inference
        .create_context(Scheme::Linear)
        .await
        .unwrap();
    let foreign = client
        .inference
        .infer(&other.fhe_context_id, "affine", model_node, cts.clone())
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), "wrong_context", "{foreign}");
    let foreign = client
        .inference
        .decrypt(&other.fhe_context_id, out.encrypted_result.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(foreign, InferenceActorError::WrongContext(_)),
        "{foreign}"
    );
    let garbage = client
        .inference
        .infer(&ctx.fhe_context_id, "affine", model_node, vec![1, 2, 3])
        .await
        .unwrap_err();
    assert_eq!(garbage.http_status(), 400, "{garbage}");
    let missing = client
        .inference
        .decrypt("ctx_missing", out.encrypted_result.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(missing, InferenceActorError::UnknownContext(_)),
        "{missing}"
    );
    let bad_model = Model {
        layers: vec![
            random_layer(&mut rng, 4, 3, Activation::Relu),
            random_layer(&mut rng, 5, 2, Activation::None),
        ],
    };
    let refused = server
        .inference
        .add_model("bad", bad_model, ModelOptions::default(), false)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("layer 1"), "{refused}");
    // The same ciphertexts still evaluate: nothing was harmed.
    let again = client
        .inference
        .infer(&ctx.fhe_context_id, "affine", model_node, cts)
        .await
        .unwrap();
    assert_eq!(again.result_shape, [2, 3]);

    // --- mlp: 4-8-2 ReLU, activations by PBS on the model node ------------------------------
    let mlp = Model {
        layers: vec![
            random_layer(&mut rng, 4, 8, Activation::Relu),
            random_layer(&mut rng, 8, 2, Activation::None),
        ],
    };
    let options = ModelOptions {
        input_range: Some((-1.0, 1.0)),
        ..Default::default()
    };
    let info = server
        .inference
        .add_model("mlp", mlp.clone(), options.clone(), false)
        .await
        .unwrap();
    assert_eq!(info.scheme, Scheme::Mlp);
    assert!(info.pbs > 0);
    let ctx = client.inference.create_context(Scheme::Mlp).await.unwrap();
    let sample: Vec<Vec<f32>> = vec![vec![0.5, -0.25, 0.75, -1.0], vec![-0.5, 0.9, 0.1, 0.3]];
    let cts = client
        .inference
        .encrypt(&ctx.fhe_context_id, "mlp", model_node, sample.clone())
        .await
        .unwrap();

    // --- over the memory budget: refused up front, the node unharmed -----------------------
    // The same model on the client node, whose budget cannot hold the context's evaluation
    // key: evaluating there is refused before the key is even read from the store.
    client
        .inference
        .add_model("mlp", mlp.clone(), options, false)
        .await
        .unwrap();
    let over = client
        .inference
        .infer(&ctx.fhe_context_id, "mlp", None, cts.clone())
        .await
        .unwrap_err();
    assert!(matches!(over, InferenceActorError::OverBudget(_)), "{over}");
    assert_eq!((over.code(), over.http_status()), ("over_budget", 413));
    assert!(
        over.to_string()
            .contains(&format!("the budget is {TINY_BUDGET}")),
        "{over}"
    );
    let status = client.inference.status().await.unwrap();
    assert_eq!(status.cached_eval_keys, 0, "no key was loaded");
    // Asked over libp2p, the client node refuses at the first step (the spec a peer asks for
    // before it uploads an evaluation key), so no key crosses the network to be refused.
    let over = server
        .inference
        .model_spec("mlp", Some(client.peer_id))
        .await
        .unwrap_err();
    assert_eq!(
        (over.code(), over.http_status()),
        ("over_budget", 413),
        "{over}"
    );
    // The client node still serves: the same ciphertexts evaluate on the model node below.
    let out = client
        .inference
        .infer(&ctx.fhe_context_id, "mlp", model_node, cts)
        .await
        .unwrap();
    assert_eq!(out.result_shape, [2, 2]);
    assert_eq!(out.pbs, 2 * info.pbs as u64);
    let got = client
        .inference
        .decrypt(&ctx.fhe_context_id, out.encrypted_result)
        .await
        .unwrap();
    // The node quantises with the declared range; the same quantised model in the clear.
    assert_eq!(
        got.values,
        quantised_outputs(&mlp, &sample),
        "encrypted result must equal the quantised model"
    );

    // --- sigmoid: lookup-table activations, the same context and uploaded key ---------------
    // A 4-8-2 network whose hidden units are sigmoids, each one programmable bootstrap through
    // a lookup table, on the same model node: the context made above serves this model too,
    // and its evaluation key is already there, so nothing is uploaded again.
    let sigmoid = Model {
        layers: vec![
            random_layer(&mut rng, 4, 8, Activation::Sigmoid),
            random_layer(&mut rng, 8, 2, Activation::None),
        ],
    };
    let info = server
        .inference
        .add_model(
            "sigmoid",
            sigmoid.clone(),
            ModelOptions {
                input_range: Some((-1.0, 1.0)),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!((info.scheme, info.pbs), (Scheme::Mlp, 8));
    assert_eq!(info.activations, ["sigmoid", "none"]);
    let sample: Vec<Vec<f32>> = vec![
        vec![0.9, -0.8, 0.1, 0.4],
        vec![-0.3, 0.6, -0.7, 0.2],
        vec![0.0, 0.0, 0.0, 0.0],
        vec![-1.0, 1.0, 0.5, -0.5],
    ];
    let received = server.metrics.rpc_bytes_received.get();
    let cts = client
        .inference
        .encrypt(&ctx.fhe_context_id, "sigmoid", model_node, sample.clone())
        .await
        .unwrap();
    let out = client
        .inference
        .infer(&ctx.fhe_context_id, "sigmoid", model_node, cts)
        .await
        .unwrap();
    assert_eq!(out.result_shape, [4, 2]);
    assert_eq!(out.pbs, 4 * 8);
    let uploaded = server.metrics.rpc_bytes_received.get() - received;
    assert!(
        uploaded < KEY_PIECE_BYTES as u64,
        "{uploaded} bytes reached the model node: the evaluation key was uploaded again"
    );
    let got = client
        .inference
        .decrypt(&ctx.fhe_context_id, out.encrypted_result)
        .await
        .unwrap();
    let quantised = quantised_outputs(&sigmoid, &sample);
    let argmax = |v: &[f64]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    };
    let mut agree_float = 0;
    for ((row, values), want) in sample.iter().zip(&got.values).zip(&quantised) {
        assert_eq!(argmax(values), argmax(want), "argmax for {row:?}");
        assert_eq!(values, want, "the quantised sigmoid model, exactly");
        let float: Vec<f64> = sigmoid
            .eval_plain(row)
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        agree_float += usize::from(argmax(&float) == argmax(values));
    }
    eprintln!(
        "sigmoid 4-8-2 across two nodes: argmax agrees with the float model on {agree_float}/{}",
        sample.len()
    );

    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
