//! `fetch`: writes stored streams back out of a repository.

use backpipe::cli::{self, KeyArgs};
use backpipe::repo::fetch::{chain_until, fetch, resolve, Filter};
use clap::Parser;

/// Write stored snapshots back as a stream on stdout, ready for `encrypt -d`.
///
/// SNAPSHOT is `latest`, a snapshot ID, or an unambiguous prefix of one (see
/// `repo snapshots`). Several snapshots are written one after another as
/// concatenated streams. With --until TIME, the newest chain that covers TIME
/// is written instead: the last full backup started at or before TIME, then
/// the incremental, differential and log backups after it up to TIME, and
/// the first non-full one after TIME, whose logs reach it;
/// `restore-mysql --until TIME` stops its replay at TIME. Every
/// chunk is read back from its pack; `encrypt -d` then authenticates everything.
#[derive(Parser)]
#[command(name = "fetch", version, after_help = AFTER_HELP)]
struct Args {
    /// The repository.
    repo: String,
    /// Snapshots to write, in order.
    #[arg(value_name = "SNAPSHOT", required_unless_present = "until", conflicts_with = "until")]
    snapshots: Vec<String>,
    /// Write the chain that covers this time: `2026-11-21 10:00` (local time) or RFC 3339.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// With --until: only backups of this host.
    #[arg(long, requires = "until")]
    host: Option<String>,
    /// With --until: only backups of this engine.
    #[arg(long, requires = "until")]
    engine: Option<String>,
    #[command(flatten)]
    keys: KeyArgs,
}

const AFTER_HELP: &str = "\
Example:
  fetch R latest | encrypt -d --repo R | squeeze -d | chunk -d | unpack /restore
  fetch R --until '2026-11-21 10:00' --host db1 | encrypt -d --repo R | ...

Exit status: 0 success, 1 error, 2 usage or key, 4 integrity failure (damaged repository).";

fn main() {
    let args = Args::parse();
    cli::main("fetch", || {
        let repo = cli::open_repo(&args.repo, &args.keys)?;
        let ids = match &args.until {
            Some(until) => {
                let filter = Filter { host: args.host.clone(), engine: args.engine.clone() };
                chain_until(&repo, until, &filter)?
            }
            None => args.snapshots.iter().map(|name| resolve(&repo, name)).collect::<backpipe::Result<Vec<_>>>()?,
        };
        fetch(&repo, &ids, cli::stream_stdout()?)
    })
}
