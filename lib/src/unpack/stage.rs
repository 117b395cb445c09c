//! One stream's staging directory: entries are written and verified there,
//! then moved into the target together at the stream's End.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{renameat2, RenameFlags};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use super::paths::{self, lossy, STAGING_PREFIX};
use crate::error::{Error, Result};
use crate::meta::{Entry, EntryType, Xattr};
use crate::workdir::{describe_mounts, mounts_under, remove_tree};

/// Zero blocks at least this long are skipped with a seek, keeping sparse files sparse.
const HOLE_MIN: usize = 4096;

/// A directory whose mode and mtime are applied once its children are written.
struct OpenDir {
    name: Vec<u8>,
    mode: u32,
    mtime: TimeSpec,
    xattrs: Vec<Xattr>,
}

/// The entry being written.
struct OpenEntry {
    entry: Entry,
    file: Option<File>,
    written: u64,
}

/// How a top-level name was moved into the target, so a failed commit can undo it.
enum Moved {
    /// Into a free name.
    Placed,
    /// Swapped with an existing entry, which now sits in the staging directory.
    Exchanged,
}

/// One stream being unpacked.
pub struct Stage {
    root: PathBuf,
    target: PathBuf,
    force: bool,
    /// Restore extended attributes.
    xattrs: bool,
    /// Files of this stream that had several names at the source: the only
    /// entries a hard link may name.
    link_targets: HashSet<Vec<u8>>,
    /// Directories this stream created, by stream name: the only parents allowed.
    dirs: HashSet<Vec<u8>>,
    /// Top-level names, in order, to move into the target at commit.
    tops: Vec<Vec<u8>>,
    tops_seen: HashSet<Vec<u8>>,
    /// Explicit directory entries on the current path, innermost last.
    open_dirs: Vec<OpenDir>,
    /// Modes of top-level directories, applied after the move (moving a
    /// directory needs write permission on it).
    top_modes: Vec<(Vec<u8>, u32)>,
    current: Option<OpenEntry>,
    is_root: bool,
}

fn timespec(secs: i64, nanos: u32) -> TimeSpec {
    TimeSpec::new(secs, nanos as i64)
}

/// Sets a path's times without following a symlink.
fn set_times(path: &Path, name: &[u8], mtime: &TimeSpec) -> Result<()> {
    utimensat(None, path, mtime, mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| Error::other(format!("cannot set the mtime of '{}': {}", lossy(name), e.desc())))
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

impl Stage {
    /// A fresh staging directory for stream `number` inside `target`.
    pub fn new(target: &Path, number: u64, force: bool, xattrs: bool) -> Result<Stage> {
        let root = target.join(format!("{STAGING_PREFIX}{}-{number}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(|e| Error::io(format!("cannot create staging directory '{}'", root.display()), e))?;
        Ok(Stage {
            root,
            target: target.to_path_buf(),
            force,
            xattrs,
            link_targets: HashSet::new(),
            dirs: HashSet::new(),
            tops: Vec::new(),
            tops_seen: HashSet::new(),
            open_dirs: Vec::new(),
            top_modes: Vec::new(),
            current: None,
            is_root: nix::unistd::geteuid().is_root(),
        })
    }

    fn path(&self, name: &[u8]) -> PathBuf {
        self.root.join(std::ffi::OsStr::from_bytes(name))
    }

    fn target_path(&self, name: &[u8]) -> PathBuf {
        self.target.join(std::ffi::OsStr::from_bytes(name))
    }

    /// Records a new top-level name, refusing it early if the target has it and --force is not given.
    fn add_top(&mut self, name: &[u8]) -> Result<()> {
        if self.tops_seen.insert(name.to_vec()) {
            if !self.force && exists(&self.target_path(name)) {
                return Err(Error::other(format!(
                    "'{}' already exists in '{}'; use --force to replace it",
                    lossy(name),
                    self.target.display()
                )));
            }
            self.tops.push(name.to_vec());
        }
        Ok(())
    }

    /// Applies mode and mtime to open directories that `name` is not inside
    /// (all of them when `name` is `None`).
    fn close_dirs(&mut self, name: Option<&[u8]>) -> Result<()> {
        while let Some(dir) = self.open_dirs.last() {
            if name.is_some_and(|n| paths::is_inside(n, &dir.name)) {
                break;
            }
            let dir = self.open_dirs.pop().unwrap();
            let path = self.path(&dir.name);
            if paths::parent(&dir.name).is_some() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(dir.mode))
                    .map_err(|e| Error::io(format!("cannot set the mode of '{}'", lossy(&dir.name)), e))?;
            } else {
                self.top_modes.push((dir.name.clone(), dir.mode));
            }
            if !dir.xattrs.is_empty() {
                let opened = OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| Error::io(format!("cannot open directory '{}'", lossy(&dir.name)), e))?;
                self.set_xattrs(&opened, &dir.name, &dir.xattrs)?;
            }
            set_times(&path, &dir.name, &dir.mtime)?;
        }
        Ok(())
    }

    /// Sets an entry's extended attributes on its open file or directory.
    /// Without root, attributes only root may set (`trusted.*`,
    /// `security.*`: capabilities) are left out, as owners are; any other
    /// refusal fails the restore, which would not be exact.
    fn set_xattrs(&self, file: &File, name: &[u8], xattrs: &[Xattr]) -> Result<()> {
        use crate::xattr::{needs_privilege, set, SetError};
        if !self.xattrs {
            return Ok(());
        }
        for attribute in xattrs.iter().filter(|a| self.is_root || !needs_privilege(a)) {
            set(std::os::fd::AsFd::as_fd(file), attribute).map_err(|e| match e {
                SetError::Malformed => Error::integrity(format!(
                    "entry '{}' has a malformed extended attribute '{}'",
                    lossy(name),
                    attribute.name.display()
                )),
                SetError::Refused(e) => Error::io(
                    format!(
                        "cannot set extended attribute '{}' of '{}' (use --no-xattrs to restore without them)",
                        attribute.name.display(),
                        lossy(name)
                    ),
                    e,
                ),
            })?;
        }
        Ok(())
    }

    /// Makes sure every ancestor of `name` is a directory this stream created.
    fn make_parents(&mut self, name: &[u8]) -> Result<()> {
        let Some(parent) = paths::parent(name) else { return Ok(()) };
        if self.dirs.contains(parent) {
            return Ok(());
        }
        self.make_parents(parent)?;
        self.make_dir(parent, 0o755)
    }

    fn make_dir(&mut self, name: &[u8], mode: u32) -> Result<()> {
        if paths::parent(name).is_none() {
            self.add_top(name)?;
        }
        std::fs::DirBuilder::new().mode(mode).create(self.path(name)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::other(format!("entry '{}' appears twice in the stream", lossy(name)))
            } else {
                Error::io(format!("cannot create directory '{}'", lossy(name)), e)
            }
        })?;
        self.dirs.insert(name.to_vec());
        Ok(())
    }

    /// Starts writing an entry.
    pub fn begin_entry(&mut self, entry: Entry) -> Result<()> {
        let name = entry.path.0.clone();
        paths::check(&name)?;
        self.close_dirs(Some(&name))?;
        self.make_parents(&name)?;
        if paths::parent(&name).is_none() && entry.entry_type != EntryType::Dir {
            self.add_top(&name)?;
        }
        let path = self.path(&name);
        let mtime = timespec(entry.mtime, entry.mtime_ns);
        let mut file = None;
        match entry.entry_type {
            EntryType::Dir => {
                if !self.dirs.contains(&name) {
                    self.make_dir(&name, 0o700)?;
                }
                let xattrs = entry.xattrs.clone();
                self.open_dirs.push(OpenDir { name: name.clone(), mode: entry.mode, mtime, xattrs });
            }
            EntryType::Symlink => {
                let Some(link) = &entry.target else {
                    return Err(Error::integrity(format!("symlink entry '{}' has no target", lossy(&name))));
                };
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link.0), &path)
                    .map_err(|e| Error::io(format!("cannot create symlink '{}'", lossy(&name)), e))?;
                set_times(&path, &name, &mtime)?;
            }
            EntryType::Hardlink => {
                let Some(first) = entry.target.as_ref().filter(|t| self.link_targets.contains(&t.0)) else {
                    return Err(Error::integrity(format!(
                        "hard link '{}' does not name a file with several names stored earlier in the stream",
                        lossy(&name)
                    )));
                };
                nix::unistd::linkat(None, &self.path(&first.0), None, &path, nix::fcntl::AtFlags::empty())
                    .map_err(|e| Error::other(format!("cannot create hard link '{}': {}", lossy(&name), e.desc())))?;
            }
            EntryType::File => {
                let created = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| Error::io(format!("cannot create '{}'", lossy(&name)), e))?;
                file = Some(created);
            }
        }
        self.current = Some(OpenEntry { entry, file, written: 0 });
        Ok(())
    }

    /// Writes a piece of the open entry's content.
    pub fn data(&mut self, payload: &[u8]) -> Result<()> {
        let open = self.current.as_mut().expect("the reader checks Data is inside an entry");
        let name = &open.entry.path;
        let Some(file) = open.file.as_mut() else {
            return Err(Error::integrity(format!("entry '{}' is not a file but has Data frames", name.display())));
        };
        let write = if payload.len() >= HOLE_MIN && payload.iter().all(|&b| b == 0) {
            file.seek(SeekFrom::Current(payload.len() as i64)).map(|_| ())
        } else {
            file.write_all(payload)
        };
        write.map_err(|e| Error::io(format!("cannot write '{}'", name.display()), e))?;
        open.written += payload.len() as u64;
        Ok(())
    }

    /// Closes the open entry (its size and digest checked by the sink):
    /// applies owner, mode and times.
    pub fn end_entry(&mut self) -> Result<()> {
        let open = self.current.take().expect("the reader checks EntryEnd closes an entry");
        let name = open.entry.path.display();
        if open.entry.entry_type == EntryType::Hardlink {
            // Another name of a file already finished: nothing of its own to set.
            return Ok(());
        }
        // Owner first: changing it clears setuid and setgid, which the mode then restores.
        let mut mode = open.entry.mode;
        if self.is_root {
            if let (Some(uid), Some(gid)) = (open.entry.uid, open.entry.gid) {
                std::os::unix::fs::lchown(self.path(&open.entry.path.0), Some(uid), Some(gid))
                    .map_err(|e| Error::io(format!("cannot set the owner of '{name}'"), e))?;
            }
        } else {
            // Without the original owner, setuid and setgid would grant the unpacking user's rights.
            mode &= !0o6000;
        }
        if let Some(file) = open.file {
            let mtime = system_time(open.entry.mtime, open.entry.mtime_ns);
            file.set_len(open.written)
                .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(mode)))
                .map_err(|e| Error::io(format!("cannot finish '{name}'"), e))?;
            // After the owner and mode: a new owner clears file capabilities.
            self.set_xattrs(&file, &open.entry.path.0, &open.entry.xattrs)?;
            file.set_times(std::fs::FileTimes::new().set_modified(mtime).set_accessed(mtime))
                .map_err(|e| Error::io(format!("cannot finish '{name}'"), e))?;
            if open.entry.links.is_some_and(|n| n > 1) {
                self.link_targets.insert(open.entry.path.0.clone());
            }
        }
        Ok(())
    }

    /// Moves every top-level entry into the target, all or nothing: an
    /// existing entry (with --force) is swapped out atomically and removed
    /// only once every name is in place; on failure every move is undone.
    pub fn commit(mut self, verbose: bool) -> Result<()> {
        self.close_dirs(None)?;
        let staged = File::open(&self.root).map_err(|e| Error::io("cannot open the staging directory", e))?;
        nix::unistd::syncfs(staged.as_raw_fd())
            .map_err(|e| Error::other(format!("cannot flush unpacked files to disk: {}", e.desc())))?;
        if self.force {
            self.refuse_mounts()?;
        }
        let mut moved: Vec<(Vec<u8>, Moved)> = Vec::new();
        for name in &self.tops {
            match self.move_into_place(name) {
                Ok(how) => moved.push((name.clone(), how)),
                Err(err) => {
                    for (name, how) in moved.iter().rev() {
                        let (from, to) = (self.path(name), self.target_path(name));
                        let _ = match how {
                            Moved::Placed => renameat2(None, &to, None, &from, RenameFlags::RENAME_NOREPLACE),
                            Moved::Exchanged => renameat2(None, &from, None, &to, RenameFlags::RENAME_EXCHANGE),
                        };
                    }
                    return Err(err);
                }
            }
        }
        for (name, mode) in &self.top_modes {
            std::fs::set_permissions(self.target_path(name), std::fs::Permissions::from_mode(*mode))
                .map_err(|e| Error::io(format!("cannot set the mode of '{}'", lossy(name)), e))?;
        }
        File::open(&self.target)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::io("cannot flush the target directory", e))?;
        if verbose {
            for name in &self.tops {
                crate::notice::notice(&self.target_path(name).display().to_string());
            }
        }
        // Whatever was swapped out is now in the staging directory.
        let replaced: Vec<&[u8]> =
            moved.iter().filter(|(_, how)| matches!(how, Moved::Exchanged)).map(|(name, _)| &name[..]).collect();
        let kept = |why: String| {
            Error::other(format!(
                "{} restored, but {why}; the replaced tree is in '{}'",
                self.tops.iter().map(|n| format!("'{}'", lossy(n))).collect::<Vec<_>>().join(", "),
                self.root.display()
            ))
        };
        match remove_tree(&self.root) {
            Ok(left) if left.is_empty() => Ok(()),
            Ok(left) => Err(kept(format!(
                "the tree it replaced held {}, which unpack did not enter: unmount, then remove it",
                describe_mounts(&left)
            ))),
            Err(e) if replaced.is_empty() => Err(Error::io("cannot remove the staging directory", e)),
            Err(e) => Err(kept(format!("cannot remove the tree it replaced: {e}"))),
        }
    }

    /// Refuses, before anything moves, to replace a directory that holds a
    /// mount point: the tree swapped out would take the mount with it.
    fn refuse_mounts(&self) -> Result<()> {
        for name in &self.tops {
            let existing = self.target_path(name);
            if !std::fs::symlink_metadata(&existing).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let mounts = mounts_under(&existing);
            if !mounts.is_empty() {
                return Err(Error::other(format!(
                    "'{}' holds {}; --force will not replace a tree with a file system mounted inside: unmount it, or unpack elsewhere (nothing was changed)",
                    existing.display(),
                    describe_mounts(&mounts)
                )));
            }
        }
        Ok(())
    }

    fn move_into_place(&self, name: &[u8]) -> Result<Moved> {
        let (from, to) = (self.path(name), self.target_path(name));
        let cannot =
            |e: nix::errno::Errno| Error::other(format!("cannot move '{}' into place: {}", lossy(name), e.desc()));
        if !exists(&to) {
            return renameat2(None, &from, None, &to, RenameFlags::RENAME_NOREPLACE).map(|()| Moved::Placed).map_err(
                |e| {
                    if e == nix::errno::Errno::EEXIST {
                        Error::other(format!(
                            "'{}' appeared in '{}' while unpacking",
                            lossy(name),
                            self.target.display()
                        ))
                    } else {
                        cannot(e)
                    }
                },
            );
        }
        if !self.force {
            return Err(Error::other(format!(
                "'{}' already exists in '{}'; use --force to replace it",
                lossy(name),
                self.target.display()
            )));
        }
        renameat2(None, &from, None, &to, RenameFlags::RENAME_EXCHANGE).map(|()| Moved::Exchanged).map_err(cannot)
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = remove_tree(&self.root);
    }
}

/// A wall-clock time from seconds (possibly before 1970) and nanoseconds.
fn system_time(secs: i64, nanos: u32) -> std::time::SystemTime {
    let epoch = std::time::UNIX_EPOCH;
    if secs >= 0 {
        epoch + std::time::Duration::new(secs as u64, nanos)
    } else {
        epoch - std::time::Duration::from_secs(secs.unsigned_abs()) + std::time::Duration::from_nanos(nanos as u64)
    }
}
