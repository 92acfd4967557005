use super::*;
use crate::crypto::Profile;

use std::io::Write;

const TOKEN: &str = "s3cret-token-0123456789abcdef";

fn env(vars: &[(&str, &str)]) -> Option<HashMap<String, String>> {
    Some(
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn no_env() -> Option<HashMap<String, String>> {
    Some(HashMap::new())
}

fn toml_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    file.write_all(contents.as_bytes()).expect("write");
    file.flush().expect("flush");
    file
}

fn load_toml(contents: &str) -> Result<Config, ConfigError> {
    let file = toml_file(contents);
    load(Some(file.path()), no_env(), &CliOverrides::default())
}

fn load_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let file = toml_file("");
    load(Some(file.path()), env(vars), &CliOverrides::default())
}

fn ma(s: &str) -> Multiaddr {
    s.parse().expect("multiaddr")
}

/// Asserts an `Invalid` error for `key` whose reason contains every one of `needles`.
#[track_caller]
fn assert_invalid(result: Result<Config, ConfigError>, key: &str, needles: &[&str]) {
    match result {
        Err(ConfigError::Invalid { key: k, reason }) => {
            assert_eq!(k, key, "wrong key; reason: {reason}");
            for needle in needles {
                assert!(
                    reason.contains(needle),
                    "reason {reason:?} lacks {needle:?}"
                );
            }
        }
        other => panic!("expected Invalid for `{key}`, got {other:?}"),
    }
}

const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

#[test]
fn shipped_file_equals_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_FILE);
    let loaded = load(Some(&path), no_env(), &CliOverrides::default()).unwrap();
    assert_eq!(loaded, Config::default());
}

#[test]
fn shipped_file_lists_every_key() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_FILE);
    let text = std::fs::read_to_string(path).unwrap();
    // The token has no default, so it is present only as a commented-out example.
    let uncommented = text.replace("# token = ", "token = ");
    let table: toml::Table = toml::from_str(&uncommented).unwrap();
    let schema = schema();
    for (section, keys) in schema {
        let section_table = if section.is_empty() {
            &table
        } else {
            table[section].as_table().unwrap()
        };
        for key in keys {
            assert!(
                section_table.contains_key(*key),
                "{section}.{key} missing from the shipped file"
            );
            if !schema.iter().any(|(s, _)| s == key) {
                let full = if section.is_empty() {
                    key.to_string()
                } else {
                    format!("{section}.{key}")
                };
                assert!(
                    text.contains(&env_var_name(&full)),
                    "{} not mentioned",
                    env_var_name(&full)
                );
            }
        }
    }
}

#[test]
fn defaults_are_as_documented() {
    let c = Config::default();
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.profile, Profile::Secure);
    assert_eq!(
        c.p2p.listen,
        vec![
            ma("/ip4/0.0.0.0/tcp/4001"),
            ma("/ip4/0.0.0.0/udp/4001/quic-v1")
        ]
    );
    assert!(c.p2p.bootstrap.is_empty());
    assert!(c.p2p.mdns);
    assert_eq!(c.p2p.max_request_bytes, 64 << 20);
    assert_eq!(c.p2p.max_response_bytes, 64 << 20);
    assert_eq!(c.p2p.max_gossip_bytes, 64 << 10);
    assert_eq!(c.p2p.max_connections, 256);
    assert_eq!(c.p2p.max_connections_per_peer, 4);
    assert_eq!(c.p2p.request_timeout(), Duration::from_secs(120));
    assert_eq!(c.p2p.idle_timeout(), Duration::from_secs(3600));
    assert_eq!(c.api.listen, "127.0.0.1:8470".parse().unwrap());
    assert!(c.api.token.is_none());
    assert_eq!(c.api.max_body_bytes, 256 << 20);
    assert_eq!(c.aggregation.prepare_budget_bytes, 1 << 30);
    assert_eq!(c.inference.workers, 2);
    assert_eq!(c.inference.memory_budget_bytes, 4 << 30);
    assert_eq!(c.log.format, LogFormat::Pretty);
    assert_eq!(c.log.level, "info");
    c.validate().unwrap();
    c.log.env_filter().unwrap();
}

#[test]
fn no_file_no_env_gives_defaults() {
    // `None` would read config/fhenode.toml from the current directory, which under
    // `cargo test` is the shipped file; it equals the defaults either way.
    let c = load(None, no_env(), &CliOverrides::default()).unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn precedence_file_env_cli() {
    let file = toml_file(
        r#"
        data_dir = "/var/lib/file"
        profile = "fast"
        [p2p]
        listen = ["/ip4/127.0.0.1/tcp/1001"]
        mdns = true
        max_connections = 11
        [api]
        listen = "127.0.0.1:9001"
        [log]
        format = "json"
        "#,
    );
    let env_vars = [
        ("FHENODE__DATA_DIR", "/var/lib/env"),
        ("FHENODE__P2P__LISTEN", "/ip4/127.0.0.1/tcp/1002"),
        ("FHENODE__P2P__MDNS", "true"),
        ("FHENODE__P2P__MAX_CONNECTIONS", "12"),
        ("FHENODE__API__LISTEN", "127.0.0.1:9002"),
        ("UNRELATED", "ignored"),
        ("FHENODE_SINGLE_UNDERSCORE", "ignored"),
    ];
    let cli = CliOverrides {
        data_dir: Some(PathBuf::from("/var/lib/cli")),
        api_listen: Some("127.0.0.1:9003".to_owned()),
        p2p_listen: vec!["/ip4/127.0.0.1/tcp/1003".to_owned()],
        bootstrap: Vec::new(),
        no_mdns: true,
    };

    // File over defaults.
    let c = load(Some(file.path()), no_env(), &CliOverrides::default()).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/file"));
    assert_eq!(c.profile, Profile::Fast);
    assert_eq!(c.p2p.listen, vec![ma("/ip4/127.0.0.1/tcp/1001")]);
    assert_eq!(c.p2p.max_connections, 11);
    assert_eq!(c.api.listen.port(), 9001);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "info", "unset keys keep their defaults");
    assert_eq!(c.p2p.max_connections_per_peer, 4);

    // Environment over file.
    let c = load(Some(file.path()), env(&env_vars), &CliOverrides::default()).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/env"));
    assert_eq!(c.p2p.listen, vec![ma("/ip4/127.0.0.1/tcp/1002")]);
    assert!(c.p2p.mdns);
    assert_eq!(c.p2p.max_connections, 12);
    assert_eq!(c.api.listen.port(), 9002);
    assert_eq!(
        c.profile,
        Profile::Fast,
        "file value kept where env is silent"
    );

    // Command line over environment.
    let c = load(Some(file.path()), env(&env_vars), &cli).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/cli"));
    assert_eq!(c.p2p.listen, vec![ma("/ip4/127.0.0.1/tcp/1003")]);
    assert!(!c.p2p.mdns);
    assert_eq!(c.api.listen.port(), 9003);
    assert_eq!(
        c.p2p.max_connections, 12,
        "env value kept where the CLI is silent"
    );
}

#[test]
fn env_lists() {
    let one = load_env(&[("FHENODE__P2P__LISTEN", "/ip4/127.0.0.1/tcp/5000")]).unwrap();
    assert_eq!(one.p2p.listen, vec![ma("/ip4/127.0.0.1/tcp/5000")]);

    let two = load_env(&[(
        "FHENODE__P2P__LISTEN",
        "/ip4/127.0.0.1/tcp/5000, /ip6/::1/udp/5001/quic-v1",
    )])
    .unwrap();
    assert_eq!(
        two.p2p.listen,
        vec![
            ma("/ip4/127.0.0.1/tcp/5000"),
            ma("/ip6/::1/udp/5001/quic-v1")
        ]
    );

    let boot =
        format!("/ip4/192.0.2.1/tcp/4001/p2p/{PEER},/ip4/192.0.2.2/udp/4001/quic-v1/p2p/{PEER}");
    let c = load_env(&[("FHENODE__P2P__BOOTSTRAP", &boot)]).unwrap();
    assert_eq!(c.p2p.bootstrap.len(), 2);
    assert_eq!(
        c.p2p.bootstrap[0],
        ma(&format!("/ip4/192.0.2.1/tcp/4001/p2p/{PEER}"))
    );

    // An empty value clears a list set by the file.
    let file = toml_file(&format!(
        "[p2p]\nbootstrap = [\"/ip4/192.0.2.1/tcp/4001/p2p/{PEER}\"]\n"
    ));
    let c = load(
        Some(file.path()),
        env(&[("FHENODE__P2P__BOOTSTRAP", "")]),
        &CliOverrides::default(),
    )
    .unwrap();
    assert!(c.p2p.bootstrap.is_empty());

    // ... and an empty listen list is refused.
    assert_invalid(
        load_env(&[("FHENODE__P2P__LISTEN", "")]),
        "p2p.listen",
        &["at least one"],
    );
}

#[test]
fn env_scalars_are_parsed_per_type_and_strings_kept_verbatim() {
    let numeric_token = "000012345678901234567890";
    let float_token = "1234e5678901234567";
    let c = load_env(&[
        ("FHENODE__PROFILE", "fast"),
        ("FHENODE__P2P__MDNS", "false"),
        ("FHENODE__P2P__MAX_GOSSIP_BYTES", "1024"),
        ("FHENODE__P2P__IDLE_TIMEOUT_SECS", "60"),
        ("FHENODE__API__TOKEN", numeric_token),
        ("FHENODE__API__MAX_BODY_BYTES", "1000"),
        ("FHENODE__LOG__FORMAT", "json"),
        ("FHENODE__LOG__LEVEL", "debug,libp2p=warn"),
        ("FHENODE__DATA_DIR", "12345"),
    ])
    .unwrap();
    assert_eq!(c.profile, Profile::Fast);
    assert!(!c.p2p.mdns);
    assert_eq!(c.p2p.max_gossip_bytes, 1024);
    assert_eq!(c.p2p.idle_timeout_secs, 60);
    assert_eq!(c.api.token.as_ref().unwrap().expose(), numeric_token);
    assert_eq!(c.api.max_body_bytes, 1000);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "debug,libp2p=warn");
    assert_eq!(c.data_dir, PathBuf::from("12345"));

    let c = load_env(&[("FHENODE__API__TOKEN", float_token)]).unwrap();
    assert_eq!(c.api.token.unwrap().expose(), float_token);
}

#[test]
fn env_number_errors_name_key_and_variable() {
    assert_invalid(
        load_env(&[("FHENODE__P2P__MAX_CONNECTIONS", "lots")]),
        "p2p.max_connections",
        &["lots", "FHENODE__P2P__MAX_CONNECTIONS"],
    );
    assert_invalid(
        load_env(&[("FHENODE__P2P__MAX_CONNECTIONS", "-1")]),
        "p2p.max_connections",
        &[],
    );
}

#[test]
fn bad_multiaddr_names_key_and_value() {
    assert_invalid(
        load_toml("[p2p]\nlisten = [\"/ip4/bad\"]\n"),
        "p2p.listen",
        &["`/ip4/bad`"],
    );
    assert_invalid(
        load_env(&[("FHENODE__P2P__LISTEN", "/ip4/bad")]),
        "p2p.listen",
        &["`/ip4/bad`", "FHENODE__P2P__LISTEN"],
    );
    assert_invalid(
        load(
            Some(toml_file("").path()),
            no_env(),
            &CliOverrides {
                bootstrap: vec!["nonsense".to_owned()],
                ..CliOverrides::default()
            },
        ),
        "p2p.bootstrap",
        &["`nonsense`", "command line"],
    );
}

#[test]
fn listen_and_bootstrap_shapes() {
    for good in [
        "/ip4/0.0.0.0/tcp/0",
        "/ip6/::/tcp/4001",
        "/ip4/127.0.0.1/udp/4001/quic-v1",
    ] {
        load_toml(&format!("[p2p]\nlisten = [\"{good}\"]\n")).unwrap();
    }
    for (bad, why) in [
        ("/dns4/example.com/tcp/4001", "/ip4"),
        ("/ip4/0.0.0.0/udp/4001", "quic-v1"),
        ("/ip4/0.0.0.0/udp/4001/quic", "quic-v1"),
        ("/ip4/0.0.0.0/tcp/4001/ws", "nothing may follow"),
        (
            &format!("/ip4/0.0.0.0/tcp/4001/p2p/{PEER}"),
            "nothing may follow",
        ),
    ] {
        assert_invalid(
            load_toml(&format!("[p2p]\nlisten = [\"{bad}\"]\n")),
            "p2p.listen",
            &[bad, why],
        );
    }
    assert_invalid(
        load_toml("[p2p]\nlisten = [\"/ip4/0.0.0.0/tcp/1\", \"/ip4/0.0.0.0/tcp/1\"]\n"),
        "p2p.listen",
        &["twice"],
    );

    for (bad, why) in [
        ("/ip4/192.0.2.1/tcp/4001".to_owned(), "/p2p/<peer id>"),
        (format!("/p2p/{PEER}"), "/ip4"),
        (format!("/dns4/boot.example/tcp/4001/p2p/{PEER}"), "/ip4"),
        (format!("/ip4/0.0.0.0/tcp/4001/p2p/{PEER}"), "0.0.0.0"),
        (format!("/ip4/192.0.2.1/tcp/0/p2p/{PEER}"), "port 0"),
    ] {
        assert_invalid(
            load_toml(&format!("[p2p]\nbootstrap = [\"{bad}\"]\n")),
            "p2p.bootstrap",
            &[why],
        );
    }
}

#[test]
fn api_token_required_off_loopback() {
    assert_invalid(
        load_toml("[api]\nlisten = \"0.0.0.0:8470\"\n"),
        "api.token",
        &["required when api.listen (0.0.0.0:8470) is not a loopback address"],
    );
    assert_invalid(
        load_env(&[("FHENODE__API__LISTEN", "[::]:8470")]),
        "api.token",
        &["not a loopback"],
    );
    let c = load_env(&[
        ("FHENODE__API__LISTEN", "0.0.0.0:8470"),
        ("FHENODE__API__TOKEN", TOKEN),
    ])
    .unwrap();
    assert!(c.api.token.as_ref().unwrap().matches(TOKEN));
    assert!(!c
        .api
        .token
        .as_ref()
        .unwrap()
        .matches("s3cret-token-0123456789abcdeF"));
    // Loopback, IPv6 and IPv4-mapped included, needs none.
    for lo in [
        "127.0.0.1:1",
        "127.1.2.3:1",
        "[::1]:1",
        "[::ffff:127.0.0.1]:1",
    ] {
        let c = load_env(&[("FHENODE__API__LISTEN", lo)]).unwrap();
        assert!(c.api.is_loopback(), "{lo}");
    }
}

#[test]
fn api_values_checked() {
    assert_invalid(
        load_toml("[api]\nlisten = \"localhost:8470\"\n"),
        "api.listen",
        &["`localhost:8470`"],
    );
    assert_invalid(
        load_toml("[api]\ntoken = \"short\"\n"),
        "api.token",
        &["at least 16"],
    );
    assert_invalid(
        load_toml("[api]\ntoken = \"has a space in the middle\"\n"),
        "api.token",
        &["printable ASCII"],
    );
    assert_invalid(
        load_toml("[api]\nmax_body_bytes = 0\n"),
        "api.max_body_bytes",
        &["out of range"],
    );
}

#[test]
fn inference_section_from_file_and_environment() {
    let file = toml_file("[inference]\nworkers = 3\nmemory_budget_bytes = 1048576\n");
    let c = load(Some(file.path()), no_env(), &CliOverrides::default()).unwrap();
    assert_eq!(
        c.inference,
        InferenceConfig {
            workers: 3,
            memory_budget_bytes: 1 << 20
        }
    );
    assert_eq!(
        c.api,
        ApiConfig::default(),
        "other sections keep their defaults"
    );

    // The environment over the file, key by key.
    let c = load(
        Some(file.path()),
        env(&[("FHENODE__INFERENCE__MEMORY_BUDGET_BYTES", "17179869184")]),
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(c.inference.memory_budget_bytes, 16 << 30);
    assert_eq!(
        c.inference.workers, 3,
        "file value kept where env is silent"
    );
    let c = load_env(&[("FHENODE__INFERENCE__WORKERS", "8")]).unwrap();
    assert_eq!(c.inference.workers, 8);
    assert_eq!(c.inference.memory_budget_bytes, 4 << 30);

    // The effective configuration dump carries the section and loads back.
    let dump = c.to_redacted_toml();
    assert!(
        dump.contains("[inference]") && dump.contains("workers = 8"),
        "{dump}"
    );
    assert_eq!(toml::from_str::<Config>(&dump).unwrap(), c);
}

#[test]
fn aggregation_section_from_file_and_environment() {
    let file = toml_file("[aggregation]\nprepare_budget_bytes = 0\n");
    let c = load(Some(file.path()), no_env(), &CliOverrides::default()).unwrap();
    assert_eq!(
        c.aggregation,
        AggregationConfig {
            prepare_budget_bytes: 0,
            min_contributors_floor: 2,
            max_sessions_per_peer: 64,
            max_pending_bytes: 4 << 30,
            plans_per_minute_per_peer: 120,
            expire_grace_secs: 3600,
            allowed_profiles: vec![Profile::Secure, Profile::Fast],
        },
        "0 turns preparing off"
    );
    let c = load(
        Some(file.path()),
        env(&[("FHENODE__AGGREGATION__PREPARE_BUDGET_BYTES", "1048576")]),
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(c.aggregation.prepare_budget_bytes, 1 << 20);
    let dump = c.to_redacted_toml();
    assert!(dump.contains("[aggregation]"), "{dump}");
    assert_eq!(toml::from_str::<Config>(&dump).unwrap(), c);
    assert_invalid(
        load_toml("[aggregation]\nprepare_budget_bytes = -1\n"),
        "aggregation.prepare_budget_bytes",
        &[],
    );
    assert_invalid(
        load_toml("[aggregation]\nprepare = 1\n"),
        "aggregation.prepare",
        &["unknown key", "prepare_budget_bytes"],
    );
}

#[test]
fn the_contributor_floor_and_allowed_profiles_from_file_and_environment() {
    let file =
        toml_file("[aggregation]\nmin_contributors_floor = 5\nallowed_profiles = [\"secure\"]\n");
    let c = load(Some(file.path()), no_env(), &CliOverrides::default()).unwrap();
    assert_eq!(c.aggregation.min_contributors_floor, 5);
    assert_eq!(c.aggregation.allowed_profiles, vec![Profile::Secure]);
    let c = load(
        Some(file.path()),
        env(&[
            ("FHENODE__AGGREGATION__MIN_CONTRIBUTORS_FLOOR", "3"),
            ("FHENODE__AGGREGATION__ALLOWED_PROFILES", "fast, secure"),
        ]),
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(c.aggregation.min_contributors_floor, 3);
    assert_eq!(
        c.aggregation.allowed_profiles,
        vec![Profile::Fast, Profile::Secure]
    );
    let dump = c.to_redacted_toml();
    assert_eq!(toml::from_str::<Config>(&dump).unwrap(), c);
    assert_invalid(
        load_toml("[aggregation]\nmin_contributors_floor = 0\n"),
        "aggregation.min_contributors_floor",
        &[],
    );
    assert_invalid(
        load_toml("[aggregation]\nallowed_profiles = [\"ckks\"]\n"),
        "aggregation.allowed_profiles",
        &["ckks"],
    );
    assert_invalid(
        load_toml("[aggregation]\nallowed_profiles = []\n"),
        "aggregation.allowed_profiles",
        &["at least one"],
    );
}

#[test]
fn inference_values_checked() {
    assert_invalid(
        load_toml("[inference]\nworkers = 0\n"),
        "inference.workers",
        &["0 is out of range", "1 to 1024"],
    );
    assert_invalid(
        load_toml("[inference]\nworkers = 1025\n"),
        "inference.workers",
        &["1025 is out of range"],
    );
    assert_invalid(
        load_env(&[("FHENODE__INFERENCE__WORKERS", "0")]),
        "inference.workers",
        &["out of range", "FHENODE__INFERENCE__WORKERS"],
    );
    assert_invalid(
        load_toml("[inference]\nmemory_budget_bytes = 0\n"),
        "inference.memory_budget_bytes",
        &["at least 1 byte"],
    );
    assert_invalid(
        load_env(&[("FHENODE__INFERENCE__MEMORY_BUDGET_BYTES", "4GiB")]),
        "inference.memory_budget_bytes",
        &["4GiB", "FHENODE__INFERENCE__MEMORY_BUDGET_BYTES"],
    );
    assert_invalid(
        load_toml("[inference]\nmemory_budget_bytes = -1\n"),
        "inference.memory_budget_bytes",
        &[],
    );
    assert_invalid(
        load_toml("[inference]\nworker = 2\n"),
        "inference.worker",
        &["unknown key", "[inference]", "workers, memory_budget_bytes"],
    );
    assert_invalid(
        load_env(&[("FHENODE__INFERENCE__BUDGET", "1")]),
        "inference.budget",
        &["FHENODE__INFERENCE__BUDGET"],
    );
    let c = load_toml("[inference]\nworkers = 1024\nmemory_budget_bytes = 1\n").unwrap();
    assert_eq!(
        (c.inference.workers, c.inference.memory_budget_bytes),
        (1024, 1)
    );
}

#[test]
fn bad_log_format_and_level() {
    assert_invalid(
        load_toml("[log]\nformat = \"xml\"\n"),
        "log.format",
        &["`xml`", "pretty", "json"],
    );
    assert_invalid(
        load_env(&[("FHENODE__LOG__FORMAT", "yaml")]),
        "log.format",
        &["`yaml`", "FHENODE__LOG__FORMAT"],
    );
    assert_invalid(
        load_toml("[log]\nlevel = \"warning\"\n"),
        "log.level",
        &["`warning` is not a level"],
    );
    assert_invalid(
        load_toml("[log]\nlevel = \"fhenode=loud\"\n"),
        "log.level",
        &["fhenode=loud"],
    );
    assert_invalid(load_toml("[log]\nlevel = \"\"\n"), "log.level", &["empty"]);
    for good in [
        "trace",
        "WARN",
        "off",
        "3",
        "info,fhenode::net=debug",
        "fhenode::net",
    ] {
        load_toml(&format!("[log]\nlevel = \"{good}\"\n")).unwrap();
    }
}

#[test]
fn bad_profile() {
    assert_invalid(
        load_toml("profile = \"turbo\"\n"),
        "profile",
        &["`turbo`", "secure", "fast"],
    );
}

#[test]
fn unknown_keys_refused_by_name() {
    assert_invalid(
        load_toml("datadir = \"x\"\n"),
        "datadir",
        &["unknown key", "top level", "data_dir"],
    );
    assert_invalid(
        load_toml("[p2p]\nlisten_addrs = []\n"),
        "p2p.listen_addrs",
        &["unknown key", "[p2p]", "listen"],
    );
    assert_invalid(
        load_toml("[metrics]\nenabled = true\n"),
        "metrics",
        &["unknown key"],
    );
    assert_invalid(
        load_env(&[("FHENODE__P2P__MDSN", "false")]),
        "p2p.mdsn",
        &["FHENODE__P2P__MDSN"],
    );
    // Several unknown keys: the first in order is reported, deterministically.
    assert_invalid(
        load_toml("zz = 1\naa = 2\n[log]\nb = 1\n"),
        "aa",
        &["unknown key"],
    );
}

#[test]
fn wrong_types_name_the_key() {
    assert_invalid(
        load_toml("[p2p]\nmdns = \"maybe\"\n"),
        "p2p.mdns",
        &["maybe"],
    );
    assert_invalid(
        load_toml("[p2p]\nmax_connections = 70000000000\n"),
        "p2p.max_connections",
        &[],
    );
    assert_invalid(load_toml("p2p = 3\n"), "p2p", &[]);
    assert_invalid(
        load_toml("[p2p]\nlisten = \"/ip4/0.0.0.0/tcp/1\"\n"),
        "p2p.listen",
        &[],
    );
}

#[test]
fn range_checks() {
    for (toml, key) in [
        ("[p2p]\nmax_request_bytes = 0", "p2p.max_request_bytes"),
        (
            "[p2p]\nmax_request_bytes = 1073741825",
            "p2p.max_request_bytes",
        ),
        (
            "[p2p]\nmax_response_bytes = 1073741825",
            "p2p.max_response_bytes",
        ),
        ("[p2p]\nmax_gossip_bytes = 1048577", "p2p.max_gossip_bytes"),
        ("[p2p]\nmax_gossip_bytes = 0", "p2p.max_gossip_bytes"),
        ("[p2p]\nmax_connections = 0", "p2p.max_connections"),
        (
            "[p2p]\nmax_connections = 2\nmax_connections_per_peer = 3",
            "p2p.max_connections_per_peer",
        ),
        (
            "[p2p]\nrequest_timeout_secs = 0",
            "p2p.request_timeout_secs",
        ),
        ("[p2p]\nidle_timeout_secs = 0", "p2p.idle_timeout_secs"),
        ("data_dir = \"\"", "data_dir"),
    ] {
        assert_invalid(load_toml(toml), key, &[]);
    }
    let c =
        load_toml("[p2p]\nmax_request_bytes = 1073741824\nmax_gossip_bytes = 1048576\n").unwrap();
    assert_eq!(c.p2p.max_request_bytes, 1 << 30);
}

#[test]
fn file_errors_are_load_errors() {
    let missing = Path::new("/nonexistent/fhenode.toml");
    assert!(matches!(
        load(Some(missing), no_env(), &CliOverrides::default()),
        Err(ConfigError::Load(m)) if m.contains("/nonexistent/fhenode.toml")
    ));
    assert!(matches!(load_toml("[p2p\n"), Err(ConfigError::Load(_))));
    // A file without the .toml extension is still read as TOML.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"[p2p]\nmdns = false\n").unwrap();
    let c = load(Some(file.path()), no_env(), &CliOverrides::default()).unwrap();
    assert!(!c.p2p.mdns);
}

#[test]
fn token_never_printed() {
    let c = load_env(&[
        ("FHENODE__API__LISTEN", "0.0.0.0:8470"),
        ("FHENODE__API__TOKEN", TOKEN),
    ])
    .unwrap();
    assert_eq!(c.api.token.as_ref().unwrap().expose(), TOKEN);

    let debug = format!("{c:?} {c:#?}");
    assert!(!debug.contains(TOKEN));
    assert!(debug.contains(REDACTED));

    let dump = c.to_redacted_toml();
    assert!(!dump.contains(TOKEN));
    assert!(dump.contains("token = \"<redacted>\""), "{dump}");

    let json = serde_json::to_string(&c).unwrap();
    assert!(!json.contains(TOKEN));

    // A redacted dump does not load back as if the placeholder were the token.
    let err = toml::from_str::<Config>(&dump).unwrap_err().to_string();
    assert!(
        err.contains("`api.token`") && err.contains("placeholder"),
        "{err}"
    );
}

#[test]
fn redacted_toml_round_trips_without_token() {
    let mut c = Config {
        profile: Profile::Fast,
        ..Config::default()
    };
    c.p2p.bootstrap = vec![ma(&format!("/ip4/192.0.2.1/tcp/4001/p2p/{PEER}"))];
    c.api.listen = "[::1]:9000".parse().unwrap();
    c.log.format = LogFormat::Json;
    let dump = c.to_redacted_toml();
    assert!(!dump.contains("token"), "{dump}");
    let back: Config = toml::from_str(&dump).unwrap();
    assert_eq!(back, c);
    // And the dump is a valid configuration file.
    let file = toml_file(&dump);
    let loaded = load(Some(file.path()), no_env(), &CliOverrides::default()).unwrap();
    assert_eq!(loaded, c);
}

#[test]
fn deserialize_refuses_invalid() {
    let err = toml::from_str::<Config>("[api]\nlisten = \"0.0.0.0:1\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`api.token`"), "{err}");
    assert!(toml::from_str::<Config>("bogus = 1\n").is_err());
    assert_eq!(toml::from_str::<Config>("").unwrap(), Config::default());
}

#[test]
fn env_var_names() {
    assert_eq!(env_var_name("data_dir"), "FHENODE__DATA_DIR");
    assert_eq!(env_var_name("p2p.listen[1]"), "FHENODE__P2P__LISTEN");
    assert_eq!(env_var_name("api.token"), "FHENODE__API__TOKEN");
}
