//! `unpack`: writes a stream's entries into a directory.

use std::path::PathBuf;

use backpipe::cli;
use backpipe::unpack::{unpack, UnpackOptions};
use clap::Parser;

/// Write the entries of a stream (or of concatenated streams) under DIR, verifying every digest.
///
/// Files, directories, symlinks and hard links are restored with their modes,
/// mtimes and extended attributes (POSIX ACLs and file capabilities
/// included), and owners when run as root; otherwise setuid and setgid bits
/// and the attributes only root may set (trusted.*, security.*) are dropped. Each stream is written to a staging directory inside DIR and its
/// top-level entries are moved into place together, only once its End frame
/// arrived and every entry's size and BLAKE3 digest matched: a truncated,
/// aborted or damaged stream adds nothing to DIR (streams earlier in a
/// concatenated input are already in place). Paths are checked: nothing is
/// written outside DIR, and symlinks in the stream are recreated but never
/// followed. An existing top-level entry is not touched unless --force is
/// given, which replaces it as a whole, atomically; a directory with a file
/// system mounted inside is never replaced, and removing a replaced tree
/// never enters another file system: anything left is named and the exit
/// status is non-zero.
#[derive(Parser)]
#[command(name = "unpack", version, after_help = cli::EXIT_STATUS_HELP)]
struct Args {
    /// Directory to write into (created if missing).
    dir: PathBuf,
    /// Replace existing files or directories with the same top-level name (whole trees).
    #[arg(long)]
    force: bool,
    /// List each top-level entry on stderr as it is moved into place.
    #[arg(short, long)]
    verbose: bool,
    /// Do not restore extended attributes (for file systems without them).
    #[arg(long)]
    no_xattrs: bool,
}

fn main() {
    let args = cli::parse::<Args>();
    cli::main("unpack", || {
        let options =
            UnpackOptions { dir: args.dir.clone(), force: args.force, verbose: args.verbose, xattrs: !args.no_xattrs };
        unpack(cli::stream_stdin()?, &options).map(|_| ())
    })
}
