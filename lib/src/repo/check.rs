//! `repo check`: verifies the repository's structure and, with
//! `--read-data`, every stored byte.

use std::collections::{HashMap, HashSet};

use super::pack::{decode_index, pack_name, IndexEntry, Location};
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
    /// Packs with no index (left by an interrupted ship; harmless, reclaimable).
    pub unindexed_packs: usize,
    /// Indexed packs no snapshot needs (after `forget`; reclaimable by `prune`).
    pub unneeded_packs: usize,
}

/// Checks the repository; problems are collected, not returned as errors.
pub fn check(repo: &Repository, read_data: bool) -> Result<Report> {
    repo.master()?;
    let mut report = Report::default();
    let storage = repo.storage();
    let mut by_pack: HashMap<String, Vec<IndexEntry>> = HashMap::new();
    let mut chunks: HashMap<[u8; 32], Location> = HashMap::new();
    for name in storage.list("index")? {
        let pack = name.rsplit('/').next().unwrap_or_default().to_string();
        match storage.read(&name).and_then(|bytes| decode_index(&bytes, &pack)) {
            Ok(entries) => {
                for entry in &entries {
                    chunks.insert(entry.id, entry.location.clone());
                }
                by_pack.insert(pack, entries);
            }
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    report.packs = by_pack.len();
    report.chunks = chunks.len();
    for (pack, entries) in &by_pack {
        let end = entries.iter().map(|e| e.location.offset + e.location.length as u64).max().unwrap_or(0);
        match storage.size(&pack_name(pack)) {
            Ok(size) if size >= end => {}
            Ok(size) => {
                report.problems.push(format!("pack {pack} is {size} bytes, shorter than its index says ({end})"))
            }
            Err(_) => report.problems.push(format!("pack {pack} is missing")),
        }
    }
    let indexed: HashSet<&String> = by_pack.keys().collect();
    report.unindexed_packs = storage
        .list("data")?
        .iter()
        .filter(|name| !indexed.contains(&name.rsplit('/').next().unwrap_or_default().to_string()))
        .count();
    let mut needed = HashSet::new();
    for name in storage.list("snapshots")? {
        report.snapshots += 1;
        let id = name.rsplit('/').next().unwrap_or_default();
        // A snapshot `repo forget` removed while it was being read is not a problem.
        if let Err(e) = check_snapshot(repo, id, &chunks, &mut needed) {
            if storage.exists(&name)? {
                report.problems.push(e);
            }
        }
    }
    report.unneeded_packs = by_pack.keys().filter(|pack| !needed.contains(*pack)).count();
    if read_data {
        let master = repo.master()?;
        let opener = ChunkOpener::new(master);
        let ids = ChunkIdKey::for_key(&master.write_key());
        for (pack, entries) in &by_pack {
            if let Err(problem) = read_pack(repo, pack, entries, &opener, &ids) {
                report.problems.push(problem);
            }
        }
    }
    Ok(report)
}

/// Authenticates a snapshot's summary and skeleton and checks every chunk it needs is indexed.
fn check_snapshot(
    repo: &Repository,
    id: &str,
    chunks: &HashMap<[u8; 32], Location>,
    needed: &mut HashSet<String>,
) -> std::result::Result<(), String> {
    let fail = |e: crate::Error| format!("snapshot {id}: {e}");
    let Some(opened) = repo.open_snapshot(id).map_err(|e| e.to_string())? else { return Ok(()) };
    // Every frame authenticates, chunk references included (through the chain).
    let master = repo.master().map_err(|e| e.to_string())?;
    let mut decryptor = Decryptor::for_skeletons(Secret::Key(master.duplicate()));
    let mut reader = opened.skeleton(repo.storage(), id).map_err(fail)?;
    while let Some(item) = reader.next_item().map_err(fail)? {
        match &item {
            Item::Start(stream) => reader.get_ref().check_stream(stream).map_err(fail)?,
            Item::Frame(frame) if frame.kind == Kind::ChunkRef => {
                let chunk = frame.chunk_ref_id().map_err(fail)?;
                let Some(location) = chunks.get(&chunk) else {
                    return Err(format!("snapshot {id} needs chunk {} which no index lists", hex::encode(chunk)));
                };
                needed.insert(location.pack.to_string());
            }
            Item::Frame(_) => {}
        }
        run_inline(&mut decryptor, item).map_err(fail)?;
    }
    Ok(())
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
