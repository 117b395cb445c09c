//! The MySQL agent as DBAs run it, against private MariaDB servers with
//! writes running: restore to the latest state with the commands of
//! `restore-mysql --help` as printed, the target's own binary log left alone,
//! the summary a restore ends with, incrementals that overlap, and backups
//! recorded under another host name.

mod common;
mod mariadb;

use common::*;
use mariadb::*;

/// The lines of `restore-mysql --help`'s example that follow `comment`, up
/// to the next comment or blank line, with the paths the help assumes
/// pointed into the test's case.
fn help_example(case: &Case, comment: &str, admin: &str) -> String {
    let help = case.ok("restore-mysql --help");
    let examples = help.split_once("Examples").expect("the help has examples").1;
    let mut lines = examples.lines().skip_while(|l| !l.contains(comment)).skip(1);
    let mut script: Vec<String> = vec![];
    for line in examples.lines().skip(1).take_while(|l| !l.trim().starts_with('#')) {
        script.push(line.to_string());
    }
    for line in lines.by_ref().take_while(|l| !l.trim().is_empty() && !l.trim().starts_with('#')) {
        script.push(line.to_string());
    }
    let dir = case.path().display().to_string();
    script
        .join("\n")
        .replace("/backups", &format!("{dir}/R"))
        .replace("/etc/backpipe/key", &format!("{dir}/k"))
        .replace("/etc/backpipe/admin.cnf", admin)
}

#[test]
fn restore_to_the_latest_state_as_the_help_says_leaves_the_targets_binary_log_alone() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    while_writing(&source, 6, || {
        case.backup(&source, "--full");
        case.backup(&source, "--incremental --since-receipt receipts");
    });
    case.backup(&source, "--incremental --since-receipt receipts");
    let expected = source.checksums();
    let gtid = source.sql("SELECT @@gtid_binlog_pos").trim().to_string();

    let target = case.server("target");
    let logged = |server: &Server| (server.sql("SHOW MASTER STATUS"), server.sql("SELECT @@gtid_binlog_pos"));
    let before = logged(&target);
    // The superuser, as the dump's accounts need (see docs/engines/mysql.md).
    let admin = case.path().join("admin.cnf");
    case.ok(&format!(
        "printf '[client]\\nsocket=%s\\nuser=%s\\n' {} $(id -un) > {}",
        target.get("SOCKET"),
        admin.display()
    ));
    let script = help_example(&case, "# The latest state", &admin.display().to_string());
    assert!(script.contains("fetch --chain latest") && script.lines().count() >= 5, "{script}");
    let out = sh(case.path(), &script);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}\n{err}");
    assert_eq!(target.checksums(), expected, "restored to the latest state");
    assert_eq!(logged(&target), before, "the restore stayed out of the target's binary log");
    // One summary line with the GTID reached, then how to make a replica.
    let summary: Vec<&str> = err.lines().filter(|l| l.starts_with("restore-mysql: restored ")).collect();
    assert_eq!(summary.len(), 1, "{err}");
    assert!(
        summary[0].contains("the logical full of")
            && summary[0].contains("and 2 incrementals")
            && summary[0].contains(&format!("GTID position {gtid}")),
        "{err}"
    );
    assert!(err.contains(&format!("SET GLOBAL gtid_slave_pos = '{gtid}'")), "{err}");
    // The plan comes before the summary.
    let plan_at = err.find("restore-mysql: full ").expect("the plan is printed");
    assert!(plan_at < err.find("restore-mysql: restored ").unwrap(), "{err}");

    // --log-restore writes the restore into the target's binary log.
    case.ok(&format!(
        "fetch \"$R\" --chain latest --key-file k | {RESTORE} | restore-mysql --replace --log-restore {} 2>/dev/null",
        target.root_login()
    ));
    assert_eq!(target.checksums(), expected);
    assert_ne!(logged(&target).0, before.0, "--log-restore logs the restore");
}

#[test]
fn incrementals_at_once_never_both_continue_one_backup() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    case.backup(&source, "--full");
    // Another run holds the server's lock: this one changes nothing, stores
    // nothing, and the pipeline ends with its status and its cause once.
    let holder = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "mariadb --defaults-file={} -N -e \"SELECT GET_LOCK('backpipe.dump-mysql.incremental', 0); SELECT SLEEP(8)\"",
            source.get("DEFAULTS")
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let logs = source.binlogs();
    let before = case.snapshot_count();
    let err = case
        .fails(&format!("dump-mysql --incremental --since-receipt receipts {} | {BACKUP}", source.backup_login()), 1);
    assert!(err.contains("dump-mysql: another dump-mysql --incremental is running against"), "{err}");
    assert!(err.contains("ship: aborted upstream by dump-mysql; no snapshot was stored"), "{err}");
    assert_eq!(err.lines().count(), 2, "one cause, said once: {err}");
    assert_eq!(source.binlogs(), logs, "nothing changed on the server");
    assert_eq!(case.snapshot_count(), before);
    let mut holder = holder;
    holder.wait().unwrap();

    // Two started together while writes run: each is refused or stored, and
    // the latest state restores exactly.
    let script = format!(
        "for i in 1 2; do (set +e; {{ dump-mysql --incremental --since-receipt receipts {} | {BACKUP} >> receipts; \
         }} 2> err$i; echo $? > status$i) & done; wait",
        source.backup_login()
    );
    while_writing(&source, 4, || case.ok(&script));
    for i in ["1", "2"] {
        let status = std::fs::read_to_string(case.path().join(format!("status{i}"))).unwrap();
        let err = std::fs::read_to_string(case.path().join(format!("err{i}"))).unwrap();
        assert!(status.trim() == "0" || err.contains("another dump-mysql --incremental"), "{status}: {err}");
    }
    case.backup(&source, "--incremental --since-receipt receipts");
    let expected = source.checksums();
    let target = case.server("target");
    case.ok(&format!(
        "fetch \"$R\" --chain latest --key-file k | {RESTORE} | restore-mysql {} 2>/dev/null",
        target.root_login()
    ));
    assert_eq!(target.checksums(), expected);
}

#[test]
fn backups_recorded_under_another_host_name_are_never_a_silent_new_chain() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    case.backup(&source, "--full --host-name db1");
    // The machine was renamed (or a container restarted under a new name).
    let err = case.fails(
        &format!(
            "BACKPIPE_HOST_NAME=db1-new dump-mysql --incremental --since-receipt receipts {} > /dev/null",
            source.backup_login()
        ),
        2,
    );
    assert!(err.contains("recorded under host 'db1'") && err.contains("--host-name 'db1'"), "{err}");
    // Named as before, the chain goes on.
    case.backup(&source, "--incremental --since-receipt receipts --host-name db1");
    let listed = case.ok("repo snapshots \"$R\" --key-file k");
    assert_eq!(listed.lines().filter(|l| l.contains("db1")).count(), 2, "{listed}");
    // A new full under the new name: fetching the old host's latest says that
    // newer backups of the same server are under the other name.
    case.backup(&source, "--full --host-name db1-new");
    let out = sh(case.path(), &case.script("fetch \"$R\" latest --host db1 --key-file k > /dev/null"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("newer backups of this server") && err.contains("--host 'db1-new'"), "{err}");
}

#[test]
fn a_chain_begun_by_older_tools_goes_on_and_restores_after_the_upgrade() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    // A full as the tools before `source` wrote it: no source in its Begin frame.
    case.ok(&format!("dump-mysql --full {} > full.bp", source.backup_login()));
    let full = std::fs::read(case.path().join("full.bp")).unwrap();
    let older = forge(&full, |frames| {
        let begin = frames.iter_mut().find(|f| f.kind == backpipe::format::Kind::Begin).unwrap();
        let mut payload: backpipe::meta::Begin = begin.parse_json().unwrap();
        assert!(payload.source.take().is_some());
        *begin = backpipe::format::Frame::json(backpipe::format::Kind::Begin, &payload);
    });
    std::fs::write(case.path().join("older.bp"), older).unwrap();
    case.ok(&format!("cat older.bp | {BACKUP} >> receipts"));
    while_writing(&source, 3, || case.backup(&source, "--incremental --since-receipt receipts"));
    case.backup(&source, "--incremental --since-receipt receipts");
    let expected = source.checksums();
    // The incrementals continue the older full's history, so every way of
    // choosing the chain finds them, and forget keeps what they need.
    case.ok("repo forget \"$R\" --keep-last 1 --key-file k > /dev/null 2>&1");
    assert_eq!(case.snapshot_count(), 3);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for selection in ["--chain latest".to_string(), format!("--until {now}")] {
        let target = case.server(&format!("target{}", selection.len()));
        case.ok(&format!(
            "fetch \"$R\" {selection} --key-file k | {RESTORE} | restore-mysql {} 2>/dev/null",
            target.root_login()
        ));
        assert_eq!(target.checksums(), expected, "fetch {selection}");
    }
}

#[test]
fn a_time_during_a_physical_copy_restores_from_the_full_before_it() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    source.large_table(32);
    case.backup(&source, "--full");
    while_writing(&source, 3, || case.backup(&source, "--incremental --since-receipt receipts"));
    let physical = while_writing(&source, 4, || case.backup(&source, "--full --physical"));
    case.backup(&source, "--incremental --since-receipt receipts");
    let receipts = std::fs::read_to_string(case.path().join("receipts")).unwrap();
    let receipt: serde_json::Value = receipts
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["snapshot"] == physical.as_str())
        .unwrap();
    let started = receipt["started"].as_str().unwrap().to_string();
    let consistent = receipt["end_positions"]["consistent_at"].as_str().unwrap();
    assert!(consistent > started.as_str(), "the copy took under a second ({started}, {consistent}): make it larger");
    // A time during the copy: fetch --until takes the logical full before it.
    let plan = case.ok(&format!(
        "fetch \"$R\" --until {started} --key-file k | {RESTORE} | restore-mysql --until {started} --dry-run"
    ));
    assert!(plan.starts_with("full         logical"), "{plan}");
    let target = case.server("target");
    case.ok(&format!(
        "fetch \"$R\" --until {started} --key-file k | {RESTORE} | restore-mysql --until {started} {} 2>/dev/null",
        target.root_login()
    ));
    // Given the physical full's chain itself, the refusal names the command that works.
    let err = case.fails(
        &format!("fetch \"$R\" --chain latest --key-file k | {RESTORE} | restore-mysql --until {started} --dry-run"),
        2,
    );
    assert!(err.contains(&format!("fetch REPO --until '{started}' --engine mysql")), "{err}");
}
