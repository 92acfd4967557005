//! The `fhenode` binary: parses the command line and hands over to the library.

use anyhow::Context;
use clap::{Parser, Subcommand};

use fhenode::bench::{run_crypto_bench, CryptoBenchConfig};
use fhenode::crypto::Profile;

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

#[derive(Subcommand)]
enum Command {
    /// Measure throughput against plaintext baselines.
    #[command(subcommand)]
    Bench(BenchCommand),
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(BenchCommand::Crypto {
            profile,
            params,
            participants,
            committee,
            json,
        }) => {
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
            } else {
                let value = serde_json::to_value(&report)?;
                if let Some(fields) = value.as_object() {
                    for (name, v) in fields {
                        println!("{name:>34}  {v}");
                    }
                }
            }
            anyhow::ensure!(
                report.max_abs_error <= report.error_bound,
                "decrypted mean is off by {} (bound {})",
                report.max_abs_error,
                report.error_bound
            );
        }
    }
    Ok(())
}
