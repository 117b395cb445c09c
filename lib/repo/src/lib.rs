//! The repository: where `ship` stores streams and `fetch` reads them back.
//! docs/REPOSITORY.md specifies the layout byte for byte.
//!
//! Chunks arrive already encrypted under the repository's key (`encrypt
//! --repo`) and are stored as they are, deduplicated by their keyed IDs, in
//! pack files with one index file each. A stream's remaining frames, with
//! each chunk replaced by a ChunkRef, form its skeleton, stored with a sealed
//! summary as the snapshot, written last: a snapshot exists only once
//! everything it needs is durable. Objects are never modified, so writers
//! need no locks.

#![deny(missing_docs)]

pub mod address;
mod cache;
pub mod catalog;
pub mod chain;
pub mod check;
pub mod fetch;
pub mod forget;
mod keyslot;
pub mod listing;
pub mod pack;
pub mod prune;
mod quarantine;
pub mod receipt;
pub mod remote;
pub mod ship;
pub mod snapshot;
pub mod storage;
mod verify;

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

// The stream core and the codecs, under the names the repository uses.
use backpipe_codec::{cdc, chunk, crypt, envelope, keys, squeeze};
use backpipe_stream::{error, filter, format, meta, notice, parallel, progress, random, reader, units, writer};

use crate::cdc::ChunkSizes;
use crate::error::{Error, Result};
use crate::keys::{MasterKey, Secret, WriteKey};
use address::Address;
use keyslot::{KeySlot, Unlocked};
use pack::{IndexEntry, Location};
use quarantine::Quarantine;
use storage::{LocalStorage, Storage};

/// Where each stored chunk is, by chunk ID.
pub type ChunkIndex = HashMap<[u8; 32], Location>;

/// The repository's `config` object (JSON, not encrypted).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Always "backpipe".
    pub repository: String,
    /// Layout version, 1.
    pub version: u32,
    /// Random ID, hex; binds key slots to this repository.
    pub id: String,
    /// Chunk sizes every `chunk --repo` uses, so equal data gives equal chunks.
    pub chunk_min: usize,
    /// See `chunk_min`.
    pub chunk_avg: usize,
    /// See `chunk_min`.
    pub chunk_max: usize,
}

impl Config {
    /// The chunk sizes of this repository.
    pub fn sizes(&self) -> ChunkSizes {
        ChunkSizes { min: self.chunk_min, avg: self.chunk_avg, max: self.chunk_max }
    }
}

/// An open repository with the key that opened it.
pub struct Repository {
    storage: Box<dyn Storage>,
    /// The configuration.
    pub config: Config,
    /// The master key; None when a write-only key opened the repository.
    master: Option<MasterKey>,
    write: WriteKey,
    /// The key slot that opened it.
    pub slot: String,
}

/// The storage a location (a path, an `sftp://` or an `s3://` URL) names,
/// without opening a repository there: for `repo init` and for tests.
pub fn open_storage(location: &str) -> Result<Box<dyn Storage>> {
    Ok(match Address::parse(location)? {
        Address::Local(path) => Box::new(LocalStorage::open(&path)),
        remote => Box::new(remote::RemoteStorage::open(&remote, location)?),
    })
}

impl Repository {
    /// Creates a repository at `location` (an empty or missing directory) whose
    /// master key opens with `secret`.
    ///
    /// Two `repo init` at once on one place: each writes its key slot, then
    /// creates `config` only where none exists (exclusively where the backend
    /// can) and reads it back. The run whose config is there succeeds; the
    /// other removes its key slot and fails, so exactly one key opens the
    /// repository. docs/REPOSITORY.md says what holds on services that
    /// ignore conditional writes.
    pub fn init(location: &str, secret: &Secret, sizes: ChunkSizes) -> Result<Config> {
        sizes.validate(crate::format::MAX_PLAIN_PAYLOAD)?;
        let storage = open_storage(location)?;
        storage.ensure_empty()?;
        let mut id = [0u8; 16];
        crate::random::fill(&mut id);
        let config = Config {
            repository: "backpipe".into(),
            version: 1,
            id: hex::encode(id),
            chunk_min: sizes.min,
            chunk_avg: sizes.avg,
            chunk_max: sizes.max,
        };
        let master = MasterKey::generate();
        let slot = KeySlot::seal(&master, false, secret, &config.id)?;
        let slot = (format!("keys/{}", slot_name()), serde_json::to_vec_pretty(&slot).unwrap());
        storage.create(&slot.0, &slot.1)?;
        // The config is written last: a directory without it is not a repository.
        let ours = serde_json::to_vec_pretty(&config).unwrap();
        let shown = address::redact_location(location);
        if let Err(err) = storage.create_new("config", &ours) {
            // Whether it arrived is unknown: take back what is provably this run's.
            let mine = matches!(storage.read_if_exists("config"), Ok(Some(found)) if found == ours);
            let removed = match mine {
                true => storage.remove("config").and_then(|()| storage.remove(&slot.0)),
                false => storage.remove(&slot.0),
            };
            let what = if mine { format!("config and key slot {}", slot.0) } else { format!("key slot {}", slot.0) };
            let outcome = match removed {
                Ok(()) => format!("no repository was created; removed this run's {what}"),
                Err(also) => format!("no repository was created, but this run's {what} could not be removed ({also})"),
            };
            return Err(Error::new(err.kind(), format!("{}; {outcome}", err.message())));
        }
        // Read back even after an exclusive create: a service that ignores the
        // condition lets the last writer's config win.
        let found = storage.read_if_exists("config").map_err(|e| {
            Error::new(
                e.kind(),
                format!(
                    "{}; whether this run created the repository is unknown (its key slot is {})",
                    e.message(),
                    slot.0
                ),
            )
        })?;
        if found.as_deref() == Some(&ours[..]) {
            return Ok(config);
        }
        let theirs = match found.as_deref().map(serde_json::from_slice::<Config>) {
            Some(Ok(other)) => format!("repository {} of another `repo init` running at the same time", other.id),
            Some(Err(_)) => {
                "another config (being written by a `repo init` running at the same time, or damaged)".to_string()
            }
            None => "no config (another program removed it)".to_string(),
        };
        let removed = match storage.remove(&slot.0) {
            Ok(()) => format!("this run's key slot {} was removed", slot.0),
            Err(e) => format!("this run's key slot {} could not be removed ({e}); remove it by hand", slot.0),
        };
        Err(Error::other(format!("'{shown}' now holds {theirs}, not the one this run wrote; {removed}")))
    }

    /// The key slots of the repository at `location`: name, kind and access. Needs no key.
    pub fn key_slots(location: &str) -> Result<Vec<(String, String, String)>> {
        let storage = Self::existing(location)?;
        Ok(keyslot::list(&*storage)?
            .into_iter()
            .map(|(name, slot)| (name.rsplit('/').next().unwrap_or_default().to_string(), slot.kind, slot.access))
            .collect())
    }

    /// The storage of an existing repository.
    fn existing(location: &str) -> Result<Box<dyn Storage>> {
        let storage = open_storage(location)?;
        if !storage.exists("config")? {
            return Err(Error::usage(format!(
                "'{}' is not a backpipe repository (no config); create one with `repo init`",
                address::redact_location(location)
            )));
        }
        Ok(storage)
    }

    /// Opens the repository at `location` with a key or passphrase that one of its key slots accepts.
    pub fn open(location: &str, secret: &Secret) -> Result<Repository> {
        let storage = Self::existing(location)?;
        let config: Config = serde_json::from_slice(&storage.read("config")?)
            .map_err(|e| Error::integrity(format!("the repository config is damaged: {e}")))?;
        if config.repository != "backpipe" || config.version != 1 {
            return Err(Error::other(format!(
                "'{}' is not a version 1 backpipe repository",
                address::redact_location(location)
            )));
        }
        config.sizes().validate(crate::format::MAX_PLAIN_PAYLOAD).map_err(|e| e.context("the repository config"))?;
        for (name, slot) in keyslot::list(&*storage)? {
            // A slot that cannot be opened (damaged, other parameters) is not this key's.
            if let Ok(Some(unlocked)) = slot.open(secret, &config.id) {
                let slot = name.rsplit('/').next().unwrap_or_default().to_string();
                let (master, write) = match unlocked {
                    Unlocked::Full(master) => {
                        let write = master.write_key();
                        (Some(master), write)
                    }
                    Unlocked::WriteOnly(write) => (None, write),
                };
                return Ok(Repository { storage, config, master, write, slot });
            }
        }
        Err(Error::usage(format!(
            "no key slot of '{}' opens with the key or passphrase given",
            address::redact_location(location)
        )))
    }

    /// Adds a key slot that opens the repository with `secret` (only to
    /// ship new backups, with `write_only`); returns its name.
    pub fn add_key(&self, secret: &Secret, write_only: bool) -> Result<String> {
        let name = slot_name();
        let slot = KeySlot::seal(self.master()?, write_only, secret, &self.config.id)?;
        self.storage.create(&format!("keys/{name}"), &serde_json::to_vec_pretty(&slot).unwrap())?;
        Ok(name)
    }

    /// Removes key slot `name`; refuses the slot in use, so a repository always
    /// keeps a full key that opens it, also when removals run at once.
    ///
    /// After deleting, the slots are listed again: when the slot that opened
    /// the repository for this run is gone (another `repo key remove` took it
    /// meanwhile, e.g. two keys removing each other), the removed slot is put
    /// back, byte for byte, and the removal fails. Whichever removal of a full
    /// slot deletes last then either still finds its own full slot, which no
    /// later removal takes, or puts back the full slot it took.
    pub fn remove_key(&self, name: &str) -> Result<()> {
        if name.len() != 16 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::usage(format!("'{name}' is not a key slot name (see `repo key list`)")));
        }
        self.master()?;
        if name == self.slot {
            return Err(Error::usage(format!(
                "key slot {name} is the one that opened the repository; open it with another key to remove this one"
            )));
        }
        let object = format!("keys/{name}");
        let Some(removed) = self.storage.read_if_exists(&object)? else {
            return Err(Error::usage(format!("no key slot {name} (see `repo key list`)")));
        };
        self.storage.remove(&object)?;
        let own = format!("keys/{}", self.slot);
        let why = match self.storage.list("keys") {
            Ok(left) if left.contains(&own) => return Ok(()),
            Ok(_) => format!(
                "key slot {}, which opened the repository for this run, was removed meanwhile (by another \
                 `repo key remove`)",
                self.slot
            ),
            Err(e) => format!("the key slots could not be listed again to check a full key remains ({e})"),
        };
        match self.storage.create(&object, &removed) {
            Ok(_) => Err(Error::other(format!(
                "{why}; key slot {name} was put back so the repository keeps a key that opens it; see `repo key list`"
            ))),
            Err(e) => Err(Error::other(format!(
                "{why}, and key slot {name} could not be put back ({e}); see `repo key list` at once"
            ))),
        }
    }

    /// The repository's master key, for everything that reads or changes
    /// stored backups; a write-only key is refused here (usage error).
    pub fn master(&self) -> Result<&MasterKey> {
        self.master.as_ref().ok_or_else(|| {
            Error::usage(format!(
                "key slot {} is write-only: it can ship new backups but not read, fetch, check, forget, prune or manage keys",
                self.slot
            ))
        })
    }

    /// Opens snapshot `id`'s summary (needs the master key); `None` when
    /// the snapshot was removed (by `repo forget`) since it was listed.
    pub fn open_snapshot(&self, id: &str) -> Result<Option<snapshot::Opened>> {
        match snapshot::open(&*self.storage, id, &self.master()?.recipient_secret(), &self.config.id) {
            Err(_) if !self.storage.exists(&format!("snapshots/{id}"))? => Ok(None),
            opened => opened.map(Some),
        }
    }

    /// The write half of the key: what `chunk --repo`, `encrypt --repo` and `ship` work with.
    pub fn write_key(&self) -> &WriteKey {
        &self.write
    }

    /// The storage.
    pub fn storage(&self) -> &dyn Storage {
        &*self.storage
    }

    /// Where every stored chunk is, from all index files.
    pub fn chunk_index(&self) -> Result<HashMap<[u8; 32], Location>> {
        Ok(self.chunk_index_and_marks()?.0)
    }

    /// Where every stored chunk is, and the packs `prune` had marked when the
    /// indexes were read. A chunk stored in several packs resolves to one
    /// that is not marked where there is one: marked packs are on their way out.
    /// Quarantined copies are left out: a chunk held only by those is not held.
    pub fn chunk_index_and_marks(&self) -> Result<(ChunkIndex, HashSet<String>)> {
        let marked = prune::marked(self.storage())?;
        let quarantine = quarantine::load(self.storage())?;
        let mut index = self.index_excluding(&marked, &quarantine)?;
        for pack in &marked {
            // A marked pack's index that `prune` deleted since the marks were listed is simply gone.
            let Some(bytes) = self.storage.read_if_exists(&format!("index/{pack}"))? else { continue };
            for IndexEntry { id, location } in pack::decode_index(&bytes, pack)? {
                if !quarantine.holds(&id, pack) {
                    index.entry(id).or_insert(location);
                }
            }
        }
        Ok((index, marked))
    }

    /// The chunks a new backup may refer to instead of storing them again:
    /// all but those in packs `prune` has marked for deletion, and but copies
    /// `repo check --read-data` quarantined (found forged or damaged).
    pub fn dedup_index(&self) -> Result<HashMap<[u8; 32], Location>> {
        self.index_excluding(&prune::marked(self.storage())?, &quarantine::load(self.storage())?)
    }

    /// Every stored copy of every chunk, quarantined ones included, for a
    /// reader that verifies each chunk and can fall back to another copy.
    pub fn chunk_copies(&self) -> Result<ChunkCopies> {
        let mut copies = ChunkCopies { quarantine: quarantine::load(self.storage())?, ..ChunkCopies::default() };
        self.each_index_entry(&HashSet::new(), |IndexEntry { id, location }| match copies.first.entry(id) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(location);
            }
            std::collections::hash_map::Entry::Occupied(_) => copies.more.entry(id).or_default().push(location),
        })?;
        Ok(copies)
    }

    fn index_excluding(&self, packs: &HashSet<String>, quarantine: &Quarantine) -> Result<HashMap<[u8; 32], Location>> {
        let mut index = HashMap::new();
        self.each_index_entry(packs, |IndexEntry { id, location }| {
            if !quarantine.holds(&id, &location.pack) {
                index.insert(id, location);
            }
        })?;
        Ok(index)
    }

    /// Hands every entry of every index, but those of `packs`, to `each`.
    fn each_index_entry(&self, packs: &HashSet<String>, mut each: impl FnMut(IndexEntry) + Send) -> Result<()> {
        let detailed = self.storage.list_detailed("index")?;
        let pack_of = |name: &str| name.rsplit('/').next().unwrap_or_default().to_string();
        // A stored index whose size is not the cached or catalogued one's changed (damage): it is read, to say so.
        let sizes: HashMap<String, u64> = detailed.iter().map(|o| (pack_of(&o.name), o.size)).collect();
        let listed: Vec<String> = detailed.iter().map(|o| pack_of(&o.name)).collect();
        let wanted = listed.iter().filter(|pack| !packs.contains(*pack));
        // From the local cache where it has them; when many are missing (a new
        // machine), from the catalogue; the others several at a time: a year
        // of backups is thousands of indexes.
        let cache = cache::IndexCache::open(&self.config.id, &self.write.chunk_id);
        let missing: HashSet<&str> = wanted.clone().map(String::as_str).filter(|pack| !cache.has(pack)).collect();
        let catalogued = match missing.len() >= catalog::WORTH_IT {
            true => catalog::entries(self.storage(), catalog::Kind::Index, &missing)?,
            false => HashMap::new(),
        };
        let same_size = |pack: &String, bytes: &[u8]| sizes.get(pack) == Some(&(bytes.len() as u64));
        let read = |pack: &String| {
            if let Some(cached) = cache.get(pack).filter(|c| same_size(pack, c)) {
                return pack::decode_index(&cached, pack);
            }
            // What the catalogue holds is not copied to the cache (thousands of small files are slow to write).
            let from_catalogue = catalogued.get(pack).filter(|bytes| same_size(pack, bytes));
            if let Some(entries) = from_catalogue.and_then(|bytes| pack::decode_index(bytes, pack).ok()) {
                return Ok(entries);
            }
            // An index removed by `prune` since it was listed is simply gone.
            let Some(bytes) = self.storage.read_if_exists(&format!("index/{pack}"))? else { return Ok(Vec::new()) };
            let entries = pack::decode_index(&bytes, pack)?;
            cache.put(pack, &bytes);
            Ok(entries)
        };
        storage::concurrently(&*self.storage, wanted, read, |entries| {
            entries.into_iter().for_each(&mut each);
            Ok(())
        })?;
        cache.retain(&listed.iter().map(String::as_str).collect());
        Ok(())
    }
}

/// Every stored copy of every chunk (a chunk is stored again when its copies
/// are quarantined, and interrupted backups can leave duplicates).
#[derive(Default)]
pub struct ChunkCopies {
    /// One copy of each chunk.
    first: HashMap<[u8; 32], Location>,
    /// The other copies of the few chunks stored more than once.
    more: HashMap<[u8; 32], Vec<Location>>,
    quarantine: Quarantine,
}

impl ChunkCopies {
    /// The copies of chunk `id`, those not quarantined first; empty when none is stored.
    pub fn of(&self, id: &[u8; 32]) -> Vec<Location> {
        let mut copies: Vec<Location> =
            self.first.get(id).into_iter().chain(self.more.get(id).into_iter().flatten()).cloned().collect();
        copies.sort_by_key(|copy| self.quarantine.holds(id, &copy.pack));
        copies
    }
}

/// A fresh random name for a key slot.
fn slot_name() -> String {
    let mut id = [0u8; 8];
    crate::random::fill(&mut id);
    hex::encode(id)
}
