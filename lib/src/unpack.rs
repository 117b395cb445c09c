//! `unpack`: writes a stream's entries under a directory, verifying every
//! entry's size and digest.
//!
//! Entries are written into a private staging directory inside the target
//! and moved into place only when their stream's End frame has arrived and
//! every digest matched, so an incomplete or damaged stream leaves the target
//! as it was. Paths are checked (relative, no `..`), parents are only ever
//! directories this run created, and nothing is written through a symlink.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::error::{Error, Result};
use crate::filter::describe_abort;
use crate::format::{Frame, Kind};
use crate::meta::{Begin, End, Entry, EntryEnd, EntryType};
use crate::progress::Progress;
use crate::reader::{Item, StreamReader};

/// Options for [`unpack`].
pub struct UnpackOptions {
    /// The directory entries are written under (created if missing).
    pub dir: PathBuf,
    /// Replace existing entries with the same top-level name.
    pub force: bool,
    /// Print each entry's path on stderr as it is committed.
    pub verbose: bool,
}

/// What an unpack run wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UnpackSummary {
    /// Streams committed.
    pub streams: u64,
    /// Entries written.
    pub entries: u64,
    /// Content bytes written.
    pub bytes: u64,
}

/// A directory whose mode and mtime are applied once its children are written.
struct OpenDir {
    name: Vec<u8>,
    mode: u32,
    mtime: TimeSpec,
}

/// The file being written for the open entry.
struct OpenFile {
    entry: Entry,
    file: Option<File>,
    hasher: blake3::Hasher,
    written: u64,
}

/// One stream being unpacked into its staging directory.
struct Stage {
    root: PathBuf,
    /// Directories this stream created, by stream name: the only parents allowed.
    dirs: HashSet<Vec<u8>>,
    /// Top-level names to move into the target at commit.
    top: Vec<Vec<u8>>,
    /// Explicit directory entries on the current path, innermost last.
    open_dirs: Vec<OpenDir>,
    current: Option<OpenFile>,
    entries: u64,
    bytes: u64,
}

/// Zero blocks at least this long are skipped with a seek, keeping sparse files sparse.
const HOLE_MIN: usize = 4096;

fn timespec(secs: i64, nanos: u32) -> TimeSpec {
    TimeSpec::new(secs, nanos as i64)
}

/// A wall-clock time from seconds (possibly before 1970) and nanoseconds.
fn system_time(secs: i64, nanos: u32) -> std::time::SystemTime {
    let epoch = std::time::UNIX_EPOCH;
    if secs >= 0 {
        epoch + std::time::Duration::new(secs as u64, nanos)
    } else {
        epoch - std::time::Duration::from_secs(secs.unsigned_abs())
            + std::time::Duration::from_nanos(nanos as u64)
    }
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Checks a stream path is relative and plain: no empty, `.` or `..` components, no NUL.
fn check_path(name: &[u8]) -> Result<()> {
    let unsafe_path = |why: &str| {
        Err(Error::other(format!(
            "refusing entry '{}': {why}",
            lossy(name)
        )))
    };
    if name.is_empty() {
        return unsafe_path("empty path");
    }
    if name.starts_with(b"/") {
        return unsafe_path("absolute path");
    }
    if name.contains(&0) {
        return unsafe_path("NUL byte in path");
    }
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => return unsafe_path("empty or '.' path component"),
            b".." => return unsafe_path("'..' path component"),
            _ => {}
        }
    }
    Ok(())
}

fn top_name(name: &[u8]) -> &[u8] {
    name.split(|&b| b == b'/').next().unwrap_or(name)
}

fn parent_name(name: &[u8]) -> Option<&[u8]> {
    name.iter()
        .rposition(|&b| b == b'/')
        .map(|cut| &name[..cut])
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Stage {
    fn new(target: &Path, number: u64) -> Result<Stage> {
        let root = target.join(format!(".backpipe-unpack-{}-{number}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(|e| {
                Error::io(
                    format!("cannot create staging directory '{}'", root.display()),
                    e,
                )
            })?;
        Ok(Stage {
            root,
            dirs: HashSet::new(),
            top: Vec::new(),
            open_dirs: Vec::new(),
            current: None,
            entries: 0,
            bytes: 0,
        })
    }

    fn path(&self, name: &[u8]) -> PathBuf {
        self.root.join(std::ffi::OsStr::from_bytes(name))
    }

    /// Applies mode and mtime to open directories that are not ancestors of `name`
    /// (all of them when `name` is `None`).
    fn close_dirs(&mut self, name: Option<&[u8]>) -> Result<()> {
        while let Some(dir) = self.open_dirs.last() {
            let inside = name.is_some_and(|n| {
                n.len() > dir.name.len() && n.starts_with(&dir.name) && n[dir.name.len()] == b'/'
            });
            if inside {
                break;
            }
            let dir = self.open_dirs.pop().unwrap();
            let path = self.path(&dir.name);
            std::fs::set_permissions(
                &path,
                std::os::unix::fs::PermissionsExt::from_mode(dir.mode),
            )
            .map_err(|e| Error::io(format!("cannot set the mode of '{}'", lossy(&dir.name)), e))?;
            utimensat(
                None,
                &path,
                &dir.mtime,
                &dir.mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(|e| {
                Error::other(format!(
                    "cannot set the mtime of '{}': {}",
                    lossy(&dir.name),
                    e.desc()
                ))
            })?;
        }
        Ok(())
    }

    /// Makes sure every ancestor of `name` is a directory this stream created.
    fn make_parents(&mut self, name: &[u8]) -> Result<()> {
        let Some(parent) = parent_name(name) else {
            return Ok(());
        };
        if self.dirs.contains(parent) {
            return Ok(());
        }
        self.make_parents(parent)?;
        self.make_dir(parent, 0o755)
    }

    fn make_dir(&mut self, name: &[u8], mode: u32) -> Result<()> {
        let path = self.path(name);
        std::fs::DirBuilder::new()
            .mode(mode)
            .create(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Error::other(format!(
                        "entry '{}' appears twice in the stream",
                        lossy(name)
                    ))
                } else {
                    Error::io(format!("cannot create directory '{}'", lossy(name)), e)
                }
            })?;
        self.dirs.insert(name.to_vec());
        if parent_name(name).is_none() {
            self.top.push(name.to_vec());
        }
        Ok(())
    }

    fn begin_entry(
        &mut self,
        entry: Entry,
        target: &Path,
        replaceable: &HashSet<Vec<u8>>,
        force: bool,
    ) -> Result<()> {
        let name = entry.path.0.clone();
        check_path(&name)?;
        let top = top_name(&name);
        if !force
            && !replaceable.contains(top)
            && exists(&target.join(std::ffi::OsStr::from_bytes(top)))
        {
            return Err(Error::other(format!(
                "'{}' already exists in '{}'; use --force to replace it",
                lossy(top),
                target.display()
            )));
        }
        self.close_dirs(Some(&name))?;
        self.make_parents(&name)?;
        let path = self.path(&name);
        let mtime = timespec(entry.mtime, entry.mtime_ns);
        let mut file = None;
        match entry.entry_type {
            EntryType::Dir => {
                if !self.dirs.contains(&name) {
                    self.make_dir(&name, 0o700)?;
                }
                self.open_dirs.push(OpenDir {
                    name: name.clone(),
                    mode: entry.mode,
                    mtime,
                });
            }
            EntryType::Symlink => {
                let Some(link) = &entry.target else {
                    return Err(Error::integrity(format!(
                        "symlink entry '{}' has no target",
                        lossy(&name)
                    )));
                };
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link.0), &path).map_err(
                    |e| Error::io(format!("cannot create symlink '{}'", lossy(&name)), e),
                )?;
                utimensat(None, &path, &mtime, &mtime, UtimensatFlags::NoFollowSymlink).map_err(
                    |e| {
                        Error::other(format!(
                            "cannot set the mtime of '{}': {}",
                            lossy(&name),
                            e.desc()
                        ))
                    },
                )?;
            }
            EntryType::File => {
                file = Some(
                    OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(nix::libc::O_NOFOLLOW)
                        .open(&path)
                        .map_err(|e| Error::io(format!("cannot create '{}'", lossy(&name)), e))?,
                );
            }
        }
        if parent_name(&name).is_none() && entry.entry_type != EntryType::Dir {
            self.top.push(name.clone());
        }
        self.current = Some(OpenFile {
            entry,
            file,
            hasher: blake3::Hasher::new(),
            written: 0,
        });
        Ok(())
    }

    fn data(&mut self, frame: &Frame) -> Result<()> {
        let open = self
            .current
            .as_mut()
            .expect("the reader checks Data is inside an entry");
        let name = &open.entry.path;
        let Some(file) = open.file.as_mut() else {
            return Err(Error::integrity(format!(
                "entry '{}' is not a file but has Data frames",
                name.display()
            )));
        };
        open.hasher.update(&frame.payload);
        let payload = &frame.payload;
        let write = if payload.len() >= HOLE_MIN && payload.iter().all(|&b| b == 0) {
            file.seek(SeekFrom::Current(payload.len() as i64))
                .map(|_| ())
        } else {
            file.write_all(payload)
        };
        write.map_err(|e| Error::io(format!("cannot write '{}'", name.display()), e))?;
        open.written += payload.len() as u64;
        Ok(())
    }

    fn end_entry(&mut self, end: EntryEnd) -> Result<()> {
        let open = self
            .current
            .take()
            .expect("the reader checks EntryEnd closes an entry");
        let name = open.entry.path.display();
        let digest = open.hasher.finalize().to_hex().to_string();
        if open.written != end.size || !digest.eq_ignore_ascii_case(&end.blake3) {
            return Err(Error::integrity(format!(
                "'{name}': content does not match its digest ({} bytes received, {} expected); the data was altered after the source read it",
                open.written, end.size
            )));
        }
        // Owner first: changing it clears setuid and setgid bits, which the mode then restores.
        if nix::unistd::geteuid().is_root() {
            if let (Some(uid), Some(gid)) = (open.entry.uid, open.entry.gid) {
                std::os::unix::fs::lchown(self.path(&open.entry.path.0), Some(uid), Some(gid))
                    .map_err(|e| Error::io(format!("cannot set the owner of '{name}'"), e))?;
            }
        }
        if let Some(file) = open.file {
            let mtime = system_time(open.entry.mtime, open.entry.mtime_ns);
            file.set_len(open.written)
                .and_then(|()| {
                    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
                        open.entry.mode,
                    ))
                })
                .and_then(|()| {
                    file.set_times(
                        std::fs::FileTimes::new()
                            .set_modified(mtime)
                            .set_accessed(mtime),
                    )
                })
                .map_err(|e| Error::io(format!("cannot finish '{name}'"), e))?;
        }
        self.entries += 1;
        self.bytes += open.written;
        Ok(())
    }

    /// Moves every top-level entry into the target and removes the staging directory.
    fn commit(
        mut self,
        target: &Path,
        replaceable: &mut HashSet<Vec<u8>>,
        force: bool,
        verbose: bool,
    ) -> Result<(u64, u64)> {
        self.close_dirs(None)?;
        let staged = File::open(&self.root)
            .map_err(|e| Error::io("cannot open the staging directory", e))?;
        nix::unistd::syncfs(staged.as_raw_fd()).map_err(|e| {
            Error::other(format!("cannot flush unpacked files to disk: {}", e.desc()))
        })?;
        for name in std::mem::take(&mut self.top) {
            let to = target.join(std::ffi::OsStr::from_bytes(&name));
            if exists(&to) {
                if !force && !replaceable.contains(&name) {
                    return Err(Error::other(format!(
                        "'{}' appeared in '{}' while unpacking; use --force to replace it",
                        lossy(&name),
                        target.display()
                    )));
                }
                remove_any(&to)
                    .map_err(|e| Error::io(format!("cannot replace '{}'", to.display()), e))?;
            }
            std::fs::rename(self.path(&name), &to)
                .map_err(|e| Error::io(format!("cannot move '{}' into place", lossy(&name)), e))?;
            if verbose {
                crate::cli::say(&to.display().to_string());
            }
            replaceable.insert(name);
        }
        File::open(target)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| Error::io("cannot flush the target directory", e))?;
        std::fs::remove_dir(&self.root)
            .map_err(|e| Error::io("cannot remove the staging directory", e))?;
        Ok((self.entries, self.bytes))
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = remove_any(&self.root);
    }
}

/// Refuses a frame unpack cannot read as plain content.
fn require_plain(frame: &Frame) -> Result<()> {
    crate::codec::refuse_unknown_encodings(frame)?;
    if frame.encodings.0 != 0 {
        let undo = if frame.encodings.has(crate::format::Encodings::ENCRYPTED) {
            "encrypt -d"
        } else if frame.encodings.has(crate::format::Encodings::ZSTD) {
            "squeeze -d"
        } else {
            "chunk -d"
        };
        return Err(Error::other(format!(
            "{} frame is {}; run `{undo}` before unpack",
            frame.kind.name(),
            frame.encodings.describe()
        )));
    }
    Ok(())
}

/// Reads a stream (or concatenated streams) from `input` and writes its
/// entries under `options.dir`.
pub fn unpack(input: impl Read, options: &UnpackOptions) -> Result<UnpackSummary> {
    std::fs::create_dir_all(&options.dir)
        .map_err(|e| Error::io(format!("cannot create '{}'", options.dir.display()), e))?;
    let progress = Progress::for_stage("unpack");
    let mut reader = StreamReader::new(std::io::BufReader::with_capacity(
        crate::filter::IO_BUFFER,
        input,
    ));
    let mut summary = UnpackSummary::default();
    let mut stage: Option<Stage> = None;
    let mut replaceable = HashSet::new();
    while let Some(item) = reader.next_item()? {
        let frame = match item {
            Item::Start(_) => {
                stage = Some(Stage::new(&options.dir, summary.streams)?);
                continue;
            }
            Item::Frame(frame) => frame,
        };
        let current = stage.as_mut().expect("frames come after a preamble");
        match frame.kind {
            Kind::Begin => {
                require_plain(&frame)?;
                if let Some(total) = frame.parse_json::<Begin>()?.expected_bytes {
                    progress.set_total(total);
                }
            }
            Kind::Entry => {
                require_plain(&frame)?;
                current.begin_entry(
                    frame.parse_json()?,
                    &options.dir,
                    &replaceable,
                    options.force,
                )?;
            }
            Kind::Data => {
                require_plain(&frame)?;
                current.data(&frame)?;
                progress.add(frame.payload.len() as u64);
            }
            Kind::EntryEnd => {
                require_plain(&frame)?;
                current.end_entry(frame.parse_json()?)?;
            }
            Kind::End => {
                require_plain(&frame)?;
                let end: End = frame.parse_json()?;
                let done = stage.take().unwrap();
                if (done.entries, done.bytes) != (end.entries, end.bytes) {
                    return Err(Error::integrity(format!(
                        "the stream holds {} entries and {} bytes but its End frame says {} and {}",
                        done.entries, done.bytes, end.entries, end.bytes
                    )));
                }
                let (entries, bytes) = done.commit(
                    &options.dir,
                    &mut replaceable,
                    options.force,
                    options.verbose,
                )?;
                summary.streams += 1;
                summary.entries += entries;
                summary.bytes += bytes;
            }
            Kind::Abort => {
                return Err(Error::incomplete(format!(
                    "the stream was aborted upstream: {}; nothing from it was written",
                    describe_abort(&frame)
                )))
            }
            Kind::Cipher => {
                return Err(Error::other(
                    "the stream is encrypted; run `encrypt -d` before unpack",
                ))
            }
            Kind::Unknown(_) => {}
        }
    }
    progress.finish();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../../x",
            b"a//b",
            b"./a",
            b"a/.",
            b"a\0b",
        ] {
            assert!(
                check_path(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [&b"a"[..], b"a/b/c", b"..a", b"a..", b".hidden/x"] {
            assert!(check_path(good).is_ok());
        }
    }
}
