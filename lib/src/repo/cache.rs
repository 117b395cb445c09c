//! A local cache of snapshot headers, so that listing a repository of
//! thousands of snapshots reads each header from the storage once.
//!
//! A snapshot's name is the hash of its header, so a cached header proves
//! itself: one that does not hash to its snapshot's name is ignored and read
//! again. The headers are the sealed summaries the storage holds, readable
//! only with the repository's key; the cache adds nothing an observer of the
//! storage does not see. It lives in `$XDG_CACHE_HOME/backpipe` (else
//! `~/.cache/backpipe`), one folder per repository ID, and any of it may be
//! deleted at any time. Failing to read or write it only costs requests.

use std::collections::HashSet;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use super::snapshot::id_of;

/// The cached snapshot headers of one repository.
pub struct HeaderCache {
    /// The folder, or `None` when there is no place for a cache.
    dir: Option<PathBuf>,
}

impl HeaderCache {
    /// The cache of the repository with ID `repo_id` (hex, from its config):
    /// none when no cache folder can be named, or the ID is not plain hex.
    pub fn open(repo_id: &str) -> HeaderCache {
        let plain = repo_id.len() == 32 && repo_id.bytes().all(|b| b.is_ascii_hexdigit());
        let base = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()).map(PathBuf::from).or_else(|| {
            std::env::var_os("HOME").filter(|dir| !dir.is_empty()).map(|home| PathBuf::from(home).join(".cache"))
        });
        HeaderCache { dir: base.filter(|_| plain).map(|base| base.join("backpipe").join(repo_id).join("snapshots")) }
    }

    /// The cached header of snapshot `id`, if there is one and it is that snapshot's.
    pub fn get(&self, id: &str) -> Option<Vec<u8>> {
        let header = std::fs::read(self.dir.as_ref()?.join(id)).ok()?;
        (id_of(&header) == id).then_some(header)
    }

    /// Keeps snapshot `id`'s header (checked against its ID by the caller),
    /// if the cache folder can be written.
    pub fn put(&self, id: &str, header: &[u8]) {
        let Some(dir) = &self.dir else { return };
        let write = || -> std::io::Result<()> {
            if !dir.exists() {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            }
            let mut temp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
            std::io::Write::write_all(&mut temp, header)?;
            temp.persist(dir.join(id)).map_err(|e| e.error)?;
            Ok(())
        };
        let _ = write();
    }

    /// Forgets the headers of every snapshot not in `ids` (removed by `repo
    /// forget`), and temporary files of interrupted writes.
    pub fn retain(&self, ids: &HashSet<&str>) {
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            if !ids.contains(entry.file_name().to_string_lossy().as_ref()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
