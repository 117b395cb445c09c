//! `dump-mysql purge`: removes binary logs from the server only as far as
//! stored incremental backups hold them. The receipts `ship` printed name the
//! files each stored incremental holds; the longest run of the server's
//! oldest files that they cover is purged, never the file being written, and
//! nothing past the first file no receipt covers.

use std::collections::BTreeSet;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::positions::Positions;
use crate::repo::receipt::Stored;
use crate::server::{binary_logs, sql_string, BinaryLog, ServerInfo};

/// What a purge did, or would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Files removed (or to be removed), oldest first.
    pub purge: Vec<String>,
    /// The oldest file kept, and why.
    pub kept: Option<(String, String)>,
}

/// Works out which of the server's files `receipts` prove stored.
pub fn plan(server: &ServerInfo, logs: &[BinaryLog], receipts: &[Stored]) -> Result<Plan> {
    // A file counts as stored when a stored incremental holds a file of its
    // name and size: after a reset, new files reuse old names.
    let mut covered = BTreeSet::new();
    for receipt in receipts {
        let positions = Positions::from_maps(&receipt.positions, &receipt.end_positions)?;
        if server.same_sequence(&positions) && positions.is_incremental() {
            covered.extend(positions.files);
        }
    }
    let mut purge = Vec::new();
    let mut kept = None;
    for (i, log) in logs.iter().enumerate() {
        let why = if i + 1 == logs.len() {
            "the server is writing it"
        } else if !covered.contains(&(log.name.clone(), log.size)) {
            "no incremental backup in the receipts holds it"
        } else {
            purge.push(log.name.clone());
            continue;
        };
        kept = Some((log.name.clone(), why.to_string()));
        break;
    }
    Ok(Plan { purge, kept })
}

/// Purges what `receipts` allow on the server; with `dry_run`, only says what it would purge.
pub fn purge(client: &Client, receipts: &[Stored], dry_run: bool) -> Result<Plan> {
    let server = ServerInfo::query(client)?;
    server.require_binlog()?;
    if receipts.is_empty() {
        return Err(Error::usage("the receipts hold no MySQL backup"));
    }
    let logs = binary_logs(client)?;
    let mut plan = plan(&server, &logs, receipts)?;
    if let (false, Some((first_kept, _))) = (dry_run || plan.purge.is_empty(), &plan.kept) {
        // Removes every file before the one named, and nothing else.
        client.query(&format!("PURGE BINARY LOGS TO {}", sql_string(first_kept)?))?;
        // The server may keep some (its binary log checkpoint still needs them): report what it did.
        let left = binary_logs(client)?;
        if let Some(held) = plan.purge.iter().position(|name| left.iter().any(|log| log.name == *name)) {
            let why = "the server kept it (its binary log checkpoint still needs it); a later purge removes it";
            plan.kept = Some((plan.purge[held].clone(), why.to_string()));
            plan.purge.truncate(held);
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::positions::{Positions, BINLOG};

    fn server() -> ServerInfo {
        ServerInfo { version: "10.11".into(), log_bin: true, binlog_basename: "/b/bin".into(), server_id: 1 }
    }

    fn receipt(from: &str, to: &str, basename: &str) -> Stored {
        let seq = |f: &str| f.rsplit_once('.').unwrap().1.parse::<u32>().unwrap();
        let positions = Positions {
            from_file: Some(from.into()),
            binlog_file: Some(to.into()),
            files: (seq(from)..=seq(to)).map(|n| (format!("bin.{n:06}"), 1)).collect(),
            ..ServerInfo { binlog_basename: basename.into(), ..server() }.positions(BINLOG)
        };
        Stored { engine: "mysql".into(), positions: positions.to_map(), ..Stored::default() }
    }

    fn logs(range: std::ops::RangeInclusive<u32>) -> Vec<BinaryLog> {
        range.map(|n| BinaryLog { name: format!("bin.{n:06}"), size: 1 }).collect()
    }

    #[test]
    fn purges_only_the_covered_prefix() {
        let plan = plan(&server(), &logs(3..=9), &[receipt("bin.000003", "bin.000005", "/b/bin")]).unwrap();
        assert_eq!(plan.purge, ["bin.000003", "bin.000004", "bin.000005"]);
        assert_eq!(plan.kept.unwrap().0, "bin.000006");
    }

    #[test]
    fn keeps_files_before_the_first_receipt_and_the_current_file() {
        let older = plan(&server(), &logs(1..=9), &[receipt("bin.000003", "bin.000005", "/b/bin")]).unwrap();
        assert!(older.purge.is_empty());
        let current = plan(&server(), &logs(3..=5), &[receipt("bin.000003", "bin.000005", "/b/bin")]).unwrap();
        assert_eq!(current.purge, ["bin.000003", "bin.000004"]);
        assert_eq!(current.kept.unwrap().1, "the server is writing it");
    }

    #[test]
    fn a_file_of_another_size_is_another_file() {
        let mut after_reset = logs(3..=9);
        after_reset[1].size = 2;
        let plan = plan(&server(), &after_reset, &[receipt("bin.000003", "bin.000005", "/b/bin")]).unwrap();
        assert_eq!(plan.purge, ["bin.000003"]);
    }

    #[test]
    fn ignores_receipts_of_other_servers() {
        let plan = plan(&server(), &logs(3..=9), &[receipt("bin.000003", "bin.000005", "/other/bin")]).unwrap();
        assert!(plan.purge.is_empty());
    }
}
