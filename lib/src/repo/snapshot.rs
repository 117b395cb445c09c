//! Snapshot objects: a sealed summary of one stored stream, then its
//! skeleton (the stream with every chunk replaced by a ChunkRef).

use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::envelope;
use crate::error::{Error, Result};
use crate::meta::Begin;

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
    /// Entries in the stream.
    pub entries: u64,
    /// Content bytes of the entries.
    pub bytes: u64,
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
}

/// Binds a summary to its repository and to its skeleton, so neither can be paired with another.
fn aad(repo_id: &str, skeleton: &[u8]) -> Vec<u8> {
    [b"backpipe/v1/snapshot/".as_slice(), repo_id.as_bytes(), blake3::hash(skeleton).as_bytes()].concat()
}

/// Encodes a snapshot object, its summary sealed to the repository's public key.
pub fn encode(summary: &Summary, skeleton: &[u8], recipient: &PublicKey, repo_id: &str) -> Vec<u8> {
    let json = serde_json::to_vec(summary).expect("summaries serialize");
    let sealed = envelope::seal(recipient, &json, &aad(repo_id, skeleton));
    let mut out = Vec::with_capacity(8 + 4 + sealed.len() + skeleton.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    out.extend_from_slice(&sealed);
    out.extend_from_slice(skeleton);
    out
}

/// Decodes a snapshot object with the repository's secret: its summary and its skeleton.
pub fn decode<'a>(bytes: &'a [u8], secret: &StaticSecret, repo_id: &str, name: &str) -> Result<(Summary, &'a [u8])> {
    let damaged = |why: &str| Error::integrity(format!("snapshot {name} is damaged ({why})"));
    if bytes.len() < 12 || bytes[..8] != MAGIC {
        return Err(damaged("bad magic"));
    }
    let sealed_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    if sealed_len < envelope::OVERHEAD || bytes.len() < 12 + sealed_len {
        return Err(damaged("truncated"));
    }
    let sealed = &bytes[12..12 + sealed_len];
    let skeleton = &bytes[12 + sealed_len..];
    let json = envelope::open(secret, sealed, &aad(repo_id, skeleton))
        .ok_or_else(|| damaged("its summary fails authentication"))?;
    let summary: Summary = serde_json::from_slice(&json).map_err(|_| damaged("its summary is not valid"))?;
    let preamble_id = skeleton.get(12..28).map(hex::encode);
    if preamble_id.as_deref() != Some(summary.stream_id.as_str()) {
        return Err(damaged("its skeleton is not the stream its summary describes"));
    }
    Ok((summary, skeleton))
}

/// The ID of a snapshot object: the first 16 bytes of its BLAKE3 hash, hex.
pub fn id_of(bytes: &[u8]) -> String {
    hex::encode(&blake3::hash(bytes).as_bytes()[..16])
}

/// The chunk IDs a skeleton refers to, in order (checking its frames on the way).
pub fn chunk_refs(skeleton: &[u8]) -> Result<Vec<[u8; 32]>> {
    let mut ids = Vec::new();
    let mut reader = crate::reader::StreamReader::new(skeleton);
    while let Some(item) = reader.next_item()? {
        if let crate::reader::Item::Frame(frame) = item {
            if frame.kind == crate::format::Kind::ChunkRef {
                let id = frame.payload[..].try_into().map_err(|_| Error::integrity("a ChunkRef frame is malformed"))?;
                ids.push(id);
            }
        }
    }
    Ok(ids)
}
