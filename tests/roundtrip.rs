//! Round trips of real trees through real shell pipelines of the built tools:
//! every sensible composition must give back the tree byte for byte, with
//! modes, mtimes and symlinks.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use backpipe::meta::EntryType;
use common::*;

/// A tree with the awkward cases: empty files, one byte, sizes on and around
/// chunk boundaries, incompressible data, text, many small files, symlinks
/// (relative, absolute, dangling), odd modes and names, nested directories.
fn make_tree(root: &Path) {
    let t = 1_600_000_000;
    put(&root.join("empty"), b"", 0o644, t);
    put(&root.join("one-byte"), b"x", 0o600, t + 1);
    for (name, size) in
        [("min-chunk", 256 * 1024), ("avg-chunk", 1 << 20), ("max-chunk", 4 << 20), ("max-plus-one", (4 << 20) + 1)]
    {
        put(&root.join("bounds").join(name), &noise(size, size as u64), 0o644, t + 2);
    }
    put(&root.join("random.bin"), &noise(12 << 20, 99), 0o640, t + 3);
    let text: Vec<u8> =
        (0..200_000).flat_map(|i| format!("INSERT INTO t VALUES ({i},'row {i}');\n").into_bytes()).collect();
    put(&root.join("dump.sql"), &text, 0o644, t + 4);
    for i in 0..2500 {
        put(&root.join(format!("many/d{}/f{i:04}", i % 15)), format!("small file {i}\n").as_bytes(), 0o644, t + i);
    }
    put(&root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o4755, t + 5);
    put(&root.join("names/with space and ünïcode"), b"name test", 0o644, t + 6);
    std::os::unix::fs::symlink("../one-byte", root.join("names/rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("names/abs-link")).unwrap();
    std::os::unix::fs::symlink("no/such/target", root.join("names/dangling")).unwrap();
    for link in ["rel-link", "abs-link", "dangling"] {
        set_mtime(&root.join("names").join(link), t + 7, 5);
    }
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::set_permissions(root.join("empty-dir"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(root.join("bounds"), std::fs::Permissions::from_mode(0o555)).unwrap();
    for dir in ["empty-dir", "bounds", "names", "many", ""] {
        set_mtime(&root.join(dir), t + 8, 777);
    }
}

/// Forward and reverse halves of each composition under test.
const COMPOSITIONS: &[(&str, &str)] = &[
    ("", ""),
    ("| chunk", "| chunk -d"),
    ("| squeeze", "| squeeze -d"),
    ("| encrypt --key-file k", "| encrypt -d --key-file k"),
    ("| chunk | squeeze", "| squeeze -d | chunk -d"),
    ("| chunk | encrypt --key-file k", "| encrypt -d --key-file k | chunk -d"),
    ("| squeeze | encrypt --key-file k", "| encrypt -d --key-file k | squeeze -d"),
    ("| chunk | squeeze | encrypt --key-file k", "| encrypt -d --key-file k | squeeze -d | chunk -d"),
    ("| chunk --key-file k | squeeze -l 9 | encrypt --key-file k", "| encrypt -d --key-file k | squeeze -d | chunk -d"),
    ("| chunk --min-size 4K --avg-size 16K --max-size 64K | squeeze", "| squeeze -d | chunk -d"),
    // Orders other than the usual one still compose: filters pass what is not theirs.
    ("| encrypt --key-file k | squeeze", "| squeeze -d | encrypt -d --key-file k"),
    ("| squeeze | chunk", "| chunk -d | squeeze -d"),
];

#[test]
fn every_composition_round_trips_a_tree() {
    let dir = scratch();
    make_tree(&dir.path().join("tree"));
    sh_ok(dir.path(), "keygen k");
    for (i, (forward, reverse)) in COMPOSITIONS.iter().enumerate() {
        let out = format!("out{i}");
        sh_ok(dir.path(), &format!("dump-files tree {forward} > s{i}.bp\ncat s{i}.bp {reverse} | unpack {out}"));
        assert_same_tree(&dir.path().join("tree"), &dir.path().join(&out).join("tree"));
        // The stream file is intact and complete as inspect sees it.
        sh_ok(dir.path(), &format!("inspect s{i}.bp > /dev/null"));
    }
}

#[test]
fn the_full_pipeline_round_trips_in_one_shell_pipeline() {
    let dir = scratch();
    make_tree(&dir.path().join("tree"));
    sh_ok(
        dir.path(),
        "keygen k
         dump-files tree | chunk | squeeze | encrypt --key-file k | encrypt -d --key-file k | squeeze -d | chunk -d | unpack out",
    );
    assert_same_tree(&dir.path().join("tree"), &dir.path().join("out/tree"));
}

#[test]
fn shared_fixtures_round_trip() {
    let dir = scratch();
    let fixtures = fixtures();
    sh_ok(
        dir.path(),
        &format!(
            "export BACKPIPE_PASSPHRASE=correct-horse
             dump-files {0}/ese {0}/nsf {0}/binlog | chunk --avg-size 64K --min-size 16K --max-size 256K | squeeze | encrypt | encrypt -d | squeeze -d | chunk -d | unpack out",
            fixtures.display()
        ),
    );
    for name in ["ese", "nsf", "binlog"] {
        assert_same_tree(&fixtures.join(name), &dir.path().join("out").join(name));
    }
}

#[test]
fn passphrases_come_from_a_file_a_descriptor_or_the_environment() {
    let dir = scratch();
    put(&dir.path().join("tree/a"), b"secret content", 0o644, 1_700_000_000);
    sh_ok(
        dir.path(),
        "printf 'pass one\\n' > pw
         dump-files tree | encrypt --passphrase-file pw | encrypt -d --passphrase-fd 3 3<pw | unpack o1
         PW='pass two' && export PW
         dump-files tree | encrypt --passphrase-env PW | encrypt -d --passphrase-env PW | unpack o2",
    );
    assert_same_tree(&dir.path().join("tree"), &dir.path().join("o1/tree"));
    assert_same_tree(&dir.path().join("tree"), &dir.path().join("o2/tree"));
}

#[test]
fn concatenated_streams_are_one_valid_input() {
    let dir = scratch();
    put(&dir.path().join("a/x"), b"first", 0o644, 1_700_000_000);
    put(&dir.path().join("b/y"), b"second", 0o644, 1_700_000_000);
    sh_ok(
        dir.path(),
        "keygen k
         dump-files a | chunk | encrypt --key-file k > 1.bp
         dump-files b | chunk | encrypt --key-file k > 2.bp
         cat 1.bp 2.bp | encrypt -d --key-file k | chunk -d | unpack out
         test \"$(cat 1.bp 2.bp | inspect --key-file k | grep -c '^stream')\" = 2",
    );
    assert_same_tree(&dir.path().join("a"), &dir.path().join("out/a"));
    assert_same_tree(&dir.path().join("b"), &dir.path().join("out/b"));
}

#[test]
fn an_encrypted_stream_holds_no_plaintext_names_included() {
    let dir = scratch();
    let marker_name = "QUARTERLY-SALARIES-FILE";
    let content: Vec<u8> = b"TOPSECRET-PAYLOAD-MARKER ".repeat(40_000);
    put(&dir.path().join("tree").join(marker_name), &content, 0o644, 1_700_000_000);
    put(&dir.path().join("tree/DIRECTORY-MARKER/x"), &content, 0o644, 1_700_000_000);
    std::os::unix::fs::symlink("LINK-TARGET-MARKER", dir.path().join("tree/l")).unwrap();
    for forward in [
        "| encrypt --key-file k",
        "| chunk | squeeze | encrypt --key-file k",
        "| chunk --key-file k | encrypt --key-file k",
    ] {
        let stream = sh_ok(dir.path(), &format!("keygen k 2>/dev/null || true\ndump-files tree {forward}"));
        let host = backpipe::meta::host_name();
        let mut markers = vec![marker_name, "TOPSECRET", "DIRECTORY-MARKER", "LINK-TARGET-MARKER", "dump-files"];
        if host.len() >= 6 {
            markers.push(&host); // shorter names turn up in random bytes by chance
        }
        for marker in markers {
            assert!(
                !stream.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "'{marker}' appears in the encrypted stream ({forward})"
            );
        }
        // Without the key, inspect still shows kinds and sizes but no names.
        std::fs::write(dir.path().join("e.bp"), &stream).unwrap();
        let listing = sh_ok(dir.path(), "inspect e.bp");
        let listing = String::from_utf8(listing).unwrap();
        assert!(listing.contains("encrypted"), "{listing}");
        assert!(!listing.contains(marker_name));
        let with_key = String::from_utf8(sh_ok(dir.path(), "inspect --key-file k e.bp")).unwrap();
        assert!(with_key.contains(marker_name), "{with_key}");
    }
}

#[test]
fn unpack_refuses_to_overwrite_without_force() {
    let dir = scratch();
    put(&dir.path().join("tree/a"), b"new content", 0o644, 1_700_000_000);
    put(&dir.path().join("out/tree/a"), b"old content", 0o644, 1_600_000_000);
    let err = sh_fails(dir.path(), "dump-files tree > s.bp\nunpack out < s.bp", 1);
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("out/tree/a")).unwrap(), b"old content");
    sh_ok(dir.path(), "unpack --force out < s.bp");
    assert_same_tree(&dir.path().join("tree"), &dir.path().join("out/tree"));
    // No staging directory is left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("tree")]);
}

#[test]
fn unpack_never_writes_outside_its_directory() {
    use EntryType::{Dir, File, Symlink};
    let dir = scratch();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let escape = outside.display().to_string();
    let escape_file = format!("{escape}/f");
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("parent path", forged_stream(&[("../outside/f", File, None)])),
        ("nested parent path", forged_stream(&[("a/../../outside/f", File, None)])),
        ("absolute path", forged_stream(&[(&escape_file, File, None)])),
        ("write through a symlink", forged_stream(&[("l", Symlink, Some(&escape)), ("l/f", File, None)])),
        (
            "write through a nested symlink",
            forged_stream(&[("d", Dir, None), ("d/l", Symlink, Some(&escape)), ("d/l/f", File, None)]),
        ),
        ("a file over a symlink", forged_stream(&[("l", Symlink, Some(&escape_file)), ("l", File, None)])),
        ("a staging name", forged_stream(&[(".backpipe-unpack-1-0", File, None)])),
    ];
    for (what, stream) in attacks {
        std::fs::write(dir.path().join("evil.bp"), stream).unwrap();
        let out = sh(dir.path(), "unpack target < evil.bp");
        assert_eq!(out.status.code(), Some(1), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none(), "{what}: wrote outside");
        assert!(std::fs::read_dir(dir.path().join("target")).unwrap().next().is_none(), "{what}: committed something");
    }
}

#[test]
fn force_replaces_whole_trees_and_concatenations_need_it_too() {
    let dir = scratch();
    put(&dir.path().join("v1/tree/old-only"), b"old", 0o644, 1_600_000_000);
    put(&dir.path().join("v2/tree/new"), b"new", 0o644, 1_700_000_000);
    sh_ok(dir.path(), "(cd v1 && dump-files tree) > 1.bp\n(cd v2 && dump-files tree) > 2.bp\nunpack out < 1.bp");
    // Two streams with the same top-level name: the second is refused without --force.
    let err = sh_fails(dir.path(), "cat 1.bp 2.bp | unpack again", 1);
    assert!(err.contains("already exists"), "{err}");
    assert_same_tree(&dir.path().join("v1/tree"), &dir.path().join("again/tree"));
    sh_ok(dir.path(), "unpack --force out < 2.bp");
    assert_same_tree(&dir.path().join("v2/tree"), &dir.path().join("out/tree"));
    let left: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("tree")], "the old tree and the staging directory are gone");
}

#[test]
fn a_killed_unpack_leaves_staging_that_the_next_run_removes() {
    let dir = scratch();
    put(&dir.path().join("tree/a"), b"1", 0o644, 1_700_000_000);
    std::fs::create_dir_all(dir.path().join("out/.backpipe-unpack-999999999-0/tree")).unwrap();
    let err = String::from_utf8(sh(dir.path(), "dump-files tree | unpack out").stderr).unwrap();
    assert!(err.contains("left by an interrupted run"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("tree")]);
}

#[test]
fn dot_stores_contents_at_the_top_level() {
    let dir = scratch();
    put(&dir.path().join("tree/a"), b"1", 0o644, 1_700_000_000);
    put(&dir.path().join("tree/sub/b"), b"2", 0o644, 1_700_000_000);
    sh_ok(dir.path(), "cd tree && dump-files . > ../s.bp\ncd .. && unpack out < s.bp");
    assert_same_tree(&dir.path().join("tree/sub"), &dir.path().join("out/sub"));
    assert_eq!(std::fs::read(dir.path().join("out/a")).unwrap(), b"1");
}

#[test]
fn help_teaches_and_usage_errors_exit_2() {
    let dir = scratch();
    for tool in ["dump-files", "chunk", "squeeze", "encrypt", "unpack", "inspect", "keygen"] {
        let help = String::from_utf8(sh_ok(dir.path(), &format!("{tool} --help"))).unwrap();
        assert!(help.contains("Usage:"), "{tool}: {help}");
        sh_fails(dir.path(), &format!("{tool} --no-such-option"), 2);
    }
    let err = sh_fails(dir.path(), "echo | encrypt > /dev/null", 2);
    assert!(err.contains("no key given"), "{err}");
    let err = sh_fails(dir.path(), "chunk --min-size 2M --avg-size 1M < /dev/null > /dev/null", 2);
    assert!(err.contains("chunk sizes"), "{err}");
    let err = sh_fails(dir.path(), "dump-files no-such-path > /dev/null", 1);
    assert!(err.contains("no-such-path"), "{err}");
    let err = sh_fails(dir.path(), "mkdir -p d/sub && cd d && dump-files . sub > /dev/null", 2);
    assert!(err.contains("must be the only path"), "{err}");
    let err = sh_fails(dir.path(), "echo x | encrypt --key-file missing.key > /dev/null", 2);
    assert!(err.contains("missing.key"), "{err}");
    let err = sh_fails(dir.path(), "echo x | encrypt --passphrase-fd 0 > /dev/null", 2);
    assert!(err.contains("standard stream"), "{err}");
    sh_ok(dir.path(), "keygen k && test \"$(stat -c %a k)\" = 600");
    let err = sh_fails(dir.path(), "keygen k", 1);
    assert!(err.contains("exists"), "{err}");
}
