//! Operations, checked with the tools operators use: the systemd unit (`systemd-analyze verify`
//! and `security`), readiness through sd_notify, the Grafana dashboard and the alert rules
//! (every metric they query is exported by a live node after a session; `promtool check rules`
//! and `promtool test rules`), `docs/METRICS.md` (documents every exported family), and a real
//! Prometheus server scraping a real node. Tests whose tool is missing say so and skip; `.ci/run`
//! installs the tools.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fhenode::crypto::Profile;
use fhenode::demo::{start_local_network, wait_for_full_mesh, wait_info, wait_phase};
use fhenode::session::{Phase, ResultKind, SessionSpec};
use serde_json::Value;

const UNIT: &str = "systemd/fhenode.service";
const DASHBOARD: &str = "grafana/fhenode.json";
const ALERTS: &str = "grafana/alerts.yml";
const CATALOGUE: &str = "docs/METRICS.md";

/// Series Prometheus itself makes for every target: allowed in queries without an exporter.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];
/// Metric name prefixes the node exports; the dashboard and alerts query only these (and `up`).
const PREFIXES: [&str; 3] = ["fhenode_", "libp2p_", "process_"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Whether `tool` runs at all; prints why a check is skipped when it does not.
fn have(tool: &str, skipping: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("SKIPPED: {tool} not found (install it, or run .ci/run): skipping {skipping}");
    }
    found
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ------------------------------------------------------------------------------------------
// systemd
// ------------------------------------------------------------------------------------------

/// `Key=value` assignments of the unit (comments and section headers dropped), in order.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn systemd_unit_is_a_hardened_notify_service() {
    let unit = read(UNIT);
    let settings = unit_settings(&unit);
    for (key, value) in [
        ("Type", "notify"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "fhenode"),
        ("Restart", "on-failure"),
        ("UMask", "077"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallFilter", "@system-service"),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        ),
    ] {
        assert!(
            setting(&settings, key).contains(&value),
            "{UNIT} must set {key}={value}; it has {:?}",
            setting(&settings, key)
        );
    }
    let nofile = setting(&settings, "LimitNOFILE");
    assert!(
        nofile
            .iter()
            .any(|v| v.parse::<u64>().is_ok_and(|n| n >= 4096)),
        "LimitNOFILE must be set (≥ 4096): {nofile:?}"
    );
    assert!(
        unit.contains("#MemoryHigh=")
            && unit.contains("#MemoryMax=")
            && unit.contains("valuation key"),
        "{UNIT} must carry the commented MemoryHigh/MemoryMax note about evaluation keys"
    );

    // ExecStartPre checks the configuration and ExecStart runs the node, both on the config in
    // /etc and the state directory.
    let pre = setting(&settings, "ExecStartPre");
    let start = setting(&settings, "ExecStart");
    assert_eq!(pre.len(), 1, "one ExecStartPre: {pre:?}");
    assert_eq!(start.len(), 1, "one ExecStart: {start:?}");
    assert!(pre[0].contains(" config check "), "{pre:?}");
    assert!(start[0].contains(" run "), "{start:?}");
    for line in [pre[0], start[0]] {
        assert!(
            line.contains("--config /etc/fhenode/fhenode.toml")
                && line.contains("--data-dir %S/fhenode"),
            "{line}"
        );
    }

    // The command lines are accepted by this build: run ExecStartPre as systemd would, with the
    // shipped configuration template standing in for /etc/fhenode/fhenode.toml and a temporary
    // directory for the state directory.
    let state = tempfile::tempdir().unwrap();
    let args = unit_command(pre[0], state.path());
    let out = Command::new(env!("CARGO_BIN_EXE_fhenode"))
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ExecStartPre {args:?} failed:\n{}",
        text(&out)
    );
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(
        effective.contains(&state.path().join("fhenode").display().to_string()),
        "--data-dir must win over the file's data_dir:\n{effective}"
    );
}

/// A unit command line as argv, with %S pointing at `state_root` and the config in /etc
/// replaced by the repository's template.
fn unit_command(line: &str, state_root: &Path) -> Vec<String> {
    line.split_whitespace()
        .map(|w| {
            w.replace("%S", &state_root.display().to_string()).replace(
                "/etc/fhenode/fhenode.toml",
                &repo("config/fhenode.toml").display().to_string(),
            )
        })
        .collect()
}

#[test]
fn systemd_analyze_verifies_the_unit_and_rates_it_ok() {
    if !have(
        "systemd-analyze",
        "systemd-analyze verify/security of the unit",
    ) {
        return;
    }
    // `verify` also checks that ExecStart's binary exists: point the unit at this build's
    // binary in a copy with the same name. Nothing else changes.
    let dir = tempfile::tempdir().unwrap();
    let unit = read(UNIT);
    assert!(unit.contains("/usr/local/bin/fhenode "));
    let copy = dir.path().join("fhenode.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/fhenode ",
            &format!("{} ", env!("CARGO_BIN_EXE_fhenode")),
        ),
    )
    .unwrap();

    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let report = text(&out);
    // Unknown keys, bad values and missing binaries are warnings that still exit 0: the unit is
    // clean only when nothing at all is said about it.
    let about_unit: Vec<&str> = report.lines().filter(|l| l.contains("fhenode")).collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify is not clean:\n{report}"
    );
    if !report.trim().is_empty() {
        eprintln!("systemd-analyze verify said, about other units:\n{report}");
    }

    // Exposure levels: 0–0.9 SAFE/PERFECT, 1.0–4.9 OK, 5.0+ MEDIUM, EXPOSED, UNSAFE, DANGEROUS.
    // --threshold is in tenths: 49 fails anything worse than OK.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=49", "--no-pager"])
        .arg(&copy)
        .output()
        .unwrap();
    let report = text(&out);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    eprintln!("systemd-analyze security: {}", overall.trim());
    let verdict_ok = ["PERFECT", "SAFE", "OK"]
        .iter()
        .any(|w| overall.split_whitespace().any(|t| t == *w));
    assert!(
        out.status.success() && verdict_ok,
        "the unit must rate OK or better:\n{report}"
    );
    let score: f64 = overall
        .rsplit(':')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {overall}"));
    assert!(score < 5.0, "{overall}");
}

/// `fhenode run` with NOTIFY_SOCKET set, the way systemd starts a Type=notify service.
fn start_notifying(data_dir: &Path, api_port: u16, socket: &Path) -> common::Daemon {
    let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fhenode"))
        .arg("run")
        .arg("--config")
        .arg(repo("config/fhenode.toml"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{api_port}"))
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
        .env("NOTIFY_SOCKET", socket)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    common::Daemon {
        child,
        api: format!("http://127.0.0.1:{api_port}"),
    }
}

/// The next datagram on the notify socket, within `timeout`.
fn notification(
    socket: &std::os::unix::net::UnixDatagram,
    timeout: Duration,
) -> std::io::Result<String> {
    socket.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The READY=1 a starting node sends.
fn ready(socket: &std::os::unix::net::UnixDatagram) -> String {
    notification(socket, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("no READY=1 within 60 s: {e}"))
}

#[test]
fn the_daemon_notifies_ready_once_serving_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let port = common::free_port();
    let mut daemon = start_notifying(&dir.path().join("node"), port, &path);

    let ready = ready(&socket);
    assert_eq!(ready.lines().collect::<Vec<_>>(), ["READY=1"], "{ready:?}");
    // READY=1 means the API is already listening: the very first request is answered.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .expect("the API must accept connections once READY=1 is sent");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    terminate_and_expect_clean_stop(&mut daemon, &socket, &dir.path().join("node.log"));
}

/// A service manager may stop a unit the instant it reads READY=1: the handler must already
/// be in place then, or SIGTERM's default action kills the node without STOPPING=1 or a flush.
#[test]
fn a_sigterm_right_after_ready_still_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let mut daemon = start_notifying(&dir.path().join("node"), common::free_port(), &path);
    assert_eq!(ready(&socket).trim(), "READY=1");
    terminate_and_expect_clean_stop(&mut daemon, &socket, &dir.path().join("node.log"));
}

/// Sends SIGTERM; the node must report STOPPING=1 and exit 0 within 10 s.
fn terminate_and_expect_clean_stop(
    daemon: &mut common::Daemon,
    socket: &std::os::unix::net::UnixDatagram,
    log: &Path,
) {
    let pid = daemon.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stopping = match notification(socket, Duration::from_secs(10)) {
        Ok(stopping) => stopping,
        Err(e) => panic!(
            "no STOPPING=1 within 10 s of SIGTERM ({e}); the node's state: {:?}; its log:\n{}",
            daemon.child.try_wait(),
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    };
    assert_eq!(stopping.trim(), "STOPPING=1");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the node did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "the node must exit 0 on SIGTERM");
}

// ------------------------------------------------------------------------------------------
// A live node's exposition
// ------------------------------------------------------------------------------------------

/// What a node serves on /metrics after an aggregation session.
struct Live {
    /// OpenMetrics (what Prometheus asks for).
    openmetrics: String,
    /// family name (as in `# TYPE`) → type.
    families: BTreeMap<String, String>,
}

impl Live {
    /// Every series name a query may use: the samples' names, and for each family the names
    /// its type gives its samples (a registered family counts even before its first sample).
    fn series(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .openmetrics
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect();
        for (family, kind) in &self.families {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        }
        names
    }

    /// Each family as METRICS.md names it: counters with `_total`, histograms by their base
    /// name, everything else as is.
    fn documented_names(&self) -> BTreeSet<String> {
        self.families
            .iter()
            .map(|(family, kind)| match kind.as_str() {
                "counter" => format!("{family}_total"),
                "info" => format!("{family}_info"),
                _ => family.clone(),
            })
            .collect()
    }
}

fn parse_families(openmetrics: &str) -> BTreeMap<String, String> {
    openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// Three in-process nodes on loopback run one aggregation session (fast profile, every
/// participant submits, two committee members decrypt); then the coordinator's /metrics is
/// read over HTTP. Computed once and shared by the tests that need it.
fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let long = Duration::from_secs(120);
            let (_dirs, nodes) = start_local_network(3).await.unwrap();
            wait_for_full_mesh(&nodes, long).await.unwrap();
            let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.to_string()).collect();
            let spec = SessionSpec {
                id: Some("ops".into()),
                length: Some(1000),
                profile: Some(Profile::Fast),
                committee: ids[..2].to_vec(),
                participants: ids.clone(),
                min_participants: Some(3),
                deadline_secs: Some(60),
                result: ResultKind::Mean,
                ..Default::default()
            };
            let coordinator = &nodes[0];
            coordinator.aggregation.create(spec).await.unwrap();
            wait_phase(coordinator, "ops", |p| p >= Phase::Collecting, long)
                .await
                .unwrap();
            // A submission before the committee holds the node's seeds is refused as
            // `unavailable` (the caller retries); wait for them instead.
            for node in &nodes {
                wait_info(node, "ops", |i| i.seeds_delivered >= 2, long)
                    .await
                    .unwrap();
            }
            let submits = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| n.aggregation.submit("ops", vec![i as f32 * 0.25; 1000]));
            for receipt in futures::future::join_all(submits).await {
                receipt.unwrap();
            }
            let end = wait_phase(coordinator, "ops", Phase::is_terminal, long)
                .await
                .unwrap();
            assert_eq!(end, Phase::Done);

            let client = common::client();
            let base = format!("http://{}", coordinator.api_addr);
            for route in ["/v1/status", "/v1/sessions", "/v1/peers", "/readyz"] {
                let r = client.get(format!("{base}{route}")).send().await.unwrap();
                assert!(r.status().is_success(), "{route}: {}", r.status());
            }
            let openmetrics = client
                .get(format!("{base}/metrics"))
                .header(
                    "Accept",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(openmetrics.ends_with("# EOF\n"), "not OpenMetrics");
            for node in nodes {
                node.shutdown().await.unwrap();
            }
            Live {
                families: parse_families(&openmetrics),
                openmetrics,
            }
        })
    })
}

// ------------------------------------------------------------------------------------------
// PromQL
// ------------------------------------------------------------------------------------------

const PROMQL_KEYWORDS: [&str; 27] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
];

/// The metric names a PromQL expression selects. Skips string literals, Grafana variables
/// (`$x`, `${x}`), label matchers (`{…}`), ranges (`[…]`), label lists after
/// by/without/on/ignoring/group_left/group_right, numbers and durations, function names (an
/// identifier followed by `(`) and aggregation operators and keywords.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_label_list = false;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    // Skips from an opening delimiter to its matching close, strings included.
    let skip_group = |i: &mut usize, open: char, close: char| {
        let mut depth = 0;
        while *i < chars.len() {
            let c = chars[*i];
            if c == '"' || c == '\'' || c == '`' {
                *i += 1;
                while *i < chars.len() && chars[*i] != c {
                    if chars[*i] == '\\' {
                        *i += 1;
                    }
                    *i += 1;
                }
            } else if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    *i += 1;
                    return;
                }
            }
            *i += 1;
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' => skip_group(&mut i, '{', '}'),
            '[' => skip_group(&mut i, '[', ']'),
            '(' if skip_label_list => {
                skip_label_list = false;
                skip_group(&mut i, '(', ')');
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    skip_group(&mut i, '{', '}');
                } else {
                    while i < chars.len() && ident_char(chars[i]) {
                        i += 1;
                    }
                }
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                while i < chars.len() && (ident_char(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if ident_start(c) => {
                skip_label_list = false;
                let start = i;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let lower = word.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    skip_label_list = true;
                } else if chars.get(j) == Some(&'(') || PROMQL_KEYWORDS.contains(&lower.as_str()) {
                    // a function call or an operator
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn promql_metric_extraction() {
    let q = r#"histogram_quantile(0.95, sum by (le, op) (rate(fhenode_crypto_operation_duration_seconds_bucket{instance=~"$instance", op!="x_total"}[$__rate_interval]))) / on(instance) group_left(version) fhenode_build_info > 1e6 and time() - fhenode_start_time_seconds offset 5m"#;
    assert_eq!(
        promql_metrics(q),
        BTreeSet::from([
            "fhenode_crypto_operation_duration_seconds_bucket".to_string(),
            "fhenode_build_info".to_string(),
            "fhenode_start_time_seconds".to_string(),
        ])
    );
    assert_eq!(
        promql_metrics("sum without (instance) (up) == 0"),
        BTreeSet::from(["up".to_string()])
    );
}

/// Checks each name against the live exposition; returns the offenders with where they came
/// from.
fn unknown_metrics(
    queries: impl IntoIterator<Item = (String, String)>,
    live: &Live,
) -> Vec<String> {
    let series = live.series();
    let mut bad = Vec::new();
    for (place, query) in queries {
        let names = promql_metrics(&query);
        if names.is_empty() {
            bad.push(format!("{place}: selects no metric: {query}"));
        }
        for name in names {
            let ours = PREFIXES.iter().any(|p| name.starts_with(p));
            let known = series.contains(&name) || PROMETHEUS_SERIES.contains(&name.as_str());
            if !known || !(ours || PROMETHEUS_SERIES.contains(&name.as_str())) {
                bad.push(format!("{place}: `{name}` is not exported ({query})"));
            }
        }
    }
    bad
}

// ------------------------------------------------------------------------------------------
// Grafana
// ------------------------------------------------------------------------------------------

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel, rows' collapsed children included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(children) = p["panels"].as_array() {
            out.extend(children);
        }
    }
    out
}

/// (where, PromQL) for every panel target and templating query.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                queries.push((format!("panel `{}`", panel["title"]), expr.to_string()));
            }
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]
            .as_str()
            .or_else(|| var["query"]["query"].as_str())
            .unwrap_or_default();
        // label_values(metric, label) selects `metric`; label names are not metrics.
        let query = match query.strip_prefix("label_values(") {
            Some(rest) => rest.split(',').next().unwrap_or_default().to_string(),
            None => query.to_string(),
        };
        queries.push((format!("variable `{}`", var["name"]), query));
    }
    queries
}

#[test]
fn dashboard_has_the_rows_and_is_provisioned() {
    let d = dashboard();
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(d["title"].as_str().is_some_and(|t| t.contains("fhenode")));
    let rows: Vec<String> = panels(&d)
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .map(str::to_lowercase)
        .collect();
    for row in [
        "health",
        "p2p",
        "sessions",
        "fhe compute",
        "storage & process",
    ] {
        assert!(
            rows.iter().any(|r| r.starts_with(row)),
            "row `{row}` missing; rows are {rows:?}"
        );
    }
    // Panel ids unique, every non-row panel has a size, a Prometheus datasource taken from the
    // `datasource` variable, and at least one query.
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{}", p["title"]);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["type"], "prometheus", "{}", p["title"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(t["refId"].as_str().is_some(), "{}", p["title"]);
        }
    }
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"datasource") && vars.contains(&"instance"),
        "{vars:?}"
    );

    // The issue's panels: each of these is queried somewhere.
    let used: BTreeSet<String> = dashboard_queries(&d)
        .into_iter()
        .flat_map(|(_, q)| promql_metrics(&q))
        .collect();
    for needed in [
        "fhenode_build_info",
        "fhenode_start_time_seconds",
        "fhenode_peers_connected",
        "libp2p_bandwidth_bytes_total",
        "fhenode_rpc_requests_total",
        "fhenode_gossip_messages_total",
        "libp2p_gossipsub_messages_total",
        "fhenode_sessions",
        "fhenode_session_outcomes_total",
        "fhenode_session_phase_duration_seconds_bucket",
        "fhenode_submissions_total",
        "fhenode_key_releases_total",
        "fhenode_crypto_operation_duration_seconds_bucket",
        "fhenode_inference_requests_total",
        "fhenode_inference_duration_seconds_bucket",
        "fhenode_inference_queue_depth",
        "fhenode_inference_pbs_total",
        "fhenode_eval_key_cache_bytes",
        "fhenode_store_size_bytes",
        "fhenode_store_flush_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }

    // Provisioning: the dashboard provider points at a directory the JSON is copied to, and
    // the datasource is Prometheus.
    let provider = read("grafana/provisioning/dashboards/fhenode.yml");
    for needle in ["apiVersion: 1", "providers:", "type: file", "path:"] {
        assert!(
            provider.contains(needle),
            "dashboard provider lacks {needle}"
        );
    }
    let datasource = read("grafana/provisioning/datasources/prometheus.yml");
    for needle in ["apiVersion: 1", "datasources:", "type: prometheus", "url:"] {
        assert!(datasource.contains(needle), "datasource lacks {needle}");
    }
}

#[test]
fn dashboard_queries_only_metrics_a_live_node_exports() {
    let queries = dashboard_queries(&dashboard());
    assert!(queries.len() > 20, "{} queries", queries.len());
    let bad = unknown_metrics(queries, live());
    assert!(bad.is_empty(), "dashboard:\n{}", bad.join("\n"));
}

// ------------------------------------------------------------------------------------------
// Alerts
// ------------------------------------------------------------------------------------------

/// (alert name, expr) from the rules file: `expr:` on one line or as a `|`/`>` block.
fn alert_rules(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut rules = Vec::new();
    let mut name = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start().trim_start_matches("- ");
        if let Some(n) = trimmed.strip_prefix("alert:") {
            name = n.trim().trim_matches(['"', '\'']).to_string();
        } else if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            let expr = if rest.starts_with('|') || rest.starts_with('>') {
                let indent = line.len() - line.trim_start().len();
                let mut body = Vec::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    body.push(next.trim());
                    i += 1;
                }
                body.join("\n")
            } else {
                rest.trim_matches(['"', '\'']).to_string()
            };
            rules.push((name.clone(), expr));
        }
        i += 1;
    }
    rules
}

#[test]
fn alerts_cover_the_issue_and_query_only_exported_metrics() {
    let rules = alert_rules(&read(ALERTS));
    let names: Vec<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for needed in [
        "FhenodeNoPeers",
        "FhenodeSessionFailures",
        "FhenodeDecryptionRefused",
        "FhenodeInferenceQueueSaturated",
        "FhenodeStoreGrowing",
    ] {
        assert!(names.contains(&needed), "alert {needed} missing: {names:?}");
    }
    let bad = unknown_metrics(
        rules
            .into_iter()
            .map(|(name, expr)| (format!("alert {name}"), expr)),
        live(),
    );
    assert!(bad.is_empty(), "{ALERTS}:\n{}", bad.join("\n"));
}

/// Unit tests for the alert rules, run by `promtool test rules`: each alert fires on the
/// situation it is for and stays quiet otherwise.
const ALERT_TESTS: &str = r#"
rule_files:
  - RULES
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'fhenode_peers_connected{job="fhenode",instance="lonely:8470"}'
        values: '0x30'
      - series: 'fhenode_peers_connected{job="fhenode",instance="busy:8470"}'
        values: '3x30'
      - series: 'fhenode_session_outcomes_total{job="fhenode",instance="a:8470",outcome="failed"}'
        values: '0 0 0 1 1 1 1 1 1 1'
      - series: 'fhenode_session_outcomes_total{job="fhenode",instance="a:8470",outcome="done"}'
        values: '0 1 2 3 4 5 6 7 8 9'
      - series: 'fhenode_key_releases_total{job="fhenode",instance="a:8470",outcome="refused"}'
        values: '0 0 1 1 1 1'
      - series: 'fhenode_key_releases_total{job="fhenode",instance="a:8470",outcome="answered"}'
        values: '0 1 2 3 4 5'
      - series: 'fhenode_inference_queue_depth{job="fhenode",instance="a:8470"}'
        values: '40x30'
      - series: 'fhenode_inference_queue_depth{job="fhenode",instance="b:8470"}'
        values: '40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0'
      - series: 'fhenode_store_size_bytes{job="fhenode",instance="a:8470"}'
        values: '0+100000000x300'
      - series: 'fhenode_store_size_bytes{job="fhenode",instance="b:8470"}'
        values: '1000000000x300'
      - series: 'up{job="fhenode",instance="gone:8470"}'
        values: '1 1 0x30'
      - series: 'up{job="fhenode",instance="a:8470"}'
        values: '1x30'
      - series: 'fhenode_start_time_seconds{job="fhenode",instance="a:8470"}'
        values: '100 100 200 300 400 500 500 500'
      - series: 'fhenode_start_time_seconds{job="fhenode",instance="b:8470"}'
        values: '100x10'
    promql_expr_test:
      - expr: count by (alertname, instance) (ALERTS{alertname="FhenodeDown",alertstate="firing"})
        eval_time: 10m
        exp_samples:
          - labels: '{alertname="FhenodeDown",instance="gone:8470"}'
            value: 1
      - expr: count by (alertname, instance) (ALERTS{alertname="FhenodeRestarting",alertstate="firing"})
        eval_time: 7m
        exp_samples:
          - labels: '{alertname="FhenodeRestarting",instance="a:8470"}'
            value: 1
      - expr: count by (alertname, instance) (ALERTS{alertname="FhenodeNoPeers",alertstate="firing"})
        eval_time: 20m
        exp_samples:
          - labels: '{alertname="FhenodeNoPeers",instance="lonely:8470"}'
            value: 1
      - expr: count by (alertname, instance) (ALERTS{alertname="FhenodeSessionFailures",alertstate="firing"})
        eval_time: 5m
        exp_samples:
          - labels: '{alertname="FhenodeSessionFailures",instance="a:8470"}'
            value: 1
      - expr: count by (alertname, instance) (ALERTS{alertname="FhenodeDecryptionRefused",alertstate="firing"})
        eval_time: 3m
        exp_samples:
          - labels: '{alertname="FhenodeDecryptionRefused",instance="a:8470"}'
            value: 1
      - expr: count by (alertname, instance) (ALERTS{alertname="FhenodeInferenceQueueSaturated",alertstate="firing"})
        eval_time: 29m
        exp_samples:
          - labels: '{alertname="FhenodeInferenceQueueSaturated",instance="a:8470"}'
            value: 1
      - expr: count by (alertname, instance) (ALERTS{alertname="FhenodeStoreGrowing",alertstate="firing"})
        eval_time: 290m
        exp_samples:
          - labels: '{alertname="FhenodeStoreGrowing",instance="a:8470"}'
            value: 1
"#;

#[test]
fn promtool_accepts_and_unit_tests_the_alert_rules() {
    if !have(
        "promtool",
        "promtool check/test rules of grafana/alerts.yml",
    ) {
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo(ALERTS))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}",
        text(&out)
    );
    let dir = tempfile::tempdir().unwrap();
    let tests = dir.path().join("alerts_test.yml");
    std::fs::write(
        &tests,
        ALERT_TESTS.replace("RULES", &repo(ALERTS).display().to_string()),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&tests)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}",
        text(&out)
    );
}

// ------------------------------------------------------------------------------------------
// docs/METRICS.md
// ------------------------------------------------------------------------------------------

/// Names in the first column of the catalogue's tables (`| \`name\` | …`).
fn catalogued(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|l| l.trim().strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[test]
fn the_metrics_catalogue_documents_every_exported_family() {
    let doc = read(CATALOGUE);
    let listed = catalogued(&doc);
    let live = live();
    let exported: BTreeSet<String> = live
        .documented_names()
        .into_iter()
        .filter(|n| PREFIXES.iter().any(|p| n.starts_with(p)))
        .collect();
    let missing: Vec<&String> = exported.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "{CATALOGUE} does not document {missing:?}"
    );
    let stale: Vec<&String> = listed.difference(&exported).collect();
    assert!(
        stale.is_empty(),
        "{CATALOGUE} documents families the node does not export: {stale:?}"
    );
    // Each row gives type, unit, labels and meaning.
    for line in doc.lines().filter(|l| l.trim().starts_with("| `")) {
        let cells = line.trim().trim_matches('|').split('|').count();
        assert!(
            cells >= 5,
            "row needs name | type | unit | labels | meaning: {line}"
        );
        let name = line.trim()[3..].split('`').next().unwrap_or_default();
        if let Some(kind) = live
            .families
            .iter()
            .find(|(f, k)| name == *f || (k.as_str() == "counter" && name == format!("{f}_total")))
            .map(|(_, k)| k)
        {
            let cell = line
                .trim()
                .trim_matches('|')
                .split('|')
                .nth(1)
                .unwrap_or("");
            assert!(
                cell.contains(kind.as_str()),
                "{name} is a {kind}, {CATALOGUE} says {cell}"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// A real Prometheus
// ------------------------------------------------------------------------------------------

/// A child process killed (and reaped) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn poll<T>(
    what: &str,
    deadline: Instant,
    log: &Path,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("timed out waiting for {what}; Prometheus said:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_real_node() {
    if !have("prometheus", "the real scrape test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let client = common::client();
    let node = common::start(
        &dir.path().join("node"),
        common::free_port(),
        "/ip4/127.0.0.1/tcp/0",
        None,
    );
    common::peer_id(&client, &node).await;
    let target = node.api.trim_start_matches("http://").to_string();

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: fhenode\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['{target}']\n",
            rules = repo(ALERTS).display()
        ),
    )
    .unwrap();
    let port = common::free_port();
    let log = dir.path().join("prometheus.log");
    let prometheus = Reaped(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let deadline = Instant::now() + Duration::from_secs(60);

    let health = poll("the scrape target to be up", deadline, &log, async || {
        let targets = common::get_json(&client, &format!("{api}/targets")).await?;
        let active = targets["data"]["activeTargets"].as_array()?;
        let t = active.iter().find(|t| t["labels"]["job"] == "fhenode")?;
        (t["health"] == "up").then(|| t["scrapeUrl"].as_str().unwrap_or("").to_string())
    })
    .await;
    assert!(health.contains(&target), "{health}");

    let build = poll(
        "fhenode_build_info to be ingested",
        deadline,
        &log,
        async || {
            let q =
                common::get_json(&client, &format!("{api}/query?query=fhenode_build_info")).await?;
            let result = q["data"]["result"].as_array()?;
            result.first().cloned()
        },
    )
    .await;
    assert_eq!(build["metric"]["job"], "fhenode");
    assert_eq!(build["metric"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(build["value"][1], "1");

    // The alert rules load and evaluate against the real series without errors.
    let groups = poll(
        "the alert rules to be evaluated",
        deadline,
        &log,
        async || {
            let rules = common::get_json(&client, &format!("{api}/rules")).await?;
            let groups = rules["data"]["groups"].as_array()?.clone();
            let evaluated = !groups.is_empty()
                && groups.iter().all(|g| {
                    g["rules"].as_array().is_some_and(|rules| {
                        rules.iter().all(|r| {
                            r["lastEvaluation"]
                                .as_str()
                                .is_some_and(|t| !t.starts_with("0001-"))
                        })
                    })
                });
            evaluated.then_some(groups)
        },
    )
    .await;
    for group in &groups {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(
                rule["health"], "ok",
                "rule {} did not evaluate: {}",
                rule["name"], rule["lastError"]
            );
        }
    }
    drop(prometheus);
    drop(node);
}
