//! `dump-mysql`: the MySQL/MariaDB agent's source; writes full and
//! incremental backups as a stream, and purges binary logs that stored
//! backups hold.

use std::path::PathBuf;

use backpipe::cli::{self, KeyArgs};
use backpipe::mysql::{self, previous, Client, ConnectArgs, IncrementalOptions, ServerInfo, ENGINE};
use backpipe::repo::receipt::{stored, Origin};
use clap::{Parser, Subcommand};

/// Back up a MariaDB server as a stream on stdout.
///
/// --full writes every database with mariadb-dump in one consistent
/// transaction while writes go on: tables, views, routines, events,
/// triggers, and users with their grants. The binary log file, position and
/// GTID of that snapshot go into the stream's Begin frame.
///
/// --full --physical copies the server's files hot with mariadb-backup
/// instead, for databases too big to reload from SQL; its binary log
/// position goes into the End frame.
///
/// --incremental closes the server's current binary log and writes every
/// binary log file from where the previous backup ended, each checked (magic
/// number, position chain, CRC-32 of every event) while it is sent. The
/// previous backup comes from its ship receipt (--since-receipt) or from
/// the repository (--repo); after a full, an incremental still starts where
/// the last incremental ended, so the archived binary logs have no gap. If a
/// file of the sequence was purged, reset or is damaged, the backup fails and
/// says to take a full.
///
/// The password is never an argument: it comes from --password-file or
/// --password-fd, an option file (--defaults-file or the usual my.cnf
/// files), or MYSQL_PWD, in that order of precedence. A failed backup ends
/// its stream with an Abort frame, so `ship` stores nothing.
#[derive(Parser)]
#[command(name = "dump-mysql", version, after_help = AFTER_HELP, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    backup: BackupArgs,
}

#[derive(clap::Args)]
struct BackupArgs {
    /// A full backup (logical unless --physical).
    #[arg(long, conflicts_with = "incremental")]
    full: bool,
    /// With --full: a hot physical copy through mariadb-backup.
    #[arg(long, requires = "full")]
    physical: bool,
    /// The binary logs written since the previous backup.
    #[arg(long)]
    incremental: bool,
    /// With --incremental: the previous backup is the last one of this server in this ship receipt.
    #[arg(long, value_name = "FILE", requires = "incremental", conflicts_with = "repo")]
    since_receipt: Option<PathBuf>,
    /// With --incremental: the previous backup is the newest one of this server in this repository
    /// (needs a full key; a write-only key cannot list backups: use --since-receipt).
    #[arg(long, value_name = "REPO", requires = "incremental")]
    repo: Option<String>,
    /// With --incremental: read the binary log files here instead of the
    /// directory of the server's log_bin_basename.
    #[arg(long, value_name = "DIR", requires = "incremental")]
    binlog_dir: Option<PathBuf>,
    /// With --incremental after a full: start at the full's binary log even if
    /// the last incremental ended earlier (no backup then holds the files
    /// between; for when one of them is damaged).
    #[arg(long, requires = "incremental")]
    restart_at_full: bool,
    #[command(flatten)]
    recorded: cli::Recorded,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Check binary log files without backing them up.
    ///
    /// Reads each file once and checks what an incremental checks while it
    /// copies one: the magic number, every event's header and length, the
    /// chain of event positions (where the server wrote them; MariaDB 11.4
    /// and later leave them out for cached events), and every event's CRC-32
    /// when the file has checksums. One line per file on stdout (--json: one
    /// JSON object per line); exit status 0 when every file is sound, 4 when
    /// any is damaged (its line says at which byte and why), 1 when one
    /// cannot be read.
    Verify {
        /// The binary log files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// One JSON object per file: `file`, `sound`, and what was found or the `error`.
        #[arg(long)]
        json: bool,
    },
    /// Purge the server's binary logs that stored incremental backups hold, and no others.
    ///
    /// Reads ship receipts (the JSON lines `ship` prints) and removes the
    /// server's oldest binary log files as far as the incrementals named in
    /// them hold every one, never further: a file no receipt covers, and
    /// every file after it, stay, as does the file the server is writing.
    /// A file counts only if a receipt lists it with the same size (so files
    /// of a reset server, which reuse old names, are never taken for stored
    /// ones). Needs the BINLOG ADMIN and BINLOG MONITOR privileges (SUPER
    /// and REPLICATION CLIENT before MariaDB 10.5.2).
    ///
    /// Quiet when all is well (cron mails every line): --verbose says what was
    /// purged and what kept; --dry-run always says what would be.
    Purge {
        /// A ship receipt file; give several, or one with many lines, to cover more files.
        #[arg(long, value_name = "FILE", required = true)]
        receipt: Vec<PathBuf>,
        /// Only say what would be purged.
        #[arg(long)]
        dry_run: bool,
        /// Say what was purged and what was kept, and why.
        #[arg(long, short)]
        verbose: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

const AFTER_HELP: &str = "\
Examples:
  R=/backups; K=--key-file=/etc/backpipe/key
  dump-mysql --full --defaults-file /etc/backpipe/my.cnf | chunk --repo $R $K | squeeze \\
      | encrypt --repo $R $K | ship $R $K >> /var/lib/backpipe/receipts
  dump-mysql --incremental --since-receipt /var/lib/backpipe/receipts --defaults-file /etc/backpipe/my.cnf \\
      | chunk --repo $R $K | squeeze | encrypt --repo $R $K | ship $R $K >> /var/lib/backpipe/receipts
  dump-mysql purge --receipt /var/lib/backpipe/receipts --defaults-file /etc/backpipe/admin.cnf
  dump-mysql verify /var/lib/mysql/mysql-bin.0*

Privileges: docs/engines/mysql.md.

Exit status: 0 success, 1 error, 2 usage, 4 damaged binary log (backup or verify), 5 database error (server
unreachable, login refused, missing privilege, purged binary log).";

fn main() {
    let args = cli::parse::<Args>();
    cli::main("dump-mysql", || match args.command {
        Some(Command::Purge { receipt, dry_run, verbose, connect }) => {
            run_purge(&receipt, dry_run, verbose || dry_run, &connect)
        }
        Some(Command::Verify { files, json }) => run_verify(&files, json),
        None => run_backup(&args.backup),
    })
}

fn run_backup(args: &BackupArgs) -> backpipe::Result<()> {
    if !args.full && !args.incremental {
        return Err(backpipe::Error::usage("choose --full (optionally --physical) or --incremental"));
    }
    args.recorded.apply()?;
    let client = Client::new(&args.connect)?;
    let output = cli::stream_stdout()?;
    if args.full && args.physical {
        return mysql::full_physical(&client, output);
    }
    if args.full {
        return mysql::full_logical(&client, output);
    }
    let options = IncrementalOptions { binlog_dir: args.binlog_dir.clone(), restart_at_full: args.restart_at_full };
    let find_previous = |server: &ServerInfo| match (&args.since_receipt, &args.repo) {
        (Some(receipt), _) => previous(Origin::Receipts(receipt), server),
        (None, Some(repo)) => previous(Origin::Repository(&cli::open_repo(repo, &args.keys)?), server),
        (None, None) => {
            Err(backpipe::Error::usage("--incremental needs the previous backup: --since-receipt FILE or --repo REPO"))
        }
    };
    mysql::incremental(&client, find_previous, &options, output)
}

fn run_purge(receipts: &[PathBuf], dry_run: bool, verbose: bool, connect: &ConnectArgs) -> backpipe::Result<()> {
    let mut lines = Vec::new();
    for path in receipts {
        lines.extend(stored(Origin::Receipts(path), ENGINE)?);
    }
    let client = Client::new(connect)?;
    let plan = mysql::purge(&client, &lines, dry_run)?;
    if !verbose {
        return Ok(());
    }
    let verb = if dry_run { "would purge" } else { "purged" };
    match (plan.purge.first(), plan.purge.last()) {
        (Some(first), Some(last)) => {
            cli::say(&format!("dump-mysql: {verb} {} binary logs, {first} to {last}", plan.purge.len()))
        }
        _ => cli::say("dump-mysql: nothing to purge"),
    }
    if let Some((kept, why)) = plan.kept {
        cli::say(&format!("dump-mysql: kept {kept} and later: {why}"));
    }
    Ok(())
}

fn run_verify(files: &[PathBuf], json: bool) -> backpipe::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let (mut damaged, mut unreadable) = (0, 0);
    for path in files {
        let shown = path.display().to_string();
        let found = std::fs::File::open(path)
            .map_err(|e| backpipe::Error::io(format!("cannot open '{shown}'"), e))
            .and_then(|file| mysql::check_binlog(std::io::BufReader::with_capacity(1 << 20, file), &shown));
        match &found {
            Err(e) if e.kind() == backpipe::ErrorKind::Integrity => damaged += 1,
            Err(_) => unreadable += 1,
            Ok(_) => {}
        }
        let line = match (&found, json) {
            (Ok(checked), true) => {
                let mut value = checked.to_json();
                value["file"] = shown.into();
                value["sound"] = true.into();
                value.to_string()
            }
            (Err(e), true) => serde_json::json!({ "file": shown, "sound": false, "error": e.message() }).to_string(),
            (Ok(checked), false) => format!("{shown}: sound: {}", checked.describe()),
            (Err(e), false) => format!("{shown}: {}", e.message()),
        };
        writeln!(out, "{line}").map_err(|e| backpipe::Error::io("cannot write the report", e))?;
    }
    match (damaged, unreadable) {
        (0, 0) => Ok(()),
        (0, n) => Err(backpipe::Error::other(format!("{n} of {} files could not be read", files.len()))),
        (n, _) => Err(backpipe::Error::integrity(format!("{n} of {} binary logs are damaged", files.len()))),
    }
}
