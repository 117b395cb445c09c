//! Incremental backups: the binary log files written since the previous
//! backup. The server closes its current file first, so an incremental always
//! holds whole, closed files; each is checked (magic, position chain, CRC-32
//! of every event) as it is sent, and a file missing from the sequence, or
//! damaged, fails the backup.

use std::io::{Read, Write};
use std::path::Path;

use crate::binlog::BackgroundCheck;
use crate::client::Client;
use crate::dump::{BINLOG_ROLE, ENGINE, TOOL};
use crate::emit::{produce, send_content, write_entry, SourceWriter};
use crate::error::{Error, Result};
use crate::format::{Frame, Kind};
use crate::meta::{Begin, End};
use crate::positions::{gtid_behind, sequence_of, Positions, BINLOG};
use crate::progress::Progress;
use crate::repo::receipt::{stored, Origin};
use crate::server::{binary_logs, BinaryLog, ServerInfo};
use crate::session::Session;

/// A stored backup of the server, as an incremental continues it: its
/// stream ID (which the incremental names as its parent) and its positions.
#[derive(Debug, Clone)]
pub struct Backup {
    /// The stream ID (hex).
    pub stream: String,
    /// The source it recorded (none in backups of older tools).
    pub source: Option<String>,
    /// Its merged positions.
    pub positions: Positions,
}

/// What an incremental continues from: the newest backup of the server's
/// binary log sequence, and the newest incremental.
#[derive(Debug, Clone)]
pub struct Previous {
    /// The newest backup.
    pub newest: Backup,
    /// The newest incremental, when there is one: after a full, the next
    /// incremental still starts where it ended, so no binary log between the
    /// two is left out of the archive.
    pub last_incremental: Option<Backup>,
}

impl Previous {
    /// The newest backup, and the newest incremental, of `server`'s sequence among `backups` (oldest first).
    fn choose(backups: impl IntoIterator<Item = Backup>, server: &ServerInfo) -> Option<Previous> {
        let mut found: Option<Previous> = None;
        for stored in backups.into_iter().filter(|b| server.same_sequence(&b.positions)) {
            let last_incremental = match (&found, stored.positions.is_incremental()) {
                (_, true) => Some(stored.clone()),
                (Some(previous), false) => previous.last_incremental.clone(),
                (None, false) => None,
            };
            found = Some(Previous { newest: stored, last_incremental });
        }
        found
    }
}

/// What to continue from, among the backups `origin` holds (a receipt file
/// or the repository), taken in the order they started: an incremental that
/// ran while a full was still being taken continues the archive past the
/// full's position, and the next one continues from it.
pub fn previous(origin: Origin<'_>, server: &ServerInfo) -> Result<Previous> {
    let whence = match &origin {
        Origin::Receipts(path) => format!("receipt '{}'", path.display()),
        Origin::Repository(_) => "the repository".to_string(),
    };
    let host = crate::meta::host_name();
    let mut other_hosts = std::collections::BTreeSet::new();
    let mut backups = Vec::new();
    for backup in stored(origin, ENGINE)? {
        let positions = Positions::from_maps(&backup.positions, &backup.end_positions)?;
        // Receipts of older tools record no host.
        if backup.host.is_empty() || backup.host == host {
            backups.push(Backup { positions, stream: backup.stream_id, source: backup.source });
        } else if server.same_sequence(&positions) {
            other_hosts.insert(backup.host);
        }
    }
    let found = Previous::choose(backups, server);
    if let (None, Some(other)) = (&found, other_hosts.last()) {
        // A renamed machine, or a container's new host name: never a silent new chain.
        return Err(Error::usage(format!(
            "{whence} holds backups of this server (binary logs {}, server_id {}) recorded under host '{other}', \
             and none under this host '{host}': if this is the same server under a new name, pass --host-name \
             '{other}' (or set BACKPIPE_HOST_NAME); if it is another server, take a full backup first",
            server.binlog_basename, server.server_id
        )));
    }
    found.ok_or_else(|| {
        Error::usage(format!(
            "{whence} holds no backup of this server (binary logs {}, server_id {}); take a full backup first",
            server.binlog_basename, server.server_id
        ))
    })
}

/// How an incremental is taken.
#[derive(Debug, Clone, Default)]
pub struct IncrementalOptions {
    /// Read the binary log files here instead of the server's directory.
    pub binlog_dir: Option<std::path::PathBuf>,
    /// After a full, start at the full's file even if the last incremental ended earlier.
    pub restart_at_full: bool,
}

/// Where an incremental starts.
struct Start<'a> {
    /// The first file it holds.
    file: &'a str,
    /// The newest full's file, when the incremental reaches back before it to
    /// where the last incremental ended.
    full_file: Option<&'a str>,
}

/// Where the incremental after `previous` starts: where the newest backup
/// ends; or, when that is a full and the last incremental ended earlier in
/// the same history with every file since still on the server, there, so the
/// archive has no gap.
fn plan_start<'a>(previous: &'a Previous, logs: &[BinaryLog], restart_at_full: bool) -> Result<Start<'a>> {
    let newest = previous
        .newest
        .positions
        .continues_from()
        .ok_or_else(|| Error::usage("the previous backup records no binary log position to continue from"))?;
    let at_newest = Start { file: newest, full_file: None };
    let Some(last) = previous
        .last_incremental
        .as_ref()
        .map(|l| &l.positions)
        .filter(|_| !previous.newest.positions.is_incremental())
    else {
        return Ok(at_newest);
    };
    let Some(earlier) = last.next_file.as_deref().filter(|e| *e != newest) else { return Ok(at_newest) };
    if restart_at_full || sequence_of(earlier)? > sequence_of(newest)? {
        return Ok(at_newest);
    }
    let same_history = match (&previous.newest.positions.gtid, &last.gtid) {
        (Some(full), Some(then)) => !gtid_behind(full, then)?,
        _ => false,
    };
    let on_server = (sequence_of(earlier)?..sequence_of(newest)?)
        .all(|seq| logs.iter().any(|log| sequence_of(&log.name).ok() == Some(seq)));
    if same_history && on_server {
        return Ok(Start { file: earlier, full_file: Some(newest) });
    }
    crate::notice::notice(&format!(
        "note: the binary logs from {earlier} to before {newest} (between the last incremental and the \
         last full) are no longer on the server or belong to an earlier history: no backup holds them, and this \
         incremental starts at the full"
    ));
    Ok(at_newest)
}

/// Fails if the server's binary logs were reset (RESET MASTER, a restore)
/// since the backups `start` continues: the server's GTID position is behind
/// theirs, a file they hold is there with another size, or the full's file
/// is shorter than the full's position.
fn check_not_reset(previous: &Previous, start: &Start, logs: &[BinaryLog], server_gtid: &str) -> Result<()> {
    let reset = |what: String| {
        Error::engine(format!(
            "{what}: the server's binary logs were reset since the previous backup; take a full backup (dump-mysql --full)"
        ))
    };
    if let Some(then) = &previous.newest.positions.gtid {
        if gtid_behind(server_gtid, then)? {
            return Err(reset(format!(
                "the server's GTID position {server_gtid} is behind the previous backup's {then}"
            )));
        }
    }
    let mut recorded: Vec<&(String, u64)> = previous.newest.positions.files.iter().collect();
    if start.full_file.is_some() {
        recorded.extend(previous.last_incremental.iter().flat_map(|p| p.positions.files.iter()));
    }
    for (name, size) in recorded {
        if let Some(log) = logs.iter().find(|log| log.name == *name && log.size != *size) {
            return Err(reset(format!("binary log {name} has {} bytes, not the {size} a backup holds", log.size)));
        }
    }
    if let (Some(file), Some(pos)) = (&previous.newest.positions.binlog_file, previous.newest.positions.binlog_pos) {
        if let Some(log) = logs.iter().find(|log| log.name == *file && log.size < pos) {
            return Err(reset(format!(
                "binary log {file} has {} bytes, fewer than the full's position {pos}",
                log.size
            )));
        }
    }
    Ok(())
}

/// The server-side lock an incremental holds while it runs, so two runs at
/// once (a slow hourly job and the next) never both continue one backup.
/// Named locks live in the server, so this holds across hosts and users,
/// and ends with the session if the agent dies. Held until the stream is
/// written whole; checked still held before its End frame.
struct RunLock {
    session: Session,
}

/// Seconds the lock's idle session may wait (MariaDB's longest), so a
/// server's short `wait_timeout` never ends it during a long copy.
const LOCK_SESSION_TIMEOUT: u32 = 31_536_000;

/// The name of [`RunLock`]'s lock.
const RUN_LOCK: &str = "backpipe.dump-mysql.incremental";

impl RunLock {
    /// Takes the lock without waiting; refuses when another run holds it.
    fn take(client: &Client) -> Result<RunLock> {
        let mut session = Session::open(client)?;
        let doing = "cannot take the incremental's lock on the server";
        let sql = format!(
            "SET SESSION wait_timeout = {LOCK_SESSION_TIMEOUT}; \
             SELECT GET_LOCK('{RUN_LOCK}', 0), IFNULL(IS_USED_LOCK('{RUN_LOCK}'), 0);"
        );
        match session.ask(&sql) {
            Ok(answer) if answer.starts_with("1\t") => Ok(RunLock { session }),
            Ok(answer) if answer.starts_with("0\t") => Err(Error::other(format!(
                "another dump-mysql --incremental is running against {} (server connection {}); this one changed \
                 nothing and stored nothing, and the next run takes what it would have: run incrementals one after \
                 another (the documented cron and systemd jobs do)",
                client.target(),
                answer.split('\t').nth(1).unwrap_or("?")
            ))),
            Ok(answer) | Err(answer) => Err(session.failed(doing, &answer, "1")),
        }
    }

    /// Fails unless the lock is still this session's (it ends with the
    /// session, which the server may have closed).
    fn check(&mut self) -> Result<()> {
        match self.session.ask(&format!("SELECT IS_USED_LOCK('{RUN_LOCK}') = CONNECTION_ID();")) {
            Ok(answer) if answer == "1" => Ok(()),
            _ => Err(Error::engine(
                "the incremental's lock on the server was lost while it ran (its session ended); nothing was \
                 stored: run the incremental again",
            )),
        }
    }
}

/// Writes an incremental backup as a stream, continuing what `find_previous`
/// returns for the server.
pub fn incremental(
    client: &Client,
    find_previous: impl FnOnce(&ServerInfo) -> Result<Previous>,
    options: &IncrementalOptions,
    output: impl Write,
) -> Result<()> {
    // Outside the body, so it is held until the stream is flushed whole.
    let mut held: Option<RunLock> = None;
    produce(TOOL, output, |writer| {
        let lock = held.insert(RunLock::take(client)?);
        let server = ServerInfo::query(client)?;
        server.require_binlog()?;
        let previous = find_previous(&server)?;
        // Checked before FLUSH, so a broken chain changes nothing on the server.
        let before = binary_logs(client)?;
        let start = plan_start(&previous, &before, options.restart_at_full)?;
        if !before.iter().any(|log| log.name == start.file) {
            return Err(purged(start.file, &before));
        }
        check_not_reset(&previous, &start, &before, &client.value("SELECT @@gtid_binlog_pos")?)?;
        let dir = options.binlog_dir.clone().unwrap_or_else(|| server.binlog_dir());
        // A directory this user cannot read would fail the copy after FLUSH changed the server.
        let first = dir.join(start.file);
        std::fs::File::open(&first).map_err(|e| {
            Error::io(
                format!(
                    "cannot read binary log '{}' (run dump-mysql as a user who can read the binary log directory, or name it with --binlog-dir)",
                    first.display()
                ),
                e,
            )
        })?;
        client.query("FLUSH BINARY LOGS")?;
        let gtid = client.value("SELECT @@gtid_binlog_pos")?;
        let logs = binary_logs(client)?;
        let files = files_to_copy(&logs, start.file)?;
        let next = &logs.last().expect("files_to_copy checked").name;
        let positions = Positions {
            from_file: Some(start.file.to_string()),
            binlog_file: Some(files.last().expect("at least one file").name.clone()),
            next_file: Some(next.clone()),
            gtid: Some(gtid).filter(|g| !g.is_empty()),
            files: files.iter().map(|f| (f.name.clone(), f.size)).collect(),
            ..server.positions(BINLOG)
        };
        let begin = Begin {
            positions: positions.to_map(),
            // The backup whose end this one continues: the last incremental
            // when it starts where that one ended (reaching back before the
            // newest full, or at the full's own file), else the newest backup.
            parent: Some(match &previous.last_incremental {
                Some(last) if start.full_file.is_some() || last.positions.next_file.as_deref() == Some(start.file) => {
                    last.stream.clone()
                }
                _ => previous.newest.stream.clone(),
            })
            .filter(|stream| !stream.is_empty()),
            // The history of the backup it continues: a chain begun by older
            // tools (no source recorded) goes on in theirs until the next full.
            source: previous.newest.source.clone(),
            expected_bytes: Some(files.iter().map(|f| f.size).sum()),
            ..Begin::now(TOOL, ENGINE, "incremental")
        };
        writer.write(&Frame::json(Kind::Begin, &begin))?;
        let progress = Progress::for_stage(TOOL);
        progress.set_total(begin.expected_bytes.unwrap_or(0));
        let mut totals = End { entries: 0, bytes: 0, ..End::default() };
        for file in files {
            let before_full = match start.full_file {
                Some(full_file) => sequence_of(&file.name)? < sequence_of(full_file)?,
                None => false,
            };
            totals.bytes += send_binlog(writer, &dir, file, &progress).map_err(|err| {
                if before_full && !err.is_broken_pipe() {
                    Error::new(
                        err.kind(),
                        format!(
                            "{} (the file is from before the last full: --restart-at-full starts at the full and \
                             leaves it out)",
                            err.message()
                        ),
                    )
                } else {
                    err
                }
            })?;
            totals.entries += 1;
        }
        progress.finish();
        lock.check()?;
        writer.write(&Frame::json(Kind::End, &totals))
    })
}

fn purged(file: &str, logs: &[BinaryLog]) -> Error {
    let oldest = logs.first().map(|l| l.name.as_str()).unwrap_or("none");
    Error::engine(format!(
        "binary log {file}, where the previous backup ends, is no longer on the server (oldest is {oldest}): \
         it was purged, so the chain cannot continue; take a full backup (dump-mysql --full)"
    ))
}

/// The closed files from `start` on (all but the current one), checked to
/// form an unbroken sequence.
fn files_to_copy<'a>(logs: &'a [BinaryLog], start: &str) -> Result<&'a [BinaryLog]> {
    let first = logs.iter().position(|log| log.name == start).ok_or_else(|| purged(start, logs))?;
    let files = &logs[first..logs.len() - 1];
    if files.is_empty() {
        return Err(Error::engine(format!("the server did not close binary log {start} on FLUSH BINARY LOGS")));
    }
    for pair in logs[first..].windows(2) {
        if sequence_of(&pair[1].name)? != sequence_of(&pair[0].name)? + 1 {
            return Err(Error::engine(format!(
                "binary logs between {} and {} are missing on the server; take a full backup (dump-mysql --full)",
                pair[0].name, pair[1].name
            )));
        }
    }
    Ok(files)
}

/// Sends one binary log file as an entry, checking it on the way.
fn send_binlog<W: Write>(
    writer: &mut SourceWriter<W>,
    dir: &Path,
    log: &BinaryLog,
    progress: &Progress,
) -> Result<u64> {
    let path = dir.join(&log.name);
    let missing = |e: std::io::Error| {
        let advice = if e.kind() == std::io::ErrorKind::PermissionDenied {
            " (run dump-mysql as a user who can read the server's binary logs, e.g. in its group)"
        } else {
            " (is --binlog-dir right?)"
        };
        let err = Error::io(format!("cannot read binary log '{}'", path.display()), e);
        Error::new(err.kind(), format!("{}{advice}", err.message()))
    };
    let file = std::fs::File::open(&path).map_err(missing)?;
    write_entry(writer, &format!("binlog/{}", log.name), BINLOG_ROLE)?;
    let mut tee = Tee { inner: file, check: BackgroundCheck::start(&log.name) };
    let sent = send_content(writer, &mut tee, progress, &format!("binary log {}", log.name));
    let checked = tee.check.finish();
    // A damaged file is the cause when sending stopped because of it (the
    // Tee's error); any other failure to send is the cause itself.
    let sent = match (sent, checked.as_ref()) {
        (Err(err), Err(_)) if !err.message().contains(CHECK_STOPPED) => return Err(err),
        (sent, _) => sent,
    };
    let checked = checked?;
    let sent = sent?;
    if !checked.is_closed() || checked.end != sent.size || sent.size != log.size {
        return Err(Error::engine(format!(
            "binary log {} changed while it was copied (the server still writes it)",
            log.name
        )));
    }
    Ok(sent.size)
}

/// What a [`Tee`] says when the check stopped reading.
const CHECK_STOPPED: &str = "the binary log check stopped";

/// Passes a reader through, handing a copy of everything read to a check.
struct Tee<R> {
    inner: R,
    check: BackgroundCheck,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let got = self.inner.read(buf)?;
        if got > 0 && !self.check.feed(buf[..got].to_vec()) {
            // The check stopped: it found damage, which it reports.
            return Err(std::io::Error::other(CHECK_STOPPED));
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(names: &[&str]) -> Vec<BinaryLog> {
        names.iter().map(|n| BinaryLog { name: n.to_string(), size: 100 }).collect()
    }

    #[test]
    fn picks_closed_files_and_refuses_gaps() {
        let all = logs(&["b.000003", "b.000004", "b.000005", "b.000006"]);
        let files = files_to_copy(&all, "b.000004").unwrap();
        assert_eq!(files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["b.000004", "b.000005"]);
        assert!(files_to_copy(&all, "b.000002").unwrap_err().message().contains("purged"));
        let gap = logs(&["b.000003", "b.000005", "b.000006"]);
        assert!(files_to_copy(&gap, "b.000003").unwrap_err().message().contains("missing"));
        assert!(files_to_copy(&all, "b.000006").is_err());
    }
}
