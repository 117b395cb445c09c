//! What the agents ask the server about itself: version, binary log settings
//! and the list of binary log files.

use std::path::PathBuf;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::positions::Positions;

/// The system schemas: never dumped as data, never dropped, whatever a listing says.
pub const SYSTEM_SCHEMAS: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

/// The server's own databases, all but the system schemas, sorted. Names
/// are read in hex: a name holding a tab or a newline cannot be misread as
/// two (or as `mysql`).
pub fn user_databases(client: &Client) -> Result<Vec<String>> {
    let rows = client.query(
        "SELECT HEX(schema_name) FROM information_schema.schemata \
         WHERE schema_name NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1",
    )?;
    rows.into_iter()
        .map(|row| {
            let name = row.first().and_then(|h| hex::decode(h).ok()).and_then(|b| String::from_utf8(b).ok());
            name.ok_or_else(|| Error::engine(format!("unexpected answer listing databases: {}", row.join(" "))))
        })
        .collect()
}

/// The server facts a backup records and checks.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `@@version`.
    pub version: String,
    /// `@@log_bin`: binary logging is on.
    pub log_bin: bool,
    /// `@@log_bin_basename`: the path of the binary logs without the number.
    pub binlog_basename: String,
    /// `@@server_id`.
    pub server_id: u64,
}

impl ServerInfo {
    /// Asks the server.
    pub fn query(client: &Client) -> Result<ServerInfo> {
        let row = client
            .query("SELECT @@version, @@log_bin, IFNULL(@@log_bin_basename, ''), @@server_id")?
            .into_iter()
            .next()
            .filter(|row| row.len() == 4)
            .ok_or_else(|| Error::engine(format!("{} did not answer a query about itself", client.target())))?;
        Ok(ServerInfo {
            version: row[0].clone(),
            log_bin: row[1] == "1",
            binlog_basename: row[2].clone(),
            server_id: row[3]
                .parse()
                .map_err(|_| Error::engine(format!("the server_id '{}' is not a number", row[3])))?,
        })
    }

    /// Fails unless the server writes binary logs, which point-in-time
    /// restore and incrementals need.
    pub fn require_binlog(&self) -> Result<()> {
        if self.log_bin && !self.binlog_basename.is_empty() {
            Ok(())
        } else {
            Err(Error::engine(
                "binary logging is off on the server: set log_bin (and binlog_format=ROW) in its configuration \
                 and restart it (docs/engines/mysql.md)",
            ))
        }
    }

    /// The positions every backup of this server starts from.
    pub fn positions(&self, method: &str) -> Positions {
        Positions {
            method: method.to_string(),
            binlog_basename: self.binlog_basename.clone(),
            server_id: self.server_id,
            server_version: Some(self.version.clone()),
            ..Default::default()
        }
    }

    /// The source every backup of this server records: its binary log
    /// sequence (`server ID BASENAME`), so backups of two servers of one
    /// host are separate histories.
    pub fn source(&self) -> String {
        format!("server {} {}", self.server_id, self.binlog_basename)
    }

    /// True when `positions` come from this server's binary log sequence.
    pub fn same_sequence(&self, positions: &Positions) -> bool {
        positions.binlog_basename == self.binlog_basename && positions.server_id == self.server_id
    }

    /// The directory holding the binary logs.
    pub fn binlog_dir(&self) -> PathBuf {
        PathBuf::from(&self.binlog_basename).parent().map(PathBuf::from).unwrap_or_default()
    }
}

/// One binary log file as `SHOW BINARY LOGS` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryLog {
    /// The file name, e.g. `mysql-bin.000042`.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The server's binary log files, oldest first; the last is the one being written.
pub fn binary_logs(client: &Client) -> Result<Vec<BinaryLog>> {
    client
        .query("SHOW BINARY LOGS")?
        .into_iter()
        .map(|row| {
            let size = row.get(1).and_then(|s| s.parse().ok());
            match (row.first(), size) {
                (Some(name), Some(size)) => Ok(BinaryLog { name: name.clone(), size }),
                _ => Err(Error::engine(format!("unexpected SHOW BINARY LOGS row: {}", row.join(" ")))),
            }
        })
        .collect()
}

/// A binary log file name as an SQL string literal. Names holding a quote or
/// a backslash, whose escaping depends on the SQL mode, are refused.
pub fn sql_string(text: &str) -> Result<String> {
    if text.contains(['\'', '\\']) {
        return Err(Error::engine(format!("binary log name {text:?} holds a quote or backslash")));
    }
    Ok(format!("'{text}'"))
}
