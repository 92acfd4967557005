//! Secure aggregation across six real nodes in one process on loopback: sum and mean against
//! the plaintext, a silent participant, too few participants, refused submissions, and a
//! committee that decrypts only once.

use std::sync::Arc;
use std::time::Duration;

use fhenode::crypto::{Accumulator, Profile, PublicKeyShare};
use fhenode::demo::{start_local_network, wait_for_full_mesh, wait_info, wait_phase, wait_result};
use fhenode::net::{Request, Response};
use fhenode::node::Node;
use fhenode::session::messages::{self, AggMsg};
use fhenode::session::{Coordinated, Phase, ResultKind, SessionError, SessionSpec};
use fhenode::store::trees;
use rand::{Rng, SeedableRng};

const LONG: Duration = Duration::from_secs(60);

fn ids(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().map(|n| n.peer_id.to_string()).collect()
}

/// The refusal `to` answers `msg` from `from` with: (code, message). Any other answer fails.
async fn refusal(from: &Node, to: &Node, msg: &AggMsg) -> (String, String) {
    let request = Request::Aggregation(messages::encode(msg).unwrap());
    match from.network.request(to.peer_id, request).await.unwrap() {
        Response::Error { code, message } => (code, message),
        other => panic!("`{}` was answered: {other:?}", msg.kind()),
    }
}

fn updates(count: usize, length: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| (0..length).map(|_| rng.gen_range(-10.0f32..10.0)).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_across_six_nodes() {
    let (_dirs, nodes) = start_local_network(6).await.unwrap();
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    let n: Vec<&Node> = nodes.iter().collect();
    let coordinator = n[0];

    // --- mean, secure profile; participant 5 never submits: closes at the deadline ---------
    let length = 5000;
    let spec = SessionSpec {
        id: Some("mean".into()),
        length: Some(length as u64),
        committee: ids(&n[1..4]),
        participants: ids(&n[1..6]),
        min_participants: Some(3),
        deadline_secs: Some(3),
        result: ResultKind::Mean,
        clip: Some(8.0),
        ..Default::default()
    };
    let info = coordinator.aggregation.create(spec).await.unwrap();
    assert_eq!(info.profile, "secure");
    wait_phase(coordinator, "mean", |p| p >= Phase::Collecting, LONG)
        .await
        .unwrap();
    // What a dishonest coordinator holds, for the second decryption request below: the
    // session state and the key shares stored beside it (dropped once the session is over).
    let mut state: Coordinated = coordinator
        .store
        .get(trees::SESSIONS, b"coord/mean")
        .unwrap()
        .expect("the coordinator keeps the session state");
    let shares: Vec<PublicKeyShare> = coordinator
        .store
        .get(trees::SESSIONS, b"coord-shares/mean")
        .unwrap()
        .expect("the coordinator keeps the key shares");
    state.shares = shares
        .into_iter()
        .map(|s| (s.member, Arc::new(s)))
        .collect();
    let key = state.collective_key().unwrap();

    let data = updates(4, length, 1);
    // A NaN is refused before the participant's prepared encryption is used up: the next
    // submission is sealed into it.
    let mut with_nan = data[0].clone();
    with_nan[17] = f32::NAN;
    let nan = n[1].aggregation.submit("mean", with_nan).await.unwrap_err();
    assert!(nan.to_string().contains("index 17"), "{nan}");
    wait_info(n[1], "mean", |info| info.prepared, LONG)
        .await
        .unwrap();
    for (i, (node, update)) in n[1..5].iter().zip(&data).enumerate() {
        let receipt = node
            .aggregation
            .submit("mean", update.clone())
            .await
            .unwrap();
        assert!(
            receipt.clipped > 0,
            "values beyond ±8 must be counted as clipped"
        );
        if i == 0 {
            assert!(receipt.prepared, "{receipt:?}");
        }
    }
    assert!(!n[1].aggregation.get("mean").await.unwrap().prepared);
    // A second submission from the same participant is refused, locally and by the coordinator.
    let dup = n[1]
        .aggregation
        .submit("mean", data[0].clone())
        .await
        .unwrap_err();
    assert!(matches!(dup, SessionError::Duplicate(_)), "{dup}");
    let raw_dup = AggMsg::SubmitPiece {
        session: "mean".into(),
        digest: [7; 32],
        index: 0,
        count: 1,
        clipped: 0,
        bytes: vec![1, 2, 3],
    };
    assert_eq!(refusal(n[1], coordinator, &raw_dup).await.0, "duplicate");
    // Malformed session bytes are refused and change nothing.
    match coordinator
        .network
        .request(n[5].peer_id, Request::Aggregation(vec![0xff; 10]))
        .await
        .unwrap()
    {
        Response::Error { code, .. } => assert_eq!(code, "bad_input"),
        other => panic!("{other:?}"),
    }
    let before = coordinator
        .aggregation
        .get("mean")
        .await
        .unwrap()
        .submissions;
    assert_eq!(before, 4);

    assert_eq!(
        wait_phase(coordinator, "mean", Phase::is_terminal, LONG)
            .await
            .unwrap(),
        Phase::Done
    );
    let result = coordinator.aggregation.result("mean").await.unwrap();
    assert_eq!(result.contributors, 4);
    assert!(result.clipped > 0);
    for (j, value) in result.values.iter().enumerate() {
        let exact: f64 = data
            .iter()
            .map(|u| (u[j] as f64).clamp(-8.0, 8.0))
            .sum::<f64>()
            / 4.0;
        assert!(
            (value - exact).abs() <= result.error_bound,
            "value {j}: {value} vs {exact}"
        );
    }
    // Pushed to the participants, including the silent one, whose unused preparation and
    // key shares are dropped; the coordinator's shares too.
    assert_eq!(wait_result(n[5], "mean", LONG).await.unwrap(), result);
    let silent = n[5].aggregation.get("mean").await.unwrap();
    assert!(!silent.prepared && silent.key_shares == 3, "{silent:?}");
    assert!(n[5]
        .store
        .get::<Vec<PublicKeyShare>>(trees::SESSIONS, b"joined-shares/mean")
        .unwrap()
        .is_none());
    assert_eq!(
        coordinator
            .aggregation
            .get("mean")
            .await
            .unwrap()
            .key_shares,
        3
    );
    let stored: Vec<PublicKeyShare> = coordinator
        .store
        .get(trees::SESSIONS, b"coord-shares/mean")
        .unwrap()
        .unwrap_or_default();
    assert!(stored.is_empty(), "a finished session keeps its key shares");
    // Another peer opens a session under the same id, naming the coordinator as a participant:
    // refused, so it can never stand in for the key the coordinator checks uploads against. (Sent
    // once the session is over, to keep it out of the 3 s deadline; ended sessions are kept.)
    let mut squatted = state.plan.clone();
    squatted.coordinator = n[5].peer_id.to_string();
    squatted.participants.push(coordinator.peer_id.to_string());
    let squat = AggMsg::Open {
        plan: squatted,
        commitments: state.commitments.values().cloned().collect(),
        shares: state.shares.values().map(|s| (**s).clone()).collect(),
    };
    let (code, message) = refusal(n[5], coordinator, &squat).await;
    assert_eq!(code, "duplicate", "{message}");
    assert!(message.contains("coordinates"), "{message}");

    // --- a second decryption request for the same session is refused by every member ------
    // A different aggregate under the same session key, as a dishonest coordinator could
    // build from other ciphertexts with the same contributors.
    let state: Coordinated = coordinator
        .store
        .get(trees::SESSIONS, b"coord/mean")
        .unwrap()
        .expect("the coordinator keeps the session state");
    let mut other = Accumulator::new(&key, state.plan.length).unwrap();
    for who in &state.contributors {
        let zeros = vec![0f32; state.plan.length as usize];
        other.add(who, &key.encrypt(&zeros).unwrap().0).unwrap();
    }
    let (_, request) = other.finish().unwrap();
    for member in &n[1..4] {
        let msg = AggMsg::Decrypt {
            session: "mean".into(),
            request: request.clone(),
        };
        let (code, message) = refusal(coordinator, member, &msg).await;
        assert_eq!(code, "duplicate", "{message}");
        assert!(message.contains("answers once"), "{message}");
    }

    // --- sum, fast profile, everybody submits: completes without waiting -------------------
    let spec = SessionSpec {
        id: Some("sum".into()),
        length: Some(3000),
        profile: Some(Profile::Fast),
        committee: ids(&[n[2]]),
        // The coordinator takes part too.
        participants: ids(&[n[0], n[3], n[4]]),
        deadline_secs: Some(600),
        result: ResultKind::Sum,
        ..Default::default()
    };
    coordinator.aggregation.create(spec).await.unwrap();
    wait_phase(coordinator, "sum", |p| p >= Phase::Collecting, LONG)
        .await
        .unwrap();
    let own_shares = || {
        coordinator
            .store
            .get::<Vec<PublicKeyShare>>(trees::SESSIONS, b"joined-shares/sum")
            .unwrap()
    };
    assert!(
        own_shares().is_some(),
        "the coordinator joined its own session"
    );
    // Not a participant of this session: refused by the coordinator.
    let stranger = AggMsg::SubmitPiece {
        session: "sum".into(),
        digest: [1; 32],
        index: 0,
        count: 1,
        clipped: 0,
        bytes: vec![0; 16],
    };
    assert_eq!(refusal(n[5], coordinator, &stranger).await.0, "not_allowed");
    let local = n[5]
        .aggregation
        .submit("sum", vec![0.0; 3000])
        .await
        .unwrap_err();
    assert!(matches!(local, SessionError::UnknownSession(_)), "{local}");
    let wrong_length = n[3]
        .aggregation
        .submit("sum", vec![0.0; 10])
        .await
        .unwrap_err();
    assert!(
        matches!(wrong_length, SessionError::BadInput(_)),
        "{wrong_length}"
    );
    let data = updates(3, 3000, 2);
    for (node, update) in [n[0], n[3], n[4]].iter().zip(&data) {
        node.aggregation
            .submit("sum", update.clone())
            .await
            .unwrap();
    }
    assert_eq!(
        wait_phase(coordinator, "sum", Phase::is_terminal, LONG)
            .await
            .unwrap(),
        Phase::Done
    );
    let result = coordinator.aggregation.result("sum").await.unwrap();
    assert_eq!(result.kind, ResultKind::Sum);
    assert_eq!(result.contributors, 3);
    // The coordinator gets no result notice from itself; its own participant side is closed
    // when the session ends, and its key shares go.
    assert!(own_shares().is_none());
    for (j, value) in result.values.iter().enumerate() {
        let exact: f64 = data.iter().map(|u| (u[j] as f64).clamp(-8.0, 8.0)).sum();
        assert!(
            (value - exact).abs() <= result.error_bound,
            "value {j}: {value} vs {exact}"
        );
    }

    // --- below min_participants at the deadline: fails with a reason -----------------------
    let spec = SessionSpec {
        id: Some("few".into()),
        length: Some(100),
        profile: Some(Profile::Fast),
        committee: ids(&[n[1]]),
        participants: ids(&[n[2], n[3], n[4]]),
        min_participants: Some(2),
        deadline_secs: Some(2),
        ..Default::default()
    };
    coordinator.aggregation.create(spec).await.unwrap();
    wait_phase(coordinator, "few", |p| p >= Phase::Collecting, LONG)
        .await
        .unwrap();
    n[2].aggregation
        .submit("few", vec![1.0; 100])
        .await
        .unwrap();
    assert_eq!(
        wait_phase(coordinator, "few", Phase::is_terminal, LONG)
            .await
            .unwrap(),
        Phase::Failed
    );
    let info = coordinator.aggregation.get("few").await.unwrap();
    let reason = info.failure.unwrap();
    assert!(reason.contains("only 1 of the required 2"), "{reason}");
    // The participants hear about it too.
    let start = std::time::Instant::now();
    loop {
        let seen = n[2].aggregation.get("few").await.unwrap();
        if seen.phase == Phase::Failed {
            assert!(seen.failure.unwrap().contains("only 1 of the required 2"));
            break;
        }
        assert!(
            start.elapsed() < LONG,
            "participant never learned of the failure"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let no_result = coordinator.aggregation.result("few").await.unwrap_err();
    assert!(
        no_result.to_string().contains("only 1 of the required 2"),
        "{no_result}"
    );

    // Bad specs are refused with the field named.
    let bad = coordinator
        .aggregation
        .create(SessionSpec {
            length: Some(10),
            committee: vec!["not-a-peer".into()],
            participants: ids(&[n[1]]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(bad, SessionError::InvalidSpec { ref field, .. } if field == "committee"),
        "{bad}"
    );

    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// A coordinator restarts over a store with an unreadable session record and a session whose
/// key shares are damaged: the damaged session fails with the reason, the record is skipped,
/// and every other session loads and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_damaged_session_in_the_store_does_not_hide_the_others() {
    let (dirs, mut nodes) = start_local_network(2).await.unwrap();
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    let spec = |id: &str| SessionSpec {
        id: Some(id.into()),
        length: Some(1000),
        profile: Some(Profile::Fast),
        committee: ids(&[&nodes[1]]),
        participants: ids(&[&nodes[0], &nodes[1]]),
        deadline_secs: Some(600),
        result: ResultKind::Sum,
        ..Default::default()
    };
    for id in ["kept", "broken"] {
        nodes[0].aggregation.create(spec(id)).await.unwrap();
        wait_phase(&nodes[0], id, |p| p >= Phase::Collecting, LONG)
            .await
            .unwrap();
    }
    let coordinator = nodes.remove(0);
    coordinator.shutdown().await.unwrap();
    {
        let store = fhenode::store::Store::open(dirs[0].path()).unwrap();
        let sessions = store.tree(trees::SESSIONS).unwrap();
        // Scanned first: it used to end the load before any session was read.
        sessions
            .insert(b"coord/aaa", &b"not a session"[..])
            .unwrap();
        sessions
            .insert(b"coord-shares/broken", &b"not key shares"[..])
            .unwrap();
        store.flush().unwrap();
    }
    let boot = fhenode::demo::dial_address(&nodes[0], LONG).await.unwrap();
    let coordinator = Node::start(fhenode::demo::loopback_config(dirs[0].path(), vec![boot]))
        .await
        .unwrap();
    let broken = wait_info(&coordinator, "broken", |i| i.phase == Phase::Failed, LONG)
        .await
        .unwrap();
    let failure = broken.failure.unwrap_or_default();
    assert!(failure.contains("key shares cannot be read"), "{failure}");
    let unknown = coordinator.aggregation.get("aaa").await.unwrap_err();
    assert!(
        matches!(unknown, SessionError::UnknownSession(_)),
        "{unknown}"
    );

    nodes.insert(0, coordinator);
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    for (node, value) in nodes.iter().zip([1.5f32, -0.25]) {
        node.aggregation
            .submit("kept", vec![value; 1000])
            .await
            .unwrap();
    }
    let result = wait_result(&nodes[0], "kept", LONG).await.unwrap();
    let damaged = nodes[0]
        .store
        .tree(trees::SESSIONS)
        .unwrap()
        .get(b"coord-shares/broken")
        .unwrap();
    assert!(damaged.is_none(), "the unreadable shares record is dropped");
    assert_eq!(result.contributors, 2);
    assert!(
        result.values.iter().all(|v| (v - 1.25).abs() < 1e-3),
        "{:?}",
        &result.values[..4]
    );
}
