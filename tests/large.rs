//! A multi-GiB sparse file through the whole pipeline: restored byte for byte
//! (and sparse again), with every tool's peak memory measured by the kernel
//! (wait4's ru_maxrss) and bounded, whatever the input size.

mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;

/// Peak memory any tool may use, in bytes.
const MEMORY_LIMIT: u64 = 256 << 20;

/// Waits for a child and returns (exit code, peak resident set in bytes).
fn wait_with_peak(child: Child) -> (i32, u64) {
    let pid = child.id() as nix::libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data filled in by the kernel; the pid is our own child.
    let mut usage: nix::libc::rusage = unsafe { std::mem::zeroed() };
    let got = unsafe { nix::libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4 failed");
    std::mem::forget(child);
    let code = if nix::libc::WIFEXITED(status) { nix::libc::WEXITSTATUS(status) } else { -1 };
    (code, usage.ru_maxrss as u64 * 1024)
}

/// Starts `stages` as one pipeline in `cwd`; returns each stage's (command, code, peak).
fn run_pipeline(cwd: &Path, stages: &[&str]) -> Vec<(String, i32, u64)> {
    let mut children = Vec::new();
    let mut previous: Option<Stdio> = None;
    for (i, stage) in stages.iter().enumerate() {
        let mut words = stage.split_whitespace();
        let program = bin_dir().join(words.next().unwrap());
        let mut command = Command::new(program);
        command.args(words).current_dir(cwd).stderr(Stdio::inherit());
        command.stdin(previous.take().unwrap_or_else(Stdio::null));
        command.stdout(if i + 1 < stages.len() { Stdio::piped() } else { Stdio::null() });
        let mut child = command.spawn().unwrap();
        previous = child.stdout.take().map(Stdio::from);
        children.push((stage.to_string(), child));
    }
    children
        .into_iter()
        .map(|(stage, child)| {
            let (code, peak) = wait_with_peak(child);
            (stage, code, peak)
        })
        .collect()
}

#[test]
fn a_sparse_multi_gib_file_round_trips_in_bounded_memory() {
    let dir = scratch();
    let size: u64 = 4 << 30;
    let big = std::fs::File::create(dir.path().join("big")).unwrap();
    big.set_len(size).unwrap();
    // Real data in a few places, including across a chunk-size boundary and at the very end.
    big.write_all_at(&noise(3 << 20, 1), 1 << 30).unwrap();
    big.write_all_at(&noise(100_000, 2), (2 << 30) - 50_000).unwrap();
    big.write_all_at(b"the end", size - 7).unwrap();
    drop(big);
    sh_ok(dir.path(), "keygen k");
    let results = run_pipeline(
        dir.path(),
        &[
            "dump-files big",
            "chunk",
            "squeeze",
            "encrypt --key-file k",
            "encrypt -d --key-file k",
            "squeeze -d",
            "chunk -d",
            "unpack out",
        ],
    );
    let inspect = run_pipeline(dir.path(), &["dump-files big", "chunk", "inspect"]);
    // Through a repository: ship spools the skeleton and fetch streams it back.
    sh_ok(dir.path(), "repo init R --key-file k 2>/dev/null");
    let shipped = run_pipeline(
        dir.path(),
        &[
            "dump-files big",
            "chunk --repo R --key-file k",
            "squeeze",
            "encrypt --repo R --key-file k",
            "ship R --key-file k",
        ],
    );
    let fetched = run_pipeline(
        dir.path(),
        &[
            "fetch R latest --key-file k",
            "encrypt -d --repo R --key-file k",
            "squeeze -d",
            "chunk -d",
            "unpack fetched",
        ],
    );
    let checked = run_pipeline(dir.path(), &["repo check --read-data R --key-file k"]);
    for (stage, code, peak) in results.iter().chain(&inspect).chain(&shipped).chain(&fetched).chain(&checked) {
        eprintln!("{stage:<28} exit {code}  peak {:.1} MiB", *peak as f64 / 1048576.0);
        assert_eq!(*code, 0, "{stage} failed");
        assert!(*peak < MEMORY_LIMIT, "{stage} used {peak} bytes at peak");
    }
    for restored in [dir.path().join("out/big"), dir.path().join("fetched/big")] {
        assert_same_tree(&dir.path().join("big"), &restored);
        let allocated = std::fs::metadata(&restored).unwrap().blocks() * 512;
        assert!(allocated < 64 << 20, "the restored file should be sparse, {allocated} bytes allocated");
    }
}
