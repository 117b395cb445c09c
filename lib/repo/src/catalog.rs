//! Catalogues: the snapshot headers and index files of a repository in one
//! object, `catalog/<hash>`, so that a machine whose local cache is empty
//! lists and restores from thousands of backups in a few requests instead
//! of one per snapshot and per pack. `repo forget` writes one when it is done.
//!
//! A catalogue is only a faster way to read objects the storage holds: an
//! entry is used only for a snapshot or an index that the listing of
//! `snapshots/` or `index/` names, a header only if it hashes to its
//! snapshot's name, an index only if its own checksum holds. A catalogue
//! written by anyone else (a write-only key holder, whoever has the
//! storage's credentials) can therefore do no more than such a writer can
//! do to `index/` itself. Its name is the BLAKE3 of its content; one that
//! does not match is ignored.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read, Seek, Write};

use super::snapshot::id_of;
use super::storage::{concurrently, ObjectReader, Storage};
use crate::error::{Error, Result};

/// The folder of catalogues.
const FOLDER: &str = "catalog";
/// First eight bytes of a catalogue.
const MAGIC: [u8; 8] = *b"BPCATLG1";
/// An entry holding a snapshot header, named by the snapshot's ID.
const HEADER: u8 = 1;
/// An entry holding an index file, named by its pack.
const INDEX: u8 = 2;
/// The largest entry a reader accepts (a header's summary is at most 16 MiB).
const MAX_ENTRY: u32 = 64 << 20;
/// Fewer objects than this missing from the local cache are read one by one.
pub const WORTH_IT: usize = 32;

/// Which kind of object a catalogue entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A snapshot header (`snapshots/<id>`, up to its skeleton).
    Header,
    /// An index file (`index/<pack>`).
    Index,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Header => HEADER,
            Kind::Index => INDEX,
        }
    }
}

/// The entries of `kind` named in `wanted`, from every catalogue of the
/// repository (normally one), whole and verified as far as the catalogue
/// can be: a header hashes to its name; an index is checked by the caller's
/// decoding. A catalogue that is damaged, or removed since it was listed,
/// gives nothing.
pub fn entries(storage: &dyn Storage, kind: Kind, wanted: &HashSet<&str>) -> Result<HashMap<String, Vec<u8>>> {
    let mut found = HashMap::new();
    for name in storage.list(FOLDER)? {
        // Any failure only means the objects are read one by one.
        if let Ok(more) = read(storage, &name, kind, wanted) {
            found.extend(more);
        }
    }
    Ok(found)
}

/// One catalogue's entries of `kind` in `wanted`; an error when it is damaged.
fn read(storage: &dyn Storage, name: &str, kind: Kind, wanted: &HashSet<&str>) -> Result<HashMap<String, Vec<u8>>> {
    let damaged = || Error::integrity(format!("catalogue '{name}' is damaged"));
    let mut reader =
        Hashing { inner: BufReader::new(ObjectReader::new(storage, name, 0)?), hasher: blake3::Hasher::new() };
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(|_| damaged())?;
    if magic != MAGIC {
        return Err(damaged());
    }
    let mut found = HashMap::new();
    loop {
        let mut head = [0u8; 2];
        match reader.read(&mut head[..1]).map_err(|_| damaged())? {
            0 => break,
            _ => reader.read_exact(&mut head[1..]).map_err(|_| damaged())?,
        }
        let mut entry_name = vec![0u8; head[1] as usize];
        let mut len = [0u8; 4];
        reader.read_exact(&mut entry_name).and_then(|()| reader.read_exact(&mut len)).map_err(|_| damaged())?;
        let len = u32::from_le_bytes(len);
        let entry_name = String::from_utf8(entry_name).map_err(|_| damaged())?;
        if len > MAX_ENTRY {
            return Err(damaged());
        }
        let mut body = vec![0u8; len as usize];
        reader.read_exact(&mut body).map_err(|_| damaged())?;
        let keep = head[0] == kind.code()
            && wanted.contains(entry_name.as_str())
            && (kind == Kind::Index || id_of(&body) == entry_name);
        if keep {
            found.insert(entry_name, body);
        }
    }
    let object = name.rsplit('/').next().unwrap_or_default();
    match reader.hasher.finalize().to_hex().as_str() == object {
        true => Ok(found),
        false => Err(damaged()),
    }
}

/// A reader that hashes what it reads.
struct Hashing<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hasher.update(&out[..n]);
        Ok(n)
    }
}

/// Writes a catalogue of the headers of the snapshots `ids` and the index
/// files of the packs `packs`, each from `local` (the local cache, where it
/// has it) or the storage, several at a time; then removes the catalogues
/// that were there before. Returns the new catalogue's name. An object
/// removed since it was listed is left out. Memory holds a few entries at a
/// time: the catalogue is spooled to a temporary file.
fn write(
    storage: &dyn Storage,
    ids: &[String],
    packs: &[String],
    local: impl Fn(Kind, &str) -> Option<Vec<u8>> + Sync,
) -> Result<String> {
    let before = storage.list(FOLDER)?;
    let spool_failed = |e: std::io::Error| Error::io("cannot spool the catalogue to a temporary file", e);
    let file = tempfile::tempfile().map_err(spool_failed)?;
    let mut spool = std::io::BufWriter::new(file);
    let mut hasher = blake3::Hasher::new();
    let mut put = |bytes: &[u8]| -> Result<()> {
        hasher.update(bytes);
        spool.write_all(bytes).map_err(spool_failed)
    };
    put(&MAGIC)?;
    let items = ids.iter().map(|id| (Kind::Header, id)).chain(packs.iter().map(|pack| (Kind::Index, pack)));
    let fetch = |(kind, name): (Kind, &String)| -> Result<Option<(Kind, String, Vec<u8>)>> {
        let body = match local(kind, name) {
            Some(body) => Some(body),
            None => match kind {
                Kind::Header => super::snapshot::read_header(storage, name, None).ok(),
                Kind::Index => storage.read_if_exists(&format!("index/{name}"))?,
            },
        };
        Ok(body.map(|body| (kind, name.clone(), body)))
    };
    concurrently(storage, items, fetch, |entry| {
        let Some((kind, name, body)) = entry else { return Ok(()) };
        if name.len() > u8::MAX as usize || body.len() > MAX_ENTRY as usize {
            return Ok(());
        }
        put(&[kind.code(), name.len() as u8])?;
        put(name.as_bytes())?;
        put(&(body.len() as u32).to_le_bytes())?;
        put(&body)
    })?;
    let name = format!("{FOLDER}/{}", hasher.finalize().to_hex());
    let mut file = spool.into_inner().map_err(|e| spool_failed(e.into_error()))?;
    file.rewind().map_err(spool_failed)?;
    storage.create_from(&name, &mut file)?;
    for old in before.iter().filter(|old| **old != name) {
        storage.remove(old)?;
    }
    Ok(name)
}

/// Writes a new catalogue of every snapshot header and index file the
/// repository holds now, taking each from the local cache or the current
/// catalogue where they have it, and removes the older catalogues; returns
/// its name.
pub fn refresh(repo: &super::Repository) -> Result<String> {
    let storage = repo.storage();
    let last = |name: &String| name.rsplit('/').next().unwrap_or_default().to_string();
    let ids: Vec<String> = storage.list("snapshots")?.iter().map(last).collect();
    let packs: Vec<String> = storage.list("index")?.iter().map(last).collect();
    let headers = super::cache::HeaderCache::open(&repo.config.id);
    let indexes = super::cache::IndexCache::open(&repo.config.id, &repo.write_key().chunk_id);
    let missing = |names: &[String], cached: &dyn Fn(&str) -> bool| -> HashSet<String> {
        names.iter().filter(|name| !cached(name)).cloned().collect()
    };
    let (no_header, no_index) = (missing(&ids, &|id| headers.has(id)), missing(&packs, &|pack| indexes.has(pack)));
    let current = |kind, names: &HashSet<String>| match names.is_empty() {
        true => Ok(HashMap::new()),
        false => entries(storage, kind, &names.iter().map(String::as_str).collect()),
    };
    let (old_headers, old_indexes) = (current(Kind::Header, &no_header)?, current(Kind::Index, &no_index)?);
    write(storage, &ids, &packs, |kind, name| match kind {
        Kind::Header => headers.get(name).or_else(|| old_headers.get(name).cloned()),
        Kind::Index => indexes.get(name).or_else(|| old_indexes.get(name).cloned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    /// A header as `ship` would write it, with a summary saying `host`.
    fn header(host: &str) -> Vec<u8> {
        let begin = crate::meta::Begin { host: host.into(), ..crate::meta::Begin::now("t", "files", "full") };
        let summary = crate::snapshot::Summary::example(&"00".repeat(16), begin, "2026-11-22T03:13:33Z");
        let recipient = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([7u8; 32]));
        crate::snapshot::header(&summary, &recipient, "0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn entries_come_back_only_where_they_verify() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::open(dir.path());
        let (a, b) = (header("a"), header("b"));
        let (id_a, id_b) = (id_of(&a), id_of(&b));
        let pack = "ab".repeat(32);
        // The local source hands a's header under b's name too: a reader must not believe it.
        let local = |kind: Kind, name: &str| match (kind, name) {
            (Kind::Header, _) => Some(a.clone()),
            (Kind::Index, _) => Some(b"an index".to_vec()),
        };
        let names = [id_a.clone(), id_b.clone()];
        let written = write(&storage, &names, &[pack.clone()], local).unwrap();
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        let headers = entries(&storage, Kind::Header, &wanted).unwrap();
        assert_eq!(headers.len(), 1);
        assert_eq!(headers[&id_a], a);
        let indexes = entries(&storage, Kind::Index, &[pack.as_str()].into_iter().collect()).unwrap();
        assert_eq!(indexes[&pack], b"an index");
        assert!(entries(&storage, Kind::Index, &HashSet::new()).unwrap().is_empty(), "only what is wanted");
        // A second catalogue replaces the first; a damaged one gives nothing.
        let again = write(&storage, &names[..1], &[], |_, _| Some(a.clone())).unwrap();
        assert_eq!(storage.list(FOLDER).unwrap(), [again.clone()]);
        assert_ne!(again, written);
        let mut bytes = storage.read(&again).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        storage.remove(&again).unwrap();
        storage.create(&again, &bytes).unwrap();
        assert!(entries(&storage, Kind::Header, &wanted).unwrap().is_empty());
    }
}
