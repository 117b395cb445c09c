//! Where repository objects live. Every backend offers the same small set of
//! operations; objects are immutable once created.

use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use nix::fcntl::{renameat2, RenameFlags};

use crate::error::{Error, Result};

/// Object storage for a repository: named, immutable byte strings.
pub trait Storage: Send + Sync {
    /// Creates object `name` with what `content` reads, durably. Object names
    /// are content hashes or random, so an existing object of that name holds
    /// the same bytes: a backend that can tell leaves it untouched and returns
    /// false; one that cannot (S3) writes it again and returns true. Never
    /// exposes a partly written object. Memory use does not grow with the
    /// object's size.
    fn create_from(&self, name: &str, content: &mut dyn Read) -> Result<bool>;
    /// Creates object `name` with `bytes` only if no object of that name
    /// exists, for the one object whose name says nothing about its content
    /// (`config`): `Ok(false)` when one existed, whatever it holds. Exclusive
    /// where the backend can be (a local directory, SFTP, S3 services that
    /// honour `If-None-Match: *`); a service that ignores the condition
    /// replaces the object, so callers read it back.
    fn create_new(&self, name: &str, bytes: &[u8]) -> Result<bool>;
    /// Creates object `name` with `bytes`; see [`Storage::create_from`].
    fn create(&self, name: &str, mut bytes: &[u8]) -> Result<bool> {
        self.create_from(name, &mut bytes)
    }
    /// Reads a whole object.
    fn read(&self, name: &str) -> Result<Vec<u8>>;
    /// Reads a whole object, or `None` if it does not exist (removed since it was listed).
    fn read_if_exists(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Reads `len` bytes of an object from `offset`.
    fn read_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Names of the objects under a folder (`"snapshots"`, `"data"`), recursively, sorted.
    fn list(&self, folder: &str) -> Result<Vec<String>> {
        Ok(self.list_detailed(folder)?.into_iter().map(|object| object.name).collect())
    }
    /// The objects under a folder as [`Storage::list`] names them, with the
    /// size and modification time the same listing gives (no request per object).
    fn list_detailed(&self, folder: &str) -> Result<Vec<Listed>>;
    /// How many requests this storage serves well at once: what
    /// [`concurrently`] runs in parallel.
    fn concurrency(&self) -> usize;
    /// True when the object exists.
    fn exists(&self, name: &str) -> Result<bool>;
    /// The size of an object in bytes.
    fn size(&self, name: &str) -> Result<u64>;
    /// Deletes an object durably; deleting a missing object is not an error.
    fn remove(&self, name: &str) -> Result<()>;
    /// Makes sure the place exists and holds nothing yet, for `repo init`.
    fn ensure_empty(&self) -> Result<()>;
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its name, e.g. `snapshots/<id>`.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written, by the storage's clock (file mtime, S3
    /// `Last-Modified`), not the writer's; `None` where the service does not say.
    pub modified: Option<DateTime<Utc>>,
}

/// Runs `work` on every item with up to [`Storage::concurrency`] of them at
/// once (each on a thread of its own, calling the storage's blocking
/// methods), and hands the results to `consume` in the items' order. At most
/// [`crate::parallel::MAX_IN_FLIGHT`] results wait at once, so memory is
/// bounded by that many results whatever the number of items. The first
/// failure in item order ends the run.
pub fn concurrently<J, O>(
    storage: &dyn Storage,
    items: impl IntoIterator<Item = J>,
    work: impl Fn(J) -> Result<O> + Sync,
    consume: impl FnMut(O) -> Result<()> + Send,
) -> Result<()>
where
    J: Send,
    O: Send,
{
    let produce = |hand: &mut dyn FnMut(J) -> bool| {
        for item in items {
            if !hand(item) {
                break;
            }
        }
        Ok(())
    };
    crate::parallel::run_ordered(storage.concurrency(), produce, work, consume)
}

/// Reads an object front to back in ranges of [`ObjectReader::STEP`] bytes,
/// so objects of any size are read in bounded memory.
pub struct ObjectReader<'a> {
    storage: &'a dyn Storage,
    name: String,
    offset: u64,
    end: u64,
    buffer: Vec<u8>,
    consumed: usize,
}

impl<'a> ObjectReader<'a> {
    /// Bytes fetched per request.
    pub const STEP: usize = 8 << 20;

    /// A reader of object `name` from byte `offset` to its end.
    pub fn new(storage: &'a dyn Storage, name: &str, offset: u64) -> Result<ObjectReader<'a>> {
        let end = storage.size(name)?;
        Ok(ObjectReader { storage, name: name.to_string(), offset, end, buffer: Vec::new(), consumed: 0 })
    }
}

impl Read for ObjectReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.consumed == self.buffer.len() {
            let step = (self.end.saturating_sub(self.offset)).min(Self::STEP as u64) as usize;
            if step == 0 {
                return Ok(0);
            }
            self.buffer = self.storage.read_range(&self.name, self.offset, step).map_err(std::io::Error::other)?;
            self.offset += step as u64;
            self.consumed = 0;
        }
        let n = out.len().min(self.buffer.len() - self.consumed);
        out[..n].copy_from_slice(&self.buffer[self.consumed..self.consumed + n]);
        self.consumed += n;
        Ok(n)
    }
}

/// True for the names objects have while they are being written: listings skip them.
pub fn is_temporary(name: &str) -> bool {
    name.rsplit('/').next().is_some_and(|file| file.starts_with(".tmp-"))
}

/// A repository in a local directory.
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// Storage rooted at an existing directory.
    pub fn open(root: &Path) -> LocalStorage {
        LocalStorage { root: root.to_path_buf() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn sync_dir(dir: &Path) -> std::io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

fn io(name: &str, what: &str, err: std::io::Error) -> Error {
    Error::io(format!("cannot {what} repository object '{name}'"), err)
}

impl Storage for LocalStorage {
    fn create_new(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        // Already exclusive: published with RENAME_NOREPLACE, false when the name exists.
        self.create(name, bytes)
    }

    fn create_from(&self, name: &str, content: &mut dyn Read) -> Result<bool> {
        let target = self.path(name);
        if target.exists() {
            return Ok(false);
        }
        let parent = target.parent().expect("object names have a folder or the root");
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(|e| io(name, "create the folder of", e))?;
            // New folders must survive a crash too: flush the entries that name them.
            let mut dir = parent;
            while let Some(above) = dir.parent().filter(|_| dir != self.root) {
                Self::sync_dir(above).map_err(|e| io(name, "flush the folders of", e))?;
                dir = above;
            }
        }
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(parent)
            .map_err(|e| io(name, "create a temporary file for", e))?;
        // Through a large buffer: `io::copy` from a bare `dyn Read` moves 8 KiB per write.
        let mut content = std::io::BufReader::with_capacity(crate::filter::IO_BUFFER, content);
        std::io::copy(&mut content, &mut temp)
            .and_then(|_| temp.as_file().sync_all())
            .map_err(|e| io(name, "write", e))?;
        // Publish atomically, never over an existing object (a concurrent writer's identical one).
        match renameat2(None, temp.path(), None, &target, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {
                let _ = temp.into_temp_path().keep();
                Self::sync_dir(parent).map_err(|e| io(name, "flush the folder of", e))?;
                Ok(true)
            }
            Err(nix::errno::Errno::EEXIST) => Ok(false),
            Err(e) => Err(Error::other(format!("cannot publish repository object '{name}': {}", e.desc()))),
        }
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        std::fs::read(self.path(name)).map_err(|e| io(name, "read", e))
    }

    fn read_if_exists(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(name, "read", e)),
        }
    }

    fn read_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(self.path(name)).map_err(|e| io(name, "open", e))?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map_err(|e| io(name, "read", e))?;
        Ok(buf)
    }

    fn list_detailed(&self, folder: &str) -> Result<Vec<Listed>> {
        let mut objects = Vec::new();
        let mut pending = vec![folder.to_string()];
        while let Some(dir) = pending.pop() {
            let listing = match std::fs::read_dir(self.path(&dir)) {
                Ok(listing) => listing,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir, "list", e)),
            };
            for child in listing {
                let child = child.map_err(|e| io(&dir, "list", e))?;
                let name = format!("{dir}/{}", child.file_name().to_string_lossy());
                if is_temporary(&name) {
                    continue;
                }
                let metadata = match child.metadata() {
                    Ok(metadata) => metadata,
                    // Removed since the folder was read (by `forget` or `prune`): simply gone.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&name, "inspect", e)),
                };
                if metadata.is_dir() {
                    pending.push(name);
                } else {
                    let modified = metadata.modified().ok().map(DateTime::<Utc>::from);
                    objects.push(Listed { name, size: metadata.len(), modified });
                }
            }
        }
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    fn concurrency(&self) -> usize {
        // Reads from a local disk are quick: the work is decrypting, one per core.
        crate::parallel::default_threads()
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.path(name).exists())
    }

    fn remove(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(name, "delete", e)),
        }
        Self::sync_dir(path.parent().expect("objects are in a folder")).map_err(|e| io(name, "flush the folder of", e))
    }

    fn size(&self, name: &str) -> Result<u64> {
        std::fs::metadata(self.path(name)).map(|m| m.len()).map_err(|e| io(name, "inspect", e))
    }

    fn ensure_empty(&self) -> Result<()> {
        // A local path may look like a URL ("./s3://..."): never echo user information.
        let shown = super::address::redact_location(&self.root.display().to_string());
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io(format!("cannot create '{shown}'"), e))?;
        let mut listing = std::fs::read_dir(&self.root).map_err(|e| Error::io(format!("cannot read '{shown}'"), e))?;
        if listing.next().is_some() {
            return Err(Error::other(format!("'{shown}' is not empty; a repository needs a directory of its own")));
        }
        Ok(())
    }
}
