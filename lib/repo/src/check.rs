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
use super::quarantine::{self, Quarantine};
use super::storage::Storage;
use super::verify::ChunkVerifier;
use super::Repository;
use crate::chain::Chain;
use crate::crypt::Decryptor;
use crate::error::Result;
use crate::filter::run_inline;
use crate::format::Kind;
use crate::keys::{MasterKey, Secret};
use crate::listing::{history, history_of};
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
    /// Stored chunk copies in quarantine: found forged or damaged by `--read-data`
    /// (now or before), never deduplicated against, read by `fetch` only when no
    /// other copy verifies.
    pub quarantined: usize,
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
    report.problems.extend(broken_links(repo)?);
    report.packs = by_pack.len();
    report.chunks = chunks.len();
    let master = repo.master()?;
    let (mut quarantine, planted) = quarantine::load_genuine(storage, master)?;
    if !unreadable {
        // As `prune` counts them: a quarantined copy holds nothing.
        let needed_by_pack: HashMap<String, Vec<[u8; 32]>> = by_pack
            .iter()
            .map(|(pack, entries)| {
                let held = entries.iter().map(|e| e.id).filter(|id| needed.contains(id) && !quarantine.holds(id, pack));
                (pack.clone(), held.collect())
            })
            .collect();
        let marks: HashSet<&str> = pending.marks.keys().map(String::as_str).collect();
        report.unneeded_packs = by_pack.len() - prune::kept_packs(&needed_by_pack, &marks).len();
    }
    let mut found_bad = HashMap::new();
    if read_data {
        let verifier = ChunkVerifier::new(master);
        for (pack, entries) in &by_pack {
            match read_pack(repo, pack, entries, &verifier) {
                Ok((damage, chunks)) => {
                    report.problems.extend(damage);
                    for (entry, flaw) in entries.iter().zip(chunks) {
                        match flaw {
                            Some(flaw) => {
                                found_bad.insert((entry.id, pack.clone()), flaw);
                            }
                            // A copy quarantined before that verifies now is taken out.
                            None if quarantine.holds(&entry.id, pack) => quarantine.lift(storage, &entry.id, pack)?,
                            None => {}
                        }
                    }
                }
                // Deleted by `prune` since the indexes were read (index first): not a problem.
                Err(problem) if storage.exists(&format!("index/{pack}"))? => report.problems.push(problem),
                Err(_) => {}
            }
        }
        // The quarantine of packs that are gone goes with them.
        for (id, pack) in quarantine.copies() {
            if !by_pack.contains_key(&pack) && !stored.contains(&pack) {
                quarantine.lift(storage, &id, &pack)?;
            }
        }
    }
    for name in &planted {
        // Every copy was just verified: what a full key did not write goes.
        if read_data {
            storage.remove(name)?;
        }
        report.problems.push(format!(
            "{name} was not written by `repo check` with a full key (someone with access to the storage planted \
             it){}",
            if read_data { "; removed" } else { "; `repo check --read-data` removes it" }
        ));
    }
    report.problems.extend(quarantine_problems(storage, master, &by_pack, &needed, &mut quarantine, found_bad)?);
    report.quarantined = quarantine.copies().len();
    Ok(report)
}

/// Quarantines the copies `found_bad` names (chunk ID and pack, with what is
/// wrong); each one not quarantined before is a problem, saying whether a
/// good copy of the chunk is stored. Of the copies quarantined before, those
/// of a chunk some snapshot needs and no copy outside the quarantine holds
/// are problems too.
fn quarantine_problems(
    storage: &dyn Storage,
    master: &MasterKey,
    by_pack: &HashMap<String, Vec<IndexEntry>>,
    needed: &HashSet<[u8; 32]>,
    quarantine: &mut Quarantine,
    found_bad: HashMap<([u8; 32], String), String>,
) -> Result<Vec<String>> {
    let mut new = HashSet::new();
    for ((id, pack), flaw) in &found_bad {
        if !quarantine.holds(id, pack) {
            quarantine.add(storage, master, id, pack, flaw)?;
            new.insert((*id, pack.clone()));
        }
    }
    let copies = quarantine.copies();
    let ids: HashSet<[u8; 32]> = copies.iter().map(|(id, _)| *id).collect();
    // Where each quarantined chunk has a copy outside the quarantine.
    let mut good: HashMap<[u8; 32], &str> = HashMap::new();
    for (pack, entries) in by_pack {
        for entry in entries.iter().filter(|e| ids.contains(&e.id) && !quarantine.holds(&e.id, pack)) {
            good.insert(entry.id, pack);
        }
    }
    let mut problems = Vec::new();
    for (id, pack) in copies {
        let short = hex::encode(&id[..8]);
        let elsewhere = match good.get(&id) {
            Some(other) => format!("a good copy is in pack {other}"),
            None if needed.contains(&id) => {
                "no good copy is stored: snapshots that need it cannot be restored until a backup stores it again"
                    .to_string()
            }
            None => "no snapshot needs it".to_string(),
        };
        if new.contains(&(id, pack.clone())) {
            let flaw = &found_bad[&(id, pack.clone())];
            problems.push(format!(
                "chunk {short} in pack {pack} {flaw}; quarantined, so new backups store it again; {elsewhere}"
            ));
        } else if !good.contains_key(&id) && needed.contains(&id) {
            problems.push(format!(
                "chunk {short}: its copy in pack {pack} is quarantined as forged or damaged; {elsewhere}"
            ));
        }
    }
    Ok(problems)
}

/// Backups whose chain (see [`crate::chain`]) misses a link: the stream a
/// backup continues is not in the repository, and restores through it fail.
fn broken_links(repo: &Repository) -> Result<Vec<String>> {
    let listing = crate::listing::list(repo)?;
    let histories: HashSet<(&str, &str, &str)> = listing.readable.iter().map(|(_, s)| history_of(s)).collect();
    let mut problems = Vec::new();
    for key in histories {
        let history = history(&listing.readable, key);
        for member in history.members() {
            match history.to_backup(member.id) {
                Ok(Chain { broken: Some((id, parent)), .. }) if id == member.id => problems.push(format!(
                    "snapshot {id} continues stream {parent}, which the repository does not hold (forgotten, or \
                     never stored): restores through it fail; take a full backup"
                )),
                Ok(_) => {}
                Err(e) => {
                    problems.push(format!("snapshot {}: {e}: it cannot be restored; take a full backup", member.id))
                }
            }
        }
    }
    problems.sort();
    Ok(problems)
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

/// Reads a pack back: its hash (a mismatch is the first list's problem),
/// then every chunk, verified against its ID: in the second list, what is
/// wrong with each entry's copy, in order. Fails when the pack cannot be read.
fn read_pack(
    repo: &Repository,
    pack: &str,
    entries: &[IndexEntry],
    verifier: &ChunkVerifier,
) -> std::result::Result<(Vec<String>, Vec<Option<String>>), String> {
    let bytes = repo.storage().read(&pack_name(pack)).map_err(|e| e.to_string())?;
    let mut damage = Vec::new();
    if blake3::hash(&bytes).to_hex().as_str() != pack {
        damage.push(format!("pack {pack} is damaged (its content does not match its name)"));
    }
    let chunks = verifier.verify_in_pack(&bytes, entries);
    Ok((damage, chunks))
}
