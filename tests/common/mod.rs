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

pub fn signal_and_wait(daemon: &mut Daemon, signal: &str) -> std::process::ExitStatus {
    let pid = daemon.child.id().to_string();
    assert!(Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
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
