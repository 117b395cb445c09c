//! `unpack`: writes a stream's entries into a directory.

use std::path::PathBuf;

use backpipe::cli;
use backpipe::unpack::{unpack, UnpackOptions};
use clap::Parser;

/// Write the entries of a stream (or of concatenated streams) under DIR, verifying every digest.
///
/// Files, directories and symlinks are restored with their modes and mtimes
/// (and owners, when run as root). Each stream is written to a staging
/// directory inside DIR and moved into place only once its End frame arrived
/// and every entry's size and BLAKE3 digest matched: a truncated, aborted or
/// damaged stream leaves DIR as it was. Paths are checked: nothing is written
/// outside DIR, and symlinks in the stream are recreated but never followed.
/// Existing entries are not replaced unless --force is given.
#[derive(Parser)]
#[command(name = "unpack", version, after_help = cli::EXIT_STATUS_HELP)]
struct Args {
    /// Directory to write into (created if missing).
    dir: PathBuf,
    /// Replace existing files or directories with the same top-level name.
    #[arg(long)]
    force: bool,
    /// List each top-level entry on stderr as it is moved into place.
    #[arg(short, long)]
    verbose: bool,
}

fn main() {
    let args = Args::parse();
    cli::main("unpack", || {
        let options = UnpackOptions {
            dir: args.dir.clone(),
            force: args.force,
            verbose: args.verbose,
        };
        unpack(cli::stream_stdin()?, &options).map(|_| ())
    })
}
