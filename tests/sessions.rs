//! Secure aggregation across six real nodes in one process on loopback: sum and mean against
//! the plaintext, a silent participant, too few participants, refused submissions and seeds,
//! and a committee that releases keys for one contributor set only.

use std::time::Duration;

use fhenode::crypto::kahe::{ParticipantKey, ReleaseRequest};
use fhenode::crypto::Profile;
use fhenode::demo::{start_local_network, wait_for_full_mesh, wait_info, wait_phase, wait_result};
use fhenode::net::{Request, Response};
use fhenode::node::Node;
use fhenode::session::messages::{self, AggMsg, AggReply, Attestation};
use fhenode::session::{Phase, ResultKind, SessionError, SessionPlan, SessionSpec};
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

/// The plan a coordinator stored for `id`: the session's public record, which every
/// participant and member holds too.
fn coordinator_plan(coordinator: &Node, id: &str) -> SessionPlan {
    #[derive(serde::Deserialize)]
    struct Record {
        plan: SessionPlan,
    }
    let record: Record = coordinator
        .store
        .get(
            trees::SESSIONS,
            fhenode::session::records::coordinated(id).as_bytes(),
        )
        .unwrap()
        .expect("the coordinator keeps the session");
    record.plan
}

/// Session `id` of the restart tests, coordinated by node 0: nodes 1 and 2 are its committee
/// (t = 2) and its participants; returns once both delivered their seeds.
async fn open_two_participant_session(nodes: &[Node], id: &str) {
    let spec = SessionSpec {
        id: Some(id.into()),
        length: Some(1000),
        profile: Some(Profile::Fast),
        committee: ids(&[&nodes[1], &nodes[2]]),
        threshold: Some(2),
        participants: ids(&[&nodes[1], &nodes[2]]),
        deadline_secs: Some(600),
        result: ResultKind::Sum,
        ..Default::default()
    };
    nodes[0].aggregation.create(spec).await.unwrap();
    for node in &nodes[1..] {
        wait_info(node, id, |i| i.seeds_delivered >= 2, LONG)
            .await
            .unwrap();
    }
}

/// The two-contributor sum 1.5 − 0.25 the restart tests submit, then every node stopped.
async fn expect_sum_then_stop(nodes: Vec<Node>, session: &str) {
    let result = wait_result(&nodes[0], session, LONG).await.unwrap();
    assert_eq!(result.contributors, 2);
    assert!(
        result.values.iter().all(|v| (v - 1.25).abs() < 1e-3),
        "{:?}",
        &result.values[..4]
    );
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_across_six_nodes() {
    let (_dirs, nodes) = start_local_network(6).await.unwrap();
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    let n: Vec<&Node> = nodes.iter().collect();
    let coordinator = n[0];

    // --- mean, secure profile, 2 of 3 members; participant 5 never submits ------------------
    let length = 5000;
    let spec = SessionSpec {
        id: Some("mean".into()),
        length: Some(length as u64),
        committee: ids(&n[1..4]),
        threshold: Some(2),
        participants: ids(&n[1..6]),
        min_participants: Some(3),
        deadline_secs: Some(4),
        result: ResultKind::Mean,
        clip: Some(8.0),
        ..Default::default()
    };
    let info = coordinator.aggregation.create(spec).await.unwrap();
    assert_eq!((info.profile.as_str(), info.threshold), ("secure", 2));
    wait_phase(coordinator, "mean", |p| p >= Phase::Collecting, LONG)
        .await
        .unwrap();
    let plan = coordinator_plan(coordinator, "mean");

    let data = updates(4, length, 1);
    // A NaN is refused before the participant's prepared encryption is used up: the next
    // submission is sealed into it.
    wait_info(
        n[1],
        "mean",
        |info| info.prepared && info.seeds_delivered >= 2,
        LONG,
    )
    .await
    .unwrap();
    let mut with_nan = data[0].clone();
    with_nan[17] = f32::NAN;
    let nan = n[1].aggregation.submit("mean", with_nan).await.unwrap_err();
    assert!(nan.to_string().contains("index 17"), "{nan}");
    for (i, (node, update)) in n[1..5].iter().zip(&data).enumerate() {
        wait_info(node, "mean", |info| info.seeds_delivered >= 2, LONG)
            .await
            .unwrap();
        let receipt = node
            .aggregation
            .submit("mean", update.clone())
            .await
            .unwrap();
        assert!(
            receipt.clipped > 0,
            "values beyond ±8 must be counted as clipped"
        );
        assert!(
            (receipt.bytes_sent as f64 / length as f64) < 4.1,
            "{receipt:?}"
        );
        if i == 0 {
            assert!(receipt.prepared, "{receipt:?}");
        }
    }
    // A second submission from the same participant is refused, locally and by the coordinator.
    let dup = n[1]
        .aggregation
        .submit("mean", data[0].clone())
        .await
        .unwrap_err();
    assert_eq!(dup.code(), "wrong_phase", "{dup}");
    let raw_dup = AggMsg::SubmitPiece {
        session: "mean".into(),
        digest: [7; 32],
        index: 0,
        count: 1,
        clipped: 0,
        bytes: vec![1, 2, 3],
    };
    assert_eq!(refusal(n[1], coordinator, &raw_dup).await.0, "duplicate");
    // Seeds from a peer that is not a participant, and a second, different bundle from one
    // that is, are refused by a member; malformed bytes too.
    let committee = plan.context().unwrap().committee();
    let foreign = AggMsg::Seeds {
        session: "mean".into(),
        plan_digest: plan.digest(),
        bundle: ParticipantKey::generate(committee).bundle_for(0),
    };
    assert_eq!(refusal(coordinator, n[1], &foreign).await.0, "not_allowed");
    assert_eq!(refusal(n[2], n[1], &foreign).await.0, "duplicate");
    match coordinator
        .network
        .request(n[5].peer_id, Request::Aggregation(vec![0xff; 10]))
        .await
        .unwrap()
    {
        Response::Error { code, .. } => assert_eq!(code, "bad_input"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        coordinator
            .aggregation
            .get("mean")
            .await
            .unwrap()
            .submissions,
        4
    );

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
    // Pushed to the participants, including the silent one, whose unused preparation is
    // dropped; every secret of the session is gone from every node.
    assert_eq!(wait_result(n[5], "mean", LONG).await.unwrap(), result);
    let silent = n[5].aggregation.get("mean").await.unwrap();
    assert!(!silent.prepared, "{silent:?}");
    for node in &n[1..6] {
        let status = node.keys.status().await.unwrap();
        assert_eq!(status.secrets, 0, "{status:?}");
    }
    // Another peer sends a plan under the same id, naming the coordinator as a participant:
    // refused, so it can never stand in for the session the coordinator runs.
    let mut squatted = plan.clone();
    squatted.coordinator = n[5].peer_id.to_string();
    squatted.participants.push(coordinator.peer_id.to_string());
    let (code, message) = refusal(n[5], coordinator, &AggMsg::Plan { plan: squatted }).await;
    assert!(
        code == "duplicate" || code == "invalid_spec",
        "{code}: {message}"
    );

    // --- a request for another contributor set is refused by every member -----------------
    let mut other = result.contributor_ids.clone();
    other.pop();
    let request = ReleaseRequest {
        contributors: other,
        assignment: committee.assign(&[0, 1, 2]).unwrap(),
    };
    for member in &n[1..4] {
        let msg = AggMsg::Release {
            session: "mean".into(),
            request: request.clone(),
            pins: Vec::new(),
        };
        let (code, message) = refusal(coordinator, member, &msg).await;
        assert!(
            code == "duplicate" || code == "wrong_phase",
            "{code}: {message}"
        );
        let msg = AggMsg::Pin {
            session: "mean".into(),
            contributors: request.contributors.clone(),
        };
        let (code, message) = refusal(coordinator, member, &msg).await;
        assert!(
            code == "duplicate" || code == "wrong_phase",
            "{code}: {message}"
        );
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
    let data = updates(3, 3000, 2);
    for (node, update) in [n[0], n[3], n[4]].iter().zip(&data) {
        wait_info(node, "sum", |info| info.seeds_delivered >= 1, LONG)
            .await
            .unwrap();
        let wrong_length = node.aggregation.submit("sum", vec![0.0; 10]).await;
        assert!(
            matches!(wrong_length, Err(SessionError::BadInput(_))),
            "{wrong_length:?}"
        );
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
        deadline_secs: Some(3),
        ..Default::default()
    };
    coordinator.aggregation.create(spec).await.unwrap();
    wait_info(n[2], "few", |info| info.seeds_delivered >= 1, LONG)
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
    let reason = coordinator
        .aggregation
        .get("few")
        .await
        .unwrap()
        .failure
        .unwrap();
    assert!(reason.contains("only 1 of the required 2"), "{reason}");
    // The participants hear about it too.
    let seen = wait_info(n[2], "few", |i| i.phase == Phase::Failed, LONG)
        .await
        .unwrap();
    assert!(seen.failure.unwrap().contains("only 1 of the required 2"));
    let no_result = coordinator.aggregation.result("few").await.unwrap_err();
    assert!(
        no_result.to_string().contains("only 1 of the required 2"),
        "{no_result}"
    );

    // Bad specs are refused with the field named: a threshold at or below half the committee.
    let bad = coordinator
        .aggregation
        .create(SessionSpec {
            length: Some(10),
            committee: ids(&n[1..5]),
            threshold: Some(2),
            participants: ids(&n[1..3]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(bad, SessionError::InvalidSpec { ref field, .. } if field == "threshold"),
        "{bad}"
    );

    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// A coordinator restarts mid-collecting over a store with an unreadable session record: the
/// record is skipped, the session loads, and completes with the submission acknowledged
/// before the restart and the one made after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restarted_mid_collecting_completes_over_a_damaged_record() {
    let (dirs, mut nodes) = start_local_network(3).await.unwrap();
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    open_two_participant_session(&nodes, "kept").await;
    // A wait on the phase it has left answers at once; one on its present phase lasts.
    let opened = nodes[0]
        .aggregation
        .wait_change("kept", Phase::Proposed)
        .await
        .unwrap();
    assert!(opened.phase >= Phase::Collecting, "{:?}", opened.phase);
    let still = tokio::time::timeout(
        Duration::from_millis(300),
        nodes[0].aggregation.wait_change("kept", Phase::Collecting),
    )
    .await;
    assert!(still.is_err(), "{still:?}");
    nodes[1]
        .aggregation
        .submit("kept", vec![1.5; 1000])
        .await
        .unwrap();
    let coordinator = nodes.remove(0);
    coordinator.shutdown().await.unwrap();
    {
        let store = fhenode::store::Store::open(dirs[0].path()).unwrap();
        let sessions = store.tree(trees::SESSIONS).unwrap();
        // Scanned first: it must not end the load before any session is read.
        sessions
            .insert(b"coord/aaa", &b"not a session"[..])
            .unwrap();
        store.flush().unwrap();
    }
    let boot = fhenode::demo::dial_address(&nodes[0], LONG).await.unwrap();
    let coordinator = Node::start(fhenode::demo::loopback_config(dirs[0].path(), vec![boot]))
        .await
        .unwrap();
    let unknown = coordinator.aggregation.get("aaa").await.unwrap_err();
    assert!(
        matches!(unknown, SessionError::UnknownSession(_)),
        "{unknown}"
    );
    assert_eq!(
        coordinator
            .aggregation
            .get("kept")
            .await
            .unwrap()
            .submissions,
        1
    );
    nodes.insert(0, coordinator);
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    nodes[2]
        .aggregation
        .submit("kept", vec![-0.25; 1000])
        .await
        .unwrap();
    expect_sum_then_stop(nodes, "kept").await;
}

/// A participant whose upload failed (its coordinator was down) and which then restarted
/// keeps no body, only its digest: the same update, submitted again, seals to the same bytes
/// and goes out; another update is refused, since two bodies under one key would reveal
/// their difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_sends_the_same_update_again_after_a_failed_upload_and_a_restart() {
    let (dirs, mut nodes) = start_local_network(3).await.unwrap();
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    open_two_participant_session(&nodes, "again").await;
    let coordinator = nodes.remove(0);
    coordinator.shutdown().await.unwrap();
    let failed = nodes[0].aggregation.submit("again", vec![1.5; 1000]).await;
    assert!(failed.is_err(), "{failed:?}");
    let participant = nodes.remove(0);
    participant.shutdown().await.unwrap();
    let boot = fhenode::demo::dial_address(&nodes[0], LONG).await.unwrap();
    let participant = Node::start(fhenode::demo::loopback_config(
        dirs[1].path(),
        vec![boot.clone()],
    ))
    .await
    .unwrap();
    let coordinator = Node::start(fhenode::demo::loopback_config(dirs[0].path(), vec![boot]))
        .await
        .unwrap();
    nodes.insert(0, participant);
    nodes.insert(0, coordinator);
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    let other = nodes[1]
        .aggregation
        .submit("again", vec![2.0; 1000])
        .await
        .unwrap_err();
    assert_eq!(other.code(), "duplicate", "{other}");
    nodes[1]
        .aggregation
        .submit("again", vec![1.5; 1000])
        .await
        .unwrap();
    nodes[2]
        .aggregation
        .submit("again", vec![-0.25; 1000])
        .await
        .unwrap();
    expect_sum_then_stop(nodes, "again").await;
}

/// A committee member pins the first contributor set it is asked to attest, and the pin
/// survives a restart: the same set is attested and answered again with the same bytes, any
/// other set is refused; a set naming a participant whose seeds the member never received is
/// refused before anything is pinned. Keys are released only against t valid attestations
/// (a forged one does not count). The coordinator then completes the round over the pinned
/// set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_after_releasing_answers_its_contributor_set_only() {
    let (dirs, mut nodes) = start_local_network(6).await.unwrap();
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    // Participant 5 is gone before the session opens: no member ever holds its seeds.
    let gone = nodes.pop().unwrap();
    let mut participants = ids(&[&nodes[2], &nodes[3], &nodes[4]]);
    participants.push(gone.peer_id.to_string());
    gone.shutdown().await.unwrap();
    let spec = SessionSpec {
        id: Some("pinned".into()),
        length: Some(1000),
        profile: Some(Profile::Fast),
        committee: ids(&[&nodes[1], &nodes[2]]),
        threshold: Some(2),
        participants: participants.clone(),
        min_participants: Some(2),
        // Long enough for a member's restart; participants 4 and 5 never submit, so the
        // coordinator closes at the deadline with the two that did.
        deadline_secs: Some(20),
        result: ResultKind::Sum,
        ..Default::default()
    };
    nodes[0].aggregation.create(spec).await.unwrap();
    let plan = coordinator_plan(&nodes[0], "pinned");
    // The coordinator's event stream, read to its end: a `phase` event per phase reached.
    let events = tokio::spawn({
        let url = format!("http://{}/v1/sessions/pinned/events", nodes[0].api_addr);
        async move {
            let mut response = reqwest::get(url).await.unwrap();
            assert_eq!(response.status(), 200);
            let mut text = String::new();
            while let Some(chunk) = response.chunk().await.unwrap() {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            text
        }
    });
    let context = plan.context().unwrap();
    for (node, value) in [(&nodes[2], 1.5f32), (&nodes[3], -0.25)] {
        wait_info(node, "pinned", |i| i.seeds_delivered >= 2, LONG)
            .await
            .unwrap();
        node.aggregation
            .submit("pinned", vec![value; 1000])
            .await
            .unwrap();
    }
    wait_info(&nodes[1], "pinned", |i| i.seeds_held >= 3, LONG)
        .await
        .unwrap();
    let sorted = |mut contributors: Vec<String>| {
        contributors.sort();
        contributors
    };
    let pin = |contributors: Vec<String>| AggMsg::Pin {
        session: "pinned".into(),
        contributors: sorted(contributors),
    };
    let release_with = |contributors: Vec<String>, pins: Vec<Attestation>| AggMsg::Release {
        session: "pinned".into(),
        request: ReleaseRequest {
            contributors: sorted(contributors),
            assignment: context.committee().assign(&[0, 1]).unwrap(),
        },
        pins,
    };
    let submitted = vec![participants[0].clone(), participants[1].clone()];
    let other = vec![participants[0].clone(), participants[2].clone()];
    let with_gone = vec![
        participants[0].clone(),
        participants[1].clone(),
        participants[3].clone(),
    ];
    // Sent on the coordinator's own connection, as its machine would.
    let answer = |coordinator: &Node, member: &Node, msg: AggMsg| {
        let request = Request::Aggregation(messages::encode(&msg).unwrap());
        let (network, member) = (coordinator.network.clone(), member.peer_id);
        async move { network.request(member, request).await.unwrap() }
    };
    let (code, message) = refusal(&nodes[0], &nodes[1], &pin(with_gone)).await;
    assert_eq!(code, "bad_input", "{message}");
    assert!(message.contains("holds no seeds"), "{message}");
    // Nothing is released before the member pinned the set.
    let (code, message) = refusal(
        &nodes[0],
        &nodes[1],
        &release_with(submitted.clone(), Vec::new()),
    )
    .await;
    assert_eq!(code, "wrong_phase", "{message}");
    let mut pins = Vec::new();
    for (index, member) in [(0u32, &nodes[1]), (1, &nodes[2])] {
        let reply = match answer(&nodes[0], member, pin(submitted.clone())).await {
            Response::Aggregation(bytes) => messages::decode::<AggReply>(&bytes).unwrap(),
            other => panic!("{other:?}"),
        };
        let AggReply::Pinned(signature) = reply else {
            panic!("{reply:?}");
        };
        pins.push(Attestation {
            member: index,
            signature,
        });
    }
    // One attestation, or one plus a forgery (member 0's signature passed off as member
    // 1's), is below the threshold of two.
    let forged = vec![
        pins[0].clone(),
        Attestation {
            member: 1,
            signature: pins[0].signature.clone(),
        },
    ];
    // More attestations than members is refused before any is checked.
    let flood = vec![pins[0].clone(); 3];
    for short in [vec![pins[0].clone()], forged, flood] {
        let (code, message) = refusal(
            &nodes[0],
            &nodes[1],
            &release_with(submitted.clone(), short),
        )
        .await;
        assert_eq!(code, "bad_input", "{message}");
        assert!(message.contains("attest"), "{message}");
    }
    let release = |contributors: Vec<String>| release_with(contributors, pins.clone());
    let first = match answer(&nodes[0], &nodes[1], release(submitted.clone())).await {
        Response::Aggregation(bytes) => bytes,
        other => panic!("{other:?}"),
    };

    let member = nodes.remove(1);
    member.shutdown().await.unwrap();
    let boot = fhenode::demo::dial_address(&nodes[0], LONG).await.unwrap();
    let member = Node::start(fhenode::demo::loopback_config(dirs[1].path(), vec![boot]))
        .await
        .unwrap();
    nodes.insert(1, member);
    wait_for_full_mesh(&nodes, LONG).await.unwrap();

    let (code, message) = refusal(&nodes[0], &nodes[1], &pin(other.clone())).await;
    assert_eq!(code, "duplicate", "{message}");
    let (code, message) = refusal(&nodes[0], &nodes[1], &release(other)).await;
    assert_eq!(code, "duplicate", "{message}");
    match answer(&nodes[0], &nodes[1], release(submitted)).await {
        Response::Aggregation(bytes) => assert_eq!(bytes, first, "the same answer after a restart"),
        other => panic!("{other:?}"),
    }

    wait_result(&nodes[0], "pinned", LONG).await.unwrap();
    let events = tokio::time::timeout(LONG, events).await.unwrap().unwrap();
    let phases: Vec<String> = events
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| {
            let info: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
            info["phase"].as_str().unwrap().to_string()
        })
        .collect();
    // From wherever the session was when the stream opened, each phase once and in order
    // (a phase entered and left within one turn of the actor may be missed), to the end.
    let order = ["proposed", "collecting", "closing", "decrypting", "done"];
    let at: Vec<usize> = phases
        .iter()
        .map(|p| order.iter().position(|o| o == p).unwrap())
        .collect();
    assert!(at[0] <= 1 && at.windows(2).all(|w| w[0] < w[1]), "{events}");
    assert_eq!(phases.last().map(String::as_str), Some("done"), "{events}");
    expect_sum_then_stop(nodes, "pinned").await;
}

/// A node stopping while a client follows a session (an event stream, a long poll) ends them
/// and stops at once: neither holds the API's graceful shutdown open until the 5 s cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_session_does_not_hold_a_stopping_node() {
    let (_dirs, mut nodes) = start_local_network(2).await.unwrap();
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    let spec = SessionSpec {
        id: Some("followed".into()),
        length: Some(100),
        profile: Some(Profile::Fast),
        committee: ids(&[&nodes[1]]),
        participants: ids(&[&nodes[0], &nodes[1]]),
        deadline_secs: Some(600),
        result: ResultKind::Sum,
        ..Default::default()
    };
    nodes[0].aggregation.create(spec).await.unwrap();
    wait_phase(&nodes[0], "followed", |p| p == Phase::Collecting, LONG)
        .await
        .unwrap();
    let api = format!("http://{}/v1/sessions/followed", nodes[0].api_addr);
    let mut stream = reqwest::get(format!("{api}/events")).await.unwrap();
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("collecting"));
    let poll = tokio::spawn(async move { reqwest::get(format!("{api}?wait=60")).await });
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = stream.chunk().await {} });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let coordinator = nodes.remove(0);
    let stopping = std::time::Instant::now();
    coordinator.shutdown().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the stop waited {:?}",
        stopping.elapsed()
    );
    tokio::time::timeout(LONG, reader).await.unwrap().unwrap();
    let polled = tokio::time::timeout(LONG, poll).await.unwrap().unwrap();
    if let Ok(response) = polled {
        assert_eq!(response.status(), 200);
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

/// A coordinator cannot make a node hold state for more sessions than
/// `aggregation.max_sessions_per_peer` (64): the plan beyond them is refused with
/// `quota_exceeded`, and nothing of it is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_cannot_make_a_node_hold_more_sessions_than_its_quota() {
    let (_dirs, nodes) = start_local_network(3).await.unwrap();
    wait_for_full_mesh(&nodes, LONG).await.unwrap();
    open_two_participant_session(&nodes, "base").await;
    let plan = coordinator_plan(&nodes[0], "base");
    let send = async |id: String| {
        let msg = AggMsg::Plan {
            plan: SessionPlan { id, ..plan.clone() },
        };
        let request = Request::Aggregation(messages::encode(&msg).unwrap());
        nodes[0]
            .network
            .request(nodes[1].peer_id, request)
            .await
            .unwrap()
    };
    // "base" is the first of the 64.
    for i in 0..63 {
        match send(format!("q{i}")).await {
            Response::Aggregation(_) => {}
            other => panic!("plan {i} was answered {other:?}"),
        }
    }
    match send("q63".into()).await {
        Response::Error { code, message } => {
            assert_eq!(code, "quota_exceeded", "{message}");
            assert!(message.contains("max_sessions_per_peer"), "{message}");
        }
        other => panic!("the plan beyond the quota was answered {other:?}"),
    }
    let unknown = nodes[1].aggregation.get("q63").await.unwrap_err();
    assert_eq!(unknown.code(), "unknown_session");
    assert_eq!(nodes[1].aggregation.list().await.unwrap().len(), 64);
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}
