//! The `fhenode` binary: parses the command line and hands over to the library. `anyhow` lives
//! only here, at the edge.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use fhenode::bench::{run_crypto_bench, CryptoBenchConfig};
use fhenode::config::{self, CliOverrides, Config};
use fhenode::crypto::Profile;

#[derive(Parser)]
#[command(name = "fhenode", version, about = "Privacy-preserving federated learning node")]
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
            fhenode::telemetry::init(&fhenode::config::LogConfig {
                level: "warn".into(),
                ..Default::default()
            });
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
    }
    Ok(())
}

fn bench_crypto(profile: Profile, params: usize, participants: u32, committee: u32, json: bool) -> anyhow::Result<()> {
    let cfg = CryptoBenchConfig {
        profile,
        params,
        participants,
        committee,
        ..Default::default()
    };
    let report = run_crypto_bench(&cfg).context("crypto benchmark failed")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if let Some(fields) = serde_json::to_value(&report)?.as_object() {
        for (name, v) in fields {
            println!("{name:>34}  {v}");
        }
    }
    anyhow::ensure!(
        report.max_abs_error <= report.error_bound,
        "decrypted mean is off by {} (bound {})",
        report.max_abs_error,
        report.error_bound
    );
    Ok(())
}
