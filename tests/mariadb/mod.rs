//! Private MariaDB servers for the MySQL agent's integration tests: each
//! test starts its own with scripts/servers/mariadb (so purges and binary log
//! rotations never cross tests), writes with sysbench, and backs up and
//! restores through full pipelines into a local repository.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;

pub const BACKUP: &str =
    r#"chunk --repo "$R" --key-file k | squeeze | encrypt --repo "$R" --key-file k | ship "$R" --key-file k"#;
pub const RESTORE: &str = r#"encrypt -d --repo "$R" --key-file k | squeeze -d | chunk -d"#;

/// A private MariaDB server, stopped when dropped.
pub struct Server {
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
}

impl Server {
    /// Starts a new server in `dir`.
    pub fn start(dir: &Path) -> Server {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/servers/mariadb");
        let out = std::process::Command::new(&script).arg("start").arg(dir).output().expect("the server script runs");
        assert!(out.status.success(), "cannot start MariaDB: {}", String::from_utf8_lossy(&out.stderr));
        Server { dir: dir.to_path_buf(), env: Self::read_env(dir) }
    }

    pub fn read_env(dir: &Path) -> BTreeMap<String, String> {
        std::fs::read_to_string(dir.join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim_start_matches("BACKPIPE_TEST_MYSQL_").to_string(), v.to_string()))
            .collect()
    }

    pub fn get(&self, key: &str) -> &str {
        &self.env[key]
    }

    /// Options that log in as the backup user (password from a file).
    pub fn backup_login(&self) -> String {
        format!("--socket={} --user=backpipe --password-file={}", self.get("SOCKET"), self.get("PASSWORD_FILE"))
    }

    /// Options that log in as the server's superuser (unix_socket, as the OS user).
    pub fn root_login(&self) -> String {
        format!("--socket={} --user=$(id -un)", self.get("SOCKET"))
    }

    /// Runs SQL as the superuser; returns the rows, tab-separated.
    pub fn sql(&self, query: &str) -> String {
        let out = sh_ok(&self.dir, &format!("mariadb {} -N -B -e {}", self.root_login(), shell_quote(query)));
        String::from_utf8(out).unwrap()
    }

    /// CHECKSUM TABLE of every table outside the system schemas.
    pub fn checksums(&self) -> BTreeMap<String, String> {
        let tables = self.sql(
            "SELECT CONCAT('`', table_schema, '`.`', table_name, '`') FROM information_schema.tables \
             WHERE table_type = 'BASE TABLE' AND table_schema NOT IN \
             ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1",
        );
        let list: Vec<&str> = tables.lines().collect();
        assert!(!list.is_empty(), "no tables to compare");
        self.sql(&format!("CHECKSUM TABLE {}", list.join(", ")))
            .lines()
            .map(|l| {
                let (table, sum) = l.split_once('\t').unwrap();
                (table.to_string(), sum.to_string())
            })
            .collect()
    }

    /// The binary log files the server holds.
    pub fn binlogs(&self) -> Vec<String> {
        self.sql("SHOW BINARY LOGS").lines().map(|l| l.split('\t').next().unwrap().to_string()).collect()
    }

    /// Starts sysbench writing for `seconds` in the background.
    pub fn sysbench(&self, seconds: u32) -> Child {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "exec sysbench oltp_read_write {} --time={seconds} --threads=2 run > /dev/null",
                self.sysbench_options()
            ))
            .spawn()
            .unwrap()
    }

    /// sysbench's options; the login in a config file, so no password is an argument.
    pub fn sysbench_options(&self) -> String {
        let config = self.dir.join("sysbench.conf");
        let password = std::fs::read_to_string(self.get("ADMIN_PASSWORD_FILE")).unwrap();
        let login = format!(
            "db-driver=mysql\nmysql-socket={}\nmysql-user=backpipe_admin\nmysql-password={}\nmysql-db=sbtest\n",
            self.get("SOCKET"),
            password.trim()
        );
        std::fs::write(&config, login).unwrap();
        format!("--config-file={} --tables=3 --table-size=3000", config.display())
    }

    /// Sample data: sysbench's tables, and a schema with a view, routine,
    /// trigger, event and an account with grants.
    pub fn load_sample(&self) {
        self.sql("CREATE DATABASE sbtest");
        sh_ok(&self.dir, &format!("sysbench oltp_read_write {} prepare > /dev/null", self.sysbench_options()));
        self.sql(
            "CREATE DATABASE shop; \
             CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, total DECIMAL(10,2), note TEXT); \
             CREATE TABLE shop.audit (id INT AUTO_INCREMENT PRIMARY KEY, order_id INT); \
             CREATE TRIGGER shop.orders_audit AFTER INSERT ON shop.orders FOR EACH ROW INSERT INTO shop.audit (order_id) VALUES (NEW.id); \
             CREATE VIEW shop.big_orders AS SELECT id, total FROM shop.orders WHERE total > 100; \
             CREATE FUNCTION shop.with_tax(x DECIMAL(10,2)) RETURNS DECIMAL(10,2) DETERMINISTIC RETURN x * 1.2; \
             CREATE EVENT shop.nightly ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM shop.audit WHERE id < 0; \
             CREATE USER clerk@'%' IDENTIFIED BY 'clerk-pw'; GRANT SELECT, INSERT ON shop.* TO clerk@'%'; \
             INSERT INTO shop.orders (total, note) VALUES (50, 'small'), (150, 'big'), (99.99, 'caf\u{e9}');",
        );
    }

    /// A database `aaa` (dumped before the others) with a table of about
    /// `mib` MiB, so a dump whose reader is slow stays busy for a while.
    pub fn large_table(&self, mib: u32) {
        self.sql(&format!(
            "CREATE DATABASE aaa; CREATE TABLE aaa.big (id INT PRIMARY KEY, pad TEXT) ENGINE=InnoDB; \
             SET SESSION max_recursive_iterations = 100000; INSERT INTO aaa.big WITH RECURSIVE s (n) AS \
             (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {}) SELECT n, REPEAT('x', 1000) FROM s;",
            mib * 1000
        ));
    }

    /// The definitions that must survive a restore.
    pub fn objects(&self) -> String {
        self.sql(
            "SELECT shop.with_tax(10); SHOW CREATE VIEW shop.big_orders; \
             SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = 'shop'; \
             SELECT event_name, status FROM information_schema.events WHERE event_schema = 'shop'; \
             SHOW GRANTS FOR clerk@'%'",
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/servers/mariadb");
        let _ = std::process::Command::new(script).arg("stop").arg(&self.dir).output();
    }
}

/// `text` quoted for bash.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A test's scratch directory with a key `k` and a repository `$R`.
pub struct Case {
    pub dir: tempfile::TempDir,
}

impl Case {
    pub fn new() -> Case {
        let case = Case { dir: scratch() };
        case.ok("keygen k && repo init \"$R\" --key-file k 2>/dev/null");
        case
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn script(&self, script: &str) -> String {
        format!("export R='{}'\n{script}", self.path().join("R").display())
    }

    pub fn ok(&self, script: &str) -> String {
        String::from_utf8(sh_ok(self.path(), &self.script(script))).unwrap()
    }

    pub fn fails(&self, script: &str, code: i32) -> String {
        sh_fails(self.path(), &self.script(script), code)
    }

    /// A new private server in this case's directory.
    pub fn server(&self, name: &str) -> Server {
        Server::start(&self.path().join(name))
    }

    /// Backs up `server` (`mode` as dump-mysql takes it) into the repository;
    /// returns the snapshot ID and appends the receipt to `receipts`.
    pub fn backup(&self, server: &Server, mode: &str) -> String {
        let out = self.ok(&format!("dump-mysql {mode} {} | {BACKUP} | tee -a receipts", server.backup_login()));
        let receipt: serde_json::Value = serde_json::from_str(&out).expect("one receipt");
        receipt["snapshot"].as_str().unwrap().to_string()
    }

    /// Runs `dump` into the backup pipeline, which must fail: returns
    /// stderr, checking that `dump` itself exited with `code`.
    pub fn backup_fails(&self, dump: &str, code: i32) -> String {
        self.fails(&format!("{dump} | {BACKUP} || exit ${{PIPESTATUS[0]}}"), code)
    }

    pub fn snapshot_count(&self) -> usize {
        self.ok("repo snapshots \"$R\" --key-file k").lines().count()
    }
}

/// A recorded instant: the time, GTID position, binary log position and
/// checksums while no writes run.
pub struct Instant {
    pub time: String,
    pub gtid: String,
    pub position: String,
    pub checksums: BTreeMap<String, String>,
}

/// Waits for the next whole second (plus a margin) so every event before has
/// an earlier timestamp and every event after a timestamp no earlier than
/// it, then records the instant.
pub fn instant(server: &Server) -> Instant {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let next = now.as_secs() + 1;
    std::thread::sleep(Duration::from_secs(next) + Duration::from_millis(200) - now);
    let status = server.sql("SHOW MASTER STATUS");
    let fields: Vec<&str> = status.split('\t').collect();
    Instant {
        time: chrono::DateTime::from_timestamp(next as i64, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        gtid: server.sql("SELECT @@gtid_binlog_pos").trim().to_string(),
        position: format!("{}:{}", fields[0], fields[1].trim()),
        checksums: server.checksums(),
    }
}

/// Runs sysbench for `seconds` while `during` runs, then waits for it.
pub fn while_writing<T>(server: &Server, seconds: u32, during: impl FnOnce() -> T) -> T {
    let mut writer = server.sysbench(seconds);
    std::thread::sleep(Duration::from_millis(700));
    let result = during();
    assert!(writer.wait().unwrap().success(), "sysbench failed");
    result
}
