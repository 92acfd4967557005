//! Peers that stop answering (#18 items 5 and 7), with real processes on loopback:
//!
//! - a committee member that is up but frozen (SIGSTOP: the kernel keeps its connections
//!   open, nothing answers) must not hold the round up: the session's deadline is set far
//!   below `p2p.request_timeout_secs` (120 s), so a coordinator that waited for the frozen
//!   member's answers would fail the round instead of completing it;
//! - a participant whose coordinator is gone reports its upload as `unreachable`, naming the
//!   configured limit (`p2p.unreachable_after_secs`) it gave up after.
//!
//! Topology as in the chaos suite: coordinator `c`; committee `m1`, `m2`, `m3` with threshold
//! 2; participants `p1`, `m2`, `m3`.

mod common;

use std::time::Duration;

use common::five_nodes::{self, NAMES, PARTICIPANTS};
use common::*;
use serde_json::{json, Value};

const FROZEN: usize = 1;
/// Each of the session's three deadlines: far below the request timeout (120 s).
const DEADLINE_SECS: u64 = 12;
const LENGTH: usize = 1000;

/// Resumes the frozen node whatever happens to the test, so that it can be killed and its
/// data dir removed.
struct Frozen<'a>(&'a Daemon);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        signal(self.0, "-CONT");
    }
}

async fn create(http: &reqwest::Client, capi: &str, id: &str, ids: &[String]) {
    five_nodes::create(http, capi, id, ids, LENGTH, DEADLINE_SECS).await;
}

/// Waits until every participant's node says `members` members hold its seeds.
async fn seeds_held(http: &reqwest::Client, nodes: &[FixedNode], id: &str, members: u64) {
    for &p in &PARTICIPANTS {
        seeds_delivered(http, &nodes[p].api(), id, members, Duration::from_secs(60)).await;
    }
}

async fn submit(http: &reqwest::Client, api: &str, id: &str, k: usize) -> (u16, Value) {
    let values: Vec<f32> = (0..LENGTH).map(|i| ((i + k) % 7) as f32 * 0.25).collect();
    let r = http
        .post(format!("{api}/v1/sessions/{id}/update"))
        .json(&json!({ "values": values }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_or_a_dead_coordinator_holds_nobody_up() {
    let root = TestRoot::new();
    let http = client();
    let (nodes, mut daemons, ids) =
        five_nodes::start(&http, root.path(), Duration::from_secs(60)).await;
    let capi = nodes[0].api();

    // Round one: m1 holds every participant's seeds, then freezes before anyone submits, so
    // the coordinator asks it which seeds it holds while it cannot answer.
    create(&http, &capi, "frozen", &ids).await;
    seeds_held(&http, &nodes, "frozen", 3).await;
    signal(&daemons[FROZEN], "-STOP");
    let frozen = Frozen(&daemons[FROZEN]);
    for (k, &p) in PARTICIPANTS.iter().enumerate() {
        let (status, body) = submit(&http, &nodes[p].api(), "frozen", k).await;
        assert_eq!(status, 200, "{}: {body}", NAMES[p]);
    }
    let ended = wait_for(
        "the round to end",
        Duration::from_secs(3 * DEADLINE_SECS + 30),
        async || {
            let s = get_json(&http, &format!("{capi}/v1/sessions/frozen")).await?;
            let phase = s["phase"].as_str()?.to_string();
            (phase == "done" || phase == "failed").then_some(s)
        },
    )
    .await;
    assert_eq!(
        ended["phase"],
        "done",
        "the round did not complete with a frozen member: {ended}\n{}",
        log_tail(&nodes[0].log_path(), 30)
    );
    // Closing asks every member which seeds it holds; at its deadline the members that never
    // answered are left out. The frozen member must be given up on well before that: within
    // `p2p.unreachable_after_secs` (5 s), not after its connection times out.
    let timings = &ended["timings"];
    let closing_ms =
        timings["decrypting_ms"].as_u64().unwrap() - timings["closed_ms"].as_u64().unwrap();
    assert!(
        closing_ms < DEADLINE_SECS * 1000,
        "closing waited {closing_ms} ms, until its deadline, for the frozen member: {ended}"
    );
    let result = get_json(&http, &format!("{capi}/v1/sessions/frozen/result"))
        .await
        .expect("the result");
    assert_eq!(result["contributors"], 3, "{result}");
    drop(frozen);

    // Round two: the coordinator dies once p1 may submit; p1's upload is reported unreachable,
    // naming the limit it gave up after.
    create(&http, &capi, "orphan", &ids).await;
    seeds_held(&http, &nodes, "orphan", 2).await;
    signal_and_wait(&mut daemons[0], "-KILL");
    let (status, body) = submit(&http, &nodes[PARTICIPANTS[0]].api(), "orphan", 0).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "unreachable", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("p2p.unreachable_after_secs"),
        "the refusal does not name the limit it gave up after: {message}"
    );
}
