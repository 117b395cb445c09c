//! Checks a MySQL or MariaDB binary log file (format version 4) end to end,
//! reading it once in bounded memory: the magic number, every event's
//! header, the chain of end positions (each event's `next_position` is where
//! the next one starts), and, when the format description event says so, every
//! event's CRC-32. Incremental backups copy binary logs; a copy is only as good
//! as this check says. MariaDB from 11.4 on writes the events of its
//! transaction and statement caches with a next position of 0 (only events it
//! writes directly, such as GTID, XID and rotate events, carry theirs); in its
//! files those events are checked by their length and CRC-32, the others by
//! the chain too.
//!
//! Layout (MySQL's "binary log" internals documentation): 4 magic bytes
//! `fe 62 69 6e`, then events. Each event starts with a 19-byte header,
//! little-endian: timestamp (4), type (1), server ID (4), event length (4,
//! header included), next position (4), flags (2). The first event is a
//! format description event (type 15): binlog version (2), server version (50,
//! NUL-padded), creation time (4), header length (1), one post-header length
//! per event type, and, from MySQL 5.6.1 and MariaDB 5.3, the checksum
//! algorithm (1: 0 none, 1 CRC-32) and a CRC-32 of the event itself (always
//! present; the event's own entry in the table tells whether they are
//! there). With CRC-32 every event ends with the CRC-32 (IEEE, as zlib) of all
//! its bytes before it.

use std::io::Read;

use crate::error::{Error, Result};

/// The first four bytes of every binary log.
pub const MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];
const HEADER_LEN: usize = 19;
const FORMAT_DESCRIPTION: u8 = 15;
const STOP: u8 = 3;
const ROTATE: u8 = 4;
/// Flag of the format description event: the server had the file open (not cleanly closed).
const IN_USE: u16 = 0x1;
/// Longest format description event accepted (real ones are under 256 bytes).
const MAX_FORMAT_DESCRIPTION: usize = 64 << 10;
/// Longest event accepted (MySQL's max_allowed_packet ceiling is 1 GiB).
const MAX_EVENT: u64 = 1 << 30;

/// What checking a binary log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The server version from the format description event, e.g. "5.7.21-log".
    pub server_version: String,
    /// True when every event carries a CRC-32 (binlog_checksum=CRC32).
    pub checksums: bool,
    /// Events in the file.
    pub events: u64,
    /// The file's length: where the last event ends.
    pub end: u64,
    /// The type of the last event: 4 (rotate) or 3 (stop) for a closed file.
    pub last_event: u8,
    /// The server still had the file open when it was copied (the current binary log).
    pub in_use: bool,
    /// Timestamp (Unix seconds) of the first event, the format description.
    pub first_time: u32,
    /// Timestamp (Unix seconds) of the last event.
    pub last_time: u32,
    /// MariaDB GTIDs in the file: per replication domain, the lowest and
    /// highest sequence number.
    pub gtids: std::collections::BTreeMap<u32, (u64, u64)>,
}

impl Checked {
    /// True when the file was closed by the server (rotated or stopped), so it will not grow.
    pub fn is_closed(&self) -> bool {
        !self.in_use && matches!(self.last_event, ROTATE | STOP)
    }

    /// What was found, for people: events, server, checksums, state, times, GTIDs.
    pub fn describe(&self) -> String {
        let gtids: Vec<String> = self.gtids.iter().map(|(d, (lo, hi))| format!("{d}-{lo}..{hi}")).collect();
        format!(
            "{} events from server {}, {}, {}, events {} to {}{}",
            self.events,
            self.server_version,
            if self.checksums { "every event's CRC-32 checked" } else { "no checksums (positions checked)" },
            if self.is_closed() { "closed" } else { "open (the server was still writing it)" },
            rfc3339(self.first_time),
            rfc3339(self.last_time),
            if gtids.is_empty() { String::new() } else { format!(", GTIDs {}", gtids.join(" ")) }
        )
    }

    /// What was found, as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let gtids: serde_json::Map<String, serde_json::Value> =
            self.gtids.iter().map(|(d, (lo, hi))| (d.to_string(), serde_json::json!([lo, hi]))).collect();
        serde_json::json!({
            "events": self.events,
            "server_version": self.server_version,
            "checksums": self.checksums,
            "closed": self.is_closed(),
            "size": self.end,
            "first_time": rfc3339(self.first_time),
            "last_time": rfc3339(self.last_time),
            "gtids": gtids,
        })
    }
}

/// An event timestamp as RFC 3339 (UTC).
fn rfc3339(seconds: u32) -> String {
    chrono::DateTime::from_timestamp(i64::from(seconds), 0).map_or_else(String::new, |t| t.to_rfc3339())
}

/// Reads and checks a whole binary log; `name` is for messages.
pub fn check(mut input: impl Read, name: &str) -> Result<Checked> {
    let damaged = |at: u64, why: String| Error::integrity(format!("binary log {name} is damaged at byte {at}: {why}"));
    let mut magic = [0u8; 4];
    read_exact_or(&mut input, &mut magic, || damaged(0, "it is shorter than the magic number".into()))?;
    if magic != MAGIC {
        return Err(damaged(0, "it does not start with the binary log magic number".into()));
    }
    let mut at = MAGIC.len() as u64;
    let mut found: Option<Checked> = None;
    let mut header = [0u8; HEADER_LEN];
    let mut body = Vec::new();
    loop {
        match read_full(&mut input, &mut header).map_err(|e| Error::io(format!("cannot read binary log {name}"), e))? {
            0 => break,
            HEADER_LEN => {}
            _ => return Err(damaged(at, "it ends inside an event header (truncated)".into())),
        }
        let time = u32::from_le_bytes(header[0..4].try_into().unwrap());
        let kind = header[4];
        let length = u64::from(u32::from_le_bytes(header[9..13].try_into().unwrap()));
        let next = u64::from(u32::from_le_bytes(header[13..17].try_into().unwrap()));
        let flags = u16::from_le_bytes(header[17..19].try_into().unwrap());
        if length < HEADER_LEN as u64 || length > MAX_EVENT {
            return Err(damaged(at, format!("an event claims a length of {length} bytes")));
        }
        // Since MariaDB 11.4, events written through the transaction or
        // statement cache carry 0; those that carry a position must chain.
        let unpositioned = next == 0 && found.as_ref().is_some_and(|f| writes_unpositioned_events(&f.server_version));
        if next != at + length && !unpositioned {
            return Err(damaged(at, format!("an event ends at {} but says the next starts at {next}", at + length)));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        let mut gtid = None;
        let body_len = (length as usize) - HEADER_LEN;
        let truncated = || damaged(at, "it ends inside an event (truncated)".into());
        match found.as_ref().map(|f| f.checksums) {
            None if kind == FORMAT_DESCRIPTION => {
                if body_len > MAX_FORMAT_DESCRIPTION {
                    return Err(damaged(at, format!("its format description event claims {body_len} bytes")));
                }
                body.resize(body_len, 0);
                read_exact_or(&mut input, &mut body, truncated)?;
                let description = describe_format(&body).map_err(|why| damaged(at, why))?;
                if description.has_checksum {
                    // The format description carries a CRC-32 whatever the algorithm,
                    // computed with the in-use flag clear: the server clears the flag in
                    // place when it closes the file, without rewriting the checksum.
                    let mut signed_header = header;
                    signed_header[17] &= !(IN_USE as u8);
                    crc = crc32fast::Hasher::new();
                    crc.update(&signed_header);
                    let (signed, stored) = body.split_at(body.len() - 4);
                    crc.update(signed);
                    if crc.finalize() != u32::from_le_bytes(stored.try_into().unwrap()) {
                        return Err(damaged(at, "the format description event fails its CRC-32".into()));
                    }
                }
                found = Some(Checked {
                    server_version: description.server_version,
                    checksums: description.crc32,
                    events: 0,
                    end: 0,
                    last_event: kind,
                    in_use: flags & IN_USE != 0,
                    first_time: time,
                    last_time: time,
                    gtids: Default::default(),
                });
            }
            None => return Err(damaged(at, "the first event is not a format description".into())),
            Some(false) => {
                gtid = read_body(&mut input, body_len as u64, kind, &mut crc).map_err(|_| truncated())?;
            }
            Some(true) => {
                if body_len < 4 {
                    return Err(damaged(at, "an event is too short for its CRC-32".into()));
                }
                gtid = read_body(&mut input, (body_len - 4) as u64, kind, &mut crc).map_err(|_| truncated())?;
                let mut stored = [0u8; 4];
                read_exact_or(&mut input, &mut stored, truncated)?;
                if crc.finalize() != u32::from_le_bytes(stored) {
                    return Err(damaged(at, format!("an event of type {kind} fails its CRC-32")));
                }
            }
        }
        let checked = found.as_mut().expect("set by the first event");
        checked.events += 1;
        checked.last_event = kind;
        checked.last_time = time;
        if let Some((domain, seq)) = gtid {
            let range = checked.gtids.entry(domain).or_insert((seq, seq));
            *range = (range.0.min(seq), range.1.max(seq));
        }
        at += length;
    }
    let mut checked = found.ok_or_else(|| damaged(at, "it holds no events".into()))?;
    checked.end = at;
    Ok(checked)
}

/// What the format description event says about the file.
struct FormatDescription {
    server_version: String,
    /// The event ends with an algorithm byte and a CRC-32.
    has_checksum: bool,
    /// Every event carries a CRC-32.
    crc32: bool,
}

/// True for servers that write the events of their transaction and
/// statement caches with an end position of 0: MariaDB from 11.4 on.
fn writes_unpositioned_events(server_version: &str) -> bool {
    if !server_version.contains("MariaDB") {
        return false;
    }
    let mut numbers = server_version.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (11, 4)
}

/// Parses a format description event's body.
fn describe_format(body: &[u8]) -> std::result::Result<FormatDescription, String> {
    if body.len() < 2 + 50 + 4 + 1 {
        return Err("the format description event is too short".into());
    }
    let version = u16::from_le_bytes([body[0], body[1]]);
    if version != 4 {
        return Err(format!("binary log format version {version} is not supported (only 4)"));
    }
    let raw = &body[2..52];
    let server_version =
        String::from_utf8_lossy(&raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())]).into_owned();
    // The event's own entry in the post-header length table is the length of
    // its body without the checksum algorithm and CRC-32 that newer servers add.
    let own = body.get(57 + usize::from(FORMAT_DESCRIPTION) - 1).map(|&len| usize::from(len));
    let has_checksum = match own {
        Some(own) if body.len() == own => false,
        Some(own) if body.len() == own + 5 => true,
        _ => return Err("the format description event's length does not match its own table".into()),
    };
    let crc32 = match (has_checksum, body[body.len() - 5]) {
        (false, _) | (true, 0) => false,
        (true, 1) => true,
        (true, other) => return Err(format!("unknown binary log checksum algorithm {other}")),
    };
    Ok(FormatDescription { server_version, has_checksum, crc32 })
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn read_exact_or(input: &mut impl Read, buf: &mut [u8], short: impl FnOnce() -> Error) -> Result<()> {
    match read_full(input, buf) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) => Err(short()),
        Err(e) => Err(Error::io("cannot read the binary log", e)),
    }
}

/// MariaDB's GTID event: sequence number (8 bytes), domain (4), flags (1), ...
const MARIADB_GTID: u8 = 162;

/// Reads an event body of `len` bytes into the checksum; for a MariaDB GTID
/// event, returns its domain and sequence number.
fn read_body(
    input: &mut impl Read,
    len: u64,
    kind: u8,
    crc: &mut crc32fast::Hasher,
) -> std::io::Result<Option<(u32, u64)>> {
    if kind != MARIADB_GTID || len < 12 {
        return skip(input, len, crc).map(|()| None);
    }
    let mut head = [0u8; 12];
    if read_full(input, &mut head)? < head.len() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    crc.update(&head);
    skip(input, len - 12, crc)?;
    let seq = u64::from_le_bytes(head[0..8].try_into().unwrap());
    let domain = u32::from_le_bytes(head[8..12].try_into().unwrap());
    Ok(Some((domain, seq)))
}

/// Reads `len` bytes into the CRC without keeping them.
fn skip(input: &mut impl Read, len: u64, crc: &mut crc32fast::Hasher) -> std::io::Result<()> {
    let mut piece = [0u8; 64 << 10];
    let mut left = len;
    while left > 0 {
        let want = left.min(piece.len() as u64) as usize;
        let got = read_full(input, &mut piece[..want])?;
        if got < want {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        crc.update(&piece[..got]);
        left -= got as u64;
    }
    Ok(())
}

/// Checks a binary log handed to it block by block, on a thread of its own,
/// so a copy can be checked while it is written elsewhere.
pub struct BackgroundCheck {
    blocks: Option<crossbeam_channel::Sender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<Result<Checked>>>,
}

impl BackgroundCheck {
    /// Starts checking the binary log `name` (for messages).
    pub fn start(name: &str) -> BackgroundCheck {
        let (sender, receiver) = crossbeam_channel::bounded::<Vec<u8>>(4);
        let name = name.to_string();
        let worker =
            std::thread::spawn(move || check(BlockReader { blocks: receiver, current: Vec::new(), at: 0 }, &name));
        BackgroundCheck { blocks: Some(sender), worker: Some(worker) }
    }

    /// Hands over the next block; false once the check has stopped on damage
    /// (which [`finish`](Self::finish) reports).
    pub fn feed(&mut self, block: Vec<u8>) -> bool {
        self.blocks.as_ref().is_some_and(|blocks| blocks.send(block).is_ok())
    }

    /// Ends the input and returns what the check found.
    pub fn finish(mut self) -> Result<Checked> {
        self.blocks = None;
        self.worker.take().expect("finished once").join().expect("the binary log check does not panic")
    }
}

impl Drop for BackgroundCheck {
    fn drop(&mut self) {
        self.blocks = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Reads the blocks handed to a [`BackgroundCheck`].
struct BlockReader {
    blocks: crossbeam_channel::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for BlockReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.blocks.recv() {
                Ok(block) => (self.current, self.at) = (block, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
