//! `dump-files`: the generic source. Regular files, directories and symlinks
//! under the given paths become entries, with modes, owners and mtimes, in a
//! stable order (depth first, names sorted bytewise).

use std::fs::{File, Metadata};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{Frame, Kind};
use crate::meta::{Begin, End, Entry, EntryType, RawPath};
use crate::progress::Progress;
use crate::source::emit::{produce, send_content};
use crate::writer::StreamWriter;

/// A path to dump and the name it gets in the stream.
struct Root {
    path: PathBuf,
    /// Stream name of the root itself; empty when its contents go at the top level.
    name: Vec<u8>,
}

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

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

/// Children of a directory, sorted by name.
fn sorted_children(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names = std::fs::read_dir(dir)
        .and_then(|it| it.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<Vec<_>>>())
        .map_err(|e| Error::io(format!("cannot list directory '{}'", dir.display()), e))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Visits every path under the roots depth first, calling `visit` with the
/// filesystem path, stream name and metadata. Only one directory listing per
/// level is held at a time.
/// What [`walk`] calls for each path: filesystem path, stream name, metadata.
type Visit<'a> = dyn FnMut(&Path, &[u8], &Metadata) -> Result<()> + 'a;

fn walk(roots: &[Root], visit: &mut Visit) -> Result<()> {
    for root in roots {
        let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.path.clone(), root.name.clone())];
        while let Some((path, name)) = stack.pop() {
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("cannot read '{}'", path.display()), e))?;
            if !name.is_empty() {
                visit(&path, &name, &meta)?;
            }
            if meta.is_dir() {
                for child in sorted_children(&path)?.into_iter().rev() {
                    let child_name = join(&name, child.as_bytes());
                    stack.push((path.join(&child), child_name));
                }
            }
        }
    }
    Ok(())
}

/// Total size of the regular files under the roots (for progress).
fn total_size(roots: &[Root]) -> Result<u64> {
    let mut total = 0;
    walk(roots, &mut |_, _, meta| {
        if meta.is_file() {
            total += meta.len();
        }
        Ok(())
    })?;
    Ok(total)
}

/// Writes a complete stream of `paths` to `output`. On any failure the stream
/// ends with an Abort frame and the error is returned.
pub fn dump(paths: &[PathBuf], output: impl Write) -> Result<()> {
    let roots = roots(paths)?;
    produce("dump-files", output, |writer| {
        let expected = total_size(&roots)?;
        let progress = Progress::for_stage("dump-files");
        progress.set_total(expected);
        let begin = Begin { expected_bytes: Some(expected), ..Begin::now("dump-files", "files", "full") };
        writer.write(&Frame::json(Kind::Begin, &begin))?;
        let mut totals = End { entries: 0, bytes: 0, positions: Default::default() };
        walk(&roots, &mut |path, name, meta| {
            if let Some(sent) = dump_one(writer, path, name, meta, &progress)? {
                totals.entries += 1;
                totals.bytes += sent;
            }
            Ok(())
        })?;
        writer.write(&Frame::json(Kind::End, &totals))?;
        progress.finish();
        Ok(())
    })
}

/// Writes one entry; returns the content bytes sent, or `None` for a skipped special file.
fn dump_one<W: Write>(
    writer: &mut StreamWriter<W>,
    path: &Path,
    name: &[u8],
    meta: &Metadata,
    progress: &Progress,
) -> Result<Option<u64>> {
    let file_type = meta.file_type();
    let (entry_type, target) = if file_type.is_file() {
        (EntryType::File, None)
    } else if file_type.is_dir() {
        (EntryType::Dir, None)
    } else if file_type.is_symlink() {
        let target =
            std::fs::read_link(path).map_err(|e| Error::io(format!("cannot read symlink '{}'", path.display()), e))?;
        (EntryType::Symlink, Some(RawPath(target.as_os_str().as_bytes().to_vec())))
    } else {
        let what = if file_type.is_fifo() {
            "FIFO"
        } else if file_type.is_socket() {
            "socket"
        } else {
            "device"
        };
        crate::cli::say(&format!(
            "dump-files: skipping {what} '{}': only files, directories and symlinks are stored",
            path.display()
        ));
        return Ok(None);
    };
    let entry = Entry {
        path: RawPath(name.to_vec()),
        entry_type,
        role: "file".into(),
        size: if entry_type == EntryType::File { meta.len() } else { 0 },
        mode: meta.mode() & 0o7777,
        mtime: meta.mtime(),
        mtime_ns: meta.mtime_nsec() as u32,
        uid: Some(meta.uid()),
        gid: Some(meta.gid()),
        target,
        attrs: Default::default(),
    };
    writer.write(&Frame::json(Kind::Entry, &entry))?;
    let what = format!("'{}'", path.display());
    let end = if entry_type == EntryType::File {
        let mut file = File::open(path).map_err(|e| Error::io(format!("cannot open {what}"), e))?;
        send_content(writer, &mut file, progress, &what)?
    } else {
        send_content(writer, &mut std::io::empty(), progress, &what)?
    };
    let sent = end.size;
    if entry_type == EntryType::File && sent != entry.size {
        crate::cli::say(&format!(
            "dump-files: warning: {what} changed size while being read ({} bytes expected, {sent} sent)",
            entry.size
        ));
    }
    Ok(Some(sent))
}
