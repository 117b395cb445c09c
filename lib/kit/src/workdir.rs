//! Working directories and the trees tools remove: a private working
//! directory is named after the process that made it, so a later run finds
//! one a killed run left (its process is gone) and removes it; and trees are
//! removed without ever entering another file system: a mount point inside
//! such a tree is neither entered nor changed, and is named to the caller as
//! left behind.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Removes a file or a whole tree. Directories are made writable first, so
/// read-only ones restored from a stream do not stop it; symlinks are never
/// followed; mount points are left as they are. Returns the mount points
/// left (the directories above them stay too); any failed removal is an error,
/// but what vanishes meanwhile (another thread removing the same tree, as a
/// signal's cleanup and an error path may at once) is not.
pub fn remove_tree(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        std::fs::remove_file(path)?;
        return Ok(Vec::new());
    }
    let mut left = Vec::new();
    remove_dir_tree(path, meta.dev(), &mut left)?;
    Ok(left)
}

fn remove_dir_tree(path: &Path, device: u64, left: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if is_mount_point(path, device)? {
        left.push(path.to_path_buf());
        return Ok(());
    }
    let entries = match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .and_then(|()| std::fs::read_dir(path))
    {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for child in entries {
        let child = child?.path();
        let removed = match std::fs::symlink_metadata(&child) {
            Ok(meta) if meta.is_dir() => remove_dir_tree(&child, device, left),
            Ok(_) => std::fs::remove_file(&child),
            Err(e) => Err(e),
        };
        vanished_is_removed(removed)?;
    }
    if left.iter().any(|mount| mount.starts_with(path)) {
        return Ok(());
    }
    vanished_is_removed(std::fs::remove_dir(path))
}

/// A removal whose target was already gone succeeded.
fn vanished_is_removed(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// True when the directory at `path` is the root of a mount: on another
/// device than the tree being removed, or a mount root by `statx` (which
/// also catches bind mounts of the same file system).
pub fn is_mount_point(path: &Path, device: u64) -> std::io::Result<bool> {
    if std::fs::symlink_metadata(path)?.dev() != device {
        return Ok(true);
    }
    let name = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut stx = std::mem::MaybeUninit::<nix::libc::statx>::zeroed();
    // SAFETY: `name` is a valid C string and `stx` is a writable statx buffer.
    let rc = unsafe {
        nix::libc::statx(nix::libc::AT_FDCWD, name.as_ptr(), nix::libc::AT_SYMLINK_NOFOLLOW, 0, stx.as_mut_ptr())
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statx succeeded and filled the buffer.
    let stx = unsafe { stx.assume_init() };
    let flag = nix::libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(stx.stx_attributes_mask & flag != 0 && stx.stx_attributes & flag != 0)
}

/// Mount points at or below directory `dir`, from the kernel's mount table
/// (`/proc/self/mountinfo`); empty where the table cannot be read.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = dir.canonicalize() else { return Vec::new() };
    let Ok(table) = std::fs::read("/proc/self/mountinfo") else { return Vec::new() };
    table
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(std::ffi::OsStr::from_bytes(&unescape_octal(field))))
        .filter(|mount| mount.starts_with(&dir))
        .collect()
}

/// Undoes the `\NNN` octal escapes the mount table uses for spaces, tabs,
/// newlines and backslashes in paths.
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let digits = field.get(i + 1..i + 4).filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (field[i], digits) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Creates a private working directory (mode 0700) in `parent`, named
/// `<prefix><pid>-<random>` so that [`remove_stale`] can tell whether the
/// run that made it still runs.
pub fn create(parent: &Path, prefix: &str) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
}

/// Removes the working directories named `<prefix><pid>-…` in `parent` that
/// this user's runs left when they were killed (their process no longer
/// exists). Returns one line for each that was removed or could not be
/// removed entirely.
pub fn remove_stale(parent: &Path, prefix: &str) -> Vec<String> {
    let Ok(listing) = std::fs::read_dir(parent) else { return Vec::new() };
    let me = nix::unistd::geteuid().as_raw();
    let mut notes = Vec::new();
    for child in listing.flatten() {
        let name = child.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        if std::fs::symlink_metadata(child.path()).map_or(true, |meta| meta.uid() != me || !meta.is_dir()) {
            continue;
        }
        let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
        let alive = pid.is_some_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                .map_or_else(|e| e != nix::errno::Errno::ESRCH, |()| true)
        });
        if alive {
            continue;
        }
        let shown = child.path().display().to_string();
        notes.push(match remove_tree(&child.path()) {
            Ok(left) if left.is_empty() => format!("removed '{shown}' left by an interrupted run"),
            Ok(left) => format!("warning: '{shown}', left by an interrupted run, holds {}; it was not entered: unmount it, then remove '{shown}'", describe_mounts(&left)),
            Err(e) => format!("warning: cannot remove '{shown}', left by an interrupted run: {e}"),
        });
    }
    notes
}

/// "mount point 'a'" or "mount points 'a', 'b'", for messages.
pub fn describe_mounts(mounts: &[PathBuf]) -> String {
    let names: Vec<String> = mounts.iter().map(|m| format!("'{}'", m.display())).collect();
    format!("mount point{} {}", if names.len() == 1 { "" } else { "s" }, names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(unescape_octal(br"/mnt/a\040b\134c"), b"/mnt/a b\\c");
        assert_eq!(unescape_octal(br"/x\04"), br"/x\04");
    }

    #[test]
    fn read_only_trees_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("keep"), tree.join("a/link")).unwrap();
        std::fs::write(dir.path().join("keep"), b"k").unwrap();
        std::fs::set_permissions(tree.join("a/b"), std::fs::Permissions::from_mode(0o500)).unwrap();
        assert!(remove_tree(&tree).unwrap().is_empty());
        assert!(!tree.exists() && dir.path().join("keep").exists());
    }
}
