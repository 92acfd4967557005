//! Real processes: the coordinator is killed with SIGKILL after a submission is acknowledged,
//! restarted from its sled store, and the session still completes with every acknowledged
//! submission; a committee member is killed with SIGKILL after the participants submitted and
//! never comes back, and the session still completes (committee of 5, threshold 4).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_mid_session_resumes_and_completes() {
    let root = TestRoot::new();
    let client = client();
    let timeout = Duration::from_secs(90);
    let dirs: Vec<_> = ["coord", "member", "p1", "p2"]
        .iter()
        .map(|d| root.path().join(d))
        .collect();

    // The coordinator keeps its ports across the restart so peers can find it again.
    let (coord_api, coord_p2p) = (free_port(), free_port());
    let coord_addr = format!("/ip4/127.0.0.1/tcp/{coord_p2p}");
    let mut coord = start(&dirs[0], coord_api, &coord_addr, None);
    let coord_id = peer_id(&client, &coord).await;
    let boot = format!("{coord_addr}/p2p/{coord_id}");
    let others: Vec<Daemon> = dirs[1..]
        .iter()
        .map(|d| start(d, free_port(), "/ip4/127.0.0.1/tcp/0", Some(&boot)))
        .collect();
    let mut ids = Vec::new();
    for d in &others {
        ids.push(peer_id(&client, d).await);
    }
    wait_for("the coordinator to see every peer", timeout, async || {
        let peers = get_json(&client, &format!("{}/v1/peers", coord.api)).await?;
        (peers["peers"].as_array()?.len() >= 3).then_some(())
    })
    .await;

    let length = 2000usize;
    let spec = json!({
        "id": "restart",
        "length": length,
        "profile": "fast",
        "committee": [ids[0]],
        "participants": [ids[1], ids[2]],
        "min_participants": 2,
        "deadline_secs": 600,
        "result": "sum",
    });
    let created = client
        .post(format!("{}/v1/sessions", coord.api))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    wait_for("the session to open", timeout, async || {
        let s = get_json(&client, &format!("{}/v1/sessions/restart", coord.api)).await?;
        (s["phase"] == "collecting").then_some(())
    })
    .await;

    let update = |k: f32| -> Vec<f32> {
        (0..length)
            .map(|i| ((i % 17) as f32 - 8.0) * 0.25 * k)
            .collect()
    };
    for d in &others[1..] {
        seeds_delivered(&client, &d.api, "restart", 1, timeout).await;
    }
    let first = client
        .post(format!("{}/v1/sessions/restart/update", others[1].api))
        .json(&json!({ "values": update(1.0) }))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200, "{}", first.text().await.unwrap());

    // Acknowledged means durable: kill -9 and start again from the same store.
    let status = signal_and_wait(&mut coord, "-KILL");
    assert!(!status.success());
    drop(coord);
    let coord = start(&dirs[0], coord_api, &coord_addr, None);
    assert_eq!(peer_id(&client, &coord).await, coord_id);
    let s = get_json(&client, &format!("{}/v1/sessions/restart", coord.api))
        .await
        .unwrap();
    assert_eq!(s["phase"], "collecting");
    assert_eq!(
        s["submissions"], 1,
        "the acknowledged submission survived the crash"
    );

    // A long poll on the collecting session answers once the last submission moves it on.
    let bad_wait = client
        .get(format!("{}/v1/sessions/restart?wait=soon", coord.api))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_wait.status(), 400);
    // A caller that last saw another phase is answered at once (the client gives up after
    // 30 s, half the wait).
    let seen_before = get_json(
        &client,
        &format!("{}/v1/sessions/restart?wait=60&seen=proposed", coord.api),
    )
    .await
    .expect("answered at once");
    assert_eq!(seen_before["phase"], "collecting");
    let poll = tokio::spawn({
        let (client, url) = (
            client.clone(),
            format!("{}/v1/sessions/restart?wait=60", coord.api),
        );
        async move { client.get(url).send().await.unwrap().json::<Value>().await }
    });
    let second = client
        .post(format!("{}/v1/sessions/restart/update", others[2].api))
        .json(&json!({ "values": update(2.0) }))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 200, "{}", second.text().await.unwrap());
    let moved_on = poll.await.unwrap().unwrap();
    assert_ne!(moved_on["phase"], "collecting", "{moved_on}");

    let result: Value = wait_for("the result", timeout, async || {
        get_json(
            &client,
            &format!("{}/v1/sessions/restart/result", coord.api),
        )
        .await
    })
    .await;
    assert_eq!(result["contributors"], 2);
    let bound = result["error_bound"].as_f64().unwrap();
    let (a, b) = (update(1.0), update(2.0));
    for (j, v) in result["values"].as_array().unwrap().iter().enumerate() {
        let exact = (a[j] + b[j]) as f64;
        assert!((v.as_f64().unwrap() - exact).abs() <= bound, "value {j}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_after_the_submissions_leaves_the_session_to_the_others() {
    let root = TestRoot::new();
    let client = client();
    let timeout = Duration::from_secs(90);
    // The coordinator, five members (threshold 4), and three participants of their own.
    let names = ["coord", "m0", "m1", "m2", "m3", "m4", "p0", "p1", "p2"];
    let dirs: Vec<_> = names.iter().map(|d| root.path().join(d)).collect();
    let (coord_api, coord_p2p) = (free_port(), free_port());
    let coord_addr = format!("/ip4/127.0.0.1/tcp/{coord_p2p}");
    let coord = start(&dirs[0], coord_api, &coord_addr, None);
    let coord_id = peer_id(&client, &coord).await;
    let boot = format!("{coord_addr}/p2p/{coord_id}");
    let mut others: Vec<Daemon> = dirs[1..]
        .iter()
        .map(|d| start(d, free_port(), "/ip4/127.0.0.1/tcp/0", Some(&boot)))
        .collect();
    let mut ids = Vec::new();
    for d in &others {
        ids.push(peer_id(&client, d).await);
    }
    wait_for("the coordinator to see every peer", timeout, async || {
        let peers = get_json(&client, &format!("{}/v1/peers", coord.api)).await?;
        (peers["peers"].as_array()?.len() >= others.len()).then_some(())
    })
    .await;

    let length = 3000usize;
    let spec = json!({
        "id": "absent",
        "length": length,
        "profile": "fast",
        "committee": ids[..5],
        "threshold": 4,
        "participants": ids[5..],
        "min_participants": 3,
        "deadline_secs": 600,
        "result": "mean",
    });
    let created = client
        .post(format!("{}/v1/sessions", coord.api))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let update = |k: usize| -> Vec<f32> {
        (0..length)
            .map(|i| ((i + 3 * k) % 23) as f32 * 0.3 - 3.0)
            .collect()
    };
    // Every participant's seeds reach all five members, then every body goes in.
    for (k, d) in others[5..].iter().enumerate() {
        seeds_delivered(&client, &d.api, "absent", 5, timeout).await;
        let sent = client
            .post(format!("{}/v1/sessions/absent/update", d.api))
            .json(&json!({ "values": update(k) }))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 200, "{}", sent.text().await.unwrap());
    }
    // The last body closes the session; a member dies at once and never returns. Its sets
    // go to the four others, for the same contributor set.
    let status = signal_and_wait(&mut others[2], "-KILL");
    assert!(!status.success());

    let result: Value = wait_for("the result", timeout, async || {
        get_json(&client, &format!("{}/v1/sessions/absent/result", coord.api)).await
    })
    .await;
    assert_eq!(result["contributors"], 3);
    let bound = result["error_bound"].as_f64().unwrap();
    for (j, v) in result["values"].as_array().unwrap().iter().enumerate() {
        let exact = (0..3).map(|k| update(k)[j] as f64).sum::<f64>() / 3.0;
        assert!(
            (v.as_f64().unwrap() - exact).abs() <= bound,
            "value {j}: {v} vs {exact}"
        );
    }
}
