//! Replaying binary logs into a server with `mariadb-binlog | mariadb`, from
//! a full backup's coordinates up to a stopping point.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use chrono::{DateTime, Utc};

use crate::client::{run_tool, Client};
use crate::error::{Error, Result};

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
        crate::positions::parse_gtids(text)?;
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

/// The largest packet MariaDB takes (1 GiB). `mariadb-binlog` prints all
/// the row events of one statement as one `BINLOG` statement, so an
/// ordinary bulk UPDATE can make a statement far larger than the 16 MiB
/// default; the replay's connection gets this limit on both ends.
pub const MAX_PACKET: u64 = 1 << 30;

/// Raises the server's `max_allowed_packet` to [`MAX_PACKET`] for the
/// connections opened from now on (it cannot be set for one session), and
/// returns the value to set back afterwards, if it was lower.
fn raise_packet_limit(client: &Client) -> Result<Option<u64>> {
    let current: u64 = client
        .value("SELECT @@GLOBAL.max_allowed_packet")?
        .parse()
        .map_err(|_| Error::engine("the server's max_allowed_packet is not a number"))?;
    if current >= MAX_PACKET {
        return Ok(None);
    }
    client.query(&format!("SET GLOBAL max_allowed_packet = {MAX_PACKET}")).map_err(|e| {
        e.context(format!(
            "cannot raise max_allowed_packet from {current} for the replay (needs the SUPER or \
             SYSTEM VARIABLES ADMIN privilege)"
        ))
    })?;
    Ok(Some(current))
}

/// Runs `mariadb-binlog` over `files` (from `start` in the first) up to
/// `until`, piping its SQL into `mariadb` on `client`, after `prelude`. The
/// server's `max_allowed_packet` is raised to [`MAX_PACKET`] while it runs.
pub fn replay(client: &Client, prelude: &str, files: &[PathBuf], start: u64, until: &Until) -> Result<()> {
    let lowered = raise_packet_limit(client)?;
    let replayed = run_replay(client, prelude, files, start, until);
    let restored = match lowered {
        Some(value) => client.query(&format!("SET GLOBAL max_allowed_packet = {value}")).map(drop),
        None => Ok(()),
    };
    replayed.and(restored)
}

fn run_replay(client: &Client, prelude: &str, files: &[PathBuf], start: u64, until: &Until) -> Result<()> {
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
    let mut decoder = run_tool("mariadb-binlog", command)?;
    let packet = format!("--max-allowed-packet={MAX_PACKET}");
    let mut loader = client.spawn("mariadb", &["--binary-mode", &packet], |c| {
        c.stdin(Stdio::piped());
    })?;
    let mut sql = decoder.child.stdout.take().expect("stdout is piped");
    let mut input = loader.child.stdin.take().expect("stdin is piped");
    let copied = input.write_all(prelude.as_bytes()).and_then(|()| std::io::copy(&mut sql, &mut input));
    drop(input);
    drop(sql);
    // The loader's error explains a broken pipe; the decoder's explains a short read.
    loader.finish().map_err(|e| {
        let lower = e.message().to_ascii_lowercase();
        if lower.contains("max_allowed_packet") || lower.contains("server has gone away") {
            Error::engine(format!(
                "the server closed the replay's connection: a statement larger than max_allowed_packet \
                 ({MAX_PACKET} bytes, the most it takes) does that, as does a server crash; see its error log ({e})"
            ))
        } else {
            e
        }
    })?;
    decoder.finish()?;
    copied.map_err(|e| Error::io("cannot pass the binary logs to mariadb", e))?;
    Ok(())
}
