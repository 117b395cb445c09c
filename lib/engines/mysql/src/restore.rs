//! `restore-mysql`: reads a full backup and the incrementals after it (what
//! `fetch --until` writes) and rebuilds the server: loads the logical dump
//! into a running server, or prepares the physical copy and moves it into a
//! data directory; then replays the binary logs from the full's coordinates
//! up to the stopping point.
//!
//! Nothing changes on the target before the whole input is read and
//! verified and the stopping point is proven reachable: the dump and the
//! binary logs are spooled to private files (mode 0600, in a working
//! directory of mode 0700 named after this process, which a later run
//! removes if this one is killed), every entry's digest and every event's
//! checksum checked, and the plan made from what the chain holds. A load or
//! replay that fails part-way (a statement the server refuses) leaves the
//! target partly restored, and the last line says so. A physical restore is
//! prepared and replayed in a staging directory and takes the data
//! directory's place only when all succeeded.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};

use crate::binlog::BackgroundCheck;
use crate::client::{run_tool, Client, Running};
use crate::datadir::{check_datadir, prepare_physical, staging_parent, swap_in};
use crate::dump::{BINLOG_ROLE, ENGINE, LOGICAL_ROLE, PHYSICAL_ROLE};
use crate::error::{Error, Result};
use crate::meta::{Begin, End, Entry, EntryEnd};
use crate::plan::{holds, keep_log, plan_replay, ReceivedLog};
use crate::positions::{sequence_of, Positions, PHYSICAL};
use crate::replay::{replay, Logging, Reached, Replay, Until, MAX_PACKET, UTC_FORMAT};
use crate::scratch::ScratchServer;
use crate::sink::{consume, Consumer};
use crate::target::{load_dump, prepare_target, refuse_nonempty_target, target_databases};
use crate::units::stored_time;
use crate::RESTORE_WORK_PREFIX as WORK_PREFIX;

/// The tool name in messages.
const TOOL: &str = "restore-mysql";

/// What a restore does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where replay stops.
    pub until: Until,
    /// Print the plan only; touch no server and no data directory.
    pub dry_run: bool,
    /// Drop the target's databases (logical) or move its data directory
    /// aside (physical) instead of refusing a target that holds data.
    pub replace: bool,
    /// The data directory a physical backup is restored into.
    pub datadir: Option<PathBuf>,
    /// The server's option file, for the temporary server a physical restore replays into.
    pub server_defaults: Option<PathBuf>,
    /// With `replace`, also drop the target's databases the backup does not hold.
    pub drop_others: bool,
    /// Whether a logical restore's load and replay go into the target's own binary log.
    pub logging: Logging,
}

/// The full backup at the head of the chain.
struct Full {
    positions: Positions,
    started: String,
}

/// Where the content of the entry being read goes.
enum Sink {
    /// Into a tool's stdin: `mbstream -x` (a physical backup, extracted into
    /// the private staging directory).
    Pipe(Running, ChildStdin),
    /// A logical dump, spooled to a private file: loaded into the server only
    /// once the whole input is verified.
    Spool(PathBuf, BufWriter<File>),
    /// A binary log: checked, and kept in a file unless dry-running.
    Binlog { name: String, file: Option<(PathBuf, BufWriter<File>)>, check: BackgroundCheck },
    /// Only verified (dry run).
    Discard,
}

/// The state of a restore as the input is read.
struct Restore<'a> {
    client: &'a Client,
    options: &'a Options,
    /// Where the entry being read goes. Declared before `work`, so a tool
    /// writing into it stops before it is removed.
    open: Option<Sink>,
    /// The spooled logical dumps, in the order they load.
    dumps: Vec<PathBuf>,
    /// Removes `work` if a signal ends the restore.
    _removed_on_signal: crate::interrupt::Registration,
    work: tempfile::TempDir,
    full: Option<Full>,
    /// Descriptions of the backups read, for the plan.
    backups: Vec<String>,
    /// The binary log file the next incremental must start with.
    next_file: Option<String>,
    logs: Vec<ReceivedLog>,
    begin: Option<Begin>,
    /// The data directory is a mount point; `work` is inside it.
    into_mount: bool,
    /// How a logical restore logs (the option, unless the target keeps no binary log).
    logging: Logging,
    /// When the restore began, for its summary.
    began: std::time::Instant,
}

/// Restores the chain read from `input`; with `options.dry_run`, writes the plan to `plan` instead.
pub fn restore(client: &Client, input: impl Read, options: &Options, plan: &mut dyn Write) -> Result<()> {
    let datadir = match options.datadir.as_deref().map(std::path::absolute).transpose() {
        Ok(datadir) => datadir,
        Err(e) => return Err(Error::io("cannot tell where the data directory is", e)),
    };
    let options = &Options { datadir, ..options.clone() };
    // On the data directory's file system, so the restored copy moves in by
    // renaming: beside it, or inside it when it is a mount point.
    let (work_parent, into_mount) = match options.datadir.as_deref() {
        Some(datadir) if !options.dry_run => staging_parent(datadir)?,
        _ => (std::env::temp_dir(), false),
    };
    for parent in [&work_parent, &std::env::temp_dir()] {
        for note in crate::workdir::remove_stale(parent, WORK_PREFIX) {
            crate::notice::notice(&note);
        }
    }
    // Private: it holds the backup's data (the spooled dump, binary logs, the staged copy).
    let work = crate::workdir::create(&work_parent, WORK_PREFIX)
        .map_err(|e| Error::io(format!("cannot create a working directory in '{}'", work_parent.display()), e))?;
    let mut state = Restore {
        client,
        options,
        open: None,
        dumps: Vec::new(),
        _removed_on_signal: crate::interrupt::remove_on_signal(work.path()),
        work,
        full: None,
        backups: Vec::new(),
        next_file: None,
        logs: Vec::new(),
        begin: None,
        into_mount,
        logging: options.logging,
        began: std::time::Instant::now(),
    };
    state.read(input)?;
    state.finish(plan)
}

impl Restore<'_> {
    fn read(&mut self, input: impl Read) -> Result<()> {
        consume(TOOL, input, self, "the restore is incomplete")?;
        if self.full.is_none() {
            return Err(Error::incomplete("the input holds no full MySQL backup"));
        }
        Ok(())
    }

    fn begin_full(&mut self, begin: &Begin, positions: Positions) -> Result<()> {
        if let Until::Time(until) = self.options.until {
            if stored_time(&begin.started).is_some_and(|started| started > until) {
                return Err(Error::usage(format!(
                    "the full backup started at {}, after --until {}; fetch the chain for that time instead: \
                     fetch REPO --until '{}' --engine mysql (it chooses a full consistent by then)",
                    begin.started,
                    until.format(UTC_FORMAT),
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
        }
        if !self.options.dry_run {
            if positions.method == PHYSICAL {
                let datadir = self.options.datadir.as_deref().ok_or_else(|| {
                    Error::usage(
                        "the input is a physical backup: name the data directory to restore into with --datadir",
                    )
                })?;
                check_datadir(datadir, self.options.replace)?;
            } else {
                if !self.options.replace {
                    // Refused now, before the input is read; with --replace, dropped once it all verified.
                    refuse_nonempty_target(self.client, &target_databases(self.client)?)?;
                }
                self.logging = logging_possible(self.client, self.logging)?;
            }
        }
        self.full = Some(Full { positions, started: begin.started.clone() });
        Ok(())
    }

    /// Plans the replay; then prints the plan (dry run) or carries it out.
    /// Nothing on the target changes before the plan is made.
    fn finish(self, out: &mut dyn Write) -> Result<()> {
        let full = self.full.as_ref().expect("read checked");
        let full_time = full.positions.consistent_at.as_deref().or(Some(&full.started)).and_then(stored_time);
        let plan = plan_replay(&full.positions, full_time, &self.logs, &self.options.until)?;
        let mut lines = self.backups.clone();
        lines.push(plan.describe(&full.positions));
        let physical = full.positions.method == PHYSICAL;
        if !plan.logs.is_empty() {
            lines.push(format!(
                "packets      up to {} MiB per statement: the replay raises max_allowed_packet{}",
                MAX_PACKET >> 20,
                if physical { " of its temporary server" } else { ", and sets it back afterwards" }
            ));
        }
        lines.push(match &self.options.datadir {
            Some(dir) if physical => format!("target       data directory {}", dir.display()),
            _ => format!("target       {}", self.client.target()),
        });
        if self.options.dry_run {
            for line in &lines {
                writeln!(out, "{line}").map_err(|e| Error::io("cannot write the plan", e))?;
            }
            return Ok(());
        }
        for line in &lines {
            crate::notice::notice(line);
        }
        let files: Vec<PathBuf> = plan.logs.iter().map(|log| log.path.clone().expect("kept when not dry")).collect();
        let start = full.positions.binlog_pos.unwrap_or(4);
        let mut reached = Reached::from_list(full.positions.gtid.as_deref().unwrap_or(""));
        let job = |prelude, logging| Replay { prelude, files: &files, start, until: &plan.until, logging };
        if physical {
            // Everything happens in a staging directory on the data
            // directory's file system, which changes only once it all succeeded.
            let datadir = self.options.datadir.as_deref().expect("checked at Begin");
            let defaults = self.options.server_defaults.as_deref();
            let staged = self.work.path().join("data");
            let unchanged = |e: Error| e.with_note(format!("'{}' is unchanged", datadir.display()));
            prepare_physical(&self.work.path().join("full"), &staged, defaults).map_err(unchanged)?;
            if !files.is_empty() {
                let server = ScratchServer::start(&staged, defaults).map_err(unchanged)?;
                let client = server.client();
                replay(&client, &job("FLUSH PRIVILEGES;\n", Logging::On), &mut reached).map_err(unchanged)?;
                // The restored server knows where it stands, for replication;
                // a login this refuses (the restored grants apply from the
                // replay's FLUSH PRIVILEGES on) is said, and loses no restore.
                let gtid = reached.list();
                if !gtid.is_empty() {
                    if let Err(e) = client.query(&format!("SET GLOBAL gtid_slave_pos = '{gtid}'")) {
                        crate::notice::notice(&format!(
                            "warning: could not set gtid_slave_pos in the restored data ({e}); set it once the \
                             server runs, with the statements below"
                        ));
                    }
                }
                server.stop().map_err(unchanged)?;
            }
            swap_in(&staged, datadir, self.options.replace, self.into_mount)?;
            self.summarize(&reached);
            let owner = nix::unistd::Uid::effective();
            crate::notice::notice(&format!(
                "owner        the restored files belong to user ID {owner}: start the server as that user, or first \
                 run `chown -R mysql: {}` as root",
                datadir.display()
            ));
            return Ok(());
        }
        let databases = full.positions.databases.as_deref();
        let partly = |e: Error| {
            e.with_note(format!(
                "{} now holds part of the full backup of {}: restore again with --replace",
                self.client.target(),
                full.started
            ))
        };
        let logging = self.logging;
        prepare_target(self.client, self.options.replace, databases, self.options.drop_others, logging).map_err(
            |e| {
                e.with_note(format!(
                    "nothing was loaded into {}; the databases named above as dropped are gone: restore again with \
                 --replace",
                    self.client.target()
                ))
            },
        )?;
        for dump in &self.dumps {
            load_dump(self.client, dump, logging).map_err(partly)?;
        }
        if !files.is_empty() {
            replay(self.client, &job("", logging), &mut reached).map_err(|e| {
                e.with_note(format!(
                    "{} holds the full backup of {} and part of the binary logs after it: restore again with \
                     --replace (to this stopping point or an earlier one)",
                    self.client.target(),
                    full.started
                ))
            })?;
        }
        self.summarize(&reached);
        Ok(())
    }

    /// The restore's last lines: what was restored, to where, the GTID
    /// position reached, in how long; and how to make the server a replica.
    fn summarize(&self, reached: &Reached) {
        let full = self.full.as_ref().expect("read checked");
        let incrementals = self.backups.len().saturating_sub(1);
        let gtid = reached.list();
        crate::notice::notice(&format!(
            "restored     the {} full of {}{} {}: GTID position {}, in {:.1} s",
            full.positions.method,
            full.started,
            match incrementals {
                0 => String::new(),
                1 => " and 1 incremental".to_string(),
                n => format!(" and {n} incrementals"),
            },
            self.options.until.describe(),
            if gtid.is_empty() { "unknown" } else { &gtid },
            self.began.elapsed().as_secs_f64()
        ));
        if !gtid.is_empty() {
            crate::notice::notice(&format!(
                "replica      to make it a replica of the backed-up server: SET GLOBAL gtid_slave_pos = '{gtid}'; \
                 CHANGE MASTER TO MASTER_HOST = 'source', MASTER_USER = 'repl', MASTER_PASSWORD = '...', \
                 MASTER_USE_GTID = slave_pos; START SLAVE;"
            ));
        }
    }
}

/// The checked sink hands the input to the restore part by part.
impl Consumer for Restore<'_> {
    fn begin(&mut self, begin: Begin) -> Result<()> {
        if begin.engine != ENGINE {
            return Err(Error::usage(format!("the input is a backup of engine '{}', not MySQL", begin.engine)));
        }
        let positions = Positions::from_maps(&begin.positions, &Default::default())?;
        match (begin.kind.as_str(), &self.full) {
            ("full", None) => self.begin_full(&begin, positions)?,
            ("full", Some(_)) => {
                return Err(Error::usage(
                    "the input holds more than one full backup; restore one chain (`fetch --until` writes one)",
                ))
            }
            ("incremental", None) => {
                return Err(Error::usage("the input starts with an incremental; a full backup must come first"))
            }
            ("incremental", Some(full)) => {
                let expected = self.next_file.clone().ok_or_else(|| {
                    Error::integrity("the backup before this incremental records no file for the next one")
                })?;
                let expected = expected.as_str();
                let same = positions.binlog_basename == full.positions.binlog_basename
                    && positions.server_id == full.positions.server_id;
                if !same || !holds(&positions, expected)? {
                    return Err(Error::usage(format!(
                        "the incremental started {} does not continue the chain: it holds {} to {}, the chain needs \
                         {expected} (an incremental is missing, or it belongs to another server)",
                        begin.started,
                        positions.from_file.as_deref().unwrap_or("?"),
                        positions.binlog_file.as_deref().unwrap_or("?")
                    )));
                }
                self.next_file = positions.next_file.clone();
                self.backups.push(format!(
                    "incremental  started {}, binary logs {} to {}",
                    begin.started,
                    positions.from_file.as_deref().unwrap_or("?"),
                    positions.binlog_file.as_deref().unwrap_or("?")
                ));
            }
            (kind, _) => return Err(Error::usage(format!("cannot restore a MySQL backup of kind '{kind}'"))),
        }
        self.begin = Some(begin);
        Ok(())
    }

    fn entry(&mut self, entry: Entry) -> Result<()> {
        let name = entry.path.display();
        let dry = self.options.dry_run;
        let sink = match entry.role.as_str() {
            LOGICAL_ROLE if !dry => {
                let path = self.work.path().join(format!("dump-{}.sql", self.dumps.len()));
                let file = private_file(&path)?;
                Sink::Spool(path, BufWriter::with_capacity(crate::filter::IO_BUFFER, file))
            }
            PHYSICAL_ROLE if !dry => {
                let target = self.work.path().join("full");
                std::fs::create_dir(&target).map_err(|e| Error::io("cannot create the extraction directory", e))?;
                let mut command = Command::new("mbstream");
                command.arg("-x").arg("-C").arg(&target).stdin(Stdio::piped()).stdout(Stdio::null());
                let mut extract = run_tool("mbstream", command)?;
                let stdin = extract.child.stdin.take().expect("stdin is piped");
                Sink::Pipe(extract, stdin)
            }
            LOGICAL_ROLE | PHYSICAL_ROLE => Sink::Discard,
            BINLOG_ROLE => {
                let log = name.strip_prefix("binlog/").unwrap_or(&name).to_string();
                if log.contains('/') || log.starts_with('.') {
                    return Err(Error::integrity(format!("entry '{name}' is not a binary log name")));
                }
                sequence_of(&log)?;
                // A second copy of a file (overlapping incrementals) is only compared with the first.
                let file = if dry || self.logs.iter().any(|received| received.name == log) {
                    None
                } else {
                    let path = self.work.path().join(&log);
                    let file = private_file(&path)?;
                    Some((path, BufWriter::with_capacity(crate::filter::IO_BUFFER, file)))
                };
                Sink::Binlog { check: BackgroundCheck::start(&log), name: log, file }
            }
            role => {
                return Err(Error::usage(format!(
                    "entry '{name}' has role '{role}', which restore-mysql does not know"
                )))
            }
        };
        self.open = Some(sink);
        Ok(())
    }

    /// Passes on one Data frame's payload (a binary log's goes to its check whole, without a copy).
    fn data(&mut self, bytes: Vec<u8>) -> Result<()> {
        let open = self.open.as_mut().ok_or_else(|| Error::integrity("a Data frame outside an entry"))?;
        match open {
            Sink::Pipe(_, stdin) => {
                if let Err(e) = stdin.write_all(&bytes) {
                    // The tool stopped reading: its own error says why.
                    let sink = self.open.take().expect("open");
                    return Err(finish_sink(sink).err().unwrap_or_else(|| Error::io("cannot pass on the backup", e)));
                }
            }
            Sink::Spool(path, out) => {
                out.write_all(&bytes).map_err(|e| Error::io(format!("cannot write '{}'", path.display()), e))?;
            }
            Sink::Binlog { file, check, .. } => {
                if let Some((path, out)) = file {
                    out.write_all(&bytes).map_err(|e| Error::io(format!("cannot write '{}'", path.display()), e))?;
                }
                if !check.feed(bytes) {
                    let sink = self.open.take().expect("open");
                    return Err(finish_sink(sink).err().unwrap_or_else(|| Error::integrity("binary log check failed")));
                }
            }
            Sink::Discard => {}
        }
        Ok(())
    }

    fn entry_end(&mut self, end: EntryEnd) -> Result<()> {
        let sink = self.open.take().ok_or_else(|| Error::integrity("an EntryEnd frame outside an entry"))?;
        if let Sink::Spool(path, out) = sink {
            out.into_inner().map_err(|e| Error::io(format!("cannot write '{}'", path.display()), e.into_error()))?;
            self.dumps.push(path);
        } else if let Some(mut log) = finish_sink(sink)? {
            log.size = end.size;
            log.digest = end.blake3;
            keep_log(&mut self.logs, log)?;
        }
        Ok(())
    }

    fn end(&mut self, end: End) -> Result<()> {
        let begin = self.begin.take().ok_or_else(|| Error::integrity("an End frame without Begin"))?;
        if begin.kind == "full" {
            let full = self.full.as_mut().expect("begin_full ran");
            full.positions = Positions::from_maps(&begin.positions, &end.positions)?;
            let p = &full.positions;
            let (file, pos) = match (&p.binlog_file, p.binlog_pos) {
                (Some(file), Some(pos)) => (file.clone(), pos),
                _ => return Err(Error::integrity("the full backup records no binary log position")),
            };
            if let (Until::Time(until), Some(consistent)) = (&self.options.until, &p.consistent_at) {
                if stored_time(consistent).is_some_and(|at| at > *until) {
                    return Err(Error::usage(format!(
                        "the physical full backup is consistent only from {consistent}, when its copy ended, after \
                         --until {}; fetch the chain for that time instead: fetch REPO --until '{}' --engine mysql \
                         (it chooses a full consistent by then)",
                        until.format(UTC_FORMAT),
                        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )));
                }
            }
            self.next_file = Some(file.clone());
            self.backups.insert(
                0,
                format!(
                    "full         {}, started {}, consistent at {file}:{pos} (GTID {})",
                    p.method,
                    full.started,
                    p.gtid.as_deref().unwrap_or("unknown")
                ),
            );
        }
        Ok(())
    }
}

/// How a logical restore can log: as asked, when the target lets this user
/// keep a session out of its binary log (checked before the input is read);
/// as any session when the target keeps no binary log (nothing to keep out
/// of, and no privilege needed).
fn logging_possible(client: &Client, asked: Logging) -> Result<Logging> {
    if asked == Logging::On || client.value("SELECT @@log_bin")? == "0" {
        return Ok(Logging::On);
    }
    client.query(&format!("{}SELECT 1", asked.prefix())).map_err(|e| {
        e.context(
            "cannot keep the restore out of the target's binary log (needs the BINLOG ADMIN or SUPER privilege); \
             grant it, or pass --log-restore to write the restore into the binary log; nothing changed",
        )
    })?;
    Ok(asked)
}

/// Creates (or empties) a file in the private working directory that only
/// its owner may read or write, for backup data (a spooled dump, a binary log).
fn private_file(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    options.open(path).map_err(|e| Error::io(format!("cannot create '{}'", path.display()), e))
}

/// Closes an entry's sink; a binary log's becomes a received log. (A spooled
/// dump not yet verified is dropped with the working directory.)
fn finish_sink(sink: Sink) -> Result<Option<ReceivedLog>> {
    match sink {
        Sink::Spool(..) => Ok(None),
        Sink::Pipe(running, stdin) => {
            drop(stdin);
            running.finish()?;
            Ok(None)
        }
        Sink::Binlog { name, file, check } => {
            let checked = check.finish()?;
            let path = match file {
                Some((path, mut out)) => {
                    out.flush().map_err(|e| Error::io(format!("cannot write '{}'", path.display()), e))?;
                    Some(path)
                }
                None => None,
            };
            // Its size and digest are the entry's, which the caller knows.
            Ok(Some(ReceivedLog { name, path, checked, size: 0, digest: String::new() }))
        }
        Sink::Discard => Ok(None),
    }
}
