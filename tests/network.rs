//! Several real nodes in one process on loopback: discovery through a bootstrap peer and
//! Kademlia, and the request-response size limits.

use std::time::Duration;

use fhenode::demo::{dial_address, loopback_config, start_local_network, wait_for_full_mesh};
use fhenode::net::{NetError, Request, Response};
use fhenode::node::Node;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_discover_each_other_and_enforce_size_limits() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut config = loopback_config(dirs[0].path(), vec![]);
    config.p2p.max_request_bytes = 32 * MIB;
    config.p2p.max_response_bytes = 32 * MIB;
    let a = Node::start(config).await.unwrap();
    let boot = dial_address(&a, Duration::from_secs(10)).await.unwrap();

    let mut config = loopback_config(dirs[1].path(), vec![boot.clone()]);
    config.p2p.max_request_bytes = 32 * MIB;
    config.p2p.max_response_bytes = 32 * MIB;
    let b = Node::start(config).await.unwrap();
    // c accepts only small requests: it must refuse b's large one on its own.
    let mut config = loopback_config(dirs[2].path(), vec![boot]);
    config.p2p.max_request_bytes = MIB;
    let c = Node::start(config).await.unwrap();
    let nodes = vec![a, b, c];

    // b and c only know a; Kademlia must introduce them to each other.
    wait_for_full_mesh(&nodes, Duration::from_secs(30))
        .await
        .unwrap();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // 16 MiB: far above libp2p's default request-response limits, within ours.
    let big = vec![0xA5u8; 16 * MIB];
    match b
        .network
        .request(a.peer_id, Request::Echo(big.clone()))
        .await
        .unwrap()
    {
        Response::Echo(back) => assert!(back == big, "echo came back altered"),
        other => panic!("unexpected answer {other:?}"),
    }

    // Above the sender's configured limit: refused before sending.
    let too_big = vec![0u8; 33 * MIB];
    let err = b
        .network
        .request(a.peer_id, Request::Echo(too_big))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::RequestTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("p2p.max_request_bytes"), "{err}");

    // Above the receiver's limit: c drops it, b gets an error, and c keeps working.
    let err = b
        .network
        .request(c.peer_id, Request::Echo(vec![1u8; 2 * MIB]))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Outbound { .. }), "{err}");
    match b
        .network
        .request(c.peer_id, Request::Echo(vec![7u8; 1000]))
        .await
        .unwrap()
    {
        Response::Echo(back) => assert_eq!(back, vec![7u8; 1000]),
        other => panic!("unexpected answer {other:?}"),
    }

    // Malformed requests for an actor are answered with a clear error.
    match a
        .network
        .request(c.peer_id, Request::Inference(vec![1, 2, 3]))
        .await
        .unwrap()
    {
        Response::Error { code, .. } => assert_eq!(code, "bad_input"),
        other => panic!("unexpected answer {other:?}"),
    }

    for node in nodes {
        tokio::time::timeout(Duration::from_secs(10), node.shutdown())
            .await
            .unwrap()
            .unwrap();
    }
}

/// `fhenode bench round` at a small size: every round decrypts within its bound, and the
/// report's medians and per-round figures hold together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_benchmark_reports_medians_of_its_rounds() {
    use fhenode::bench::{run_round_bench, RoundBenchConfig};
    let report = run_round_bench(&RoundBenchConfig {
        profile: fhenode::crypto::Profile::Fast,
        params: 3000,
        participants: 3,
        committee: 2,
        rounds: 2,
    })
    .await
    .unwrap();
    assert_eq!(report.rounds, 2);
    assert_eq!(report.round_s_each.len(), 2);
    assert_eq!(report.plaintext_round_s_each.len(), 2);
    assert!(report.max_abs_error <= report.error_bound, "{report:?}");
    assert!(report.result_delivered_s >= report.round_s, "{report:?}");
    let (lo, hi) = (
        report.round_s_each[0].min(report.round_s_each[1]),
        report.round_s_each[0].max(report.round_s_each[1]),
    );
    assert!((lo..=hi).contains(&report.round_s), "{report:?}");
    assert!(report.round_slowdown_vs_plaintext > 0.0);
    assert!(report.bytes_per_param > 4.0, "{report:?}");
    // The steady rounds ran on prepared encryptions (the bench refuses one that did not).
    assert_eq!(report.steady_round_s_each.len(), 2);
    assert!(report.steady_prepare_s.is_finite(), "{report:?}");
    assert!(report.steady_round_slowdown_vs_plaintext > 0.0);
    assert!(
        report.steady_seal_max_s <= report.steady_round_s,
        "{report:?}"
    );
    assert!(report.wire_floor_round_s > 0.0, "{report:?}");
    assert!(report.wire_floor_cpu_vs_plaintext.is_finite(), "{report:?}");
}

/// A node that fails to start (its API port is taken) leaves nothing running: the actors it
/// had spawned let go of the store, so the same data directory starts cleanly right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_stops_what_it_had_started() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = loopback_config(dir.path(), vec![]);
    config.api.listen = taken.local_addr().unwrap();
    let failed = Node::start(config).await;
    assert!(
        matches!(failed, Err(fhenode::node::NodeError::ApiBind { .. })),
        "{:?}",
        failed.err()
    );
    // The store's open waits a moment for a lock that is being let go of, not for one held.
    let node = Node::start(loopback_config(dir.path(), vec![]))
        .await
        .unwrap_or_else(|e| panic!("the failed start still holds the data directory: {e}"));
    node.shutdown().await.unwrap();
}

/// A node started without bootstrap peers (the first node of a network) that restarts, at
/// another port, finds its peers by itself: it redials the addresses its address book
/// recorded (#18 item 3), where before it waited to be found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_without_bootstrap_peers_redials_the_peers_it_knew() {
    let (dirs, nodes) = start_local_network(2).await.unwrap();
    wait_for_full_mesh(&nodes, Duration::from_secs(30))
        .await
        .unwrap();
    let mut nodes = nodes.into_iter();
    let (first, second) = (nodes.next().unwrap(), nodes.next().unwrap());
    let first_id = first.peer_id;
    // The book is written as peers identify themselves: give it a moment, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.shutdown().await.unwrap();

    let again = Node::start(loopback_config(dirs[0].path(), vec![]))
        .await
        .unwrap();
    assert_eq!(again.peer_id, first_id);
    let nodes = [again, second];
    let took = wait_for_full_mesh(&nodes, Duration::from_secs(30))
        .await
        .expect("the restarted node never found the peer it knew");
    println!("back in the mesh {} ms after its start", took.as_millis());
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
