//! Pack files, which hold stored chunks back to back, and the index file
//! written beside each, which says where each chunk is.

use std::sync::Arc;

use super::storage::Storage;
use crate::error::{Error, Result};
use crate::format::Encodings;

/// Packs are closed once they reach this size.
pub const PACK_TARGET: usize = 32 << 20;

/// Random bytes at the start of every pack.
pub const PACK_HEADER: usize = 16;

/// True for a well-formed pack name: 64 lowercase hex digits.
pub fn is_pack_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// First eight bytes of an index file.
const INDEX_MAGIC: [u8; 8] = *b"BPINDEX1";
/// Bytes per index entry.
const ENTRY_LEN: usize = 48;

/// Where a stored chunk is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The pack's ID (hex BLAKE3 of its bytes), shared by all its chunks' entries.
    pub pack: Arc<str>,
    /// Offset of the stored chunk payload in the pack.
    pub offset: u64,
    /// Length of the stored payload (chunk ID, nonce, ciphertext, tag).
    pub length: u32,
    /// The encodings of the chunk's Data frame.
    pub encodings: Encodings,
}

/// One index entry: a chunk ID and its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The keyed chunk ID.
    pub id: [u8; 32],
    /// Where it is.
    pub location: Location,
}

/// The object name of a pack.
pub fn pack_name(pack: &str) -> String {
    format!("data/{}/{pack}", &pack[..2])
}

/// Encodes the index of a pack.
fn encode_index(entries: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + entries.len() * ENTRY_LEN + 32);
    out.extend_from_slice(&INDEX_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        out.extend_from_slice(&entry.id);
        out.extend_from_slice(&entry.location.offset.to_le_bytes());
        out.extend_from_slice(&entry.location.length.to_le_bytes());
        out.push(entry.location.encodings.0);
        out.extend_from_slice(&[0; 3]);
    }
    let digest = blake3::hash(&out);
    out.extend_from_slice(digest.as_bytes());
    out
}

/// Decodes and checks the index of pack `pack`.
pub fn decode_index(bytes: &[u8], pack: &str) -> Result<Vec<IndexEntry>> {
    let damaged = |why: &str| Error::integrity(format!("index of pack {pack} is damaged ({why})"));
    if bytes.len() < 12 + 32 || bytes[..8] != INDEX_MAGIC {
        return Err(damaged("too short or bad magic"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != digest {
        return Err(damaged("checksum mismatch"));
    }
    let count = u32::from_le_bytes(body[8..12].try_into().unwrap()) as usize;
    if body.len() != 12 + count * ENTRY_LEN {
        return Err(damaged("length does not match its entry count"));
    }
    let shared: Arc<str> = Arc::from(pack);
    Ok(body[12..]
        .chunks_exact(ENTRY_LEN)
        .map(|raw| IndexEntry {
            id: raw[..32].try_into().unwrap(),
            location: Location {
                pack: shared.clone(),
                offset: u64::from_le_bytes(raw[32..40].try_into().unwrap()),
                length: u32::from_le_bytes(raw[40..44].try_into().unwrap()),
                encodings: Encodings(raw[44]),
            },
        })
        .collect())
}

/// Collects chunks into a pack and stores it (pack first, then its index) when full.
pub struct PackWriter<'a> {
    storage: &'a dyn Storage,
    buffer: Vec<u8>,
    entries: Vec<([u8; 32], u64, u32, Encodings)>,
}

impl<'a> PackWriter<'a> {
    /// A writer into `storage`.
    pub fn new(storage: &'a dyn Storage) -> PackWriter<'a> {
        PackWriter { storage, buffer: Self::fresh(), entries: Vec::new() }
    }

    /// An empty pack: 16 random bytes, so no two writes ever make the same
    /// pack (and name), even of the same chunks.
    fn fresh() -> Vec<u8> {
        let mut buffer = vec![0u8; PACK_HEADER];
        crate::random::fill(&mut buffer);
        buffer
    }

    /// Adds a chunk's stored payload; stores the pack when it is full and
    /// then returns its index entries (else none).
    pub fn add(&mut self, id: [u8; 32], encodings: Encodings, payload: &[u8]) -> Result<Vec<IndexEntry>> {
        self.entries.push((id, self.buffer.len() as u64, payload.len() as u32, encodings));
        self.buffer.extend_from_slice(payload);
        if self.buffer.len() >= PACK_TARGET {
            return self.flush();
        }
        Ok(Vec::new())
    }

    /// Stores the pack being filled, if any, then its index, and returns the
    /// index entries (none when there was nothing to store). Both are durable
    /// when this returns.
    pub fn flush(&mut self) -> Result<Vec<IndexEntry>> {
        if self.entries.is_empty() {
            return Ok(Vec::new());
        }
        let pack: Arc<str> = Arc::from(blake3::hash(&self.buffer).to_hex().as_str());
        self.storage.create(&pack_name(&pack), &self.buffer)?;
        let entries: Vec<IndexEntry> = self
            .entries
            .drain(..)
            .map(|(id, offset, length, encodings)| IndexEntry {
                id,
                location: Location { pack: pack.clone(), offset, length, encodings },
            })
            .collect();
        self.storage.create(&format!("index/{pack}"), &encode_index(&entries))?;
        self.buffer = Self::fresh();
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_and_detects_damage() {
        let entries = vec![IndexEntry {
            id: [7; 32],
            location: Location { pack: Arc::from("ab".repeat(32)), offset: 12, length: 99, encodings: Encodings(7) },
        }];
        let bytes = encode_index(&entries);
        assert_eq!(decode_index(&bytes, &"ab".repeat(32)).unwrap(), entries);
        for cut in [0, 11, bytes.len() - 1] {
            assert!(decode_index(&bytes[..cut], "x").is_err());
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(decode_index(&flipped, "x").is_err());
    }
}
