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
//!
//! Each section is one struct with its defaults; serde reads it (`deny_unknown_fields`), the
//! accepted keys are its fields ([`schema`]), and `config check` writes it back
//! ([`Config::to_redacted_toml`]). [`fields`] reads the values that are text to parse,
//! [`checks`] holds [`Config::validate`], and [`sources`] the environment and the provenance
//! of each value.

mod checks;
mod fields;
mod sources;

pub use sources::env_var_name;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ::config::{File, FileFormat};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_aux::serde_introspection::serde_introspect;
use tracing_subscriber::EnvFilter;
use zeroize::Zeroizing;

use crate::crypto::Profile;
use checks::check_log_level;
use sources::{from_config_error, EnvSource, Provenance};

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

/// Every key, by section ("" is the top level), as serde reads them; used to refuse unknown
/// keys by name.
pub fn schema() -> [(&'static str, &'static [&'static str]); 7] {
    [
        ("", serde_introspect::<Config>()),
        ("p2p", serde_introspect::<P2pConfig>()),
        ("api", serde_introspect::<ApiConfig>()),
        ("aggregation", serde_introspect::<AggregationConfig>()),
        ("inference", serde_introspect::<InferenceConfig>()),
        ("store", serde_introspect::<StoreConfig>()),
        ("log", serde_introspect::<LogConfig>()),
    ]
}

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// The effective node configuration.
///
/// `Serialize` writes the token as `"<redacted>"`; `Deserialize` accepts the same document shape
/// as the configuration file (missing keys take their defaults, unknown keys are refused) and
/// validates the result, so a deserialized `Config` is always valid.
// `remote = "Self"` makes the derives inherent functions, which the trait impls below wrap:
// `Deserialize` validates, and the loader calls the inherent reader to name the layer of a
// bad value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", default, deny_unknown_fields)]
pub struct Config {
    /// Directory of the node's persistent state (identity key, store).
    pub data_dir: PathBuf,
    /// The default crypto profile of sessions this node creates.
    #[serde(with = "fields::profile")]
    pub profile: Profile,
    pub p2p: P2pConfig,
    pub api: ApiConfig,
    pub aggregation: AggregationConfig,
    pub inference: InferenceConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
}

/// The libp2p swarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// Addresses to listen on: `/ip4|ip6/<addr>/tcp/<port>` or `/ip4|ip6/<addr>/udp/<port>/quic-v1`.
    #[serde(with = "fields::multiaddrs")]
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start-up; each ends with `/p2p/<peer id>`.
    #[serde(with = "fields::multiaddrs")]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address and port the API binds to.
    #[serde(with = "fields::socket_addr")]
    pub listen: SocketAddr,
    /// Bearer token clients must present; required when `listen` is not a loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    #[serde(with = "fields::profiles")]
    pub allowed_profiles: Vec<Profile>,
}

/// Encrypted inference: the evaluation pool and the memory budget of loaded
/// evaluation keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Evaluations running at once (each may use several cores).
    pub workers: usize,
    /// Memory allowed for the evaluation keys loaded on this node, in bytes; a request whose
    /// key would not fit even after evicting every other key is refused up front.
    pub memory_budget_bytes: u64,
}

/// The node's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    #[serde(with = "fields::log_format")]
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
    // Command-line values are read as the other layers' are, over them.
    let mut from_cli = HashSet::new();
    let set =
        |builder: ::config::ConfigBuilder<_>, key: &'static str, value: ::config::ValueKind| {
            builder
                .set_override(key, value)
                .map_err(|e| ConfigError::Load(e.to_string()))
        };
    if let Some(listen) = &cli.api_listen {
        builder = set(builder, "api.listen", listen.clone().into())?;
        from_cli.insert("api.listen");
    }
    if !cli.p2p_listen.is_empty() {
        builder = set(builder, "p2p.listen", cli.p2p_listen.clone().into())?;
        from_cli.insert("p2p.listen");
    }
    if !cli.bootstrap.is_empty() {
        builder = set(builder, "p2p.bootstrap", cli.bootstrap.clone().into())?;
        from_cli.insert("p2p.bootstrap");
    }
    if cli.no_mdns {
        builder = set(builder, "p2p.mdns", false.into())?;
        from_cli.insert("p2p.mdns");
    }
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
        cli: from_cli,
    };
    let mut config = provenance
        .check_unknown_keys()
        // The derive's own reader (not `Deserialize`, which validates): an invalid value is
        // reported below with the layer that set it.
        .and_then(|()| Config::deserialize(provenance.layered.clone()).map_err(from_config_error))
        .map_err(|e| provenance.annotate(e))?;
    // A path is taken as it is, even one that is not UTF-8.
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
        provenance.cli.insert("data_dir");
    }
    config
        .validate()
        .map(|()| config)
        .map_err(|e| provenance.annotate(e))
}

impl Config {
    /// The effective configuration as TOML, with the token shown as `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        match toml::to_string_pretty(self) {
            Ok(text) => text,
            Err(e) => format!("# the configuration cannot be written as TOML: {e}\n"),
        }
    }
}

impl Serialize for Config {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Config::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let config = Config::deserialize(deserializer)?;
        config.validate().map_err(serde::de::Error::custom)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
