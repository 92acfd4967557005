//! The `fhenode` binary: parses the command line and hands over to the library. `anyhow` lives
//! only here, at the edge.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use fhenode::bench::{run_crypto_bench, CryptoBenchConfig};
use fhenode::client::progress::Progress;
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
    /// Models for encrypted inference, registered on a running node.
    Model(Box<ModelArgs>),
    /// Encrypted inference through the local node: encrypt locally, evaluate on the node or on
    /// a peer, decrypt locally; prints the result and the timings of each step.
    Infer(Box<InferArgs>),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values (secrets redacted).
    Check(ConfigArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Encrypt, accumulate, release keys and combine one aggregation round.
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
    /// Encrypted inference: the seed example end to end, a 784→10 linear layer, and a 4-8-2
    /// MLP next to one programmable bootstrap measured in the same run.
    Inference {
        /// Skip the MLP (its evaluation key takes seconds to make).
        #[arg(long)]
        quick: bool,
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
        /// Encrypted rounds, each followed by a plaintext one; the report gives medians
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        json: bool,
    },
}

/// Starts the node again in this process (same program, arguments and environment), after
/// it stopped to reopen a store that failed a write: sockets and the store's lock close with
/// the old image. Where that is impossible the process exits with an error, for its service
/// manager to restart it (`Restart=on-failure`).
fn restart_in_place() {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        match std::env::current_exe() {
            Ok(exe) => {
                tracing::warn!("starting again to reopen the store");
                let error = std::process::Command::new(exe).args(args).exec();
                tracing::error!(%error, "could not start again; exiting");
            }
            Err(error) => tracing::error!(%error, "could not find this program; exiting"),
        }
    }
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
            let runtime = runtime()?;
            let outcome = runtime.block_on(async {
                let node = fhenode::node::Node::start(config).await?;
                node.run_until_stopped().await
            });
            // Dropping the runtime would wait for every blocking thread, one stuck in a write
            // to a full disk included: the node has stopped, so the process goes.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            if let Err(fhenode::node::NodeError::StoreNeedsReopen) = outcome {
                restart_in_place();
            }
            outcome?;
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
        Command::Bench(BenchCommand::Inference { quick, json }) => {
            let report = fhenode::crypto::inference::bench::bench_inference(quick)
                .context("inference benchmark failed")?;
            print_report(&report, json)?;
        }
        Command::Bench(BenchCommand::Round {
            profile,
            params,
            participants,
            committee,
            rounds,
            json,
        }) => {
            quiet_logs();
            let cfg = fhenode::bench::RoundBenchConfig {
                profile,
                params,
                participants,
                committee,
                rounds,
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
        Command::Model(args) => {
            if let Err(e) = runtime()?.block_on(model(*args)) {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        }
        Command::Infer(args) => {
            if let Err(e) = runtime()?.block_on(infer(*args)) {
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
    node: NodeApiArgs,
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
        /// The update, by its extension: `.safetensors` or `.npz` (named tensors, matched to
        /// the session's shapes by name), `.json` ({"values": […]}, {"tensors": {…}} or an
        /// array), `.npy`, or anything else as raw little-endian float32.
        #[arg(long, value_name = "FILE")]
        values: PathBuf,
        /// This update's weight in a weighted mean (e.g. its number of examples).
        #[arg(long)]
        weight: Option<f64>,
        /// Then wait up to SECS for the session to finish, showing its phases on stderr; a
        /// session that fails ends the wait with its reason.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Print a finished session's result.
    #[command(name = "result")]
    GetResult {
        id: String,
        /// Write the values as raw little-endian float64 to stdout (the facts go to stderr).
        #[arg(long, conflicts_with = "safetensors")]
        raw: bool,
        /// Write the result as a safetensors file to stdout: float64 tensors named as the
        /// session's shapes, the facts in its metadata.
        #[arg(long)]
        safetensors: bool,
        /// Wait up to SECS for the session to finish, printing each phase it reaches to
        /// stderr; a session that fails ends the wait with its reason.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
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
    /// A weighted mean's largest weight (required with `--result weighted-mean`).
    #[arg(long)]
    max_weight: Option<u32>,
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
    WeightedMean,
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
                Some(ResultArg::WeightedMean) => ResultKind::WeightedMean,
                Some(ResultArg::Mean) | None => ResultKind::Mean,
            },
            max_weight: self.max_weight,
            deadline_secs: self.deadline_secs,
            ..Default::default()
        })
    }
}

/// The API client: `api`, else `api.listen` from the configuration; `token`, else
/// $FHENODE_API_TOKEN, else `api.token` from the configuration.
fn api_client(
    config_args: &ConfigArgs,
    api: Option<&str>,
    token: Option<&str>,
) -> anyhow::Result<ApiClient> {
    let env_token = std::env::var("FHENODE_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let token = token.map(str::to_string).or(env_token);
    let config =
        match (api, &token) {
            (Some(_), Some(_)) => None,
            // Only the token is missing: use the configuration's if it loads.
            (Some(_), None) => config_args.load().ok(),
            (None, _) => Some(config_args.load().context(
                "cannot read the configuration to find the node's API (or pass --api URL)",
            )?),
        };
    let api = match (api, &config) {
        (Some(api), _) => api.to_string(),
        (None, Some(config)) => api_url(config.api.listen),
        (None, None) => DEFAULT_API_URL.to_string(),
    };
    let token = token.or_else(|| config.and_then(|c| c.api.token.map(|t| t.expose().to_string())));
    Ok(ApiClient::new(&api, token.as_deref())?)
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
    let client = args.node.client()?;
    match args.command {
        SessionCommand::Create(create) => {
            print_json(&client.create_session(&create.spec()?).await?)
        }
        SessionCommand::List => {
            print_json(&serde_json::json!({ "sessions": client.list_sessions().await? }))
        }
        SessionCommand::Show { id } => print_json(&client.session(&id).await?),
        SessionCommand::Submit {
            id,
            values,
            weight,
            wait,
        } => {
            let body = std::fs::read(&values)
                .with_context(|| format!("cannot read {}", values.display()))?;
            let extension = values.extension().and_then(|e| e.to_str()).unwrap_or("");
            let format = UpdateFormat::from_extension(extension);
            let mut progress = Progress::new(&id);
            let sent = progress.upload(body.len() as u64);
            let submitting = client.submit_update_reporting(&id, format, body, weight, sent);
            // The body is all sent long before the node answers: it encrypts and uploads.
            tokio::pin!(submitting);
            let receipt = tokio::select! {
                receipt = &mut submitting => receipt?,
                _ = tokio::time::sleep(std::time::Duration::from_millis(300)) => {
                    progress.sealing();
                    submitting.await?
                }
            };
            progress.submitted(&receipt);
            if let Some(secs) = wait {
                wait_until_finished(&client, &id, secs, &mut progress).await?;
            }
            print_json(&receipt)
        }
        SessionCommand::GetResult {
            id,
            raw,
            safetensors,
            wait,
        } => {
            if let Some(secs) = wait {
                wait_until_finished(&client, &id, secs, &mut Progress::new(&id)).await?;
            }
            if safetensors {
                let mut stdout = std::io::stdout().lock();
                anyhow::ensure!(
                    !stdout.is_terminal(),
                    "--safetensors writes a binary file: redirect stdout to a file"
                );
                stdout.write_all(&client.result_safetensors(&id).await?)?;
                return Ok(stdout.flush()?);
            }
            print_result(&client, &id, raw).await
        }
    }
}

/// Follows session `id` with long polls until it is done, showing each phase it reaches on
/// stderr; an error when it fails or is still running after `secs`.
async fn wait_until_finished(
    client: &ApiClient,
    id: &str,
    secs: u64,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    use fhenode::session::Phase;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut info = client.session(id).await?;
    loop {
        progress.phase(&info);
        match info.phase {
            Phase::Done => return Ok(()),
            Phase::Failed => anyhow::bail!(
                "session {id} failed: {}",
                info.failure.as_deref().unwrap_or("no reason given")
            ),
            _ => {}
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            progress.clear();
            anyhow::bail!("session {id} is still {} after {secs} s", info.phase);
        }
        info = client
            .session_after_change(id, info.phase, left.as_secs().max(1))
            .await?;
    }
}

/// Prints a finished session's result: JSON, or raw float64 values with the facts on stderr.
async fn print_result(client: &ApiClient, id: &str, raw: bool) -> anyhow::Result<()> {
    match raw {
        false => print_json(&client.result_json(id).await?),
        true => {
            let mut stdout = std::io::stdout().lock();
            anyhow::ensure!(
                !stdout.is_terminal(),
                "--raw writes binary float64 values: redirect stdout to a file"
            );
            let result = client.result_raw(id).await?;
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
                    "total_weight": result.total_weight,
                })
            );
            Ok(())
        }
    }
}

/// Where the node's API is, for the commands that talk to it.
#[derive(Args)]
struct NodeApiArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The node's API, e.g. http://127.0.0.1:8470 (default: from `api.listen` in the
    /// configuration).
    #[arg(long, global = true, value_name = "URL")]
    api: Option<String>,
    /// API bearer token (default: $FHENODE_API_TOKEN, then `api.token` from the configuration).
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
}

impl NodeApiArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        api_client(&self.config, self.api.as_deref(), self.token.as_deref())
    }
}

/// `fhenode model …`: talks to a running node's API.
#[derive(Args)]
struct ModelArgs {
    #[command(flatten)]
    node: NodeApiArgs,
    #[command(subcommand)]
    command: ModelCommand,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Register a model on the node.
    Add {
        /// The model's name (1–128 of A-Z a-z 0-9 - _ .).
        name: String,
        /// `.safetensors` (tensors `<i>.weight` [out, in] and `<i>.bias` [out], metadata
        /// `activations` such as "relu,none"), or JSON: {"layers":[{"weights","biases",
        /// "activation"}]} or one layer's {"weights","biases"}.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// `linear` or `mlp` (default: mlp when a layer has an activation, else linear).
        #[arg(long)]
        scheme: Option<String>,
        /// linear: every input satisfies |x| ≤ BOUND (default 256).
        #[arg(long, value_name = "BOUND")]
        input_bound: Option<f64>,
        /// Replace a model of the same name (without it, the node refuses as `duplicate`).
        #[arg(long)]
        replace: bool,
    },
    /// List the models registered on the node.
    List,
}

async fn model(args: ModelArgs) -> anyhow::Result<()> {
    let client = args.node.client()?;
    match args.command {
        ModelCommand::Add {
            name,
            file,
            scheme,
            input_bound,
            replace,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let is_safetensors = file
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
            let info = if is_safetensors {
                client
                    .add_model_safetensors(&name, scheme.as_deref(), input_bound, bytes, replace)
                    .await?
            } else {
                let mut body: serde_json::Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("{} is not JSON", file.display()))?;
                let object = body
                    .as_object_mut()
                    .with_context(|| format!("{} must hold a JSON object", file.display()))?;
                object.insert("name".into(), name.into());
                if let Some(s) = scheme {
                    object.insert("scheme".into(), s.into());
                }
                if let Some(b) = input_bound {
                    object.insert("input_bound".into(), b.into());
                }
                client.add_model_json(&body, replace).await?
            };
            print_json(&info)
        }
        ModelCommand::List => {
            print_json(&serde_json::json!({ "models": client.list_models().await? }))
        }
    }
}

/// `fhenode infer …`
#[derive(Args)]
struct InferArgs {
    #[command(flatten)]
    node: NodeApiArgs,
    /// The registered model to evaluate.
    #[arg(long)]
    model: String,
    /// The model node's peer id (default: the local node).
    #[arg(long, value_name = "PEER_ID")]
    peer: Option<String>,
    /// The input: inline JSON or a JSON file, one row `[1, 2]`, rows `[[1, 2], [3, 4]]`, or
    /// {"input_data": rows}.
    #[arg(long, value_name = "FILE|JSON")]
    input: String,
    /// Reuse this context (default: create one and print its id).
    #[arg(long, value_name = "ID")]
    context: Option<String>,
    /// The scheme of a new context: linear or mlp (default: the model's, as its model node
    /// tells it).
    #[arg(long)]
    scheme: Option<String>,
}

/// Input rows from inline JSON or a JSON file.
fn input_rows(input: &str) -> anyhow::Result<Vec<Vec<f32>>> {
    let trimmed = input.trim_start();
    let text = if trimmed.starts_with('[') || trimmed.starts_with('{') {
        input.to_string()
    } else {
        std::fs::read_to_string(input).with_context(|| format!("cannot read {input}"))?
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).context("the input is not valid JSON")?;
    let value = match value {
        serde_json::Value::Object(mut o) => o
            .remove("input_data")
            .or_else(|| o.remove("input"))
            .context("a JSON object input needs `input_data` (rows) or `input` (one row)")?,
        other => other,
    };
    let one_row = value
        .as_array()
        .is_some_and(|a| a.iter().all(serde_json::Value::is_number));
    if one_row {
        Ok(vec![serde_json::from_value(value)?])
    } else {
        serde_json::from_value(value)
            .context("the input must be a row of numbers or an array of rows")
    }
}

fn ms(since: std::time::Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

async fn infer(args: InferArgs) -> anyhow::Result<()> {
    let client = args.node.client()?;
    let rows = input_rows(&args.input)?;
    let peer = args.peer.as_deref();
    let started = std::time::Instant::now();
    let (context, context_ms) = match &args.context {
        Some(id) => (id.clone(), None),
        None => {
            let scheme = match &args.scheme {
                Some(s) => s.clone(),
                // The model node (the local one, or --peer asked over libp2p) tells it.
                None => client
                    .model_spec(&args.model, peer)
                    .await?
                    .scheme
                    .to_string(),
            };
            let t = std::time::Instant::now();
            let info = client.create_context(&scheme, None).await?;
            let took = ms(t);
            eprintln!(
                "context  {} ({}, {}) created in {took:.1} ms",
                info.fhe_context_id, info.scheme, info.params
            );
            (info.fhe_context_id, Some(took))
        }
    };
    let t = std::time::Instant::now();
    let encrypted = client.encrypt(&context, &args.model, peer, rows).await?;
    let encrypt_ms = ms(t);
    let ciphertext_bytes = encrypted.ciphertext.len() / 2;
    eprintln!(
        "encrypt  {} row(s) -> {ciphertext_bytes} bytes in {encrypt_ms:.2} ms",
        encrypted.rows
    );
    let t = std::time::Instant::now();
    let evaluated = client
        .infer(&context, &args.model, peer, encrypted.ciphertext)
        .await?;
    let infer_ms = ms(t);
    let result_bytes = evaluated.encrypted_result.len() / 2;
    eprintln!(
        "infer    on {}: {infer_ms:.2} ms (evaluation {:.2} ms, {} PBS) -> {result_bytes} bytes",
        evaluated.peer.as_deref().unwrap_or("this node"),
        evaluated.computation_time_ms,
        evaluated.pbs
    );
    let t = std::time::Instant::now();
    let decrypted = client.decrypt(&context, evaluated.encrypted_result).await?;
    let decrypt_ms = ms(t);
    eprintln!("decrypt  {decrypt_ms:.2} ms");
    print_json(&serde_json::json!({
        "model": args.model,
        "peer": evaluated.peer,
        "fhe_context_id": context,
        "values": decrypted.values,
        "result_shape": decrypted.result_shape,
        "pbs": evaluated.pbs,
        "bytes": {
            "ciphertext": ciphertext_bytes,
            "encrypted_result": result_bytes,
        },
        "timings_ms": {
            "context": context_ms,
            "encrypt": encrypt_ms,
            "infer": infer_ms,
            "evaluation": evaluated.computation_time_ms,
            "decrypt": decrypt_ms,
            "total": ms(started),
        },
    }))
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
