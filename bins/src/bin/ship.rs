//! `ship`: stores a stream in a repository.

use std::io::Write;

use backpipe::cli::{self, KeyArgs};
use backpipe::repo::ship::ship;
use clap::Parser;

/// Store a stream in a repository, deduplicated, and print a receipt.
///
/// Reads a stream (or concatenated streams) encrypted with the repository's
/// key and stores each as a snapshot: new chunks go into pack files, the rest
/// of the stream is kept as the snapshot, written last, so a snapshot exists
/// only once everything it needs is durable. A stream without its End frame,
/// aborted upstream, or failing authentication is not stored. Safe to run
/// again after any failure, and beside other `ship` processes and `repo
/// prune`: if a pack the stream needs was deleted by a prune meanwhile (the
/// backup took longer than the grace period), nothing is stored and `ship`
/// fails naming the pack (exit 1); run the backup again.
///
/// For each stored stream one line of JSON goes to stdout: the snapshot ID,
/// engine, kind, start time, the engine's positions, entries and bytes, and
/// the bytes that were new or already stored. Post-backup actions (log
/// truncation, binlog purge) should run from this receipt.
#[derive(Parser)]
#[command(name = "ship", version, after_help = AFTER_HELP)]
struct Args {
    /// The repository made by `repo init`: a path, sftp://[user@]host[:port]/path,
    /// or s3://bucket[/prefix][?endpoint=URL&region=NAME&addressing=path|virtual].
    #[arg(env = "BACKPIPE_REPOSITORY")]
    repo: String,
    #[command(flatten)]
    keys: KeyArgs,
}

const AFTER_HELP: &str = concat!(
    "\
Example:
  export BACKPIPE_PASSPHRASE=...   # or --key-file, --passphrase-file, --passphrase-fd
  dump-files /srv | chunk --repo R | squeeze | encrypt --repo R | ship R > receipt.json

",
    backpipe::storage_limits_help!(),
    "

Exit status: 0 stored, 1 error, 2 usage or key, 3 incomplete or aborted stream (nothing stored),
4 integrity failure (damaged stream, wrong repository key)."
);

fn main() {
    let args = cli::parse::<Args>();
    cli::main("ship", || {
        let repo = cli::open_repo(&args.repo, &args.keys)?;
        let mut stdout = std::io::stdout().lock();
        ship(&repo, cli::stream_stdin()?, |receipt| {
            let line = serde_json::to_string(receipt).expect("receipts serialize");
            writeln!(stdout, "{line}").map_err(|e| {
                // Not a quiet broken pipe: the receipt is what post-backup actions rely on.
                let cause = backpipe::Error::io("its receipt could not be written", e);
                backpipe::Error::other(format!("snapshot {} is stored, but {}", receipt.snapshot, cause.message()))
            })
        })
    })
}
