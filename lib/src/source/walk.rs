//! The walk `dump-files` makes over its trees: depth first, names sorted
//! bytewise. Every name is looked up and opened relative to its directory's
//! open descriptor, never followed through a symlink, and checked against
//! what the listing found, so someone who can rename things inside a tree
//! being read cannot redirect the reader to another file.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};

use crate::error::{Error, Result};

/// A path to read and the name it gets in the stream.
pub struct Root {
    /// The path as given.
    pub path: PathBuf,
    /// Stream name of the root itself; empty when its contents go at the top level.
    pub name: Vec<u8>,
}

/// One name met in the walk, as its directory listed it (not yet opened).
pub struct Node<'a> {
    /// The directory that holds it.
    pub dir: BorrowedFd<'a>,
    /// Its name in that directory.
    pub name: &'a OsStr,
    /// Its path, for messages.
    pub path: &'a Path,
    /// Its name in the stream.
    pub stream_name: &'a [u8],
    /// What the listing found: type, size, owner, times and identity.
    pub listed: FileStat,
}

/// What opening a listed name found.
pub enum Opened {
    /// The object the listing found, open for reading.
    Same(File),
    /// The name vanished or now names another object: why, for a warning.
    Changed(&'static str),
}

/// The file type bits of a stat.
pub fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

impl Node<'_> {
    /// Opens the listed object without following a symlink or blocking on a
    /// FIFO swapped in for it, and checks that it is still the object (same
    /// device, inode and type) the listing found.
    pub fn open(&self) -> Result<Opened> {
        let kind = file_type(&self.listed);
        let mut flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        if kind == SFlag::S_IFDIR {
            flags |= OFlag::O_DIRECTORY;
        }
        let fd = match openat(Some(self.dir.as_raw_fd()), self.name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(Opened::Changed("vanished before it was read; skipped")),
            // A symlink (O_NOFOLLOW), a non-directory, or a socket now has the name.
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::ENXIO) => {
                return Ok(Opened::Changed("was replaced by something else before it was read; skipped"))
            }
            Err(e) => return Err(Error::other(format!("cannot open '{}': {}", self.path.display(), e.desc()))),
        };
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let now = stat_of(&file, self.path)?;
        let same = (now.st_dev, now.st_ino) == (self.listed.st_dev, self.listed.st_ino) && file_type(&now) == kind;
        if !same {
            return Ok(Opened::Changed("was replaced before it was read; skipped"));
        }
        // Reads block as usual from here on (some network file systems honour O_NONBLOCK).
        nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(|e| Error::other(format!("cannot read '{}': {}", self.path.display(), e.desc())))?;
        Ok(Opened::Same(file))
    }
}

/// The status of an open file.
pub fn stat_of(file: &File, path: &Path) -> Result<FileStat> {
    fstat(file.as_raw_fd()).map_err(|e| Error::other(format!("cannot read '{}': {}", path.display(), e.desc())))
}

/// What a walk calls.
pub trait Visitor {
    /// Called for each name under the roots, a directory before its
    /// contents; `dir` is the directory itself, open, when the name is one.
    fn visit(&mut self, node: &Node, dir: Option<&File>) -> Result<()>;
    /// Called for a name that vanished or changed between the listing and
    /// its visit; the walk goes on without it.
    fn changed(&mut self, path: &Path, why: &str) -> Result<()>;
}

/// Visits everything under `roots`. Only one directory listing per level is
/// held at a time, and one open directory per level.
pub fn walk(roots: &[Root], visitor: &mut dyn Visitor) -> Result<()> {
    for root in roots {
        let name = root.path.file_name().filter(|_| !root.name.is_empty());
        match name {
            Some(name) => {
                let parent = root.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let parent = open_given_dir(parent)?;
                visit_name(parent.as_fd(), name, &root.path, &root.name, visitor, true)?;
            }
            None => {
                let dir = open_given_dir(&root.path)?;
                visit_children(&dir, &root.path, &[], visitor)?;
            }
        }
    }
    Ok(())
}

/// Opens a directory named on the command line (symlinks on the way are the user's choice).
fn open_given_dir(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(format!("cannot open directory '{}'", path.display()), e))
}

fn visit_name(
    dir: BorrowedFd,
    name: &OsStr,
    path: &Path,
    stream_name: &[u8],
    visitor: &mut dyn Visitor,
    is_root: bool,
) -> Result<()> {
    let listed = match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(listed) => listed,
        Err(Errno::ENOENT) if !is_root => return visitor.changed(path, "vanished before it was read; skipped"),
        Err(e) => return Err(Error::other(format!("cannot read '{}': {}", path.display(), e.desc()))),
    };
    let node = Node { dir, name, path, stream_name, listed };
    if file_type(&listed) != SFlag::S_IFDIR {
        return visitor.visit(&node, None);
    }
    let opened = match node.open()? {
        Opened::Same(opened) => opened,
        Opened::Changed(why) if !is_root => return visitor.changed(path, why),
        Opened::Changed(why) => return Err(Error::other(format!("'{}' {why}", path.display()))),
    };
    visitor.visit(&node, Some(&opened))?;
    visit_children(&opened, path, stream_name, visitor)
}

fn visit_children(dir: &File, path: &Path, stream_name: &[u8], visitor: &mut dyn Visitor) -> Result<()> {
    for child in sorted_children(dir, path)? {
        let child_name = join(stream_name, child.as_bytes());
        visit_name(dir.as_fd(), &child, &path.join(&child), &child_name, visitor, false)?;
    }
    Ok(())
}

/// The names in an open directory, sorted bytewise.
fn sorted_children(dir: &File, path: &Path) -> Result<Vec<OsString>> {
    let cannot = |e: Errno| Error::other(format!("cannot list directory '{}': {}", path.display(), e.desc()));
    let own = nix::unistd::dup(dir.as_raw_fd()).map_err(cannot)?;
    let mut listing = nix::dir::Dir::from_fd(own).map_err(cannot)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let name = entry.map_err(cannot)?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}
