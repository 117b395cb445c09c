//! What a repository holds and which of it a selection means: the listing
//! of snapshots (read from the local cache, the catalogue or the storage),
//! damaged ones included; `latest`, IDs and ID prefixes; histories (host,
//! engine, source) and the chains that restore them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::cache::HeaderCache;
use super::catalog;
use super::snapshot::{self, Summary};
use super::storage::{concurrently, Listed};
use super::Repository;
use crate::chain::{consistent_time, History, Member};
use crate::error::{Error, ErrorKind, Result};
use crate::units::stored_time;

/// Every snapshot in a repository: those whose summary opens, and those
/// whose summary does not (damaged, or forged), which are never left out
/// silently: a damaged snapshot could be the one a selection means.
#[derive(Debug, Default)]
pub struct Listing {
    /// Readable snapshots, ID and summary, oldest first.
    pub readable: Vec<(String, Summary)>,
    /// Snapshots that cannot be read, by ID.
    pub damaged: Vec<Damaged>,
    /// When the storage received each readable snapshot, by its own clock
    /// (not the backup host's), by ID; missing where the storage does not say.
    pub storage_times: HashMap<String, DateTime<Utc>>,
}

/// A snapshot whose summary cannot be read, or does not make sense.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damaged {
    /// The snapshot's ID (its object name).
    pub id: String,
    /// Why it cannot be read, e.g. "its content does not match its name".
    pub reason: String,
}

/// What an ID or ID prefix names.
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    /// A readable snapshot.
    Readable(&'a str, &'a Summary),
    /// A snapshot that cannot be read.
    Damaged(&'a Damaged),
}

impl Found<'_> {
    /// The snapshot's ID.
    pub fn id(&self) -> &str {
        match self {
            Found::Readable(id, _) => id,
            Found::Damaged(d) => &d.id,
        }
    }
}

/// Every snapshot of the repository: readable ones with their summaries,
/// oldest first, and damaged ones (an integrity failure opening the summary,
/// or a summary that does not make sense) by ID. Other failures (I/O,
/// network) are errors; a snapshot removed (by `forget`) since it was listed
/// is simply gone. Headers come from the local cache where it has them
/// ([`HeaderCache`]), from the catalogue when the cache lacks many
/// ([`catalog`]), the others from the storage, several at a time.
pub fn list(repo: &Repository) -> Result<Listing> {
    repo.master()?;
    let objects = repo.storage().list_detailed("snapshots")?;
    let ids: HashSet<String> = objects.iter().map(|o| object_id(&o.name).to_string()).collect();
    let listing = open_listed(repo, objects)?;
    HeaderCache::open(&repo.config.id).retain(&ids.iter().map(String::as_str).collect());
    Ok(listing)
}

/// The snapshot ID an object name ends in.
fn object_id(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or_default()
}

/// What opening one listed snapshot found.
enum Opening {
    Readable(String, Summary),
    Damaged(Damaged),
    /// Removed since it was listed.
    Gone,
}

/// Opens the summaries of the snapshots `objects` (from a listing of
/// `snapshots/`), up to [`super::storage::Storage::concurrency`] at once.
fn open_listed(repo: &Repository, objects: Vec<Listed>) -> Result<Listing> {
    let secret = repo.master()?.recipient_secret();
    let cache = HeaderCache::open(&repo.config.id);
    let storage = repo.storage();
    // Many headers missing here (a new machine): the catalogue has most of them in one object.
    let missing: HashSet<&str> = objects.iter().map(|o| object_id(&o.name)).filter(|id| !cache.has(id)).collect();
    let catalogued = match missing.len() >= catalog::WORTH_IT {
        true => catalog::entries(storage, catalog::Kind::Header, &missing)?,
        false => HashMap::new(),
    };
    let open = |object: Listed| -> Result<(Opening, Option<DateTime<Utc>>)> {
        let id = object_id(&object.name).to_string();
        // What the catalogue holds is not copied to the cache (thousands of small files are slow to write).
        let header = match (cache.get(&id), catalogued.get(&id)) {
            (Some(header), _) => Ok(header),
            (None, Some(header)) => Ok(header.clone()),
            (None, None) => snapshot::read_header(storage, &id, Some(object.size)).inspect(|h| cache.put(&id, h)),
        };
        let opening = match header.and_then(|header| snapshot::open_header(&header, &id, &secret, &repo.config.id)) {
            Ok(opened) => Opening::Readable(id, opened.summary),
            Err(_) if !storage.exists(&object.name)? => Opening::Gone,
            Err(e) if e.kind() == ErrorKind::Integrity => {
                let reason = damage_reason(&id, e.message());
                Opening::Damaged(Damaged { id, reason })
            }
            Err(e) => return Err(e),
        };
        Ok((opening, object.modified))
    };
    let mut listing = Listing::default();
    concurrently(storage, objects, open, |(opening, modified)| {
        match opening {
            Opening::Readable(id, summary) => {
                if let Some(time) = modified {
                    listing.storage_times.insert(id.clone(), time);
                }
                listing.readable.push((id, summary));
            }
            Opening::Damaged(damaged) => listing.damaged.push(damaged),
            Opening::Gone => {}
        }
        Ok(())
    })?;
    listing.readable.sort_by_cached_key(|(id, s)| (stored_time(&s.begin.started), stored_time(&s.stored), id.clone()));
    listing.damaged.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(listing)
}

/// The cause in "snapshot ID is damaged (cause)", else the whole message.
fn damage_reason(id: &str, message: &str) -> String {
    message
        .strip_prefix(&format!("snapshot {id} is damaged ("))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or(message)
        .to_string()
}

impl Listing {
    /// Fails with an integrity error (exit status 4) naming every damaged
    /// snapshot, when there is any: `could_be` says what each could be
    /// ("the latest snapshot"), since its host, engine and time are unknown.
    pub fn refuse_damaged(&self, could_be: &str) -> Result<()> {
        let names: Vec<String> = self.damaged.iter().map(|d| format!("{} ({})", d.id, d.reason)).collect();
        match names.len() {
            0 => Ok(()),
            1 => Err(Error::integrity(format!(
                "snapshot {} cannot be read and could be {could_be}; run `repo check`, then remove it with \
                 `repo forget REPO {}` or name a snapshot by its ID",
                names[0], self.damaged[0].id
            ))),
            n => Err(Error::integrity(format!(
                "{n} snapshots cannot be read and any could be {could_be}: {}; run `repo check`, then remove \
                 them with `repo forget REPO ID...` or name a snapshot by its ID",
                names.join(", ")
            ))),
        }
    }

    /// Lines about clocks that disagree, for people: backups whose host's
    /// clock was ahead of the storage's (made after the storage received
    /// them), or behind it by more than an hour (or the repository was
    /// copied, which gives its objects new times), one line per host and
    /// direction; and storage times ahead of this machine's clock `now`.
    pub fn clock_warnings(&self, now: DateTime<Utc>) -> Vec<String> {
        let ahead_slack = chrono::Duration::minutes(10);
        let behind_slack = chrono::Duration::hours(1);
        // (host, ahead) -> (how many, the largest difference, the snapshot with it)
        let mut found: BTreeMap<(&str, bool), (usize, chrono::Duration, &str)> = BTreeMap::new();
        let mut storage_ahead = chrono::Duration::zero();
        for (id, s) in &self.readable {
            let Some(&received) = self.storage_times.get(id) else { continue };
            storage_ahead = storage_ahead.max(received - now);
            let (Some(started), Some(stored)) = (stored_time(&s.begin.started), stored_time(&s.stored)) else {
                continue;
            };
            let (ahead, by) = match started.max(stored) - received {
                later if later > ahead_slack => (true, later),
                _ if received - stored > behind_slack => (false, received - stored),
                _ => continue,
            };
            let entry = found.entry((&s.begin.host, ahead)).or_insert((0, by, id));
            entry.0 += 1;
            if by > entry.1 {
                (entry.1, entry.2) = (by, id);
            }
        }
        let long = |d: chrono::Duration| super::remote::describe_duration(d.to_std().unwrap_or_default());
        let mut lines: Vec<String> = found
            .into_iter()
            .map(|((host, ahead), (n, by, id))| {
                let (count, were, it) = match n {
                    1 => ("1 snapshot".to_string(), "was", "it"),
                    n => (format!("{n} snapshots"), "were", "them"),
                };
                match ahead {
                    true => format!(
                        "host '{host}': {count} {were} made, by the host's clock, up to {} after the storage \
                         received {it} (e.g. {id}): its clock was ahead; retention also goes by the storage's time, \
                         `latest` and --until by the host's",
                        long(by)
                    ),
                    false => format!(
                        "host '{host}': {count} {were} stored, by the host's clock, up to {} before the storage \
                         received {it} (e.g. {id}): its clock was behind, or the repository was copied since; \
                         retention also goes by the storage's time, `latest` and --until by the host's",
                        long(by)
                    ),
                }
            })
            .collect();
        if storage_ahead > ahead_slack {
            lines.push(format!(
                "the storage holds snapshots it received up to {} later than this machine's clock says it is now: \
                 this machine's clock is behind",
                long(storage_ahead)
            ));
        }
        lines
    }

    /// The snapshot a full ID or an unambiguous ID prefix names, readable or damaged.
    pub fn find(&self, name: &str) -> Result<Found<'_>> {
        let readable = self.readable.iter().map(|(id, s)| (id.as_str(), Found::Readable(id, s)));
        let damaged = self.damaged.iter().map(|d| (d.id.as_str(), Found::Damaged(d)));
        named_one(name, readable.chain(damaged))
    }

    /// The snapshot a name means, among those `filter` accepts: `latest` (the
    /// newest), a full ID or an unambiguous ID prefix. `latest` refuses when
    /// a damaged snapshot could be the newest, and when the snapshots span
    /// several hosts or engines (choose one with the filter); an ID refuses a
    /// damaged snapshot, and one the filter does not accept.
    pub fn select(&self, name: &str, filter: &Filter) -> Result<String> {
        if name == "latest" {
            self.refuse_damaged("the latest snapshot")?;
            let candidates: Vec<&(String, Summary)> = self.readable.iter().filter(|(_, s)| filter.matches(s)).collect();
            let Some((id, _)) = candidates.last() else {
                return Err(match filter.is_empty() {
                    true => Error::other("the repository holds no snapshots"),
                    false => Error::usage(format!("no snapshot {} (see `repo snapshots`)", filter.describe())),
                });
            };
            refuse_several_groups(candidates.iter().map(|(_, s)| s))?;
            self.note_newer_under_other_hosts(id);
            return Ok(id.clone());
        }
        match self.find(name)? {
            Found::Damaged(d) => Err(Error::integrity(format!(
                "snapshot {} cannot be read ({}); run `repo check`, and remove it with `repo forget REPO {}`",
                d.id, d.reason, d.id
            ))),
            Found::Readable(id, s) if !filter.matches(s) => Err(Error::usage(format!(
                "snapshot {id} is of host '{}' and engine '{}', not {}",
                s.begin.host,
                s.begin.engine,
                filter.describe()
            ))),
            Found::Readable(id, _) => Ok(id.to_string()),
        }
    }

    /// The chain that restores to `until` (see [`crate::chain`]), among the
    /// snapshots `filter` accepts. Refuses when a damaged snapshot could
    /// belong to it, when the bases of several histories (hosts, engines or
    /// sources) match, and when a link of the chain is missing.
    pub fn chain_until(&self, until: DateTime<Utc>, filter: &Filter) -> Result<Vec<String>> {
        self.refuse_damaged(&format!("part of the chain that covers {until}"))?;
        let matching: Vec<&(String, Summary)> = self.readable.iter().filter(|(_, s)| filter.matches(s)).collect();
        let bases = matching
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.begin.backup_kind().is_base() && consistent_time(s).is_some_and(|t| t <= until));
        let keys: BTreeSet<(&str, &str, &str)> = bases.clone().map(history_of).collect();
        refuse_several_groups(bases)?;
        let Some(key) = keys.into_iter().next() else {
            return Err(Error::other(format!("no full backup consistent at or before {until} (see `repo snapshots`)")));
        };
        let chain = history(&self.readable, key).to_instant(until)?.whole()?;
        if let Some(last) = chain.ids.last() {
            self.note_newer_under_other_hosts(last);
        }
        Ok(chain.ids.into_iter().map(str::to_string).collect())
    }

    /// The chain backup `id` needs to be restored: its base and the links
    /// between (see [`crate::chain`]). Refuses when a link is missing.
    pub fn chain_of(&self, id: &str) -> Result<Vec<String>> {
        let (_, summary) = self
            .readable
            .iter()
            .find(|(found, _)| found == id)
            .ok_or_else(|| Error::usage(format!("no readable snapshot '{id}'")))?;
        self.refuse_damaged(&format!("part of the chain snapshot {id} needs"))?;
        let chain = history(&self.readable, history_of(summary)).to_backup(id)?.whole()?;
        Ok(chain.ids.into_iter().map(str::to_string).collect())
    }
}

impl Listing {
    /// Says when backups of the same server (engine and source) that started
    /// no earlier than snapshot `id` (times are whole seconds) were recorded under another host name (a renamed
    /// machine, a container's new name): `latest` and --until never cross
    /// hosts, so the newest state may be there.
    fn note_newer_under_other_hosts(&self, id: &str) {
        let Some((_, chosen)) = self.readable.iter().find(|(found, _)| found == id) else { return };
        let Some(source) = chosen.begin.source.as_deref() else { return };
        let Some(started) = stored_time(&chosen.begin.started) else { return };
        let newer = self.readable.iter().filter(|(_, s)| {
            s.begin.engine == chosen.begin.engine
                && s.begin.source.as_deref() == Some(source)
                && s.begin.host != chosen.begin.host
                && stored_time(&s.begin.started).is_some_and(|t| t >= started)
        });
        if let Some((newest, s)) = newer.last() {
            crate::notice::notice(&format!(
                "note: newer backups of this server (source '{source}') were recorded under host '{}' (the newest \
                 is {newest}, started {}); to restore those, select them with --host '{}'",
                s.begin.host, s.begin.started, s.begin.host
            ));
        }
    }
}

/// Refuses (usage error) snapshots of more than one history (host, engine
/// and source), naming them.
fn refuse_several_groups<'a>(summaries: impl Iterator<Item = &'a Summary>) -> Result<()> {
    let groups: BTreeSet<(&str, &str, &str)> = summaries.map(history_of).collect();
    if groups.len() <= 1 {
        return Ok(());
    }
    let named: Vec<String> = groups
        .iter()
        .map(|(host, engine, source)| match source.is_empty() {
            true => format!("host '{host}' engine '{engine}'"),
            false => format!("host '{host}' engine '{engine}' source '{source}'"),
        })
        .collect();
    Err(Error::usage(format!(
        "backups of {} hosts, engines or sources match ({}); choose one with --host, --engine and --source",
        groups.len(),
        named.join(", ")
    )))
}

/// What `name` (a full ID or an unambiguous prefix of one) names among
/// `candidates` (ID, thing).
fn named_one<'a, T>(name: &str, candidates: impl Iterator<Item = (&'a str, T)>) -> Result<T> {
    if name.is_empty() {
        return Err(Error::usage("an empty snapshot name (give `latest`, an ID or an ID prefix)"));
    }
    let mut matches: Vec<T> = candidates.filter(|(id, _)| id.starts_with(name)).map(|(_, found)| found).collect();
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(Error::usage(format!("no snapshot '{name}' (see `repo snapshots`)"))),
        n => Err(Error::usage(format!("'{name}' matches {n} snapshots; give more of the ID"))),
    }
}

/// The snapshots `names` mean, in order: `latest` (the newest the filter
/// accepts), a full ID, or an unambiguous ID prefix; see [`Listing::select`].
/// Without `latest`, only the snapshots named are read: one listing of the
/// names, then their headers.
pub fn resolve(repo: &Repository, names: &[String], filter: &Filter) -> Result<Vec<String>> {
    repo.master()?;
    let listing = if names.iter().any(|name| name == "latest") {
        list(repo)?
    } else {
        let objects = repo.storage().list_detailed("snapshots")?;
        let mut wanted: Vec<Listed> = Vec::new();
        for name in names {
            let object = named_one(name, objects.iter().map(|o| (object_id(&o.name), o)))?;
            if !wanted.contains(object) {
                wanted.push(object.clone());
            }
        }
        open_listed(repo, wanted)?
    };
    names.iter().map(|name| listing.select(name, filter)).collect()
}

/// Which snapshots a selection applies to.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only this host.
    pub host: Option<String>,
    /// Only this engine.
    pub engine: Option<String>,
    /// Only this source (the instance backed up, as the engine names it).
    pub source: Option<String>,
}

impl Filter {
    /// True when the summary matches.
    pub fn matches(&self, s: &Summary) -> bool {
        self.host.as_ref().is_none_or(|h| *h == s.begin.host)
            && self.engine.as_ref().is_none_or(|e| *e == s.begin.engine)
            && self.source.as_ref().is_none_or(|source| Some(source) == s.begin.source.as_ref())
    }

    /// True when it accepts every snapshot.
    pub fn is_empty(&self) -> bool {
        self.host.is_none() && self.engine.is_none() && self.source.is_none()
    }

    /// "of host 'web1' and engine 'files'", for messages.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        parts.extend(self.host.as_ref().map(|h| format!("host '{h}'")));
        parts.extend(self.engine.as_ref().map(|e| format!("engine '{e}'")));
        parts.extend(self.source.as_ref().map(|source| format!("source '{source}'")));
        match parts.is_empty() {
            true => "of any host".to_string(),
            false => format!("of {}", parts.join(" and ")),
        }
    }
}

/// The history a backup belongs to: its host, engine and source.
pub fn history_of(s: &Summary) -> (&str, &str, &str) {
    (&s.begin.host, &s.begin.engine, s.begin.source.as_deref().unwrap_or(""))
}

/// The backups of `snapshots` in the history `key`, in the order they
/// started; those whose start time cannot be read are left out.
pub fn history<'a>(snapshots: &'a [(String, Summary)], key: (&str, &str, &str)) -> History<'a> {
    let members = snapshots
        .iter()
        .filter(|(_, s)| history_of(s) == key)
        .filter_map(|(id, summary)| {
            let started = stored_time(&summary.begin.started)?;
            Some(Member { id, summary, started, consistent: consistent_time(summary)? })
        })
        .collect();
    History::new(members)
}

/// The chain that restores to `until`, among the snapshots `filter`
/// accepts; see [`Listing::chain_until`].
pub fn chain_until(repo: &Repository, until: DateTime<Utc>, filter: &Filter) -> Result<Vec<String>> {
    list(repo)?.chain_until(until, filter)
}

/// The chains the snapshots `names` (IDs or `latest`) need, in order,
/// each backup once; see [`Listing::chain_of`].
pub fn chains_of(repo: &Repository, names: &[String], filter: &Filter) -> Result<Vec<String>> {
    let listing = list(repo)?;
    let mut ids: Vec<String> = Vec::new();
    for name in names {
        for id in listing.chain_of(&listing.select(name, filter)?)? {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}
