//! `fhenode demo`: a local network of nodes in one process, on loopback, with temporary stores.

use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::crypto::Profile;
use crate::node::{Node, NodeError};
use crate::session::{Phase, ResultKind, SessionError, SessionInfo, SessionResult, SessionSpec};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("demo: {0}")]
    Failed(String),
}

/// A configuration for a node that lives only on loopback: ephemeral ports, no mDNS.
pub fn loopback_config(data_dir: &std::path::Path, bootstrap: Vec<Multiaddr>) -> Config {
    let defaults = Config::default();
    Config {
        data_dir: data_dir.to_path_buf(),
        p2p: crate::config::P2pConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr")],
            bootstrap,
            mdns: false,
            ..defaults.p2p
        },
        api: crate::config::ApiConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..defaults.api
        },
        ..defaults
    }
}

/// Waits until the node listens somewhere and returns a dialable address with `/p2p/<id>`.
pub async fn dial_address(node: &Node, timeout: Duration) -> Result<Multiaddr, DemoError> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = node
            .network
            .status()
            .await
            .map_err(|e| DemoError::Failed(e.to_string()))?;
        if let Some(addr) = status
            .listen_addrs
            .iter()
            .find_map(|a| a.parse::<Multiaddr>().ok())
        {
            return Ok(addr.with(Protocol::P2p(node.peer_id)));
        }
        if Instant::now() > deadline {
            return Err(DemoError::Failed("node did not start listening".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `count` nodes on loopback with temporary stores, all bootstrapping from the first.
/// The directories are returned with the nodes: keep them until the nodes are shut down.
pub async fn start_local_network(
    count: usize,
) -> Result<(Vec<tempfile::TempDir>, Vec<Node>), DemoError> {
    start_local_network_with(count, |_, _| {}).await
}

/// [`start_local_network`], node `i`'s configuration changed by `tweak` first.
pub async fn start_local_network_with(
    count: usize,
    tweak: impl Fn(usize, &mut Config),
) -> Result<(Vec<tempfile::TempDir>, Vec<Node>), DemoError> {
    let dirs: Vec<_> = (0..count)
        .map(|_| tempfile::tempdir().map_err(fail))
        .collect::<Result<_, _>>()?;
    let mut nodes: Vec<Node> = Vec::with_capacity(count);
    let mut boot = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut config = loopback_config(dir.path(), boot.clone());
        tweak(i, &mut config);
        let node = Node::start(config).await?;
        if i == 0 {
            boot = vec![dial_address(&node, Duration::from_secs(10)).await?];
        }
        nodes.push(node);
    }
    Ok((dirs, nodes))
}

/// Waits until every node is connected to every other one.
pub async fn wait_for_full_mesh(nodes: &[Node], timeout: Duration) -> Result<Duration, DemoError> {
    let start = Instant::now();
    loop {
        let mut complete = true;
        for node in nodes {
            let peers = node
                .network
                .peers()
                .await
                .map_err(|e| DemoError::Failed(e.to_string()))?;
            let others = nodes.iter().filter(|n| n.peer_id != node.peer_id);
            if !others
                .into_iter()
                .all(|o| peers.iter().any(|p| p.peer_id == o.peer_id.to_string()))
            {
                complete = false;
                break;
            }
        }
        if complete {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(DemoError::Failed(format!(
                "nodes did not all discover each other within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub nodes: usize,
    pub committee: usize,
    pub params: usize,
    pub profile: Profile,
    /// Seconds the session waits for the participant that never submits.
    pub deadline_secs: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            nodes: 5,
            committee: 3,
            params: 100_000,
            profile: Profile::Secure,
            deadline_secs: 5,
        }
    }
}

fn fail(what: impl std::fmt::Display) -> DemoError {
    DemoError::Failed(what.to_string())
}

/// Starts `nodes` nodes that bootstrap from the first and runs one secure-aggregation session:
/// node 0 coordinates, the first `committee` nodes hold the key, every node is a participant,
/// and the last one never submits. Checks the decrypted mean against the plaintext mean.
pub async fn run(options: &DemoOptions) -> Result<DemoReport, DemoError> {
    let count = options.nodes;
    if count < 2 || options.committee == 0 || options.committee > count {
        return Err(fail(
            "the demo needs at least 2 nodes and 1..=nodes committee members",
        ));
    }
    let start = Instant::now();
    let (_dirs, nodes) = start_local_network(count).await?;
    println!(
        "[network]    started {count} nodes on loopback in {:.0?}",
        start.elapsed()
    );
    let took = wait_for_full_mesh(&nodes, Duration::from_secs(30)).await?;
    println!("[network]    all nodes discovered each other in {took:.0?} (bootstrap + Kademlia)");

    let bytes_before = received_bytes(&nodes);
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.to_string()).collect();
    let spec = SessionSpec {
        id: Some("demo".into()),
        length: Some(options.params as u64),
        profile: Some(options.profile),
        committee: ids[..options.committee].to_vec(),
        // One member may be absent at decryption once the committee has three.
        threshold: Some(if options.committee >= 3 {
            options.committee as u32 - 1
        } else {
            options.committee as u32
        }),
        participants: ids.clone(),
        min_participants: Some((count - 1) as u32),
        deadline_secs: Some(options.deadline_secs),
        result: ResultKind::Mean,
        ..Default::default()
    };
    let coordinator = &nodes[0];
    let t = Instant::now();
    let info = coordinator.aggregation.create(spec).await.map_err(fail)?;
    println!(
        "[proposed]   session `{}`: {} parameters, profile {}, committee of {} (threshold {}), {} participants (min {})",
        info.id, info.length, info.profile, info.committee, info.threshold, info.participants, info.min_participants
    );
    wait_phase(
        coordinator,
        &info.id,
        |p| p >= Phase::Collecting,
        Duration::from_secs(60),
    )
    .await?;
    // Each participant draws its one-time key and sends every member its seeds; a body goes
    // out once at least `threshold` members hold them.
    for node in &nodes[..count - 1] {
        let t = info.threshold as usize;
        wait_info(
            node,
            &info.id,
            |i| i.seeds_delivered >= t,
            Duration::from_secs(60),
        )
        .await?;
    }
    println!(
        "[collecting] plan stored by the committee; every participant drew a one-time key and its seeds reached the committee in {:.0?}",
        t.elapsed()
    );

    // Every participant but the last submits a random update.
    let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
    let updates: Vec<Vec<f32>> = (0..count - 1)
        .map(|_| {
            (0..options.params)
                .map(|_| rng.gen_range(-1.0f32..1.0))
                .collect()
        })
        .collect();
    let t = Instant::now();
    let submits = nodes[..count - 1]
        .iter()
        .zip(&updates)
        .map(|(node, update)| node.aggregation.submit(&info.id, update.clone()));
    let receipts = futures::future::join_all(submits).await;
    let mut sent = 0u64;
    for (i, r) in receipts.into_iter().enumerate() {
        let r = r.map_err(|e| fail(format!("participant {i}: {e}")))?;
        sent += r.bytes_sent;
        if i == 0 {
            // Prepared when the session opened: only the values were added at submission.
            let how = if r.prepared {
                "sealed its prepared encryption of"
            } else {
                "encrypted"
            };
            println!(
                "[collecting] participant 0 {how} {} values in {:.1} ms and uploaded {:.2} MB ({:.1} B/param) in {:.1} ms",
                r.values,
                r.encrypt_ms,
                r.bytes_sent as f64 / 1e6,
                r.bytes_sent as f64 / r.values as f64,
                r.upload_ms
            );
        }
    }
    println!(
        "[collecting] {} of {count} participants submitted {:.2} MB in {:.0?}; participant {} stays silent",
        count - 1,
        sent as f64 / 1e6,
        t.elapsed(),
        count - 1
    );
    let t = Instant::now();
    wait_phase(
        coordinator,
        &info.id,
        Phase::is_terminal,
        Duration::from_secs(options.deadline_secs + 120),
    )
    .await?;
    let done = coordinator.aggregation.get(&info.id).await.map_err(fail)?;
    if done.phase != Phase::Done {
        return Err(fail(format!(
            "session ended {}: {:?}",
            done.phase, done.failure
        )));
    }
    let tm = &done.timings;
    let span = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => format!("{} ms", b.saturating_sub(a)),
        _ => "?".into(),
    };
    println!(
        "[closing]    deadline reached after {:.0?}: summing {} contributions took {}",
        t.elapsed(),
        done.submissions,
        span(tm.closed_ms, tm.decrypting_ms)
    );
    println!(
        "[decrypting] {} of {} committee members released the keys of the sum (one contributor set, once); combine and decode: {}",
        done.releases,
        done.committee,
        span(tm.decrypting_ms, tm.finished_ms)
    );
    let result = coordinator
        .aggregation
        .result(&info.id)
        .await
        .map_err(fail)?;
    let k = updates.len() as f64;
    let mut max_error = 0f64;
    for (j, value) in result.values.iter().enumerate() {
        let exact: f64 = updates.iter().map(|u| u[j] as f64).sum::<f64>() / k;
        max_error = max_error.max((value - exact).abs());
    }
    let bytes_moved = received_bytes(&nodes) - bytes_before;
    println!(
        "[done]       mean of {} contributors, {} clipped values; max |error| vs plaintext mean = {max_error:.3e} (bound {:.3e})",
        result.contributors, result.clipped, result.error_bound
    );
    println!(
        "[done]       {:.2} MB moved between nodes over /fhenode/rpc/1",
        bytes_moved as f64 / 1e6
    );
    // The result reaches the participants too.
    let pushed = wait_result(&nodes[1], &info.id, Duration::from_secs(30)).await?;
    if pushed != result {
        return Err(fail("a participant received a different result"));
    }
    let inference_error = demo_inference(&nodes[0], &nodes[1]).await?;
    let report = DemoReport {
        max_error,
        error_bound: result.error_bound,
        contributors: result.contributors,
        bytes_moved,
        inference_max_error: inference_error,
    };
    for node in nodes {
        node.shutdown().await?;
    }
    println!("[stopped]    all nodes stopped cleanly");
    if result.contributors as usize != count - 1 || max_error > result.error_bound {
        return Err(fail(format!(
            "check failed: {} contributors, max error {max_error:e} > bound {:e}",
            result.contributors, result.error_bound
        )));
    }
    Ok(report)
}

#[derive(Clone, Debug)]
pub struct DemoReport {
    pub max_error: f64,
    pub error_bound: f64,
    pub contributors: u32,
    pub bytes_moved: u64,
    /// Largest |decrypted − float model| of the encrypted inference.
    pub inference_max_error: f64,
}

/// One encrypted inference across two nodes: `server` registers a 784→10 linear model (an
/// MNIST-sized logistic regression), `client` encrypts an input under its own context, the
/// server evaluates it over libp2p, the client decrypts and checks against the float model.
/// Returns the largest error; fails if it exceeds the model's bound.
async fn demo_inference(client: &Node, server: &Node) -> Result<f64, DemoError> {
    use crate::crypto::inference::Model;
    use crate::inference::{ModelOptions, Scheme};
    use rand::{Rng, SeedableRng};

    let mut rng = rand::rngs::StdRng::seed_from_u64(784);
    let weights: Vec<Vec<f32>> = (0..10)
        .map(|_| (0..784).map(|_| rng.gen_range(-0.1f32..0.1)).collect())
        .collect();
    let biases: Vec<f32> = (0..10).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let model = Model::linear(weights, biases);
    let input: Vec<f32> = (0..784).map(|_| rng.gen_range(0.0f32..1.0)).collect();
    let options = ModelOptions {
        input_bound: Some(1.0),
        ..Default::default()
    };
    let info = server
        .inference
        .add_model("demo-logreg", model.clone(), options, false)
        .await
        .map_err(fail)?;
    let start = Instant::now();
    let ctx = client
        .inference
        .create_context(Scheme::Linear)
        .await
        .map_err(fail)?;
    let keygen = start.elapsed();
    let t = Instant::now();
    let cts = client
        .inference
        .encrypt(
            &ctx.fhe_context_id,
            &info.name,
            Some(server.peer_id),
            vec![input.clone()],
        )
        .await
        .map_err(fail)?;
    let encrypt = t.elapsed();
    let t = Instant::now();
    let out = client
        .inference
        .infer(
            &ctx.fhe_context_id,
            &info.name,
            Some(server.peer_id),
            cts.clone(),
        )
        .await
        .map_err(fail)?;
    let round_trip = t.elapsed();
    let t = Instant::now();
    let plain = client
        .inference
        .decrypt(&ctx.fhe_context_id, out.encrypted_result.clone())
        .await
        .map_err(fail)?;
    let decrypt = t.elapsed();
    let want = model.eval_plain(&input).map_err(fail)?;
    let got = plain.values.first().cloned().unwrap_or_default();
    let max_error = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - *w as f64).abs())
        .fold(0f64, f64::max);
    let bound = info.error_bound.unwrap_or(0.0);
    println!(
        "[inference]  784→10 linear model on {}: key {keygen:.0?}, encrypt {encrypt:.1?} ({} B), evaluate {:.2} ms on the model node, round trip {round_trip:.1?} ({} B back), decrypt {decrypt:.1?}",
        server.peer_id,
        cts.len(),
        out.computation_time_ms,
        out.encrypted_result.len(),
    );
    println!("[inference]  max |error| vs the float model = {max_error:.3e} (bound {bound:.3e})");
    if got.len() != want.len() || max_error > bound {
        return Err(fail(format!(
            "inference check failed: {} outputs, max error {max_error:e} > bound {bound:e}",
            got.len()
        )));
    }
    Ok(max_error)
}

fn received_bytes(nodes: &[Node]) -> u64 {
    nodes
        .iter()
        .map(|n| n.metrics.rpc_bytes_received.get())
        .sum()
}

/// Polls a session until its phase satisfies `done`.
pub async fn wait_phase(
    node: &Node,
    id: &str,
    done: impl Fn(Phase) -> bool,
    timeout: Duration,
) -> Result<Phase, DemoError> {
    wait_info(node, id, |info| done(info.phase), timeout)
        .await
        .map(|info| info.phase)
}

/// Polls a node until its view of session `id` satisfies `done`, and returns that view.
pub async fn wait_info(
    node: &Node,
    id: &str,
    done: impl Fn(&SessionInfo) -> bool,
    timeout: Duration,
) -> Result<SessionInfo, DemoError> {
    let start = Instant::now();
    loop {
        // A participant or member learns of a session when its plan arrives.
        let info = match node.aggregation.get(id).await {
            Ok(info) => Some(info),
            Err(SessionError::UnknownSession(_)) if start.elapsed() < timeout => None,
            Err(e) => return Err(fail(e)),
        };
        if let Some(info) = info {
            if done(&info) {
                return Ok(info);
            }
            if start.elapsed() > timeout {
                return Err(fail(format!(
                    "session `{id}` stuck in {} ({:?}, prepared: {})",
                    info.phase, info.failure, info.prepared
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls a node until it holds the session's result.
pub async fn wait_result(
    node: &Node,
    id: &str,
    timeout: Duration,
) -> Result<SessionResult, DemoError> {
    let start = Instant::now();
    loop {
        match node.aggregation.result(id).await {
            Ok(r) => return Ok(r),
            Err(e) if start.elapsed() > timeout => return Err(fail(e)),
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}
