//! Binary log checking against real server-written files in
//! ../shared/fixtures/binlog (see its README for what is known about them).

use std::path::PathBuf;

use backpipe_mysql::{check_binlog as check, CheckedBinlog as Checked};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../../shared/fixtures/binlog").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (../shared must be beside the checkout)", path.display()))
}

fn checked(name: &str) -> Checked {
    let bytes = fixture(name);
    let found = check(&bytes[..], name).unwrap();
    assert_eq!(found.end, bytes.len() as u64, "{name}: the checked events cover the whole file");
    found
}

#[test]
fn real_binary_logs_check_clean() {
    let crc = checked("mysql-5.7.21-crc32.000001");
    assert_eq!((crc.server_version.as_str(), crc.checksums, crc.events, crc.last_event), ("5.7.21-log", true, 303, 4));
    assert!(crc.is_closed());
    let plain = checked("mysql-5.7.20-nochecksum.000001");
    assert_eq!(
        (plain.server_version.as_str(), plain.checksums, plain.events, plain.last_event),
        ("5.7.20-log", false, 191, 3)
    );
    assert!(plain.is_closed());
    let percona = checked("percona-5.6.16-crc32.003320");
    assert_eq!((percona.checksums, percona.events, percona.last_event), (true, 6, 4));
    assert!(percona.server_version.starts_with("5.6.16"), "{}", percona.server_version);
}

#[test]
fn every_flipped_byte_of_a_checksummed_log_is_caught() {
    let bytes = fixture("percona-5.6.16-crc32.003320");
    for i in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0x20;
        let err = check(&damaged[..], "x").expect_err(&format!("byte {i} flipped was not caught"));
        assert_eq!(err.kind().exit_code(), 4, "byte {i}: {err}");
    }
}

#[test]
fn truncation_and_broken_chains_are_caught_without_checksums() {
    let bytes = fixture("mysql-5.7.20-nochecksum.000001");
    for cut in [3, 4, 10, 22, 200, bytes.len() - 1] {
        let err = check(&bytes[..cut], "x").unwrap_err();
        assert_eq!(err.kind().exit_code(), 4, "cut at {cut}: {err}");
    }
    // A changed event length breaks the position chain.
    let mut longer = bytes.clone();
    let second = 4 + u32::from_le_bytes(bytes[4 + 9..4 + 13].try_into().unwrap()) as usize;
    longer[second + 9] ^= 1;
    let err = check(&longer[..], "x").unwrap_err();
    assert!(err.to_string().contains("next starts at") || err.to_string().contains("length"), "{err}");
}

/// A setting scripts/test exports for the private MariaDB it starts.
fn server_setting(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts a private MariaDB")
    })
}

#[test]
fn binary_logs_a_live_mariadb_writes_check_clean_and_damage_is_caught() {
    let defaults = server_setting("BACKPIPE_TEST_MYSQL_DEFAULTS");
    let dir = PathBuf::from(server_setting("BACKPIPE_TEST_MYSQL_BINLOG_DIR"));
    // Row events of several kinds, annotated statements and GTIDs, then a rotation that closes the file.
    let sql = "CREATE DATABASE IF NOT EXISTS binlog_test;
        USE binlog_test;
        CREATE TABLE IF NOT EXISTS binlog_test.t (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT);
        INSERT INTO binlog_test.t (v) SELECT REPEAT('row', 300) FROM seq_1_to_500;
        UPDATE binlog_test.t SET v = CONCAT(v, 'x') WHERE id % 3 = 0;
        DELETE FROM binlog_test.t WHERE id % 7 = 0;
        FLUSH BINARY LOGS;";
    let status = std::process::Command::new("mariadb")
        .arg(format!("--defaults-file={defaults}"))
        .args(["-e", sql])
        .status()
        .expect("the mariadb client runs");
    assert!(status.success());
    let mut closed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "index") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let found = check(&bytes[..], &path.display().to_string()).unwrap();
        assert!(found.server_version.contains("MariaDB"), "{found:?}");
        assert!(found.checksums, "the server writes CRC-32 checksums: {found:?}");
        if !found.is_closed() {
            continue; // the file the server is writing now
        }
        closed += 1;
        assert_eq!(found.end, bytes.len() as u64);
        // Flipped bytes anywhere in the file are caught.
        for i in (0..bytes.len()).step_by(bytes.len() / 97 + 1) {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x04;
            assert!(check(&damaged[..], "x").is_err(), "{}: byte {i} flipped was not caught", path.display());
        }
    }
    assert!(closed >= 1, "FLUSH BINARY LOGS closed at least one binary log");
}

#[test]
fn mariadb_11_8_logs_whose_cached_events_carry_no_position_check_clean() {
    // The fixtures README: 401 and 383 events, 264 and 252 of them with end_log_pos 0.
    for (name, events) in [("mariadb-11.8/mariadb-repl-bin.000006", 401), ("mariadb-11.8/mariadb-repl-bin.000007", 383)]
    {
        let found = checked(name);
        assert_eq!((found.checksums, found.events, found.last_event), (true, events, 4), "{name}");
        assert!(found.server_version.starts_with("11.8.5-MariaDB"), "{}", found.server_version);
        assert!(found.is_closed());
    }
    // Every flipped byte is still caught, positioned events or not.
    let bytes = fixture("mariadb-11.8/mariadb-repl-bin.000007");
    for i in (0..bytes.len()).step_by(7) {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0x20;
        let err = check(&damaged[..], "x").expect_err(&format!("byte {i} flipped was not caught"));
        assert_eq!(err.kind().exit_code(), 4, "byte {i}: {err}");
    }
}

#[test]
fn an_older_server_may_not_leave_positions_out() {
    // A MySQL 5.7 log (without checksums) whose second event's next position is zeroed is damaged.
    let mut bytes = fixture("mysql-5.7.20-nochecksum.000001");
    let second = 4 + u32::from_le_bytes(bytes[4 + 9..4 + 13].try_into().unwrap()) as usize;
    bytes[second + 13..second + 17].copy_from_slice(&[0; 4]);
    let err = check(&bytes[..], "x").unwrap_err();
    assert!(err.to_string().contains("next starts at 0"), "{err}");
}
