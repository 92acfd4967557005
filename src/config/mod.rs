//! Node configuration.
//!
//! Four layers, each overriding the one before it:
//!
//! 1. built-in defaults ([`Config::default`]);
//! 2. a TOML file: the one given on the command line, else `config/fhenode.toml` relative to
//!    the current directory when it exists (the shipped file documents every key);
//! 3. environment variables `FHENODE__SECTION__KEY`, e.g. `FHENODE__API__LISTEN`,
//!    `FHENODE__DATA_DIR`; the list keys `p2p.listen` and `p2p.bootstrap` take comma-separated
//!    values;
//! 4. command-line flags ([`CliOverrides`]).
//!
//! Unknown keys are refused in every layer, and every error names the offending key and, where
//! known, the layer that set it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ::config::{Environment, File, FileFormat, Source, Value, ValueKind};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;
use zeroize::Zeroizing;

use crate::crypto::Profile;

/// Prefix of the environment variables read by [`load`].
pub const ENV_PREFIX: &str = "FHENODE";
/// Separator between the prefix, sections and keys of an environment variable name.
pub const ENV_SEPARATOR: &str = "__";
/// The file read by [`load`] when no file is named, relative to the current directory.
pub const DEFAULT_FILE: &str = "config/fhenode.toml";
/// What [`ApiToken`] prints in place of its value.
pub const REDACTED: &str = "<redacted>";

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: u64 = 1024 * 1024 * 1024;

/// Upper bound of `p2p.max_request_bytes` and `p2p.max_response_bytes`.
pub const MAX_MESSAGE_BYTES_LIMIT: u64 = GIB;
/// Upper bound of `p2p.max_gossip_bytes`.
pub const MAX_GOSSIP_BYTES_LIMIT: u64 = MIB as u64;
/// Upper bound of `api.max_body_bytes`.
pub const MAX_BODY_BYTES_LIMIT: u64 = 4 * GIB;
/// Upper bound of `p2p.request_timeout_secs` (one day).
pub const MAX_REQUEST_TIMEOUT_SECS: u64 = 24 * 3600;
/// Upper bound of `p2p.unreachable_after_secs` (ten minutes).
const MAX_UNREACHABLE_AFTER_SECS: u64 = 600;
/// Upper bound of `p2p.idle_timeout_secs` (thirty days).
pub const MAX_IDLE_TIMEOUT_SECS: u64 = 30 * 24 * 3600;
/// Shortest accepted `api.token`.
pub const MIN_TOKEN_LEN: usize = 16;
/// Upper bound of `inference.workers`.
pub const MAX_INFERENCE_WORKERS: u64 = 1024;

/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: [&str; 3] = [
    "p2p.listen",
    "p2p.bootstrap",
    "aggregation.allowed_profiles",
];

/// Every key, by section ("" is the top level); used to refuse unknown keys by name.
const SCHEMA: [(&str, &[&str]); 7] = [
    (
        "",
        &[
            "data_dir",
            "profile",
            "p2p",
            "api",
            "aggregation",
            "inference",
            "store",
            "log",
        ],
    ),
    (
        "p2p",
        &[
            "listen",
            "bootstrap",
            "mdns",
            "max_request_bytes",
            "max_response_bytes",
            "max_gossip_bytes",
            "max_connections",
            "max_connections_per_peer",
            "request_timeout_secs",
            "unreachable_after_secs",
            "idle_timeout_secs",
        ],
    ),
    (
        "api",
        &["listen", "token", "max_body_bytes", "sessions_per_minute"],
    ),
    (
        "aggregation",
        &[
            "prepare_budget_bytes",
            "min_contributors_floor",
            "max_sessions_per_peer",
            "max_pending_bytes",
            "plans_per_minute_per_peer",
            "expire_grace_secs",
            "allowed_profiles",
        ],
    ),
    ("inference", &["workers", "memory_budget_bytes"]),
    ("store", &["min_free_bytes"]),
    ("log", &["format", "level"]),
];

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// The effective node configuration.
///
/// `Serialize` writes the token as `"<redacted>"`; `Deserialize` accepts the same document shape
/// as the configuration file (missing keys take their defaults, unknown keys are refused) and
/// validates the result, so a deserialized `Config` is always valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RawConfig", try_from = "RawConfig")]
pub struct Config {
    /// Directory of the node's persistent state (identity key, store).
    pub data_dir: PathBuf,
    /// The default crypto profile of sessions this node creates.
    pub profile: Profile,
    pub p2p: P2pConfig,
    pub api: ApiConfig,
    pub aggregation: AggregationConfig,
    pub inference: InferenceConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
}

/// The libp2p swarm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct P2pConfig {
    /// Addresses to listen on: `/ip4|ip6/<addr>/tcp/<port>` or `/ip4|ip6/<addr>/udp/<port>/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start-up; each ends with `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Largest request-response request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Largest request-response response accepted, in bytes.
    pub max_response_bytes: usize,
    /// Gossipsub max transmit size, in bytes.
    pub max_gossip_bytes: usize,
    /// Established connections in total.
    pub max_connections: u32,
    /// Established connections per peer.
    pub max_connections_per_peer: u32,
    /// Request-response timeout, in seconds.
    pub request_timeout_secs: u64,
    /// How long a request made for a waiting client (an update's upload to its coordinator)
    /// retries a peer it cannot reach before answering that the peer is unreachable.
    pub unreachable_after_secs: u64,
    /// How long an idle connection is kept, in seconds.
    pub idle_timeout_secs: u64,
}

impl P2pConfig {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// The HTTP API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Address and port the API binds to.
    pub listen: SocketAddr,
    /// Bearer token clients must present; required when `listen` is not a loopback address.
    pub token: Option<ApiToken>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Sessions (and series) the API creates per minute, in bursts of as many; one more is
    /// refused with 429 `rate_limited`.
    pub sessions_per_minute: u32,
}

impl ApiConfig {
    /// Whether the API listens on a loopback address only (IPv4-mapped loopback included).
    pub fn is_loopback(&self) -> bool {
        self.listen.ip().to_canonical().is_loopback()
    }
}

/// Secure aggregation sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregationConfig {
    /// Memory allowed for encryptions a participant prepares ahead, in bytes (0: none). When a
    /// session opens, the node draws its encryption of zero (4 to 6 bytes per parameter
    /// `secure`) while the update is still training, so that submitting only adds the values.
    pub prepare_budget_bytes: u64,
    /// The fewest contributors a session this node takes part in may be decrypted with,
    /// whatever its plan says: participants the coordinator controls count toward a plan's
    /// `min_participants`, so a node refuses plans below this floor, and as a member never
    /// releases keys for fewer contributors.
    pub min_contributors_floor: u32,
    /// Sessions not yet over that one coordinator may have this node hold state for (as a
    /// member or participant); a plan beyond them is refused with 429 `quota_exceeded`.
    pub max_sessions_per_peer: u32,
    /// Bytes that one coordinator's sessions may have this node hold: plans and a
    /// participant's results while kept, a member's seeds and a participant's update until a
    /// session is over. Sessions that are over are dropped, oldest first, to make room; a plan
    /// that does not fit even then is refused with 429 `quota_exceeded`.
    pub max_pending_bytes: u64,
    /// New plans one coordinator may send per minute, in bursts of as many; one more is
    /// refused with 429 `rate_limited` (the coordinator retries it until its deadline).
    pub plans_per_minute_per_peer: u32,
    /// A session this node joined whose coordinator never ended it is dropped (its record
    /// and secrets) this long after its three deadlines have passed, and at a start after.
    pub expire_grace_secs: u64,
    /// Profiles this node accepts in sessions others create.
    pub allowed_profiles: Vec<Profile>,
}

/// Encrypted inference: the evaluation pool and the memory budget of loaded
/// evaluation keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InferenceConfig {
    /// Evaluations running at once (each may use several cores).
    pub workers: usize,
    /// Memory allowed for the evaluation keys loaded on this node, in bytes; a request whose
    /// key would not fit even after evicting every other key is refused up front.
    pub memory_budget_bytes: u64,
}

/// The node's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Free bytes the store's disk must keep: below them, new sessions, uploads, contexts and
    /// models are refused (507) before anything is written, so the node keeps the room to
    /// finish the work it took (0: no check).
    pub min_free_bytes: u64,
}

/// The API bearer token. Its `Debug` and `Serialize` print `"<redacted>"`, it has no `Display`,
/// and its memory is wiped on drop; [`ApiToken::expose`] is the only way to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(Zeroizing<String>);

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        ApiToken(Zeroizing::new(token.into()))
    }

    /// The token itself.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// Compares a presented token with this one in time independent of their contents
    /// (both are hashed first, and BLAKE3 hashes compare in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        blake3::hash(self.0.as_bytes()) == blake3::hash(presented.as_bytes())
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for ApiToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for ApiToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Zeroizing::<String>::deserialize(deserializer).map(ApiToken)
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format `{other}`; expected `pretty` or `json`"
            )),
        }
    }
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive, e.g. `info` or `info,fhenode::net=debug`.
    pub level: String,
}

impl LogConfig {
    /// The filter `level` describes.
    pub fn env_filter(&self) -> Result<EnvFilter, ConfigError> {
        check_log_level(&self.level)?;
        EnvFilter::try_new(&self.level).map_err(|e| invalid("log.level", e))
    }
}

/// Values given on the command line; they override every other layer.
#[derive(Default, Clone, Debug)]
pub struct CliOverrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--api-listen ADDR:PORT`
    pub api_listen: Option<String>,
    /// `--p2p-listen MULTIADDR` (repeatable); if non-empty replaces `p2p.listen`.
    pub p2p_listen: Vec<String>,
    /// `--bootstrap MULTIADDR` (repeatable); if non-empty replaces `p2p.bootstrap`.
    pub bootstrap: Vec<String>,
    /// `--no-mdns`: true sets `p2p.mdns = false`.
    pub no_mdns: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("configuration: {0}")]
    Load(String),
}

fn invalid(key: &str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            profile: Profile::default(),
            p2p: P2pConfig::default(),
            api: ApiConfig::default(),
            aggregation: AggregationConfig::default(),
            inference: InferenceConfig::default(),
            store: StoreConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            listen: vec![
                Multiaddr::empty()
                    .with(Protocol::Ip4([0, 0, 0, 0].into()))
                    .with(Protocol::Tcp(4001)),
                Multiaddr::empty()
                    .with(Protocol::Ip4([0, 0, 0, 0].into()))
                    .with(Protocol::Udp(4001))
                    .with(Protocol::QuicV1),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            max_request_bytes: 64 * MIB,
            max_response_bytes: 64 * MIB,
            max_gossip_bytes: 64 * KIB,
            max_connections: 256,
            max_connections_per_peer: 4,
            request_timeout_secs: 120,
            unreachable_after_secs: 5,
            idle_timeout_secs: 3600,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            token: None,
            max_body_bytes: 256 * MIB,
            sessions_per_minute: 60,
        }
    }
}

impl Default for AggregationConfig {
    fn default() -> Self {
        AggregationConfig {
            prepare_budget_bytes: GIB,
            min_contributors_floor: 2,
            max_sessions_per_peer: 64,
            max_pending_bytes: 4 * GIB,
            plans_per_minute_per_peer: 120,
            expire_grace_secs: 3600,
            allowed_profiles: Profile::ALL.to_vec(),
        }
    }
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            workers: 2,
            memory_budget_bytes: 4 * GIB,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            min_free_bytes: 64 * MIB as u64,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Loads the configuration: built-in defaults < file < environment `FHENODE__SECTION__KEY` <
/// CLI overrides, then validates it.
///
/// `file`: `Some(path)` => that file must exist; `None` => [`DEFAULT_FILE`] relative to the
/// current directory if it exists, else no file.
/// `env`: `None` => the process environment; `Some(map)` => exactly these variables.
pub fn load(
    file: Option<&Path>,
    env: Option<HashMap<String, String>>,
    cli: &CliOverrides,
) -> Result<Config, ConfigError> {
    let file = match file {
        Some(path) if !path.is_file() => {
            return Err(ConfigError::Load(format!(
                "configuration file `{}` does not exist or is not a regular file",
                path.display()
            )));
        }
        Some(path) => Some(path.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|path| path.is_file()),
    };
    let mut builder = ::config::Config::builder();
    if let Some(path) = &file {
        builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
    }
    builder = builder.add_source(EnvSource::new(env));
    let layered = builder.build().map_err(|e| match (e, &file) {
        (::config::ConfigError::FileParse { cause, .. }, Some(path)) => ConfigError::Load(format!(
            "cannot parse `{}`: {}",
            path.display(),
            cause.to_string().trim_end()
        )),
        (e, _) => from_config_error(e),
    })?;

    let mut provenance = Provenance {
        layered,
        file,
        cli: HashSet::new(),
    };
    let mut raw = provenance
        .check_unknown_keys()
        .and_then(|()| {
            provenance
                .layered
                .clone()
                .try_deserialize::<RawConfig>()
                .map_err(from_config_error)
        })
        .map_err(|e| provenance.annotate(e))?;

    if let Some(dir) = &cli.data_dir {
        raw.data_dir = dir.clone();
        provenance.cli.insert("data_dir");
    }
    if let Some(listen) = &cli.api_listen {
        raw.api.listen = listen.clone();
        provenance.cli.insert("api.listen");
    }
    if !cli.p2p_listen.is_empty() {
        raw.p2p.listen = cli.p2p_listen.clone();
        provenance.cli.insert("p2p.listen");
    }
    if !cli.bootstrap.is_empty() {
        raw.p2p.bootstrap = cli.bootstrap.clone();
        provenance.cli.insert("p2p.bootstrap");
    }
    if cli.no_mdns {
        raw.p2p.mdns = false;
        provenance.cli.insert("p2p.mdns");
    }

    Config::from_raw(raw)
        .and_then(|config| config.validate().map(|()| config))
        .map_err(|e| provenance.annotate(e))
}

impl Config {
    /// Checks every value against its documented range; [`load`] calls it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }

        let p2p = &self.p2p;
        if p2p.listen.is_empty() {
            return Err(invalid("p2p.listen", "must contain at least one address"));
        }
        let mut seen = HashSet::new();
        for addr in &p2p.listen {
            check_transport(addr, true).map_err(|why| {
                invalid(
                    "p2p.listen",
                    format!("`{addr}` is not a listen address: {why}"),
                )
            })?;
            if !seen.insert(addr) {
                return Err(invalid("p2p.listen", format!("`{addr}` is listed twice")));
            }
        }
        for addr in &p2p.bootstrap {
            check_bootstrap(addr).map_err(|why| {
                invalid(
                    "p2p.bootstrap",
                    format!("`{addr}` is not a bootstrap address: {why}"),
                )
            })?;
        }
        check_range(
            "p2p.max_request_bytes",
            p2p.max_request_bytes as u64,
            1,
            MAX_MESSAGE_BYTES_LIMIT,
        )?;
        check_range(
            "p2p.max_response_bytes",
            p2p.max_response_bytes as u64,
            1,
            MAX_MESSAGE_BYTES_LIMIT,
        )?;
        check_range(
            "p2p.max_gossip_bytes",
            p2p.max_gossip_bytes as u64,
            1,
            MAX_GOSSIP_BYTES_LIMIT,
        )?;
        check_range(
            "p2p.max_connections",
            p2p.max_connections.into(),
            1,
            u32::MAX.into(),
        )?;
        check_range(
            "p2p.max_connections_per_peer",
            p2p.max_connections_per_peer.into(),
            1,
            p2p.max_connections.into(),
        )?;
        check_range(
            "aggregation.min_contributors_floor",
            self.aggregation.min_contributors_floor.into(),
            1,
            1024,
        )?;
        check_range(
            "aggregation.max_sessions_per_peer",
            self.aggregation.max_sessions_per_peer.into(),
            1,
            1 << 20,
        )?;
        check_range(
            "aggregation.max_pending_bytes",
            self.aggregation.max_pending_bytes,
            MIB as u64,
            u64::MAX,
        )?;
        check_range(
            "aggregation.expire_grace_secs",
            self.aggregation.expire_grace_secs,
            0,
            crate::session::spec::MAX_DEADLINE_SECS,
        )?;
        check_range(
            "aggregation.plans_per_minute_per_peer",
            self.aggregation.plans_per_minute_per_peer.into(),
            1,
            1 << 20,
        )?;
        if self.aggregation.allowed_profiles.is_empty() {
            return Err(invalid(
                "aggregation.allowed_profiles",
                "must name at least one profile",
            ));
        }
        check_range(
            "p2p.request_timeout_secs",
            p2p.request_timeout_secs,
            1,
            MAX_REQUEST_TIMEOUT_SECS,
        )?;
        check_range(
            "p2p.unreachable_after_secs",
            p2p.unreachable_after_secs,
            1,
            MAX_UNREACHABLE_AFTER_SECS,
        )?;
        check_range(
            "p2p.idle_timeout_secs",
            p2p.idle_timeout_secs,
            1,
            MAX_IDLE_TIMEOUT_SECS,
        )?;

        let api = &self.api;
        match &api.token {
            None if !api.is_loopback() => {
                return Err(invalid(
                    "api.token",
                    format!(
                        "required when api.listen ({}) is not a loopback address",
                        api.listen
                    ),
                ));
            }
            None => {}
            Some(token) => check_token(token.expose()).map_err(|why| invalid("api.token", why))?,
        }
        check_range(
            "api.max_body_bytes",
            api.max_body_bytes as u64,
            1,
            MAX_BODY_BYTES_LIMIT,
        )?;
        check_range(
            "api.sessions_per_minute",
            api.sessions_per_minute.into(),
            1,
            1 << 20,
        )?;

        let inference = &self.inference;
        check_range(
            "inference.workers",
            inference.workers as u64,
            1,
            MAX_INFERENCE_WORKERS,
        )?;
        if inference.memory_budget_bytes == 0 {
            return Err(invalid(
                "inference.memory_budget_bytes",
                "must be at least 1 byte (a budget below the evaluation key's size refuses \
                 every mlp evaluation, linear ones need none)",
            ));
        }

        check_log_level(&self.log.level)?;
        EnvFilter::try_new(&self.log.level).map_err(|e| {
            invalid(
                "log.level",
                format!("`{}` is not a valid filter directive: {e}", self.log.level),
            )
        })?;
        Ok(())
    }

    /// The effective configuration as TOML, with the token shown as `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        match toml::to_string_pretty(&RawConfig::from(self.clone())) {
            Ok(text) => text,
            Err(e) => format!("# the configuration cannot be written as TOML: {e}\n"),
        }
    }

    /// Parses the string-typed values of `raw`; the range checks are [`Config::validate`]'s.
    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let profile = Profile::from_str(&raw.profile).map_err(|_| {
            invalid(
                "profile",
                format!(
                    "unknown profile `{}`; expected `secure` or `fast`",
                    raw.profile
                ),
            )
        })?;
        let listen = parse_multiaddrs("p2p.listen", &raw.p2p.listen)?;
        let bootstrap = parse_multiaddrs("p2p.bootstrap", &raw.p2p.bootstrap)?;
        let api_listen = SocketAddr::from_str(raw.api.listen.trim()).map_err(|_| {
            invalid(
                "api.listen",
                format!(
                    "`{}` is not an IP address and port (e.g. `127.0.0.1:8470` or `[::1]:8470`)",
                    raw.api.listen
                ),
            )
        })?;
        let format =
            LogFormat::from_str(raw.log.format.trim()).map_err(|why| invalid("log.format", why))?;
        Ok(Config {
            data_dir: raw.data_dir,
            profile,
            p2p: P2pConfig {
                listen,
                bootstrap,
                mdns: raw.p2p.mdns,
                max_request_bytes: raw.p2p.max_request_bytes,
                max_response_bytes: raw.p2p.max_response_bytes,
                max_gossip_bytes: raw.p2p.max_gossip_bytes,
                max_connections: raw.p2p.max_connections,
                max_connections_per_peer: raw.p2p.max_connections_per_peer,
                request_timeout_secs: raw.p2p.request_timeout_secs,
                unreachable_after_secs: raw.p2p.unreachable_after_secs,
                idle_timeout_secs: raw.p2p.idle_timeout_secs,
            },
            api: ApiConfig {
                listen: api_listen,
                token: raw.api.token.map(ApiToken),
                max_body_bytes: raw.api.max_body_bytes,
                sessions_per_minute: raw.api.sessions_per_minute,
            },
            aggregation: AggregationConfig {
                prepare_budget_bytes: raw.aggregation.prepare_budget_bytes,
                min_contributors_floor: raw.aggregation.min_contributors_floor,
                max_sessions_per_peer: raw.aggregation.max_sessions_per_peer,
                max_pending_bytes: raw.aggregation.max_pending_bytes,
                plans_per_minute_per_peer: raw.aggregation.plans_per_minute_per_peer,
                expire_grace_secs: raw.aggregation.expire_grace_secs,
                allowed_profiles: raw
                    .aggregation
                    .allowed_profiles
                    .iter()
                    .map(|p| {
                        Profile::from_str(p).map_err(|_| {
                            invalid(
                                "aggregation.allowed_profiles",
                                format!("unknown profile `{p}`; expected `secure` or `fast`"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            },
            inference: InferenceConfig {
                workers: raw.inference.workers,
                memory_budget_bytes: raw.inference.memory_budget_bytes,
            },
            store: StoreConfig {
                min_free_bytes: raw.store.min_free_bytes,
            },
            log: LogConfig {
                format,
                level: raw.log.level,
            },
        })
    }
}

fn parse_multiaddrs(key: &str, values: &[String]) -> Result<Vec<Multiaddr>, ConfigError> {
    values
        .iter()
        .map(|s| {
            Multiaddr::from_str(s.trim())
                .map_err(|e| invalid(key, format!("`{s}` is not a valid multiaddr: {e}")))
        })
        .collect()
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            format!("{value} is out of range; expected {min} to {max}"),
        ));
    }
    Ok(())
}

/// `/ip4|ip6/<addr>` followed by `/tcp/<port>` or `/udp/<port>/quic-v1`, and nothing else
/// unless `exact` is false, in which case the remaining components are returned.
fn check_transport(addr: &Multiaddr, exact: bool) -> Result<Vec<Protocol<'_>>, String> {
    let mut parts = addr.iter();
    match parts.next() {
        Some(Protocol::Ip4(_)) | Some(Protocol::Ip6(_)) => {}
        _ => return Err("it must start with /ip4/<address> or /ip6/<address>".to_owned()),
    }
    match parts.next() {
        Some(Protocol::Tcp(_)) => {}
        Some(Protocol::Udp(_)) if matches!(parts.next(), Some(Protocol::QuicV1)) => {}
        _ => {
            return Err(
                "the address must be followed by /tcp/<port> or /udp/<port>/quic-v1".to_owned(),
            )
        }
    }
    let rest: Vec<Protocol<'_>> = parts.collect();
    if exact && !rest.is_empty() {
        return Err("nothing may follow /tcp/<port> or /udp/<port>/quic-v1".to_owned());
    }
    Ok(rest)
}

fn check_bootstrap(addr: &Multiaddr) -> Result<(), String> {
    let rest = check_transport(addr, false)?;
    if !matches!(rest.as_slice(), [Protocol::P2p(_)]) {
        return Err("it must end with /p2p/<peer id>".to_owned());
    }
    for part in addr.iter() {
        match part {
            Protocol::Ip4(ip) if ip.is_unspecified() => {
                return Err("0.0.0.0 cannot be dialled".to_owned())
            }
            Protocol::Ip6(ip) if ip.is_unspecified() => {
                return Err(":: cannot be dialled".to_owned())
            }
            Protocol::Tcp(0) | Protocol::Udp(0) => {
                return Err("port 0 cannot be dialled".to_owned())
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_token(token: &str) -> Result<(), String> {
    if token == REDACTED {
        return Err(format!(
            "`{REDACTED}` is the placeholder of a redacted dump, not a token"
        ));
    }
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!("must be at least {MIN_TOKEN_LEN} characters long"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must consist of printable ASCII characters without spaces (it is sent in an HTTP header)"
                .to_owned(),
        );
    }
    Ok(())
}

/// `EnvFilter` reads a bare word as a target with every level enabled, so `level = "warning"`
/// would silence everything but a target named `warning`; bare words must be levels.
fn check_log_level(level: &str) -> Result<(), ConfigError> {
    if level.trim().is_empty() {
        return Err(invalid("log.level", "must not be empty"));
    }
    for directive in level.split(',').map(str::trim) {
        if directive.is_empty() || directive.contains(['=', '[']) || directive.contains("::") {
            continue;
        }
        if LevelFilter::from_str(directive).is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "`{directive}` is not a level (trace, debug, info, warn, error, off); \
                     write `{directive}=<level>` to filter by target"
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The serialized shape, shared by the file, the environment, `Serialize` and `Deserialize`
// ---------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    data_dir: PathBuf,
    profile: String,
    p2p: RawP2p,
    api: RawApi,
    aggregation: RawAggregation,
    inference: RawInference,
    store: RawStore,
    log: RawLog,
}

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawP2p {
    listen: Vec<String>,
    bootstrap: Vec<String>,
    mdns: bool,
    max_request_bytes: usize,
    max_response_bytes: usize,
    max_gossip_bytes: usize,
    max_connections: u32,
    max_connections_per_peer: u32,
    request_timeout_secs: u64,
    unreachable_after_secs: u64,
    idle_timeout_secs: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawApi {
    listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<Zeroizing<String>>,
    max_body_bytes: usize,
    sessions_per_minute: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAggregation {
    prepare_budget_bytes: u64,
    min_contributors_floor: u32,
    max_sessions_per_peer: u32,
    max_pending_bytes: u64,
    plans_per_minute_per_peer: u32,
    expire_grace_secs: u64,
    allowed_profiles: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawStore {
    min_free_bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawInference {
    workers: usize,
    memory_budget_bytes: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    format: String,
    level: String,
}

/// Redacts the token: this conversion is what `Serialize` and `to_redacted_toml` write.
impl From<Config> for RawConfig {
    fn from(config: Config) -> Self {
        let Config {
            data_dir,
            profile,
            p2p,
            api,
            aggregation,
            inference,
            store,
            log,
        } = config;
        let strings = |addrs: Vec<Multiaddr>| addrs.iter().map(|a| a.to_string()).collect();
        RawConfig {
            data_dir,
            profile: profile.to_string(),
            p2p: RawP2p {
                listen: strings(p2p.listen),
                bootstrap: strings(p2p.bootstrap),
                mdns: p2p.mdns,
                max_request_bytes: p2p.max_request_bytes,
                max_response_bytes: p2p.max_response_bytes,
                max_gossip_bytes: p2p.max_gossip_bytes,
                max_connections: p2p.max_connections,
                max_connections_per_peer: p2p.max_connections_per_peer,
                request_timeout_secs: p2p.request_timeout_secs,
                unreachable_after_secs: p2p.unreachable_after_secs,
                idle_timeout_secs: p2p.idle_timeout_secs,
            },
            api: RawApi {
                listen: api.listen.to_string(),
                token: api.token.map(|_| Zeroizing::new(REDACTED.to_owned())),
                max_body_bytes: api.max_body_bytes,
                sessions_per_minute: api.sessions_per_minute,
            },
            aggregation: RawAggregation {
                prepare_budget_bytes: aggregation.prepare_budget_bytes,
                min_contributors_floor: aggregation.min_contributors_floor,
                max_sessions_per_peer: aggregation.max_sessions_per_peer,
                max_pending_bytes: aggregation.max_pending_bytes,
                plans_per_minute_per_peer: aggregation.plans_per_minute_per_peer,
                expire_grace_secs: aggregation.expire_grace_secs,
                allowed_profiles: aggregation
                    .allowed_profiles
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            },
            inference: RawInference {
                workers: inference.workers,
                memory_budget_bytes: inference.memory_budget_bytes,
            },
            store: RawStore {
                min_free_bytes: store.min_free_bytes,
            },
            log: RawLog {
                format: log.format.to_string(),
                level: log.level,
            },
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;
    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let config = Config::from_raw(raw)?;
        config.validate()?;
        Ok(config)
    }
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig::from(Config::default())
    }
}

impl Default for RawP2p {
    fn default() -> Self {
        RawConfig::default().p2p
    }
}

impl Default for RawApi {
    fn default() -> Self {
        RawConfig::default().api
    }
}

impl Default for RawAggregation {
    fn default() -> Self {
        RawConfig::default().aggregation
    }
}

impl Default for RawStore {
    fn default() -> Self {
        RawConfig::default().store
    }
}

impl Default for RawInference {
    fn default() -> Self {
        RawConfig::default().inference
    }
}

impl Default for RawLog {
    fn default() -> Self {
        RawConfig::default().log
    }
}

// ---------------------------------------------------------------------------------------------
// Environment source and error provenance
// ---------------------------------------------------------------------------------------------

/// `FHENODE__SECTION__KEY` variables. Values stay strings (the `config` crate parses numbers
/// and booleans when deserializing), so a token such as `0123…` or `1e10…` reaches us verbatim;
/// the list keys are split on commas, blanks dropped, so an empty value means an empty list.
#[derive(Clone, Debug)]
struct EnvSource(Environment);

impl EnvSource {
    fn new(vars: Option<HashMap<String, String>>) -> Self {
        EnvSource(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator(ENV_SEPARATOR)
                .separator(ENV_SEPARATOR)
                .source(vars),
        )
    }
}

impl Source for EnvSource {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<::config::Map<String, Value>, ::config::ConfigError> {
        let mut vars = self.0.collect()?;
        vars.retain(|key, _| !key.is_empty());
        for key in LIST_KEYS {
            if let Some(value) = vars.get_mut(key) {
                if let ValueKind::String(text) = &value.kind {
                    let origin = value.origin().map(str::to_owned);
                    let items: Vec<Value> = text
                        .split(',')
                        .map(str::trim)
                        .filter(|item| !item.is_empty())
                        .map(|item| Value::new(origin.as_ref(), item))
                        .collect();
                    *value = Value::new(origin.as_ref(), ValueKind::Array(items));
                }
            }
        }
        Ok(vars)
    }
}

/// The environment variable that sets `key` (`p2p.listen` => `FHENODE__P2P__LISTEN`).
pub fn env_var_name(key: &str) -> String {
    let key = key.split('[').next().unwrap_or(key);
    let mut name = String::from(ENV_PREFIX);
    for part in key.split('.') {
        name.push_str(ENV_SEPARATOR);
        name.push_str(&part.to_ascii_uppercase());
    }
    name
}

/// Where each value of a load came from, to say so in error messages.
struct Provenance {
    layered: ::config::Config,
    /// The file read, if any: every value whose origin is not the environment came from it.
    file: Option<PathBuf>,
    cli: HashSet<&'static str>,
}

impl Provenance {
    fn origin(&self, key: &str) -> Option<String> {
        if self.cli.contains(key) {
            return Some("the command line".to_owned());
        }
        // `Config::get` would deserialize the value and lose its origin; walk the tree instead.
        let path = key.split('[').next().unwrap_or(key);
        let mut value = &self.layered.cache;
        for part in path.split('.') {
            match &value.kind {
                ValueKind::Table(table) => value = table.get(part)?,
                _ => return None,
            }
        }
        match (value.origin()?, &self.file) {
            ("the environment", _) => Some(format!("environment variable {}", env_var_name(key))),
            (_, Some(file)) => Some(format!("`{}`", file.display())),
            (other, None) => Some(other.to_owned()),
        }
    }

    /// Appends to an `Invalid` error the layer that set its key, where one did.
    fn annotate(&self, error: ConfigError) -> ConfigError {
        match error {
            ConfigError::Invalid { key, reason } => match self.origin(&key) {
                Some(origin) => ConfigError::Invalid {
                    reason: format!("{reason} (set by {origin})"),
                    key,
                },
                None => ConfigError::Invalid { key, reason },
            },
            other => other,
        }
    }

    fn check_unknown_keys(&self) -> Result<(), ConfigError> {
        let ValueKind::Table(root) = &self.layered.cache.kind else {
            return Ok(());
        };
        let mut unknown: Vec<(String, &'static str, &'static [&'static str])> = Vec::new();
        for (section, known) in SCHEMA {
            let table = if section.is_empty() {
                root
            } else {
                match root.get(section).map(|v| &v.kind) {
                    Some(ValueKind::Table(table)) => table,
                    _ => continue,
                }
            };
            for key in table.keys() {
                if !known.contains(&key.as_str()) {
                    let full = if section.is_empty() {
                        key.clone()
                    } else {
                        format!("{section}.{key}")
                    };
                    unknown.push((full, section, known));
                }
            }
        }
        unknown.sort_by(|a, b| a.0.cmp(&b.0));
        match unknown.into_iter().next() {
            None => Ok(()),
            Some((key, section, known)) => {
                let scope = if section.is_empty() {
                    "at the top level".to_owned()
                } else {
                    format!("in [{section}]")
                };
                Err(invalid(
                    &key,
                    format!("unknown key; the keys {scope} are: {}", known.join(", ")),
                ))
            }
        }
    }
}

/// Maps a `config` crate error to ours: `Invalid` where it names a key, else `Load`.
fn from_config_error(error: ::config::ConfigError) -> ConfigError {
    use ::config::ConfigError as E;
    // Our private shadow structs must not show through in messages.
    let tidy = |text: String| {
        [
            "struct RawConfig",
            "struct RawP2p",
            "struct RawApi",
            "struct RawAggregation",
            "struct RawInference",
            "struct RawLog",
        ]
        .iter()
        .fold(text, |text, name| text.replace(name, "a table"))
    };
    match error {
        E::Type {
            unexpected,
            expected,
            key: Some(key),
            ..
        } => ConfigError::Invalid {
            reason: tidy(format!("invalid type: {unexpected}, expected {expected}")),
            key,
        },
        E::At {
            error,
            key: Some(key),
            ..
        } => ConfigError::Invalid {
            reason: tidy(error.to_string()),
            key,
        },
        E::NotFound(key) => ConfigError::Invalid {
            key,
            reason: "missing".to_owned(),
        },
        other => ConfigError::Load(tidy(other.to_string())),
    }
}

#[cfg(test)]
mod tests;
