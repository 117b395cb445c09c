//! Replaying binary logs into a server with `mariadb-binlog | mariadb`, from
//! a full backup's coordinates up to a stopping point.

use std::io::{BufRead, BufReader, Write};
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

/// The GTID position a replay reached: `gtid` (the full's) with each
/// domain's last transaction replayed after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reached {
    /// Domain -> (server, sequence), in domain order.
    gtids: std::collections::BTreeMap<u32, (u32, u64)>,
}

impl Reached {
    /// Starts from a GTID list (`0-1-100,1-2-7`); unreadable members are left out.
    pub fn from_list(list: &str) -> Reached {
        let mut reached = Reached::default();
        for gtid in list.split(',') {
            reached.note(gtid.trim());
        }
        reached
    }

    /// Takes one GTID (`domain-server-sequence`) as replayed.
    fn note(&mut self, gtid: &str) {
        if let Ok((domain, server, sequence)) = crate::positions::parse_gtid(gtid) {
            self.gtids.insert(domain, (server, sequence));
        }
    }

    /// Reads a line of `mariadb-binlog`'s output: an event header comment
    /// of a GTID event names the transaction that follows.
    fn read_line(&mut self, line: &[u8]) {
        // An event header: `#YYMMDD HH:MM:SS server id …` (never SQL text).
        let header = line.len() > 7 && line[0] == b'#' && line[1..7].iter().all(u8::is_ascii_digit) && line[7] == b' ';
        if !header {
            return;
        }
        let text = String::from_utf8_lossy(line);
        if let Some(after) = text.split_once("\tGTID ").or_else(|| text.split_once(" GTID ")).map(|(_, a)| a) {
            if let Some(gtid) = after.split_whitespace().next() {
                self.note(gtid);
            }
        }
    }

    /// The position as a GTID list, as `gtid_slave_pos` takes it; empty when unknown.
    pub fn list(&self) -> String {
        let members: Vec<String> =
            self.gtids.iter().map(|(domain, (server, sequence))| format!("{domain}-{server}-{sequence}")).collect();
        members.join(",")
    }
}

/// The longest event header line kept (they are under 200 bytes).
const HEADER_MAX: usize = 512;

/// Reads `mariadb-binlog`'s output block by block as it passes to the
/// server, handing each line that starts with `#` (the event headers) to
/// [`Reached::read_line`]; the SQL itself is never copied.
struct HeaderLines<'a> {
    reached: &'a mut Reached,
    /// The current line so far, when it is one to read.
    line: Vec<u8>,
    /// What the current line is: not begun yet (`None`), to read, or to skip.
    reading: Option<bool>,
}

impl HeaderLines<'_> {
    fn feed(&mut self, mut block: &[u8]) {
        while !block.is_empty() {
            let end = block.iter().position(|&b| b == b'\n');
            let part = &block[..end.unwrap_or(block.len())];
            let reading = *self.reading.get_or_insert(block[0] == b'#');
            if reading {
                let room = HEADER_MAX.saturating_sub(self.line.len());
                self.line.extend_from_slice(&part[..part.len().min(room)]);
            }
            let Some(at) = end else { return };
            if reading {
                self.reached.read_line(&self.line);
                self.line.clear();
            }
            self.reading = None;
            block = &block[at + 1..];
        }
    }
}

/// What a replay applies: `files` (from `start` in the first) up to
/// `until`, after `prelude`, logged as `logging` says.
pub struct Replay<'a> {
    /// SQL sent before the binary logs' (e.g. `FLUSH PRIVILEGES;`).
    pub prelude: &'a str,
    /// The binary log files, in order.
    pub files: &'a [PathBuf],
    /// Where the first file's replay starts.
    pub start: u64,
    /// Where the replay stops.
    pub until: &'a Until,
    /// Whether the replay goes into the target's binary log.
    pub logging: Logging,
}

/// How a replay's session writes to the target's own binary log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logging {
    /// Not at all (`sql_log_bin=0`): a replica of the target does not
    /// replay the restore, and its binary log does not grow by it.
    Off,
    /// As any session does.
    On,
}

impl Logging {
    /// What a statement run through [`Client::query`] starts with, so its
    /// session logs as asked.
    pub fn prefix(self) -> &'static str {
        match self {
            Logging::Off => "SET SESSION sql_log_bin = 0; ",
            Logging::On => "",
        }
    }

    /// The client option that makes a session log as asked, if any.
    pub fn client_option(self) -> Option<&'static str> {
        match self {
            Logging::Off => Some("--init-command=SET SESSION sql_log_bin=0"),
            Logging::On => None,
        }
    }
}

/// Runs `mariadb-binlog` over the replay's files, piping its SQL into
/// `mariadb` on `client`, and adds each domain's last replayed GTID to
/// `reached`. The server's `max_allowed_packet` is raised to
/// [`MAX_PACKET`] while it runs.
pub fn replay(client: &Client, job: &Replay, reached: &mut Reached) -> Result<()> {
    let lowered = raise_packet_limit(client)?;
    let replayed = run_replay(client, job, reached);
    let restored = match lowered {
        Some(value) => client.query(&format!("SET GLOBAL max_allowed_packet = {value}")).map(drop),
        None => Ok(()),
    };
    replayed.and(restored)
}

fn run_replay(client: &Client, job: &Replay, reached: &mut Reached) -> Result<()> {
    let Replay { prelude, files, start, until, logging } = *job;
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
    let mut args = vec!["--binary-mode", &packet];
    args.extend(logging.client_option());
    let mut loader = client.spawn("mariadb", &args, |c| {
        c.stdin(Stdio::piped());
    })?;
    let mut sql = BufReader::with_capacity(1 << 20, decoder.child.stdout.take().expect("stdout is piped"));
    let mut input = loader.child.stdin.take().expect("stdin is piped");
    let mut headers = HeaderLines { reached, line: Vec::new(), reading: None };
    let copied = input.write_all(prelude.as_bytes()).and_then(|()| loop {
        let block = sql.fill_buf()?;
        if block.is_empty() {
            return Ok(());
        }
        headers.feed(block);
        input.write_all(block)?;
        let passed = block.len();
        sql.consume(passed);
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `mariadb-binlog` output as it prints it: event headers, SQL, a
    /// statement that only looks like a header, and base64 row images.
    const OUTPUT: &str = "/*!50530 SET @@SESSION.PSEUDO_SLAVE_MODE=1*/;\n\
        # at 4\n\
        #261128 13:11:13 server id 1  end_log_pos 256 CRC32 0x1f2e3d4c \tStart: binlog v 4\n\
        #261128 13:11:13 server id 1  end_log_pos 300 CRC32 0x0a0b0c0d \tGTID 0-1-626 trans\n\
        /*!100001 SET @@session.gtid_seq_no=626*//*!*/;\n\
        # GTID 0-9-999 is not a header: no time\n\
        INSERT INTO t VALUES ('#261128 13:11:13 x GTID 0-9-998');\n\
        BINLOG '\nAAAAAAAAAAAAAAAAAAAA\n'/*!*/;\n\
        #261128 13:11:14 server id 2  end_log_pos 900 CRC32 0x0a0b0c0e \tGTID 1-2-7 ddl\n";

    #[test]
    fn gtids_are_read_from_event_headers_whatever_the_block_boundaries() {
        for block in [1, 2, 3, 7, 64, OUTPUT.len()] {
            let mut reached = Reached::from_list("0-1-625");
            let mut headers = HeaderLines { reached: &mut reached, line: Vec::new(), reading: None };
            for chunk in OUTPUT.as_bytes().chunks(block) {
                headers.feed(chunk);
            }
            assert_eq!(reached.list(), "0-1-626,1-2-7", "blocks of {block}");
        }
    }
}
