//! `restore-mysql`: reads a full backup and the incrementals after it (what
//! `fetch --until` writes) and rebuilds the server: loads the logical dump
//! into a running server, or prepares the physical copy and moves it into a
//! data directory; then replays the binary logs from the full's coordinates
//! up to the stopping point. Nothing reaches the server before it is
//! verified: a logical dump is spooled to a private file (mode 0600, in a
//! working directory of mode 0700) and loaded only once its digest matched,
//! and binary logs are replayed only once every entry of the input checked;
//! a load that fails part-way (a statement the server refuses) still leaves
//! the target partly loaded. A physical restore is prepared and replayed in a
//! staging directory and takes the data directory's place only when all
//! succeeded.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};

use chrono::{DateTime, Utc};

use crate::codec::require_plain;
use crate::error::{Error, Result};
use crate::filter::describe_abort;
use crate::format::Kind;
use crate::meta::{Begin, End, Entry, EntryEnd};
use crate::mysql::binlog::{BackgroundCheck, Checked};
use crate::mysql::client::{Client, Running};
use crate::mysql::dump::{BINLOG_ROLE, ENGINE, LOGICAL_ROLE, PHYSICAL_ROLE};
use crate::mysql::positions::{parse_gtids, sequence_of, Positions, PHYSICAL};
use crate::mysql::replay::{replay, Until, UTC_FORMAT};
use crate::mysql::scratch::ScratchServer;
use crate::progress::Progress;
use crate::reader::{Item, StreamReader};

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
}

/// The full backup at the head of the chain.
struct Full {
    positions: Positions,
    started: String,
}

/// A binary log received from an incremental.
struct ReceivedLog {
    name: String,
    path: Option<PathBuf>,
    checked: Checked,
}

/// Where the content of the entry being read goes.
enum Sink {
    /// Into a tool's stdin: `mbstream -x` (a physical backup, extracted into
    /// the private staging directory).
    Pipe(Running, ChildStdin),
    /// A logical dump, spooled to a private file: loaded into the server only
    /// once the entry's digest matched.
    Spool(PathBuf, BufWriter<File>),
    /// A binary log: checked, and kept in a file unless dry-running.
    Binlog { name: String, file: Option<(PathBuf, BufWriter<File>)>, check: BackgroundCheck },
    /// Only verified (dry run).
    Discard,
}

/// The entry being read.
struct Open {
    sink: Sink,
    hasher: blake3::Hasher,
    size: u64,
}

/// The state of a restore as the input is read.
struct Restore<'a> {
    client: &'a Client,
    options: &'a Options,
    /// Declared before `work`, so a tool writing into it stops before it is removed.
    open: Option<Open>,
    work: tempfile::TempDir,
    full: Option<Full>,
    /// Descriptions of the backups read, for the plan.
    backups: Vec<String>,
    /// The binary log file the next incremental must start with.
    next_file: Option<String>,
    logs: Vec<ReceivedLog>,
    begin: Option<Begin>,
    totals: (u64, u64),
}

/// Restores the chain read from `input`; with `options.dry_run`, writes the plan to `plan` instead.
pub fn restore(client: &Client, input: impl Read, options: &Options, plan: &mut dyn Write) -> Result<()> {
    // Beside the data directory, so the restored copy moves in by renaming.
    let work_parent = match options.datadir.as_deref().and_then(Path::parent) {
        Some(parent) if !options.dry_run && !parent.as_os_str().is_empty() => {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("cannot create '{}'", parent.display()), e))?;
            Some(parent)
        }
        _ => None,
    };
    // Private: it holds the backup's data (the spooled dump, binary logs, the staged copy).
    let private = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700);
    let builder = tempfile::Builder::new().prefix(".backpipe-restore-").permissions(private).clone();
    let work = match work_parent {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .map_err(|e| Error::io("cannot create a working directory", e))?;
    let mut state = Restore {
        client,
        options,
        open: None,
        work,
        full: None,
        backups: Vec::new(),
        next_file: None,
        logs: Vec::new(),
        begin: None,
        totals: (0, 0),
    };
    state.read(input)?;
    state.finish(plan)
}

impl Restore<'_> {
    fn read(&mut self, input: impl Read) -> Result<()> {
        let progress = Progress::for_stage(TOOL);
        let mut reader = StreamReader::new(std::io::BufReader::with_capacity(crate::filter::IO_BUFFER, input));
        while let Some(item) = reader.next_item()? {
            let Item::Frame(frame) = item else { continue };
            match frame.kind {
                Kind::Abort => {
                    return Err(Error::incomplete(format!(
                        "the stream was aborted upstream: {}; the restore is incomplete",
                        describe_abort(&frame)
                    )))
                }
                Kind::Cipher => {
                    return Err(Error::other(format!("the stream is encrypted; run `encrypt -d` before {TOOL}")))
                }
                Kind::ChunkRef => return Err(Error::other(crate::format::UNRESOLVED_REF)),
                Kind::Unknown(_) => continue,
                _ => require_plain(&frame, TOOL)?,
            }
            match frame.kind {
                Kind::Begin => self.begin(frame.parse_json()?)?,
                Kind::Entry => self.entry(frame.parse_json()?)?,
                Kind::Data => {
                    progress.add(frame.payload.len() as u64);
                    self.data(frame.payload)?;
                }
                Kind::EntryEnd => self.entry_end(frame.parse_json()?)?,
                Kind::End => self.end(frame.parse_json()?)?,
                _ => {}
            }
        }
        progress.finish();
        if self.full.is_none() {
            return Err(Error::incomplete("the input holds no full MySQL backup"));
        }
        Ok(())
    }

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
        self.totals = (0, 0);
        Ok(())
    }

    fn begin_full(&mut self, begin: &Begin, positions: Positions) -> Result<()> {
        if let Until::Time(until) = self.options.until {
            if parse_time(&begin.started).is_some_and(|started| started > until) {
                return Err(Error::usage(format!(
                    "the full backup started at {}, after --until {}; fetch an older chain",
                    begin.started,
                    until.format(UTC_FORMAT)
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
                prepare_target(self.client, self.options.replace)?;
            }
        }
        self.full = Some(Full { positions, started: begin.started.clone() });
        Ok(())
    }

    fn entry(&mut self, entry: Entry) -> Result<()> {
        let name = entry.path.display();
        let dry = self.options.dry_run;
        let sink = match entry.role.as_str() {
            LOGICAL_ROLE if !dry => {
                let path = self.work.path().join("dump.sql");
                let file = private_file(&path)?;
                Sink::Spool(path, BufWriter::with_capacity(crate::filter::IO_BUFFER, file))
            }
            PHYSICAL_ROLE if !dry => {
                let target = self.work.path().join("full");
                std::fs::create_dir(&target).map_err(|e| Error::io("cannot create the extraction directory", e))?;
                let mut command = Command::new("mbstream");
                command.arg("-x").arg("-C").arg(&target).stdin(Stdio::piped()).stdout(Stdio::null());
                let mut extract = Running::spawn("mbstream", command)?;
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
                let file = if dry {
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
        self.open = Some(Open { sink, hasher: blake3::Hasher::new(), size: 0 });
        Ok(())
    }

    /// Passes on one Data frame's payload (a binary log's goes to its check whole, without a copy).
    fn data(&mut self, bytes: Vec<u8>) -> Result<()> {
        let open = self.open.as_mut().ok_or_else(|| Error::integrity("a Data frame outside an entry"))?;
        open.hasher.update(&bytes);
        open.size += bytes.len() as u64;
        match &mut open.sink {
            Sink::Pipe(_, stdin) => {
                if let Err(e) = stdin.write_all(&bytes) {
                    // The tool stopped reading: its own error says why.
                    let sink = self.open.take().expect("open").sink;
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
                    let sink = self.open.take().expect("open").sink;
                    return Err(finish_sink(sink).err().unwrap_or_else(|| Error::integrity("binary log check failed")));
                }
            }
            Sink::Discard => {}
        }
        Ok(())
    }

    fn entry_end(&mut self, end: EntryEnd) -> Result<()> {
        let open = self.open.take().ok_or_else(|| Error::integrity("an EntryEnd frame outside an entry"))?;
        let digest = open.hasher.finalize().to_hex().to_string();
        if open.size != end.size || digest != end.blake3 {
            return Err(Error::integrity(format!(
                "an entry's content does not match its digest ({} bytes read, {} expected)",
                open.size, end.size
            )));
        }
        if let Sink::Spool(path, out) = open.sink {
            load_dump(self.client, &path, out)?;
        } else if let Some(log) = finish_sink(open.sink)? {
            self.logs.push(log);
        }
        self.totals.0 += 1;
        self.totals.1 += end.size;
        Ok(())
    }

    fn end(&mut self, end: End) -> Result<()> {
        if self.totals != (end.entries, end.bytes) {
            return Err(Error::integrity(format!(
                "the stream holds {} entries and {} bytes but its End frame says {} and {}",
                self.totals.0, self.totals.1, end.entries, end.bytes
            )));
        }
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
                if parse_time(consistent).is_some_and(|at| at > *until) {
                    return Err(Error::usage(format!(
                        "the physical full backup is consistent only from {consistent}, when its copy ended, after \
                         --until {}; fetch an older chain",
                        until.format(UTC_FORMAT)
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

    /// Plans the replay; then prints the plan (dry run) or carries it out.
    fn finish(self, out: &mut dyn Write) -> Result<()> {
        let full = self.full.as_ref().expect("read checked");
        let plan = plan_replay(&full.positions, &self.logs, &self.options.until)?;
        let mut lines = self.backups.clone();
        lines.push(plan.describe(&full.positions));
        if let Some(note) = &plan.note {
            lines.push(format!("note         {note}"));
        }
        lines.push(match &self.options.datadir {
            Some(dir) if full.positions.method == PHYSICAL => format!("target       data directory {}", dir.display()),
            _ => format!("target       {}", self.client.target()),
        });
        if self.options.dry_run {
            for line in &lines {
                writeln!(out, "{line}").map_err(|e| Error::io("cannot write the plan", e))?;
            }
            return Ok(());
        }
        let files: Vec<PathBuf> = plan.logs.iter().map(|log| log.path.clone().expect("kept when not dry")).collect();
        let start = full.positions.binlog_pos.unwrap_or(4);
        if full.positions.method == PHYSICAL {
            // Everything happens in a staging directory beside the data
            // directory, which changes only once it all succeeded.
            let datadir = self.options.datadir.as_deref().expect("checked at Begin");
            let defaults = self.options.server_defaults.as_deref();
            let staged = self.work.path().join("data");
            prepare_physical(&self.work.path().join("full"), &staged, defaults)?;
            if !files.is_empty() {
                let server = ScratchServer::start(&staged, defaults)?;
                replay(&server.client(), "FLUSH PRIVILEGES;\n", &files, start, &plan.until)?;
                server.stop()?;
            }
            swap_in(&staged, datadir, self.options.replace)?;
        } else if !files.is_empty() {
            replay(self.client, "", &files, start, &plan.until)?;
        }
        for line in &lines {
            crate::cli::say(&format!("{TOOL}: {line}"));
        }
        Ok(())
    }
}

/// Creates (or empties) a file in the private working directory that only
/// its owner may read or write, for backup data (a spooled dump, a binary log).
fn private_file(path: &Path) -> Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    options.open(path).map_err(|e| Error::io(format!("cannot create '{}'", path.display()), e))
}

/// Loads a verified logical dump, spooled at `path` through `out`, into the
/// server, then removes the file.
fn load_dump(client: &Client, path: &Path, out: BufWriter<File>) -> Result<()> {
    let failed = |e: std::io::Error| Error::io(format!("cannot write '{}'", path.display()), e);
    out.into_inner().map_err(|e| failed(e.into_error()))?;
    let dump = File::open(path).map_err(|e| Error::io(format!("cannot read '{}'", path.display()), e))?;
    client
        .spawn("mariadb", &["--binary-mode"], |c| {
            c.stdin(dump);
        })?
        .finish()?;
    std::fs::remove_file(path).map_err(|e| Error::io(format!("cannot remove '{}'", path.display()), e))
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
            Ok(Some(ReceivedLog { name, path, checked }))
        }
        Sink::Discard => Ok(None),
    }
}

/// The binary logs to replay and where to stop.
struct ReplayPlan<'a> {
    logs: Vec<&'a ReceivedLog>,
    until: Until,
    note: Option<String>,
}

impl ReplayPlan<'_> {
    fn describe(&self, full: &Positions) -> String {
        if self.logs.is_empty() {
            return "replay       nothing: the restore ends at the full backup's consistent point".to_string();
        }
        let names: Vec<String> = self
            .logs
            .iter()
            .enumerate()
            .map(|(i, log)| match (i, full.binlog_pos) {
                (0, Some(pos)) => format!("{} from {pos}", log.name),
                _ => log.name.clone(),
            })
            .collect();
        let first = self.logs.first().map(|l| l.checked.first_time).unwrap_or(0);
        let last = self.logs.last().map(|l| l.checked.last_time).unwrap_or(0);
        format!(
            "replay       {} (events {} to {}), stopping {}",
            names.join(", "),
            utc(first),
            utc(last),
            self.until.describe()
        )
    }
}

fn utc(seconds: u32) -> String {
    DateTime::<Utc>::from_timestamp(i64::from(seconds), 0).map(|t| t.format(UTC_FORMAT).to_string()).unwrap_or_default()
}

/// Chooses the received binary logs that carry the full's data forward to `until`.
fn plan_replay<'a>(full: &Positions, logs: &'a [ReceivedLog], until: &Until) -> Result<ReplayPlan<'a>> {
    let first_file = full.binlog_file.as_deref().expect("checked at End");
    let first = sequence_of(first_file)?;
    let mut chosen: Vec<&ReceivedLog> = Vec::new();
    for log in logs {
        let seq = sequence_of(&log.name)?;
        if seq < first {
            continue;
        }
        let expected = first + chosen.len() as u64;
        if seq != expected {
            return Err(Error::usage(format!(
                "binary log number {expected} of the chain is missing from the input (found {})",
                log.name
            )));
        }
        chosen.push(log);
    }
    if chosen.first().is_some_and(|log| log.name != first_file) {
        return Err(Error::usage(format!("the input does not hold {first_file}, where the full backup ends")));
    }
    let mut note = None;
    match until {
        Until::Latest => {}
        Until::Time(t) => {
            let stamp = t.timestamp();
            // Files created at or after the time hold only later events.
            let keep = chosen.iter().skip(1).take_while(|log| i64::from(log.checked.first_time) < stamp).count() + 1;
            chosen.truncate(keep);
            if chosen.last().is_none_or(|log| i64::from(log.checked.last_time) < stamp) {
                let end =
                    chosen.last().map(|log| utc(log.checked.last_time)).unwrap_or_else(|| "the full backup".into());
                note = Some(format!("the backups end at {end}, before the time asked for; the restore goes that far"));
            }
        }
        Until::Position { file, pos } => {
            let at = chosen.iter().position(|log| log.name == *file).ok_or_else(|| {
                Error::usage(format!("binary log {file} is not among those the chain holds after the full backup"))
            })?;
            if at == 0 && full.binlog_pos.is_some_and(|start| *pos < start) {
                return Err(Error::usage(format!("{file}:{pos} is before the full backup's consistent point")));
            }
            if *pos > chosen[at].checked.end {
                return Err(Error::usage(format!(
                    "{file}:{pos} is past the end of {file} ({} bytes)",
                    chosen[at].checked.end
                )));
            }
            chosen.truncate(at + 1);
        }
        Until::Gtid(gtids) => check_gtids_reached(gtids, full, &chosen)?,
    }
    Ok(ReplayPlan { logs: chosen, until: until.clone(), note })
}

/// True when the incremental with `positions` holds binary log `file`.
fn holds(positions: &Positions, file: &str) -> Result<bool> {
    let (Some(from), Some(to)) = (&positions.from_file, &positions.binlog_file) else { return Ok(false) };
    let wanted = sequence_of(file)?;
    Ok(sequence_of(from)? <= wanted && wanted <= sequence_of(to)?)
}

/// Fails unless every GTID in the list `gtids` (domain-server-sequence, comma
/// separated) is at or after the full backup and inside the binary logs to replay.
fn check_gtids_reached(gtids: &str, full: &Positions, logs: &[&ReceivedLog]) -> Result<()> {
    let at_full = parse_gtids(full.gtid.as_deref().unwrap_or(""))?;
    for (domain, sequence) in parse_gtids(gtids)? {
        let start = at_full.iter().find(|(d, _)| *d == domain).map(|(_, s)| *s).unwrap_or(0);
        if sequence < start {
            return Err(Error::usage(format!(
                "GTID {domain}-…-{sequence} is before the full backup (which is at {domain}-…-{start})"
            )));
        }
        let reached = sequence == start
            || logs
                .iter()
                .any(|log| log.checked.gtids.get(&domain).is_some_and(|(lo, hi)| *lo <= sequence && sequence <= *hi));
        if !reached {
            let last = logs.iter().filter_map(|log| log.checked.gtids.get(&domain)).map(|(_, hi)| *hi).max();
            return Err(Error::usage(format!(
                "GTID {domain}-…-{sequence} is not in the binary logs the chain holds (domain {domain} reaches {})",
                last.map(|hi| hi.to_string()).unwrap_or_else(|| "nothing".into())
            )));
        }
    }
    Ok(())
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

/// The databases that make a server "not empty": all but the system schemas.
/// The system schemas: never dropped, whatever a listing says.
const SYSTEM_SCHEMAS: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

/// The target's own databases, names in hex: a name holding a tab or a
/// newline cannot be misread as two (or as `mysql`).
const USER_DATABASES: &str = "SELECT HEX(schema_name) FROM information_schema.schemata \
     WHERE schema_name NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1";

/// The role mariadb-dump's account statements create and drop around
/// themselves; one left by an interrupted load would make the next fail.
const DUMP_IMPORT_ROLE: &str = "mariadb_dump_import_role";

/// Refuses a target server that holds databases, or drops them with `replace`.
fn prepare_target(client: &Client, replace: bool) -> Result<()> {
    let databases = client
        .query(USER_DATABASES)?
        .into_iter()
        .map(|row| {
            let name = row.first().and_then(|h| hex::decode(h).ok()).and_then(|b| String::from_utf8(b).ok());
            name.ok_or_else(|| Error::engine(format!("unexpected answer listing databases: {}", row.join(" "))))
        })
        .collect::<Result<Vec<String>>>()?;
    if let Some(system) = databases.iter().find(|db| SYSTEM_SCHEMAS.contains(&db.as_str())) {
        return Err(Error::engine(format!("the target listed the system schema '{system}' as a user database")));
    }
    if databases.is_empty() {
        client.query(&format!("DROP ROLE IF EXISTS {DUMP_IMPORT_ROLE}"))?;
        return Ok(());
    }
    if !replace {
        return Err(Error::engine(format!(
            "{} already holds databases ({}); restore into an empty server, or pass --replace to drop them first",
            client.target(),
            databases.iter().map(|db| db.escape_debug().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    for db in &databases {
        crate::cli::say(&format!("{TOOL}: dropping database {} (--replace)", db.escape_debug()));
        client.query(&format!("DROP DATABASE `{}`", db.replace('`', "``")))?;
    }
    client.query(&format!("DROP ROLE IF EXISTS {DUMP_IMPORT_ROLE}"))?;
    Ok(())
}

/// Refuses a data directory that holds files, unless `replace`.
fn check_datadir(datadir: &Path, replace: bool) -> Result<()> {
    if is_empty_dir(datadir)? {
        Ok(())
    } else if replace {
        refuse_running_server(datadir)
    } else {
        Err(Error::engine(format!(
            "data directory '{}' is not empty; restore into an empty or new directory, or pass --replace \
             to move it aside",
            datadir.display()
        )))
    }
}

/// Fails when a running server may hold `datadir`: one holds InnoDB's lock on
/// its system tablespace, or the lock cannot be tested.
fn refuse_running_server(datadir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = datadir.join("ibdata1");
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot tell whether a server runs on '{}'", datadir.display()), e)),
    };
    // SAFETY: flock is a plain C struct; all-zero is a valid value to fill in.
    let mut probe: nix::libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = nix::libc::F_WRLCK as i16;
    probe.l_whence = nix::libc::SEEK_SET as i16;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETLK(&mut probe))
        .map_err(|e| Error::io(format!("cannot test the lock on '{}'", path.display()), e.into()))?;
    if probe.l_type == nix::libc::F_UNLCK as i16 {
        Ok(())
    } else {
        Err(Error::engine(format!(
            "a server is running on '{}' (it holds the lock on ibdata1); stop it before restoring into it",
            datadir.display()
        )))
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(format!("cannot read '{}'", dir.display()), e)),
    }
}

/// Prepares an extracted physical backup and moves it into `staged`, a new
/// directory.
fn prepare_physical(extracted: &Path, staged: &Path, defaults: Option<&Path>) -> Result<()> {
    let target = format!("--target-dir={}", extracted.display());
    // mariadb-backup with the server's option file, if given, for its InnoDB settings.
    let backup_tool = |step: &str, more: &[String]| -> Result<()> {
        let mut command = Command::new("mariadb-backup");
        if let Some(file) = defaults {
            command.arg(format!("--defaults-file={}", file.display()));
        }
        command.args([step, &target]).args(more).stdout(Stdio::null());
        Running::spawn("mariadb-backup", command)?.finish().map(drop)
    };
    backup_tool("--prepare", &[])?;
    std::fs::create_dir(staged).map_err(|e| Error::io(format!("cannot create '{}'", staged.display()), e))?;
    backup_tool("--move-back", &[format!("--datadir={}", staged.display())])
}

/// Puts the restored `staged` directory in place of `datadir`: an empty or
/// absent one is replaced, a non-empty one renamed aside first (only with
/// `replace`, and never while a server holds it).
fn swap_in(staged: &Path, datadir: &Path, replace: bool) -> Result<()> {
    if is_empty_dir(datadir)? {
        if datadir.exists() {
            std::fs::remove_dir(datadir)
                .map_err(|e| Error::io(format!("cannot replace '{}'", datadir.display()), e))?;
        }
    } else {
        if !replace {
            return Err(Error::engine(format!("data directory '{}' is no longer empty", datadir.display())));
        }
        refuse_running_server(datadir)?;
        let aside = PathBuf::from(format!("{}.replaced-{}", datadir.display(), Utc::now().format("%Y%m%dT%H%M%S")));
        std::fs::rename(datadir, &aside)
            .map_err(|e| Error::io(format!("cannot move '{}' aside", datadir.display()), e))?;
        crate::cli::say(&format!("{TOOL}: moved the old data directory to '{}' (--replace)", aside.display()));
    }
    std::fs::rename(staged, datadir)
        .map_err(|e| Error::io(format!("cannot move the restored data into '{}'", datadir.display()), e))
}
