//! `repo check`: verifies the repository's structure and, with
//! `--read-data`, every stored byte.
//!
//! It may run beside `ship` and `repo prune`: an index or pack that prune
//! deletes while check reads (prune deletes the index first, so a pack found
//! gone whose index is gone too) is not a problem, and a snapshot stored
//! after the indexes were read is checked against the indexes read again.

use std::collections::{HashMap, HashSet};

use super::pack::{decode_index, is_pack_name, pack_name, IndexEntry, Location};
use super::prune;
use super::Repository;
use crate::codec::chunk::ChunkIdKey;
use crate::codec::crypt::{ChunkOpener, Decryptor};
use crate::codec::squeeze::Recode;
use crate::error::Result;
use crate::filter::{run_inline, Job};
use crate::format::{Encodings, Frame, Kind, CHUNK_ID_LEN};
use crate::keys::Secret;
use crate::reader::Item;

/// What a check found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// One line per problem; empty when the repository is sound.
    pub problems: Vec<String>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs listed in indexes.
    pub packs: usize,
    /// Chunks listed in indexes.
    pub chunks: usize,
    /// Packs with no index (left by an interrupted ship or prune; harmless, reclaimable).
    pub unindexed_packs: usize,
    /// Indexed packs `prune` reclaims: those no snapshot needs (after
    /// `forget`), and copies (every needed chunk in them is also held by a pack
    /// that is kept). 0 while a snapshot cannot be read: `prune` refuses to run then.
    pub unneeded_packs: usize,
    /// Marks of packs that no longer exist (left by an interrupted prune; the next prune removes them).
    pub stale_marks: usize,
}

/// Checks the repository; problems are collected, not returned as errors.
pub fn check(repo: &Repository, read_data: bool) -> Result<Report> {
    repo.master()?;
    let mut report = Report::default();
    let storage = repo.storage();
    let pending = prune::pending(storage)?;
    let mut by_pack = read_indexes(repo, &HashMap::new(), &mut report.problems)?;
    let mut gone = Vec::new();
    for (pack, entries) in &by_pack {
        let end = entries.iter().map(|e| e.location.offset + e.location.length as u64).max().unwrap_or(0);
        match storage.size(&pack_name(pack)) {
            Ok(size) if size >= end => {}
            Ok(size) => {
                report.problems.push(format!("pack {pack} is {size} bytes, shorter than its index says ({end})"))
            }
            // `prune` deletes a pack's index first: both gone is a prune at work, not damage.
            Err(_) if !storage.exists(&format!("index/{pack}"))? => gone.push(pack.clone()),
            Err(_) => report.problems.push(format!("pack {pack} is missing")),
        }
    }
    for pack in gone {
        by_pack.remove(&pack);
    }
    let stored: HashSet<String> =
        storage.list("data")?.iter().map(|n| object_id(n).to_string()).filter(|p| is_pack_name(p)).collect();
    report.unindexed_packs = stored.iter().filter(|pack| !by_pack.contains_key(*pack)).count();
    report.stale_marks =
        pending.marks.keys().filter(|pack| !by_pack.contains_key(*pack) && !stored.contains(*pack)).count();
    let mut chunks = chunk_map(&by_pack);
    let mut needed = HashSet::new();
    let mut unlisted = Vec::new();
    let mut unreadable = false;
    for name in storage.list("snapshots")? {
        report.snapshots += 1;
        let id = object_id(&name);
        // A snapshot `repo forget` removed while it was being read is not a problem.
        match check_snapshot(repo, id, &chunks, &mut needed) {
            Ok(missing) if missing.is_empty() => {}
            Ok(missing) => unlisted.push((name.clone(), missing)),
            Err(e) if storage.exists(&name)? => {
                unreadable = true;
                report.problems.push(e)
            }
            Err(_) => {}
        }
    }
    if !unlisted.is_empty() {
        // Snapshots stored after the indexes were read may need packs stored after that too.
        by_pack.extend(read_indexes(repo, &by_pack, &mut report.problems)?);
        chunks = chunk_map(&by_pack);
        for (name, missing) in unlisted {
            let still: Vec<&[u8; 32]> = missing.iter().filter(|chunk| !chunks.contains_key(*chunk)).collect();
            if let Some(first) = still.first().filter(|_| storage.exists(&name).unwrap_or(true)) {
                report.problems.push(format!(
                    "snapshot {} needs {} chunks which no index lists (the first is {})",
                    object_id(&name),
                    still.len(),
                    hex::encode(first)
                ));
            }
        }
    }
    report.packs = by_pack.len();
    report.chunks = chunks.len();
    if !unreadable {
        let needed_by_pack: HashMap<String, Vec<[u8; 32]>> = by_pack
            .iter()
            .map(|(pack, entries)| {
                (pack.clone(), entries.iter().map(|e| e.id).filter(|id| needed.contains(id)).collect())
            })
            .collect();
        let marks: HashSet<&str> = pending.marks.keys().map(String::as_str).collect();
        report.unneeded_packs = by_pack.len() - prune::kept_packs(&needed_by_pack, &marks).len();
    }
    if read_data {
        let master = repo.master()?;
        let opener = ChunkOpener::new(master);
        let ids = ChunkIdKey::for_key(&master.write_key());
        for (pack, entries) in &by_pack {
            if let Err(problem) = read_pack(repo, pack, entries, &opener, &ids) {
                // Deleted by `prune` since the indexes were read (index first): not a problem.
                if storage.exists(&format!("index/{pack}"))? {
                    report.problems.push(problem);
                }
            }
        }
    }
    Ok(report)
}

/// The last part of an object name: a pack's or a snapshot's ID.
fn object_id(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or_default()
}

/// Reads and decodes every index not in `known`; a damaged one is a problem,
/// one deleted since it was listed is simply gone.
fn read_indexes(
    repo: &Repository,
    known: &HashMap<String, Vec<IndexEntry>>,
    problems: &mut Vec<String>,
) -> Result<HashMap<String, Vec<IndexEntry>>> {
    let mut by_pack = HashMap::new();
    for name in repo.storage().list("index")? {
        let pack = object_id(&name);
        if known.contains_key(pack) {
            continue;
        }
        let read = repo.storage().read_if_exists(&name);
        match read.and_then(|bytes| bytes.map(|bytes| decode_index(&bytes, pack)).transpose()) {
            Ok(Some(entries)) => {
                by_pack.insert(pack.to_string(), entries);
            }
            Ok(None) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    Ok(by_pack)
}

/// Where each chunk the indexes list is.
fn chunk_map(by_pack: &HashMap<String, Vec<IndexEntry>>) -> HashMap<[u8; 32], Location> {
    by_pack.values().flatten().map(|entry| (entry.id, entry.location.clone())).collect()
}

/// Authenticates a snapshot's summary and skeleton, adds every chunk it needs
/// to `needed`, and returns those that `chunks` does not list.
fn check_snapshot(
    repo: &Repository,
    id: &str,
    chunks: &HashMap<[u8; 32], Location>,
    needed: &mut HashSet<[u8; 32]>,
) -> std::result::Result<Vec<[u8; 32]>, String> {
    let fail = |e: crate::Error| format!("snapshot {id}: {e}");
    let mut missing = Vec::new();
    let Some(opened) = repo.open_snapshot(id).map_err(|e| e.to_string())? else { return Ok(missing) };
    // Every frame authenticates, chunk references included (through the chain).
    let master = repo.master().map_err(|e| e.to_string())?;
    let mut decryptor = Decryptor::for_skeletons(Secret::Key(master.duplicate()));
    let mut reader = opened.skeleton(repo.storage(), id).map_err(fail)?;
    while let Some(item) = reader.next_item().map_err(fail)? {
        match &item {
            Item::Start(stream) => reader.get_ref().check_stream(stream).map_err(fail)?,
            Item::Frame(frame) if frame.kind == Kind::ChunkRef => {
                let chunk = frame.chunk_ref_id().map_err(fail)?;
                // Walked to the end all the same: `prune` keeps every chunk a snapshot names.
                if !chunks.contains_key(&chunk) {
                    missing.push(chunk);
                }
                needed.insert(chunk);
            }
            Item::Frame(_) => {}
        }
        run_inline(&mut decryptor, item).map_err(fail)?;
    }
    Ok(missing)
}

/// Reads a pack back: its hash, then every chunk decrypted, decompressed and re-hashed to its ID.
fn read_pack(
    repo: &Repository,
    pack: &str,
    entries: &[IndexEntry],
    opener: &ChunkOpener,
    ids: &ChunkIdKey,
) -> std::result::Result<(), String> {
    let bytes = repo.storage().read(&pack_name(pack)).map_err(|e| e.to_string())?;
    if blake3::hash(&bytes).to_hex().as_str() != pack {
        return Err(format!("pack {pack} is damaged (its content does not match its name)"));
    }
    for entry in entries {
        let short = hex::encode(&entry.id[..8]);
        let start = entry.location.offset as usize;
        let payload = bytes
            .get(start..start + entry.location.length as usize)
            .ok_or_else(|| format!("pack {pack} is shorter than its index says"))?;
        let frame = Frame { kind: Kind::Data, encodings: entry.location.encodings, payload: payload.to_vec() };
        let opened = opener.open(frame).map_err(|_| format!("chunk {short} in pack {pack} fails authentication"))?;
        let plain = if opened.encodings.has(Encodings::ZSTD) {
            Recode::Decompress(opened).run().map_err(|e| format!("chunk {short} in pack {pack}: {e}"))?
        } else {
            opened
        };
        if ids.id(&plain.payload[CHUNK_ID_LEN..]) != entry.id {
            return Err(format!("chunk {short} in pack {pack} does not match its ID"));
        }
    }
    Ok(())
}
