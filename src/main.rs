//! The `fhenode` binary: parses the command line and hands over to the library. `anyhow` lives
//! only here, at the edge.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use fhenode::bench::{run_crypto_bench, CryptoBenchConfig};
use fhenode::client::{ApiClient, UpdateFormat, DEFAULT_API_URL};
use fhenode::config::{self, CliOverrides, Config};
use fhenode::crypto::Profile;
use fhenode::session::{ResultKind, SessionSpec};

// Ciphertext pieces and updates are multi-megabyte buffers allocated and freed all the time;
// the system allocator hands each back to the kernel and page-faults it in again (zeroed).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fhenode",
    version,
    about = "Privacy-preserving federated learning node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options shared by every command that reads the configuration.
#[derive(Args, Clone, Debug, Default)]
struct ConfigArgs {
    /// Configuration file (default: config/fhenode.toml when it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Where the node keeps its database and identity.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// HTTP API address, ADDR:PORT.
    #[arg(long, global = true)]
    api_listen: Option<String>,
    /// libp2p listen address (repeatable).
    #[arg(long, global = true)]
    p2p_listen: Vec<String>,
    /// Bootstrap peer, a multiaddr ending in /p2p/<peer id> (repeatable).
    #[arg(long, global = true)]
    bootstrap: Vec<String>,
    /// Disable mDNS discovery on the local network.
    #[arg(long, global = true)]
    no_mdns: bool,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let cli = CliOverrides {
            data_dir: self.data_dir.clone(),
            api_listen: self.api_listen.clone(),
            p2p_listen: self.p2p_listen.clone(),
            bootstrap: self.bootstrap.clone(),
            no_mdns: self.no_mdns,
        };
        Ok(config::load(self.config.as_deref(), None, &cli)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Start a node and run until SIGINT/SIGTERM.
    Run(ConfigArgs),
    /// Print this node's peer id (creating its identity if missing).
    Id(ConfigArgs),
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a local multi-node network in this process and show what happens.
    Demo {
        /// Number of nodes (all participants; the last one never submits).
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Committee members (the first nodes).
        #[arg(long, default_value_t = 3)]
        committee: usize,
        /// Parameters per update.
        #[arg(long, default_value_t = 100_000)]
        params: usize,
        #[arg(long, default_value = "secure")]
        profile: Profile,
        /// Seconds the session waits for the silent participant.
        #[arg(long, default_value_t = 5)]
        deadline_secs: u64,
    },
    /// Measure throughput against plaintext baselines.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Secure-aggregation sessions, through a running node's API.
    Session(Box<SessionArgs>),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values (secrets redacted).
    Check(ConfigArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Encrypt, accumulate, partially decrypt and combine one aggregation round.
    Crypto {
        #[arg(long, default_value = "secure")]
        profile: Profile,
        /// Parameters per update.
        #[arg(long, default_value_t = 1_000_000)]
        params: usize,
        #[arg(long, default_value_t = 10)]
        participants: u32,
        #[arg(long, default_value_t = 3)]
        committee: u32,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A full aggregation round on a local in-process network (real libp2p on loopback),
    /// next to a plaintext FedAvg round on the same network.
    Round {
        #[arg(long, default_value = "secure")]
        profile: Profile,
        #[arg(long, default_value_t = 1_000_000)]
        params: usize,
        #[arg(long, default_value_t = 10)]
        participants: usize,
        #[arg(long, default_value_t = 3)]
        committee: usize,
        #[arg(long)]
        json: bool,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let config = args.load()?;
            fhenode::telemetry::init(&config.log);
            runtime()?.block_on(async {
                let node = fhenode::node::Node::start(config).await?;
                node.run_until_stopped().await
            })?;
        }
        Command::Id(args) => {
            let config = args.load()?;
            let store = fhenode::store::Store::open(&config.data_dir)?;
            println!("{}", store.identity()?.public().to_peer_id());
        }
        Command::Config(ConfigCommand::Check(args)) => {
            let config = args.load()?;
            print!("{}", config.to_redacted_toml());
            eprintln!("configuration is valid");
        }
        Command::Demo {
            nodes,
            committee,
            params,
            profile,
            deadline_secs,
        } => {
            quiet_logs();
            let options = fhenode::demo::DemoOptions {
                nodes,
                committee,
                params,
                profile,
                deadline_secs,
            };
            runtime()?.block_on(fhenode::demo::run(&options))?;
        }
        Command::Bench(BenchCommand::Crypto {
            profile,
            params,
            participants,
            committee,
            json,
        }) => bench_crypto(profile, params, participants, committee, json)?,
        Command::Bench(BenchCommand::Round {
            profile,
            params,
            participants,
            committee,
            json,
        }) => {
            quiet_logs();
            let cfg = fhenode::bench::RoundBenchConfig {
                profile,
                params,
                participants,
                committee,
            };
            let report = runtime()?.block_on(fhenode::bench::run_round_bench(&cfg))?;
            print_report(&report, json)?;
            anyhow::ensure!(
                report.max_abs_error <= report.error_bound,
                "decrypted mean is off by {} (bound {})",
                report.max_abs_error,
                report.error_bound
            );
        }
        Command::Session(args) => {
            let outcome = runtime()?.block_on(session(*args));
            if let Err(e) = outcome {
                // One line, `code: message` for API errors; no backtrace.
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

fn bench_crypto(
    profile: Profile,
    params: usize,
    participants: u32,
    committee: u32,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = CryptoBenchConfig {
        profile,
        params,
        participants,
        committee,
        ..Default::default()
    };
    let report = run_crypto_bench(&cfg).context("crypto benchmark failed")?;
    print_report(&report, json)?;
    anyhow::ensure!(
        report.max_abs_error <= report.error_bound,
        "decrypted mean is off by {} (bound {})",
        report.max_abs_error,
        report.error_bound
    );
    Ok(())
}

/// `fhenode session …`: talks to a running node's API.
#[derive(Args)]
struct SessionArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The node's API, e.g. http://127.0.0.1:8470 (default: from `api.listen` in the
    /// configuration).
    #[arg(long, global = true, value_name = "URL")]
    api: Option<String>,
    /// API bearer token (default: $FHENODE_API_TOKEN, then `api.token` from the configuration).
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: SessionCommand,
}

#[derive(Subcommand)]
enum SessionCommand {
    /// Create a session, with this node as its coordinator.
    Create(CreateArgs),
    /// List the sessions this node knows.
    List,
    /// Show one session.
    Show { id: String },
    /// Encrypt this node's update and submit it to the session's coordinator.
    Submit {
        id: String,
        /// The update: `.json` ({"values":[…]} or an array), `.npy` (float32/float64), or
        /// anything else as raw little-endian float32.
        #[arg(long, value_name = "FILE")]
        values: PathBuf,
    },
    /// Print a finished session's result.
    #[command(name = "result")]
    GetResult {
        id: String,
        /// Write the values as raw little-endian float64 to stdout (the facts go to stderr).
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Args)]
struct CreateArgs {
    /// The session spec as a JSON file (instead of the flags below).
    #[arg(long, value_name = "FILE.json", conflicts_with_all = [
        "length", "committee", "participants", "min_participants", "profile", "result",
        "deadline_secs", "clip", "id",
    ])]
    spec: Option<PathBuf>,
    /// Parameters per update.
    #[arg(long, required_unless_present = "spec")]
    length: Option<u64>,
    /// Key-committee members, comma-separated peer ids.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "spec",
        value_name = "ID,ID"
    )]
    committee: Vec<String>,
    /// Participants, comma-separated peer ids.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "spec",
        value_name = "ID,ID"
    )]
    participants: Vec<String>,
    /// Fewest contributors the result may come from (default: all participants).
    #[arg(long)]
    min_participants: Option<u32>,
    /// Crypto profile (default: the node's).
    #[arg(long)]
    profile: Option<Profile>,
    #[arg(long, value_enum)]
    result: Option<ResultArg>,
    /// Collecting stops this many seconds after the session opens (default 300).
    #[arg(long)]
    deadline_secs: Option<u64>,
    /// Values are clipped to [-CLIP, CLIP] (default 8).
    #[arg(long)]
    clip: Option<f64>,
    /// Session id (default: generated).
    #[arg(long)]
    id: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ResultArg {
    Mean,
    Sum,
}

impl CreateArgs {
    fn spec(self) -> anyhow::Result<SessionSpec> {
        if let Some(path) = &self.spec {
            let text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            return serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a valid session spec", path.display()));
        }
        Ok(SessionSpec {
            id: self.id,
            length: self.length,
            profile: self.profile,
            committee: self.committee,
            participants: self.participants,
            min_participants: self.min_participants,
            clip: self.clip,
            result: match self.result {
                Some(ResultArg::Sum) => ResultKind::Sum,
                Some(ResultArg::Mean) | None => ResultKind::Mean,
            },
            deadline_secs: self.deadline_secs,
            ..Default::default()
        })
    }
}

impl SessionArgs {
    /// The API client: `--api`, else `api.listen` from the configuration; `--token`, else
    /// $FHENODE_API_TOKEN, else `api.token` from the configuration.
    fn client(&self) -> anyhow::Result<ApiClient> {
        let env_token = std::env::var("FHENODE_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let token = self.token.clone().or(env_token);
        let config = match (&self.api, &token) {
            (Some(_), Some(_)) => None,
            // Only the token is missing: use the configuration's if it loads.
            (Some(_), None) => self.config.load().ok(),
            (None, _) => Some(self.config.load().context(
                "cannot read the configuration to find the node's API (or pass --api URL)",
            )?),
        };
        let api = match (&self.api, &config) {
            (Some(api), _) => api.clone(),
            (None, Some(config)) => api_url(config.api.listen),
            (None, None) => DEFAULT_API_URL.to_string(),
        };
        let token =
            token.or_else(|| config.and_then(|c| c.api.token.map(|t| t.expose().to_string())));
        Ok(ApiClient::new(&api, token.as_deref())?)
    }
}

/// Where to reach an API listening on `listen` (a wildcard address means this machine).
fn api_url(listen: std::net::SocketAddr) -> String {
    let mut addr = listen;
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into())
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            addr.set_ip(std::net::Ipv6Addr::LOCALHOST.into())
        }
        _ => {}
    }
    format!("http://{addr}")
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn session(args: SessionArgs) -> anyhow::Result<()> {
    let client = args.client()?;
    match args.command {
        SessionCommand::Create(create) => {
            print_json(&client.create_session(&create.spec()?).await?)
        }
        SessionCommand::List => {
            print_json(&serde_json::json!({ "sessions": client.list_sessions().await? }))
        }
        SessionCommand::Show { id } => print_json(&client.session(&id).await?),
        SessionCommand::Submit { id, values } => {
            let body = std::fs::read(&values)
                .with_context(|| format!("cannot read {}", values.display()))?;
            let extension = values
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            let format = match extension.as_deref() {
                Some("json") => UpdateFormat::Json,
                Some("npy") => UpdateFormat::Npy,
                _ => UpdateFormat::Raw,
            };
            print_json(&client.submit_update(&id, format, body).await?)
        }
        SessionCommand::GetResult { id, raw: false } => print_json(&client.result(&id).await?),
        SessionCommand::GetResult { id, raw: true } => {
            let mut stdout = std::io::stdout().lock();
            anyhow::ensure!(
                !stdout.is_terminal(),
                "--raw writes binary float64 values: redirect stdout to a file"
            );
            let result = client.result_raw(&id).await?;
            stdout.write_all(&result.bytes)?;
            stdout.flush()?;
            eprintln!(
                "{}",
                serde_json::json!({
                    "session": id,
                    "values": result.bytes.len() / 8,
                    "contributors": result.contributors,
                    "clipped": result.clipped,
                    "error_bound": result.error_bound,
                    "kind": result.kind,
                })
            );
            Ok(())
        }
    }
}

fn print_report(report: &impl serde::Serialize, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else if let Some(fields) = serde_json::to_value(report)?.as_object() {
        for (name, v) in fields {
            println!("{name:>34}  {v}");
        }
    }
    Ok(())
}

/// In-process networks log only warnings: their output is the report.
fn quiet_logs() {
    fhenode::telemetry::init(&fhenode::config::LogConfig {
        level: "warn".into(),
        ..Default::default()
    });
}
