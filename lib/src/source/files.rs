//! `dump-files`: the generic source. Regular files, directories and symlinks
//! under the given paths become entries, with modes, owners, mtimes and
//! extended attributes, in a stable order (depth first, names sorted
//! bytewise); further names of a file already sent become hard link entries.
//!
//! The trees may be live: a name that vanishes or is replaced before it is
//! read is skipped, and a file written to while it is read is stored as read;
//! both are counted as changes in the End frame and reported, and the stream
//! is still complete.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{FileStat, SFlag};

use crate::error::{Error, Result};
use crate::format::{Frame, Kind};
use crate::meta::{Begin, End, Entry, EntryType, RawPath};
use crate::progress::Progress;
use crate::source::emit::{produce, send_content, SourceWriter};
use crate::source::walk::{file_type, stat_of, walk, Node, Opened, Root, Visitor};

/// Works out stream names: the final component of each path, or the contents
/// at the top level for `.`, `/` and the like. Refuses missing paths and clashes.
fn roots(paths: &[PathBuf]) -> Result<Vec<Root>> {
    let mut roots: Vec<Root> = Vec::new();
    for path in paths {
        std::fs::symlink_metadata(path).map_err(|e| Error::io(format!("cannot read '{}'", path.display()), e))?;
        let name = path.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_default();
        if roots.iter().any(|r| r.name == name) {
            return Err(Error::usage(format!(
                "two paths would be stored under the same name ('{}'); dump them separately",
                String::from_utf8_lossy(&name)
            )));
        }
        roots.push(Root { path: path.clone(), name });
    }
    if roots.len() > 1 && roots.iter().any(|r| r.name.is_empty()) {
        return Err(Error::usage(
            "a path stored by its contents ('.', '/', '..') must be the only path, or names could clash",
        ));
    }
    Ok(roots)
}

/// A file's identity: device and inode.
type Identity = (u64, u64);

fn identity(stat: &FileStat) -> Identity {
    (stat.st_dev, stat.st_ino)
}

/// Adds up the sizes of the regular files under the roots (each inode once), for progress.
#[derive(Default)]
struct Sizer {
    total: u64,
    linked: HashSet<Identity>,
}

impl Visitor for Sizer {
    fn visit(&mut self, node: &Node, _dir: Option<&File>) -> Result<()> {
        let stat = &node.listed;
        if file_type(stat) == SFlag::S_IFREG && (stat.st_nlink < 2 || self.linked.insert(identity(stat))) {
            self.total += stat.st_size as u64;
        }
        Ok(())
    }

    fn changed(&mut self, _path: &Path, _why: &str) -> Result<()> {
        Ok(())
    }
}

/// What [`dump`] reports besides the stream.
#[derive(Debug, Default)]
pub struct DumpReport {
    /// Names that vanished, were replaced or changed while read (see the End frame).
    pub changed: u64,
}

/// Writes a complete stream of `paths` to `output`. When `output` is a
/// regular file inside the trees, it is skipped with a note. On any failure
/// the stream ends with an Abort frame and the error is returned.
pub fn dump(paths: &[PathBuf], output: File) -> Result<DumpReport> {
    let roots = roots(paths)?;
    let own_output = nix::sys::stat::fstat(output.as_raw_fd())
        .ok()
        .filter(|stat| file_type(stat) == SFlag::S_IFREG)
        .map(|stat| identity(&stat));
    let mut report = DumpReport::default();
    produce("dump-files", output, |writer| {
        let mut sizer = Sizer::default();
        walk(&roots, &mut sizer)?;
        let progress = Progress::for_stage("dump-files");
        progress.set_total(sizer.total);
        let begin = Begin { expected_bytes: Some(sizer.total), ..Begin::now("dump-files", "files", "full") };
        writer.write(&Frame::json(Kind::Begin, &begin))?;
        let mut dumper =
            Dumper { writer, progress: &progress, own_output, links: HashMap::new(), totals: End::default() };
        walk(&roots, &mut dumper)?;
        dumper.writer.write(&Frame::json(Kind::End, &dumper.totals))?;
        report.changed = dumper.totals.changed;
        progress.finish();
        Ok(())
    })?;
    Ok(report)
}

/// Writes each visited name as an entry.
struct Dumper<'a, W: Write> {
    writer: &'a mut SourceWriter<W>,
    progress: &'a Progress,
    /// The stream's own output, when it is a regular file: never read back into itself.
    own_output: Option<Identity>,
    /// Stream names of files sent so far that have more than one name.
    links: HashMap<Identity, Vec<u8>>,
    totals: End,
}

impl<W: Write> Visitor for Dumper<'_, W> {
    fn visit(&mut self, node: &Node, dir: Option<&File>) -> Result<()> {
        let kind = file_type(&node.listed);
        if kind == SFlag::S_IFDIR {
            let dir = dir.expect("the walk opens directories");
            return self.send(node, EntryType::Dir, &stat_of(dir, node.path)?, Some(dir), None);
        }
        if kind == SFlag::S_IFLNK {
            return match nix::fcntl::readlinkat(Some(node.dir.as_raw_fd()), node.name) {
                Ok(target) => {
                    let target = RawPath(target.as_bytes().to_vec());
                    self.send(node, EntryType::Symlink, &node.listed, None, Some(target))
                }
                Err(nix::errno::Errno::ENOENT | nix::errno::Errno::EINVAL) => {
                    self.changed(node.path, "vanished or was replaced before it was read; skipped")
                }
                Err(e) => Err(Error::other(format!("cannot read symlink '{}': {}", node.path.display(), e.desc()))),
            };
        }
        if kind != SFlag::S_IFREG {
            let what = match kind {
                SFlag::S_IFIFO => "FIFO",
                SFlag::S_IFSOCK => "socket",
                _ => "device",
            };
            crate::notice::notice(&format!(
                "skipping {what} '{}': only files, directories and symlinks are stored",
                node.path.display()
            ));
            return Ok(());
        }
        if self.own_output == Some(identity(&node.listed)) {
            crate::notice::notice(&format!("skipping '{}': it is this stream's own output", node.path.display()));
            return Ok(());
        }
        let file = match node.open()? {
            Opened::Same(file) => file,
            Opened::Changed(why) => return self.changed(node.path, why),
        };
        let before = stat_of(&file, node.path)?;
        if before.st_nlink > 1 {
            if let Some(first) = self.links.get(&identity(&before)) {
                let target = RawPath(first.clone());
                return self.send(node, EntryType::Hardlink, &before, None, Some(target));
            }
        }
        self.send(node, EntryType::File, &before, Some(&file), None)?;
        let after = stat_of(&file, node.path)?;
        let times = |s: &FileStat| (s.st_size, s.st_mtime, s.st_mtime_nsec, s.st_ctime, s.st_ctime_nsec);
        if times(&before) != times(&after) {
            self.changed(node.path, "changed as we read it; stored as read")?;
        }
        if before.st_nlink > 1 {
            self.links.insert(identity(&before), node.stream_name.to_vec());
        }
        Ok(())
    }

    fn changed(&mut self, path: &Path, why: &str) -> Result<()> {
        let line = format!("'{}' {why}", path.display());
        crate::notice::notice(&format!("warning: {line}"));
        self.totals.changed += 1;
        if self.totals.warnings.len() < End::MAX_WARNINGS {
            self.totals.warnings.push(line);
        }
        Ok(())
    }
}

impl<W: Write> Dumper<'_, W> {
    /// Writes one entry: its metadata from `stat`, the extended attributes
    /// of `open`, and for a file its content.
    fn send(
        &mut self,
        node: &Node,
        entry_type: EntryType,
        stat: &FileStat,
        open: Option<&File>,
        target: Option<RawPath>,
    ) -> Result<()> {
        let what = format!("'{}'", node.path.display());
        let xattrs = match open {
            Some(file) => crate::xattr::read(file.as_fd())
                .map_err(|e| Error::io(format!("cannot read the extended attributes of {what}"), e))?,
            None => Vec::new(),
        };
        let is_file = entry_type == EntryType::File;
        let entry = Entry {
            path: RawPath(node.stream_name.to_vec()),
            entry_type,
            role: "file".into(),
            size: if is_file { stat.st_size as u64 } else { 0 },
            mode: stat.st_mode & 0o7777,
            mtime: stat.st_mtime,
            mtime_ns: stat.st_mtime_nsec as u32,
            uid: Some(stat.st_uid),
            gid: Some(stat.st_gid),
            target,
            links: Some(stat.st_nlink).filter(|&n| is_file && n > 1),
            xattrs,
            attrs: Default::default(),
        };
        self.writer.write(&Frame::json(Kind::Entry, &entry))?;
        let end = match open.filter(|_| is_file) {
            Some(mut file) => send_content(self.writer, &mut file, self.progress, &what)?,
            None => send_content(self.writer, &mut std::io::empty(), self.progress, &what)?,
        };
        self.totals.entries += 1;
        self.totals.bytes += end.size;
        Ok(())
    }
}
