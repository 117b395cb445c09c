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

/// Reads and authenticates snapshot `id`'s header with the repository's secret.
pub fn open(storage: &dyn Storage, id: &str, secret: &StaticSecret, repo_id: &str) -> Result<Opened> {
    let name = format!("snapshots/{id}");
    let damaged = |why: &str| Error::integrity(format!("snapshot {id} is damaged ({why})"));
    let size = storage.size(&name)?;
    if size < 12 {
        return Err(damaged("truncated"));
    }
    let head = storage.read_range(&name, 0, 12)?;
    if head[..8] != MAGIC {
        return Err(damaged("bad magic"));
    }
    let sealed_len = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
    if !(envelope::OVERHEAD..=MAX_SEALED).contains(&sealed_len) || size < 12 + sealed_len as u64 {
        return Err(damaged("truncated"));
    }
    let sealed = storage.read_range(&name, 12, sealed_len)?;
    if id_of(&[&head[..], &sealed].concat()) != id {
        return Err(damaged("its content does not match its name"));
    }
    let json =
        envelope::open(secret, &sealed, &aad(repo_id)).ok_or_else(|| damaged("its summary fails authentication"))?;
    let summary: Summary = serde_json::from_slice(&json).map_err(|_| damaged("its summary is not valid"))?;
    let skeleton_hash = hex::decode(&summary.skeleton_blake3)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| damaged("its summary has no valid skeleton hash"))?;
    Ok(Opened { summary, skeleton_at: 12 + sealed_len as u64, skeleton_hash })
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
