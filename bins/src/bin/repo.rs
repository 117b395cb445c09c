//! `repo`: creates and administers repositories.

use std::io::Write;

use backpipe::cdc::ChunkSizes;
use backpipe::cli::{self, KeyArgs};
use backpipe::repo::check::check;
use backpipe::repo::fetch::{list, parse_time, Filter};
use backpipe::repo::Repository;
use clap::{Parser, Subcommand};

/// Create and look after backup repositories.
#[derive(Parser)]
#[command(name = "repo", version, after_help = AFTER_HELP)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository in an empty or new directory, with a new random master
    /// key sealed under the given key file or passphrase.
    Init {
        /// Where to create it.
        repo: String,
        /// Smallest chunk of every backup in this repository.
        #[arg(long, value_name = "SIZE", default_value = "256K", value_parser = cli::parse_size)]
        min_size: usize,
        /// Average chunk.
        #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = cli::parse_size)]
        avg_size: usize,
        /// Largest chunk.
        #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = cli::parse_size)]
        max_size: usize,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// List snapshots, oldest first.
    Snapshots {
        /// The repository.
        repo: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only backups of this host.
        #[arg(long)]
        host: Option<String>,
        /// Only backups of this engine.
        #[arg(long)]
        engine: Option<String>,
        /// Only backups of this kind (full, incremental, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Only backups started at or after this time (`2026-11-21 10:00` local, or RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only backups started at or before this time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Verify the repository: indexes, packs and snapshots; with --read-data,
    /// every stored chunk is read back, decrypted and checked against its ID.
    Check {
        /// The repository.
        repo: String,
        /// Read and verify every byte of every pack.
        #[arg(long)]
        read_data: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

const AFTER_HELP: &str = "\
Example:
  keygen backup.key && repo init /backups --key-file backup.key
  dump-files /srv | chunk --repo /backups --key-file backup.key | squeeze \\
      | encrypt --repo /backups --key-file backup.key | ship /backups --key-file backup.key
  repo snapshots /backups --key-file backup.key

Exit status: 0 success, 1 error, 2 usage or key, 4 check found problems.";

fn main() {
    let args = Args::parse();
    cli::main("repo", || match args.command {
        Command::Init { repo, min_size, avg_size, max_size, keys } => {
            let sizes = ChunkSizes { min: min_size, avg: avg_size, max: max_size };
            let config = Repository::init(&repo, &cli::require_secret(&keys)?, sizes)?;
            cli::say(&format!("repo: created repository {} at {repo}", config.id));
            Ok(())
        }
        Command::Snapshots { repo, json, host, engine, kind, since, until, keys } => {
            let repo = cli::open_repo(&repo, &keys)?;
            let filter = Filter { host, engine };
            let since = since.as_deref().map(parse_time).transpose()?;
            let until = until.as_deref().map(parse_time).transpose()?;
            let mut out = std::io::stdout().lock();
            for (id, s) in list(&repo)? {
                let started = parse_time(&s.started)?;
                let wanted = filter.matches(&s)
                    && kind.as_ref().is_none_or(|k| *k == s.kind)
                    && since.is_none_or(|t| started >= t)
                    && until.is_none_or(|t| started <= t);
                if !wanted {
                    continue;
                }
                let line = if json {
                    let mut value = serde_json::to_value(&s).expect("summaries serialize");
                    value["snapshot"] = serde_json::json!(id);
                    value.to_string()
                } else {
                    format!(
                        "{id}  {}  {:<10} {:<12} {:<8} {:>6} entries {:>14} bytes",
                        s.started, s.host, s.engine, s.kind, s.entries, s.bytes
                    )
                };
                writeln!(out, "{line}").map_err(|e| backpipe::Error::io("cannot write the list", e))?;
            }
            Ok(())
        }
        Command::Check { repo, read_data, keys } => {
            let repo = cli::open_repo(&repo, &keys)?;
            let report = check(&repo, read_data)?;
            for problem in &report.problems {
                cli::say(&format!("repo check: {problem}"));
            }
            cli::say(&format!(
                "repo check: {} snapshots, {} packs, {} chunks{}; {}",
                report.snapshots,
                report.packs,
                report.chunks,
                if report.unindexed_packs > 0 {
                    format!(", {} packs left unindexed by interrupted ships (harmless)", report.unindexed_packs)
                } else {
                    String::new()
                },
                if report.problems.is_empty() {
                    "no problems found".to_string()
                } else {
                    format!("{} problems", report.problems.len())
                }
            ));
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(backpipe::Error::integrity(format!("{} problems found", report.problems.len())))
            }
        }
    })
}
