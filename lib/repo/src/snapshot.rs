//! Snapshot objects: a sealed summary of one stored stream, then its
//! skeleton (the stream with every chunk replaced by a ChunkRef). Both are
//! written and read a piece at a time: a skeleton grows with its backup.

use std::io::Read;

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use super::storage::{ObjectReader, Storage};
use crate::envelope;
use crate::error::{Error, Result};
use crate::format::{Frame, StreamId};
use crate::meta::Begin;
use crate::reader::{Item, StreamReader};

/// First eight bytes of a snapshot object.
const MAGIC: [u8; 8] = *b"BPSNAP01";

/// What a snapshot holds, as `repo snapshots` and the ship receipt show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// The stream's ID, hex.
    pub stream_id: String,
    /// The stream's Begin frame: producer, host, engine, kind, start time, positions, parent.
    #[serde(flatten)]
    pub begin: Begin,
    /// The End frame's positions (known only at the end of the backup).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub end_positions: serde_json::Map<String, serde_json::Value>,
    /// Entries in the stream.
    pub entries: u64,
    /// Content bytes of the entries.
    pub bytes: u64,
    /// Names that changed while the source read them (the End frame's
    /// `changed`): the backup is complete but not of one instant. 0 when consistent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub changed: u64,
    /// Stream bytes `ship` read.
    pub stream_bytes: u64,
    /// Chunks in the stream.
    pub chunks: u64,
    /// Chunks the repository did not hold before.
    pub new_chunks: u64,
    /// Stored bytes of those new chunks.
    pub new_bytes: u64,
    /// When `ship` stored the snapshot (RFC 3339, UTC, nanoseconds): orders
    /// snapshots that started in the same second.
    pub stored: String,
    /// BLAKE3 of the skeleton, hex: binds the summary to its skeleton.
    pub skeleton_blake3: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Binds a summary to its repository.
fn aad(repo_id: &str) -> Vec<u8> {
    [b"backpipe/v1/snapshot/".as_slice(), repo_id.as_bytes()].concat()
}

/// The largest sealed summary a reader accepts.
const MAX_SEALED: usize = 16 << 20;

/// The head of a snapshot object: magic, length, and the summary sealed to
/// the repository's public key. The skeleton follows it.
pub fn header(summary: &Summary, recipient: &PublicKey, repo_id: &str) -> Vec<u8> {
    let json = serde_json::to_vec(summary).expect("summaries serialize");
    let sealed = envelope::seal(recipient, &json, &aad(repo_id));
    [&MAGIC[..], &(sealed.len() as u32).to_le_bytes(), &sealed].concat()
}

/// The ID of a snapshot: the first 16 bytes of the BLAKE3 hash of its
/// header, hex. The header holds the skeleton's hash, so the ID names both.
pub fn id_of(header: &[u8]) -> String {
    hex::encode(&blake3::hash(header).as_bytes()[..16])
}

/// A snapshot's authenticated summary, and where its skeleton starts.
pub struct Opened {
    /// The summary.
    pub summary: Summary,
    /// Offset of the skeleton in the object.
    pub skeleton_at: u64,
    /// The skeleton's BLAKE3 hash, from the summary.
    skeleton_hash: [u8; 32],
}

/// How much of a snapshot is read at first to find its header: the whole
/// header of any ordinary snapshot, so one request reads it.
const FIRST_READ: u64 = 4096;

/// The error for a snapshot that cannot be read or understood.
fn damaged(id: &str, why: &str) -> Error {
    Error::integrity(format!("snapshot {id} is damaged ({why})"))
}

/// Reads snapshot `id`'s header (everything before the skeleton) from the
/// storage and checks it is whole and is the one the name stands for; the
/// object's `size`, when a listing gave it, saves a request. Summaries up
/// to about 4 KiB take one request.
pub fn read_header(storage: &dyn Storage, id: &str, size: Option<u64>) -> Result<Vec<u8>> {
    let name = format!("snapshots/{id}");
    let size = match size {
        Some(size) => size,
        None => storage.size(&name)?,
    };
    if size < 12 {
        return Err(damaged(id, "truncated"));
    }
    let mut header = storage.read_range(&name, 0, size.min(FIRST_READ) as usize)?;
    if header[..8] != MAGIC {
        return Err(damaged(id, "bad magic"));
    }
    let sealed_len = u32::from_le_bytes(header[8..12].try_into().unwrap()) as usize;
    if !(envelope::OVERHEAD..=MAX_SEALED).contains(&sealed_len) || size < 12 + sealed_len as u64 {
        return Err(damaged(id, "truncated"));
    }
    let len = 12 + sealed_len;
    if header.len() < len {
        let rest = storage.read_range(&name, header.len() as u64, len - header.len())?;
        header.extend_from_slice(&rest);
    }
    header.truncate(len);
    if id_of(&header) != id {
        return Err(damaged(id, "its content does not match its name"));
    }
    Ok(header)
}

/// Authenticates a snapshot header (from [`read_header`], or a copy whose
/// ID was checked against it) with the repository's secret and checks its
/// summary makes sense ([`Summary::check`]).
pub fn open_header(header: &[u8], id: &str, secret: &StaticSecret, repo_id: &str) -> Result<Opened> {
    if header.len() < 12 || header[..8] != MAGIC || id_of(header) != id {
        return Err(damaged(id, "its content does not match its name"));
    }
    let json = envelope::open(secret, &header[12..], &aad(repo_id))
        .ok_or_else(|| damaged(id, "its summary fails authentication"))?;
    let summary: Summary = serde_json::from_slice(&json).map_err(|_| damaged(id, "its summary is not valid"))?;
    let skeleton_hash = hex::decode(&summary.skeleton_blake3)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| damaged(id, "its summary has no valid skeleton hash"))?;
    summary.check().map_err(|why| damaged(id, &format!("its summary does not make sense: {why}")))?;
    Ok(Opened { summary, skeleton_at: header.len() as u64, skeleton_hash })
}

/// Reads and authenticates snapshot `id`'s header with the repository's secret.
pub fn open(storage: &dyn Storage, id: &str, secret: &StaticSecret, repo_id: &str) -> Result<Opened> {
    open_header(&read_header(storage, id, None)?, id, secret, repo_id)
}

/// The longest value of a summary quoted in a message.
const QUOTED: usize = 40;

/// A value from a summary or Begin frame for a message: quoted and escaped
/// (it may come from a forged stream), and shortened.
fn quote(value: &str) -> String {
    let short: String = value.chars().take(QUOTED).collect();
    let more = if short.len() < value.len() { "..." } else { "" };
    format!("{short:?}{more}")
}

/// Checks what every reader relies on in a stream's Begin frame: `started`
/// is an RFC 3339 time; host, engine, kind and source (when given) are names
/// (not empty, no control characters, at most 255 bytes); a parent is a
/// stream ID (32 hex digits). `ship` refuses a stream whose
/// Begin fails this, and readers treat a snapshot whose summary does like a
/// damaged one, so a forged stream cannot break listing or retention.
pub fn check_begin(begin: &Begin) -> std::result::Result<(), String> {
    if crate::units::stored_time(&begin.started).is_none() {
        return Err(format!("started {} is not an RFC 3339 time", quote(&begin.started)));
    }
    let source = begin.source.as_ref().map(|source| ("source", source));
    for (field, value) in
        [("host", &begin.host), ("engine", &begin.engine), ("kind", &begin.kind)].into_iter().chain(source)
    {
        if !crate::meta::is_name(value) {
            return Err(format!("{field} {} is not a name", quote(value)));
        }
    }
    if let Some(parent) = &begin.parent {
        if parent.len() != 32 || !parent.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("parent {} is not a stream ID", quote(parent)));
        }
    }
    Ok(())
}

#[cfg(test)]
impl Summary {
    /// A summary of a backup of `begin` stored with no content, for tests.
    pub(crate) fn example(stream_id: &str, begin: crate::meta::Begin, stored: &str) -> Summary {
        Summary {
            stream_id: stream_id.into(),
            begin,
            end_positions: Default::default(),
            entries: 0,
            bytes: 0,
            changed: 0,
            stream_bytes: 0,
            chunks: 0,
            new_chunks: 0,
            new_bytes: 0,
            stored: stored.into(),
            skeleton_blake3: "00".repeat(32),
        }
    }
}

impl Summary {
    /// Checks the summary makes sense to every reader: its Begin frame's
    /// fields ([`check_begin`]), its `stored` time and its stream ID.
    pub fn check(&self) -> std::result::Result<(), String> {
        check_begin(&self.begin)?;
        if crate::units::stored_time(&self.stored).is_none() {
            return Err(format!("stored {} is not an RFC 3339 time", quote(&self.stored)));
        }
        if self.stream_id.len() != 32 || !self.stream_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("stream_id {} is not a stream ID", quote(&self.stream_id)));
        }
        Ok(())
    }
}

impl Opened {
    /// The skeleton as a stream reader, read in bounded pieces. It checks
    /// the skeleton against the summary's hash and stream ID as it goes:
    /// reading on after the last frame, to the end, reports a mismatch.
    pub fn skeleton<'a>(&self, storage: &'a dyn Storage, id: &str) -> Result<StreamReader<CheckedSkeleton<'a>>> {
        let inner = ObjectReader::new(storage, &format!("snapshots/{id}"), self.skeleton_at)?;
        let checked = CheckedSkeleton {
            inner,
            hasher: blake3::Hasher::new(),
            expected: self.skeleton_hash,
            stream_id: self.summary.stream_id.clone(),
            id: id.to_string(),
        };
        Ok(StreamReader::new(checked))
    }
}

/// A snapshot's skeleton bytes, hashed as they are read; at the end the hash
/// must be the summary's and the stream the summary's.
pub struct CheckedSkeleton<'a> {
    inner: ObjectReader<'a>,
    hasher: blake3::Hasher,
    expected: [u8; 32],
    stream_id: String,
    id: String,
}

impl Read for CheckedSkeleton<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.hasher.update(&out[..n]);
        let mismatch = |why: &str| {
            let err = Error::integrity(format!("snapshot {} is damaged ({why})", self.id));
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, err))
        };
        if n == 0 && *self.hasher.finalize().as_bytes() != self.expected {
            return mismatch("its skeleton does not match its summary");
        }
        Ok(n)
    }
}

impl CheckedSkeleton<'_> {
    /// Checks the preamble's stream ID is the summary's.
    pub fn check_stream(&self, stream: &StreamId) -> Result<()> {
        if hex::encode(stream) != self.stream_id {
            return Err(Error::integrity(format!(
                "snapshot {} is damaged (its skeleton is not the stream its summary describes)",
                self.id
            )));
        }
        Ok(())
    }
}

/// Reads a whole skeleton, calling `frame` for each frame and checking the
/// stream ID and, at the end, the hash.
pub fn walk(mut reader: StreamReader<CheckedSkeleton<'_>>, mut frame: impl FnMut(Frame) -> Result<()>) -> Result<()> {
    while let Some(item) = reader.next_item()? {
        match item {
            Item::Start(stream) => reader.get_ref().check_stream(&stream)?,
            Item::Frame(f) => frame(f)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_frames_readers_cannot_rely_on_are_named() {
        let good = Begin::now("dump-files", "files", "full");
        assert_eq!(check_begin(&good), Ok(()));
        for (begin, why) in [
            (Begin { started: "yesterday".into(), ..good.clone() }, r#"started "yesterday" is not an RFC 3339 time"#),
            (Begin { started: "+10000-01-01T00:00:00Z".into(), ..good.clone() }, "is not an RFC 3339 time"),
            (Begin { host: "db1\nabc  damaged".into(), ..good.clone() }, r#"host "db1\nabc  damaged" is not a name"#),
            (Begin { engine: String::new(), ..good.clone() }, r#"engine "" is not a name"#),
            (
                Begin { kind: "x".repeat(300), ..good.clone() },
                r#"kind "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"... is"#,
            ),
        ] {
            let err = check_begin(&begin).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        assert!(check_begin(&Begin { started: "2026-11-22T03:13:32+01:00".into(), ..good }).is_ok());
    }
}
