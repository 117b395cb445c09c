//! `repo prune`: reclaims packs no snapshot refers to, safely beside running
//! backups.
//!
//! Deletion takes two runs. The first marks each unreferenced pack
//! (`pending/<pack>`, holding the time); from then on new backups no longer
//! deduplicate against its chunks. A later run deletes a pack that is still
//! unreferenced once its mark is older than the grace period, which must be
//! longer than any backup runs: only a backup that loaded the index before the
//! mark could still refer to the pack, and such a backup has finished by then
//! (if it did refer to the pack, the pack is referenced and its mark is
//! dropped instead). Packs without an index (a ship still running, or one
//! that was interrupted) go through the same two steps.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::pack::{decode_index, is_pack_name, pack_name};
use super::snapshot;
use super::storage::Storage;
use super::Repository;
use crate::error::Result;
use crate::format::Kind;

/// What a prune run did.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Packs found unreferenced and marked in this run.
    pub marked: usize,
    /// Packs deleted in this run.
    pub deleted: usize,
    /// Bytes those packs held.
    pub freed_bytes: u64,
    /// Marked packs that became referenced again and were unmarked.
    pub unmarked: usize,
    /// Marked packs still within their grace period.
    pub waiting: usize,
}

/// The last part of an object name: a pack's or a snapshot's ID.
fn object_id(name: &str) -> String {
    name.rsplit('/').next().unwrap_or_default().to_string()
}

/// Packs currently marked for deletion.
pub fn marked(storage: &dyn Storage) -> Result<HashSet<String>> {
    Ok(storage.list("pending")?.iter().map(|n| object_id(n)).collect())
}

/// Every chunk ID some snapshot refers to.
fn referenced(repo: &Repository) -> Result<HashSet<[u8; 32]>> {
    let mut ids = HashSet::new();
    for name in repo.storage().list("snapshots")? {
        let id = object_id(&name);
        // A snapshot removed by `forget` since it was listed is simply gone.
        let Some(opened) = repo.open_snapshot(&id)? else { continue };
        let walked = opened.skeleton(repo.storage(), &id).and_then(|skeleton| {
            snapshot::walk(skeleton, |frame| {
                if frame.kind == Kind::ChunkRef {
                    ids.insert(frame.chunk_ref_id()?);
                }
                Ok(())
            })
        });
        if walked.is_err() && !repo.storage().exists(&name)? {
            continue;
        }
        walked?;
    }
    Ok(ids)
}

/// Marks unreferenced packs, deletes those marked longer than `grace` ago, and
/// unmarks packs in use again. With `dry_run`, reports without changing anything.
pub fn prune(repo: &Repository, grace: chrono::Duration, now: DateTime<Utc>, dry_run: bool) -> Result<Report> {
    repo.master()?;
    let storage = repo.storage();
    let mut report = Report::default();
    let marks = marked(storage)?;
    // Snapshots are read before the packs are listed, so a pack a new snapshot needs is either listed as referenced or is younger than this run.
    let in_use = referenced(repo)?;
    let mut unreferenced = Vec::new();
    let mut expired = Vec::new();
    let mut indexed = HashSet::new();
    for name in storage.list("index")? {
        let pack = object_id(&name);
        let entries = decode_index(&storage.read(&name)?, &pack)?;
        indexed.insert(pack.clone());
        if entries.iter().all(|e| !in_use.contains(&e.id)) {
            unreferenced.push(pack);
        } else if marks.contains(&pack) {
            report.unmarked += 1;
            if !dry_run {
                storage.remove(&format!("pending/{pack}"))?;
            }
        }
    }
    for name in storage.list("data")? {
        let pack = object_id(&name);
        if is_pack_name(&pack) && !indexed.contains(&pack) {
            unreferenced.push(pack);
        }
    }
    for pack in unreferenced {
        let mark = format!("pending/{pack}");
        if !marks.contains(&pack) {
            report.marked += 1;
            if !dry_run {
                storage.create(&mark, Utc::now().to_rfc3339().as_bytes())?;
            }
            continue;
        }
        let since = storage
            .read_if_exists(&mark)?
            .and_then(|t| String::from_utf8(t).ok())
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok());
        // A mark that is gone (a backup took the pack back) or unreadable never counts as expired.
        if since.is_none_or(|t| now - t.with_timezone(&Utc) < grace) {
            report.waiting += 1;
            continue;
        }
        expired.push(pack);
    }
    // Snapshots stored while this run read the others may need an expired pack: look again.
    let in_use = if expired.is_empty() { in_use } else { referenced(repo)? };
    for pack in expired {
        let mark = format!("pending/{pack}");
        let entries = match storage.read_if_exists(&format!("index/{pack}"))? {
            Some(bytes) => decode_index(&bytes, &pack)?,
            None => Vec::new(),
        };
        if entries.iter().any(|e| in_use.contains(&e.id)) || !storage.exists(&mark)? {
            report.waiting += 1;
            continue;
        }
        report.deleted += 1;
        report.freed_bytes += storage.size(&pack_name(&pack)).unwrap_or(0);
        if !dry_run {
            // Index first, so no reader learns of chunks whose pack is going.
            storage.remove(&format!("index/{pack}"))?;
            storage.remove(&pack_name(&pack))?;
            storage.remove(&mark)?;
        }
    }
    Ok(report)
}
