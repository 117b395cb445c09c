//! The MySQL agent against real MariaDB servers: each test starts its own
//! private servers with scripts/servers/mariadb (so purges and binary log
//! rotations never cross tests), writes with sysbench, and backs up and
//! restores through full pipelines into a local repository.

mod common;
mod mariadb;

use std::path::Path;
use std::time::Duration;

use common::*;
use mariadb::*;

#[test]
fn logical_backups_restore_to_every_recorded_instant() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    let full = while_writing(&source, 4, || case.backup(&source, "--full"));
    let a = instant(&source);
    let inc1 = while_writing(&source, 4, || case.backup(&source, "--incremental --since-receipt receipts"));
    let b = instant(&source);
    while_writing(&source, 3, || ());
    let c = instant(&source);
    let inc2 = while_writing(&source, 3, || case.backup(&source, "--incremental --repo \"$R\" --key-file k"));
    source.sql("INSERT INTO shop.orders (total, note) VALUES (500, 'last')");
    let last = case.backup(&source, "--incremental --since-receipt receipts");
    let final_sums = source.checksums();
    assert_ne!(a.checksums, b.checksums, "sysbench wrote between the instants");
    assert_ne!(b.checksums, c.checksums);

    // The plan names the backups, binary logs and stopping point, and touches nothing.
    let target = case.server("dry");
    let plan = case.ok(&format!(
        "fetch \"$R\" --until {t} --key-file k | {RESTORE} | restore-mysql --dry-run --until {t} {}",
        target.root_login(),
        t = a.time
    ));
    assert!(plan.contains("full         logical") && plan.contains("incremental") && plan.contains(" from "), "{plan}");
    assert!(
        plan.contains(&format!(
            "stopping before the first event at or after {}",
            a.time.replace('T', " ").replace('Z', " UTC")
        )),
        "{plan}"
    );
    assert_eq!(target.sql("SHOW DATABASES LIKE 'shop'"), "", "a dry run created nothing");
    // A malformed GTID is refused before anything is read.
    let err = case.fails("restore-mysql --until-gtid 0-1 < /dev/null", 2);
    assert!(err.contains("is not a GTID"), "{err}");
    // Stopping points the chain cannot reach are refused in the plan.
    for until in ["--until-gtid 0-1-99999999", "--until-position mysql-bin.000999:4"] {
        let err = case.fails(
            &format!("fetch \"$R\" {full} {inc1} --key-file k | {RESTORE} | restore-mysql --dry-run {until}"),
            2,
        );
        assert!(err.contains("is not in") || err.contains("is not among"), "{until}: {err}");
    }
    drop(target);

    // Each instant, by time (through fetch --until), GTID and position, into a fresh server.
    for (what, chain, until, expected) in [
        ("time A", format!("--until {}", a.time), format!("--until {}", a.time), &a.checksums),
        ("gtid B", format!("{full} {inc1} {inc2} {last}"), format!("--until-gtid {}", b.gtid), &b.checksums),
        ("time C", format!("--until {}", c.time), format!("--until {}", c.time), &c.checksums),
        ("position C", format!("{full} {inc1} {inc2}"), format!("--until-position {}", c.position), &c.checksums),
    ] {
        let target = case.server(&what.replace(' ', "-"));
        case.ok(&format!(
            "fetch \"$R\" {chain} --key-file k | {RESTORE} | restore-mysql {until} {}",
            target.root_login()
        ));
        assert_eq!(&target.checksums(), expected, "restore to {what}");
    }

    // The latest state, with every kind of object and the account.
    let target = case.server("latest");
    case.ok(&format!(
        "fetch \"$R\" {full} {inc1} {inc2} {last} --key-file k | {RESTORE} | restore-mysql {}",
        target.root_login()
    ));
    assert_eq!(target.checksums(), final_sums);
    assert_eq!(target.objects(), source.objects());
    assert!(target.objects().contains("GRANT SELECT, INSERT ON `shop`.* TO `clerk`@`%`"));
}

#[test]
fn physical_backups_restore_to_an_instant_and_to_the_latest() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    let full = while_writing(&source, 4, || case.backup(&source, "--full --physical"));
    let a = instant(&source);
    let inc = while_writing(&source, 3, || case.backup(&source, "--incremental --since-receipt receipts"));
    let last = case.backup(&source, "--incremental --since-receipt receipts");
    let final_sums = source.checksums();

    // A data directory a running server holds is refused even with --replace.
    let running = case.server("running");
    let err = case.fails(
        &format!(
            "fetch \"$R\" {full} --key-file k | {RESTORE} | restore-mysql --datadir {}/data --replace",
            running.dir.display()
        ),
        5,
    );
    assert!(err.contains("a server is running"), "{err}");
    assert_eq!(running.sql("SELECT 1").trim(), "1");
    drop(running);

    for (what, until, expected) in
        [("instant", format!("--until {}", a.time), &a.checksums), ("latest", String::new(), &final_sums)]
    {
        // A server whose data directory is replaced while it is stopped, then started again.
        let dir = case.server(what).dir.clone(); // stopped again when dropped
        let err = case.fails(
            &format!(
                "fetch \"$R\" {full} {inc} {last} --key-file k | {RESTORE} | restore-mysql {until} --datadir {}/data",
                dir.display()
            ),
            5,
        );
        assert!(err.contains("is not empty") && err.lines().count() == 1, "{err}");
        case.ok(&format!(
            "fetch \"$R\" {full} {inc} {last} --key-file k | {RESTORE} | restore-mysql {until} --datadir {dir}/data --replace \
             --server-defaults {dir}/my.cnf",
            dir = dir.display()
        ));
        let restarted = Server::start(&dir);
        assert_eq!(&restarted.checksums(), expected, "physical restore to the {what}");
        assert_eq!(restarted.objects(), source.objects());
    }
}

#[test]
fn a_purged_or_damaged_binary_log_fails_the_incremental_and_stores_nothing() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    case.backup(&source, "--full");
    source.sql(
        "INSERT INTO shop.orders (total) VALUES (1); FLUSH BINARY LOGS; INSERT INTO shop.orders (total) VALUES (2)",
    );

    // A damaged closed file: one flipped byte in the middle of an event.
    let logs = source.binlogs();
    let damaged = Path::new(source.get("BINLOG_DIR")).join(&logs[logs.len() - 2]);
    let mut bytes = std::fs::read(&damaged).unwrap();
    let original = bytes.clone();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x10;
    std::fs::write(&damaged, &bytes).unwrap();
    let before = case.snapshot_count();
    let err =
        case.backup_fails(&format!("dump-mysql --incremental --since-receipt receipts {}", source.backup_login()), 4);
    assert!(err.contains("is damaged at byte") && err.contains("CRC-32"), "{err}");
    assert_eq!(case.snapshot_count(), before, "nothing stored");
    std::fs::write(&damaged, &original).unwrap();

    // A purged file the chain needs: refused before anything changes on the server.
    let current = source.binlogs().last().unwrap().clone();
    source.sql(&format!("PURGE BINARY LOGS TO '{current}'"));
    let logs = source.binlogs();
    let err =
        case.backup_fails(&format!("dump-mysql --incremental --since-receipt receipts {}", source.backup_login()), 5);
    assert!(err.contains("was purged") && err.contains("take a full backup"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("dump-mysql")).count(), 1, "{err}");
    assert_eq!(source.binlogs(), logs, "no FLUSH on a broken chain");
    assert_eq!(case.snapshot_count(), before, "nothing stored");
}

#[test]
fn failures_end_in_one_line_and_store_nothing() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    case.backup(&source, "--full");
    source.sql(
        "CREATE USER weak@localhost IDENTIFIED BY 'weak-pw'; GRANT SELECT ON shop.* TO weak@localhost; \
         CREATE USER noflush@localhost IDENTIFIED BY 'nf-pw'; \
         GRANT SELECT, SHOW VIEW, BINLOG MONITOR ON *.* TO noflush@localhost",
    );
    std::fs::write(case.path().join("wrong"), "not-the-password\n").unwrap();
    std::fs::write(case.path().join("weak"), "weak-pw\n").unwrap();
    std::fs::write(case.path().join("nf"), "nf-pw\n").unwrap();
    let socket = source.get("SOCKET");
    let before = case.snapshot_count();
    let logs = source.binlogs();
    for (what, command, cause) in [
        (
            "refused",
            "dump-mysql --full --host=127.0.0.1 --port=1 --user=backpipe --password-file=wrong".to_string(),
            "Can't connect",
        ),
        (
            "wrong password",
            format!("dump-mysql --full --socket={socket} --user=backpipe --password-file=wrong"),
            "Access denied for user",
        ),
        (
            "missing privileges",
            format!("dump-mysql --full --socket={socket} --user=weak --password-file=weak"),
            "denied",
        ),
        (
            "no RELOAD for an incremental",
            format!(
                "dump-mysql --incremental --since-receipt receipts --socket={socket} --user=noflush --password-file=nf"
            ),
            "RELOAD",
        ),
    ] {
        let err = case.backup_fails(&command, 5);
        let ours: Vec<&str> = err.lines().filter(|l| l.starts_with("dump-mysql:")).collect();
        assert_eq!(ours.len(), 1, "{what}: {err}");
        assert!(ours[0].contains(cause), "{what}: {err}");
        assert_eq!(case.snapshot_count(), before, "{what}: nothing stored");
    }
    assert_eq!(source.binlogs(), logs, "nothing changed on the server");

    // The password never reaches argv: MYSQL_PWD works, and so does an fd;
    // a password file outranks an option file's password.
    std::fs::write(
        case.path().join("stale.cnf"),
        format!("[client]\nsocket={socket}\nuser=backpipe\npassword=stale\n"),
    )
    .unwrap();
    case.ok(&format!(
        "MYSQL_PWD=$(cat {pw}) dump-mysql --full --socket={socket} --user=backpipe | inspect > /dev/null; \
         dump-mysql --full --socket={socket} --user=backpipe --password-fd=3 3<{pw} | inspect > /dev/null; \
         dump-mysql --full --defaults-file=stale.cnf --password-file={pw} | inspect > /dev/null",
        pw = source.get("PASSWORD_FILE")
    ));

    // A server with no databases makes a dump of a few kilobytes, which is complete too.
    let target = case.server("target");
    let listing = case.ok(&format!("dump-mysql --full {} | inspect", target.backup_login()));
    assert!(listing.contains("dump.sql"), "{listing}");

    // A target that holds data is refused, and keeps its data.
    target.sql("CREATE DATABASE keepme; CREATE TABLE keepme.t (x INT); INSERT INTO keepme.t VALUES (7)");
    let sums = target.checksums();
    let err =
        case.fails(&format!("fetch \"$R\" latest --key-file k | {RESTORE} | restore-mysql {}", target.root_login()), 5);
    assert!(err.contains("already holds databases (keepme)") && err.contains("--replace"), "{err}");
    assert_eq!(target.checksums(), sums);

    // The server killed in the middle of a dump: the stream is aborted, nothing
    // is stored, and the pipeline exits as dump-mysql did (5, a database error).
    source.sql("CREATE TABLE shop.bulk (id INT AUTO_INCREMENT PRIMARY KEY, pad CHAR(200)) ENGINE=InnoDB");
    source.sql("INSERT INTO shop.bulk (pad) SELECT REPEAT('x', 200) FROM shop.seq_1_to_400000");
    let pid = std::fs::read_to_string(source.dir.join("pids")).unwrap();
    let pid = pid.split_whitespace().next().unwrap().to_string();
    let err = case.fails(
        &format!("dump-mysql --full {} | (sleep 1; kill -9 {pid}; sleep 1; cat) | {BACKUP}", source.backup_login()),
        5,
    );
    assert!(err.lines().any(|l| l.starts_with("dump-mysql: mariadb-dump failed")), "{err}");
    assert_eq!(case.snapshot_count(), before, "nothing stored");
}

#[test]
fn purge_removes_only_binary_logs_that_stored_incrementals_hold() {
    let case = Case::new();
    let source = case.server("source");
    let other = case.server("other");
    source.load_sample();
    other.load_sample();
    let admin = format!("--defaults-file={}", source.get("DEFAULTS"));
    case.backup(&source, "--full");
    std::fs::copy(case.path().join("receipts"), case.path().join("full-only")).unwrap();
    // A full alone proves no binary log stored.
    let said = case.ok(&format!("dump-mysql purge --verbose --receipt full-only {admin} 2>&1"));
    assert!(said.contains("nothing to purge"), "{said}");

    source.sql("INSERT INTO shop.orders (total) VALUES (1)");
    case.backup(&source, "--incremental --since-receipt receipts");
    source.sql("INSERT INTO shop.orders (total) VALUES (2)");
    // Taken but never stored: its files must stay.
    case.ok(&format!("dump-mysql --incremental --since-receipt receipts {} > /dev/null", source.backup_login()));
    source.sql("INSERT INTO shop.orders (total) VALUES (3)");
    let receipts = case.ok("cat receipts");
    let held: Vec<String> = receipts
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "incremental")
        .flat_map(|r| {
            let p = &r["positions"];
            let (from, to) =
                (p["from_file"].as_str().unwrap().to_string(), p["binlog_file"].as_str().unwrap().to_string());
            let n = |f: &str| f.rsplit_once('.').unwrap().1.parse::<u32>().unwrap();
            let (a, b) = (n(&from), n(&to));
            (a..=b).map(move |i| format!("{}.{i:06}", from.rsplit_once('.').unwrap().0))
        })
        .collect();
    let before = source.binlogs();
    assert!(held.iter().all(|f| before.contains(f)));

    // Another server's receipt allows nothing here; a dry run removes nothing.
    let said = case
        .ok(&format!("dump-mysql purge --verbose --receipt receipts --defaults-file={} 2>&1", other.get("DEFAULTS")));
    assert!(said.contains("nothing to purge"), "{said}");
    let said = case.ok(&format!("dump-mysql purge --receipt receipts --dry-run {admin} 2>&1"));
    assert!(said.contains("would purge"), "{said}");
    assert_eq!(source.binlogs(), before);

    // The backup user may not purge (no BINLOG ADMIN); the admin may.
    let err = case.fails(&format!("dump-mysql purge --receipt receipts {}", source.backup_login()), 5);
    assert!(err.contains("privilege"), "{err}");
    assert_eq!(source.binlogs(), before);
    // Quiet when all is well (cron mails every line).
    let said = case.ok(&format!("dump-mysql purge --receipt receipts {admin} 2>&1"));
    assert_eq!(said, "", "purge without --verbose");
    let after = source.binlogs();
    let expected: Vec<String> = before.iter().filter(|f| !held.contains(f)).cloned().collect();
    assert_eq!(after, expected, "exactly the held files are gone");
    // The chain still continues from what is left.
    case.backup(&source, "--incremental --since-receipt receipts");

    // After RESET MASTER new files reuse the old names: nothing of them counts as stored.
    source.sql(
        "RESET MASTER; INSERT INTO shop.orders (total) VALUES (4); FLUSH BINARY LOGS; \
         INSERT INTO shop.orders (total) VALUES (5); FLUSH BINARY LOGS",
    );
    let reset = source.binlogs();
    let said = case.ok(&format!("dump-mysql purge --verbose --receipt receipts {admin} 2>&1"));
    assert!(said.contains("nothing to purge"), "{said}");
    assert_eq!(source.binlogs(), reset);
    let err = case
        .fails(&format!("dump-mysql --incremental --since-receipt receipts {} > /dev/null", source.backup_login()), 5);
    assert!(err.contains("were reset") || err.contains("was purged"), "{err}");
}

#[test]
fn an_incremental_after_a_full_continues_the_archive_without_a_gap() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    case.backup(&source, "--full");
    source.sql("INSERT INTO shop.orders (total) VALUES (1)");
    case.backup(&source, "--incremental --since-receipt receipts");
    // Files rotated between the last incremental and the next full.
    source.sql(
        "INSERT INTO shop.orders (total) VALUES (2); FLUSH BINARY LOGS; \
         INSERT INTO shop.orders (total) VALUES (3); FLUSH BINARY LOGS",
    );
    let full2 = case.backup(&source, "--full");
    source.sql("INSERT INTO shop.orders (total) VALUES (4)");
    // --restart-at-full starts at the full instead (taken, not stored).
    let restarted = case.ok(&format!(
        "dump-mysql --incremental --since-receipt receipts --restart-at-full {} | inspect --json",
        source.backup_login()
    ));
    let last: serde_json::Value = serde_json::from_str(case.ok("tail -1 receipts").trim()).unwrap();
    let full2_file = last["positions"]["binlog_file"].as_str().unwrap();
    assert!(restarted.contains(&format!("\"from_file\":\"{full2_file}\"")), "{restarted}");
    source.sql("INSERT INTO shop.orders (total) VALUES (5)");
    let inc2 = case.backup(&source, "--incremental --since-receipt receipts");
    let receipts: Vec<serde_json::Value> =
        case.ok("cat receipts").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(receipts[3]["positions"]["from_file"], receipts[1]["positions"]["next_file"], "no gap");
    // It continues the last incremental's stream, across the full.
    assert_eq!(receipts[3]["parent"], receipts[1]["stream_id"]);

    // The new full and that incremental restore the latest state.
    let target = case.server("target");
    case.ok(&format!("fetch \"$R\" {full2} {inc2} --key-file k | {RESTORE} | restore-mysql {}", target.root_login()));
    assert_eq!(target.checksums(), source.checksums());

    // Every closed file is stored, so purge leaves only the current one.
    case.ok(&format!("dump-mysql purge --receipt receipts --defaults-file={}", source.get("DEFAULTS")));
    assert_eq!(source.binlogs().len(), 1);
}

#[test]
fn non_transactional_tables_written_during_a_slow_full_are_restored_once() {
    let case = Case::new();
    let source = case.server("source");
    // A large InnoDB database dumped first keeps mariadb-dump busy (its reader is
    // slow) while rows go on arriving in MyISAM and Aria tables dumped after it.
    source.large_table(24);
    source.sql(
        "CREATE DATABASE nt; \
         CREATE TABLE nt.keyed (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=MyISAM; \
         CREATE TABLE nt.keyless (v INT) ENGINE=MyISAM; \
         CREATE TABLE nt.aria (v INT) ENGINE=Aria; \
         CREATE VIEW nt.both AS SELECT k.v FROM nt.keyed k JOIN nt.aria a USING (v); \
         INSERT INTO nt.keyed (v) VALUES (0); INSERT INTO nt.keyless VALUES (0); INSERT INTO nt.aria VALUES (0);",
    );
    let stop = case.path().join("stop-writing");
    let mut writer = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "i=0; while [ ! -e {stop} ]; do i=$((i+1)); mariadb {login} -e \
             \"INSERT INTO nt.keyed (v) VALUES ($i); INSERT INTO nt.keyless VALUES ($i); INSERT INTO nt.aria VALUES ($i)\"; \
             sleep 0.02; done",
            stop = stop.display(),
            login = source.root_login()
        ))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out =
        case.ok(&format!("dump-mysql --full {} | (sleep 4; cat) | {BACKUP} | tee -a receipts", source.backup_login()));
    assert!(out.contains("\"snapshot\""), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, b"").unwrap();
    assert!(writer.wait().unwrap().success());
    let listing = case.ok("fetch \"$R\" latest --key-file k | encrypt -d --repo \"$R\" --key-file k | inspect");
    assert!(listing.contains("nontransactional.sql"), "{listing}");
    case.backup(&source, "--incremental --since-receipt receipts");

    let target = case.server("target");
    case.ok(&format!(
        "fetch \"$R\" --until 9999-01-01 --key-file k | {RESTORE} | restore-mysql {}",
        target.root_login()
    ));
    let rows = "SELECT GROUP_CONCAT(v ORDER BY v) FROM nt.keyed; SELECT GROUP_CONCAT(v ORDER BY v) FROM nt.keyless; \
                SELECT GROUP_CONCAT(v ORDER BY v) FROM nt.aria; SELECT COUNT(*) FROM nt.both";
    let (expected, restored) = (source.sql(rows), target.sql(rows));
    assert!(expected.lines().next().unwrap().split(',').count() > 20, "too few writes during the full: {expected}");
    assert_eq!(restored, expected, "rows written during the full were restored twice or lost");
    assert_eq!(target.checksums(), source.checksums());
}

#[test]
fn a_signalled_agent_leaves_no_password_file() {
    let case = Case::new();
    let source = case.server("source");
    source.large_table(8);
    std::fs::create_dir(case.path().join("tmp")).unwrap();
    for signal in ["TERM", "INT", "HUP"] {
        // The dump blocks on a reader that sleeps, and is signalled while it holds a login.
        case.ok(&format!(
            "export TMPDIR=\"$PWD/tmp\"
             dump-mysql --full {} > >(sleep 3; cat > /dev/null) &
             sleep 1.5; kill -{signal} $!; wait $! || true",
            source.backup_login()
        ));
        let left: Vec<_> =
            std::fs::read_dir(case.path().join("tmp")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "SIG{signal} left {left:?} in TMPDIR");
    }
}

#[test]
fn purge_reports_what_the_server_removed_and_an_unreadable_directory_changes_nothing() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    let admin = format!("--defaults-file={}", source.get("DEFAULTS"));
    case.backup(&source, "--full");

    // Binary logs that cannot be read fail the incremental before FLUSH BINARY LOGS.
    let before = source.binlogs();
    let err = case.backup_fails(
        &format!(
            "dump-mysql --incremental --since-receipt receipts --binlog-dir missing-dir {}",
            source.backup_login()
        ),
        1,
    );
    assert!(err.contains("cannot read binary log") && err.contains("--binlog-dir"), "{err}");
    assert_eq!(source.binlogs(), before, "the server's binary logs changed");

    // Purges right after incrementals, with writes going on: what it says it
    // purged is gone, what it says it kept is there.
    for _ in 0..3 {
        while_writing(&source, 2, || case.backup(&source, "--incremental --since-receipt receipts"));
        let said = case.ok(&format!("dump-mysql purge --verbose --receipt receipts {admin} 2>&1"));
        let left = source.binlogs();
        for line in said.lines() {
            if let Some(range) = line.split_once(" binary logs, ").map(|(_, r)| r) {
                let last = range.split(" to ").last().unwrap().trim();
                assert!(!left.iter().any(|f| f == last), "purge said it removed {last}, the server has {left:?}");
            }
            if let Some(kept) = line.split_once("kept ").map(|(_, r)| r.split(' ').next().unwrap()) {
                assert!(left.iter().any(|f| f == kept), "purge said it kept {kept}, the server has {left:?}");
            }
        }
    }
}

#[test]
fn replace_never_drops_a_system_schema_whatever_the_database_names() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    let full = case.backup(&source, "--full");
    let target = case.server("target");
    // Names a line-based reading would split into `mysql` and more.
    target.sql("CREATE DATABASE `mysql\nx`; CREATE DATABASE `mysql\tx`");
    let users = target.sql("SELECT COUNT(*) FROM mysql.user");
    let out = case.ok(&format!(
        "fetch \"$R\" {full} --key-file k | {RESTORE} | restore-mysql --replace --drop-other-databases {} 2>&1",
        target.root_login()
    ));
    assert!(out.contains("dropping database mysql\\nx "), "{out}");
    assert!(
        target.sql("SELECT COUNT(*) FROM mysql.user").trim().parse::<u32>().unwrap() >= users.trim().parse().unwrap()
    );
    assert_eq!(target.sql("SHOW DATABASES LIKE 'mysql%'").trim(), "mysql", "the odd databases are gone, mysql stays");
    assert_eq!(target.checksums(), source.checksums());
}

#[test]
fn a_bulk_statement_larger_than_the_default_packet_replays() {
    let case = Case::new();
    let source = case.server("source");
    source.sql(
        "CREATE DATABASE bulk; CREATE TABLE bulk.t (id INT PRIMARY KEY, pad VARCHAR(100)) ENGINE=InnoDB; \
         SET SESSION max_recursive_iterations = 300000; INSERT INTO bulk.t WITH RECURSIVE s (n) AS \
         (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 200000) SELECT n, REPEAT('a', 100) FROM s;",
    );
    let full = case.backup(&source, "--full");
    // One UPDATE of 200,000 rows: about 45 MB of row images in one statement.
    source.sql("UPDATE bulk.t SET pad = REPEAT('b', 100)");
    let inc = case.backup(&source, "--incremental --since-receipt receipts");
    let target = case.server("target");
    let limit = target.sql("SELECT @@GLOBAL.max_allowed_packet");
    assert!(limit.trim().parse::<u64>().unwrap() < 40 << 20, "the target must start with a small limit: {limit}");
    let plan = case.ok(&format!("fetch \"$R\" {full} {inc} --key-file k | {RESTORE} | restore-mysql --dry-run"));
    assert!(plan.contains("packets      up to 1024 MiB per statement"), "the plan names the limit: {plan}");
    case.ok(&format!("fetch \"$R\" {full} {inc} --key-file k | {RESTORE} | restore-mysql {}", target.root_login()));
    assert_eq!(target.checksums(), source.checksums());
    assert_eq!(target.sql("SELECT @@GLOBAL.max_allowed_packet"), limit, "the limit is set back after the replay");
}

#[test]
fn an_incremental_taken_while_a_full_runs_keeps_the_chain_restorable() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    source.large_table(16);
    case.backup(&source, "--full");
    while_writing(&source, 2, || case.backup(&source, "--incremental --since-receipt receipts"));
    // The nightly full runs long (its reader is slow); the hourly incremental
    // runs meanwhile and is stored first, so its receipt comes before the full's.
    source.sql("INSERT INTO shop.orders (total, note) VALUES (7, 'before the full')");
    let login = source.backup_login();
    case.ok(&format!(
        "(dump-mysql --full {login} | (sleep 4; cat) | {BACKUP} > full-receipt) &
         sleep 2
         mariadb {} -e \"INSERT INTO shop.orders (total, note) VALUES (8, 'during the full')\"
         dump-mysql --incremental --since-receipt receipts {login} | {BACKUP} >> receipts
         wait $!
         cat full-receipt >> receipts",
        source.root_login()
    ));
    while_writing(&source, 2, || case.backup(&source, "--incremental --since-receipt receipts"));
    source.sql("INSERT INTO shop.orders (total, note) VALUES (9, 'after')");
    case.backup(&source, "--incremental --since-receipt receipts");
    let expected = source.checksums();
    let target = case.server("target");
    case.ok(&format!(
        "fetch \"$R\" --until 9999-01-01 --key-file k | {RESTORE} | restore-mysql {}",
        target.root_login()
    ));
    assert_eq!(target.checksums(), expected);
}

/// What a forger puts in place of dump text: an account for itself, then
/// comment padding to `len` bytes.
fn forged_sql(len: usize) -> Vec<u8> {
    let mut sql = b"CREATE USER IF NOT EXISTS evil@'%' IDENTIFIED BY 'evil';\n\
GRANT ALL PRIVILEGES ON *.* TO evil@'%' WITH GRANT OPTION;\n-- "
        .to_vec();
    assert!(len > sql.len() + 1, "a chunk of {len} bytes");
    sql.resize(len - 1, b'x');
    sql.push(b'\n');
    sql
}

/// True when the server has the forger's account.
fn has_evil(server: &Server) -> bool {
    server.sql("SELECT COUNT(*) FROM mysql.user WHERE user = 'evil'").trim() != "0"
}

/// Dedup poisoning against a logical restore: the backup host's write-only
/// key ships a stream whose first dump chunk carries the ID of what the next
/// full dump will hold and a GRANT instead; the honest full deduplicates
/// against it. The restore fails with exit 4 before any SQL reaches the
/// target (fetch verifies every chunk), and restore-mysql itself loads
/// nothing it has not verified (a forged dump fed to it directly). After
/// `repo check --read-data` quarantines the chunk, the next full stores it
/// again and restores exactly.
#[test]
fn a_forged_chunk_never_reaches_the_server() {
    use backpipe::format::{Encodings, Kind};
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    case.ok("keygen w && repo key add \"$R\" --key-file k --write-only --new-key-file w 2>/dev/null");
    // The forger dumps what the next backup will hold, and ships a GRANT under its first chunk's ID.
    case.ok(&format!("dump-mysql --full {} | chunk --repo \"$R\" --key-file w > predicted.bp", source.backup_login()));
    let forged = forge(&std::fs::read(case.path().join("predicted.bp")).unwrap(), |frames| {
        let chunk = frames.iter_mut().find(|f| f.kind == Kind::Data && f.encodings.has(Encodings::CHUNKED)).unwrap();
        let len = chunk.payload.len() - 32;
        chunk.payload.truncate(32);
        chunk.payload.extend_from_slice(&forged_sql(len));
    });
    std::fs::write(case.path().join("forged.bp"), forged).unwrap();
    case.ok("squeeze < forged.bp | encrypt --repo \"$R\" --key-file w | ship \"$R\" --key-file w > /dev/null");
    let honest = case.backup(&source, "--full");
    let receipt: serde_json::Value =
        serde_json::from_str(case.ok("tail -n 1 receipts").trim()).expect("the honest full's receipt");
    assert!(receipt["deduplicated_bytes"].as_u64().unwrap() > 0, "the honest full refers to the forger's chunks");

    // fetch refuses the chunk: nothing reaches restore-mysql, nothing the server.
    let target = case.server("target");
    let out = sh(
        case.path(),
        &case.script(&format!(
            "fetch \"$R\" {honest} --key-file k | {RESTORE} | restore-mysql {} || exit ${{PIPESTATUS[0]}}",
            target.root_login()
        )),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!has_evil(&target), "the forged GRANT reached the server:\n{err}");
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("fetch: chunk ") && err.contains("does not match its ID"), "{err}");
    assert_eq!(target.sql("SHOW DATABASES LIKE 'shop'"), "");

    // restore-mysql verifies an entry before loading it: a dump whose text is
    // not what its digest says never reaches the server.
    case.ok(&format!("dump-mysql --full {} > plain.bp", source.backup_login()));
    let tampered = forge(&std::fs::read(case.path().join("plain.bp")).unwrap(), |frames| {
        let data = frames.iter_mut().find(|f| f.kind == Kind::Data).unwrap();
        let len = data.payload.len();
        data.payload = forged_sql(len);
    });
    std::fs::write(case.path().join("tampered.bp"), tampered).unwrap();
    let out = sh(case.path(), &case.script(&format!("restore-mysql {} < tampered.bp", target.root_login())));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!has_evil(&target), "restore-mysql loaded SQL before verifying it:\n{err}");
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("does not match its digest"), "{err}");
    assert_eq!(target.sql("SHOW DATABASES LIKE 'shop'"), "");

    // Quarantined, the chunk is stored again by the next full, which restores exactly.
    let err = case.fails("repo check --read-data \"$R\" --key-file k", 4);
    assert!(err.contains("quarantined"), "{err}");
    let sums = source.checksums();
    let again = case.backup(&source, "--full");
    case.ok(&format!("fetch \"$R\" {again} --key-file k | {RESTORE} | restore-mysql {}", target.root_login()));
    assert_eq!(target.checksums(), sums);
    assert_eq!(target.objects(), source.objects());
    assert!(!has_evil(&target));
}

#[test]
fn a_binary_log_in_two_incrementals_is_replayed_once() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    case.backup(&source, "--full");
    case.ok("cp receipts after-full");
    // Two incrementals that each continue from the full (as overlapping runs
    // did): the second holds the binary logs the first holds, and more.
    let login = source.backup_login();
    for note in ["first", "second"] {
        source.sql(&format!("INSERT INTO shop.orders (total, note) VALUES (1, '{note}')"));
        case.ok(&format!("dump-mysql --incremental --since-receipt after-full {login} | {BACKUP} >> receipts"));
    }
    let expected = source.checksums();
    let ids: Vec<String> = case
        .ok("cat receipts")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["snapshot"].as_str().unwrap().to_string())
        .collect();
    // Both incrementals, as a user names them: the binary logs they share are replayed once.
    let chain = format!("fetch \"$R\" {} --key-file k | {RESTORE}", ids.join(" "));
    let plan = case.ok(&format!("{chain} | restore-mysql --dry-run"));
    assert_eq!(plan.matches("incremental ").count(), 2, "{plan}");
    let target = case.server("target");
    case.ok(&format!("{chain} | restore-mysql {}", target.root_login()));
    assert_eq!(target.checksums(), expected);
    // Followed by their links, the chain needs only the second, which continues the full.
    let chain =
        case.ok("fetch \"$R\" --until 9999-01-01 --key-file k | encrypt -d --repo \"$R\" --key-file k | inspect");
    assert_eq!(chain.matches("incremental").count(), 1, "{chain}");
    assert_eq!(target.sql("SELECT COUNT(*) FROM shop.orders WHERE note IN ('first', 'second')").trim(), "2");
}

#[test]
fn replace_proves_the_stopping_point_first_and_drops_only_what_the_backup_recreates() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    let full = case.backup(&source, "--full");
    source.sql("INSERT INTO shop.orders (total, note) VALUES (5, 'after the full')");
    let inc = case.backup(&source, "--incremental --since-receipt receipts");
    let target = case.server("target");
    target.sql(
        "CREATE DATABASE keepme; CREATE TABLE keepme.t (v INT); INSERT INTO keepme.t VALUES (42); \
         CREATE DATABASE shop; CREATE TABLE shop.stale (v INT)",
    );
    let before = target.checksums();
    let chain = format!("fetch \"$R\" {full} {inc} --key-file k | {RESTORE}");
    let login = target.root_login();
    // Stopping points the chain cannot reach: refused, the target untouched.
    for (until, code) in [
        ("--until-gtid 0-1-99999999", 2),
        ("--until-position mysql-bin.000999:4", 2),
        ("--until 2999-01-01T00:00:00Z", 3),
    ] {
        let err = case.fails(&format!("{chain} | restore-mysql --replace {until} {login}"), code);
        assert_eq!(err.trim_end().lines().count(), 1, "{until}: {err}");
        assert_eq!(target.checksums(), before, "{until} changed the target");
    }
    // --replace drops the databases the backup holds, and keeps the others.
    let out = case.ok(&format!("{chain} | restore-mysql --replace {login} 2>&1"));
    assert!(out.contains("keeping database keepme") && out.contains("dropping database shop "), "{out}");
    assert_eq!(target.sql("SELECT v FROM keepme.t").trim(), "42");
    let mut restored = target.checksums();
    restored.retain(|table, _| !table.starts_with("keepme."));
    assert_eq!(restored, source.checksums());

    // A replay that fails part-way (the kept database is created by the
    // source later): the last line says what the target holds and how to finish.
    source.sql("CREATE DATABASE keepme");
    let inc2 = case.backup(&source, "--incremental --since-receipt receipts");
    let chain = format!("fetch \"$R\" {full} {inc} {inc2} --key-file k | {RESTORE}");
    let err = case.fails(&format!("{chain} | restore-mysql --replace {login}"), 5);
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.contains("database exists")
            && last.contains("holds the full backup of")
            && last.contains("part of the binary logs after it: restore again with --replace"),
        "{err}"
    );
    case.ok(&format!("{chain} | restore-mysql --replace --drop-other-databases {login}"));
    assert_eq!(target.checksums(), source.checksums());
    assert_eq!(target.sql("SHOW DATABASES LIKE 'keepme'").trim(), "keepme");
}

#[test]
fn a_restore_that_reaches_less_than_asked_fails() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    let full = case.backup(&source, "--full");
    source.sql("INSERT INTO shop.orders (total, note) VALUES (1, 'one')");
    let inc1 = case.backup(&source, "--incremental --since-receipt receipts");
    let mid = instant(&source);
    source.sql("INSERT INTO shop.orders (total, note) VALUES (2, 'two')");
    let inc2 = case.backup(&source, "--incremental --since-receipt receipts");
    let target = case.server("target");
    let login = target.root_login();
    let restore = |chain: &str, until: &str| {
        format!("fetch \"$R\" {chain} --key-file k | {RESTORE} | restore-mysql {until} {login}")
    };
    let until = format!("--until {}", mid.time);
    // The last incremental left out: the chain ends before the time asked for.
    let err = case.fails(&restore(&format!("{full} {inc1}"), &until), 3);
    assert!(err.contains("the chain reaches") && err.contains("binary logs after"), "{err}");
    // A full alone reaches only its own consistent point.
    let err = case.fails(&restore(&full, &until), 3);
    assert!(err.contains("the chain reaches"), "{err}");
    // A middle one left out: the chain does not continue.
    let err = case.fails(&restore(&format!("{full} {inc2}"), ""), 2);
    assert!(err.contains("does not continue the chain"), "{err}");
    assert_eq!(target.sql("SHOW DATABASES LIKE 'shop'"), "", "nothing reached the target");
    // The whole chain reaches it.
    case.ok(&restore(&format!("{full} {inc1} {inc2}"), &until));
    assert_eq!(target.checksums(), mid.checksums);
}

#[test]
fn a_signalled_physical_restore_stops_its_server_and_leaves_nothing() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    source.large_table(8);
    let full = case.backup(&source, "--full --physical");
    while_writing(&source, 2, || ());
    let inc = case.backup(&source, "--incremental --since-receipt receipts");
    let expected = source.checksums();
    case.ok(&format!("fetch \"$R\" {full} {inc} --key-file k | {RESTORE} > chain.bp"));
    std::fs::create_dir_all(case.path().join("tmp")).unwrap();
    std::fs::create_dir_all(case.path().join("restored")).unwrap();
    // A pattern for pgrep that matches this case's working directories but
    // not the text of the script that searches for them.
    let ours = format!("{}/restored/[.]backpipe-restore-", case.path().display());
    // Signalled while reading its input, while mariadb-backup prepares, and
    // while the temporary server replays: each time it stops what it
    // started, removes what it made, and ends by the signal.
    for (signal, status, input, reached) in [
        ("TERM", 143, "(head -c 300000 chain.bp; sleep 5)", "sleep 1".to_string()),
        (
            "INT",
            130,
            "cat chain.bp",
            format!("until pgrep -f -- '[-]-prepare --target-dir={ours}'; do sleep 0.02; done"),
        ),
        ("HUP", 129, "cat chain.bp", format!("until pgrep -f -- '[-]-datadir={ours}'; do sleep 0.05; done")),
    ] {
        let out = case.ok(&format!(
            "set -m; export TMPDIR=\"$PWD/tmp\"
             {input} | restore-mysql --datadir restored/data > restore.log 2>&1 &
             pid=$!
             {reached} > /dev/null
             kill -{signal} $pid
             status=0; wait $pid || status=$?; echo $status
             pgrep -f -- '{ours}' || true"
        ));
        let log = std::fs::read_to_string(case.path().join("restore.log")).unwrap();
        assert_eq!(out.trim(), status.to_string(), "SIG{signal}: no process may be left: {out}\n{log}");
        for dir in ["tmp", "restored"] {
            let left: Vec<_> =
                std::fs::read_dir(case.path().join(dir)).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(left.is_empty(), "SIG{signal} left {left:?} in {dir}\n{log}");
        }
    }
    // A run killed outright leaves its working directory; the next removes it.
    case.ok("export TMPDIR=\"$PWD/tmp\"
         (head -c 300000 chain.bp; sleep 3) | restore-mysql --datadir restored/data 2>/dev/null & pid=$!
         sleep 1; kill -KILL $pid; wait $pid || true");
    assert!(std::fs::read_dir(case.path().join("restored")).unwrap().count() == 1, "SIGKILL leaves its directory");
    let dir = case.server("restarted").dir.clone(); // stopped again when dropped
    let out = case.ok(&format!(
        "export TMPDIR=\"$PWD/tmp\"
         mv restored/.backpipe-restore-* {dir}/
         restore-mysql --datadir {dir}/data --replace --server-defaults {dir}/my.cnf < chain.bp 2>&1",
        dir = dir.display()
    ));
    assert!(out.contains("left by an interrupted run"), "{out}");
    let restarted = Server::start(&dir);
    assert_eq!(restarted.checksums(), expected);
    let left: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!left.iter().any(|name| name.starts_with(".backpipe-restore-")), "{left:?}");
}

#[test]
fn a_physical_restore_into_a_mount_point_moves_the_data_in() {
    let case = Case::new();
    let source = case.server("source");
    source.load_sample();
    let full = case.backup(&source, "--full --physical");
    source.sql("INSERT INTO shop.orders (total, note) VALUES (3, 'after the full')");
    let inc = case.backup(&source, "--incremental --since-receipt receipts");
    let expected = source.checksums();
    let dir = case.server("target").dir.clone(); // stopped again when dropped
                                                 // The data directory is a volume of its own (a tmpfs over the old one).
    let mount = Mount::tmpfs(&dir.join("data"), "512m");
    let chain = format!("fetch \"$R\" {full} {inc} --key-file k | {RESTORE}");
    let restore = format!("restore-mysql --datadir {0}/data --server-defaults {0}/my.cnf", dir.display());
    case.ok(&format!("{chain} | {restore}"));
    let restarted = Server::start(&dir);
    assert_eq!(restarted.checksums(), expected);
    drop(restarted);
    // Into the same mount again: its contents are moved aside inside it.
    let err = case.fails(&format!("{chain} | {restore}"), 5);
    assert!(err.contains("is not empty"), "{err}");
    let out = case.ok(&format!("{chain} | {restore} --replace 2>&1"));
    assert!(out.contains("moved the old contents of the mount point to"), "{out}");
    let restarted = Server::start(&dir);
    assert_eq!(restarted.checksums(), expected);
    drop(restarted);
    drop(mount);
}

#[test]
fn verify_checks_binary_logs_without_backing_them_up() {
    let case = Case::new();
    let fixtures = fixtures().join("binlog");
    let all = "mysql-5.7.21-crc32.000001 mysql-5.7.20-nochecksum.000001 percona-5.6.16-crc32.003320 \
               mariadb-11.8/mariadb-repl-bin.000006 mariadb-11.8/mariadb-repl-bin.000007";
    let out = sh_ok(&fixtures, &format!("dump-mysql verify {all}"));
    let report = String::from_utf8(out).unwrap();
    assert_eq!(report.lines().filter(|l| l.contains(": sound: ") && l.contains(" closed")).count(), 5, "{report}");
    assert!(report.contains("mariadb-repl-bin.000006: sound: 401 events from server 11.8.5-MariaDB"), "{report}");

    // What a private MariaDB writes, the file it is writing included.
    let source = case.server("source");
    source.load_sample();
    source.sql("FLUSH BINARY LOGS; INSERT INTO shop.orders (total, note) VALUES (1, 'open file')");
    let logs = format!("{}/mysql-bin.0*", source.get("BINLOG_DIR"));
    let report = case.ok(&format!("dump-mysql verify --json {logs}"));
    let found: Vec<serde_json::Value> = report.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(found.len() >= 2 && found.iter().all(|f| f["sound"] == true && f["checksums"] == true), "{report}");
    assert_eq!(found.last().unwrap()["closed"], false, "the server still writes the last one");

    // A flipped byte in a checksummed file: exit 4, the line names the byte and the event.
    let copy = case.path().join("mariadb-repl-bin.000007");
    let mut bytes = std::fs::read(fixtures.join("mariadb-11.8/mariadb-repl-bin.000007")).unwrap();
    bytes[30_000] ^= 0x01;
    std::fs::write(&copy, &bytes).unwrap();
    let out = sh(
        case.path(),
        &format!(
            "dump-mysql verify {} mariadb-repl-bin.000007",
            fixtures.join(all.split(' ').next().unwrap()).display()
        ),
    );
    let (report, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(4), "{report}{err}");
    let line = report.lines().find(|l| l.starts_with("mariadb-repl-bin.000007: ")).unwrap();
    assert!(line.contains("is damaged at byte") && line.contains("event"), "{line}");
    assert!(err.contains("1 of 2 binary logs are damaged"), "{err}");
}

#[test]
fn two_servers_of_one_host_keep_their_own_chains() {
    let case = Case::new();
    let (a, b) = (case.server("a"), case.server("b"));
    a.load_sample();
    b.load_sample();
    // Interleaved: each server's full, then each one's incrementals.
    let full_a = case.backup(&a, "--full");
    case.backup(&b, "--full");
    a.sql("INSERT INTO shop.orders (total, note) VALUES (1, 'a1')");
    case.backup(&a, "--incremental --since-receipt receipts");
    b.sql("INSERT INTO shop.orders (total, note) VALUES (2, 'b1')");
    case.backup(&b, "--incremental --since-receipt receipts");
    a.sql("INSERT INTO shop.orders (total, note) VALUES (3, 'a2')");
    let inc_a2 = case.backup(&a, "--incremental --since-receipt receipts");
    a.sql("INSERT INTO shop.orders (total, note) VALUES (4, 'a3')");
    let inc_a3 = case.backup(&a, "--incremental --since-receipt receipts");
    let expected = [a.checksums(), b.checksums()];
    let receipts: Vec<serde_json::Value> =
        case.ok("cat receipts").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let source_of = |id: &str| receipts.iter().find(|r| r["snapshot"] == id).unwrap()["source"].as_str().unwrap();
    let sources = [source_of(&full_a).to_string(), receipts[1]["source"].as_str().unwrap().to_string()];
    assert_ne!(sources[0], sources[1]);
    assert_eq!(receipts[2]["parent"], receipts[0]["stream_id"], "the first incremental continues its full");
    assert_eq!(receipts[4]["parent"], receipts[2]["stream_id"]);

    // Nothing chooses between the two servers by itself.
    let err = case.fails("fetch \"$R\" --until 9999-01-01 --key-file k > /dev/null", 2);
    assert!(err.contains("sources") && err.contains(&sources[0]), "{err}");
    // Retention is per server: each keeps its newest backup and what that needs.
    case.ok("repo forget \"$R\" --keep-last 1 --key-file k 2>/dev/null");
    assert_eq!(case.snapshot_count(), 6, "every backup is the newest of its server or needed by it");
    // Each server's chain restores that server.
    for (i, source) in sources.iter().enumerate() {
        let target = case.server(&format!("target{i}"));
        case.ok(&format!(
            "fetch \"$R\" --until 9999-01-01 --source '{source}' --key-file k | {RESTORE} | restore-mysql {}",
            target.root_login()
        ));
        assert_eq!(target.checksums(), expected[i], "server {i}");
    }

    // A backup whose parent is gone: `repo check` names it; its chain is refused, nothing written.
    case.ok(&format!("repo forget \"$R\" {inc_a2} --key-file k 2>/dev/null"));
    let err = case.fails("repo check \"$R\" --key-file k", 4);
    assert!(err.contains(&format!("snapshot {inc_a3} continues stream")), "{err}");
    let err = case.fails(&format!("fetch \"$R\" --chain {inc_a3} --key-file k > chain.bp"), 4);
    assert!(err.contains("continues stream") && err.trim_end().lines().count() == 1, "{err}");
    assert_eq!(std::fs::metadata(case.path().join("chain.bp")).unwrap().len(), 0, "nothing was written");
}
