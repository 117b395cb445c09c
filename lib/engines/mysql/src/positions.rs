//! Where a MySQL backup sits in its server's binary log: the `positions` a
//! `dump-mysql` stream records in its Begin frame (and, for a physical full,
//! in its End frame), which chain incrementals, guide restores and bound
//! `purge`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// How a backup was taken.
pub const LOGICAL: &str = "logical";
/// A hot physical copy made by mariadb-backup.
pub const PHYSICAL: &str = "physical";
/// Binary log files copied by an incremental.
pub const BINLOG: &str = "binlog";

/// The binary log coordinates of one backup.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Positions {
    /// `logical`, `physical` or `binlog`.
    #[serde(default)]
    pub method: String,
    /// The server's `log_bin_basename`: with `server_id`, names the binary log
    /// sequence a chain belongs to.
    #[serde(default)]
    pub binlog_basename: String,
    /// The server's `server_id`.
    #[serde(default)]
    pub server_id: u64,
    /// The server's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// A full: the binary log file where its data is consistent. An
    /// incremental: the last file it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binlog_file: Option<String>,
    /// A full: the position in `binlog_file` where its data is consistent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binlog_pos: Option<u64>,
    /// A full: the GTID position of its data. An incremental: the server's
    /// GTID position just after it closed its last file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    /// An incremental: the first binary log file it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_file: Option<String>,
    /// An incremental: the file the next incremental starts with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_file: Option<String>,
    /// An incremental: each file it holds, with its size. A closed file never
    /// changes size, so a file of that name with another size is another
    /// file (the server's binary logs were reset).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<(String, u64)>,
    /// A physical full: when its copy ended, which is when its data is consistent (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_at: Option<String>,
    /// A logical full: the databases it holds (all but the system schemas),
    /// which a restore with `--replace` drops on the target before loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub databases: Option<Vec<String>>,
}

impl Positions {
    /// The positions of a stream or snapshot: Begin's, overridden by End's.
    pub fn from_maps(begin: &Map<String, Value>, end: &Map<String, Value>) -> Result<Positions> {
        let mut merged = begin.clone();
        merged.extend(end.iter().map(|(k, v)| (k.clone(), v.clone())));
        serde_json::from_value(Value::Object(merged))
            .map_err(|e| Error::integrity(format!("the backup's binary log positions are malformed: {e}")))
    }

    /// As a positions map for a Begin or End frame.
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self).expect("positions serialize") {
            Value::Object(map) => map,
            _ => unreachable!("a struct serializes to an object"),
        }
    }

    /// The file an incremental taken after this backup starts with: the
    /// consistent point's file after a full, the next file after an incremental.
    pub fn continues_from(&self) -> Option<&str> {
        match self.method.as_str() {
            BINLOG => self.next_file.as_deref(),
            _ => self.binlog_file.as_deref(),
        }
    }

    /// True for an incremental (binary log files).
    pub fn is_incremental(&self) -> bool {
        self.method == BINLOG
    }
}

/// Parses one GTID `domain-server-sequence` into its three numbers.
pub fn parse_gtid(text: &str) -> Result<(u32, u32, u64)> {
    let parts: Vec<&str> = text.split('-').collect();
    if let [domain, server, sequence] = parts[..] {
        if let (Ok(domain), Ok(server), Ok(sequence)) = (domain.parse(), server.parse(), sequence.parse()) {
            return Ok((domain, server, sequence));
        }
    }
    Err(Error::usage(format!("'{text}' is not a GTID (domain-server-sequence, e.g. 0-1-1234)")))
}

/// Parses a GTID list `d-s-n,d-s-n` into (domain, sequence) pairs.
pub fn parse_gtids(text: &str) -> Result<Vec<(u32, u64)>> {
    text.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(|g| parse_gtid(g).map(|(domain, _, sequence)| (domain, sequence)))
        .collect()
}

/// True when the GTID position `now` is behind `then` in some replication
/// domain: the binary log history was reset in between.
pub fn gtid_behind(now: &str, then: &str) -> Result<bool> {
    let now = parse_gtids(now)?;
    for (domain, sequence) in parse_gtids(then)? {
        let reached = now.iter().find(|(d, _)| *d == domain).map(|(_, s)| *s).unwrap_or(0);
        if reached < sequence {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The sequence number of a binary log file name (`mysql-bin.000042` is 42).
pub fn sequence_of(file: &str) -> Result<u64> {
    file.rsplit_once('.')
        .and_then(|(_, digits)| digits.parse().ok())
        .ok_or_else(|| Error::engine(format!("'{file}' is not a binary log file name (base.NNNNNN)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_merges() {
        let begin = Positions {
            method: PHYSICAL.into(),
            binlog_basename: "/var/lib/mysql/mysql-bin".into(),
            server_id: 1,
            ..Default::default()
        };
        let end = Positions { binlog_file: Some("mysql-bin.000007".into()), binlog_pos: Some(385), ..begin.clone() };
        let merged = Positions::from_maps(&begin.to_map(), &end.to_map()).unwrap();
        assert_eq!(merged, end);
        assert_eq!(merged.continues_from(), Some("mysql-bin.000007"));
        assert_eq!(sequence_of("mysql-bin.000042").unwrap(), 42);
        assert!(sequence_of("mysql-bin").is_err());
        assert_eq!(parse_gtids("0-1-12, 3-2-7").unwrap(), [(0, 12), (3, 7)]);
        assert!(parse_gtids("0-1").is_err() && parse_gtids("abc").is_err());
        assert!(gtid_behind("0-1-5", "0-1-9").unwrap());
        assert!(!gtid_behind("0-1-9,1-1-1", "0-1-9").unwrap());
        assert!(gtid_behind("", "0-1-1").unwrap());
    }
}
