//! Replaying binary logs into a server with `mariadb-binlog | mariadb`, from
//! a full backup's coordinates up to a stopping point.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::mysql::client::{Client, Running};

/// How plans and messages print a time.
pub const UTC_FORMAT: &str = "%Y-%m-%d %H:%M:%S UTC";

/// Where a restore stops replaying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Until {
    /// Everything the backups hold.
    Latest,
    /// Before the first event stamped at or after this time (binary log
    /// timestamps are whole seconds).
    Time(DateTime<Utc>),
    /// Up to this position in this binary log file.
    Position {
        /// The file.
        file: String,
        /// The position in it.
        pos: u64,
    },
    /// Up to and including this GTID position.
    Gtid(String),
}

impl Until {
    /// Parses `FILE:POS` for a position.
    pub fn position(text: &str) -> Result<Until> {
        text.rsplit_once(':')
            .and_then(|(file, pos)| Some(Until::Position { file: file.to_string(), pos: pos.parse().ok()? }))
            .ok_or_else(|| Error::usage(format!("'{text}' is not a binary log position (use mysql-bin.000042:1234)")))
    }

    /// Parses a GTID list for `Until::Gtid`.
    pub fn gtid(text: &str) -> Result<Until> {
        crate::mysql::positions::parse_gtids(text)?;
        Ok(Until::Gtid(text.to_string()))
    }

    /// How the plan describes this stopping point.
    pub fn describe(&self) -> String {
        match self {
            Until::Latest => "at the end of the last binary log".to_string(),
            Until::Time(t) => format!("before the first event at or after {}", t.format(UTC_FORMAT)),
            Until::Position { file, pos } => format!("at {file}:{pos}"),
            Until::Gtid(gtid) => format!("after GTID {gtid}"),
        }
    }
}

/// Runs `mariadb-binlog` over `files` (from `start` in the first) up to
/// `until`, piping its SQL into `mariadb` on `client`, after `prelude`.
pub fn replay(client: &Client, prelude: &str, files: &[PathBuf], start: u64, until: &Until) -> Result<()> {
    let mut command = Command::new("mariadb-binlog");
    // Times in the stop option are read in the local time zone; make it UTC.
    command.env("TZ", "UTC").arg(format!("--start-position={start}"));
    match until {
        Until::Latest => {}
        Until::Time(t) => {
            command.arg(format!("--stop-datetime={}", t.format("%Y-%m-%d %H:%M:%S")));
        }
        Until::Position { pos, .. } => {
            command.arg(format!("--stop-position={pos}"));
        }
        Until::Gtid(gtid) => {
            command.arg(format!("--stop-position={gtid}"));
        }
    }
    command.args(files).stdin(Stdio::null()).stdout(Stdio::piped());
    let mut decoder = Running::spawn("mariadb-binlog", command)?;
    let mut loader = client.spawn("mariadb", &["--binary-mode"], |c| {
        c.stdin(Stdio::piped());
    })?;
    let mut sql = decoder.child.stdout.take().expect("stdout is piped");
    let mut input = loader.child.stdin.take().expect("stdin is piped");
    let copied = input.write_all(prelude.as_bytes()).and_then(|()| std::io::copy(&mut sql, &mut input));
    drop(input);
    drop(sql);
    // The loader's error explains a broken pipe; the decoder's explains a short read.
    loader.finish()?;
    decoder.finish()?;
    copied.map_err(|e| Error::io("cannot pass the binary logs to mariadb", e))?;
    Ok(())
}
