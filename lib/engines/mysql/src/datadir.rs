//! The data directory a physical restore goes into: staged on its file
//! system (beside it, or inside it when it is a mount point), refused while
//! a server runs on it, and changed only once the restored copy is prepared
//! and replayed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::Utc;

use crate::client::run_tool;
use crate::error::{Error, Result};
use crate::RESTORE_WORK_PREFIX as WORK_PREFIX;

/// Where the working directory of a physical restore into `datadir` goes,
/// and whether that is inside it: on the same file system, so the restored
/// copy moves in by renaming. Beside it; inside it when it is a mount point
/// (its own volume), whose contents are then moved in one by one, which a
/// mount inside it would stop half-way, so that is refused now.
pub fn staging_parent(datadir: &Path) -> Result<(PathBuf, bool)> {
    if is_mount_root(datadir)? {
        let real =
            datadir.canonicalize().map_err(|e| Error::io(format!("cannot examine '{}'", datadir.display()), e))?;
        let inside: Vec<PathBuf> = crate::workdir::mounts_under(&real).into_iter().filter(|m| *m != real).collect();
        if !inside.is_empty() {
            return Err(Error::usage(format!(
                "data directory '{}' is a mount point with {} inside it; unmount them first",
                datadir.display(),
                crate::workdir::describe_mounts(&inside)
            )));
        }
        return Ok((datadir.to_path_buf(), true));
    }
    let parent = datadir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("cannot create '{}'", parent.display()), e))?;
    Ok((parent.to_path_buf(), false))
}

/// True when `dir` is a directory at the root of a mount.
fn is_mount_root(dir: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let failed = |e| Error::io(format!("cannot examine '{}'", dir.display()), e);
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(failed(e)),
    }
    let real = dir.canonicalize().map_err(failed)?;
    let Some(parent) = real.parent() else { return Ok(true) };
    let device = std::fs::metadata(parent).map_err(failed)?.dev();
    crate::workdir::is_mount_point(&real, device).map_err(failed)
}

/// Refuses a data directory that holds files, unless `replace`.
pub fn check_datadir(datadir: &Path, replace: bool) -> Result<()> {
    if data_entries(datadir)?.is_empty() {
        Ok(())
    } else if replace {
        refuse_running_server(datadir)
    } else {
        Err(Error::engine(format!(
            "data directory '{}' is not empty; restore into an empty or new directory, or pass --replace \
             to move it aside",
            datadir.display()
        )))
    }
}

/// Fails when a running server may hold `datadir`: one holds InnoDB's lock on
/// its system tablespace, or the lock cannot be tested.
fn refuse_running_server(datadir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let path = datadir.join("ibdata1");
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("cannot tell whether a server runs on '{}'", datadir.display()), e)),
    };
    // SAFETY: flock is a plain C struct; all-zero is a valid value to fill in.
    let mut probe: nix::libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = nix::libc::F_WRLCK as i16;
    probe.l_whence = nix::libc::SEEK_SET as i16;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETLK(&mut probe))
        .map_err(|e| Error::io(format!("cannot test the lock on '{}'", path.display()), e.into()))?;
    if probe.l_type == nix::libc::F_UNLCK as i16 {
        Ok(())
    } else {
        Err(Error::engine(format!(
            "a server is running on '{}' (it holds the lock on ibdata1); stop it before restoring into it",
            datadir.display()
        )))
    }
}

/// What a data directory holds, but a file system's `lost+found` and the
/// working directories of restores (which stage inside a mount point).
fn data_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("cannot read '{}'", dir.display()), e)),
    };
    let mut entries = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| Error::io(format!("cannot read '{}'", dir.display()), e))?;
        let name = entry.file_name();
        let ours = name.to_str().is_some_and(|n| n == "lost+found" || n.starts_with(WORK_PREFIX));
        if !ours {
            entries.push(entry.path());
        }
    }
    Ok(entries)
}

/// Prepares an extracted physical backup and moves it into `staged`, a new
/// directory.
pub fn prepare_physical(extracted: &Path, staged: &Path, defaults: Option<&Path>) -> Result<()> {
    let target = format!("--target-dir={}", extracted.display());
    // mariadb-backup with the server's option file, if given, for its InnoDB settings.
    let backup_tool = |step: &str, more: &[String]| -> Result<()> {
        let mut command = Command::new("mariadb-backup");
        if let Some(file) = defaults {
            command.arg(format!("--defaults-file={}", file.display()));
        }
        command.args([step, &target]).args(more).stdout(Stdio::null());
        run_tool("mariadb-backup", command)?.finish().map(drop)
    };
    backup_tool("--prepare", &[])?;
    std::fs::create_dir(staged).map_err(|e| Error::io(format!("cannot create '{}'", staged.display()), e))?;
    backup_tool("--move-back", &[format!("--datadir={}", staged.display())])
}

/// Puts the restored `staged` directory in place of `datadir`: an empty or
/// absent one is replaced, a non-empty one renamed aside first (only with
/// `replace`, and never while a server holds it). A data directory that is
/// a mount point (`into_mount`: `staged` is inside it) stays; its contents
/// are moved instead. A signal waits for this to end.
pub fn swap_in(staged: &Path, datadir: &Path, replace: bool, into_mount: bool) -> Result<()> {
    let _uninterrupted = crate::interrupt::critical();
    let present = data_entries(datadir)?;
    if !present.is_empty() {
        if !replace {
            return Err(Error::engine(format!("data directory '{}' is no longer empty", datadir.display())));
        }
        refuse_running_server(datadir)?;
    }
    let stamp = Utc::now().format("%Y%m%dT%H%M%S");
    let shown = datadir.display();
    let moved = |from: &Path, to: &Path, state: &dyn Fn() -> String| {
        std::fs::rename(from, to).map_err(|e| {
            Error::io(format!("cannot move '{}' to '{}'", from.display(), to.display()), e).with_note(state())
        })
    };
    let name = |entry: &Path| entry.file_name().expect("listed entries have names").to_owned();
    if into_mount {
        let aside = datadir.join(format!(".backpipe-replaced-{stamp}"));
        if !present.is_empty() {
            std::fs::create_dir(&aside).map_err(|e| Error::io(format!("cannot create '{}'", aside.display()), e))?;
            for entry in &present {
                let state =
                    || format!("'{shown}' is unchanged but for what was already moved into '{}'", aside.display());
                moved(entry, &aside.join(name(entry)), &state)?;
            }
            crate::notice::notice(&format!(
                "moved the old contents of the mount point to '{}' (--replace); the server lists it as a \
                 database until you remove it",
                aside.display()
            ));
        }
        for entry in data_entries(staged)? {
            let state = || {
                format!(
                    "'{shown}' holds part of the restored copy (its old contents are in '{}'): restore again with \
                     --replace",
                    aside.display()
                )
            };
            moved(&entry, &datadir.join(name(&entry)), &state)?;
        }
        return Ok(());
    }
    let aside = PathBuf::from(format!("{}.replaced-{stamp}", datadir.display()));
    if present.is_empty() {
        if datadir.exists() {
            std::fs::remove_dir(datadir).map_err(|e| {
                Error::io(format!("cannot replace '{shown}'",), e).with_note(format!("'{shown}' is unchanged"))
            })?;
        }
    } else {
        moved(datadir, &aside, &|| format!("'{shown}' is unchanged"))?;
        crate::notice::notice(&format!("moved the old data directory to '{}' (--replace)", aside.display()));
    }
    let state = || match present.is_empty() {
        true => format!("'{shown}' is gone (it was empty): restore again"),
        false => format!("the old data directory is at '{}': move it back, or restore again", aside.display()),
    };
    moved(staged, datadir, &state)
}
