//! `repo prune`: reclaims packs no snapshot needs, safely beside running
//! backups, without trusting any host's clock.
//!
//! Deletion takes two runs. The first marks each pack no snapshot needs
//! (`pending/<pack>`); from then on new backups no longer deduplicate against
//! its chunks. A later run deletes a pack that is still not needed once its
//! mark is older than the grace period. Ages are judged by the storage's own
//! clock: the modification time the storage gives the mark, against that of
//! a probe object the run writes (after listing the marks) and removes. A mark
//! dated after the probe (the storage's clock went back, or someone changed
//! it) is dated anew. Packs without an index (a ship still running, or one
//! that was interrupted) go through the same two steps.
//!
//! A snapshot needs chunks, not packs: of several packs holding a needed
//! chunk, one is kept ([`kept_packs`]), and the others are reclaimed like
//! unneeded packs, so a chunk stored again while its first pack was marked
//! ends with one copy.
//!
//! Before deleting, a run writes a deletion record (`pending/deleting-<id>`)
//! naming the packs it is about to delete, then reads the snapshots again and
//! keeps any pack a snapshot stored meanwhile needs. `ship` checks the records
//! and the packs its snapshot needs both before and after storing the
//! snapshot (see [`super::ship`]), so a ship and a prune never both succeed
//! with a pack the snapshot needs deleted. docs/REPOSITORY.md gives the
//! argument.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::pack::{decode_index, is_pack_name, pack_name};
use super::quarantine::{self, Quarantine};
use super::snapshot;
use super::storage::{Listed, Storage};
use super::verify::ChunkVerifier;
use super::Repository;
use crate::error::{Error, Result};
use crate::format::Kind;
use crate::keys::MasterKey;

/// The folder of marks, deletion records and clock probes.
const PENDING: &str = "pending";
/// How a deletion record's name starts (then 32 random hex digits).
const RECORD: &str = "deleting-";
/// How a clock probe's name starts (then 32 random hex digits).
const PROBE: &str = "probe-";

/// What a prune run did.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Packs found not needed and marked in this run.
    pub marked: usize,
    /// Packs found not needed only because every chunk in them that a
    /// snapshot needs is also held by a pack that is kept (copies); they are
    /// also counted as marked, waiting or deleted.
    pub duplicates: usize,
    /// Packs deleted in this run.
    pub deleted: usize,
    /// Bytes those packs held.
    pub freed_bytes: u64,
    /// Copies kept in place of a duplicate pack's chunks that did not verify
    /// when read before deleting it (forged by a write-only key, or damaged):
    /// quarantined, and the duplicate stays, so the next run keeps it instead.
    pub quarantined: usize,
    /// Marked packs that became needed again and were unmarked.
    pub unmarked: usize,
    /// Marked packs still within their grace period (by the storage's clock).
    pub waiting: usize,
    /// Marks dated after the storage's present time, dated anew (their grace
    /// period starts now): the storage's clock went back, or they were changed.
    pub future_marks: usize,
    /// Marks of packs that no longer exist (left by an interrupted prune), removed.
    pub stale_marks: usize,
    /// Deletion records older than the grace period (left by an interrupted prune), removed.
    pub stale_records: usize,
    /// This host's clock minus the storage's, in seconds (informational: ages
    /// are judged by the storage's clock alone).
    pub clock_offset_seconds: i64,
}

/// The last part of an object name: a pack's or a snapshot's ID.
fn object_id(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or_default()
}

/// The name of a pack's mark.
fn mark_name(pack: &str) -> String {
    format!("{PENDING}/{pack}")
}

/// 16 random bytes in hex, for the names of records and probes.
fn random_name() -> String {
    let mut id = [0u8; 16];
    crate::random::fill(&mut id);
    hex::encode(id)
}

/// What `pending/` holds.
#[derive(Debug, Default)]
pub struct Pending {
    /// Marked packs, with when the storage wrote each mark.
    pub marks: HashMap<String, Option<DateTime<Utc>>>,
    /// Deletion records of prune runs deleting now (or interrupted), as listed.
    pub records: Vec<Listed>,
    /// Clock probes of prune runs, as listed (a killed run can leave one).
    probes: Vec<Listed>,
}

/// Lists `pending/`: marks, deletion records and clock probes.
pub fn pending(storage: &dyn Storage) -> Result<Pending> {
    let mut found = Pending::default();
    for object in storage.list_detailed(PENDING)? {
        let id = object_id(&object.name);
        if is_pack_name(id) {
            found.marks.insert(id.to_string(), object.modified);
        } else if id.starts_with(RECORD) {
            found.records.push(object);
        } else if id.starts_with(PROBE) {
            found.probes.push(object);
        }
    }
    Ok(found)
}

/// Packs currently marked for deletion.
pub fn marked(storage: &dyn Storage) -> Result<HashSet<String>> {
    Ok(pending(storage)?.marks.into_keys().collect())
}

/// The packs that the deletion records name: being deleted by a prune running
/// now, or left by one that was interrupted.
pub fn being_deleted(storage: &dyn Storage, records: &[Listed]) -> Result<HashSet<String>> {
    let mut packs = HashSet::new();
    for record in records {
        // A record removed since it was listed: that run is done.
        let Some(bytes) = storage.read_if_exists(&record.name)? else { continue };
        packs.extend(String::from_utf8_lossy(&bytes).lines().filter(|l| is_pack_name(l)).map(str::to_string));
    }
    Ok(packs)
}

/// Which packs to keep: for every chunk some snapshot needs, one pack that
/// holds it. `needed` maps each indexed pack to the needed chunks it holds.
/// Unmarked packs go first, then those holding more needed chunks, then by
/// name: of two copies the one on its way out goes, and runs choose alike.
pub fn kept_packs<'a>(needed: &'a HashMap<String, Vec<[u8; 32]>>, marked: &HashSet<&str>) -> HashSet<&'a str> {
    let mut order: Vec<(&String, &Vec<[u8; 32]>)> = needed.iter().filter(|(_, ids)| !ids.is_empty()).collect();
    order.sort_by_key(|(pack, ids)| (marked.contains(pack.as_str()), Reverse(ids.len()), *pack));
    let mut covered = HashSet::new();
    let mut kept = HashSet::new();
    for (pack, ids) in order {
        if ids.iter().any(|id| !covered.contains(id)) {
            kept.insert(pack.as_str());
            covered.extend(ids.iter().copied());
        }
    }
    kept
}

/// Every chunk ID some snapshot refers to.
fn referenced(repo: &Repository) -> Result<HashSet<[u8; 32]>> {
    let mut ids = HashSet::new();
    for name in repo.storage().list("snapshots")? {
        let id = object_id(&name);
        // A snapshot removed by `forget` since it was listed is simply gone.
        let Some(opened) = repo.open_snapshot(id)? else { continue };
        let walked = opened.skeleton(repo.storage(), id).and_then(|skeleton| {
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

/// For every indexed pack, the chunks in `in_use` it holds. A copy in
/// `quarantine` (found forged or damaged) holds nothing: it is never the
/// copy kept, and a pack of such copies goes once good copies are kept.
pub fn needed_by_pack(
    storage: &dyn Storage,
    in_use: &HashSet<[u8; 32]>,
    quarantine: &Quarantine,
) -> Result<HashMap<String, Vec<[u8; 32]>>> {
    let mut needed = HashMap::new();
    for name in storage.list("index")? {
        let pack = object_id(&name);
        // An index another prune deleted since it was listed is simply gone.
        let Some(bytes) = storage.read_if_exists(&name)? else { continue };
        let entries = decode_index(&bytes, pack)?.into_iter();
        let ids = entries.map(|e| e.id).filter(|id| in_use.contains(id) && !quarantine.holds(id, pack)).collect();
        needed.insert(pack.to_string(), ids);
    }
    Ok(needed)
}

/// The storage's present time: when it wrote a probe object that this run
/// writes, finds in a listing, and removes.
pub fn storage_now(storage: &dyn Storage) -> Result<DateTime<Utc>> {
    let name = format!("{PENDING}/{PROBE}{}", random_name());
    storage.create(&name, b"repo prune reads the storage's clock\n")?;
    let listed = storage.list_detailed(PENDING).map(|all| all.into_iter().find(|o| o.name == name));
    storage.remove(&name)?;
    match listed? {
        Some(Listed { modified: Some(time), .. }) => Ok(time),
        Some(_) => Err(Error::other(
            "the storage gives no modification times, and repo prune judges ages by the storage's clock alone",
        )),
        None => Err(Error::other(format!("the clock probe '{name}' was not listed after it was written"))),
    }
}

/// How old an object is by the storage's clock at `now`.
enum Age {
    /// Dated after `now`.
    Future,
    /// This old.
    Old(chrono::Duration),
}

fn age(written: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<Age> {
    let written = written.ok_or_else(|| {
        Error::other("the storage gives no modification times, and repo prune judges ages by the storage's clock alone")
    })?;
    Ok(if written > now { Age::Future } else { Age::Old(now - written) })
}

/// Marks packs no snapshot needs, deletes those marked longer than `grace`
/// ago by the storage's clock, and unmarks packs needed again. With
/// `dry_run`, reports without changing anything but a clock probe it writes
/// and removes.
pub fn prune(repo: &Repository, grace: chrono::Duration, dry_run: bool) -> Result<Report> {
    let master = repo.master()?;
    let storage = repo.storage();
    let mut report = Report::default();
    let pending = pending(storage)?;
    let marks: HashSet<&str> = pending.marks.keys().map(String::as_str).collect();
    // Snapshots are read before the packs are listed, so a pack a new snapshot
    // needs is either seen as needed or younger than this run.
    let in_use = referenced(repo)?;
    let mut quarantine = quarantine::load_genuine(storage, master)?.0;
    let needed = needed_by_pack(storage, &in_use, &quarantine)?;
    let kept = kept_packs(&needed, &marks);
    let stored: HashSet<String> =
        storage.list("data")?.iter().map(|n| object_id(n).to_string()).filter(|p| is_pack_name(p)).collect();
    let mut candidates = Vec::new();
    for (pack, ids) in &needed {
        if !kept.contains(pack.as_str()) {
            report.duplicates += usize::from(!ids.is_empty());
            candidates.push(pack.as_str());
        } else if marks.contains(pack.as_str()) {
            report.unmarked += 1;
            if !dry_run {
                storage.remove(&mark_name(pack))?;
            }
        }
    }
    candidates.extend(stored.iter().map(String::as_str).filter(|pack| !needed.contains_key(*pack)));
    candidates.sort_unstable();
    // A mark whose pack has neither index nor data: a prune was stopped between deleting them.
    for pack in marks.iter().filter(|pack| !needed.contains_key(**pack) && !stored.contains(**pack)) {
        report.stale_marks += 1;
        if !dry_run {
            storage.remove(&mark_name(pack))?;
        }
    }
    let mut judged = Vec::new();
    for pack in candidates {
        match pending.marks.get(pack) {
            Some(written) => judged.push((pack, *written)),
            None => {
                report.marked += 1;
                if !dry_run {
                    // The time inside is the marking host's, for people; ages come from the storage.
                    storage.create(&mark_name(pack), Utc::now().to_rfc3339().as_bytes())?;
                }
            }
        }
    }
    // Written after the marks were listed: no mark judged here is newer, unless the storage's clock went back.
    let now = storage_now(storage)?;
    report.clock_offset_seconds = (Utc::now() - now).num_seconds();
    for leftover in pending.records.iter().chain(&pending.probes) {
        if matches!(age(leftover.modified, now)?, Age::Old(old) if old >= grace) {
            report.stale_records += usize::from(object_id(&leftover.name).starts_with(RECORD));
            if !dry_run {
                storage.remove(&leftover.name)?;
            }
        }
    }
    let mut expired = Vec::new();
    for (pack, written) in judged {
        match age(written, now)? {
            Age::Future => {
                report.future_marks += 1;
                report.waiting += 1;
                if !dry_run {
                    // Dated anew, so its grace period starts now.
                    storage.remove(&mark_name(pack))?;
                    storage.create(&mark_name(pack), Utc::now().to_rfc3339().as_bytes())?;
                }
            }
            Age::Old(old) if old < grace => report.waiting += 1,
            Age::Old(_) => expired.push((pack, written)),
        }
    }
    if dry_run {
        for (pack, _) in &expired {
            report.deleted += 1;
            report.freed_bytes += storage.size(&pack_name(pack)).unwrap_or(0);
        }
        return Ok(report);
    }
    if !expired.is_empty() {
        // Every needed chunk an index lists is held by a kept pack, which this run does not delete.
        let keepers: HashMap<[u8; 32], &str> =
            kept.iter().flat_map(|pack| needed[*pack].iter().map(move |id| (*id, *pack))).collect();
        delete(repo, &expired, &keepers, &mut quarantine, &mut report)?;
    }
    Ok(report)
}

/// Deletes expired packs (each with when the storage wrote its mark) unless
/// a snapshot needs a chunk only they hold, or one whose kept copy does not
/// verify; `keepers` name the kept pack of each needed chunk. Writes the
/// deletion record first and removes it last, whatever happens between.
fn delete(
    repo: &Repository,
    expired: &[(&str, Option<DateTime<Utc>>)],
    keepers: &HashMap<[u8; 32], &str>,
    quarantine: &mut Quarantine,
    report: &mut Report,
) -> Result<()> {
    let storage = repo.storage();
    let record = format!("{PENDING}/{RECORD}{}", random_name());
    let names: String = expired.iter().map(|(pack, _)| format!("{pack}\n")).collect();
    storage.create(&record, names.as_bytes())?;
    let deleted = delete_recorded(repo, &record, expired, keepers, quarantine, report);
    // Once this run deletes no more, its record protects nothing: what it deleted is gone.
    let removed = storage.remove(&record);
    deleted.and(removed)
}

fn delete_recorded(
    repo: &Repository,
    record: &str,
    expired: &[(&str, Option<DateTime<Utc>>)],
    keepers: &HashMap<[u8; 32], &str>,
    quarantine: &mut Quarantine,
    report: &mut Report,
) -> Result<()> {
    let storage = repo.storage();
    let mut kept_copies = KeptCopies::new(repo.master()?);
    // Read again after the record exists: a snapshot stored before the record
    // is seen here; a ship that stores one later finds the record when it checks.
    let in_use = referenced(repo)?;
    let now = pending(storage)?;
    // Two runs each deleting a copy the other keeps could leave none: a copy is
    // deleted only while no other run is deleting (each run writes its record
    // before it looks for others', so of two at once at least one sees the other).
    let alone = now.records.iter().all(|r| r.name == record);
    for &(pack, written) in expired {
        let index = format!("index/{pack}");
        let entries = match storage.read_if_exists(&index)? {
            Some(bytes) => decode_index(&bytes, pack)?,
            None => Vec::new(),
        };
        let needed = entries.iter().any(|e| in_use.contains(&e.id));
        let only_copy = entries.iter().any(|e| in_use.contains(&e.id) && !keepers.contains_key(&e.id));
        // The mark must be the one judged: gone means a backup took the pack back, newer means marked anew.
        let same_mark = now.marks.get(pack).is_some_and(|m| *m == written);
        if only_copy || (needed && !alone) || !same_mark {
            report.waiting += 1;
            continue;
        }
        let duplicated: Vec<[u8; 32]> = entries.iter().map(|e| e.id).filter(|id| in_use.contains(id)).collect();
        if !kept_copies.verify(storage, &duplicated, keepers, quarantine, report)? {
            report.waiting += 1;
            continue;
        }
        report.deleted += 1;
        report.freed_bytes += storage.size(&pack_name(pack)).unwrap_or(0);
        // Index first, so no reader learns of chunks whose pack is going.
        storage.remove(&index)?;
        storage.remove(&pack_name(pack))?;
        storage.remove(&mark_name(pack))?;
    }
    Ok(())
}

/// The kept copies of duplicated chunks, read and verified before a
/// duplicate goes: a write-only key can store a forged copy under a chunk's
/// ID, and the genuine copy must not be deleted in its favour. Each kept pack
/// is read once per run.
struct KeptCopies<'a> {
    master: &'a MasterKey,
    verifier: ChunkVerifier,
    /// For each kept pack read: what is wrong with each copy it holds (`None`: good).
    read: HashMap<String, HashMap<[u8; 32], Option<String>>>,
}

impl<'a> KeptCopies<'a> {
    fn new(master: &'a MasterKey) -> KeptCopies<'a> {
        KeptCopies { master, verifier: ChunkVerifier::new(master), read: HashMap::new() }
    }

    /// Whether the kept copy of each chunk in `ids` verifies. One that does
    /// not is quarantined (so the next run keeps another copy) and counted.
    fn verify(
        &mut self,
        storage: &dyn Storage,
        ids: &[[u8; 32]],
        keepers: &HashMap<[u8; 32], &str>,
        quarantine: &mut Quarantine,
        report: &mut Report,
    ) -> Result<bool> {
        let mut all_good = true;
        for id in ids {
            let pack = keepers[id];
            if !self.read.contains_key(pack) {
                let copies = self.read_pack(storage, pack)?;
                self.read.insert(pack.to_string(), copies);
            }
            match self.read[pack].get(id) {
                Some(None) => {}
                Some(Some(flaw)) => {
                    all_good = false;
                    if !quarantine.holds(id, pack) {
                        quarantine.add(storage, self.master, id, pack, flaw)?;
                        report.quarantined += 1;
                    }
                }
                // Gone since it was listed (another prune): no copy is known good.
                None => all_good = false,
            }
        }
        Ok(all_good)
    }

    /// The copies `pack` holds by its index, each verified; none if it is gone.
    fn read_pack(&self, storage: &dyn Storage, pack: &str) -> Result<HashMap<[u8; 32], Option<String>>> {
        let Some(index) = storage.read_if_exists(&format!("index/{pack}"))? else { return Ok(HashMap::new()) };
        let entries = decode_index(&index, pack)?;
        let Some(bytes) = storage.read_if_exists(&pack_name(pack))? else { return Ok(HashMap::new()) };
        let flaws = self.verifier.verify_in_pack(&bytes, &entries);
        Ok(entries.iter().map(|e| e.id).zip(flaws).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_of_each_needed_chunk_is_kept_preferring_unmarked_and_fuller_packs() {
        let pack = |c: char| c.to_string().repeat(64);
        let needed: HashMap<String, Vec<[u8; 32]>> = [
            (pack('a'), vec![[1; 32], [2; 32]]),
            (pack('b'), vec![[1; 32], [2; 32]]),
            (pack('c'), vec![[2; 32], [3; 32]]),
            (pack('d'), vec![[3; 32]]),
            (pack('e'), vec![]),
        ]
        .into_iter()
        .collect();
        let (a, b, c) = (pack('a'), pack('b'), pack('c'));
        // Equal copies: by name; c still holds chunk 3 alone among the fuller packs.
        let kept = kept_packs(&needed, &HashSet::new());
        assert_eq!(kept, HashSet::from([a.as_str(), c.as_str()]));
        // A marked copy gives way to an unmarked one.
        let kept = kept_packs(&needed, &HashSet::from([a.as_str()]));
        assert_eq!(kept, HashSet::from([b.as_str(), c.as_str()]));
        // A pack that is the only holder of a needed chunk is kept even when marked.
        let kept = kept_packs(&needed, &HashSet::from([a.as_str(), b.as_str(), c.as_str()]));
        assert!(kept.contains(pack('d').as_str()) && kept.len() == 2, "{kept:?}");
    }
}
