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
/// pipeline, with extended attributes (POSIX ACLs and file capabilities
/// included) of files and directories; a file with several names inside the
/// trees is stored once and its other names as hard links. FIFOs, sockets and
/// devices are skipped with a note, and so is the stream's own output file
/// when it lies inside a tree. Nothing is followed through a symlink: every
/// name is opened relative to its directory and checked to be what was listed.
///
/// Live trees: a name that vanishes or is replaced between the listing and
/// its reading is skipped, and a file written to while it is read is stored
/// as read; each gets a warning, they are counted in the stream's End frame,
/// and the exit status is 6: the stream is complete and can be stored, but it
/// is not a snapshot of one instant. If a file cannot be read (permissions,
/// I/O errors), the stream ends with an Abort frame and the exit status is 1,
/// so nothing downstream treats it as a backup.
#[derive(Parser)]
#[command(name = "dump-files", version, after_help = AFTER_HELP)]
struct Args {
    /// Files or directories to write.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    recorded: cli::Recorded,
}

const AFTER_HELP: &str = "\
Examples:
  dump-files /srv/data | chunk --key-file k | squeeze | encrypt --key-file k > data.bp
  dump-files notes.txt photos/ | inspect

Exit status:
  0  success
  1  error (the stream ends with an Abort frame)
  2  usage error
  6  complete, but the trees changed while read (warnings above; End counts them)";

fn main() {
    let args = cli::parse::<Args>();
    cli::main("dump-files", || {
        args.recorded.apply()?;
        let report = backpipe::source::files::dump(&args.paths, cli::stream_stdout()?)?;
        if report.changed > 0 {
            return Err(backpipe::Error::changed(format!(
                "{} names changed while being read (see the warnings); the stream is complete, but not a snapshot of one instant",
                report.changed
            )));
        }
        Ok(())
    })
}
