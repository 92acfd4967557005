//! Federated training across three real nodes in one process on loopback, through each node's
//! HTTP API: named tensors in three formats and three key orders, a weighted mean, the
//! refusals a participant's own node gives before anything is sealed, and a multi-round series
//! across a coordinator's and a participant's restart.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use fhenode::client::{ApiClient, ClientError, UpdateFormat};
use fhenode::crypto::Profile;
use fhenode::demo::{
    dial_address, loopback_config, start_local_network, wait_for_full_mesh, wait_info, wait_result,
};
use fhenode::node::Node;
use fhenode::session::series::SeriesSpec;
use fhenode::session::{Phase, ResultKind, SessionSpec};
use half::f16;
use safetensors::tensor::{Dtype, TensorView};

const LONG: Duration = Duration::from_secs(60);

fn client(node: &Node) -> ApiClient {
    ApiClient::new(&format!("http://{}", node.api_addr), None).unwrap()
}

/// The error code a refused call came back with.
fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Api { code, .. }) => code,
        other => panic!("not an API refusal: {other:?}"),
    }
}

fn le<T: Copy, const N: usize>(values: &[T], bytes: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| bytes(v)).collect()
}

/// A safetensors file of `(name, dtype, shape, bytes)`, in this order.
fn safetensors_file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// An `.npy` file of little-endian data with this NumPy dtype string.
fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: String = shape.iter().map(|d| format!("{d}, ")).collect();
    let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    let mut file = b"\x93NUMPY\x01\x00".to_vec();
    file.extend_from_slice(&(header.len() as u16).to_le_bytes());
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(data);
    file
}

fn npz(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, file) in members {
        zip.start_file(format!("{name}.npy"), options).unwrap();
        zip.write_all(file).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// `(w [2,3], b [3], scale [])` of participant `i`: multiples of 1/4, exact in every dtype.
fn tensors_of(i: usize) -> (Vec<f32>, Vec<f64>, f32) {
    let w = (0..6).map(|j| (i * 6 + j) as f32 * 0.25 - 2.0).collect();
    let b = (0..3).map(|j| (j as f64 - i as f64) * 0.5).collect();
    (w, b, 1.0 + i as f32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_tensors_and_a_weighted_mean_through_the_api() {
    let (_dirs, nodes) = start_local_network(3).await.unwrap();
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    let clients: Vec<ApiClient> = nodes.iter().map(client).collect();
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.to_string()).collect();

    // --- named tensors --------------------------------------------------------------------
    let shapes = BTreeMap::from([
        ("layer.w".to_string(), vec![2, 3]),
        ("layer.b".to_string(), vec![3]),
        ("scale".to_string(), vec![]),
    ]);
    let spec = SessionSpec {
        id: Some("named".into()),
        shapes: Some(shapes.clone()),
        profile: Some(Profile::Fast),
        committee: ids.clone(),
        threshold: Some(2),
        participants: ids.clone(),
        ..Default::default()
    };
    let info = clients[0].create_session(&spec).await.unwrap();
    assert_eq!((info.length, info.shapes.as_ref()), (10, Some(&shapes)));
    for node in &nodes {
        wait_info(node, "named", |i| i.seeds_delivered >= 2, LONG)
            .await
            .unwrap();
    }

    // A body longer than any update of this 10-value session can be is refused unread: the
    // session's own limit (40 bytes a value in JSON, and 1 MiB), not api.max_body_bytes.
    let oversized = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/sessions/named/update",
            nodes[1].api_addr
        ))
        .header("content-type", "application/json")
        .body(vec![b' '; (1 << 20) + 401])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    let refusal: serde_json::Value = oversized.json().await.unwrap();
    assert_eq!(refusal["error"]["code"], "payload_too_large");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(message.contains("session `named` (10 values)"), "{message}");

    // Participant 0: safetensors, f32 / f64 / f16, in another order than the names.
    let (w0, b0, s0) = tensors_of(0);
    let file = |extra: Option<(&str, Dtype, Vec<usize>, Vec<u8>)>, skip_b: bool| {
        let mut tensors = vec![
            (
                "scale",
                Dtype::F16,
                vec![],
                le(&[f16::from_f32(s0)], f16::to_le_bytes),
            ),
            ("layer.w", Dtype::F32, vec![2, 3], le(&w0, f32::to_le_bytes)),
        ];
        if !skip_b {
            tensors.insert(
                1,
                ("layer.b", Dtype::F64, vec![3], le(&b0, f64::to_le_bytes)),
            );
        }
        tensors.extend(extra);
        safetensors_file(&tensors)
    };
    // Refusals by the participant's own node leave its one submission unused.
    let counter = (
        "bn.num_batches_tracked",
        Dtype::I64,
        vec![],
        7i64.to_le_bytes().to_vec(),
    );
    let refused = clients[0]
        .submit_update(
            "named",
            UpdateFormat::Safetensors,
            file(Some(counter), false),
            None,
        )
        .await;
    let Err(ClientError::Api {
        code: refusal,
        message,
        ..
    }) = refused
    else {
        panic!("{refused:?}")
    };
    assert_eq!(refusal, "bad_input");
    assert!(
        message.contains("`bn.num_batches_tracked` has integer dtype int64"),
        "{message}"
    );
    let missing = clients[0]
        .submit_update("named", UpdateFormat::Safetensors, file(None, true), None)
        .await;
    assert_eq!(code(missing), "bad_input");
    let torn = clients[0]
        .submit_update("named", UpdateFormat::Raw, vec![0; 3], None)
        .await;
    assert_eq!(code(torn), "bad_input");
    let weighted = clients[0]
        .submit_update(
            "named",
            UpdateFormat::Safetensors,
            file(None, false),
            Some(3.0),
        )
        .await;
    assert_eq!(code(weighted), "bad_input");
    clients[0]
        .submit_update("named", UpdateFormat::Safetensors, file(None, false), None)
        .await
        .unwrap();

    // Participant 1: an .npz (numpy.savez_compressed), members in yet another order.
    let (w1, b1, s1) = tensors_of(1);
    let archive = npz(&[
        ("layer.b", npy("<f8", &[3], &le(&b1, f64::to_le_bytes))),
        ("scale", npy("<f4", &[], &s1.to_le_bytes())),
        ("layer.w", npy("<f4", &[2, 3], &le(&w1, f32::to_le_bytes))),
    ]);
    clients[1]
        .submit_update("named", UpdateFormat::Npz, archive, None)
        .await
        .unwrap();

    // Participant 2: JSON nested lists.
    let (w2, b2, s2) = tensors_of(2);
    let json = serde_json::json!({"tensors": {
        "scale": s2,
        "layer.w": [[w2[0], w2[1], w2[2]], [w2[3], w2[4], w2[5]]],
        "layer.b": b2,
    }});
    clients[2]
        .submit_update(
            "named",
            UpdateFormat::Json,
            json.to_string().into_bytes(),
            None,
        )
        .await
        .unwrap();

    wait_result(&nodes[1], "named", LONG).await.unwrap();
    let bytes = clients[1].result_safetensors("named").await.unwrap();
    let result = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = metadata.metadata().clone().unwrap();
    let bound: f64 = metadata["error_bound"].parse().unwrap();
    assert_eq!(metadata["contributors"], "3");
    let read = |name: &str| -> Vec<f64> {
        let view = result.tensor(name).unwrap();
        assert_eq!(view.dtype(), Dtype::F64);
        view.data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let mean = |xs: [f64; 3]| xs.iter().sum::<f64>() / 3.0;
    let close = |got: &[f64], want: &[f64]| {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= bound + 1e-12,
                "{got:?} vs {want:?} (bound {bound})"
            );
        }
    };
    let w_mean: Vec<f64> = (0..6)
        .map(|j| mean([w0[j] as f64, w1[j] as f64, w2[j] as f64]))
        .collect();
    close(&read("layer.w"), &w_mean);
    assert_eq!(result.tensor("layer.w").unwrap().shape(), &[2, 3]);
    close(
        &read("layer.b"),
        &(0..3)
            .map(|j| mean([b0[j], b1[j], b2[j]]))
            .collect::<Vec<_>>(),
    );
    close(&read("scale"), &[mean([s0 as f64, s1 as f64, s2 as f64])]);
    assert_eq!(result.tensor("scale").unwrap().shape(), &[] as &[usize]);
    // JSON: the tensors as nested lists beside the flat values.
    let json = clients[2].result_json("named").await.unwrap();
    assert_eq!(json["tensors"]["layer.w"].as_array().unwrap().len(), 2);
    assert!(json["tensors"]["scale"].is_f64(), "{}", json["tensors"]);
    assert_eq!(json["values"].as_array().unwrap().len(), 10);

    // --- weighted mean ----------------------------------------------------------------------
    let spec = SessionSpec {
        id: Some("weighted".into()),
        length: Some(4),
        profile: Some(Profile::Fast),
        committee: ids.clone(),
        threshold: Some(2),
        participants: ids.clone(),
        result: ResultKind::WeightedMean,
        max_weight: Some(100),
        ..Default::default()
    };
    let info = clients[0].create_session(&spec).await.unwrap();
    assert_eq!(info.max_weight, Some(100));
    for node in &nodes {
        wait_info(node, "weighted", |i| i.seeds_delivered >= 2, LONG)
            .await
            .unwrap();
    }
    let updates = [
        [1.0f32, -2.0, 0.5, 8.0],
        [3.0, 2.0, -0.25, -1.0],
        [-1.0, 0.0, 0.75, 9.5], // 9.5 is clipped to 8
    ];
    let weights = [10.0, 20.0, 70.0];
    let raw = |u: &[f32]| le(u, f32::to_le_bytes);
    for bad in [None, Some(101.0), Some(2.5), Some(0.0)] {
        let r = clients[0]
            .submit_update("weighted", UpdateFormat::Raw, raw(&updates[0]), bad)
            .await;
        assert_eq!(code(r), "bad_input", "weight {bad:?}");
    }
    let twice = serde_json::json!({"values": updates[0], "weight": 10});
    let r = clients[0]
        .submit_update(
            "weighted",
            UpdateFormat::Json,
            twice.to_string().into_bytes(),
            Some(10.0),
        )
        .await;
    assert_eq!(code(r), "bad_input");
    clients[0]
        .submit_update(
            "weighted",
            UpdateFormat::Json,
            twice.to_string().into_bytes(),
            None,
        )
        .await
        .unwrap();
    for i in 1..3 {
        let receipt = clients[i]
            .submit_update(
                "weighted",
                UpdateFormat::Raw,
                raw(&updates[i]),
                Some(weights[i]),
            )
            .await
            .unwrap();
        assert_eq!(receipt.clipped, (i == 2) as u64, "{receipt:?}");
    }
    let result = wait_result(&nodes[0], "weighted", LONG).await.unwrap();
    assert_eq!(result.total_weight, Some(100.0));
    assert_eq!(result.kind, ResultKind::WeightedMean);
    assert_eq!(result.clipped, 1);
    for (j, got) in result.values.iter().enumerate() {
        let want: f64 = (0..3)
            .map(|i| weights[i] * updates[i][j].clamp(-8.0, 8.0) as f64)
            .sum::<f64>()
            / 100.0;
        assert!(
            (got - want).abs() <= result.error_bound + 1e-12,
            "value {j}: {got} vs {want}"
        );
    }
    let raw_result = clients[2].result_raw("weighted").await.unwrap();
    assert_eq!(
        (raw_result.kind.as_str(), raw_result.total_weight),
        ("weighted_mean", Some(100.0))
    );

    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// `count` values of participant `i` in round `round`.
fn round_update(i: usize, round: u32, count: usize) -> Vec<f32> {
    (0..count)
        .map(|j| (i as f32 - 1.0) * 0.5 + round as f32 + j as f32 * 0.125)
        .collect()
}

/// Waits until `node` may submit to `session`, then submits its update for `round`.
async fn submit_round(node: &Node, session: &str, i: usize, round: u32) {
    if let Err(e) = wait_info(node, session, |s| s.seeds_delivered >= 2, LONG).await {
        panic!("participant {i} cannot submit to {session}: {e}");
    }
    node.aggregation
        .submit(session, round_update(i, round, 4))
        .await
        .unwrap();
}

/// A series of three rounds: the coordinator restarts before round 1's submissions (and
/// resumes the series), and a participant restarts between rounds 1 and 2 and takes part in
/// round 2; every round's mean is right and the series reports each round done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_runs_its_rounds_across_restarts() {
    let (dirs, nodes) = start_local_network(3).await.unwrap();
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.to_string()).collect();
    let spec: SeriesSpec = serde_json::from_value(serde_json::json!({
        "id": "fl",
        "rounds": 3,
        "length": 4,
        "profile": "fast",
        "committee": ids,
        "threshold": 2,
        "participants": ids,
        "deadline_secs": 60,
    }))
    .unwrap();
    let info = client(&nodes[0]).create_series(&spec).await.unwrap();
    assert_eq!((info.planned_rounds, info.rounds.len()), (3, 1));
    assert_eq!(info.rounds[0].session, "fl-1");
    let again = client(&nodes[0]).create_series(&spec).await;
    assert_eq!(code(again), "duplicate");
    let bad: SeriesSpec = serde_json::from_value(serde_json::json!({
        "rounds": 2, "length": 4, "committee": [], "participants": ids,
    }))
    .unwrap();
    assert_eq!(
        code(client(&nodes[0]).create_series(&bad).await),
        "invalid_spec"
    );

    // The coordinator restarts with round 1 open: the series resumes from its record. (Once
    // every member holds every participant's seeds: seeds in flight to a restarting member are
    // not delivered again, a limit of seed delivery, not of series.)
    for node in &nodes {
        wait_info(node, "fl-1", |s| s.seeds_delivered == 3, LONG)
            .await
            .unwrap();
    }
    let mut nodes = nodes;
    let boot = dial_address(&nodes[1], LONG).await.unwrap();
    let coordinator = nodes.remove(0);
    coordinator.shutdown().await.unwrap();
    nodes.insert(
        0,
        Node::start(loopback_config(dirs[0].path(), vec![boot]))
            .await
            .unwrap(),
    );
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    for (i, node) in nodes.iter().enumerate() {
        submit_round(node, "fl-1", i, 1).await;
    }
    wait_result(&nodes[2], "fl-1", LONG).await.unwrap();

    // Participant 2 restarts between rounds 1 and 2.
    let boot = dial_address(&nodes[0], LONG).await.unwrap();
    let participant = nodes.pop().unwrap();
    participant.shutdown().await.unwrap();
    nodes.push(
        Node::start(loopback_config(dirs[2].path(), vec![boot]))
            .await
            .unwrap(),
    );
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    for round in 2..=3u32 {
        let session = format!("fl-{round}");
        for (i, node) in nodes.iter().enumerate() {
            submit_round(node, &session, i, round).await;
        }
        let result = wait_result(&nodes[2], &session, LONG).await.unwrap();
        assert_eq!(result.contributors, 3, "round {round}");
        for (j, got) in result.values.iter().enumerate() {
            let want: f64 = (0..3)
                .map(|i| round_update(i, round, 4)[j] as f64)
                .sum::<f64>()
                / 3.0;
            assert!(
                (got - want).abs() <= result.error_bound,
                "round {round}: {got} vs {want}"
            );
        }
    }
    let series = wait_for("the series to finish", LONG, || async {
        let s = client(&nodes[0]).series("fl").await.ok()?;
        s.finished.then_some(s)
    })
    .await;
    assert_eq!(series.failure, None);
    let phases: Vec<(u32, &str, Phase)> = series
        .rounds
        .iter()
        .map(|r| (r.round, r.session.as_str(), r.phase))
        .collect();
    assert_eq!(
        phases,
        vec![
            (1, "fl-1", Phase::Done),
            (2, "fl-2", Phase::Done),
            (3, "fl-3", Phase::Done)
        ]
    );
    assert!(series.rounds.iter().all(|r| r.submissions == 3));
    assert_eq!(
        code(client(&nodes[1]).series("fl").await),
        "unknown_session"
    );
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// Polls `probe` until it gives a value, failing after `timeout`.
async fn wait_for<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    probe: impl Fn() -> F,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
