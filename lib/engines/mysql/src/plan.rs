//! Planning a replay: which binary logs received from a chain carry its
//! full backup forward to the stopping point, proven to reach it from what
//! the chain holds (positions, GTID ranges, event times) before anything
//! changes on the target.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::binlog::Checked;
use crate::error::{Error, Result};
use crate::positions::{parse_gtids, sequence_of, Positions};
use crate::replay::{Until, UTC_FORMAT};

/// A binary log received from an incremental.
pub struct ReceivedLog {
    /// Its file name.
    pub name: String,
    /// Where it is kept (not when dry-running).
    pub path: Option<PathBuf>,
    /// What checking it found.
    pub checked: Checked,
    /// Its size and BLAKE3, to tell a copy of it in a later incremental
    /// (overlapping runs copy a file twice) from another file of that name.
    pub size: u64,
    /// Its BLAKE3, in hex.
    pub digest: String,
}

/// Adds a binary log received from the chain to `logs`; a second copy of
/// one already received (overlapping incrementals both copied it) must be
/// the same file, and is dropped.
pub fn keep_log(logs: &mut Vec<ReceivedLog>, log: ReceivedLog) -> Result<()> {
    match logs.iter().find(|first| first.name == log.name) {
        None => logs.push(log),
        Some(first) if first.size == log.size && first.digest == log.digest => {}
        Some(first) => {
            return Err(Error::integrity(format!(
                "binary log {} appears twice in the chain with different content ({} and {} bytes): the backups \
                 come from two servers, or its history was reset",
                log.name, first.size, log.size
            )))
        }
    }
    Ok(())
}

/// The binary logs to replay and where to stop.
pub struct ReplayPlan<'a> {
    /// The files, in order.
    pub logs: Vec<&'a ReceivedLog>,
    /// Where the replay stops.
    pub until: Until,
}

impl ReplayPlan<'_> {
    /// The plan's `replay` line.
    pub fn describe(&self, full: &Positions) -> String {
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

/// Chooses the received binary logs that carry the full's data forward to
/// `until`, proving that they reach it; `full_time` is when the full's data
/// is consistent.
pub fn plan_replay<'a>(
    full: &Positions,
    full_time: Option<DateTime<Utc>>,
    logs: &'a [ReceivedLog],
    until: &Until,
) -> Result<ReplayPlan<'a>> {
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
    match until {
        Until::Latest => {}
        Until::Time(t) => {
            let stamp = t.timestamp();
            // The last file ends with the event that closed it: every event
            // stamped before that is in the chain (a full alone: before its consistent point).
            let reached = match chosen.last() {
                Some(log) => i64::from(log.checked.last_time),
                None => full_time.map_or(i64::MIN, |at| at.timestamp()),
            };
            if reached < stamp {
                let missing = match chosen.last() {
                    Some(log) => format!("binary logs after {}", log.name),
                    None => format!("binary logs from {first_file}"),
                };
                return Err(Error::incomplete(format!(
                    "the chain reaches {}, before --until {}: the {missing} are not in the input (an incremental is \
                     missing, or was not taken yet); restore to a time the chain reaches, or without --until to \
                     the latest state it holds",
                    DateTime::<Utc>::from_timestamp(reached, 0)
                        .map_or("nothing".into(), |at| at.format(UTC_FORMAT).to_string()),
                    t.format(UTC_FORMAT)
                )));
            }
            // Files created at or after the time hold only later events.
            let keep = chosen.iter().skip(1).take_while(|log| i64::from(log.checked.first_time) < stamp).count() + 1;
            chosen.truncate(keep);
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
    Ok(ReplayPlan { logs: chosen, until: until.clone() })
}

/// True when the incremental with `positions` holds binary log `file`.
pub fn holds(positions: &Positions, file: &str) -> Result<bool> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn log(name: &str, size: u64, digest: &str) -> ReceivedLog {
        let checked = Checked {
            server_version: "10.11.6-MariaDB-log".into(),
            checksums: true,
            events: 3,
            end: size,
            last_event: 4,
            in_use: false,
            first_time: 1,
            last_time: 2,
            gtids: Default::default(),
        };
        ReceivedLog { name: name.into(), path: None, checked, size, digest: digest.into() }
    }

    #[test]
    fn a_log_copied_twice_is_kept_once_and_another_of_its_name_refused() {
        let mut logs = Vec::new();
        keep_log(&mut logs, log("mysql-bin.000002", 900, "aa")).unwrap();
        keep_log(&mut logs, log("mysql-bin.000002", 900, "aa")).unwrap();
        keep_log(&mut logs, log("mysql-bin.000003", 400, "bb")).unwrap();
        assert_eq!(logs.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["mysql-bin.000002", "mysql-bin.000003"]);
        let err = keep_log(&mut logs, log("mysql-bin.000003", 400, "cc")).unwrap_err();
        assert!(err.message().contains("mysql-bin.000003 appears twice"), "{err}");
        assert_eq!(err.kind().exit_code(), 4);
        assert!(keep_log(&mut logs, log("mysql-bin.000002", 901, "aa")).is_err());
    }
}
