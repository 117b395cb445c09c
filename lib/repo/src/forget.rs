//! `repo forget`: removes snapshots that no retention rule keeps, never one
//! that a kept snapshot needs to be restored.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::listing::{history, history_of, Found, Listing};
use super::snapshot::Summary;
use crate::error::{Error, Result};
use crate::units::stored_time;

/// Retention rules; a snapshot is kept if any rule keeps it.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// The newest N.
    pub last: usize,
    /// The newest in each of the last N hours that have snapshots.
    pub hourly: usize,
    /// Likewise per day.
    pub daily: usize,
    /// Likewise per ISO week.
    pub weekly: usize,
    /// Likewise per month.
    pub monthly: usize,
    /// Likewise per year.
    pub yearly: usize,
    /// Everything started within this long before now (the point-in-time window).
    pub within: Option<chrono::Duration>,
}

impl Policy {
    fn is_empty(&self) -> bool {
        [self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly].iter().all(|&n| n == 0)
            && self.within.is_none()
    }
}

/// One snapshot's fate, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: String,
    /// Kept or to be removed.
    pub keep: bool,
    /// The rules that keep it (empty when removed).
    pub reasons: Vec<String>,
    /// Why it cannot be read, for a damaged snapshot (which rules never remove).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// The two clocks a snapshot's time can be read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// The backup host's: the summary's `started`.
    Source,
    /// The storage's: when it received the snapshot object.
    Storage,
}

/// A snapshot with its time by each clock.
struct Dated<'a> {
    id: &'a str,
    summary: &'a Summary,
    started: DateTime<Utc>,
    /// When `ship` stored it, by its host's clock: orders backups started in one second.
    stored: Option<DateTime<Utc>>,
    received: DateTime<Utc>,
}

impl Dated<'_> {
    fn at(&self, clock: Clock) -> DateTime<Utc> {
        match clock {
            Clock::Source => self.started,
            Clock::Storage => self.received,
        }
    }
}

/// Records that `rule` keeps snapshot `id` by `clock`, once per rule: a
/// rule that keeps it only by the storage's time says so.
fn keep_by<'a>(reasons: &mut HashMap<&'a str, Vec<String>>, id: &'a str, rule: &str, clock: Clock) {
    let held = reasons.entry(id).or_default();
    if !held.iter().any(|r| r.split(" (").next() == Some(rule)) {
        held.push(match clock {
            Clock::Source => rule.to_string(),
            Clock::Storage => format!("{rule} (by the storage's time)"),
        });
    }
}

/// Decides which snapshots (oldest first, as [`super::listing::list`] gives
/// them) to keep, per host and engine. Every snapshot a kept one builds on (its
/// full backup and the backups between) is kept too.
///
/// The rules are applied twice: with each backup's time by its host's clock
/// (`started`) and by the storage's (`received`, from the listing; `started`
/// where the storage gave none), and a snapshot either keeps is kept. A host
/// whose clock was wrong cannot get a fresh backup removed (the storage's
/// time keeps it), and a repository whose objects were copied, which gives
/// them all new storage times, keeps what the hosts' times keep.
pub fn decide(
    snapshots: &[(String, Summary)],
    received: &HashMap<String, DateTime<Utc>>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::usage("give at least one --keep-* rule"));
    }
    // The start of the --keep-within window; a window reaching before the
    // earliest representable time is refused rather than wrapped around.
    let window_start = match policy.within {
        Some(within) => Some(now.checked_sub_signed(within).ok_or_else(|| {
            Error::usage("the --keep-within window reaches back before the earliest time that can be handled")
        })?),
        None => None,
    };
    let mut reasons: HashMap<&str, Vec<String>> = HashMap::new();
    let mut groups: HashMap<(&str, &str, &str), Vec<Dated>> = HashMap::new();
    for (id, summary) in snapshots {
        let started = stored_time(&summary.begin.started).ok_or_else(|| {
            Error::integrity(format!("snapshot {id}: started {:?} is not an RFC 3339 time", summary.begin.started))
        })?;
        let stored = stored_time(&summary.stored);
        let dated = Dated { id, summary, started, stored, received: received.get(id).copied().unwrap_or(started) };
        groups.entry(history_of(summary)).or_default().push(dated);
    }
    for group in groups.values() {
        for clock in [Clock::Source, Clock::Storage] {
            let mut newest_first: Vec<&Dated> = group.iter().collect();
            newest_first.sort_by_key(|d| std::cmp::Reverse((d.at(clock), d.started, d.stored, d.id)));
            let mut keep = |id, rule| keep_by(&mut reasons, id, rule, clock);
            for dated in newest_first.iter().take(policy.last) {
                keep(dated.id, "last");
            }
            let buckets: [(&str, usize, &str); 5] = [
                ("hourly", policy.hourly, "%Y-%m-%d %H"),
                ("daily", policy.daily, "%Y-%m-%d"),
                ("weekly", policy.weekly, "%G-%V"),
                ("monthly", policy.monthly, "%Y-%m"),
                ("yearly", policy.yearly, "%Y"),
            ];
            for (rule, count, format) in buckets {
                let mut seen = HashSet::new();
                for dated in &newest_first {
                    if seen.len() == count {
                        break;
                    }
                    if seen.insert(dated.at(clock).format(format).to_string()) {
                        keep(dated.id, rule);
                    }
                }
            }
            if let Some(window_start) = window_start {
                for dated in newest_first.iter().filter(|d| d.at(clock) >= window_start) {
                    keep(dated.id, "within");
                }
            }
        }
        keep_chains(snapshots, history_of(&group[0].summary), window_start, &mut reasons);
    }
    Ok(snapshots
        .iter()
        .map(|(id, _)| {
            let why = reasons.remove(id.as_str()).unwrap_or_default();
            Decision { id: id.clone(), keep: !why.is_empty(), reasons: why, damaged: None }
        })
        .collect())
}

/// Keeps what the kept backups of one history need to be restored (their
/// bases and the links between, see [`crate::chain`]), and what they need in
/// turn, and what a restore to the start of the point-in-time window needs.
/// A kept backup with no base in its history (its chain was begun in another
/// one, by older tools) keeps the backup it names as its parent, wherever
/// that is.
fn keep_chains<'a>(
    snapshots: &'a [(String, Summary)],
    key: (&str, &str, &str),
    window_start: Option<DateTime<Utc>>,
    reasons: &mut HashMap<&'a str, Vec<String>>,
) {
    let history = history(snapshots, key);
    let mut work: Vec<&'a str> = history.members().iter().map(|m| m.id).filter(|id| reasons.contains_key(id)).collect();
    if let Some(chain) = window_start.and_then(|start| history.to_instant(start).ok()) {
        for id in chain.ids {
            if !reasons.contains_key(id) {
                reasons.insert(id, vec!["needed to restore to the start of the --keep-within window".to_string()]);
                work.push(id);
            }
        }
    }
    while let Some(kept) = work.pop() {
        let needed = match history.to_backup(kept) {
            Ok(chain) => chain.ids,
            Err(_) => parent_snapshot(snapshots, kept).into_iter().collect(),
        };
        for id in needed {
            if !reasons.contains_key(id) {
                reasons.insert(id, vec!["needed by a kept backup".to_string()]);
                work.push(id);
            }
        }
    }
}

/// The snapshot holding the stream that snapshot `id` names as its parent, in any history.
fn parent_snapshot<'a>(snapshots: &'a [(String, Summary)], id: &str) -> Option<&'a str> {
    let (_, summary) = snapshots.iter().find(|(found, _)| found == id)?;
    let parent = summary.begin.parent.as_deref()?;
    snapshots.iter().find(|(_, s)| s.stream_id.eq_ignore_ascii_case(parent)).map(|(found, _)| found.as_str())
}

/// The snapshots `names` (full IDs or unambiguous ID prefixes) name, damaged
/// ones included, each once, as decisions to remove them: for `repo forget R
/// ID...`, which removes exactly what it is told, e.g. a damaged snapshot.
pub fn named(listing: &Listing, names: &[String]) -> Result<Vec<Decision>> {
    let mut decisions: Vec<Decision> = Vec::new();
    for name in names {
        let found = listing.find(name)?;
        if decisions.iter().any(|d| d.id == found.id()) {
            continue;
        }
        let damaged = match found {
            Found::Damaged(d) => Some(d.reason.clone()),
            Found::Readable(..) => None,
        };
        decisions.push(Decision { id: found.id().to_string(), keep: false, reasons: Vec::new(), damaged });
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Begin;
    use crate::units::{parse_duration, parse_time};

    fn snap(id: &str, started: &str, kind: &str) -> (String, Summary) {
        let begin = Begin { kind: kind.into(), started: started.into(), ..Begin::now("t", "e", "full") };
        (id.into(), Summary::example("", begin, started))
    }

    /// Like [`snap`], with the snapshot's ID as its stream ID and `parent` as its parent.
    fn linked(id: &str, started: &str, kind: &str, parent: Option<&str>) -> (String, Summary) {
        let (id, mut summary) = snap(id, started, kind);
        summary.stream_id = id.clone();
        summary.begin.parent = parent.map(str::to_string);
        (id, summary)
    }

    #[test]
    fn the_point_in_time_window_keeps_what_its_first_instant_needs() {
        // A binary log archive that runs on across f2.
        let all = vec![
            linked("f1", "2026-11-01T01:00:00Z", "full", None),
            linked("l1", "2026-11-01T02:00:00Z", "incremental", Some("f1")),
            linked("l2", "2026-11-01T03:00:00Z", "incremental", Some("l1")),
            linked("f2", "2026-11-01T04:00:00Z", "full", None),
            linked("l3", "2026-11-01T05:00:00Z", "incremental", Some("l2")),
            linked("l4", "2026-11-01T06:00:00Z", "incremental", Some("l3")),
        ];
        let now = parse_time("2026-11-01T06:30:00Z").unwrap();
        let window = |within: &str| Policy { within: parse_duration(within).ok(), ..Policy::default() };
        // From 04:30: f2, and l3 (the first log after 04:30) with l4.
        assert_eq!(kept(&decide(&all, &HashMap::new(), &window("2h"), now).unwrap()), ["f2", "l3", "l4"]);
        // From 03:30: that instant needs f1 and every log since.
        assert_eq!(
            kept(&decide(&all, &HashMap::new(), &window("3h"), now).unwrap()),
            ["f1", "l1", "l2", "f2", "l3", "l4"]
        );
        // The newest alone keeps its chain from f2, not the logs before f2 it links to.
        let last = Policy { last: 1, ..Policy::default() };
        assert_eq!(kept(&decide(&all, &HashMap::new(), &last, now).unwrap()), ["f2", "l3", "l4"]);
    }

    fn kept(decisions: &[Decision]) -> Vec<&str> {
        decisions.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn rules_keep_the_newest_per_bucket_and_chains_stay_whole() {
        let all = vec![
            snap("f1", "2026-11-01T01:00:00Z", "full"),
            snap("i1", "2026-11-01T05:00:00Z", "incremental"),
            snap("f2", "2026-11-02T01:00:00Z", "full"),
            snap("i2", "2026-11-02T05:00:00Z", "incremental"),
            snap("i3", "2026-11-02T09:00:00Z", "incremental"),
        ];
        let now = parse_time("2026-11-03T00:00:00Z").unwrap();
        let last = decide(&all, &HashMap::new(), &Policy { last: 1, ..Policy::default() }, now).unwrap();
        assert_eq!(kept(&last), ["f2", "i2", "i3"], "i3 needs i2 and f2");
        let daily = decide(&all, &HashMap::new(), &Policy { daily: 2, ..Policy::default() }, now).unwrap();
        assert_eq!(kept(&daily), ["f1", "i1", "f2", "i2", "i3"]);
        let within = decide(
            &all,
            &HashMap::new(),
            &Policy { within: Some(parse_duration("20h").unwrap()), ..Policy::default() },
            now,
        )
        .unwrap();
        assert_eq!(kept(&within), ["f2", "i2", "i3"]);
        assert!(decide(&all, &HashMap::new(), &Policy::default(), now).is_err());
        assert!(parse_duration("3x").is_err() && parse_duration("h").is_err());
    }

    #[test]
    fn durations_are_bounded_and_windows_never_overflow() {
        assert_eq!(parse_duration("1000y").unwrap(), chrono::Duration::days(365_000));
        assert_eq!(parse_duration("90m").unwrap(), chrono::Duration::minutes(90));
        for text in ["1001y", "300000y", "99999999999999999999999d", "52143w", "", "-1d", "1.5h", "1 d", "y5"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        let all = vec![snap("f1", "2026-11-01T01:00:00Z", "full")];
        let longest = Policy { within: parse_duration("1000y").ok(), ..Policy::default() };
        let now = parse_time("2026-11-03T00:00:00Z").unwrap();
        assert_eq!(kept(&decide(&all, &HashMap::new(), &longest, now).unwrap()), ["f1"]);
        assert!(decide(&all, &HashMap::new(), &longest, DateTime::<Utc>::MIN_UTC).is_err());
        let huge = Policy { last: usize::MAX, hourly: usize::MAX, ..Policy::default() };
        assert_eq!(kept(&decide(&all, &HashMap::new(), &huge, now).unwrap()), ["f1"]);
    }

    #[test]
    fn named_snapshots_include_damaged_ones_once() {
        let listing = Listing {
            readable: vec![snap("aa11", "2026-11-01T01:00:00Z", "full"), snap("ab22", "2026-11-02T01:00:00Z", "full")],
            damaged: vec![crate::listing::Damaged { id: "cc33".into(), reason: "truncated".into() }],
            storage_times: HashMap::new(),
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let decisions = named(&listing, &names(&["aa", "cc33", "aa11"])).unwrap();
        assert_eq!(decisions.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["aa11", "cc33"]);
        assert_eq!(decisions[1].damaged.as_deref(), Some("truncated"));
        assert!(decisions.iter().all(|d| !d.keep));
        assert!(named(&listing, &names(&["a"])).is_err(), "ambiguous");
        assert!(named(&listing, &names(&["dd"])).is_err(), "unknown");
        assert!(named(&listing, &names(&[""])).is_err(), "empty");
    }

    #[test]
    fn a_host_clock_behind_or_ahead_never_gets_a_fresh_backup_removed() {
        let now = parse_time("2026-11-10T12:00:00Z").unwrap();
        // f2 was made just now on a host whose clock was three days behind;
        // the storage received each backup when it was made.
        let all = vec![
            snap("f0", "2026-11-01T01:00:00Z", "full"),
            snap("f2", "2026-11-07T11:59:00Z", "full"),
            snap("f1", "2026-11-09T01:00:00Z", "full"),
        ];
        let received: HashMap<String, DateTime<Utc>> =
            [("f0", "2026-11-01T01:01:00Z"), ("f2", "2026-11-10T11:59:30Z"), ("f1", "2026-11-09T01:01:00Z")]
                .into_iter()
                .map(|(id, t)| (id.to_string(), parse_time(t).unwrap()))
                .collect();
        let within = Policy { within: parse_duration("2d").ok(), ..Policy::default() };
        let decisions = decide(&all, &received, &within, now).unwrap();
        assert_eq!(kept(&decisions), ["f2", "f1"]);
        assert_eq!(decisions[1].reasons, ["within (by the storage's time)"]);
        assert_eq!(decisions[2].reasons, ["within"]);
        // The newest by either clock is kept.
        let last = decide(&all, &received, &Policy { last: 1, ..Policy::default() }, now).unwrap();
        assert_eq!(kept(&last), ["f2", "f1"]);
        // A host clock ahead: its backup is kept by its own time, and the real newest by the storage's.
        let mut ahead = all.clone();
        ahead[0].1.begin.started = "2027-01-01T00:00:00Z".into();
        let last = decide(&ahead, &received, &Policy { last: 1, ..Policy::default() }, now).unwrap();
        assert_eq!(kept(&last), ["f0", "f2"]);
    }

    #[test]
    fn a_copied_repository_keeps_what_the_hosts_times_keep() {
        let all = vec![
            snap("f1", "2026-11-01T01:00:00Z", "full"),
            snap("i1", "2026-11-01T05:00:00Z", "incremental"),
            snap("f2", "2026-11-02T01:00:00Z", "full"),
            snap("i2", "2026-11-02T05:00:00Z", "incremental"),
            snap("i3", "2026-11-03T05:00:00Z", "incremental"),
        ];
        // Copied in reverse order, all within one minute.
        let copied = parse_time("2026-12-01T12:00:00Z").unwrap();
        let received: HashMap<String, DateTime<Utc>> = all
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), copied - chrono::Duration::seconds(i as i64)))
            .collect();
        let now = parse_time("2026-12-01T12:01:00Z").unwrap();
        // By the hosts' days: i3 and i2 with their chain; the storage's one
        // day adds the one it received last (f1), never less.
        let daily = decide(&all, &received, &Policy { daily: 2, ..Policy::default() }, now).unwrap();
        assert_eq!(kept(&daily), ["f1", "f2", "i2", "i3"]);
    }
}
