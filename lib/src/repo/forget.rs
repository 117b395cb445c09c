//! `repo forget`: removes snapshots that no retention rule keeps, never one
//! that a kept snapshot needs to be restored.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::fetch::parse_time;
use super::snapshot::Summary;
use crate::error::{Error, Result};

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
        self.last + self.hourly + self.daily + self.weekly + self.monthly + self.yearly == 0 && self.within.is_none()
    }
}

/// Parses a duration such as `90m`, `36h`, `14d`, `8w` or `1y` (365 days).
pub fn parse_duration(text: &str) -> Result<chrono::Duration> {
    let bad = || Error::usage(format!("'{text}' is not a duration (use 36h, 14d, 8w, ...)"));
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let number: i64 = text[..split].parse().map_err(|_| bad())?;
    let unit = match &text[split..] {
        "m" => chrono::Duration::minutes(1),
        "h" => chrono::Duration::hours(1),
        "d" => chrono::Duration::days(1),
        "w" => chrono::Duration::weeks(1),
        "y" => chrono::Duration::days(365),
        _ => return Err(bad()),
    };
    i32::try_from(number).ok().and_then(|n| unit.checked_mul(n)).ok_or_else(bad)
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
}

/// A snapshot's ID and summary with its parsed start time.
type Dated<'a> = (&'a str, &'a Summary, DateTime<Utc>);

/// Decides which snapshots (oldest first, as [`super::fetch::list`] gives
/// them) to keep, per host and engine. Every snapshot a kept one builds on (its
/// full backup and the backups between) is kept too.
pub fn decide(snapshots: &[(String, Summary)], policy: &Policy, now: DateTime<Utc>) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::usage("give at least one --keep-* rule"));
    }
    let mut reasons: HashMap<&str, Vec<String>> = HashMap::new();
    let mut groups: HashMap<(&str, &str), Vec<Dated>> = HashMap::new();
    for (id, s) in snapshots {
        groups.entry((&s.begin.host, &s.begin.engine)).or_default().push((id, s, parse_time(&s.begin.started)?));
    }
    for group in groups.values() {
        let newest_first: Vec<_> = group.iter().rev().collect();
        for (id, _, _) in newest_first.iter().take(policy.last) {
            reasons.entry(id).or_default().push("last".into());
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
            for (id, _, started) in &newest_first {
                if seen.len() == count {
                    break;
                }
                if seen.insert(started.format(format).to_string()) {
                    reasons.entry(id).or_default().push(rule.into());
                }
            }
        }
        if let Some(within) = policy.within {
            for (id, _, started) in &newest_first {
                if *started >= now - within {
                    reasons.entry(id).or_default().push("within".into());
                }
            }
        }
        // A kept backup needs its chain: back to and including the full before it.
        let mut needed = false;
        for (id, s, _) in &newest_first {
            if needed && !reasons.contains_key(id) {
                reasons.entry(id).or_default().push("needed by a newer kept backup".into());
            }
            if reasons.contains_key(id) && s.begin.kind != "full" {
                needed = true;
            } else if s.begin.kind == "full" {
                needed = false;
            }
        }
    }
    Ok(snapshots
        .iter()
        .map(|(id, _)| {
            let why = reasons.remove(id.as_str()).unwrap_or_default();
            Decision { id: id.clone(), keep: !why.is_empty(), reasons: why }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Begin;

    fn snap(id: &str, started: &str, kind: &str) -> (String, Summary) {
        let summary = Summary {
            stream_id: String::new(),
            begin: Begin { kind: kind.into(), started: started.into(), ..Begin::now("t", "e", "full") },
            end_positions: Default::default(),
            entries: 0,
            bytes: 0,
            stream_bytes: 0,
            chunks: 0,
            new_chunks: 0,
            new_bytes: 0,
            stored: started.into(),
            skeleton_blake3: String::new(),
        };
        (id.into(), summary)
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
        let last = decide(&all, &Policy { last: 1, ..Policy::default() }, now).unwrap();
        assert_eq!(kept(&last), ["f2", "i2", "i3"], "i3 needs i2 and f2");
        let daily = decide(&all, &Policy { daily: 2, ..Policy::default() }, now).unwrap();
        assert_eq!(kept(&daily), ["f1", "i1", "f2", "i2", "i3"]);
        let within =
            decide(&all, &Policy { within: Some(parse_duration("20h").unwrap()), ..Policy::default() }, now).unwrap();
        assert_eq!(kept(&within), ["f2", "i2", "i3"]);
        assert!(decide(&all, &Policy::default(), now).is_err());
        assert!(parse_duration("3x").is_err() && parse_duration("h").is_err());
    }
}
