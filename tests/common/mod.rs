//! Helpers shared by the integration tests: running the built tools in real
//! shell pipelines, making test trees, and comparing trees exactly.

#![allow(dead_code)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use backpipe::format::{Frame, Kind};
use backpipe::meta::{Begin, End, Entry, EntryEnd, EntryType, RawPath};
use backpipe::reader::{Item, StreamReader};
use backpipe::writer::StreamWriter;

/// The directory holding the built tools.
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_dump-files")).parent().unwrap().to_path_buf()
}

/// ../shared/fixtures, beside the project checkout.
pub fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures");
    assert!(dir.is_dir(), "the shared fixtures must be at {} (../shared beside the checkout)", dir.display());
    dir.canonicalize().unwrap()
}

/// Runs a bash script with `set -euo pipefail`, the tools first on PATH, in `cwd`.
pub fn sh(cwd: &Path, script: &str) -> Output {
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(cwd)
        .env("PATH", path)
        .env_remove("BACKPIPE_PASSPHRASE")
        .output()
        .expect("bash runs")
}

/// Runs a script that must succeed; returns its stdout.
pub fn sh_ok(cwd: &Path, script: &str) -> Vec<u8> {
    let out = sh(cwd, script);
    assert!(
        out.status.success(),
        "script failed ({}):\n{script}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs a script that must fail with `code`; returns its stderr.
pub fn sh_fails(cwd: &Path, script: &str, code: i32) -> String {
    let out = sh(cwd, script);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "script:\n{script}\nstderr:\n{stderr}");
    stderr
}

/// Deterministic pseudo-random bytes (xorshift), incompressible for zstd.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sets a path's mtime (not following symlinks).
pub fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, nanos);
    nix::sys::stat::utimensat(None, path, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink).unwrap();
}

/// Writes a file with the given content, mode and mtime.
pub fn put(path: &Path, content: &[u8], mode: u32, mtime: i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    set_mtime(path, mtime, 123_456_789);
}

/// Asserts two trees are identical: names, types, modes, mtimes (to the
/// nanosecond), symlink targets and every byte of content.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ma = std::fs::symlink_metadata(a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    let mb = std::fs::symlink_metadata(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    assert_eq!(ma.file_type(), mb.file_type(), "type of {}", b.display());
    assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()), "mtime of {}", b.display());
    if ma.file_type().is_symlink() {
        assert_eq!(std::fs::read_link(a).unwrap(), std::fs::read_link(b).unwrap(), "target of {}", b.display());
        return;
    }
    assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "mode of {}", b.display());
    if ma.is_dir() {
        let names = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "entries of {}", b.display());
        for name in na {
            assert_same_tree(&a.join(&name), &b.join(&name));
        }
    } else {
        assert_eq!(ma.len(), mb.len(), "size of {}", b.display());
        assert!(same_content(a, b), "content of {}", b.display());
    }
}

fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut got = 0;
        while got < na {
            let n = fb.read(&mut bb[got..na]).unwrap();
            if n == 0 {
                return false;
            }
            got += n;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
    }
}

/// A fresh temporary directory for one test.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("backpipe-test-").tempdir().unwrap()
}

/// Rewrites a stream frame by frame with valid checksums and sequence
/// numbers, as an attacker with write access could: only the encryption can
/// catch what `edit` does.
pub fn forge(stream: &[u8], edit: impl FnOnce(&mut Vec<Frame>)) -> Vec<u8> {
    let mut frames = frames_of(stream);
    edit(&mut frames);
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out);
    writer
        .start(
            StreamReader::new(stream)
                .next_item()
                .map(|i| match i {
                    Some(Item::Start(id)) => id,
                    _ => unreachable!(),
                })
                .unwrap(),
        )
        .unwrap();
    for frame in &frames {
        writer.write(frame).unwrap();
    }
    writer.flush().unwrap();
    out
}

/// The frames of one checked stream.
pub fn frames_of(stream: &[u8]) -> Vec<Frame> {
    let mut reader = StreamReader::new(stream);
    let mut frames = Vec::new();
    while let Some(item) = reader.next_item().unwrap() {
        if let Item::Frame(f) = item {
            frames.push(f);
        }
    }
    frames
}

/// Writes a plain stream with the given entries (path, type, symlink target);
/// files hold five bytes.
pub fn forged_stream(entries: &[(&str, EntryType, Option<&str>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = StreamWriter::new(&mut out);
    w.start([9; 16]).unwrap();
    let begin = Begin::now("forger", "files", "full");
    w.write(&Frame::json(Kind::Begin, &begin)).unwrap();
    let mut bytes = 0;
    for (path, entry_type, target) in entries {
        let entry = Entry {
            path: RawPath(path.as_bytes().to_vec()),
            entry_type: *entry_type,
            role: "file".into(),
            size: 0,
            mode: 0o644,
            mtime: 1_700_000_000,
            mtime_ns: 0,
            uid: None,
            gid: None,
            target: target.map(|t| RawPath(t.as_bytes().to_vec())),
            links: None,
            xattrs: Vec::new(),
            attrs: Default::default(),
        };
        w.write(&Frame::json(Kind::Entry, &entry)).unwrap();
        let content: &[u8] = if *entry_type == EntryType::File { b"pwned" } else { b"" };
        if !content.is_empty() {
            w.write(&Frame::plain(Kind::Data, content.to_vec())).unwrap();
        }
        bytes += content.len() as u64;
        let end = EntryEnd { size: content.len() as u64, blake3: blake3::hash(content).to_hex().to_string() };
        w.write(&Frame::json(Kind::EntryEnd, &end)).unwrap();
    }
    w.write(&Frame::json(Kind::End, &End { entries: entries.len() as u64, bytes, ..End::default() })).unwrap();
    w.flush().unwrap();
    out
}

/// A mount made for one test (the tests run as root), undone when dropped.
pub struct Mount(PathBuf);

impl Mount {
    /// A tmpfs of `size` at `dir` (created if missing).
    pub fn tmpfs(dir: &Path, size: &str) -> Mount {
        Mount::run(dir, &format!("mkdir -p '{0}' && mount -t tmpfs -o size={size} tmpfs '{0}'", dir.display()))
    }

    /// `dir` bind-mounted onto itself, read-only.
    pub fn read_only(dir: &Path) -> Mount {
        Mount::run(dir, &format!("mount --bind '{0}' '{0}' && mount -o remount,ro,bind '{0}'", dir.display()))
    }

    /// Directory `from` bind-mounted at `at` (created if missing).
    pub fn bind(from: &Path, at: &Path) -> Mount {
        Mount::run(at, &format!("mkdir -p '{1}' && mount --bind '{0}' '{1}'", from.display(), at.display()))
    }

    fn run(dir: &Path, script: &str) -> Mount {
        let out = sh(Path::new("/"), script);
        assert!(out.status.success(), "mounting needs root: {}", String::from_utf8_lossy(&out.stderr));
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = sh(Path::new("/"), &format!("umount '{}'", self.0.display()));
    }
}
