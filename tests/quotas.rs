//! What one coordinator may make another node hold (#18 item 4), with real nodes in one
//! process on loopback: plans beyond `aggregation.max_pending_bytes` and faster than
//! `aggregation.plans_per_minute_per_peer` are refused before anything is written, and a
//! session its coordinator never ends is dropped with its secrets once its deadlines and
//! `aggregation.expire_grace_secs` have passed, by the next start at the latest.
//! (`aggregation.max_sessions_per_peer` is tested in `tests/sessions.rs`.)

use std::time::Duration;

use fhenode::config::Config;
use fhenode::crypto::Profile;
use fhenode::demo::{dial_address, loopback_config, wait_for_full_mesh};
use fhenode::net::{Request, Response};
use fhenode::node::Node;
use fhenode::session::messages::{self, AggMsg};
use fhenode::session::{SessionPlan, SessionSpec};

const LONG: Duration = Duration::from_secs(60);

/// Three nodes; node `i`'s configuration is changed by `tweak` first.
async fn network(dirs: &[tempfile::TempDir], tweak: impl Fn(usize, &mut Config)) -> Vec<Node> {
    let mut first = loopback_config(dirs[0].path(), vec![]);
    tweak(0, &mut first);
    let first = Node::start(first).await.unwrap();
    let boot = dial_address(&first, LONG).await.unwrap();
    let mut nodes = vec![first];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let mut config = loopback_config(dir.path(), vec![boot.clone()]);
        tweak(i, &mut config);
        nodes.push(Node::start(config).await.unwrap());
    }
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    nodes
}

/// A plan by node 0, committee nodes 0–2 (threshold 2), participants nodes 1 and 2; node 0
/// never runs it: it is only sent.
fn plan(nodes: &[Node], id: &str, length: u64, deadline_secs: u64) -> SessionPlan {
    let peers: Vec<String> = nodes.iter().map(|n| n.peer_id.to_string()).collect();
    SessionSpec {
        id: Some(id.into()),
        length: Some(length),
        committee: peers.clone(),
        threshold: Some(2),
        participants: peers[1..].to_vec(),
        min_participants: Some(2),
        deadline_secs: Some(deadline_secs),
        ..Default::default()
    }
    .validate(nodes[0].peer_id, Profile::Fast)
    .unwrap()
}

/// Node 0 sends `plan` to node `to`: `Ok` when it is stored, else the refusal's code and
/// message.
async fn send(nodes: &[Node], to: usize, plan: &SessionPlan) -> Result<(), (String, String)> {
    let msg = AggMsg::Plan { plan: plan.clone() };
    let request = Request::Aggregation(messages::encode(&msg).unwrap());
    match nodes[0]
        .network
        .request(nodes[to].peer_id, request)
        .await
        .unwrap()
    {
        Response::Aggregation(_) => Ok(()),
        Response::Error { code, message } => Err((code, message)),
        other => panic!("the plan was answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_beyond_a_coordinators_bytes_or_rate_are_refused_and_nothing_is_kept() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = network(&dirs, |i, c| match i {
        // A participant's update of 200,000 values takes about 1 MiB on the wire.
        1 => c.aggregation.max_pending_bytes = 3 << 20,
        2 => c.aggregation.plans_per_minute_per_peer = 3,
        _ => {}
    })
    .await;

    // Node 1: two large sessions fit, the third does not; small ones still do.
    for id in ["big0", "big1"] {
        send(&nodes, 1, &plan(&nodes, id, 200_000, 60))
            .await
            .unwrap();
    }
    let (code, message) = send(&nodes, 1, &plan(&nodes, "big2", 1_000_000, 60))
        .await
        .unwrap_err();
    assert_eq!(code, "quota_exceeded", "{message}");
    assert!(message.contains("max_pending_bytes"), "{message}");
    let unknown = nodes[1].aggregation.get("big2").await.unwrap_err();
    assert_eq!(unknown.code(), "unknown_session");
    send(&nodes, 1, &plan(&nodes, "small", 1_000, 60))
        .await
        .unwrap();

    // Node 2: three new plans a minute; the same plan sent again is no new plan.
    let first = plan(&nodes, "r0", 1_000, 60);
    send(&nodes, 2, &first).await.unwrap();
    for id in ["r1", "r2"] {
        send(&nodes, 2, &plan(&nodes, id, 1_000, 60)).await.unwrap();
    }
    send(&nodes, 2, &first).await.unwrap();
    let (code, message) = send(&nodes, 2, &plan(&nodes, "r3", 1_000, 60))
        .await
        .unwrap_err();
    assert_eq!(code, "rate_limited", "{message}");
    assert!(message.contains("plans_per_minute_per_peer"), "{message}");
    let unknown = nodes[2].aggregation.get("r3").await.unwrap_err();
    assert_eq!(unknown.code(), "unknown_session");
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_its_coordinator_never_ends_is_dropped_with_its_secrets_by_a_restart() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let grace = |_: usize, c: &mut Config| c.aggregation.expire_grace_secs = 0;
    let mut nodes = network(&dirs, grace).await;
    // Node 1 takes part: it draws its key and holds it while the plan's deadlines run.
    send(&nodes, 1, &plan(&nodes, "ghost", 1_000, 1))
        .await
        .unwrap();
    tokio::time::timeout(LONG, async {
        while nodes[1].keys.status().await.unwrap().secrets == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("node 1 never drew its key");
    assert!(nodes[1].aggregation.get("ghost").await.is_ok());

    // Its three deadlines (1 s each) pass while node 1 is down; it starts again.
    let node1 = nodes.remove(1);
    node1.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let boot = dial_address(&nodes[0], LONG).await.unwrap();
    let mut config = loopback_config(dirs[1].path(), vec![boot]);
    grace(1, &mut config);
    let node1 = Node::start(config).await.unwrap();
    tokio::time::timeout(LONG, async {
        while node1.aggregation.get("ghost").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the session never ended was not dropped");
    assert_eq!(node1.keys.status().await.unwrap().secrets, 0);
    assert!(node1.aggregation.list().await.unwrap().is_empty());
    node1.shutdown().await.unwrap();
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
