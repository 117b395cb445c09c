//! The repository on every backend (a local directory, a private OpenSSH
//! SFTP server, a private S3 server) through real pipelines: ship and fetch
//! round trips, deduplication, concurrent writers, crashes at any instant,
//! damage, keys. scripts/test starts the servers and sets BACKPIPE_TEST_*.

mod common;

use std::path::Path;
use std::process::Output;

use backpipe::repo::storage::Storage;
use common::*;

/// The backup and restore pipelines, with the key from the file `k`, into the repository `$R`.
const BACKUP: &str =
    r#"chunk --repo "$R" --key-file k | squeeze | encrypt --repo "$R" --key-file k | ship "$R" --key-file k"#;
const RESTORE: &str = r#"encrypt -d --repo "$R" --key-file k | squeeze -d | chunk -d"#;

/// Where a test's repository lives.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Local,
    Sftp,
    S3,
}

/// A setting scripts/test exports for the private servers it starts.
fn server_setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts the private SFTP and S3 servers")
    })
}

impl Backend {
    /// The directory on this machine that holds the repository (not for S3).
    fn directory(self, dir: &Path) -> std::path::PathBuf {
        match self {
            Backend::Local => dir.join("R"),
            Backend::Sftp => Path::new(&server_setting("BACKPIPE_TEST_SFTP_ROOT")).join(dir.file_name().unwrap()),
            Backend::S3 => panic!("an S3 repository has no local directory"),
        }
    }

    /// A fresh repository location for the test working in `dir`.
    fn location(self, dir: &Path) -> String {
        let unique = dir.file_name().unwrap().to_string_lossy().into_owned();
        match self {
            Backend::Local => dir.join("R").display().to_string(),
            Backend::Sftp => format!(
                "sftp://{}@{}:{}{}/{unique}",
                server_setting("BACKPIPE_TEST_SFTP_USER"),
                server_setting("BACKPIPE_TEST_SFTP_HOST"),
                server_setting("BACKPIPE_TEST_SFTP_PORT"),
                server_setting("BACKPIPE_TEST_SFTP_ROOT"),
            ),
            Backend::S3 => format!(
                "s3://{}/{unique}?endpoint={}&region={}",
                server_setting("BACKPIPE_TEST_S3_BUCKET"),
                server_setting("BACKPIPE_TEST_S3_ENDPOINT"),
                server_setting("BACKPIPE_TEST_S3_REGION"),
            ),
        }
    }
}

/// One test's scratch directory and repository; scripts run in the
/// directory with the repository's location in `$R`.
struct Case {
    dir: tempfile::TempDir,
    repo: String,
}

impl Case {
    /// A scratch directory, a key file `k` and an initialised repository.
    fn new(backend: Backend) -> Case {
        let case = Case::without_repo(backend);
        case.ok(r#"keygen k && repo init "$R" --key-file k 2>/dev/null"#);
        case
    }

    /// A scratch directory and a location where no repository exists yet.
    fn without_repo(backend: Backend) -> Case {
        let dir = scratch();
        let repo = backend.location(dir.path());
        Case { dir, repo }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, script: &str) -> Output {
        sh(self.path(), &format!("export R='{}'\n{script}", self.repo))
    }

    fn ok(&self, script: &str) -> Vec<u8> {
        sh_ok(self.path(), &format!("export R='{}'\n{script}", self.repo))
    }

    fn fails(&self, script: &str, code: i32) -> String {
        sh_fails(self.path(), &format!("export R='{}'\n{script}", self.repo), code)
    }

    /// Ships the tree `what` and returns the receipt.
    fn ship(&self, what: &str) -> serde_json::Value {
        serde_json::from_slice(&self.ok(&format!("dump-files {what} | {BACKUP}"))).expect("one JSON receipt")
    }

    fn snapshot_count(&self) -> usize {
        String::from_utf8(self.ok(r#"repo snapshots "$R" --key-file k"#)).unwrap().lines().count()
    }

    /// Fetches snapshot `which` and restores it into `out` (emptied first).
    fn restore(&self, which: &str, out: &str) {
        self.ok(&format!(r#"rm -rf {out} && fetch "$R" {which} --key-file k | {RESTORE} | unpack {out}"#));
    }

    /// The repository's storage, reached directly, as an attacker or a failing disk would.
    fn storage(&self) -> Box<dyn Storage> {
        backpipe::repo::open_storage(&self.repo).unwrap()
    }

    fn objects(&self, folder: &str) -> Vec<String> {
        self.storage().list(folder).unwrap()
    }

    /// Every object of the repository, by name.
    fn all_objects(&self) -> Vec<String> {
        let mut names = vec!["config".to_string()];
        for folder in ["keys", "data", "index", "snapshots", "pending"] {
            names.extend(self.objects(folder));
        }
        names
    }

    fn stored_bytes(&self, folder: &str) -> u64 {
        let storage = self.storage();
        self.objects(folder).iter().map(|name| storage.size(name).unwrap()).sum()
    }

    /// Replaces an object's bytes.
    fn overwrite(&self, name: &str, bytes: &[u8]) {
        let storage = self.storage();
        storage.remove(name).unwrap();
        storage.create(name, bytes).unwrap();
    }
}

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

/// Runs each named test function once per backend, as `local::name`, `sftp::name` and `s3::name`.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod local { $( #[test] fn $test() { super::$test(super::Backend::Local) } )* }
        mod sftp { $( #[test] fn $test() { super::$test(super::Backend::Sftp) } )* }
        mod s3 { $( #[test] fn $test() { super::$test(super::Backend::S3) } )* }
    };
}

on_every_backend!(
    ship_and_fetch_round_trip_and_deduplicate,
    fetch_until_picks_the_chain_that_covers_a_time,
    forget_and_prune_free_space_and_keep_what_is_needed,
    prune_beside_a_running_ship_loses_nothing,
    concurrent_ships_all_restore,
    a_killed_ship_leaves_a_repository_that_checks_clean,
    damage_is_reported_and_never_restored_as_good,
    ship_refuses_incomplete_unencrypted_and_foreign_streams,
    keys_can_be_added_listed_and_removed,
    forged_chunks_summaries_and_references_are_refused,
    repository_files_hold_no_plaintext,
    a_write_only_key_ships_and_deduplicates_but_reads_nothing,
    selectors_honour_host_and_engine,
    a_damaged_newest_snapshot_is_never_skipped,
);

fn ship_and_fetch_round_trip_and_deduplicate(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    let v1 = data(24, 1);
    put(&dir.join("db/table.sql"), &v1, 0o640, 1_700_000_000);
    put(&dir.join("db/small"), b"small file", 0o600, 1_700_000_001);
    let first = case.ship("db");
    assert_eq!(first["engine"], "files");
    assert_eq!(first["entries"], 3);
    let first_new = first["new_bytes"].as_u64().unwrap();
    assert!(first_new > 4 << 20, "{first}");

    // Unchanged: every chunk is already stored.
    let second = case.ship("db");
    assert_eq!(second["new_chunks"], 0, "{second}");
    assert_eq!(second["new_bytes"], 0);
    assert_eq!(second["deduplicated_bytes"].as_u64().unwrap(), first_new);

    // 1% changed (in the middle, plus an insertion near the start): about that much is new.
    let mut v2 = v1.clone();
    let mid = v2.len() / 2;
    v2[mid..mid + v1.len() / 100].copy_from_slice(&noise(v1.len() / 100, 9));
    v2.splice(100_000..100_000, noise(1000, 3));
    put(&dir.join("db/table.sql"), &v2, 0o640, 1_700_000_100);
    let third = case.ship("db");
    let added = third["new_bytes"].as_u64().unwrap();
    assert!(added < first_new / 3, "a 1% change added {added} of {first_new} bytes");

    assert_eq!(case.snapshot_count(), 3);
    case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
    // Latest gives v2; the first snapshot by its ID prefix gives v1.
    case.restore("latest", "latest");
    assert_eq!(std::fs::read(dir.join("latest/db/table.sql")).unwrap(), v2);
    case.restore(&first["snapshot"].as_str().unwrap()[..8], "first");
    assert_eq!(std::fs::read(dir.join("first/db/table.sql")).unwrap(), v1);
    assert_eq!(std::fs::read(dir.join("first/db/small")).unwrap(), b"small file");
}

fn fetch_until_picks_the_chain_that_covers_a_time(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    put(&dir.join("db/v"), b"version one", 0o644, 1_700_000_000);
    case.ship("db");
    let between = String::from_utf8(case.ok("date -u +%Y-%m-%dT%H:%M:%SZ; sleep 2")).unwrap();
    put(&dir.join("db/v"), b"version two", 0o644, 1_700_000_100);
    case.ship("db");
    let between = between.trim();
    case.ok(&format!(r#"fetch "$R" --until {between} --key-file k | {RESTORE} | unpack at-t1"#));
    assert_eq!(std::fs::read(dir.join("at-t1/db/v")).unwrap(), b"version one");
    case.ok(&format!(r#"fetch "$R" --until '2999-01-01 00:00' --key-file k | {RESTORE} | unpack now"#));
    assert_eq!(std::fs::read(dir.join("now/db/v")).unwrap(), b"version two");
    let listed = case.ok(&format!(r#"repo snapshots "$R" --key-file k --until {between} --engine files --kind full"#));
    assert_eq!(String::from_utf8(listed).unwrap().lines().count(), 1);
    let err = case.fails(r#"fetch "$R" --until 2001-01-01 --key-file k > /dev/null"#, 1);
    assert!(err.contains("no full backup"), "{err}");
    let err = case.fails(r#"fetch "$R" --until yesterday-ish --key-file k > /dev/null"#, 2);
    assert!(err.contains("not a time"), "{err}");
}

fn forget_and_prune_free_space_and_keep_what_is_needed(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        put(&dir.join(format!("v{name}/db/data")), &data(6, 10 + i as u64), 0o644, 1_700_000_000);
    }
    case.ship("va/db");
    // Made before forget and prune: this stream refers to chunks of the first backup.
    case.ok(
        r#"dump-files va/db | chunk --repo "$R" --key-file k | squeeze | encrypt --repo "$R" --key-file k > again.bp"#,
    );
    case.ship("vb/db");
    let third = case.ship("vc/db");
    let before = case.stored_bytes("data");
    let listing =
        String::from_utf8(case.ok(r#"repo forget "$R" --keep-last 1 --dry-run --key-file k 2>/dev/null"#)).unwrap();
    assert_eq!(listing.lines().filter(|l| l.starts_with("remove")).count(), 2, "{listing}");
    let decisions =
        String::from_utf8(case.ok(r#"repo forget "$R" --keep-last 1 --dry-run --json --key-file k 2>/dev/null"#))
            .unwrap();
    let decisions: Vec<serde_json::Value> = decisions.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(decisions.iter().filter(|d| d["keep"] == false).count(), 2, "{decisions:?}");
    assert_eq!(case.snapshot_count(), 3, "a dry run removes nothing");
    case.ok(r#"repo forget "$R" --keep-last 1 --key-file k > /dev/null 2>&1"#);
    assert_eq!(case.snapshot_count(), 1);
    // First prune only marks; a backup that refers to a marked pack is still accepted
    // (it was chunked before the mark), and ship unmarks that pack before its snapshot appears.
    let out = case.run(r#"repo prune "$R" --json --key-file k"#);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("2 packs marked, 0 deleted"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["marked"].as_u64(), report["deleted"].as_u64()), (Some(2), Some(0)), "{report}");
    let again: serde_json::Value = serde_json::from_slice(&case.ok(r#"ship "$R" --key-file k < again.bp"#)).unwrap();
    assert_eq!(again["new_chunks"], 0, "{again}");
    assert_eq!(case.objects("pending").len(), 1, "the first backup's pack is unmarked");
    let err = String::from_utf8(case.run(r#"repo prune "$R" --grace 0m --key-file k"#).stderr).unwrap();
    assert!(err.contains(": 0 packs marked, 1 deleted"), "{err}");
    assert!(case.objects("pending").is_empty());
    assert!(case.stored_bytes("data") < before * 3 / 4, "space was freed");
    let report: serde_json::Value =
        serde_json::from_slice(&case.ok(r#"repo check --read-data --json "$R" --key-file k 2>/dev/null"#)).unwrap();
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["snapshots"], 2, "{report}");
    for (receipt, tree) in [(&third, "vc"), (&again, "va")] {
        case.restore(receipt["snapshot"].as_str().unwrap(), "out");
        assert_same_tree(&dir.join(tree).join("db"), &dir.join("out/db"));
    }
    let err = case.fails(r#"repo forget "$R" --key-file k"#, 2);
    assert!(err.contains("--keep"), "{err}");
}

fn prune_beside_a_running_ship_loses_nothing(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    put(&dir.join("old/data"), &data(8, 20), 0o644, 1_700_000_000);
    // Large enough that the running ship stores packs before its snapshot.
    put(&dir.join("new/data"), &data(160, 21), 0o644, 1_700_000_000);
    case.ship("old");
    put(&dir.join("keep/data"), &data(2, 22), 0o644, 1_700_000_000);
    let kept = case.ship("keep");
    case.ok(r#"repo forget "$R" --keep-last 1 --key-file k > /dev/null 2>&1"#);
    case.ok(&format!(
        r#"(dump-files new | {BACKUP} > receipt) & ship_pid=$!
           while kill -0 $ship_pid 2>/dev/null; do repo prune "$R" --key-file k 2>/dev/null; done
           wait $ship_pid"#
    ));
    // Once the ship is done, a prune past the grace period reclaims the forgotten backup.
    case.ok(
        r#"repo prune "$R" --grace 0m --key-file k 2>/dev/null && repo prune "$R" --grace 0m --key-file k 2>/dev/null"#,
    );
    case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
    let new: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("receipt")).unwrap()).unwrap();
    for (receipt, tree) in [(&new, "new"), (&kept, "keep")] {
        case.restore(receipt["snapshot"].as_str().unwrap(), "out");
        assert_same_tree(&dir.join(tree), &dir.join("out").join(tree));
    }
}

fn concurrent_ships_all_restore(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    for i in 0..4 {
        put(&dir.join(format!("d{i}/data")), &data(6, i), 0o644, 1_700_000_000);
        put(&dir.join(format!("d{i}/shared")), &data(4, 99), 0o644, 1_700_000_000);
    }
    case.ok(&format!(
        "for i in 0 1 2 3; do (dump-files d$i | {BACKUP} > receipt$i) & done; wait
         for i in 0 1 2 3; do test -s receipt$i; done"
    ));
    assert_eq!(case.snapshot_count(), 4);
    case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
    for i in 0..4 {
        let receipt: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("receipt{i}"))).unwrap()).unwrap();
        case.restore(receipt["snapshot"].as_str().unwrap(), &format!("out{i}"));
        assert_same_tree(&dir.join(format!("d{i}")), &dir.join(format!("out{i}/d{i}")));
    }
}

fn a_killed_ship_leaves_a_repository_that_checks_clean(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    put(&dir.join("big/data"), &data(96, 5), 0o644, 1_700_000_000);
    case.ok(
        r#"dump-files big | chunk --repo "$R" --key-file k | squeeze | encrypt --repo "$R" --key-file k > stream.bp"#,
    );
    // Kill instants from before the first pack upload to the snapshot write.
    for delay in ["0.01", "0.05", "0.1", "0.2", "0.3", "0.5", "0.8", "1.2", "2", "3"] {
        let _ = case.run(&format!(r#"timeout -s KILL {delay} ship "$R" --key-file k < stream.bp > /dev/null"#));
        case.ok(r#"repo check "$R" --key-file k 2>/dev/null"#);
        let listed = case.snapshot_count();
        assert!(listed <= 1, "kill after {delay}s: {listed} snapshots");
        if listed == 1 {
            break;
        }
    }
    // Whatever happened, the next ship succeeds and restores.
    case.ok(r#"ship "$R" --key-file k < stream.bp > receipt"#);
    case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
    case.restore("latest", "out");
    assert_same_tree(&dir.join("big"), &dir.join("out/big"));
}

fn damage_is_reported_and_never_restored_as_good(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    put(&dir.join("db/data"), &data(8, 2), 0o644, 1_700_000_000);
    case.ship("db");
    let packs = case.objects("data");
    assert_eq!(packs.len(), 1);
    let pack = &packs[0];
    let original = case.storage().read(pack).unwrap();

    // A flipped byte in a pack.
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 1;
    case.overwrite(pack, &flipped);
    let err = case.fails(r#"repo check --read-data "$R" --key-file k"#, 4);
    assert!(err.contains("damaged") || err.contains("authentication"), "{err}");
    let out = case.run(&format!(r#"fetch "$R" latest --key-file k | {RESTORE} | unpack out"#));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));
    assert!(!dir.join("out/db").exists(), "nothing restored");

    // A deleted pack.
    case.storage().remove(pack).unwrap();
    let err = case.fails(r#"repo check "$R" --key-file k"#, 4);
    assert!(err.contains("missing"), "{err}");
    let out = case.run(r#"fetch "$R" latest --key-file k > /dev/null"#);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    case.storage().create(pack, &original).unwrap();

    // A truncated index.
    let index = case.objects("index").remove(0);
    let bytes = case.storage().read(&index).unwrap();
    case.overwrite(&index, &bytes[..bytes.len() - 10]);
    let err = case.fails(r#"repo check "$R" --key-file k"#, 4);
    assert!(err.contains("index"), "{err}");
    let out = case.run(r#"fetch "$R" latest --key-file k > /dev/null"#);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    case.overwrite(&index, &bytes);
    case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
}

fn ship_refuses_incomplete_unencrypted_and_foreign_streams(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    put(&dir.join("db/data"), &data(4, 3), 0o644, 1_700_000_000);
    case.ok(r#"dump-files db | chunk --repo "$R" --key-file k | encrypt --repo "$R" --key-file k > s.bp"#);
    let size = std::fs::metadata(dir.join("s.bp")).unwrap().len();
    case.fails(&format!(r#"head -c {} s.bp | ship "$R" --key-file k"#, size - 100), 3);
    let err = case.fails(r#"dump-files db | chunk --repo "$R" --key-file k | ship "$R" --key-file k"#, 2);
    assert!(err.contains("encrypt --repo"), "{err}");
    let err =
        case.fails(r#"keygen other && dump-files db | chunk | encrypt --key-file other | ship "$R" --key-file k"#, 4);
    assert!(err.contains("wrong key"), "{err}");
    // ship exits as dump-files did (1: it could not read a file).
    let err = case.fails(r#"dump-files /proc/self/mem | encrypt --repo "$R" --key-file k | ship "$R" --key-file k"#, 1);
    assert!(err.contains("no snapshot was stored"), "{err}");
    assert_eq!(case.snapshot_count(), 0);
    assert!(case.objects("data").is_empty() && case.objects("snapshots").is_empty(), "nothing was stored");
    // Keys: a wrong key and a place that is not a repository are usage errors.
    let err = case.fails(r#"repo snapshots "$R" --key-file other"#, 2);
    assert!(err.contains("no key slot"), "{err}");
    let err = case.fails("mkdir -p empty && repo snapshots empty --key-file k", 2);
    assert!(err.contains("not a backpipe repository"), "{err}");
    let err = case.fails(r#"repo init "$R" --key-file k"#, 1);
    assert!(err.contains("not empty"), "{err}");
}

fn keys_can_be_added_listed_and_removed(backend: Backend) {
    let case = Case::new(backend);
    put(&case.path().join("db/data"), b"content", 0o644, 1_700_000_000);
    case.ship("db");
    case.ok(r#"printf 'second key' > pw && repo key add "$R" --key-file k --new-passphrase-file pw 2>/dev/null"#);
    let slots = String::from_utf8(case.ok(r#"repo key list "$R""#)).unwrap();
    assert_eq!(slots.lines().count(), 2, "{slots}");
    assert!(slots.contains("passphrase") && slots.contains("key-file"), "{slots}");
    // The passphrase opens the same repository.
    case.ok(
        r#"fetch "$R" latest --passphrase-file pw | encrypt -d --repo "$R" --passphrase-file pw | chunk -d | unpack out"#,
    );
    assert_eq!(std::fs::read(case.path().join("out/db/data")).unwrap(), b"content");
    let file_slot = slots.lines().find(|l| l.contains("key-file")).unwrap().split_whitespace().next().unwrap();
    let err = case.fails(&format!(r#"repo key remove "$R" {file_slot} --key-file k"#), 2);
    assert!(err.contains("opened the repository"), "{err}");
    case.ok(&format!(r#"repo key remove "$R" {file_slot} --passphrase-file pw 2>/dev/null"#));
    let err = case.fails(r#"repo snapshots "$R" --key-file k"#, 2);
    assert!(err.contains("no key slot"), "{err}");
    case.ok(r#"repo snapshots "$R" --passphrase-file pw"#);
    case.fails("repo key list not-a-repo", 2);
}

fn forged_chunks_summaries_and_references_are_refused(backend: Backend) {
    use backpipe::format::Kind;
    let case = Case::new(backend);
    let dir = case.path();
    put(&dir.join("db/data"), &data(3, 7), 0o644, 1_700_000_000);
    case.ok(r#"dump-files db | chunk --repo "$R" --key-file k | squeeze | encrypt --repo "$R" --key-file k > s.bp"#);
    // A chunk altered in transit (framing re-made with valid checksums) is not stored.
    let stream = std::fs::read(dir.join("s.bp")).unwrap();
    let tampered = forge(&stream, |frames| {
        let chunk = frames.iter_mut().find(|f| f.kind == Kind::Data).unwrap();
        let n = chunk.payload.len();
        chunk.payload[n - 20] ^= 1;
    });
    std::fs::write(dir.join("bad.bp"), tampered).unwrap();
    let err = case.fails(r#"ship "$R" --key-file k < bad.bp"#, 4);
    assert!(err.contains("authentication failed"), "{err}");
    assert_eq!(case.snapshot_count(), 0);
    // References are for ship alone: `encrypt -d` refuses a stream that still holds them.
    case.ok(r#"ship "$R" --key-file k < s.bp > /dev/null"#);
    let err = case.fails(
        r#"dump-files db | chunk --repo "$R" --key-file k | encrypt --repo "$R" --key-file k | encrypt -d --repo "$R" --key-file k > /dev/null"#,
        4,
    );
    assert!(err.contains("reference to a chunk"), "{err}");
    // A summary paired with another snapshot's skeleton fails authentication.
    put(&dir.join("db/data"), b"other", 0o644, 1_700_000_000);
    case.ship("db");
    let storage = case.storage();
    let snaps = case.objects("snapshots");
    let (a, b) = (storage.read(&snaps[0]).unwrap(), storage.read(&snaps[1]).unwrap());
    let header = |s: &[u8]| 12 + u32::from_le_bytes(s[8..12].try_into().unwrap()) as usize;
    let spliced = [&a[..header(&a)], &b[header(&b)..]].concat();
    let forged = "snapshots/00000000000000000000000000000000";
    storage.create(forged, &spliced).unwrap();
    let out = case.run(r#"repo snapshots "$R" --key-file k"#);
    assert_eq!(out.status.code(), Some(4), "a snapshot that cannot be read is never hidden");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(listed.contains("00000000000000000000000000000000  damaged: "), "{listed}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 snapshot cannot be read"));
    let err = case.fails(r#"repo check "$R" --key-file k"#, 4);
    assert!(err.contains("00000000000000000000000000000000"), "{err}");
    storage.remove(forged).unwrap();
    // A damaged key slot does not lock out the others.
    storage.create("keys/0123456789abcdef", b"{not json").unwrap();
    let out = case.run(r#"repo snapshots "$R" --key-file k"#);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("damaged"));
    let err = case.fails(r#"repo key remove "$R" ../config --key-file k"#, 2);
    assert!(err.contains("not a key slot name"), "{err}");
    assert!(storage.exists("config").unwrap());
}

fn repository_files_hold_no_plaintext(backend: Backend) {
    let case = Case::without_repo(backend);
    case.ok(r#"printf 'repo pass' > pw && repo init "$R" --passphrase-file pw 2>/dev/null"#);
    let content = b"CONFIDENTIAL-PAYROLL-ROW ".repeat(20_000);
    put(&case.path().join("SECRET-DIRECTORY/PAYROLL-FILE-NAME"), &content, 0o644, 1_700_000_000);
    case.ok(
        r#"K='--passphrase-file pw'
         dump-files SECRET-DIRECTORY | chunk --repo "$R" $K | squeeze | encrypt --repo "$R" $K | ship "$R" $K > /dev/null"#,
    );
    let host = backpipe::meta::host_name();
    let mut markers = vec!["SECRET-DIRECTORY", "PAYROLL-FILE-NAME", "CONFIDENTIAL", "dump-files"];
    if host.len() >= 6 {
        markers.push(&host);
    }
    let storage = case.storage();
    let names = case.all_objects();
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        let bytes = storage.read(&name).unwrap();
        for marker in &markers {
            assert!(!bytes.windows(marker.len()).any(|w| w == marker.as_bytes()), "'{marker}' appears in {name}");
        }
    }
    case.ok(r#"repo check --read-data "$R" --passphrase-file pw 2>/dev/null"#);
}

fn a_write_only_key_ships_and_deduplicates_but_reads_nothing(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    put(&dir.join("db/data"), &data(6, 50), 0o644, 1_700_000_000);
    let full = case.ship("db");
    case.ok(r#"keygen w && repo key add "$R" --key-file k --write-only --new-key-file w 2>/dev/null"#);
    let slots = String::from_utf8(case.ok(r#"repo key list "$R""#)).unwrap();
    assert!(slots.lines().any(|l| l.ends_with("key-file  write-only")), "{slots}");
    let write_only = |what: &str| -> serde_json::Value {
        let pipeline = BACKUP.replace("--key-file k", "--key-file w");
        serde_json::from_slice(&case.ok(&format!("dump-files {what} | {pipeline}"))).unwrap()
    };
    // It ships, and deduplicates against what the full key stored and against its own backups.
    let first = write_only("db");
    assert_eq!(first["new_chunks"], 0, "{first}");
    assert_eq!(first["engine"], "files", "the receipt has the Begin frame's fields");
    put(&dir.join("db/more"), &data(3, 51), 0o644, 1_700_000_000);
    let second = write_only("db");
    assert!(second["new_chunks"].as_u64().unwrap() > 0, "{second}");
    let third = write_only("db");
    assert_eq!(third["new_chunks"], 0, "{third}");
    // Every read path refuses it, as a usage error naming the cause.
    for read in [
        r#"repo snapshots "$R" --key-file w"#,
        r#"fetch "$R" latest --key-file w > out.bp"#,
        r#"fetch "$R" --until 2999-01-01 --key-file w > out.bp"#,
        r#"repo check "$R" --key-file w"#,
        r#"repo check --read-data "$R" --key-file w"#,
        r#"repo forget "$R" --keep-last 1 --key-file w"#,
        r#"repo prune "$R" --key-file w"#,
        r#"repo key add "$R" --key-file w --new-passphrase-file w"#,
        r#"repo key remove "$R" 0123456789abcdef --key-file w"#,
        r#"fetch "$R" latest --key-file k | encrypt -d --repo "$R" --key-file w > out.bp"#,
    ] {
        let err = case.fails(read, 2);
        assert!(err.contains("write-only"), "{read}: {err}");
    }
    // Its key file alone decrypts nothing stored either.
    let err = case.fails(r#"fetch "$R" latest --key-file k | encrypt -d --key-file w > out.bp"#, 4);
    assert!(err.contains("wrong key"), "{err}");
    // The full key reads what the write-only key stored.
    case.restore(third["snapshot"].as_str().unwrap(), "out");
    assert_same_tree(&dir.join("db"), &dir.join("out/db"));
    case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
    // The transit copy of stream secrets (which the write key opens) never reaches the repository.
    let storage = case.storage();
    for name in case.objects("snapshots") {
        let bytes = storage.read(&name).unwrap();
        assert!(!bytes.windows(9).any(|w| w == b"\"transit\""), "{name} holds a transit copy");
    }
    assert_eq!(case.snapshot_count(), 4, "{full}");
}

impl Case {
    /// Ships the tree `what` as host `host` (its own UTS namespace with that
    /// host name; the tests run as root) and returns the receipt.
    fn ship_as(&self, host: &str, what: &str) -> serde_json::Value {
        let script =
            format!("unshare --uts bash -c 'set -euo pipefail; hostname {host}; dump-files {what} | {BACKUP}'");
        let receipt: serde_json::Value = serde_json::from_slice(&self.ok(&script)).expect("one JSON receipt");
        assert_eq!(receipt["host"], host, "{receipt}");
        receipt
    }
}

/// The ID in a receipt.
fn id_of(receipt: &serde_json::Value) -> &str {
    receipt["snapshot"].as_str().expect("a receipt names its snapshot")
}

/// Asserts every line on stderr comes from the tool itself (prefixed with
/// its name, `repo: ` or `repo forget: `): library code prints nothing of its own.
fn all_prefixed(stderr: &str, tool: &str) {
    for line in stderr.lines() {
        let prefix = line.split(": ").next().unwrap_or_default();
        assert!(prefix.split(' ').next() == Some(tool), "a line without the tool's name: {line}\n{stderr}");
    }
}

fn selectors_honour_host_and_engine(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    put(&dir.join("web1/data"), b"the first web server", 0o644, 1_700_000_000);
    put(&dir.join("web2/data"), b"the second web server", 0o644, 1_700_000_000);
    let web1 = case.ship_as("web1", "web1");
    let web2 = case.ship_as("web2", "web2");
    // `latest` of a host is that host's newest backup, though another host shipped later.
    case.restore("latest --host web1", "out");
    assert_eq!(std::fs::read(dir.join("out/web1/data")).unwrap(), b"the first web server");
    case.restore("latest --host web1 --engine files", "out");
    assert!(dir.join("out/web1").exists() && !dir.join("out/web2").exists());
    case.restore("latest --host web2", "out");
    assert_eq!(std::fs::read(dir.join("out/web2/data")).unwrap(), b"the second web server");
    // Without a host, `latest` and --until refuse to choose between machines, and name them.
    for select in ["latest", "latest --engine files", "--until 2999-01-01"] {
        let err = case.fails(&format!(r#"fetch "$R" {select} --key-file k > /dev/null"#), 2);
        assert!(err.contains("web1") && err.contains("web2") && err.contains("--host"), "{select}: {err}");
        all_prefixed(&err, "fetch");
    }
    case.ok(&format!(r#"fetch "$R" --until 2999-01-01 --host web1 --key-file k | {RESTORE} | unpack until"#));
    assert!(dir.join("until/web1/data").exists() && !dir.join("until/web2").exists());
    // An ID of another host's or engine's backup than those asked for is refused, naming what it is.
    let err = case.fails(&format!(r#"fetch "$R" {} --host web1 --key-file k > /dev/null"#, &id_of(&web2)[..10]), 2);
    assert!(err.contains(id_of(&web2)) && err.contains("'web2'") && err.contains("'files'"), "{err}");
    let err = case.fails(&format!(r#"fetch "$R" {} --engine mysql --key-file k > /dev/null"#, id_of(&web1)), 2);
    assert!(err.contains("'web1'") && err.contains("'files'"), "{err}");
    case.restore(&format!("{} --host web1 --engine files", id_of(&web1)), "out");
    assert!(dir.join("out/web1/data").exists());
    let err = case.fails(r#"fetch "$R" latest --host web3 --key-file k > /dev/null"#, 2);
    assert!(err.contains("no snapshot of host 'web3'"), "{err}");
    // With one host only, `latest` needs no filter.
    case.ok(&format!(r#"repo forget "$R" {} --key-file k 2>/dev/null"#, id_of(&web2)));
    case.restore("latest", "out");
    assert!(dir.join("out/web1/data").exists());
}

fn a_damaged_newest_snapshot_is_never_skipped(backend: Backend) {
    let case = Case::new(backend);
    let dir = case.path();
    let mut receipts = Vec::new();
    for version in ["one", "two", "three"] {
        put(&dir.join("db/v"), format!("version {version}").as_bytes(), 0o644, 1_700_000_000);
        receipts.push(case.ship("db"));
    }
    let (oldest, older, newest) = (id_of(&receipts[0]), id_of(&receipts[1]), id_of(&receipts[2]));
    // One byte of the newest snapshot's sealed summary is overwritten.
    let name = format!("snapshots/{newest}");
    let mut bytes = case.storage().read(&name).unwrap();
    bytes[20] ^= 0x55;
    case.overwrite(&name, &bytes);

    // `latest` and --until could mean it: they fail, naming it, and restore nothing.
    for select in ["latest", "--until 2999-01-01", "latest --host nosuch"] {
        let out = case.run(&format!(r#"fetch "$R" {select} --key-file k | {RESTORE} | unpack out"#));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(newest), "{select}: the pipeline fails: {err}");
        assert!(!dir.join("out/db").exists(), "{select}: nothing restored");
        let err = case.fails(&format!(r#"fetch "$R" {select} --key-file k > /dev/null"#), 4);
        assert!(err.contains(newest) && err.contains("repo check") && err.contains("repo forget"), "{err}");
        all_prefixed(&err, "fetch");
    }
    // Its ID fails with the same status; another snapshot's ID still works.
    let err = case.fails(&format!(r#"fetch "$R" {} --key-file k > /dev/null"#, &newest[..12]), 4);
    assert!(err.contains(newest) && err.contains("cannot be read"), "{err}");
    case.restore(older, "out");
    assert_eq!(std::fs::read(dir.join("out/db/v")).unwrap(), b"version two");

    // Listings show it whatever the filters, and end with status 4.
    for filters in ["", "--host nosuch --kind full"] {
        let out = case.run(&format!(r#"repo snapshots "$R" {filters} --key-file k"#));
        assert_eq!(out.status.code(), Some(4));
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(listed.lines().any(|l| l.starts_with(&format!("{newest}  damaged: "))), "{listed}");
        assert_eq!(listed.lines().count(), if filters.is_empty() { 3 } else { 1 }, "{listed}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("1 snapshot cannot be read; run `repo check`"), "{err}");
        all_prefixed(&err, "repo");
    }
    let out = case.run(r#"repo snapshots "$R" --json --key-file k"#);
    assert_eq!(out.status.code(), Some(4));
    let damaged: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("damaged").is_some())
        .collect();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0]["snapshot"], newest);

    // Rules never remove it: they do their work on the others, name it, and end with status 4.
    let out = case.run(r#"repo forget "$R" --keep-last 1 --key-file k"#);
    let (listed, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains(newest) && err.contains("cannot be read"), "{err}");
    all_prefixed(&err, "repo");
    assert!(listed.contains(&format!("remove {oldest}")) && listed.contains(&format!("keep   {older}")), "{listed}");
    assert!(listed.contains(&format!("keep   {newest}  (damaged: ")), "{listed}");
    assert!(case.storage().exists(&name).unwrap());
    assert!(!case.storage().exists(&format!("snapshots/{oldest}")).unwrap());

    // Named, it is removed: a dry run first, then for real; then everything works again.
    let err = case.fails(&format!(r#"repo forget "$R" {newest} --keep-last 1 --key-file k"#), 2);
    assert!(err.contains("cannot be used with"), "{err}");
    let decisions = case.ok(&format!(r#"repo forget "$R" {} --dry-run --json --key-file k 2>/dev/null"#, &newest[..8]));
    let decision: serde_json::Value = serde_json::from_slice(&decisions).unwrap();
    assert_eq!((&decision["id"], &decision["keep"]), (&serde_json::json!(newest), &serde_json::json!(false)));
    assert!(decision["damaged"].is_string(), "{decision}");
    assert!(case.storage().exists(&name).unwrap(), "a dry run removes nothing");
    let listed = String::from_utf8(case.ok(&format!(r#"repo forget "$R" {newest} --key-file k 2>/dev/null"#))).unwrap();
    assert!(listed.starts_with(&format!("remove {newest}  (damaged: ")), "{listed}");
    assert!(!case.storage().exists(&name).unwrap());
    assert_eq!(case.snapshot_count(), 1);
    case.restore("latest", "out");
    assert_eq!(std::fs::read(dir.join("out/db/v")).unwrap(), b"version two");
    case.ok(r#"repo check "$R" --key-file k 2>/dev/null"#);
}

/// Hostile option values: no tool panics (exit status 101), and values out
/// of range are usage errors. Times under TZ=Europe/Berlin (tzdata).
mod hostile_options {
    use super::*;

    #[test]
    fn no_option_value_makes_a_tool_panic() {
        let case = Case::new(Backend::Local);
        put(&case.path().join("db/data"), b"content", 0o644, 1_700_000_000);
        case.ship("db");
        let k = "--key-file k";
        for (command, status) in [
            (format!(r#"repo forget "$R" --keep-within 300000y {k}"#), 2),
            (format!(r#"repo forget "$R" --keep-within 1001y {k}"#), 2),
            (format!(r#"repo forget "$R" --keep-within 99999999999999999999999y {k}"#), 2),
            (format!(r#"repo forget "$R" --keep-within 9223372036854775807m {k}"#), 2),
            (format!(r#"repo forget "$R" --keep-within '' {k}"#), 2),
            (format!(r#"repo forget "$R" --keep-within=-5d {k}"#), 2),
            (format!(r#"repo forget "$R" --keep-within 1000y --dry-run {k}"#), 0),
            (format!(r#"repo forget "$R" --keep-last 99999999999999999999 {k}"#), 2),
            (
                format!(
                    r#"repo forget "$R" --keep-last 18446744073709551615 --keep-daily 18446744073709551615 --dry-run {k}"#
                ),
                0,
            ),
            (format!(r#"repo forget "$R" '' {k}"#), 2),
            (format!(r#"repo prune "$R" --grace 300000y {k}"#), 2),
            (format!(r#"repo prune "$R" --grace '' {k}"#), 2),
            (format!(r#"repo prune "$R" --grace 1000y --dry-run {k}"#), 0),
            (format!(r#"fetch "$R" --until 99999-01-01 {k}"#), 2),
            (format!(r#"fetch "$R" --until +99999-01-01 {k}"#), 2),
            (format!(r#"fetch "$R" --until=-5000-01-01 {k}"#), 2),
            (format!(r#"fetch "$R" --until '' {k}"#), 2),
            (format!(r#"fetch "$R" --until '0000-01-01T00:30:00+01:00' {k}"#), 2),
            (format!(r#"fetch "$R" '' {k}"#), 2),
            (format!(r#"fetch "$R" latest --host '' {k}"#), 2),
            (format!(r#"repo snapshots "$R" --since 99999-01-01 {k}"#), 2),
            (format!(r#"repo snapshots "$R" --since +99999-01-01T00:00:00Z {k}"#), 2),
            (format!(r#"repo snapshots "$R" --until=-5000-01-01 {k}"#), 2),
            (format!(r#"repo snapshots "$R" --since '' {k}"#), 2),
            (format!(r#"repo snapshots "$R" --since 0000-01-01T00:00:00Z --until 9999-12-31T23:59:59Z {k}"#), 0),
            (format!("repo init R2 --min-size 99999999999G {k}"), 2),
            (format!("repo init R2 --avg-size 0 {k}"), 2),
            (format!("repo init R2 --max-size 18446744073709551615 {k}"), 2),
            (format!("repo init R2 --min-size '' {k}"), 2),
            (format!("repo init '' {k}"), 2),
            ("chunk --min-size 99999999999G".to_string(), 2),
            ("chunk --max-size 16383P".to_string(), 2),
            ("chunk --avg-size 0".to_string(), 2),
            ("squeeze -l 99999".to_string(), 2),
            ("restore-mysql --until 99999-01-01 --dry-run".to_string(), 2),
            ("restore-mysql --until=-5000-01-01 --dry-run".to_string(), 2),
        ] {
            let out = case.run(&format!("{command} < /dev/null > /dev/null"));
            let err = String::from_utf8_lossy(&out.stderr);
            assert_ne!(out.status.code(), Some(101), "{command} panicked: {err}");
            assert_eq!(out.status.code(), Some(status), "{command}: {err}");
        }
    }

    #[test]
    fn local_times_skipped_or_repeated_by_daylight_saving_are_named() {
        let case = Case::new(Backend::Local);
        put(&case.path().join("db/data"), b"content", 0o644, 1_700_000_000);
        case.ship("db");
        for tool in [r#"fetch "$R" --key-file k --until"#, r#"repo snapshots "$R" --key-file k --since"#] {
            let err = case.fails(&format!("TZ=Europe/Berlin {tool} '2026-03-29 02:30' > /dev/null"), 2);
            assert!(err.contains("does not exist") && err.contains("skipped") && err.contains("RFC 3339"), "{err}");
            assert!(err.contains("2026-03-29T02:30:00+01:00"), "{err}");
            let err = case.fails(&format!("TZ=Europe/Berlin {tool} '2026-10-25 02:30' > /dev/null"), 2);
            assert!(err.contains("happened twice"), "{err}");
            assert!(err.contains("2026-10-25T00:30:00Z") && err.contains("2026-10-25T01:30:00Z"), "{err}");
            // The times either side, and the repeated one with its offset, are accepted
            // (`fetch` may find no backup that early: status 1).
            for time in ["2026-03-29 01:59", "2026-03-29 03:00", "2026-10-25T02:30:00+01:00"] {
                let out = case.run(&format!("TZ=Europe/Berlin {tool} '{time}' > /dev/null"));
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(matches!(out.status.code(), Some(0 | 1)), "{time}: {err}");
            }
        }
    }

    #[test]
    fn inspect_shows_setuid_setgid_and_sticky_bits() {
        let dir = scratch();
        put(&dir.path().join("t/suid"), b"x", 0o4755, 1_700_000_000);
        put(&dir.path().join("t/sgid"), b"x", 0o2644, 1_700_000_000);
        std::fs::create_dir(dir.path().join("t/tmp")).unwrap();
        sh_ok(dir.path(), "chmod 1777 t/tmp");
        let listing = String::from_utf8(sh_ok(dir.path(), "dump-files t | inspect")).unwrap();
        for (name, mode) in [("t/suid", "-rwsr-xr-x"), ("t/sgid", "-rw-r-Sr--"), ("t/tmp", "drwxrwxrwt")] {
            assert!(listing.lines().any(|l| l.starts_with(mode) && l.contains(name)), "{name} {mode}:\n{listing}");
        }
    }
}

/// Failures of the place a repository lives: each ends in one line on
/// stderr and exit status 1, and leaves the stored backups as they were.
mod failures {
    use super::*;

    #[test]
    fn bad_locations_are_usage_errors() {
        let dir = scratch();
        sh_ok(dir.path(), "keygen k");
        for (location, cause) in [
            ("ftp://host/x", "unknown scheme"),
            ("s3://bucket?colour=blue", "unknown option 'colour'"),
            ("s3://KEYID:SECRET@bucket", "never go in a URL"),
            ("sftp://host/", "name a directory"),
            ("sftp://host:99999/x", "invalid port"),
        ] {
            let err = sh_fails(dir.path(), &format!("repo init '{location}' --key-file k"), 2);
            assert!(single_line(&err).contains(cause), "{location}: {err}");
        }
    }

    #[test]
    fn sftp_unreachable_and_refused() {
        let case = stored_once(Backend::Sftp);
        let port = server_setting("BACKPIPE_TEST_SFTP_PORT");
        let closed = case.repo.replace(&format!(":{port}/"), ":1/");
        expect_refusal(&case, &format!("ship '{closed}' --key-file k < s.bp"), "Connection refused");
        sh_ok(case.path(), "ssh-keygen -q -t ed25519 -N '' -f stranger_key");
        expect_refusal(
            &case,
            r#"BACKPIPE_SFTP_IDENTITY=stranger_key ship "$R" --key-file k < s.bp"#,
            "Permission denied (publickey)",
        );
    }

    #[test]
    fn s3_unreachable_and_refused() {
        let case = stored_once(Backend::S3);
        let endpoint = server_setting("BACKPIPE_TEST_S3_ENDPOINT");
        let closed = case.repo.replace(&endpoint, "http://127.0.0.1:1");
        expect_refusal(&case, &format!("ship '{closed}' --key-file k < s.bp"), "Connection refused");
        expect_refusal(&case, r#"AWS_SECRET_ACCESS_KEY=wrong ship "$R" --key-file k < s.bp"#, "permission denied");
        // Valid credentials of a user who has no access to the bucket.
        expect_refusal(
            &case,
            r#"AWS_ACCESS_KEY_ID=$BACKPIPE_TEST_S3_STRANGER_KEY_ID AWS_SECRET_ACCESS_KEY=$BACKPIPE_TEST_S3_STRANGER_SECRET \
               ship "$R" --key-file k < s.bp"#,
            "permission denied",
        );
    }

    #[test]
    fn s3_credentials_from_a_file_or_none() {
        let case = stored_once(Backend::S3);
        let without_env = "env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY HOME=/nonexistent";
        expect_refusal(&case, &format!(r#"{without_env} ship "$R" --key-file k < s.bp"#), "no S3 credentials");
        case.ok(
            r#"printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" > creds"#,
        );
        case.ok(&format!(
            r#"{without_env} AWS_SHARED_CREDENTIALS_FILE=$PWD/creds ship "$R" --key-file k < s.bp > /dev/null"#
        ));
        assert_eq!(case.snapshot_count(), 2);
    }

    #[test]
    fn local_read_only() {
        read_only(Backend::Local, "Read-only file system");
    }

    #[test]
    fn sftp_read_only() {
        // SFTP version 3 has no error code for a read-only file system.
        read_only(Backend::Sftp, "cannot write");
    }

    #[test]
    fn local_full_disk() {
        full_disk(Backend::Local, "No space left on device");
    }

    #[test]
    fn sftp_full_disk() {
        // SFTP version 3 reports a full disk only as a failure, which backpipe explains.
        full_disk(Backend::Sftp, "often a full disk");
    }

    /// A repository with one backup, and a stream `s.bp` ready to ship.
    fn stored_once(backend: Backend) -> Case {
        let case = Case::new(backend);
        put(&case.path().join("db/data"), &data(2, 40), 0o644, 1_700_000_000);
        case.ship("db");
        put(&case.path().join("db/more"), &noise(3 << 20, 41), 0o644, 1_700_000_000);
        case.ok(
            r#"dump-files db | chunk --repo "$R" --key-file k | squeeze | encrypt --repo "$R" --key-file k > s.bp"#,
        );
        case
    }

    /// Runs `script`, which must fail with status 1 and one line naming
    /// `cause`; the repository must hold exactly what it held before.
    fn expect_refusal(case: &Case, script: &str, cause: &str) {
        let before = case.all_objects();
        let err = case.fails(script, 1);
        assert!(single_line(&err).contains(cause), "expected '{cause}' in: {err}");
        assert_eq!(case.all_objects(), before, "after: {script}");
        assert_eq!(case.snapshot_count(), 1);
    }

    fn read_only(backend: Backend, cause: &str) {
        let case = stored_once(backend);
        let mount = Mount::read_only(&backend.directory(case.path()));
        expect_refusal(&case, r#"ship "$R" --key-file k < s.bp"#, cause);
        let err = case.fails(r#"printf pw > pw && repo key add "$R" --key-file k --new-passphrase-file pw"#, 1);
        assert!(single_line(&err).contains(cause), "{err}");
        drop(mount);
        case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
    }

    fn full_disk(backend: Backend, cause: &str) {
        let case = Case::without_repo(backend);
        let _mount = Mount::tmpfs(&backend.directory(case.path()), "6m");
        case.ok(r#"keygen k && repo init "$R" --key-file k 2>/dev/null"#);
        put(&case.path().join("small/data"), b"fits", 0o644, 1_700_000_000);
        let kept = case.ship("small");
        put(&case.path().join("big/data"), &noise(12 << 20, 42), 0o644, 1_700_000_000);
        let err = case.fails(&format!("dump-files big | {BACKUP}"), 1);
        assert!(single_line(&err).contains(cause), "{err}");
        // Packs written before the disk filled are unreferenced until `prune`; no snapshot refers to them.
        assert_eq!(case.snapshot_count(), 1);
        case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
        case.restore(kept["snapshot"].as_str().unwrap(), "out");
        assert_same_tree(&case.path().join("small"), &case.path().join("out/small"));
    }

    /// The one line of a failure message, asserting there is only one.
    fn single_line(stderr: &str) -> &str {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected one line:\n{stderr}");
        lines[0]
    }
}

/// Keys that cannot all vanish, and readers that verify before they act.
mod keys_and_verification {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    on_every_backend!(
        concurrent_key_removals_always_leave_a_full_key,
        a_chunk_forged_by_a_write_only_key_never_reaches_a_restore,
        prune_never_keeps_a_forged_copy_in_place_of_a_genuine_one,
    );

    /// Rounds of two removals at once (on SFTP, where each tool first starts
    /// its own `ssh`, the two overlap in about one round in twenty).
    const ROUNDS: usize = 30;

    /// The slot a `repo key add` made, from its report on stderr.
    fn add_key(case: &Case, with: &str, new: &str) -> String {
        let out = case.run(&format!(r#"repo key add "$R" --key-file {with} --new-key-file {new}"#));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err.trim_end().rsplit(' ').next().unwrap().to_string()
    }

    /// Two full keys, `a` and `b`, each removing the other's slot at the same
    /// instant (each tool blocks reading its key file from a FIFO until both
    /// are running), round after round: a full key that opens the repository
    /// always remains, and a removal that lost its own key meanwhile says so,
    /// having put back what it removed.
    fn concurrent_key_removals_always_leave_a_full_key(backend: Backend) {
        let case = Case::new(backend);
        let dir = case.path();
        put(&dir.join("db/data"), b"content", 0o644, 1_700_000_000);
        case.ship("db");
        case.ok("keygen a && keygen b");
        let mut slots = [add_key(&case, "k", "a"), add_key(&case, "k", "b")];
        let first = String::from_utf8(case.ok(r#"repo key list "$R""#)).unwrap();
        let k_slot =
            first.lines().map(|l| l.split_whitespace().next().unwrap()).find(|s| !slots.contains(&s.to_string()));
        case.ok(&format!(r#"repo key remove "$R" {} --key-file a 2>/dev/null"#, k_slot.unwrap()));
        let opens = |key: &str| case.run(&format!(r#"repo snapshots "$R" --key-file {key}"#)).status.success();
        let mut put_back = 0;
        for round in 0..ROUNDS {
            let mut removals = Vec::new();
            for (side, other) in [(0, 1), (1, 0)] {
                let gate = dir.join(format!("gate-{side}"));
                let _ = std::fs::remove_file(&gate);
                nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
                let child = Command::new(bin_dir().join("repo"))
                    .args(["key", "remove", &case.repo, &slots[other], "--key-file"])
                    .arg(&gate)
                    .current_dir(dir)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                removals.push((gate, child));
            }
            // Opening a FIFO for writing waits for its reader: both tools are running when the keys go in.
            let gates: Vec<std::fs::File> =
                removals.iter().map(|(gate, _)| std::fs::OpenOptions::new().write(true).open(gate).unwrap()).collect();
            for (side, mut gate) in gates.into_iter().enumerate() {
                gate.write_all(&std::fs::read(dir.join(["a", "b"][side])).unwrap()).unwrap();
            }
            let results: Vec<std::process::Output> =
                removals.into_iter().map(|(_, child)| child.wait_with_output().unwrap()).collect();
            let report = results
                .iter()
                .map(|o| format!("{} {}", o.status, String::from_utf8_lossy(&o.stderr).trim_end()))
                .collect::<Vec<_>>()
                .join("\n");
            let listed = String::from_utf8(case.ok(r#"repo key list "$R""#)).unwrap();
            let open = [opens("a"), opens("b")];
            assert!(
                open.iter().any(|o| *o) && listed.lines().any(|l| l.ends_with("full")),
                "{backend:?} round {round}: no full key opens the repository any more:\n{listed}\n{report}"
            );
            for (side, result) in results.iter().enumerate() {
                let err = String::from_utf8_lossy(&result.stderr);
                // Its key was removed before it opened the repository: nothing to do.
                if result.status.code() == Some(2) && err.contains("no key slot") {
                    assert!(!open[side] || open[1 - side], "{report}");
                    continue;
                }
                if !result.status.success() {
                    assert_eq!(result.status.code(), Some(1), "{report}");
                    assert_eq!(err.trim_end().lines().count(), 1, "{report}");
                    assert!(err.contains("was put back"), "{report}");
                    put_back += 1;
                }
            }
            // Whatever was removed comes back for the next round.
            for side in 0..2 {
                if !open[side] {
                    slots[side] = add_key(&case, ["a", "b"][1 - side], ["a", "b"][side]);
                }
            }
            let listed = String::from_utf8(case.ok(r#"repo key list "$R""#)).unwrap();
            assert_eq!(listed.lines().count(), 2, "{listed}");
        }
        case.ok(&format!(r#"fetch "$R" latest --key-file a | {} | unpack out"#, RESTORE.replace("-file k", "-file a")));
        assert_eq!(std::fs::read(dir.join("out/db/data")).unwrap(), b"content");
        eprintln!("{backend:?}: {put_back} of {ROUNDS} rounds put a removed slot back");
    }

    /// What the forger puts in place of every chunk it stores.
    const FORGED: &[u8] = b"FORGED-BY-A-WRITE-ONLY-KEY ";

    /// The chunked stream in `plain` with every chunk's content replaced by
    /// other bytes of the same length, each under its original (keyed) ID.
    fn forge_chunks(plain: &[u8]) -> Vec<u8> {
        use backpipe::format::{Encodings, Kind};
        forge(plain, |frames| {
            for frame in frames.iter_mut().filter(|f| f.kind == Kind::Data && f.encodings.has(Encodings::CHUNKED)) {
                let body = &mut frame.payload[32..];
                for (i, byte) in body.iter_mut().enumerate() {
                    *byte = FORGED[i % FORGED.len()];
                }
            }
        })
    }

    fn holds_forged(bytes: &[u8]) -> bool {
        bytes.windows(FORGED.len()).any(|w| w == FORGED)
    }

    /// Dedup poisoning: a write-only key ships a stream whose chunks carry the
    /// IDs of content it predicts and other bytes; an honest backup of that
    /// content then deduplicates against them entirely. `fetch` (and `chunk
    /// -d` with the key) verify every chunk against its ID and refuse (exit 4)
    /// before a byte of it reaches the next stage; `repo check --read-data`
    /// quarantines the forged copies; the next honest backup stores good
    /// copies, from which every snapshot of that content restores, and a bad
    /// copy outside the quarantine is passed over for a good one.
    fn a_chunk_forged_by_a_write_only_key_never_reaches_a_restore(backend: Backend) {
        let case = Case::new(backend);
        let dir = case.path();
        let content = data(3, 77);
        put(&dir.join("db/table.sql"), &content, 0o644, 1_700_000_000);
        case.ok(r#"keygen w && repo key add "$R" --key-file k --write-only --new-key-file w 2>/dev/null"#);
        // The forger: chunks what it predicts with its key, and ships other bytes under those IDs.
        case.ok(r#"dump-files db | chunk --repo "$R" --key-file w > predicted.bp"#);
        let forged = forge_chunks(&std::fs::read(dir.join("predicted.bp")).unwrap());
        let chunks = frames_of(&forged).iter().filter(|f| f.kind == backpipe::format::Kind::Data).count();
        assert!(chunks >= 3, "{chunks} chunks");
        std::fs::write(dir.join("forged.bp"), &forged).unwrap();
        case.ok(r#"squeeze < forged.bp | encrypt --repo "$R" --key-file w | ship "$R" --key-file w > /dev/null"#);
        // The honest backup refers to every forged chunk.
        let honest = case.ship("db");
        assert_eq!(honest["new_chunks"], 0, "{honest}");

        // fetch refuses before the forged chunk reaches anything downstream.
        let out = case.run(&format!(
            r#"set +e; fetch "$R" {} --key-file k | {RESTORE} > restored.bp; echo "${{PIPESTATUS[@]}}" > status"#,
            id_of(&honest)
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        assert!(status.starts_with("4 "), "fetch must fail with exit 4: {status}{err}");
        assert!(
            err.contains("fetch: ") && err.contains("does not match its ID") && err.contains("has no good copy"),
            "{err}"
        );
        assert!(!holds_forged(&std::fs::read(dir.join("restored.bp")).unwrap()), "forged bytes went downstream");
        // The last stage exits as fetch did: 4, an integrity failure.
        case.fails(&format!(r#"fetch "$R" latest --key-file k | {RESTORE} | unpack out"#), 4);
        assert!(!dir.join("out/db").exists());
        // chunk -d with the key the IDs were made with refuses the forged chunks too.
        for key in ["w", "k"] {
            let err = case.fails(&format!(r#"chunk -d --repo "$R" --key-file {key} < forged.bp > joined.bp"#), 4);
            assert!(err.starts_with("chunk -d: chunk ") && err.contains("does not match its ID"), "{err}");
            assert!(!holds_forged(&std::fs::read(dir.join("joined.bp")).unwrap()), "{key}");
        }
        // The same chunks, honest, pass.
        case.ok(r#"chunk -d --repo "$R" --key-file w < predicted.bp | unpack joined"#);
        assert_eq!(std::fs::read(dir.join("joined/db/table.sql")).unwrap(), content);

        // repo check --read-data finds and quarantines every forged copy.
        let err = case.fails(r#"repo check --read-data "$R" --key-file k"#, 4);
        assert_eq!(err.matches("does not match its ID").count(), chunks, "{err}");
        assert!(err.contains("quarantined") && err.contains("no good copy is stored"), "{err}");
        assert_eq!(case.objects("quarantine").len(), chunks);
        // The next honest backup stores good copies; every snapshot of the content restores from them.
        let again = case.ship("db");
        assert_eq!(again["new_chunks"].as_u64().unwrap(), chunks as u64, "{again}");
        for snapshot in [id_of(&again), id_of(&honest), "latest"] {
            case.restore(snapshot, "out");
            assert_eq!(std::fs::read(dir.join("out/db/table.sql")).unwrap(), content, "{snapshot}");
        }
        let out = case.run(r#"repo check --read-data "$R" --key-file k"#);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "with a good copy of each, the repository checks clean: {err}");
        assert!(err.contains(&format!("{chunks} chunk copies quarantined")), "{err}");
        let more = case.ship("db");
        assert_eq!(more["new_chunks"], 0, "good copies are deduplicated against: {more}");

        // A bad copy out of quarantine (its objects deleted): fetch passes it over for a good one, and says so.
        for name in case.objects("quarantine") {
            case.storage().remove(&name).unwrap();
        }
        let out = case.run(&format!(r#"fetch "$R" {} --key-file k | {RESTORE} | unpack out2"#, id_of(&honest)));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(std::fs::read(dir.join("out2/db/table.sql")).unwrap(), content);
        assert!(err.lines().all(|l| l.starts_with("fetch: chunk ") && l.contains("read the copy in pack")), "{err}");
        case.fails(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#, 4);
        assert_eq!(case.objects("quarantine").len(), chunks, "quarantined again");

        // A quarantined copy holds nothing for prune: the forged pack goes, the good copies stay.
        let forged_pack = case.objects("quarantine")[0].rsplit('-').next().unwrap().to_string();
        case.ok(r#"for i in 1 2; do repo prune "$R" --grace 0m --key-file k 2>/dev/null; done"#);
        assert!(!case.storage().exists(&format!("index/{forged_pack}")).unwrap(), "the forged pack is reclaimed");
        for snapshot in [id_of(&again), id_of(&honest)] {
            case.restore(snapshot, "out");
            assert_eq!(std::fs::read(dir.join("out/db/table.sql")).unwrap(), content, "{snapshot}");
        }
        case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
        assert!(case.objects("quarantine").is_empty(), "its quarantine went with it");
    }

    /// Of two packs holding the same chunks, prune keeps one and deletes the
    /// other, but first reads the kept copies: a write-only key (its `ship`
    /// modified not to deduplicate) stores forged copies of an honest
    /// backup's chunks in a fuller pack, the one prune prefers to keep. Before
    /// the honest pack goes, prune finds the kept copies forged, quarantines
    /// them and keeps the honest pack (exit 4, naming why); the next run keeps
    /// it for good, and the honest backup restores.
    fn prune_never_keeps_a_forged_copy_in_place_of_a_genuine_one(backend: Backend) {
        let case = Case::new(backend);
        let dir = case.path();
        let content = data(3, 80);
        put(&dir.join("db/table.sql"), &content, 0o644, 1_700_000_000);
        let honest = case.ship("db");
        let honest_pack = case.objects("index");
        assert_eq!(honest_pack.len(), 1);
        case.ok(r#"keygen w && repo key add "$R" --key-file k --write-only --new-key-file w 2>/dev/null"#);
        // The forger predicts the table and one file more, so its pack holds more needed chunks.
        put(&dir.join("db/more.sql"), &data(1, 81), 0o644, 1_700_000_000);
        let storage = case.storage();
        let index = storage.read(&honest_pack[0]).unwrap();
        storage.remove(&honest_pack[0]).unwrap();
        case.ok(r#"dump-files db | chunk --repo "$R" --key-file w > predicted.bp"#);
        let forged = forge_chunks(&std::fs::read(dir.join("predicted.bp")).unwrap());
        std::fs::write(dir.join("forged.bp"), &forged).unwrap();
        case.ok(r#"squeeze < forged.bp | encrypt --repo "$R" --key-file w | ship "$R" --key-file w > /dev/null"#);
        storage.create(&honest_pack[0], &index).unwrap();
        assert_eq!(case.objects("index").len(), 2, "two packs hold the table's chunks");

        let prune = r#"repo prune "$R" --grace 0m --key-file k"#;
        let err = String::from_utf8_lossy(&case.ok(&format!("{prune} 2>&1"))).into_owned();
        assert!(err.contains(": 1 packs marked") && err.contains("1 of the packs marked"), "{err}");
        let err = case.fails(prune, 4);
        assert!(err.contains("did not verify") && err.contains("quarantined"), "{err}");
        assert!(!case.objects("quarantine").is_empty());
        assert!(storage.exists(&honest_pack[0]).unwrap(), "the honest pack stays");
        let out = case.run(&format!("{prune} --json"));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!((&report["unmarked"], &report["deleted"]), (&1.into(), &0.into()), "{report}");
        case.ok(prune);
        assert!(storage.exists(&honest_pack[0]).unwrap());
        case.restore(id_of(&honest), "out");
        assert_eq!(std::fs::read(dir.join("out/db/table.sql")).unwrap(), content);
    }
}

/// Garbage collection that never loses a stored backup, and reports that are
/// true: ages by the storage's clock, ships that outlast the grace period,
/// duplicate packs, interrupted prunes, check beside prune.
mod garbage_collection {
    use super::*;
    use backpipe::format::Encodings;
    use backpipe::repo::pack::PackWriter;
    use std::io::{BufRead, Read, Write};
    use std::process::{Command, Stdio};

    on_every_backend!(
        prune_judges_ages_by_the_storage_clock_not_the_hosts,
        a_ship_that_outlasts_the_grace_period_stores_nothing,
        an_interrupted_ship_retried_after_prune_leaves_one_copy,
        a_prune_killed_at_any_point_leaves_a_sound_repository,
        check_beside_prune_reports_no_false_damage,
    );

    /// A backup pipeline up to `ship`: the stream `ship` reads.
    const TO_STREAM: &str = r#"chunk --repo "$R" --key-file k | squeeze | encrypt --repo "$R" --key-file k"#;

    /// `repo prune` with no grace period: a pack marked by one run is deleted by the next.
    const PRUNE_NOW: &str = r#"repo prune "$R" --grace 0m --key-file k"#;

    impl Case {
        /// Runs a script that must succeed; returns its stderr.
        fn says(&self, script: &str) -> String {
            let out = self.run(script);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "script failed ({}):\n{script}\nstderr:\n{err}", out.status);
            err
        }

        /// `repo check --json` (which must exit 0): its report.
        fn check_report(&self) -> serde_json::Value {
            serde_json::from_slice(&self.ok(r#"repo check "$R" --json --key-file k 2>/dev/null"#)).unwrap()
        }

        /// The names of the packs stored, without their folders.
        fn packs(&self) -> Vec<String> {
            self.objects("data").iter().map(|name| name.rsplit('/').next().unwrap().to_string()).collect()
        }

        /// Stores `count` small packs, with indexes, that no snapshot needs, as forgotten backups leave.
        fn unneeded_packs(&self, count: usize) {
            let storage = self.storage();
            let mut writer = PackWriter::new(&*storage);
            for i in 0..count {
                let mut id = [0xfe; 32];
                id[..8].copy_from_slice(&(i as u64).to_le_bytes());
                writer.add(id, Encodings(0x07), &noise(256, i as u64)).unwrap();
                writer.flush().unwrap();
            }
        }
    }

    /// A `ship` the test feeds piece by piece, to hold it at any point of its input.
    struct HeldShip {
        child: std::process::Child,
        stdout: std::io::BufReader<std::process::ChildStdout>,
    }

    impl HeldShip {
        fn start(case: &Case) -> HeldShip {
            let mut child = Command::new(bin_dir().join("ship"))
                .args([case.repo.as_str(), "--key-file", "k"])
                .current_dir(case.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
            HeldShip { child, stdout }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.child.stdin.as_mut().unwrap().write_all(bytes).unwrap();
        }

        /// The next receipt: the stream before it is stored, and the indexes read.
        fn receipt(&mut self) -> serde_json::Value {
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a receipt ({e}): {line:?}"))
        }

        /// Ends the input and waits: exit status, the rest of stdout, stderr.
        fn finish(mut self) -> (Option<i32>, String, String) {
            drop(self.child.stdin.take());
            let mut rest = String::new();
            self.stdout.read_to_string(&mut rest).unwrap();
            let out = self.child.wait_with_output().unwrap();
            (out.status.code(), rest, String::from_utf8_lossy(&out.stderr).into_owned())
        }

        /// Kills it (SIGKILL) as a crash or a lost connection would end it.
        fn kill(mut self) {
            self.child.kill().unwrap();
            self.child.wait().unwrap();
        }
    }

    /// Waits until `done` (at most 5 minutes: a bound against hanging, not a measurement).
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < std::time::Duration::from_secs(300), "waited 5 minutes for {what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Asserts a ship failed because a pack it needs went, in one line, storing nothing.
    fn refused_for_a_deleted_pack((status, rest, err): (Option<i32>, String, String)) {
        assert_eq!(status, Some(1), "{err}");
        assert_eq!(rest, "", "no receipt");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("ship: pack ") && err.contains("has been deleted"), "{err}");
        assert!(err.contains("grace period") && err.contains("nothing was stored"), "{err}");
    }

    /// A mark written by a host whose clock is 3 days behind, or judged by one
    /// 3 days ahead (libfaketime), never lets the default 24 h grace expire at
    /// once: the backup that refers to the pack is stored and restores. A mark
    /// dated in the future by the storage's clock is dated anew, and said so.
    fn prune_judges_ages_by_the_storage_clock_not_the_hosts(backend: Backend) {
        let case = Case::new(backend);
        let dir = case.path();
        put(&dir.join("va/data"), &data(4, 40), 0o644, 1_700_000_000);
        let first = case.ship("va");
        let packs = case.objects("data");
        assert_eq!(packs.len(), 1);
        let mark = format!("pending/{}", case.packs()[0]);
        // Chunked while the pack is in use: this stream refers to it.
        case.ok(&format!("dump-files va | {TO_STREAM} > again.bp"));
        case.ok(&format!(r#"repo forget "$R" {} --key-file k 2>/dev/null"#, id_of(&first)));
        // Marked by a host whose clock is 3 days behind (the time inside is its own).
        let behind = (chrono::Utc::now() - chrono::Duration::days(3)).to_rfc3339();
        case.storage().create(&mark, behind.as_bytes()).unwrap();
        let err = case.says(r#"repo prune "$R" --key-file k"#);
        assert!(err.contains(": 0 packs marked, 0 deleted") && err.contains("1 waiting"), "{err}");
        // Hosts 3 days behind and 3 days ahead mark and judge. (An S3 service
        // refuses requests signed by a clock that far off: there such a host cannot prune at all.)
        if !matches!(backend, Backend::S3) {
            case.storage().remove(&mark).unwrap();
            let skewed = r#"FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f"#;
            let err = case.says(&format!(r#"{skewed} -3d repo prune "$R" --key-file k"#));
            assert!(err.contains(": 1 packs marked") && err.contains("72 h behind the storage's"), "{err}");
            let err = case.says(&format!(r#"{skewed} +3d repo prune "$R" --key-file k"#));
            assert!(err.contains("0 deleted") && err.contains("72 h ahead of the storage's"), "{err}");
        }
        assert_eq!(case.objects("data"), packs, "the pack is still there");
        // The backup that refers to it is stored, taking the mark back, and restores.
        let again: serde_json::Value =
            serde_json::from_slice(&case.ok(r#"ship "$R" --key-file k < again.bp"#)).unwrap();
        assert_eq!(again["new_chunks"], 0, "{again}");
        assert!(case.objects("pending").is_empty());
        case.restore(id_of(&again), "out");
        assert_same_tree(&dir.join("va"), &dir.join("out/va"));
        // A local or SFTP file's time can be set: a mark 3 days in the storage's future.
        if !matches!(backend, Backend::S3) {
            case.ok(&format!(r#"repo forget "$R" {} --key-file k 2>/dev/null"#, id_of(&again)));
            assert!(case.says(PRUNE_NOW).contains(": 1 packs marked"));
            let future = chrono::Utc::now() + chrono::Duration::days(3);
            set_mtime(&backend.directory(dir).join(&mark), future.timestamp(), 0);
            let err = case.says(PRUNE_NOW);
            assert!(err.contains("1 marks were dated after the storage's present time"), "{err}");
            assert!(err.contains("0 deleted (0 bytes), 1 waiting"), "{err}");
            assert!(case.says(PRUNE_NOW).contains("1 deleted"), "dated anew, it ages from then");
            assert!(case.objects("data").is_empty());
        }
    }

    /// A backup held back (its input fed by the test) while `repo prune` with
    /// no grace period marks and deletes a pack it needs, first one it
    /// deduplicated against, then one it wrote itself: it fails in one line
    /// and stores nothing; shipped again, it is stored and restores.
    fn a_ship_that_outlasts_the_grace_period_stores_nothing(backend: Backend) {
        let case = Case::new(backend);
        let dir = case.path();
        put(&dir.join("va/data"), &data(4, 50), 0o644, 1_700_000_000);
        put(&dir.join("vb/data"), &data(1, 51), 0o644, 1_700_000_000);
        // More than one pack (32 MiB) of new data: the ship stores a pack before its end.
        put(&dir.join("big/data"), &noise(40 << 20, 52), 0o644, 1_700_000_000);
        let first = case.ship("va");
        let deduplicated = case.objects("data");
        case.ok(&format!(
            "dump-files va | {TO_STREAM} > again.bp; dump-files vb | {TO_STREAM} > other.bp; dump-files big | {TO_STREAM} > big.bp"
        ));
        case.ok(&format!(r#"repo forget "$R" {} --key-file k 2>/dev/null"#, id_of(&first)));

        let mut ship = HeldShip::start(&case);
        ship.send(&std::fs::read(dir.join("other.bp")).unwrap());
        // Its first stream is stored: it has read the indexes, with the pack of `va` in them.
        let other = ship.receipt();
        case.says(PRUNE_NOW);
        case.says(PRUNE_NOW);
        assert!(!case.storage().exists(&deduplicated[0]).unwrap(), "the pack was deleted");
        ship.send(&std::fs::read(dir.join("again.bp")).unwrap());
        refused_for_a_deleted_pack(ship.finish());
        assert_eq!(case.snapshot_count(), 1);

        let big = std::fs::read(dir.join("big.bp")).unwrap();
        let indexes = case.objects("index").len();
        let mut ship = HeldShip::start(&case);
        ship.send(&big[..big.len() - 1]);
        wait_for("the held ship's first pack", || case.objects("index").len() > indexes);
        assert!(case.says(PRUNE_NOW).contains(": 1 packs marked"));
        assert!(case.says(PRUNE_NOW).contains("1 deleted"));
        ship.send(&big[big.len() - 1..]);
        refused_for_a_deleted_pack(ship.finish());
        assert_eq!(case.snapshot_count(), 1);

        let stored: serde_json::Value = serde_json::from_slice(&case.ok(r#"ship "$R" --key-file k < big.bp"#)).unwrap();
        case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
        case.restore(id_of(&stored), "out");
        assert_same_tree(&dir.join("big"), &dir.join("out/big"));
        case.restore(id_of(&other), "out");
        assert_same_tree(&dir.join("vb"), &dir.join("out/vb"));
    }

    /// A ship killed once its first pack is stored, a prune that marks that
    /// pack, and the backup run again (storing those chunks again, since marked
    /// packs are not deduplicated against): the next prunes reclaim the first
    /// copy, and `repo check` counted it as reclaimable. The same for a backup
    /// forgotten and made again, round after round.
    fn an_interrupted_ship_retried_after_prune_leaves_one_copy(backend: Backend) {
        let case = Case::new(backend);
        let dir = case.path();
        put(&dir.join("big/data"), &noise(40 << 20, 70), 0o644, 1_700_000_000);
        case.ok(&format!("dump-files big | {TO_STREAM} > big.bp"));
        let big = std::fs::read(dir.join("big.bp")).unwrap();
        let mut ship = HeldShip::start(&case);
        ship.send(&big[..big.len() - 1]);
        wait_for("the first pack", || case.objects("index").len() == 1);
        ship.kill();
        let interrupted = case.packs();
        assert!(case.says(r#"repo prune "$R" --key-file k"#).contains(": 1 packs marked"));
        let retried = case.ship("big");
        assert_eq!(retried["deduplicated_bytes"], 0, "{retried}");
        assert_eq!(case.packs().len(), 3);
        assert_eq!(case.check_report()["unneeded_packs"], 1, "the first copy is reclaimable");
        let out = case.run(&format!("{PRUNE_NOW} --json"));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((&report["deleted"], &report["duplicates"], &report["unmarked"]), (&1.into(), &1.into(), &0.into()));
        let left = case.packs();
        assert_eq!(left.len(), 2);
        assert!(!left.contains(&interrupted[0]));
        assert_eq!(case.stored_bytes("data"), retried["new_bytes"].as_u64().unwrap() + 2 * 16, "one copy");
        assert!(case.objects("pending").is_empty());

        put(&dir.join("small/data"), &data(2, 71), 0o644, 1_700_000_000);
        let mut receipt = case.ship("small");
        for round in 0..3 {
            case.ok(&format!(r#"repo forget "$R" {} --key-file k 2>/dev/null"#, id_of(&receipt)));
            assert!(case.says(PRUNE_NOW).contains(": 1 packs marked"), "round {round}");
            receipt = case.ship("small");
            assert_eq!(receipt["deduplicated_bytes"], 0, "{receipt}");
            let err = case.says(PRUNE_NOW);
            assert!(err.contains(" 1 deleted") && err.contains("1 of the packs marked, waiting or deleted"), "{err}");
            assert_eq!(case.packs().len(), 3, "round {round}: one copy");
        }
        let report = case.check_report();
        assert_eq!((&report["unneeded_packs"], &report["problems"]), (&0.into(), &serde_json::json!([])));
        case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
        case.restore(id_of(&retried), "out");
        assert_same_tree(&dir.join("big"), &dir.join("out/big"));
        case.restore(id_of(&receipt), "out");
        assert_same_tree(&dir.join("small"), &dir.join("out/small"));
    }

    /// `repo prune` stopped between deleting a pack and its mark, then killed
    /// (SIGKILL) at many instants of its deletions: `repo check` passes after
    /// each, tells of the mark whose pack is gone, and later prunes remove it
    /// and converge on exactly what the kept snapshot needs.
    fn a_prune_killed_at_any_point_leaves_a_sound_repository(backend: Backend) {
        let case = Case::new(backend);
        let dir = case.path();
        put(&dir.join("keep/data"), &data(1, 60), 0o644, 1_700_000_000);
        let kept = case.ship("keep");
        let needed = case.packs();
        case.unneeded_packs(40);
        assert!(case.says(r#"repo prune "$R" --key-file k"#).contains(": 40 packs marked"));
        // Deleted with its index, its mark left: where a killed prune can stop.
        let gone = case.packs().into_iter().find(|pack| !needed.contains(pack)).unwrap();
        let storage = case.storage();
        storage.remove(&format!("index/{gone}")).unwrap();
        storage.remove(&format!("data/{}/{gone}", &gone[..2])).unwrap();
        let report = case.check_report();
        assert_eq!((&report["stale_marks"], &report["problems"]), (&1.into(), &serde_json::json!([])), "{report}");
        let err = case.says(r#"repo check "$R" --key-file k"#);
        assert!(err.contains("1 marks of packs that no longer exist"), "{err}");
        for delay in ["0.05", "0.1", "0.15", "0.2", "0.3", "0.4", "0.6", "0.8", "1.2", "2"] {
            let _ = case.run(&format!(r#"timeout -s KILL {delay} {PRUNE_NOW}"#));
            let report = case.check_report();
            assert_eq!(report["problems"], serde_json::json!([]), "killed after {delay} s: {report}");
        }
        let err = case.says(PRUNE_NOW);
        case.says(PRUNE_NOW);
        assert!(case.objects("pending").is_empty(), "{err}");
        assert_eq!(case.packs(), needed);
        assert_eq!(case.objects("index").len(), needed.len());
        let report: serde_json::Value =
            serde_json::from_slice(&case.ok(r#"repo check --read-data --json "$R" --key-file k 2>/dev/null"#)).unwrap();
        for count in ["unneeded_packs", "unindexed_packs", "stale_marks"] {
            assert_eq!(report[count], 0, "{count}: {report}");
        }
        case.restore(id_of(&kept), "out");
        assert_same_tree(&dir.join("keep"), &dir.join("out/keep"));
    }

    /// `repo check` run again and again while `repo prune` deletes 150 packs:
    /// every check passes (a pack prune deletes is not a lost one).
    fn check_beside_prune_reports_no_false_damage(backend: Backend) {
        let case = Case::new(backend);
        let dir = case.path();
        put(&dir.join("keep/data"), &data(1, 61), 0o644, 1_700_000_000);
        let kept = case.ship("keep");
        let needed = case.packs();
        case.unneeded_packs(150);
        assert!(case.says(r#"repo prune "$R" --key-file k"#).contains(": 150 packs marked"));
        let checks = case.ok(&format!(
            r#"{PRUNE_NOW} 2>prune.err & pid=$!
               checks=0
               while kill -0 $pid 2>/dev/null; do
                   repo check "$R" --key-file k >/dev/null 2>check.err || {{ cat check.err >&2; exit 1; }}
                   checks=$((checks + 1))
               done
               wait $pid
               echo $checks"#
        ));
        eprintln!("{backend:?}: {} checks beside prune", String::from_utf8_lossy(&checks).trim());
        assert_eq!(case.packs(), needed);
        case.ok(r#"repo check --read-data "$R" --key-file k 2>/dev/null"#);
        case.restore(id_of(&kept), "out");
        assert_same_tree(&dir.join("keep"), &dir.join("out/keep"));
    }
}

/// What a write-only key can ship, and backup hosts whose clocks are wrong:
/// listing, selection and retention keep working for everyone.
mod summaries_and_clocks {
    use super::*;
    use backpipe::format::{Frame, Kind};
    use backpipe::repo::snapshot::{self, Summary};

    on_every_backend!(
        a_malformed_snapshot_from_a_write_only_key_breaks_nothing_for_others,
        retention_goes_by_the_storage_clock_too,
    );

    /// A stream whose Begin frame `edit` changed, as a forged source would write it (plain, to be chunked).
    fn with_begin(case: &Case, what: &str, edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
        let plain = case.ok(&format!("dump-files {what}"));
        forge(&plain, |frames| {
            let begin = frames.iter_mut().find(|f| f.kind == Kind::Begin).unwrap();
            let mut value: serde_json::Value = begin.parse_json().unwrap();
            edit(&mut value);
            *begin = Frame::json(Kind::Begin, &value);
        })
    }

    /// Stores a snapshot whose summary holds `begin`, sealed with the
    /// write-only key `w` as a modified `ship` would, over the skeleton of
    /// stored snapshot `like`; returns its ID.
    fn store_forged(case: &Case, like: &str, begin: backpipe::meta::Begin) -> String {
        let secret = backpipe::keys::SecretSource::KeyFile(case.path().join("w")).load().unwrap();
        let repo = backpipe::repo::Repository::open(&case.repo, &secret).unwrap();
        assert!(repo.master().is_err(), "w is write-only");
        let object = case.storage().read(&format!("snapshots/{like}")).unwrap();
        let skeleton = &object[12 + u32::from_le_bytes(object[8..12].try_into().unwrap()) as usize..];
        let stream = match backpipe::reader::StreamReader::new(skeleton).next_item().unwrap() {
            Some(backpipe::reader::Item::Start(stream)) => stream,
            _ => panic!("a skeleton starts with its preamble"),
        };
        let summary = Summary {
            stream_id: stream.iter().map(|b| format!("{b:02x}")).collect(),
            begin,
            end_positions: Default::default(),
            entries: 1,
            bytes: 1,
            changed: 0,
            stream_bytes: skeleton.len() as u64,
            chunks: 1,
            new_chunks: 0,
            new_bytes: 0,
            stored: "2026-11-22T03:13:33Z".into(),
            skeleton_blake3: blake3::hash(skeleton).to_hex().to_string(),
        };
        let header = snapshot::header(&summary, &repo.write_key().recipient, &repo.config.id);
        let id = snapshot::id_of(&header);
        case.storage().create(&format!("snapshots/{id}"), &[&header[..], skeleton].concat()).unwrap();
        id
    }

    /// A write-only key ships a stream whose `started` is not a time: `ship`
    /// refuses it. Stored anyway (by a modified `ship`, with a host name
    /// that would forge a line of the listing too), such snapshots are listed
    /// as damaged, `check` reports them, rules leave them and act on the
    /// others, and `repo forget ID` removes them.
    fn a_malformed_snapshot_from_a_write_only_key_breaks_nothing_for_others(backend: Backend) {
        let case = Case::new(backend);
        let dir = case.path();
        put(&dir.join("db/v"), b"version one", 0o644, 1_700_000_000);
        let one = case.ship("db");
        put(&dir.join("db/v"), b"version two", 0o644, 1_700_000_100);
        let two = case.ship("db");
        case.ok(r#"keygen w && repo key add "$R" --key-file k --write-only --new-key-file w 2>/dev/null"#);
        let pipeline = BACKUP.replace("--key-file k", "--key-file w");
        let forged = with_begin(&case, "db", |begin| begin["started"] = "yesterday".into());
        std::fs::write(dir.join("forged.bp"), forged).unwrap();
        let err = case.fails(&format!("cat forged.bp | {pipeline}"), 4);
        assert!(err.contains("Begin frame is not valid") && err.contains(r#"started "yesterday""#), "{err}");
        let control = with_begin(&case, "db", |begin| begin["host"] = "db1\nfake".into());
        std::fs::write(dir.join("control.bp"), control).unwrap();
        let err = case.fails(&format!("cat control.bp | {pipeline}"), 4);
        assert!(err.contains("host") && err.contains("is not a name"), "{err}");
        assert_eq!(case.objects("snapshots").len(), 2, "nothing was stored");

        let begin = backpipe::meta::Begin::now("forger", "files", "full");
        let bad_time =
            store_forged(&case, id_of(&two), backpipe::meta::Begin { started: "yesterday".into(), ..begin.clone() });
        let bad_host = store_forged(&case, id_of(&two), backpipe::meta::Begin { host: "db1\nfake".into(), ..begin });
        // Listed for everyone, as damaged, naming why; the others as always.
        let out = case.run(r#"repo snapshots "$R" --key-file k"#);
        let (listed, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert_eq!(listed.lines().count(), 4, "{listed}");
        assert!(
            listed.lines().any(|l| l.starts_with(id_of(&one))) && listed.lines().any(|l| l.starts_with(id_of(&two)))
        );
        let damaged = |id: &str, why: &str| {
            listed.lines().any(|l| l.starts_with(&format!("{id}  damaged: its summary does not make sense: {why}")))
        };
        assert!(damaged(&bad_time, r#"started "yesterday" is not an RFC 3339 time"#), "{listed}");
        assert!(damaged(&bad_host, r#"host "db1\nfake" is not a name"#), "{listed}");
        assert!(err.contains("2 snapshots cannot be read"), "{err}");
        let err = case.fails(r#"repo check "$R" --key-file k"#, 4);
        assert!(err.contains(&bad_time) && err.contains(&bad_host) && err.contains("does not make sense"), "{err}");
        // Rules act on the others and leave these (named, exit 4); an ID still fetches.
        let out = case.run(r#"repo forget "$R" --keep-last 1 --key-file k"#);
        let (decided, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(4), "{err}");
        assert!(decided.contains(&format!("remove {}", id_of(&one))), "{decided}");
        assert!(decided.contains(&format!("keep   {bad_time}  (damaged: ")), "{decided}");
        all_prefixed(&err, "repo");
        case.restore(id_of(&two), "out");
        assert_eq!(std::fs::read(dir.join("out/db/v")).unwrap(), b"version two");
        // Named, they go; then everything is as before.
        case.ok(&format!(r#"repo forget "$R" {bad_time} {} --key-file k 2>/dev/null"#, &bad_host[..10]));
        let listed = String::from_utf8(case.ok(r#"repo snapshots "$R" --key-file k"#)).unwrap();
        assert_eq!(listed.lines().count(), 1, "{listed}");
        case.ok(r#"repo check "$R" --key-file k 2>/dev/null"#);
        case.restore("latest", "out");
        assert_eq!(std::fs::read(dir.join("out/db/v")).unwrap(), b"version two");
    }

    /// A backup made just now on a host whose clock is three days behind
    /// (libfaketime; on S3 only the source's clock, since S3 refuses requests
    /// signed three days off) is kept by `--keep-within 2d` and `--keep-last
    /// 1`, by the storage's time; one from a host three days ahead too; and
    /// both are warned about.
    fn retention_goes_by_the_storage_clock_too(backend: Backend) {
        let case = Case::new(backend);
        let dir = case.path();
        put(&dir.join("db/v"), b"made on time", 0o644, 1_700_000_000);
        let on_time = case.ship("db");
        let skewed = |offset: &str| -> serde_json::Value {
            let clock = format!("FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f {offset}");
            let script = match backend {
                Backend::S3 => format!("{clock} dump-files db | {BACKUP}"),
                _ => format!("{clock} bash -c 'set -euo pipefail; dump-files db | {BACKUP}'"),
            };
            serde_json::from_slice(&case.ok(&script)).unwrap()
        };
        put(&dir.join("db/v"), b"made behind", 0o644, 1_700_000_000);
        // SFTP and S3 give the storage's times in whole seconds: two ships in
        // one second tie there, and the hosts' clocks decide.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let behind = skewed("-3d");
        let started = |r: &serde_json::Value| backpipe::units::parse_time(r["started"].as_str().unwrap()).unwrap();
        assert!(started(&on_time) - started(&behind) > chrono::Duration::days(2), "{behind}");
        let decide = |rules: &str| -> (String, String) {
            let out = case.run(&format!(r#"repo forget "$R" {rules} --dry-run --key-file k"#));
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "{err}");
            (String::from_utf8_lossy(&out.stdout).into_owned(), err)
        };
        for rules in ["--keep-within 2d", "--keep-last 1", "--keep-daily 1"] {
            let (decided, err) = decide(rules);
            assert!(decided.contains(&format!("keep   {}  (", id_of(&behind))), "{rules}: {decided}");
            assert!(decided.contains("(by the storage's time)"), "{rules}: {decided}");
            assert!(decided.contains(&format!("keep   {}  (", id_of(&on_time))), "{rules}: {decided}");
            all_prefixed(&err, "repo");
            // Where ship ran with the wrong clock too, its `stored` time shows it.
            if !matches!(backend, Backend::S3) {
                assert!(
                    err.contains("warning") && err.contains("its clock was behind") && err.contains(id_of(&behind))
                );
            }
        }
        put(&dir.join("db/v"), b"made ahead", 0o644, 1_700_000_000);
        let ahead = skewed("+3d");
        // The newest two by the hosts' clocks (ahead, on time) and by the storage's (ahead, behind).
        let (decided, err) = decide("--keep-last 2");
        for receipt in [&on_time, &behind, &ahead] {
            assert!(decided.contains(&format!("keep   {}  (", id_of(receipt))), "{decided}");
        }
        assert!(err.contains("its clock was ahead") && err.contains(id_of(&ahead)), "{err}");
        let out = case.run(r#"repo snapshots "$R" --key-file k"#);
        assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("its clock was ahead"));
        // `repo forget` on a host whose own clock is three days ahead counts
        // --keep-within back from the storage's present time.
        if !matches!(backend, Backend::S3) {
            let out = case.run(
                r#"FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f +3d repo forget "$R" --keep-within 2d --dry-run --key-file k"#,
            );
            let (decided, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "{err}");
            assert_eq!(decided.lines().filter(|l| l.starts_with("keep")).count(), 3, "{decided}");
            assert!(err.contains("this host's clock is 3 d ahead of the storage's"), "{err}");
            assert!(case.objects("pending").is_empty(), "the clock probe is removed");
        }
    }
}

/// The S3 server reached through a proxy in the test process that counts
/// requests and can stop answering: how many requests listings and fetches
/// make, and what a server that hangs mid-upload does to `ship`.
mod s3_through_a_proxy {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::Duration;

    /// A TCP proxy to the private S3 server.
    struct Proxy {
        port: u16,
        state: Arc<State>,
    }

    struct State {
        upstream: String,
        /// HTTP requests forwarded (request lines seen from clients).
        requests: AtomicU64,
        /// Bytes from clients forwarded since the last [`Proxy::stall_after`].
        sent: AtomicU64,
        /// Forward no more once `sent` would pass this; until closed, hold
        /// every connection open and answer nothing (a stopped server).
        stall_at: AtomicU64,
        stalled: AtomicBool,
        closed: AtomicBool,
    }

    impl Proxy {
        fn start() -> Proxy {
            let endpoint = server_setting("BACKPIPE_TEST_S3_ENDPOINT");
            let upstream = endpoint.trim_start_matches("http://").trim_end_matches('/').to_string();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let state = Arc::new(State {
                upstream,
                requests: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                stall_at: AtomicU64::new(u64::MAX),
                stalled: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            });
            let shared = state.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if shared.closed.load(SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || shared.serve(client));
                }
            });
            Proxy { port, state }
        }

        /// The test repository's location, through the proxy.
        fn location(&self, case: &Case) -> String {
            case.repo.replace(&server_setting("BACKPIPE_TEST_S3_ENDPOINT"), &format!("http://127.0.0.1:{}", self.port))
        }

        fn requests(&self) -> u64 {
            self.state.requests.load(SeqCst)
        }

        /// Stops answering once `bytes` more bytes have come from clients.
        fn stall_after(&self, bytes: u64) {
            self.state.sent.store(0, SeqCst);
            self.state.stall_at.store(bytes, SeqCst);
        }
    }

    impl Drop for Proxy {
        fn drop(&mut self) {
            self.state.closed.store(true, SeqCst);
            let _ = TcpStream::connect(("127.0.0.1", self.port));
        }
    }

    impl State {
        fn serve(self: Arc<Self>, client: TcpStream) {
            let Ok(server) = TcpStream::connect(&self.upstream) else { return };
            let (client2, server2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let up = self.clone();
            std::thread::spawn(move || up.pump(client2, server2, true));
            self.pump(server, client, false);
        }

        /// Copies `from` to `to` until either closes, the proxy closes, or it stalls.
        fn pump(&self, mut from: TcpStream, mut to: TcpStream, from_client: bool) {
            from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut buffer = vec![0u8; 64 << 10];
            // The end of the previous read, so a request line split across reads is counted.
            let mut tail: Vec<u8> = Vec::new();
            while !self.closed.load(SeqCst) {
                if self.stalled.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let n = match from.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        continue
                    }
                    Err(_) => break,
                };
                if from_client {
                    if self.sent.fetch_add(n as u64, SeqCst) + n as u64 > self.stall_at.load(SeqCst) {
                        self.stalled.store(true, SeqCst);
                        continue;
                    }
                    let seen = [&tail[..], &buffer[..n]].concat();
                    let lines = seen.windows(10).filter(|w| *w == b" HTTP/1.1\r").count();
                    self.requests.fetch_add(lines as u64, SeqCst);
                    tail = seen[seen.len().saturating_sub(9)..].to_vec();
                }
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
        }
    }

    /// Listing 60 snapshots reads each header once, and from the local cache
    /// after that; `fetch ID` reads only that snapshot; the cache verifies
    /// itself. Counted in requests, not time.
    #[test]
    fn listings_read_each_header_once_and_fetch_by_id_reads_only_its_snapshot() {
        const SNAPSHOTS: u64 = 60;
        let case = Case::new(Backend::S3);
        put(&case.path().join("db/v"), b"one small file", 0o644, 1_700_000_000);
        let receipts = case.ok(&format!("for i in $(seq {SNAPSHOTS}); do dump-files db; done | {BACKUP}"));
        let ids: Vec<String> = String::from_utf8(receipts)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["snapshot"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len() as u64, SNAPSHOTS);
        let proxy = Proxy::start();
        let through = proxy.location(&case);
        let counted = |script: &str| -> (u64, String) {
            let before = proxy.requests();
            let out = case.ok(&format!("export P='{through}' XDG_CACHE_HOME=\"$PWD/cache\"\n{script}"));
            (proxy.requests() - before, String::from_utf8(out).unwrap())
        };
        let (cold, listed) = counted(r#"repo snapshots "$P" --key-file k"#);
        assert_eq!(listed.lines().count() as u64, SNAPSHOTS);
        assert!(cold <= SNAPSHOTS + 10, "{cold} requests to list {SNAPSHOTS} snapshots the first time");
        let (warm, again) = counted(r#"repo snapshots "$P" --key-file k"#);
        assert_eq!(again, listed);
        assert!(warm <= 10, "{warm} requests to list {SNAPSHOTS} cached snapshots");
        let (by_id, _) = counted(&format!(r#"fetch "$P" {} --key-file k | {RESTORE} | unpack out1"#, &ids[7][..12]));
        assert!(by_id <= 20, "{by_id} requests to fetch one snapshot of {SNAPSHOTS}");
        let (latest, _) = counted(&format!(r#"fetch "$P" latest --key-file k | {RESTORE} | unpack out2"#));
        assert!(latest <= 20, "{latest} requests to fetch the latest of {SNAPSHOTS} cached snapshots");
        assert_same_tree(&case.path().join("db"), &case.path().join("out1/db"));
        // A cached header that is not its snapshot's (damaged, or another's) is read again.
        let cache = std::fs::read_dir(case.path().join("cache/backpipe")).unwrap().next().unwrap().unwrap().path();
        let cached = |id: &str| cache.join("snapshots").join(id);
        std::fs::copy(cached(&ids[1]), cached(&ids[2])).unwrap();
        let mut flipped = std::fs::read(cached(&ids[3])).unwrap();
        flipped[40] ^= 1;
        std::fs::write(cached(&ids[3]), flipped).unwrap();
        let (_, relisted) = counted(r#"repo snapshots "$P" --key-file k"#);
        assert_eq!(relisted, listed);
        // A cached index whose MAC fails (here: a chunk's offset changed) is read again.
        let indexes: Vec<_> = std::fs::read_dir(cache.join("index")).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(indexes.len(), 1, "one pack holds the one chunk of every snapshot");
        let good = std::fs::read(&indexes[0]).unwrap();
        let mut moved = good.clone();
        moved[32 + 12 + 32] ^= 1;
        std::fs::write(&indexes[0], moved).unwrap();
        counted(&format!(r#"fetch "$P" {} --key-file k | {RESTORE} | unpack out3"#, ids[9]));
        assert_same_tree(&case.path().join("db"), &case.path().join("out3/db"));
        assert_eq!(std::fs::read(&indexes[0]).unwrap(), good);
        // A snapshot forgotten leaves the cache at the next listing.
        case.ok(&format!(r#"repo forget "$R" {} --key-file k 2>/dev/null"#, ids[0]));
        let (_, shorter) = counted(r#"repo snapshots "$P" --key-file k"#);
        assert_eq!(shorter.lines().count() as u64, SNAPSHOTS - 1);
        assert!(!cached(&ids[0]).exists() && cached(&ids[1]).exists());
        // `repo forget` left a catalogue: a machine with an empty cache lists
        // and fetches in a few requests too.
        let catalogues = case.objects("catalog");
        assert_eq!(catalogues.len(), 1, "{catalogues:?}");
        let fresh = |script: &str| counted(&format!("rm -rf fresh; export XDG_CACHE_HOME=\"$PWD/fresh\"\n{script}"));
        let (cold, listed) = fresh(r#"repo snapshots "$P" --key-file k"#);
        assert_eq!(listed, shorter);
        assert!(cold <= 12, "{cold} requests to list {} snapshots with a catalogue", SNAPSHOTS - 1);
        let (by_id, _) = fresh(&format!(r#"fetch "$P" {} --key-file k | {RESTORE} | unpack out4"#, ids[11]));
        assert!(by_id <= 20, "{by_id} requests to fetch one snapshot with a catalogue");
        assert_same_tree(&case.path().join("db"), &case.path().join("out4/db"));
        // A catalogue that is not what its name says is not used: every header is read instead.
        let mut bytes = case.storage().read(&catalogues[0]).unwrap();
        bytes[100] ^= 1;
        case.overwrite(&catalogues[0], &bytes);
        let (cold, listed) = fresh(r#"repo snapshots "$P" --key-file k"#);
        assert_eq!(listed, shorter);
        assert!(cold >= SNAPSHOTS - 1, "{cold} requests: the damaged catalogue was not used");
    }

    /// The S3 server stops answering in the middle of an upload: `ship` says
    /// so while it waits, gives up within the limits set (one attempt of 2 s
    /// and one retry here), with one line naming the cause, and stores no
    /// snapshot.
    #[test]
    fn a_server_that_stops_answering_is_named_and_waited_for_within_the_limit() {
        let case = Case::new(Backend::S3);
        let dir = case.path();
        put(&dir.join("db/small"), b"stored before", 0o644, 1_700_000_000);
        case.ship("db");
        put(&dir.join("db/big"), &noise(20 << 20, 70), 0o644, 1_700_000_000);
        case.ok(
            r#"dump-files db | chunk --repo "$R" --key-file k | squeeze | encrypt --repo "$R" --key-file k > s.bp"#,
        );
        let before = case.all_objects();
        for (variable, value) in [("BACKPIPE_STORAGE_TIMEOUT", "0"), ("BACKPIPE_STORAGE_RETRIES", "-1")] {
            let err = case.fails(&format!(r#"{variable}={value} ship "$R" --key-file k < s.bp"#), 2);
            assert!(err.contains(variable) && err.contains("is not a whole number"), "{err}");
        }
        let proxy = Proxy::start();
        proxy.stall_after(6 << 20);
        // `timeout` only guards against hanging for good (today's default would be 20 minutes).
        let out = case.run(&format!(
            "export BACKPIPE_STORAGE_TIMEOUT=2 BACKPIPE_STORAGE_RETRIES=1
             timeout 120 ship '{}' --key-file k < s.bp",
            proxy.location(&case)
        ));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.lines().all(|l| l.starts_with("ship: ")), "{err}");
        let (waiting, last): (Vec<&str>, &str) = match err.lines().collect::<Vec<_>>().as_slice() {
            [waiting @ .., last] => (waiting.to_vec(), last),
            [] => panic!("ship said nothing"),
        };
        assert!(!waiting.is_empty(), "no notice while waiting: {err}");
        for line in &waiting {
            assert!(line.contains("is not answering: no reply for") && line.contains("giving up after 6 s"), "{err}");
        }
        assert!(last.contains("cannot write 'data/") && last.contains("no answer: 2 attempts of 2 s"), "{err}");
        drop(proxy);
        // Nothing was committed: the same objects but packs, no new snapshot, and a clean check.
        assert_eq!(
            case.objects("snapshots"),
            before.iter().filter(|n| n.starts_with("snapshots/")).cloned().collect::<Vec<_>>()
        );
        case.ok(r#"repo check "$R" --key-file k 2>/dev/null"#);
        assert_eq!(case.snapshot_count(), 1);
    }
}

/// Chains followed by the links each backup records, over a repository the
/// tools built: streams of `dump-files` shipped as backups of other kinds
/// (their Begin frames rewritten as an engine's producer would write them).
mod chains {
    use super::*;
    use backpipe::format::{Frame, Kind};

    #[test]
    fn fetch_and_forget_follow_parents_across_fulls_differentials_and_logs() {
        let case = Case::new(Backend::Local);
        let mut shipped: Vec<(String, serde_json::Value)> = Vec::new();
        // name, kind, parent (by name), source
        let plan: [(&str, &str, Option<&str>, &str); 10] = [
            ("f1", "full", None, "db1"),
            ("l1", "log", Some("f1"), "db1"),
            ("x1", "full", None, "db2"),
            ("d1", "differential", Some("f1"), "db1"),
            ("l2", "log", Some("l1"), "db1"),
            ("y1", "log", Some("x1"), "db2"),
            ("f2", "full", None, "db1"),
            ("l3", "log", Some("l2"), "db1"),
            ("l4", "log", Some("l3"), "db1"),
            ("l5", "log", Some("l4"), "db1"),
        ];
        for (name, kind, parent, source) in plan {
            put(&case.path().join(format!("{name}/v")), name.as_bytes(), 0o644, 1_700_000_000);
            let parent = parent.map(|p| shipped.iter().find(|(n, _)| n == p).unwrap().1["stream_id"].clone());
            let plain = case.ok(&format!("dump-files {name}"));
            let edited = forge(&plain, |frames| {
                let begin = frames.iter_mut().find(|f| f.kind == Kind::Begin).unwrap();
                let mut value: serde_json::Value = begin.parse_json().unwrap();
                value["kind"] = kind.into();
                value["source"] = source.into();
                if let Some(parent) = &parent {
                    value["parent"] = parent.clone();
                }
                *begin = Frame::json(Kind::Begin, &value);
            });
            std::fs::write(case.path().join("edited.bp"), edited).unwrap();
            let receipt = serde_json::from_slice(&case.ok(&format!("cat edited.bp | {BACKUP}; sleep 1.1"))).unwrap();
            shipped.push((name.to_string(), receipt));
        }
        let id = |name: &str| shipped.iter().find(|(n, _)| n == name).unwrap().1["snapshot"].as_str().unwrap();
        let time = |name: &str| shipped.iter().find(|(n, _)| n == name).unwrap().1["started"].as_str().unwrap();
        // What a chain holds: the trees of its backups, in order.
        let chain = |args: &str| -> Vec<String> {
            let out = case.ok(&format!(r#"fetch "$R" {args} --key-file k | {RESTORE} | inspect"#));
            let text = String::from_utf8(out).unwrap();
            let file = |l: &str| {
                l.split_whitespace().find(|w| w.ends_with("/v")).map(|w| w.trim_end_matches("/v").to_string())
            };
            text.lines().filter_map(file).collect()
        };
        let db1 = "--source db1";
        // When d1 started: f1, d1, then l2 (the first log after the time) holds the logs to it.
        let before_d1 = format!("--until {} {db1}", time("d1"));
        assert_eq!(chain(&before_d1), ["f1", "d1", "l2"]);
        assert_eq!(chain(&format!("--until {} {db1}", time("l1"))), ["f1", "l1", "l2"]);
        // After f2: the log chain runs on across it.
        assert_eq!(chain(&format!("--until {} {db1}", time("f2"))), ["f2", "l3"]);
        assert_eq!(chain(&format!("--chain {} {db1}", id("l5"))), ["f2", "l3", "l4", "l5"]);
        assert_eq!(chain(&format!("--chain {}", id("d1"))), ["f1", "d1"]);
        assert_eq!(chain(&format!("--chain latest --source db2")), ["x1", "y1"]);
        // Two sources: nothing chooses between them by itself.
        let err = case.fails(r#"fetch "$R" --until 2999-01-01 --key-file k > /dev/null"#, 2);
        assert!(err.contains("db1") && err.contains("db2"), "{err}");

        // Retention per source, keeping what each kept backup needs.
        case.ok(r#"repo forget "$R" --keep-last 1 --key-file k > /dev/null 2>&1"#);
        let kept: Vec<String> = String::from_utf8(case.ok(r#"repo snapshots "$R" --key-file k"#))
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect();
        let mut expected: Vec<&str> = ["f2", "l3", "l4", "l5", "x1", "y1"].iter().map(|n| id(n)).collect();
        expected.sort();
        let mut kept_sorted = kept.clone();
        kept_sorted.sort();
        assert_eq!(kept_sorted, expected);
        // l3 continues l2, which is gone: nothing needs it, since f2 holds what it held.
        assert_eq!(chain(&format!("--until 2999-01-01 {db1}")), ["f2", "l3", "l4", "l5"]);
        case.ok(r#"repo check "$R" --key-file k 2>/dev/null"#);

        // A missing link: refused naming it, nothing written.
        case.ok(&format!(r#"repo forget "$R" {} --key-file k > /dev/null 2>&1"#, id("l4")));
        let err = case.fails(&format!(r#"fetch "$R" --chain {} --key-file k > out.bp"#, id("l5")), 4);
        assert!(err.contains(&format!("snapshot {} continues stream", id("l5"))), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_eq!(std::fs::metadata(case.path().join("out.bp")).unwrap().len(), 0);
        let err = case.fails(r#"repo check "$R" --key-file k"#, 4);
        assert!(err.contains("continues stream"), "{err}");
    }
}

/// `BACKPIPE_REPOSITORY` names the repository for every tool of a pipeline
/// and the repository commands that take only it: a backup, a listing, a
/// check and a restore without naming it, and a repository named on the
/// command line still wins.
#[test]
fn the_repository_can_come_from_the_environment() {
    let case = Case::new(Backend::Local);
    let dir = case.path();
    put(&dir.join("db/v"), b"from the environment", 0o644, 1_700_000_000);
    let env = format!("export BACKPIPE_REPOSITORY='{}'", case.repo);
    let receipt = case
        .ok(&format!("{env}; dump-files db | chunk --key-file k | squeeze | encrypt --key-file k | ship --key-file k"));
    let receipt: serde_json::Value = serde_json::from_slice(&receipt).unwrap();
    let listed = String::from_utf8(case.ok(&format!("{env}; repo snapshots --key-file k"))).unwrap();
    assert!(listed.starts_with(receipt["snapshot"].as_str().unwrap()), "{listed}");
    case.ok(&format!("{env}; repo check --key-file k 2>/dev/null"));
    case.ok(&format!(
        "{env}; fetch latest --key-file k | encrypt -d --key-file k | squeeze -d | chunk -d --key-file k | unpack out"
    ));
    assert_eq!(std::fs::read(dir.join("out/db/v")).unwrap(), b"from the environment");
    // Named on the command line, a repository is used instead; an unset variable and none named is a usage error.
    let err = case.fails("BACKPIPE_REPOSITORY=/nonexistent fetch \"$R\" nosuch --key-file k", 2);
    assert!(err.contains("no snapshot 'nosuch'"), "{err}");
    let err = case.fails("unset BACKPIPE_REPOSITORY; fetch --until 2999-01-01 --key-file k", 2);
    assert!(err.contains("BACKPIPE_REPOSITORY"), "{err}");
}
