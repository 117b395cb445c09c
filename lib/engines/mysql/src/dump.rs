//! Full backups: a logical dump through `mariadb-dump`, consistent while
//! writes go on, or a hot physical copy through `mariadb-backup`. Either
//! becomes one stream entry (a logical one two, when non-transactional
//! tables are read apart: see [`crate::locked`]); the binary log coordinates of the backup's
//! consistent point go into the positions, where incrementals and restores
//! find them.

use std::io::{Read, Write};
use std::process::Stdio;

use crate::client::Client;
use crate::emit::{produce, send_content, write_entry, SourceWriter};
use crate::error::{Error, Result};
use crate::format::{Frame, Kind};
use crate::locked::{self, ReadLock, TableDump};
use crate::meta::{Begin, End};
use crate::positions::{Positions, LOGICAL, PHYSICAL};
use crate::progress::Progress;
use crate::server::{sql_string, user_databases, ServerInfo};
use crate::tail::{TailReader, COMPLETED};

/// The tool name in messages and Abort frames.
pub const TOOL: &str = "dump-mysql";
/// The engine name in Begin frames.
pub const ENGINE: &str = "mysql";
/// The entry holding a logical dump (SQL text).
pub const LOGICAL_ENTRY: &str = "dump.sql";
/// The entry holding the non-transactional tables of a logical dump, read
/// under a global read lock; it comes (and loads) before [`LOGICAL_ENTRY`].
pub const LOCKED_ENTRY: &str = "nontransactional.sql";
/// The entry holding a physical backup (mariadb-backup's xbstream).
pub const PHYSICAL_ENTRY: &str = "backup.xbstream";
/// The role of the logical dump's entry.
pub const LOGICAL_ROLE: &str = "logical-dump";
/// The role of the physical backup's entry.
pub const PHYSICAL_ROLE: &str = "physical-backup";
/// The role of each binary log file's entry (named `binlog/<file>`).
pub const BINLOG_ROLE: &str = "binlog";

/// mariadb-dump's options: one transaction for a consistent snapshot, the
/// binary log coordinates of that snapshot as a comment, every database but
/// the grant tables (users and grants come as portable CREATE USER and GRANT
/// statements instead, which skip accounts the target already has), with
/// routines, events and triggers.
const DUMP_OPTIONS: &[&str] = &[
    "--single-transaction",
    "--master-data=2",
    "--all-databases",
    "--ignore-database=mysql",
    "--system=users",
    "--insert-ignore",
    "--routines",
    "--events",
    "--triggers",
    "--hex-blob",
    "--quick",
];

/// The comment that carries the snapshot's coordinates in the dump's head.
const COORDINATES: &str = "-- CHANGE MASTER TO MASTER_LOG_FILE='";
/// How far into the dump the coordinates must appear.
const MAX_HEAD: usize = 1 << 20;

/// Writes a logical full backup of every database as a stream. Tables of
/// non-transactional engines, which the dump's transaction cannot read as of
/// its start, are read first while a global read lock holds writes (from
/// before the transaction starts until they are read), into an entry of
/// their own that loads before the main dump.
pub fn full_logical(client: &Client, output: impl Write) -> Result<()> {
    produce(TOOL, output, |writer| {
        let server = ServerInfo::query(client)?;
        server.require_binlog()?;
        let (lock, tables) = match locked::non_transactional_tables(client)?.is_empty() {
            true => (None, Vec::new()),
            // Listed again under the lock, which holds table changes too.
            false => (Some(ReadLock::acquire(client)?), locked::non_transactional_tables(client)?),
        };
        let databases = Some(user_databases(client)?);
        let ignore = locked::ignore_options(&tables)?;
        let options: Vec<&str> = DUMP_OPTIONS.iter().copied().chain(ignore.iter().map(String::as_str)).collect();
        let mut dump = client.spawn("mariadb-dump", &options, |c| {
            c.stdout(Stdio::piped());
        })?;
        let mut stdout = dump.child.stdout.take().expect("stdout is piped");
        let Some(head) = read_head(&mut stdout)? else {
            // A dump that ends before its coordinates failed; its own message says why.
            drop(stdout);
            dump.finish()?;
            return Err(Error::engine("mariadb-dump ended before writing the binary log coordinates"));
        };
        let (file, pos) = coordinates(&head)?;
        let gtid = client.value(&format!("SELECT IFNULL(BINLOG_GTID_POS({}, {pos}), '')", sql_string(&file)?))?;
        let gtid = Some(gtid).filter(|g| !g.is_empty());
        let positions =
            Positions { binlog_file: Some(file), binlog_pos: Some(pos), gtid, databases, ..server.positions(LOGICAL) };
        begin_full(writer, &server, &positions)?;
        let progress = Progress::for_stage(TOOL);
        let mut totals = End::default();
        if let Some(lock) = lock {
            if !tables.is_empty() {
                write_entry(writer, LOCKED_ENTRY, LOGICAL_ROLE)?;
                let mut tables = TableDump::new(client, &tables);
                totals.bytes += send_content(writer, &mut tables, &progress, "the non-transactional tables")?.size;
                totals.entries += 1;
            }
            lock.release()?;
        }
        write_entry(writer, LOGICAL_ENTRY, LOGICAL_ROLE)?;
        let mut tail = TailReader::new((&head[..]).chain(stdout));
        totals.bytes += send_content(writer, &mut tail, &progress, "mariadb-dump's output")?.size;
        totals.entries += 1;
        dump.finish()?;
        if !tail.last.windows(COMPLETED.len()).any(|w| w == COMPLETED) {
            return Err(Error::engine("mariadb-dump exited without error but its dump does not end as complete"));
        }
        progress.finish();
        writer.write(&Frame::json(Kind::End, &totals))
    })
}

/// Writes a hot physical full backup (mariadb-backup's xbstream) as a stream.
/// The coordinates of its consistent point are known only when the copy
/// ends, so they go into the End frame.
pub fn full_physical(client: &Client, output: impl Write) -> Result<()> {
    produce(TOOL, output, |writer| {
        let server = ServerInfo::query(client)?;
        server.require_binlog()?;
        begin_full(writer, &server, &server.positions(PHYSICAL))?;
        let scratch = tempfile::tempdir().map_err(|e| Error::io("cannot create a temporary directory", e))?;
        let target = format!("--target-dir={}", scratch.path().display());
        let mut backup = client.spawn("mariadb-backup", &["--backup", "--stream=xbstream", &target], |c| {
            c.stdout(Stdio::piped());
        })?;
        let mut stdout = backup.child.stdout.take().expect("stdout is piped");
        let progress = Progress::for_stage(TOOL);
        write_entry(writer, PHYSICAL_ENTRY, PHYSICAL_ROLE)?;
        let end = send_content(writer, &mut stdout, &progress, "mariadb-backup's output")?;
        drop(stdout);
        let lines = backup.finish()?;
        let consistent = lines
            .iter()
            .rev()
            .find_map(|line| backup_coordinates(line))
            .ok_or_else(|| Error::engine("mariadb-backup did not report the binary log position of its backup"))?;
        progress.finish();
        let (file, pos, gtid) = consistent;
        let positions = Positions {
            binlog_file: Some(file),
            binlog_pos: Some(pos),
            gtid: Some(gtid).filter(|g| !g.is_empty()),
            consistent_at: Some(crate::meta::now_rfc3339()),
            ..Default::default()
        };
        let mut end_positions = positions.to_map();
        // Only what the end adds: the rest is in Begin.
        end_positions.retain(|key, _| matches!(key.as_str(), "binlog_file" | "binlog_pos" | "gtid" | "consistent_at"));
        writer.write(&Frame::json(
            Kind::End,
            &End { entries: 1, bytes: end.size, positions: end_positions, ..End::default() },
        ))
    })
}

fn begin_full<W: Write>(writer: &mut SourceWriter<W>, server: &ServerInfo, positions: &Positions) -> Result<()> {
    let begin =
        Begin { positions: positions.to_map(), source: Some(server.source()), ..Begin::now(TOOL, ENGINE, "full") };
    writer.write(&Frame::json(Kind::Begin, &begin))
}

/// Reads the dump's head up to and including the line with its coordinates;
/// `None` if the dump ends first.
fn read_head(input: &mut impl Read) -> Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(64 << 10);
    let mut block = [0u8; 64 << 10];
    loop {
        if let Some(at) = find(&head, COORDINATES.as_bytes()) {
            if head[at..].contains(&b'\n') {
                return Ok(Some(head));
            }
        }
        if head.len() > MAX_HEAD {
            return Err(Error::engine("mariadb-dump's output does not start with the binary log coordinates"));
        }
        let got = input.read(&mut block).map_err(|e| Error::io("cannot read mariadb-dump's output", e))?;
        if got == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&block[..got]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The file and position in `-- CHANGE MASTER TO MASTER_LOG_FILE='f', MASTER_LOG_POS=n;`.
fn coordinates(head: &[u8]) -> Result<(String, u64)> {
    let at = find(head, COORDINATES.as_bytes()).expect("read_head found it");
    let line = &head[at..];
    let line = String::from_utf8_lossy(&line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())]);
    let rest = &line[COORDINATES.len()..];
    let parsed = rest.split_once("', MASTER_LOG_POS=").and_then(|(file, pos)| {
        let pos = pos.trim_end_matches(';').parse().ok()?;
        Some((file.to_string(), pos))
    });
    parsed.ok_or_else(|| Error::engine(format!("cannot read the binary log coordinates in `{line}`")))
}

/// The coordinates in mariadb-backup's "MySQL binlog position: filename 'f',
/// position 'n', GTID of the last change 'g'" line.
fn backup_coordinates(line: &str) -> Option<(String, u64, String)> {
    let rest = &line[line.find("binlog position: filename '")? + "binlog position: filename '".len()..];
    let (file, rest) = rest.split_once("', position '")?;
    let (pos, rest) = rest.split_once('\'')?;
    let gtid = rest.split_once("GTID of the last change '").and_then(|(_, g)| g.split_once('\'')).map(|(g, _)| g);
    Some((file.to_string(), pos.parse().ok()?, gtid.unwrap_or_default().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_coordinates() {
        let head = b"-- x\n-- CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000012', MASTER_LOG_POS=1444;\n--\n";
        assert_eq!(coordinates(head).unwrap(), ("mysql-bin.000012".to_string(), 1444));
        let line = "[00] 2026-11-22 07:14:43 MySQL binlog position: filename 'mysql-bin.000002', position '385', \
                    GTID of the last change '0-1-6'";
        assert_eq!(backup_coordinates(line), Some(("mysql-bin.000002".into(), 385, "0-1-6".into())));
        assert_eq!(backup_coordinates("[00] completed OK!"), None);
    }
}
