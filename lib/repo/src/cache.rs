//! A local cache of immutable repository objects that every listing or
//! restore would otherwise read again: snapshot headers and index files.
//! With thousands of backups these are thousands of requests.
//!
//! Nothing in it is trusted as it is. A snapshot's name is the hash of its
//! header, so a cached header proves itself; a cached index carries a MAC
//! under a key derived from the repository's chunk-ID key, which only key
//! holders have. Whatever does not verify is ignored and read again. Both
//! are what the storage holds, readable there by anyone who can list it
//! (indexes) or only with the repository's key (headers): the cache shows
//! nothing the storage does not.
//!
//! It lives in `$XDG_CACHE_HOME/backpipe` (else `~/.cache/backpipe`), one
//! folder per repository ID, and any of it may be deleted at any time.
//! Failing to read or write it only costs requests.

use std::collections::HashSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::pack::is_pack_name;
use super::snapshot::id_of;

/// The cache folder of `kind` ("snapshots", "index") for repository
/// `repo_id`: none when no cache folder can be named, or the ID (from the
/// repository's config) is not plain hex.
fn folder(repo_id: &str, kind: &str) -> Option<PathBuf> {
    let plain = repo_id.len() == 32 && repo_id.bytes().all(|b| b.is_ascii_hexdigit());
    let base = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").filter(|dir| !dir.is_empty()).map(|home| PathBuf::from(home).join(".cache"))
    })?;
    plain.then(|| base.join("backpipe").join(repo_id).join(kind))
}

/// Writes `bytes` as `dir/name`; failures are ignored. Not atomic, and need
/// not be: a reader checks what it reads (a file cut short, or written by
/// two processes at once, fails its check and is read again from the
/// storage), and two writers of one name write the same bytes.
fn keep(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    if std::fs::write(&path, bytes).is_err()
        && std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).is_ok()
    {
        let _ = std::fs::write(&path, bytes);
    }
}

/// Removes every file of `dir` not named in `names` (objects gone from the storage).
fn retain(dir: &Path, names: &HashSet<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if !names.contains(entry.file_name().to_string_lossy().as_ref()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The cached snapshot headers of one repository.
pub struct HeaderCache {
    dir: Option<PathBuf>,
}

impl HeaderCache {
    /// The cache of the repository with ID `repo_id` (hex, from its config).
    pub fn open(repo_id: &str) -> HeaderCache {
        HeaderCache { dir: folder(repo_id, "snapshots") }
    }

    /// True when the cache has a file for snapshot `id` (not checked).
    pub fn has(&self, id: &str) -> bool {
        self.dir.as_ref().is_some_and(|dir| dir.join(id).exists())
    }

    /// The cached header of snapshot `id`, if there is one and it is that snapshot's.
    pub fn get(&self, id: &str) -> Option<Vec<u8>> {
        let header = std::fs::read(self.dir.as_ref()?.join(id)).ok()?;
        (id_of(&header) == id).then_some(header)
    }

    /// Keeps snapshot `id`'s header (checked against its ID by the caller).
    pub fn put(&self, id: &str, header: &[u8]) {
        if let Some(dir) = &self.dir {
            keep(dir, id, header);
        }
    }

    /// Forgets the headers of every snapshot not in `ids` (removed by `repo forget`).
    pub fn retain(&self, ids: &HashSet<&str>) {
        if let Some(dir) = &self.dir {
            retain(dir, ids);
        }
    }
}

/// The cached index files of one repository, each behind a MAC.
pub struct IndexCache {
    dir: Option<PathBuf>,
    key: Zeroizing<[u8; 32]>,
}

impl IndexCache {
    /// The cache of the repository with ID `repo_id`, whose chunk-ID key is `chunk_id`.
    pub fn open(repo_id: &str, chunk_id: &[u8; 32]) -> IndexCache {
        let key = Zeroizing::new(blake3::derive_key("backpipe/v1/cache/index", chunk_id));
        IndexCache { dir: folder(repo_id, "index"), key }
    }

    fn mac(&self, pack: &str, index: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        hasher.update(pack.as_bytes()).update(&[0]).update(index);
        *hasher.finalize().as_bytes()
    }

    /// True when the cache has a file for the index of `pack` (not checked).
    pub fn has(&self, pack: &str) -> bool {
        is_pack_name(pack) && self.dir.as_ref().is_some_and(|dir| dir.join(pack).exists())
    }

    /// The cached index of `pack`, if there is one whose MAC verifies.
    pub fn get(&self, pack: &str) -> Option<Vec<u8>> {
        if !is_pack_name(pack) {
            return None;
        }
        let mut kept = std::fs::read(self.dir.as_ref()?.join(pack)).ok()?;
        if kept.len() < 32 {
            return None;
        }
        let index = kept.split_off(32);
        // Compared as BLAKE3 hashes, in constant time.
        (blake3::Hash::from(self.mac(pack, &index)) == blake3::Hash::from_bytes(kept[..].try_into().ok()?))
            .then_some(index)
    }

    /// Keeps the index of `pack`, as read from the storage and decoded.
    pub fn put(&self, pack: &str, index: &[u8]) {
        if let Some(dir) = self.dir.as_ref().filter(|_| is_pack_name(pack)) {
            keep(dir, pack, &[&self.mac(pack, index)[..], index].concat());
        }
    }

    /// Forgets the indexes of every pack not in `packs` (deleted by `repo prune`).
    pub fn retain(&self, packs: &HashSet<&str>) {
        if let Some(dir) = &self.dir {
            retain(dir, packs);
        }
    }
}
