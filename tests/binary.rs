//! The real `fhenode` binary: two nodes find each other, serve metrics, stop cleanly on SIGTERM
//! and keep their peer id across restarts.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `promtool check metrics` on the exposition, when promtool is installed (`.ci/run` installs
/// it); skipped with a message otherwise.
fn promtool_check(metrics: &str) {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not found: skipping the exposition-format check");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_real_nodes_peer_serve_metrics_and_stop_cleanly() {
    let root = TestRoot::new();
    let (dir_a, dir_b) = (root.path().join("a"), root.path().join("b"));
    let client = client();
    let timeout = Duration::from_secs(60);

    let mut a = start(&dir_a, free_port(), "/ip4/127.0.0.1/udp/0/quic-v1", None);
    let status_a = wait_for("node a's status", timeout, async || {
        let s = get_json(&client, &format!("{}/v1/status", a.api)).await?;
        (!s["listen_addrs"].as_array()?.is_empty()).then_some(s)
    })
    .await;
    let id_a = status_a["peer_id"].as_str().unwrap().to_string();
    let boot = format!(
        "{}/p2p/{id_a}",
        status_a["listen_addrs"][0].as_str().unwrap()
    );

    let mut b = start(&dir_b, free_port(), "/ip4/127.0.0.1/tcp/0", Some(&boot));
    let id_b = wait_for("node b's status", timeout, async || {
        let s = get_json(&client, &format!("{}/v1/status", b.api)).await?;
        s["peer_id"].as_str().map(str::to_string)
    })
    .await;

    for (daemon, other) in [(&a, &id_b), (&b, &id_a)] {
        wait_for("peers to list each other", timeout, async || {
            let peers = get_json(&client, &format!("{}/v1/peers", daemon.api)).await?;
            peers["peers"]
                .as_array()?
                .iter()
                .any(|p| {
                    p["peer_id"] == other.as_str()
                        && !p["protocols"].as_array().is_none_or(Vec::is_empty)
                })
                .then_some(())
        })
        .await;
    }

    let ready = client
        .get(format!("{}/readyz", a.api))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let missing = client
        .get(format!("{}/v1/nope", a.api))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let metrics = client
        .get(format!("{}/metrics", a.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "fhenode_build_info{",
        "fhenode_peers_connected ",
        "fhenode_actor_mailbox_depth{",
        "fhenode_store_size_bytes ",
        "fhenode_api_requests_total{",
        "fhenode_api_request_duration_seconds_bucket{",
        "libp2p_",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
    ] {
        assert!(metrics.contains(family), "/metrics lacks {family}");
    }
    promtool_check(&metrics);

    assert_eq!(
        signal_and_wait(&mut a, "-TERM").code(),
        Some(0),
        "node a did not exit 0 on SIGTERM"
    );
    assert_eq!(
        signal_and_wait(&mut b, "-TERM").code(),
        Some(0),
        "node b did not exit 0 on SIGTERM"
    );

    // Same data dir, same identity.
    let a2 = start(&dir_a, free_port(), "/ip4/127.0.0.1/tcp/0", None);
    let id_again = wait_for("restarted node's status", timeout, async || {
        let s = get_json(&client, &format!("{}/v1/status", a2.api)).await?;
        s["peer_id"].as_str().map(str::to_string)
    })
    .await;
    assert_eq!(id_again, id_a);
    let out = Command::new(env!("CARGO_BIN_EXE_fhenode"))
        .arg("id")
        .arg("--data-dir")
        .arg(&dir_b)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id_b);
}

/// A node whose disk is below `store.min_free_bytes` says so on /readyz and refuses new
/// sessions with 507 before writing anything; it still answers everything else, and SIGTERM
/// stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_short_of_disk_refuses_new_work_and_says_it_is_not_ready() {
    let root = TestRoot::new();
    let client = client();
    // More than any disk holds: the check always fails.
    let mut node = start_with_env(
        &root.path().join("full"),
        free_port(),
        "/ip4/127.0.0.1/tcp/0",
        None,
        &[("FHENODE__STORE__MIN_FREE_BYTES", "1000000000000000000")],
    );
    let me = peer_id(&client, &node).await;
    let ready = client
        .get(format!("{}/readyz", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["store"], false, "{ready}");
    assert_eq!(ready["store_health"]["writable"], true, "{ready}");
    assert_eq!(
        ready["store_health"]["min_free_bytes"].as_u64(),
        Some(1_000_000_000_000_000_000)
    );

    let spec = serde_json::json!({
        "id": "no-room",
        "length": 10,
        "profile": "fast",
        "committee": [me],
        "participants": [me],
        "min_participants": 1,
    });
    let created = client
        .post(format!("{}/v1/sessions", node.api))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 507);
    let refusal: Value = created.json().await.unwrap();
    assert_eq!(
        refusal["error"]["code"], "insufficient_storage",
        "{refusal}"
    );
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("store.min_free_bytes"),
        "{refusal}"
    );
    let sessions = get_json(&client, &format!("{}/v1/sessions", node.api))
        .await
        .unwrap();
    assert_eq!(
        sessions["sessions"].as_array().map(Vec::len),
        Some(0),
        "nothing was written: {sessions}"
    );
    let started = std::time::Instant::now();
    assert!(signal_and_wait(&mut node, "-TERM").success());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `api.sessions_per_minute`: every creation attempt counts, a refused one included; one over
/// the limit is answered 429 `rate_limited` with `Retry-After`, and reading is not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_creation_through_the_api_is_rate_limited() {
    let root = TestRoot::new();
    let client = client();
    let node = start_with_env(
        &root.path().join("limited"),
        free_port(),
        "/ip4/127.0.0.1/tcp/0",
        None,
        &[("FHENODE__API__SESSIONS_PER_MINUTE", "2")],
    );
    peer_id(&client, &node).await;
    let create = async || {
        client
            .post(format!("{}/v1/sessions", node.api))
            .json(&serde_json::json!({ "committee": [], "participants": [] }))
            .send()
            .await
            .unwrap()
    };
    for _ in 0..2 {
        assert_eq!(create().await.status(), 400);
    }
    let refused = create().await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=30).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    let refusal: Value = refused.json().await.unwrap();
    assert_eq!(refusal["error"]["code"], "rate_limited", "{refusal}");
    let sessions = client
        .get(format!("{}/v1/sessions", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(sessions.status(), 200);
}

#[test]
fn bad_configuration_is_refused_with_the_key_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fhenode"))
        .args(["run", "--api-listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api.token"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_fhenode"))
        .args(["config", "check", "--p2p-listen", "/ip4/not-an-ip/tcp/1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("p2p.listen"));

    let out = Command::new(env!("CARGO_BIN_EXE_fhenode"))
        .args(["config", "check"])
        .env("FHENODE__API__TOKEN", "a-very-secret-token-value")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("[api]") && !stdout.contains("a-very-secret-token-value"),
        "{stdout}"
    );
}

#[test]
fn the_demo_runs_a_session_and_checks_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_fhenode"))
        .args([
            "demo",
            "--nodes",
            "4",
            "--committee",
            "2",
            "--params",
            "5000",
        ])
        .args(["--profile", "fast", "--deadline-secs", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for phase in [
        "[collecting]",
        "[closing]",
        "[decrypting]",
        "[done]",
        "max |error|",
    ] {
        assert!(
            stdout.contains(phase),
            "demo output lacks {phase}:\n{stdout}"
        );
    }
}

/// A disk that really fills: writes fail at once with 507, /readyz says the store is not
/// writable, and once space is freed the node starts again by itself with its store reopened
/// (same peer id, earlier sessions kept) and takes writes. Needs a small tmpfs, so root
/// (CI runs as root); elsewhere it says so and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_reported_and_the_node_recovers_when_space_returns() {
    let root = TestRoot::new();
    let disk = root.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&disk)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs here (not root?): skipping the full-disk test");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if std::thread::panicking() {
                eprintln!(
                    "the node's log:\n{}",
                    log_tail(&self.0.with_extension("log"), 30)
                );
            }
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let client = client();
    let api_port = free_port();
    // The store on the small disk, the log (`disk.log`) beside it on the big one.
    let mut node = start_with_env(
        &disk,
        api_port,
        "/ip4/127.0.0.1/tcp/0",
        None,
        // Sessions are created until the disk is full: no rate limit in the way.
        &[
            ("FHENODE__STORE__MIN_FREE_BYTES", "0"),
            ("FHENODE__API__SESSIONS_PER_MINUTE", "100000"),
        ],
    );
    let me = peer_id(&client, &node).await;
    let try_create = async |id: &str| {
        let spec = serde_json::json!({
            "id": id, "length": 200000, "profile": "fast",
            "committee": [me], "participants": [me], "min_participants": 1,
        });
        client
            .post(format!("{}/v1/sessions", node.api))
            .json(&spec)
            .send()
            .await
    };
    let create = async |id: &str| try_create(id).await.unwrap();
    assert_eq!(create("before").await.status(), 201);

    // Fill the disk but for a few kilobytes, then write until the store fails.
    let free = fs4::available_space(&disk).unwrap();
    std::fs::write(disk.join("filler"), vec![0u8; (free - 20_000) as usize]).unwrap_or(());
    let mut refused = None;
    for i in 0..2000 {
        let response = create(&format!("s{i}")).await;
        if response.status() != 201 {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("a full disk must refuse a write");
    assert_eq!(refused.status(), 507);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
    let ready = client
        .get(format!("{}/readyz", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["store_health"]["writable"], false, "{ready}");

    // Space comes back: the node reopens its store by itself (it starts again in place).
    std::fs::remove_file(disk.join("filler")).unwrap();
    wait_for(
        "the node to take writes again",
        Duration::from_secs(30),
        // While it starts again its port is closed: refused connections are waited out.
        async || {
            let response = try_create("after").await.ok()?;
            (response.status() == 201).then_some(())
        },
    )
    .await;
    assert_eq!(peer_id(&client, &node).await, me);
    let kept = get_json(&client, &format!("{}/v1/sessions/before", node.api)).await;
    assert!(
        kept.is_some(),
        "a session from before the full disk is kept"
    );
    assert!(signal_and_wait(&mut node, "-TERM").success());
}
