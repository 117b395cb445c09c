//! `fetch`: writes stored streams back out of a repository.

use backpipe::cli::{self, KeyArgs, Selection};
use backpipe::repo::fetch::fetch;
use backpipe::repo::listing::{chain_until, chains_of, resolve};
use backpipe::units::parse_time;
use clap::Parser;

/// Write stored snapshots back as a stream on stdout, ready for `encrypt -d`.
///
/// SNAPSHOT is `latest`, a snapshot ID, or an unambiguous prefix of one (see
/// `repo snapshots`). By ID, only the snapshots named are read; `latest` and
/// --until read every snapshot's header (from ~/.cache/backpipe where it has
/// them). Several snapshots are written one after another as
/// concatenated streams.
///
/// With --until TIME, the chain that restores to TIME is written instead:
/// the newest full backup started at or before TIME; the newest
/// differential on it started by TIME, if any; then the log chain (log or
/// incremental backups, each naming the one it continues) from the first
/// one started after TIME, whose logs reach it, back to the first one after
/// the full or differential. `restore-mysql --until TIME` stops its replay
/// at TIME. With --chain, each SNAPSHOT is written with the backups it needs
/// before it (its full, and the links between): `fetch R --chain latest`
/// restores the latest state. A chain with a missing link (a backup whose
/// parent is gone) is refused (exit 4) naming it, and nothing is written.
///
/// Every
/// chunk is read back from its pack and verified before it is written:
/// decrypted, decompressed and hashed again to its ID, so a forged or damaged
/// chunk never reaches the next stage; a bad copy is passed over for a good
/// copy of the same chunk (said on stderr), and a chunk with no good copy
/// fails the fetch (exit 4) naming it. `encrypt -d` then authenticates
/// everything.
///
/// --host, --engine and --source apply to every selector. `latest` and
/// --until choose among the backups of one host, engine and source only:
/// when the repository holds backups of several, they refuse (exit 2) until
/// the options name one, so a restore never picks another machine's (or
/// another server's) backup. An ID of a backup of another host, engine or
/// source than those given is refused (exit 2).
///
/// A snapshot whose summary cannot be read (damaged) is never skipped: its
/// host and time are unknown, so `latest` and --until fail (exit 4) naming it
/// while any exists, as does its own ID. Run `repo check`; then remove it
/// with `repo forget R ID`, or name a readable snapshot by its ID, which
/// still works.
#[derive(Parser)]
#[command(name = "fetch", version, after_help = AFTER_HELP)]
struct Args {
    /// The repository, then the snapshots to write, in order. The repository
    /// may be left out when BACKPIPE_REPOSITORY names it (a first word that
    /// is a path with a slash, a URL or an existing directory is taken for
    /// the repository all the same).
    #[arg(value_name = "REPO|SNAPSHOT")]
    words: Vec<String>,
    /// Write the chain that restores to this time: `2026-11-21 10:00` (local time) or RFC 3339.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Write each SNAPSHOT with the backups it needs before it (its full and the links between).
    #[arg(long, conflicts_with = "until")]
    chain: bool,
    #[command(flatten)]
    select: Selection,
    #[command(flatten)]
    keys: KeyArgs,
}

const AFTER_HELP: &str = concat!(
    "\
Example:
  fetch R latest --host web1 | encrypt -d --repo R | squeeze -d | chunk -d | unpack /restore
  fetch R --until '2026-11-21 10:00' --host db1 --engine mysql | encrypt -d --repo R | ...
  fetch R --chain latest --host db1 --engine mysql | encrypt -d --repo R | ...

A local TIME that daylight saving time skipped or repeated is refused: give
it as RFC 3339 with an offset, e.g. 2026-10-25T02:30:00+01:00.

",
    backpipe::storage_limits_help!(),
    "

Exit status: 0 success, 1 error, 2 usage or key (also: several hosts,
engines or sources match, or the ID is of another one), 4 integrity failure
(a damaged snapshot or repository, a chain with a missing link)."
);

fn main() {
    let args = cli::parse::<Args>();
    cli::main("fetch", || {
        let until = args.until.as_deref().map(parse_time).transpose()?;
        let (repo, snapshots) = cli::split_repository(&args.words)?;
        match (until.is_some(), snapshots.is_empty()) {
            (true, false) => return Err(backpipe::Error::usage("give --until or snapshots to write, not both")),
            (false, true) => {
                return Err(backpipe::Error::usage("name the snapshots to write (`latest`, an ID), or --until TIME"))
            }
            _ => {}
        }
        let repo = cli::open_repo(&repo, &args.keys)?;
        let filter = args.select.filter();
        let ids = match until {
            Some(until) => chain_until(&repo, until, &filter)?,
            None if args.chain => chains_of(&repo, &snapshots, &filter)?,
            None => resolve(&repo, &snapshots, &filter)?,
        };
        for passed_over in fetch(&repo, &ids, cli::stream_stdout()?)? {
            cli::say(&format!("fetch: {passed_over}"));
        }
        Ok(())
    })
}
