//! `dump-files`: the generic source; writes files as a backpipe stream.

use std::path::PathBuf;

use backpipe::cli;
use clap::Parser;

/// Write files, directories and symlinks as a backpipe stream on stdout.
///
/// Each PATH is stored under its last component (`/var/lib/app` becomes
/// `app/...`); `.` and `/` store their contents at the top level. Entries are
/// written depth first in name order, with mode, owner and mtime, and each
/// file's BLAKE3 digest, which `unpack` verifies at the far end of the
/// pipeline. FIFOs, sockets and devices are skipped with a warning. If a file
/// cannot be read, the stream ends with an Abort frame and the exit status is
/// non-zero, so nothing downstream treats it as a backup.
#[derive(Parser)]
#[command(name = "dump-files", version, after_help = AFTER_HELP)]
struct Args {
    /// Files or directories to write.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

const AFTER_HELP: &str = "\
Examples:
  dump-files /srv/data | chunk --key-file k | squeeze | encrypt --key-file k > data.bp
  dump-files notes.txt photos/ | inspect

Exit status: 0 success, 1 error (the stream ends with Abort), 2 usage.";

fn main() {
    let args = Args::parse();
    cli::main("dump-files", || backpipe::source::files::dump(&args.paths, cli::stream_stdout()?))
}
