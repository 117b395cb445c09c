//! `restore-mysql`: the MySQL/MariaDB agent's sink; restores a full backup
//! and its incrementals, to the latest state or to a point in time.

use std::path::PathBuf;

use backpipe::cli;
use backpipe::mysql::client::{Client, ConnectArgs};
use backpipe::mysql::replay::Until;
use backpipe::mysql::restore::{restore, Options};
use clap::Parser;

/// Restore a MariaDB backup read from stdin: a full backup, optionally
/// followed by its incrementals (what `fetch --until` writes, after
/// `encrypt -d | squeeze -d | chunk -d`).
///
/// A logical full is loaded into the running server the connection options
/// name, which must hold no databases (besides mysql, sys and the schemas
/// of information) unless --replace drops them first. Accounts the dump
/// holds are created unless they exist. The dump is first written to a
/// private file under $TMPDIR (which needs room for it) and loaded only
/// once its digest matched: no statement of a damaged or forged dump
/// reaches the server.
///
/// A physical full is prepared in a staging directory beside --datadir; if
/// incrementals follow, their binary logs are replayed there through a
/// temporary private server (--server-defaults gives it the production
/// my.cnf). Only then does it take the place of --datadir, which must be
/// empty or absent (--replace moves it aside); the server there must be
/// stopped. Start the real server afterwards (owned by its user:
/// chown -R mysql: DIR).
///
/// Then the binary logs are replayed from the full's coordinates up to the
/// stopping point: the end (default), --until TIME, --until-position or
/// --until-gtid. --dry-run prints the plan (backups, binary logs,
/// positions, stopping point) and touches nothing. Every entry's digest and
/// every binary log event's checksum are verified before any of it reaches
/// a server.
#[derive(Parser)]
#[command(name = "restore-mysql", version, after_help = AFTER_HELP)]
struct Args {
    /// Stop before the first event stamped at or after TIME (binary log
    /// times are whole seconds): `2026-11-21 10:00:00` (local time) or RFC 3339.
    #[arg(long, value_name = "TIME", group = "stop")]
    until: Option<String>,
    /// Stop at this binary log position, FILE:POS.
    #[arg(long, value_name = "FILE:POS", group = "stop")]
    until_position: Option<String>,
    /// Stop after this GTID position (inclusive), e.g. 0-1-1234.
    #[arg(long, value_name = "GTID", group = "stop")]
    until_gtid: Option<String>,
    /// Print the plan only; connect to no server and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Drop the target's databases (logical) or move the data directory aside (physical) first.
    #[arg(long)]
    replace: bool,
    /// A physical backup's destination: the stopped server's data directory.
    #[arg(long, value_name = "DIR")]
    datadir: Option<PathBuf>,
    /// The server's option file, used by the temporary server of a physical restore.
    #[arg(long, value_name = "FILE", requires = "datadir")]
    server_defaults: Option<PathBuf>,
    #[command(flatten)]
    connect: ConnectArgs,
}

const AFTER_HELP: &str = "\
Examples:
  fetch R --until '2026-11-21 10:00' --engine mysql | encrypt -d --repo R | squeeze -d | chunk -d \\
      | restore-mysql --until '2026-11-21 10:00' --defaults-file /etc/backpipe/admin.cnf
  fetch R latest ... | restore-mysql --dry-run
  fetch R SNAPSHOT ... | restore-mysql --datadir /var/lib/mysql   # physical, server stopped

Exit status: 0 restored, 1 error, 2 usage (wrong input or options), 3 incomplete input,
4 integrity failure (digest, binary log checksum), 5 database error (server unreachable,
login refused, target not empty, a statement failed).";

fn main() {
    let args = Args::parse();
    cli::main("restore-mysql", || {
        let until = if let Some(time) = &args.until {
            Until::Time(backpipe::repo::fetch::parse_time(time)?)
        } else if let Some(position) = &args.until_position {
            Until::position(position)?
        } else if let Some(gtid) = &args.until_gtid {
            Until::gtid(gtid)?
        } else {
            Until::Latest
        };
        let options = Options {
            until,
            dry_run: args.dry_run,
            replace: args.replace,
            datadir: args.datadir.clone(),
            server_defaults: args.server_defaults.clone(),
        };
        let client = Client::new(&args.connect)?;
        restore(&client, cli::stream_stdin()?, &options, &mut std::io::stdout().lock())
    })
}
