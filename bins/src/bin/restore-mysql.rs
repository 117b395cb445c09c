//! `restore-mysql`: the MySQL/MariaDB agent's sink; restores a full backup
//! and its incrementals, to the latest state or to a point in time.

use std::path::PathBuf;

use backpipe::cli;
use backpipe::mysql::{restore, Client, ConnectArgs, Logging, RestoreOptions as Options, Until};
use clap::Parser;

/// Restore a MariaDB backup read from stdin: a full backup, optionally
/// followed by its incrementals (what `fetch --until` writes, after
/// `encrypt -d | squeeze -d | chunk -d`).
///
/// Nothing on the target changes before the whole input is read and
/// verified (every entry's digest, every binary log event's checksum) and
/// the stopping point is proven inside what the chain holds: the input is
/// first spooled to private files in a working directory of mode 0700
/// (under $TMPDIR for a logical restore, which needs room for it). A
/// restore that would stop earlier than asked fails.
///
/// A logical full is loaded into the running server the connection options
/// name, which must hold no databases (besides mysql, sys and the schemas
/// of information) unless --replace drops those the backup holds first.
/// Accounts the dump holds are created unless they exist. The load and the
/// replay are kept out of the target's binary log (sql_log_bin=0, which
/// needs BINLOG ADMIN, checked before the input is read), so a replica of
/// the target does not replay them; --log-restore writes them there.
///
/// A physical full is prepared in a staging directory on --datadir's file
/// system (inside it, when it is a mount point); if incrementals follow,
/// their binary logs are replayed there through a temporary private server
/// (--server-defaults gives it the production my.cnf). Only then does it
/// take the place of --datadir, which must be empty or absent (--replace
/// moves its contents aside); the server there must be stopped. Start the
/// real server afterwards (owned by its user: chown -R mysql: DIR).
///
/// Then the binary logs are replayed from the full's coordinates up to the
/// stopping point: the end (default), --until TIME, --until-position or
/// --until-gtid. --dry-run prints the plan (backups, binary logs,
/// positions, stopping point) and touches nothing. On SIGTERM, SIGINT or
/// SIGHUP it stops the temporary server and removes what it made.
///
/// It ends with one line saying what was restored, to which stopping point,
/// the GTID position reached and how long it took, and the statements that
/// make the restored server a replica of the backed-up one (a physical
/// restore that replayed binary logs also sets gtid_slave_pos in the
/// restored data directory).
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
    /// Restore over what the target holds: drop the databases the backup
    /// holds (logical), or move the data directory's contents aside
    /// (physical). Only once the whole input is verified and the stopping
    /// point proven reachable.
    #[arg(long)]
    replace: bool,
    /// With --replace, also drop the target's databases the backup does not hold.
    #[arg(long, requires = "replace")]
    drop_other_databases: bool,
    /// A physical backup's destination: the stopped server's data directory.
    #[arg(long, value_name = "DIR")]
    datadir: Option<PathBuf>,
    /// The server's option file, used by the temporary server of a physical restore.
    #[arg(long, value_name = "FILE", requires = "datadir")]
    server_defaults: Option<PathBuf>,
    /// Write a logical restore's load and replay into the target's binary
    /// log (by default they are kept out of it, so the target's replicas do
    /// not replay them).
    #[arg(long)]
    log_restore: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

const AFTER_HELP: &str = "\
Examples (each line under 80 columns, so they paste whole):
  export BACKPIPE_REPOSITORY=/backups
  K=/etc/backpipe/key; A=/etc/backpipe/admin.cnf
  # The latest state: the newest backup with the chain it needs
  fetch --chain latest --engine mysql --key-file $K \\
    | encrypt -d --key-file $K | squeeze -d | chunk -d --key-file $K \\
    | restore-mysql --defaults-file $A
  # A point in time (the same TIME for fetch and restore-mysql)
  T='2026-11-21 10:00'
  fetch --until \"$T\" --engine mysql --key-file $K \\
    | encrypt -d --key-file $K | squeeze -d | chunk -d --key-file $K \\
    | restore-mysql --until \"$T\" --defaults-file $A
  # Physical: the server stopped, its data directory named
  fetch --chain latest --engine mysql --key-file $K \\
    | encrypt -d --key-file $K | squeeze -d | chunk -d --key-file $K \\
    | restore-mysql --datadir /var/lib/mysql

Exit status: 0 restored, 1 error, 2 usage (wrong input or options),
3 incomplete input (or a chain that ends before the stopping point),
4 integrity failure (digest, binary log checksum), 5 database error
(server unreachable, login refused, target not empty, a statement
failed), 128+N ended by signal N. A stream aborted upstream exits with
the status of the stage that failed.";

fn main() {
    let args = cli::parse::<Args>();
    cli::main("restore-mysql", || {
        backpipe::interrupt::install()?;
        let until = if let Some(time) = &args.until {
            Until::Time(backpipe::units::parse_time(time)?)
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
            drop_others: args.drop_other_databases,
            logging: if args.log_restore { Logging::On } else { Logging::Off },
        };
        let client = Client::new(&args.connect)?;
        restore(&client, cli::stream_stdin()?, &options, &mut std::io::stdout().lock())
    })
}
