//! `chunk`: cuts each entry's content into content-defined chunks named by
//! their (optionally keyed) BLAKE3 hash, and `chunk -d`, which joins them.

use std::collections::HashSet;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::cdc::{self, ChunkSizes, Cutter};
use crate::error::{Error, Result};
use crate::filter::{split_item, Job, Output, Planner, Step};
use crate::format::{Encodings, Frame, Kind, CHUNK_ID_LEN};
use crate::keys::WriteKey;
use crate::reader::Item;

/// How chunk IDs are computed.
#[derive(Clone)]
pub enum ChunkIdKey {
    /// Plain BLAKE3 of the chunk: anyone can compute it.
    Public,
    /// Keyed BLAKE3: without the key, IDs reveal nothing about content.
    Keyed(Arc<Zeroizing<[u8; 32]>>),
}

impl ChunkIdKey {
    /// The keyed chunk IDs of everything chunked with `key`.
    pub fn for_key(key: &WriteKey) -> ChunkIdKey {
        ChunkIdKey::Keyed(Arc::new(key.chunk_id.clone()))
    }

    /// The ID of a chunk body.
    pub fn id(&self, body: &[u8]) -> [u8; CHUNK_ID_LEN] {
        match self {
            ChunkIdKey::Public => *blake3::hash(body).as_bytes(),
            ChunkIdKey::Keyed(key) => *blake3::keyed_hash(key, body).as_bytes(),
        }
    }
}

/// The sequential half of `chunk`: feeds entry content to the cutter.
pub struct Chunker {
    cutter: Cutter,
    key: ChunkIdKey,
    /// The chunk being filled: a reserved ID slot, then body bytes.
    current: Vec<u8>,
    max: usize,
    known: Option<KnownChunks>,
}

/// Chunk IDs a repository already holds.
pub type KnownChunks = Arc<HashSet<[u8; CHUNK_ID_LEN]>>;

/// Names one cut chunk: fills the ID slot at the front of its buffer, or
/// replaces the chunk by a ChunkRef when the repository already holds it.
pub struct NameChunk {
    buffer: Vec<u8>,
    key: ChunkIdKey,
    known: Option<KnownChunks>,
}

impl Job for NameChunk {
    fn run(mut self) -> Result<Frame> {
        let id = self.key.id(&self.buffer[CHUNK_ID_LEN..]);
        if self.known.as_ref().is_some_and(|known| known.contains(&id)) {
            return Ok(Frame::plain(Kind::ChunkRef, id.to_vec()));
        }
        self.buffer[..CHUNK_ID_LEN].copy_from_slice(&id);
        Ok(Frame { kind: Kind::Data, encodings: Encodings(Encodings::CHUNKED), payload: self.buffer })
    }
}

impl Chunker {
    /// A chunker with the public gear table and public (plain BLAKE3) chunk IDs.
    pub fn public(sizes: ChunkSizes) -> Chunker {
        Self::new(Cutter::new(cdc::default_gear(), sizes), ChunkIdKey::Public, sizes.max)
    }

    /// A chunker whose cut points and chunk IDs are keyed by `key` (a master key's write half).
    pub fn keyed(key: &WriteKey, sizes: ChunkSizes) -> Chunker {
        let gear = cdc::keyed_gear(&key.chunk_gear);
        Self::new(Cutter::new(gear, sizes), ChunkIdKey::for_key(key), sizes.max)
    }

    /// A keyed chunker that passes chunks in `known` on as references, without their content.
    pub fn deduplicating(key: &WriteKey, sizes: ChunkSizes, known: KnownChunks) -> Chunker {
        Chunker { known: Some(known), ..Self::keyed(key, sizes) }
    }

    fn new(cutter: Cutter, key: ChunkIdKey, max: usize) -> Chunker {
        Chunker { cutter, key, current: Self::fresh(max), max, known: None }
    }

    fn fresh(max: usize) -> Vec<u8> {
        let mut buffer = Vec::with_capacity(CHUNK_ID_LEN + max);
        buffer.resize(CHUNK_ID_LEN, 0);
        buffer
    }

    /// Hands the chunk being filled to a naming job and starts a new one.
    fn emit(&mut self, out: &mut Vec<Step<NameChunk>>) {
        let buffer = std::mem::replace(&mut self.current, Self::fresh(self.max));
        out.push(Step::Work(NameChunk { buffer, key: self.key.clone(), known: self.known.clone() }));
    }
}

impl Planner for Chunker {
    type Job = NameChunk;

    fn plan(&mut self, item: Item, out: &mut Vec<Step<NameChunk>>) -> Result<()> {
        let Some(frame) = split_item(item, out) else {
            return Ok(());
        };
        if frame.kind == Kind::Data && frame.encodings.0 == 0 {
            let mut data = &frame.payload[..];
            while let Some(cut) = self.cutter.find_cut(data) {
                self.current.extend_from_slice(&data[..cut]);
                data = &data[cut..];
                self.emit(out);
            }
            self.current.extend_from_slice(data);
            return Ok(());
        }
        // Any other frame ends the run of chunkable content before it.
        if self.current.len() > CHUNK_ID_LEN {
            self.emit(out);
        }
        self.cutter.restart();
        out.push(Step::Ready(Output::Frame(frame)));
        Ok(())
    }
}

/// The sequential half of `chunk -d`: strips chunk IDs, leaving plain Data;
/// with the key the IDs were made with, first checks each chunk against its ID.
pub struct Joiner {
    check: Option<ChunkIdKey>,
}

impl Joiner {
    /// A joiner that takes chunk IDs on trust (without the key they cannot be checked).
    pub fn unchecked() -> Joiner {
        Joiner { check: None }
    }

    /// A joiner that refuses (integrity error) a chunk whose content does not
    /// hash to its ID under `key`, before any byte of it is passed on.
    pub fn checking(key: ChunkIdKey) -> Joiner {
        Joiner { check: Some(key) }
    }
}

/// Removes the ID from one chunked Data frame, checking it first when given the key.
pub struct StripId(Frame, Option<ChunkIdKey>);

impl Job for StripId {
    fn run(self) -> Result<Frame> {
        let StripId(mut frame, check) = self;
        if let Some(key) = check {
            let (id, body) = frame.chunk_parts()?;
            if key.id(body) != *id {
                return Err(Error::integrity(format!(
                    "chunk {} does not match its ID: its content is not what the ID names (forged, or damaged \
                     before it was encrypted)",
                    hex::encode(&id[..8])
                )));
            }
        }
        frame.payload.drain(..CHUNK_ID_LEN);
        frame.encodings = frame.encodings.without(Encodings::CHUNKED);
        Ok(frame)
    }
}

impl Planner for Joiner {
    type Job = StripId;

    fn plan(&mut self, item: Item, out: &mut Vec<Step<StripId>>) -> Result<()> {
        let Some(frame) = split_item(item, out) else {
            return Ok(());
        };
        if frame.kind == Kind::ChunkRef {
            return Err(Error::other(crate::format::UNRESOLVED_REF));
        }
        if frame.kind != Kind::Data || !frame.encodings.has(Encodings::CHUNKED) {
            out.push(Step::Ready(Output::Frame(frame)));
            return Ok(());
        }
        crate::format::refuse_unknown_encodings(&frame)?;
        super::refuse_outer_layers(
            &frame,
            "chunk -d",
            &[(Encodings::ENCRYPTED, "encrypt -d"), (Encodings::ZSTD, "squeeze -d")],
        )?;
        if frame.payload.len() < CHUNK_ID_LEN {
            return Err(Error::integrity("chunked Data frame is shorter than its chunk ID"));
        }
        out.push(Step::Work(StripId(frame, self.check.clone())));
        Ok(())
    }
}
