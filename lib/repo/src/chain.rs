//! Chains: which stored backups a restore needs. Engine-blind: a backup's
//! kind (full, differential, incremental, log) and its `parent` (the stream
//! it continues) are all this reads. The backups of one host, engine and
//! source form a history; a chain never leaves its history.
//!
//! To restore to an instant T a history needs its base, the newest full that
//! is consistent at or before T (see [`consistent_time`]: when it started,
//! or, for a hot copy that records it, when its copy ended); the newest
//! differential on that base (whose parent is the base) consistent by T,
//! if any; and the log
//! chain after them: from the first log or incremental backup that started
//! after T (it holds the logs written up to T), followed back by `parent`
//! to the first one that started after the base (or the differential). A
//! log chain may run on across later fulls (MySQL's binary log archive, SQL
//! Server's log chain): it is followed by its links, never by time, so two
//! chains of one history (a log chain restarted after a restore, say) are
//! told apart. The first log backup after the base may continue one from
//! before the base that is gone (forgotten once nothing needed it): that is
//! no broken link, since the base holds what it held. A link missing further
//! on is, and is named. (A log backup missing right after the base cannot be
//! told from that case here; restores check the continuity of the logs
//! themselves, as `restore-mysql` does of binary logs.) Where a backup
//! records no parent, or only the snapshot ID
//! older tools recorded, the chain goes on by time from there: every log or
//! incremental backup started after the base, up to that one.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::meta::BackupKind;
use crate::snapshot::Summary;
use crate::units::stored_time;

/// One backup of a history.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    /// The snapshot ID.
    pub id: &'a str,
    /// Its summary.
    pub summary: &'a Summary,
    /// When it started.
    pub started: DateTime<Utc>,
    /// When its data is consistent (see [`consistent_time`]).
    pub consistent: DateTime<Utc>,
}

/// The positions key under which an engine records, in a backup's End
/// frame, the instant its data is consistent at, where that is not when it
/// started (a hot physical copy is consistent only once its copy ends).
pub const CONSISTENT_AT: &str = "consistent_at";

/// When a backup's data is consistent: [`CONSISTENT_AT`] in its End frame's
/// positions where the engine recorded it, else when it started.
pub fn consistent_time(summary: &Summary) -> Option<DateTime<Utc>> {
    let recorded = summary.end_positions.get(CONSISTENT_AT).and_then(|v| v.as_str()).and_then(stored_time);
    recorded.or_else(|| stored_time(&summary.begin.started))
}

impl Member<'_> {
    fn kind(&self) -> BackupKind {
        self.summary.begin.backup_kind()
    }

    fn parent(&self) -> Option<&str> {
        self.summary.begin.parent.as_deref()
    }
}

/// A chain, oldest first, or where it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain<'a> {
    /// The snapshot IDs, base first.
    pub ids: Vec<&'a str>,
    /// The first broken link met: a backup whose parent the history does not
    /// hold (forgotten, or never stored), as (its ID, the parent's stream ID).
    pub broken: Option<(&'a str, String)>,
}

impl Chain<'_> {
    /// Fails naming the broken link, if there is one.
    pub fn whole(self) -> Result<Self> {
        match &self.broken {
            None => Ok(self),
            Some((id, parent)) => Err(Error::integrity(format!(
                "snapshot {id} continues stream {parent}, which the repository does not hold (forgotten, or never \
                 stored): the chain through it is broken; restore from a later full, or take one"
            ))),
        }
    }
}

/// The backups of one history (host, engine and source) in the order they
/// started, with their streams indexed.
#[derive(Debug)]
pub struct History<'a> {
    members: Vec<Member<'a>>,
    /// Each member's position by its stream ID (lowercase).
    streams: HashMap<String, usize>,
    /// Each member's position by its snapshot ID.
    ids: HashMap<&'a str, usize>,
}

impl<'a> History<'a> {
    /// The history of `members`, all of one host, engine and source. They
    /// are ordered by start time, then storage time; times are whole
    /// seconds, so of two started in the same second, one the other
    /// continues comes first (forged links that loop change nothing).
    pub fn new(mut members: Vec<Member<'a>>) -> History<'a> {
        members.sort_by_cached_key(|m| (m.started, stored_time(&m.summary.stored)));
        let mut moves = members.len();
        let mut child = 0;
        while child < members.len() && moves > 0 {
            // Only the later members started in the same second can be moved
            // before it: a short scan, not the whole history.
            let started = members[child].started;
            let mut same_second = members[child + 1..].iter().take_while(|m| m.started == started);
            let found = members[child].parent().and_then(|parent| {
                same_second.position(|m| m.summary.stream_id.eq_ignore_ascii_case(parent)).map(|at| child + 1 + at)
            });
            match found {
                Some(at) => {
                    let member = members.remove(at);
                    members.insert(child, member);
                    moves -= 1;
                }
                None => child += 1,
            }
        }
        let streams = members.iter().enumerate().map(|(i, m)| (m.summary.stream_id.to_ascii_lowercase(), i)).collect();
        let ids = members.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
        History { members, streams, ids }
    }

    /// The members, in order.
    pub fn members(&self) -> &[Member<'a>] {
        &self.members
    }

    /// The chain that restores to the instant `until`.
    pub fn to_instant(&self, until: DateTime<Utc>) -> Result<Chain<'a>> {
        let history = &self.members;
        let covered = history.iter().take_while(|m| m.started <= until).count();
        let reach = history[covered..].iter().position(|m| m.kind().is_log()).map(|at| covered + at);
        self.assemble(covered, reach, |m| m.consistent <= until).map_err(|NoBase| {
            Error::other(format!("no full backup consistent at or before {until} (see `repo snapshots`)"))
        })
    }

    /// The chain that restores what the backup with snapshot ID `id` holds:
    /// itself, with its base and the links between.
    pub fn to_backup(&self, id: &str) -> Result<Chain<'a>> {
        let at = *self.ids.get(id).ok_or_else(|| Error::usage(format!("snapshot {id} is not in this history")))?;
        let member = &self.members[at];
        match member.kind() {
            kind if kind.is_log() => {
                self.assemble(at, Some(at), |base| base.consistent <= member.started).map_err(|NoBase| {
                    Error::other(format!("no full backup before snapshot {} (see `repo snapshots`)", member.id))
                })
            }
            BackupKind::Differential => {
                let full = member.parent().and_then(|parent| self.find(parent));
                Ok(match (full, member.parent()) {
                    (Some(full), _) => Chain { ids: vec![self.members[full].id, member.id], broken: None },
                    (None, parent) => Chain {
                        ids: vec![member.id],
                        broken: Some((member.id, parent.unwrap_or("(none recorded)").to_string())),
                    },
                })
            }
            _ => Ok(Chain { ids: vec![member.id], broken: None }),
        }
    }

    /// The position of the member whose stream is `stream`.
    fn find(&self, stream: &str) -> Option<usize> {
        self.streams.get(&stream.to_ascii_lowercase()).copied()
    }

    /// The newest base among the first `bases` members that `usable`
    /// accepts, the differential on it among them that it accepts too, and
    /// the log chain after them up to the member at `reach` (the log backup
    /// that holds the logs asked for, or, when there is none, the newest log
    /// backup after the base).
    fn assemble(
        &self,
        bases: usize,
        reach: Option<usize>,
        usable: impl Fn(&Member) -> bool,
    ) -> std::result::Result<Chain<'a>, NoBase> {
        let history = &self.members;
        let base = (0..bases).rev().find(|&i| history[i].kind().is_base() && usable(&history[i])).ok_or(NoBase)?;
        let differential = (base + 1..bases).rev().find(|&i| {
            history[i].kind() == BackupKind::Differential
                && usable(&history[i])
                && history[i].parent().is_some_and(|p| p.eq_ignore_ascii_case(&history[base].summary.stream_id))
        });
        let after = differential.unwrap_or(base);
        let mut chain = Chain { ids: vec![history[base].id], broken: None };
        chain.ids.extend(differential.map(|i| history[i].id));
        let reach = reach.or_else(|| (after + 1..history.len()).rev().find(|&i| history[i].kind().is_log()));
        let Some(reach) = reach else { return Ok(chain) };
        // A log backup that started before the base (or differential) was
        // consistent holds only what that holds (a hot copy's logs end at
        // its copy's end): it is not needed, and the chain starts after it.
        let since = history[after].consistent;
        let needed = |i: usize| i > after && history[i].kind().is_log() && history[i].started >= since;
        // The needed log backups up to `last` (inclusive), newest first.
        let by_order = |last: usize| -> Vec<&'a str> {
            (after + 1..=last).rev().filter(|&i| needed(i)).map(|i| history[i].id).collect()
        };
        let mut logs: Vec<&'a str> = Vec::new();
        let mut index = reach;
        while needed(index) {
            let member = &history[index];
            let Some(parent) = member.parent() else {
                // No link recorded: by order from here.
                logs.extend(by_order(index));
                break;
            };
            logs.push(member.id);
            match self.find(parent) {
                // A link to the base or the differential ends the walk there.
                Some(found) if found == base || Some(found) == differential => break,
                Some(found) if found < index && history[found].kind().is_log() => index = found,
                // A link to another full after the base (the log continued it,
                // not the logs before it), to a later backup (wrong clocks, or
                // a forged link), or to the snapshot ID older tools recorded:
                // by order from here.
                Some(_) => {
                    logs.extend(by_order(index - 1));
                    break;
                }
                None if self.ids.contains_key(parent) => {
                    logs.extend(by_order(index - 1));
                    break;
                }
                // The first log backup after the base continues one from before
                // it (the log chain runs on across fulls): that one is not needed.
                None if !(after + 1..index).any(needed) => break,
                None => {
                    chain.broken = Some((member.id, parent.to_string()));
                    break;
                }
            }
        }
        logs.reverse();
        chain.ids.extend(logs);
        Ok(chain)
    }
}

/// No base precedes the point asked for.
struct NoBase;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Begin;

    /// A summary of kind `kind` started at hour `hour` of 2026-11-01, with
    /// stream ID `id` and parent `parent`.
    fn summary(id: &str, hour: u32, kind: &str, parent: Option<&str>) -> Summary {
        let begin = Begin {
            kind: kind.into(),
            started: format!("2026-11-01T{hour:02}:00:00Z"),
            parent: parent.map(str::to_string),
            ..Begin::now("t", "e", "full")
        };
        Summary::example(id, begin, &format!("2026-11-01T{hour:02}:30:00Z"))
    }

    fn members(summaries: &[Summary]) -> History<'_> {
        History::new(
            summaries
                .iter()
                .map(|s| {
                    let started = s.begin.started.parse().unwrap();
                    Member { id: &s.stream_id, summary: s, started, consistent: consistent_time(s).unwrap() }
                })
                .collect(),
        )
    }

    fn at(hour: u32) -> DateTime<Utc> {
        format!("2026-11-01T{hour:02}:15:00Z").parse().unwrap()
    }

    #[test]
    fn a_full_is_chosen_by_when_it_is_consistent() {
        // f2 is a hot copy that started at 4:00 and became consistent at 6:00.
        let mut f2 = summary("f2", 4, "full", None);
        f2.end_positions.insert(CONSISTENT_AT.into(), "2026-11-01T06:00:00Z".into());
        let all = [
            summary("f1", 1, "full", None),
            summary("i1", 2, "incremental", Some("f1")),
            f2,
            summary("i2", 5, "incremental", Some("i1")),
            summary("i3", 7, "incremental", Some("i2")),
        ];
        let history = members(&all);
        // 4:15 and 5:15 fall during f2's copy: f1 and the logs after it.
        assert_eq!(history.to_instant(at(4)).unwrap().ids, ["f1", "i1", "i2"]);
        assert_eq!(history.to_instant(at(5)).unwrap().ids, ["f1", "i1", "i2", "i3"]);
        // From 6:00 on, f2; i2 (taken during its copy) holds nothing after it.
        assert_eq!(history.to_instant(at(6)).unwrap().ids, ["f2", "i3"]);
        assert_eq!(history.to_backup(history.members()[4].id).unwrap().ids, ["f2", "i3"]);
        assert_eq!(history.to_backup(history.members()[3].id).unwrap().ids, ["f1", "i1", "i2"]);
    }

    #[test]
    fn a_binary_log_archive_runs_on_across_a_full() {
        // MySQL: f1, incrementals i1..i3; f2; i4 continues i3 (reaching back before f2).
        let all = [
            summary("f1", 1, "full", None),
            summary("i1", 2, "incremental", Some("f1")),
            summary("i2", 3, "incremental", Some("i1")),
            summary("f2", 4, "full", None),
            summary("i3", 5, "incremental", Some("i2")),
            summary("i4", 6, "incremental", Some("i3")),
        ];
        let history = members(&all);
        assert_eq!(history.to_instant(at(2)).unwrap().ids, ["f1", "i1", "i2"]);
        assert_eq!(history.to_instant(at(3)).unwrap().ids, ["f1", "i1", "i2", "i3"], "i3 holds the logs to 3:15");
        assert_eq!(history.to_instant(at(4)).unwrap().ids, ["f2", "i3"]);
        assert_eq!(history.to_instant(at(9)).unwrap().ids, ["f2", "i3", "i4"]);
        assert_eq!(history.to_backup(history.members()[5].id).unwrap().ids, ["f2", "i3", "i4"]);
        assert_eq!(history.to_backup(history.members()[1].id).unwrap().ids, ["f1", "i1"]);
        assert!(history.to_instant("2026-11-01T00:30:00Z".parse().unwrap()).is_err(), "no full before");
    }

    #[test]
    fn a_log_that_names_a_later_full_still_brings_the_logs_before_it() {
        // i2 continued f2 (it started at f2's file); a time before f2 needs i1 and i2.
        let all = [
            summary("f1", 1, "full", None),
            summary("i1", 2, "incremental", Some("f1")),
            summary("f2", 3, "full", None),
            summary("i2", 4, "incremental", Some("f2")),
        ];
        let history = members(&all);
        assert_eq!(history.to_instant(at(2)).unwrap().ids, ["f1", "i1", "i2"]);
        assert_eq!(history.to_instant(at(3)).unwrap().ids, ["f2", "i2"]);
    }

    #[test]
    fn same_second_links_that_loop_never_hang() {
        let all = [
            summary("f1", 1, "full", None),
            summary("a", 2, "incremental", Some("b")),
            summary("b", 2, "incremental", Some("a")),
        ];
        let history = members(&all);
        assert_eq!(history.members().len(), 3);
        let chain = history.to_instant(at(9)).unwrap();
        assert_eq!(chain.ids.len(), 3, "{chain:?}");
    }

    #[test]
    fn differentials_build_on_their_full_and_logs_run_across_both() {
        // SQL Server: full, log, differential, log, log; a new full; log.
        let all = [
            summary("f1", 1, "full", None),
            summary("l1", 2, "log", Some("f1")),
            summary("d1", 3, "differential", Some("f1")),
            summary("l2", 4, "log", Some("l1")),
            summary("l3", 5, "log", Some("l2")),
            summary("f2", 6, "full", None),
            summary("l4", 7, "log", Some("l3")),
        ];
        let history = members(&all);
        assert_eq!(history.to_instant(at(1)).unwrap().ids, ["f1", "l1"]);
        assert_eq!(history.to_instant(at(3)).unwrap().ids, ["f1", "d1", "l2"]);
        assert_eq!(history.to_instant(at(4)).unwrap().ids, ["f1", "d1", "l2", "l3"]);
        assert_eq!(history.to_instant(at(6)).unwrap().ids, ["f2", "l4"]);
        assert_eq!(history.to_backup(history.members()[2].id).unwrap().ids, ["f1", "d1"]);
        assert_eq!(history.to_backup(history.members()[5].id).unwrap().ids, ["f2"]);
    }

    #[test]
    fn interleaved_chains_are_told_apart_by_their_links() {
        // A log chain restarted (b1 starts anew from f1 while a-chain goes on).
        let all = [
            summary("f1", 1, "full", None),
            summary("a1", 2, "log", Some("f1")),
            summary("b1", 3, "log", Some("f1")),
            summary("a2", 4, "log", Some("a1")),
            summary("b2", 5, "log", Some("b1")),
        ];
        let history = members(&all);
        assert_eq!(history.to_backup(history.members()[4].id).unwrap().ids, ["f1", "b1", "b2"]);
        assert_eq!(history.to_backup(history.members()[3].id).unwrap().ids, ["f1", "a1", "a2"]);
    }

    #[test]
    fn a_missing_link_is_named() {
        let all = [
            summary("f1", 1, "full", None),
            summary("i1", 2, "incremental", Some("i0")),
            summary("i3", 4, "incremental", Some("i2")),
            summary("i4", 5, "incremental", Some("i3")),
        ];
        let history = members(&all);
        let chain = history.to_instant(at(4)).unwrap();
        assert_eq!(chain.broken, Some(("i3", "i2".to_string())));
        let err = chain.whole().unwrap_err();
        assert!(err.message().contains("snapshot i3 continues stream i2"), "{err}");
        // The first after the full continues one from before it: no gap.
        assert_eq!(history.to_backup(history.members()[1].id).unwrap().whole().unwrap().ids, ["f1", "i1"]);
    }

    #[test]
    fn backups_started_in_one_second_chain_by_their_order() {
        // A full and two incrementals that each continue it, all in one second.
        let all = [
            summary("f1", 1, "full", None),
            summary("i1", 1, "incremental", Some("f1")),
            summary("i2", 1, "incremental", Some("f1")),
        ];
        let history = members(&all);
        assert_eq!(history.to_instant(at(9)).unwrap().ids, ["f1", "i2"]);
        assert_eq!(history.to_backup(history.members()[1].id).unwrap().ids, ["f1", "i1"]);
    }

    #[test]
    fn links_that_loop_or_point_forward_never_hang() {
        let all = [
            summary("f1", 1, "full", None),
            summary("i1", 2, "incremental", Some("i2")),
            summary("i2", 3, "incremental", Some("i1")),
        ];
        let history = members(&all);
        assert_eq!(history.to_instant(at(9)).unwrap().ids, ["f1", "i1", "i2"]);
    }

    #[test]
    fn streams_without_parents_chain_by_time() {
        let all = [
            summary("f1", 1, "full", None),
            summary("i1", 2, "incremental", None),
            summary("f2", 3, "full", None),
            summary("i2", 4, "incremental", None),
            summary("i3", 5, "incremental", None),
        ];
        let history = members(&all);
        assert_eq!(history.to_instant(at(1)).unwrap().ids, ["f1", "i1"]);
        assert_eq!(history.to_instant(at(4)).unwrap().ids, ["f2", "i2", "i3"]);
        assert_eq!(history.to_instant(at(9)).unwrap().ids, ["f2", "i2", "i3"]);
    }
}
