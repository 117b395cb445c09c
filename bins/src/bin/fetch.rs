//! `fetch`: writes stored streams back out of a repository.

use backpipe::cli::{self, KeyArgs};
use backpipe::repo::fetch::{fetch, resolve};
use clap::Parser;

/// Write stored snapshots back as a stream on stdout, ready for `encrypt -d`.
///
/// SNAPSHOT is `latest`, a snapshot ID, or an unambiguous prefix of one (see
/// `repo snapshots`). Several snapshots are written one after another as
/// concatenated streams. Every chunk is read back from its pack; `encrypt -d`
/// then authenticates everything.
#[derive(Parser)]
#[command(name = "fetch", version, after_help = AFTER_HELP)]
struct Args {
    /// The repository.
    repo: String,
    /// Snapshots to write, in order.
    #[arg(required = true, value_name = "SNAPSHOT")]
    snapshots: Vec<String>,
    #[command(flatten)]
    keys: KeyArgs,
}

const AFTER_HELP: &str = "\
Example:
  fetch R latest | encrypt -d --repo R | squeeze -d | chunk -d | unpack /restore

Exit status: 0 success, 1 error, 2 usage or key, 4 integrity failure (damaged repository).";

fn main() {
    let args = Args::parse();
    cli::main("fetch", || {
        let repo = cli::open_repo(&args.repo, &args.keys)?;
        let ids = args.snapshots.iter().map(|name| resolve(&repo, name)).collect::<backpipe::Result<Vec<_>>>()?;
        fetch(&repo, &ids, cli::stream_stdout()?)
    })
}
