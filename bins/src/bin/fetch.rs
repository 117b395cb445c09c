//! `fetch`: writes stored streams back out of a repository.

use backpipe::cli::{self, KeyArgs};
use backpipe::repo::fetch::{chain_until, fetch, resolve, Filter};
use backpipe::units::parse_time;
use clap::Parser;

/// Write stored snapshots back as a stream on stdout, ready for `encrypt -d`.
///
/// SNAPSHOT is `latest`, a snapshot ID, or an unambiguous prefix of one (see
/// `repo snapshots`). By ID, only the snapshots named are read; `latest` and
/// --until read every snapshot's header (from ~/.cache/backpipe where it has
/// them). Several snapshots are written one after another as
/// concatenated streams. With --until TIME, the newest chain that covers TIME
/// is written instead: the last full backup started at or before TIME, then
/// the incremental, differential and log backups after it up to TIME, and
/// the first non-full one after TIME, whose logs reach it;
/// `restore-mysql --until TIME` stops its replay at TIME. Every
/// chunk is read back from its pack and verified before it is written:
/// decrypted, decompressed and hashed again to its ID, so a forged or damaged
/// chunk never reaches the next stage; a bad copy is passed over for a good
/// copy of the same chunk (said on stderr), and a chunk with no good copy
/// fails the fetch (exit 4) naming it. `encrypt -d` then authenticates
/// everything.
///
/// --host and --engine apply to every selector. `latest` and --until choose
/// among the backups of one host and engine only: when the repository holds
/// backups of several, they refuse (exit 2) until --host and --engine name
/// one, so a restore never picks another machine's backup. An ID of a backup
/// of another host or engine than those given is refused (exit 2).
///
/// A snapshot whose summary cannot be read (damaged) is never skipped: its
/// host and time are unknown, so `latest` and --until fail (exit 4) naming it
/// while any exists, as does its own ID. Run `repo check`; then remove it
/// with `repo forget R ID`, or name a readable snapshot by its ID, which
/// still works.
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
    /// Only backups of this host (the host name `ship` recorded, see `repo snapshots`).
    #[arg(long)]
    host: Option<String>,
    /// Only backups of this engine (files, mysql, ...).
    #[arg(long)]
    engine: Option<String>,
    #[command(flatten)]
    keys: KeyArgs,
}

const AFTER_HELP: &str = concat!(
    "\
Example:
  fetch R latest --host web1 | encrypt -d --repo R | squeeze -d | chunk -d | unpack /restore
  fetch R --until '2026-11-21 10:00' --host db1 --engine mysql | encrypt -d --repo R | ...

A local TIME that daylight saving time skipped or repeated is refused: give
it as RFC 3339 with an offset, e.g. 2026-10-25T02:30:00+01:00.

",
    backpipe::storage_limits_help!(),
    "

Exit status: 0 success, 1 error, 2 usage or key (also: several hosts or
engines match, or the ID is of another host or engine), 4 integrity failure
(a damaged snapshot or repository)."
);

fn main() {
    let args = Args::parse();
    cli::main("fetch", || {
        let until = args.until.as_deref().map(parse_time).transpose()?;
        let repo = cli::open_repo(&args.repo, &args.keys)?;
        let filter = Filter { host: args.host.clone(), engine: args.engine.clone() };
        let ids = match until {
            Some(until) => chain_until(&repo, until, &filter)?,
            None => resolve(&repo, &args.snapshots, &filter)?,
        };
        for passed_over in fetch(&repo, &ids, cli::stream_stdout()?)? {
            cli::say(&format!("fetch: {passed_over}"));
        }
        Ok(())
    })
}
