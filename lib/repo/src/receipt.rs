//! Receipts: the JSON line `ship` prints for each stored stream, defined
//! once here, and read back, from a receipt file (one line per stored
//! stream, appended as ships finish) or from the repository's own listing,
//! by the same code. The next incremental of an engine finds what it
//! continues this way, and post-backup actions that destroy the source's
//! history (a binary log purge) prove what is stored.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::snapshot::Summary;
use crate::Repository;

/// What `ship` prints for each stored stream (one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    /// The new snapshot's ID.
    pub snapshot: String,
    /// The stored stream's summary: engine, kind, time, positions, sizes.
    #[serde(flatten)]
    pub summary: Summary,
    /// Stored bytes of the stream's chunks that the repository already held.
    pub deduplicated_bytes: u64,
}

/// A stored backup, as a receipt line (or `repo snapshots --json`) or the
/// listing describes it: what later backups and post-backup actions read.
/// Lenient: receipts of older tools lack some fields.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Stored {
    /// The snapshot ID.
    #[serde(alias = "id")]
    pub snapshot: String,
    /// The engine.
    pub engine: String,
    /// The host name the backup recorded; empty in receipts of older tools.
    #[serde(default)]
    pub host: String,
    /// The instance backed up, as the engine names it; absent in backups of
    /// older tools.
    #[serde(default)]
    pub source: Option<String>,
    /// The stream ID (hex); empty in receipts of older tools.
    #[serde(default)]
    pub stream_id: String,
    /// When the backup started (RFC 3339).
    #[serde(default)]
    pub started: String,
    /// Begin's positions.
    #[serde(default)]
    pub positions: Map<String, Value>,
    /// End's positions.
    #[serde(default)]
    pub end_positions: Map<String, Value>,
}

impl Stored {
    fn from_summary(snapshot: &str, summary: &Summary) -> Stored {
        Stored {
            snapshot: snapshot.to_string(),
            engine: summary.begin.engine.clone(),
            host: summary.begin.host.clone(),
            source: summary.begin.source.clone(),
            stream_id: summary.stream_id.clone(),
            started: summary.begin.started.clone(),
            positions: summary.begin.positions.clone(),
            end_positions: summary.end_positions.clone(),
        }
    }
}

/// Where the stored backups are read from.
pub enum Origin<'a> {
    /// A receipt file.
    Receipts(&'a Path),
    /// The repository's listing (needs a full key). A snapshot that cannot
    /// be read fails the reading: it could be the one that matters.
    Repository(&'a Repository),
}

/// The stored backups of `engine` that `origin` knows, in the order they
/// started (receipts are appended as ships finish, so a long full may
/// follow an incremental that started after it).
pub fn stored(origin: Origin<'_>, engine: &str) -> Result<Vec<Stored>> {
    let mut found = match origin {
        Origin::Receipts(path) => read_file(path)?,
        Origin::Repository(repo) => {
            let listing = crate::listing::list(repo)?;
            listing.refuse_damaged("a stored backup that later backups or purges depend on")?;
            listing.readable.iter().map(|(id, summary)| Stored::from_summary(id, summary)).collect()
        }
    };
    found.retain(|backup| backup.engine == engine);
    found.sort_by_cached_key(|backup| crate::units::stored_time(&backup.started));
    Ok(found)
}

/// Every receipt line of the file at `path`.
fn read_file(path: &Path) -> Result<Vec<Stored>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io(format!("cannot read receipt '{}'", path.display()), e))?;
    let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    lines
        .map(|(number, line)| {
            serde_json::from_str(line).map_err(|e| {
                Error::usage(format!("receipt '{}' line {} is not a ship receipt: {e}", path.display(), number + 1))
            })
        })
        .collect()
}
