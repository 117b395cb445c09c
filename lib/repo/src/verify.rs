//! Checks a stored chunk against its ID, as only the master key can: decrypt
//! it (opening the envelope in front of it), decompress it, and hash the
//! content again with the chunk-ID key. `ship` can only check that a chunk
//! authenticates under its ID, so a write-only key can store any content
//! under any ID; every reader that restores checks this first.

use super::pack::IndexEntry;
use crate::chunk::ChunkIdKey;
use crate::crypt::ChunkOpener;
use crate::error::{Error, Result};
use crate::filter::Job;
use crate::format::{Encodings, Frame, Kind, CHUNK_ID_LEN};
use crate::keys::MasterKey;
use crate::squeeze::Recode;

/// Verifies stored chunks; shared by threads.
pub struct ChunkVerifier {
    opener: ChunkOpener,
    ids: ChunkIdKey,
}

impl ChunkVerifier {
    /// A verifier for the chunks of the repository whose master key is `master`.
    pub fn new(master: &MasterKey) -> ChunkVerifier {
        ChunkVerifier { opener: ChunkOpener::new(master), ids: ChunkIdKey::for_key(&master.write_key()) }
    }

    /// Checks that `payload`, stored with `encodings` as chunk `id`, is that
    /// chunk: it starts with the ID, is encrypted and authenticates, and its
    /// content (decompressed) hashes to the ID. The error (an integrity
    /// failure) says what is wrong, for the caller to name the chunk and pack.
    pub fn verify(&self, id: &[u8; 32], encodings: Encodings, payload: &[u8]) -> Result<()> {
        let flaw = |what: &str| Err(Error::integrity(what));
        if payload.get(..CHUNK_ID_LEN) != Some(&id[..]) {
            return flaw("does not start with its ID");
        }
        if !encodings.has(Encodings::CHUNKED) || !encodings.has(Encodings::ENCRYPTED) {
            return flaw("is not stored as an encrypted chunk");
        }
        let frame = Frame { kind: Kind::Data, encodings, payload: payload.to_vec() };
        let Ok(opened) = self.opener.open(frame) else {
            return flaw("does not decrypt: authentication failed (damaged, or not sealed for this repository)");
        };
        let plain = match opened.encodings.has(Encodings::ZSTD) {
            true => Recode::Decompress(opened)
                .run()
                .map_err(|e| Error::integrity(format!("cannot be decompressed: {e}")))?,
            false => opened,
        };
        match self.ids.id(&plain.payload[CHUNK_ID_LEN..]) == *id {
            true => Ok(()),
            false => flaw("does not match its ID (forged, or damaged before it was stored)"),
        }
    }

    /// Checks the copies of the chunks `entries` name (from the index of one
    /// pack) in that pack's stored `bytes`: for each, `None` when it is good,
    /// or what is wrong with it.
    pub fn verify_in_pack(&self, bytes: &[u8], entries: &[IndexEntry]) -> Vec<Option<String>> {
        entries
            .iter()
            .map(|entry| {
                let start = entry.location.offset as usize;
                let Some(payload) = bytes.get(start..start + entry.location.length as usize) else {
                    return Some("is beyond the end of its pack".to_string());
                };
                self.verify(&entry.id, entry.location.encodings, payload).err().map(|e| e.message().to_string())
            })
            .collect()
    }
}
