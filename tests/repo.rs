//! The local repository through real pipelines: ship and fetch round trips,
//! deduplication, concurrent writers, crashes at any instant, damage, keys.

mod common;

use std::path::Path;

use common::*;

/// The backup and restore pipelines, with the key from the file `k`.
const BACKUP: &str = "chunk --repo R --key-file k | squeeze | encrypt --repo R --key-file k | ship R --key-file k";
const RESTORE: &str = "encrypt -d --repo R --key-file k | squeeze -d | chunk -d";

/// Some data with text and random parts, about `mib` MiB.
fn data(mib: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..mib {
        if i % 4 == 3 {
            out.extend_from_slice(&noise(1 << 20, seed + i as u64));
        } else {
            let text: Vec<u8> = (0..40_000)
                .flat_map(|r| format!("INSERT INTO t VALUES ({r},'{}-{i}');\n", seed).into_bytes())
                .collect();
            out.extend_from_slice(&text[..1 << 20]);
        }
    }
    out
}

fn init(dir: &Path) {
    sh_ok(dir, "keygen k && repo init R --key-file k 2>/dev/null");
}

/// Ships `what` and returns the receipt as JSON.
fn ship(dir: &Path, what: &str) -> serde_json::Value {
    let out = sh_ok(dir, &format!("dump-files {what} | {BACKUP}"));
    serde_json::from_slice(&out).expect("one JSON receipt")
}

fn snapshot_count(dir: &Path) -> usize {
    String::from_utf8(sh_ok(dir, "repo snapshots R --key-file k")).unwrap().lines().count()
}

#[test]
fn ship_and_fetch_round_trip_and_deduplicate() {
    let dir = scratch();
    init(dir.path());
    let v1 = data(24, 1);
    put(&dir.path().join("db/table.sql"), &v1, 0o640, 1_700_000_000);
    put(&dir.path().join("db/small"), b"small file", 0o600, 1_700_000_001);
    let first = ship(dir.path(), "db");
    assert_eq!(first["engine"], "files");
    assert_eq!(first["entries"], 3);
    let first_new = first["new_bytes"].as_u64().unwrap();
    assert!(first_new > 4 << 20, "{first}");

    // Unchanged: every chunk is already stored.
    let second = ship(dir.path(), "db");
    assert_eq!(second["new_chunks"], 0, "{second}");
    assert_eq!(second["new_bytes"], 0);
    assert_eq!(second["deduplicated_bytes"].as_u64().unwrap(), first_new);

    // 1% changed (in the middle, plus an insertion near the start): about that much is new.
    let mut v2 = v1.clone();
    let mid = v2.len() / 2;
    v2[mid..mid + v1.len() / 100].copy_from_slice(&noise(v1.len() / 100, 9));
    v2.splice(100_000..100_000, noise(1000, 3));
    put(&dir.path().join("db/table.sql"), &v2, 0o640, 1_700_000_100);
    let third = ship(dir.path(), "db");
    let added = third["new_bytes"].as_u64().unwrap();
    assert!(added < first_new / 3, "a 1% change added {added} of {first_new} bytes");

    assert_eq!(snapshot_count(dir.path()), 3);
    sh_ok(dir.path(), "repo check --read-data R --key-file k 2>/dev/null");
    // Latest gives v2; the first snapshot by its ID gives v1.
    sh_ok(dir.path(), &format!("fetch R latest --key-file k | {RESTORE} | unpack latest"));
    assert_eq!(std::fs::read(dir.path().join("latest/db/table.sql")).unwrap(), v2);
    let id = first["snapshot"].as_str().unwrap();
    sh_ok(dir.path(), &format!("fetch R {} --key-file k | {RESTORE} | unpack first", &id[..8]));
    assert_eq!(std::fs::read(dir.path().join("first/db/table.sql")).unwrap(), v1);
    assert_eq!(std::fs::read(dir.path().join("first/db/small")).unwrap(), b"small file");
}

#[test]
fn fetch_until_picks_the_chain_that_covers_a_time() {
    let dir = scratch();
    init(dir.path());
    put(&dir.path().join("db/v"), b"version one", 0o644, 1_700_000_000);
    ship(dir.path(), "db");
    let between = String::from_utf8(sh_ok(dir.path(), "date -u +%Y-%m-%dT%H:%M:%SZ; sleep 2")).unwrap();
    put(&dir.path().join("db/v"), b"version two", 0o644, 1_700_000_100);
    ship(dir.path(), "db");
    let between = between.trim();
    sh_ok(dir.path(), &format!("fetch R --until {between} --key-file k | {RESTORE} | unpack at-t1"));
    assert_eq!(std::fs::read(dir.path().join("at-t1/db/v")).unwrap(), b"version one");
    sh_ok(dir.path(), &format!("fetch R --until '2999-01-01 00:00' --key-file k | {RESTORE} | unpack now"));
    assert_eq!(std::fs::read(dir.path().join("now/db/v")).unwrap(), b"version two");
    let listed =
        sh_ok(dir.path(), &format!("repo snapshots R --key-file k --until {between} --engine files --kind full"));
    assert_eq!(String::from_utf8(listed).unwrap().lines().count(), 1);
    let err = sh_fails(dir.path(), "fetch R --until 2001-01-01 --key-file k > /dev/null", 1);
    assert!(err.contains("no full backup"), "{err}");
    let err = sh_fails(dir.path(), "fetch R --until yesterday-ish --key-file k > /dev/null", 2);
    assert!(err.contains("not a time"), "{err}");
}

#[test]
fn forget_and_prune_free_space_and_keep_what_is_needed() {
    let dir = scratch();
    init(dir.path());
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        put(&dir.path().join(format!("v{name}/db/data")), &data(6, 10 + i as u64), 0o644, 1_700_000_000);
    }
    ship(dir.path(), "va/db");
    // Made before forget and prune: this stream refers to chunks of the first backup.
    sh_ok(
        dir.path(),
        "dump-files va/db | chunk --repo R --key-file k | squeeze | encrypt --repo R --key-file k > again.bp",
    );
    ship(dir.path(), "vb/db");
    let third = ship(dir.path(), "vc/db");
    let before = dir_size(&dir.path().join("R/data"));
    let listing =
        String::from_utf8(sh_ok(dir.path(), "repo forget R --keep-last 1 --dry-run --key-file k 2>/dev/null")).unwrap();
    assert_eq!(listing.lines().filter(|l| l.starts_with("remove")).count(), 2, "{listing}");
    assert_eq!(snapshot_count(dir.path()), 3, "a dry run removes nothing");
    sh_ok(dir.path(), "repo forget R --keep-last 1 --key-file k > /dev/null 2>&1");
    assert_eq!(snapshot_count(dir.path()), 1);
    // First prune only marks; a backup that refers to a marked pack is still accepted
    // (it was chunked before the mark), and ship unmarks that pack before its snapshot appears.
    let err = String::from_utf8(sh(dir.path(), "repo prune R --key-file k").stderr).unwrap();
    assert!(err.contains("2 packs marked, 0 deleted"), "{err}");
    let again: serde_json::Value =
        serde_json::from_slice(&sh_ok(dir.path(), "ship R --key-file k < again.bp")).unwrap();
    assert_eq!(again["new_chunks"], 0, "{again}");
    assert_eq!(walk_files(&dir.path().join("R/pending")).len(), 1, "the first backup's pack is unmarked");
    let err = String::from_utf8(sh(dir.path(), "repo prune R --grace 0m --key-file k").stderr).unwrap();
    assert!(err.contains(": 0 packs marked, 1 deleted"), "{err}");
    assert!(walk_files(&dir.path().join("R/pending")).is_empty());
    assert!(dir_size(&dir.path().join("R/data")) < before * 3 / 4, "space was freed");
    sh_ok(dir.path(), "repo check --read-data R --key-file k 2>/dev/null");
    for (receipt, tree) in [(&third, "vc"), (&again, "va")] {
        let id = receipt["snapshot"].as_str().unwrap();
        sh_ok(dir.path(), &format!("rm -rf out && fetch R {id} --key-file k | {RESTORE} | unpack out"));
        assert_same_tree(&dir.path().join(tree).join("db"), &dir.path().join("out/db"));
    }
    let err = sh_fails(dir.path(), "repo forget R --key-file k", 2);
    assert!(err.contains("--keep"), "{err}");
}

#[test]
fn prune_beside_a_running_ship_loses_nothing() {
    let dir = scratch();
    init(dir.path());
    put(&dir.path().join("old/data"), &data(8, 20), 0o644, 1_700_000_000);
    // Large enough that the running ship stores packs before its snapshot.
    put(&dir.path().join("new/data"), &data(160, 21), 0o644, 1_700_000_000);
    ship(dir.path(), "old");
    put(&dir.path().join("keep/data"), &data(2, 22), 0o644, 1_700_000_000);
    let kept = ship(dir.path(), "keep");
    sh_ok(dir.path(), "repo forget R --keep-last 1 --key-file k > /dev/null 2>&1");
    sh_ok(
        dir.path(),
        &format!(
            "(dump-files new | {BACKUP} > receipt) & ship_pid=$!
             while kill -0 $ship_pid 2>/dev/null; do repo prune R --key-file k 2>/dev/null; done
             wait $ship_pid"
        ),
    );
    // Once the ship is done, a prune past the grace period reclaims the forgotten backup.
    sh_ok(
        dir.path(),
        "repo prune R --grace 0m --key-file k 2>/dev/null && repo prune R --grace 0m --key-file k 2>/dev/null",
    );
    sh_ok(dir.path(), "repo check --read-data R --key-file k 2>/dev/null");
    let new: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("receipt")).unwrap()).unwrap();
    for (receipt, tree) in [(&new, "new"), (&kept, "keep")] {
        let id = receipt["snapshot"].as_str().unwrap();
        sh_ok(dir.path(), &format!("rm -rf out && fetch R {id} --key-file k | {RESTORE} | unpack out"));
        assert_same_tree(&dir.path().join(tree), &dir.path().join("out").join(tree));
    }
}

fn dir_size(dir: &Path) -> u64 {
    walk_files(dir).iter().map(|f| std::fs::metadata(f).unwrap().len()).sum()
}

#[test]
fn concurrent_ships_all_restore() {
    let dir = scratch();
    init(dir.path());
    for i in 0..4 {
        put(&dir.path().join(format!("d{i}/data")), &data(6, i), 0o644, 1_700_000_000);
        put(&dir.path().join(format!("d{i}/shared")), &data(4, 99), 0o644, 1_700_000_000);
    }
    sh_ok(
        dir.path(),
        &format!(
            "for i in 0 1 2 3; do (dump-files d$i | {BACKUP} > receipt$i) & done; wait
             for i in 0 1 2 3; do test -s receipt$i; done"
        ),
    );
    assert_eq!(snapshot_count(dir.path()), 4);
    sh_ok(dir.path(), "repo check --read-data R --key-file k 2>/dev/null");
    for i in 0..4 {
        let id: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(format!("receipt{i}"))).unwrap()).unwrap();
        let id = id["snapshot"].as_str().unwrap();
        sh_ok(dir.path(), &format!("fetch R {id} --key-file k | {RESTORE} | unpack out{i}"));
        assert_same_tree(&dir.path().join(format!("d{i}")), &dir.path().join(format!("out{i}/d{i}")));
    }
}

#[test]
fn a_killed_ship_leaves_a_repository_that_checks_clean() {
    let dir = scratch();
    init(dir.path());
    put(&dir.path().join("big/data"), &data(96, 5), 0o644, 1_700_000_000);
    sh_ok(
        dir.path(),
        "dump-files big | chunk --repo R --key-file k | squeeze | encrypt --repo R --key-file k > stream.bp",
    );
    for delay in ["0.01", "0.05", "0.1", "0.2", "0.3", "0.5", "0.8"] {
        let _ = sh(dir.path(), &format!("timeout -s KILL {delay} ship R --key-file k < stream.bp > /dev/null"));
        sh_ok(dir.path(), "repo check R --key-file k 2>/dev/null");
        let listed = snapshot_count(dir.path());
        assert!(listed <= 1, "kill after {delay}s: {listed} snapshots");
        if listed == 1 {
            break;
        }
    }
    // Whatever happened, the next ship succeeds and restores.
    sh_ok(dir.path(), "ship R --key-file k < stream.bp > receipt");
    sh_ok(dir.path(), "repo check --read-data R --key-file k 2>/dev/null");
    sh_ok(dir.path(), &format!("fetch R latest --key-file k | {RESTORE} | unpack out"));
    assert_same_tree(&dir.path().join("big"), &dir.path().join("out/big"));
}

#[test]
fn damage_is_reported_and_never_restored_as_good() {
    let dir = scratch();
    init(dir.path());
    put(&dir.path().join("db/data"), &data(8, 2), 0o644, 1_700_000_000);
    ship(dir.path(), "db");
    let packs: Vec<_> = walk_files(&dir.path().join("R/data"));
    assert_eq!(packs.len(), 1);
    let pack = &packs[0];
    let original = std::fs::read(pack).unwrap();

    // A flipped byte in a pack.
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 1;
    std::fs::write(pack, &flipped).unwrap();
    let err = sh_fails(dir.path(), "repo check --read-data R --key-file k", 4);
    assert!(err.contains("damaged") || err.contains("authentication"), "{err}");
    let out = sh(dir.path(), &format!("fetch R latest --key-file k | {RESTORE} | unpack out"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
    assert!(!dir.path().join("out/db").exists(), "nothing restored");

    // A deleted pack.
    std::fs::remove_file(pack).unwrap();
    let err = sh_fails(dir.path(), "repo check R --key-file k", 4);
    assert!(err.contains("missing"), "{err}");
    let out = sh(dir.path(), "fetch R latest --key-file k > /dev/null");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(pack, &original).unwrap();

    // A truncated index.
    let index = walk_files(&dir.path().join("R/index")).remove(0);
    let bytes = std::fs::read(&index).unwrap();
    std::fs::write(&index, &bytes[..bytes.len() - 10]).unwrap();
    let err = sh_fails(dir.path(), "repo check R --key-file k", 4);
    assert!(err.contains("index"), "{err}");
    let out = sh(dir.path(), "fetch R latest --key-file k > /dev/null");
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(&index, &bytes).unwrap();
    sh_ok(dir.path(), "repo check --read-data R --key-file k 2>/dev/null");
}

#[test]
fn ship_refuses_incomplete_unencrypted_and_foreign_streams() {
    let dir = scratch();
    init(dir.path());
    put(&dir.path().join("db/data"), &data(4, 3), 0o644, 1_700_000_000);
    sh_ok(dir.path(), "dump-files db | chunk --repo R --key-file k | encrypt --repo R --key-file k > s.bp");
    let size = std::fs::metadata(dir.path().join("s.bp")).unwrap().len();
    sh_fails(dir.path(), &format!("head -c {} s.bp | ship R --key-file k", size - 100), 3);
    let err = sh_fails(dir.path(), "dump-files db | chunk --repo R --key-file k | ship R --key-file k", 2);
    assert!(err.contains("encrypt --repo"), "{err}");
    let err = sh_fails(
        dir.path(),
        "keygen other && dump-files db | chunk | encrypt --key-file other | ship R --key-file k",
        4,
    );
    assert!(err.contains("wrong key"), "{err}");
    let err =
        sh_fails(dir.path(), "dump-files /proc/self/mem | encrypt --repo R --key-file k | ship R --key-file k", 3);
    assert!(err.contains("no snapshot was stored"), "{err}");
    assert_eq!(snapshot_count(dir.path()), 0);
    // Keys: a wrong key and a directory that is not a repository are usage errors.
    let err = sh_fails(dir.path(), "repo snapshots R --key-file other", 2);
    assert!(err.contains("no key slot"), "{err}");
    let err = sh_fails(dir.path(), "mkdir -p empty && repo snapshots empty --key-file k", 2);
    assert!(err.contains("not a backpipe repository"), "{err}");
    let err = sh_fails(dir.path(), "repo init R --key-file k", 1);
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn keys_can_be_added_listed_and_removed() {
    let dir = scratch();
    init(dir.path());
    put(&dir.path().join("db/data"), b"content", 0o644, 1_700_000_000);
    ship(dir.path(), "db");
    sh_ok(dir.path(), "printf 'second key' > pw && repo key add R --key-file k --new-passphrase-file pw 2>/dev/null");
    let slots = String::from_utf8(sh_ok(dir.path(), "repo key list R")).unwrap();
    assert_eq!(slots.lines().count(), 2, "{slots}");
    assert!(slots.contains("passphrase") && slots.contains("key-file"), "{slots}");
    // The passphrase opens the same repository.
    sh_ok(
        dir.path(),
        "fetch R latest --passphrase-file pw | encrypt -d --repo R --passphrase-file pw | chunk -d | unpack out",
    );
    assert_eq!(std::fs::read(dir.path().join("out/db/data")).unwrap(), b"content");
    let file_slot = slots.lines().find(|l| l.ends_with("key-file")).unwrap().split_whitespace().next().unwrap();
    let err = sh_fails(dir.path(), &format!("repo key remove R {file_slot} --key-file k"), 2);
    assert!(err.contains("opened the repository"), "{err}");
    sh_ok(dir.path(), &format!("repo key remove R {file_slot} --passphrase-file pw 2>/dev/null"));
    let err = sh_fails(dir.path(), "repo snapshots R --key-file k", 2);
    assert!(err.contains("no key slot"), "{err}");
    sh_ok(dir.path(), "repo snapshots R --passphrase-file pw");
    sh_fails(dir.path(), "repo key list not-a-repo", 2);
}

#[test]
fn forged_chunks_summaries_and_references_are_refused() {
    use backpipe::format::Kind;
    let dir = scratch();
    init(dir.path());
    put(&dir.path().join("db/data"), &data(3, 7), 0o644, 1_700_000_000);
    sh_ok(dir.path(), "dump-files db | chunk --repo R --key-file k | squeeze | encrypt --repo R --key-file k > s.bp");
    // A chunk altered in transit (framing re-made with valid checksums) is not stored.
    let stream = std::fs::read(dir.path().join("s.bp")).unwrap();
    let tampered = forge(&stream, |frames| {
        let chunk = frames.iter_mut().find(|f| f.kind == Kind::Data).unwrap();
        let n = chunk.payload.len();
        chunk.payload[n - 20] ^= 1;
    });
    std::fs::write(dir.path().join("bad.bp"), tampered).unwrap();
    let err = sh_fails(dir.path(), "ship R --key-file k < bad.bp", 4);
    assert!(err.contains("authentication failed"), "{err}");
    assert_eq!(snapshot_count(dir.path()), 0);
    // References are for ship alone: `encrypt -d` refuses a stream that still holds them.
    sh_ok(dir.path(), "ship R --key-file k < s.bp > /dev/null");
    let err = sh_fails(
        dir.path(),
        "dump-files db | chunk --repo R --key-file k | encrypt --repo R --key-file k | encrypt -d --repo R --key-file k > /dev/null",
        4,
    );
    assert!(err.contains("reference to a chunk"), "{err}");
    // A summary paired with another snapshot's skeleton fails authentication.
    put(&dir.path().join("db/data"), b"other", 0o644, 1_700_000_000);
    ship(dir.path(), "db");
    let snaps = walk_files(&dir.path().join("R/snapshots"));
    let (a, b) = (std::fs::read(&snaps[0]).unwrap(), std::fs::read(&snaps[1]).unwrap());
    let header = |s: &[u8]| 12 + u32::from_le_bytes(s[8..12].try_into().unwrap()) as usize;
    let spliced = [&a[..header(&a)], &b[header(&b)..]].concat();
    std::fs::write(dir.path().join("R/snapshots/00000000000000000000000000000000"), spliced).unwrap();
    let out = sh(dir.path(), "repo snapshots R --key-file k");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    let err = sh_fails(dir.path(), "repo check R --key-file k", 4);
    assert!(err.contains("00000000000000000000000000000000"), "{err}");
    std::fs::remove_file(dir.path().join("R/snapshots/00000000000000000000000000000000")).unwrap();
    // A damaged key slot does not lock out the others.
    std::fs::write(dir.path().join("R/keys/0123456789abcdef"), b"{not json").unwrap();
    let out = sh(dir.path(), "repo snapshots R --key-file k");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("damaged"));
    let err = sh_fails(dir.path(), "repo key remove R ../config --key-file k", 2);
    assert!(err.contains("not a key slot name"), "{err}");
    assert!(dir.path().join("R/config").exists());
}

#[test]
fn repository_files_hold_no_plaintext() {
    let dir = scratch();
    sh_ok(dir.path(), "printf 'repo pass' > pw && repo init R --passphrase-file pw 2>/dev/null");
    let content = b"CONFIDENTIAL-PAYROLL-ROW ".repeat(20_000);
    put(&dir.path().join("SECRET-DIRECTORY/PAYROLL-FILE-NAME"), &content, 0o644, 1_700_000_000);
    sh_ok(
        dir.path(),
        "K='--passphrase-file pw'
         dump-files SECRET-DIRECTORY | chunk --repo R $K | squeeze | encrypt --repo R $K | ship R $K > /dev/null",
    );
    let host = backpipe::meta::host_name();
    for file in walk_files(&dir.path().join("R")) {
        let bytes = std::fs::read(&file).unwrap();
        let mut markers = vec!["SECRET-DIRECTORY", "PAYROLL-FILE-NAME", "CONFIDENTIAL", "dump-files"];
        if host.len() >= 6 {
            markers.push(&host);
        }
        for marker in markers {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "'{marker}' appears in {}",
                file.display()
            );
        }
    }
    sh_ok(dir.path(), "repo check --read-data R --passphrase-file pw 2>/dev/null");
}

/// Every regular file under a directory.
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk_files(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}
