//! Helpers for tests that run the real `fhenode` binary.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running `fhenode run`; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub api: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory for the nodes' data and logs, kept (and its path printed) when the
/// test fails, so that a failure in CI leaves the nodes' logs to read.
pub struct TestRoot(Option<tempfile::TempDir>);

impl TestRoot {
    pub fn new() -> Self {
        TestRoot(Some(tempfile::tempdir().unwrap()))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().map(|d| d.path()).unwrap_or(Path::new("."))
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!(
                    "the nodes' data and logs are kept in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a node on loopback with mDNS off, logging to `<data_dir>.log`.
pub fn start(data_dir: &Path, api_port: u16, p2p: &str, bootstrap: Option<&str>) -> Daemon {
    start_with_env(data_dir, api_port, p2p, bootstrap, &[])
}

/// [`start`], with extra environment variables (configuration keys as `FHENODE__*`).
pub fn start_with_env(
    data_dir: &Path,
    api_port: u16,
    p2p: &str,
    bootstrap: Option<&str>,
    env: &[(&str, &str)],
) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.with_extension("log"))
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhenode"));
    cmd.arg("run")
        .arg("--config")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/fhenode.toml"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg("--p2p-listen")
        .arg(p2p)
        .arg("--no-mdns")
        .env("FHENODE__LOG__LEVEL", "debug")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(b) = bootstrap {
        cmd.arg("--bootstrap").arg(b);
    }
    Daemon {
        child: cmd.spawn().unwrap(),
        api: format!("http://127.0.0.1:{api_port}"),
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<Value> {
    let response = client.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the node answers `/v1/status` and returns its peer id.
pub async fn peer_id(client: &reqwest::Client, daemon: &Daemon) -> String {
    wait_for("node status", Duration::from_secs(60), async || {
        let s = get_json(client, &format!("{}/v1/status", daemon.api)).await?;
        s["peer_id"].as_str().map(str::to_string)
    })
    .await
}

/// Sends `signal` (`-STOP`, `-KILL`, …) to a node.
pub fn signal(daemon: &Daemon, signal: &str) {
    let pid = daemon.child.id().to_string();
    let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(sent.success(), "kill {signal} {pid} failed");
}

/// Waits until the node at `api` says `threshold` members hold its seeds for `session`: its
/// body may go out.
pub async fn seeds_delivered(
    client: &reqwest::Client,
    api: &str,
    session: &str,
    threshold: u64,
    timeout: Duration,
) {
    wait_for("the seeds to reach the committee", timeout, async || {
        let s = get_json(client, &format!("{api}/v1/sessions/{session}")).await?;
        (s["seeds_delivered"].as_u64()? >= threshold).then_some(())
    })
    .await;
}

pub fn signal_and_wait(daemon: &mut Daemon, signal: &str) -> std::process::ExitStatus {
    self::signal(daemon, signal);
    let start = Instant::now();
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node did not exit within 10 s of {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node that keeps its data dir, API port and p2p address across restarts, so that a node
/// killed and started again is found where its peers last saw it.
pub struct FixedNode {
    pub name: String,
    pub dir: std::path::PathBuf,
    pub api_port: u16,
    /// `/ip4/127.0.0.1/tcp/<port>`.
    pub p2p_addr: String,
    pub bootstrap: Option<String>,
}

impl FixedNode {
    /// Picks free ports now; they are reused by every start.
    pub fn new(root: &Path, name: &str, bootstrap: Option<String>) -> Self {
        FixedNode {
            name: name.to_string(),
            dir: root.join(name),
            api_port: free_port(),
            p2p_addr: format!("/ip4/127.0.0.1/tcp/{}", free_port()),
            bootstrap,
        }
    }

    pub fn start(&self) -> Daemon {
        start(
            &self.dir,
            self.api_port,
            &self.p2p_addr,
            self.bootstrap.as_deref(),
        )
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// Where [`start`] sends the node's log (every start appends to it).
    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.with_extension("log")
    }
}

/// The last `lines` lines of a node's log at INFO or above (DEBUG is mostly libp2p), without
/// the terminal colours the formatter writes.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(text) = std::fs::read(path) else {
        return format!("(no log at {})", path.display());
    };
    let text = String::from_utf8_lossy(&text);
    let kept: Vec<String> = text
        .lines()
        .map(strip_ansi)
        .filter(|l| !l.contains(" DEBUG ") && !l.contains(" TRACE "))
        .collect();
    kept[kept.len().saturating_sub(lines)..].join("\n")
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The five-process topology the chaos and unresponsive suites share: coordinator `c`;
/// committee `m1`, `m2`, `m3` (threshold 2); participants `p1`, `m2`, `m3`.
pub mod five_nodes {
    use std::path::Path;
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::{get_json, peer_id, wait_for, Daemon, FixedNode};

    pub const NAMES: [&str; 5] = ["c", "m1", "m2", "m3", "p1"];
    /// Indices into `NAMES`.
    pub const COMMITTEE: [usize; 3] = [1, 2, 3];
    pub const PARTICIPANTS: [usize; 3] = [4, 2, 3];
    pub const THRESHOLD: u64 = 2;

    /// The five nodes started under `root` (the coordinator first, the others with it as
    /// their bootstrap peer), their processes and their peer ids, once the coordinator sees
    /// every peer (within `limit`).
    pub async fn start(
        http: &reqwest::Client,
        root: &Path,
        limit: Duration,
    ) -> (Vec<FixedNode>, Vec<Daemon>, Vec<String>) {
        let mut nodes = vec![FixedNode::new(root, NAMES[0], None)];
        let mut daemons = vec![nodes[0].start()];
        let coordinator = peer_id(http, &daemons[0]).await;
        let boot = format!("{}/p2p/{coordinator}", nodes[0].p2p_addr);
        for name in &NAMES[1..] {
            let node = FixedNode::new(root, name, Some(boot.clone()));
            daemons.push(node.start());
            nodes.push(node);
        }
        let mut ids = vec![coordinator];
        for d in &daemons[1..] {
            ids.push(peer_id(http, d).await);
        }
        let capi = nodes[0].api();
        wait_for("the coordinator to see every peer", limit, async || {
            let peers = get_json(http, &format!("{capi}/v1/peers")).await?;
            (peers["peers"].as_array()?.len() >= NAMES.len() - 1).then_some(())
        })
        .await;
        (nodes, daemons, ids)
    }

    /// A `sum` session `id` of `length` values on these nodes (`ids` indexed like `NAMES`),
    /// two contributors at least.
    pub fn spec(id: &str, ids: &[String], length: usize, deadline_secs: u64) -> Value {
        json!({
            "id": id,
            "length": length,
            "profile": "fast",
            "committee": COMMITTEE.map(|i| ids[i].clone()),
            "threshold": THRESHOLD,
            "participants": PARTICIPANTS.map(|i| ids[i].clone()),
            "min_participants": 2,
            "deadline_secs": deadline_secs,
            "result": "sum",
        })
    }

    /// Creates that session through the API at `api` (201 asserted) and returns its answer.
    pub async fn create(
        http: &reqwest::Client,
        api: &str,
        id: &str,
        ids: &[String],
        length: usize,
        deadline_secs: u64,
    ) -> Value {
        let created = http
            .post(format!("{api}/v1/sessions"))
            .json(&spec(id, ids, length, deadline_secs))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
        created.json().await.unwrap()
    }
}
