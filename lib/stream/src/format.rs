//! The byte layout of the backpipe stream: preamble, frame header, frame kinds
//! and payload encodings. docs/FORMAT.md is the specification; this module is
//! its only implementation.

use crate::error::{Error, Result};

/// The first eight bytes of every stream.
pub const MAGIC: [u8; 8] = *b"BACKPIPE";

/// The stream format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Size in bytes of the preamble that opens every stream.
pub const PREAMBLE_LEN: usize = 32;

/// Size in bytes of every frame header.
pub const HEADER_LEN: usize = 24;

/// Hard upper bound on a frame payload. Every reader refuses larger frames, so
/// the memory any tool needs is bounded by this, never by the input size.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Largest payload a producer may put in a frame before any encoding is
/// applied, leaving room for the encodings' own overhead within [`MAX_PAYLOAD`].
pub const MAX_PLAIN_PAYLOAD: usize = 16 * 1024 * 1024;

/// Why a ChunkRef cannot be used where content is needed.
pub const UNRESOLVED_REF: &str =
    "the stream holds a reference to a chunk stored in a repository; `fetch` puts the chunk back in its place";

/// Length of a chunk ID, which prefixes the payload of a chunked Data frame.
pub const CHUNK_ID_LEN: usize = 32;

/// A frame's kind, the first byte of its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Opens a stream: JSON metadata about the backup.
    Begin,
    /// Opens an entry (a file, directory, symlink, log, dump): JSON metadata.
    Entry,
    /// A piece of the open entry's content.
    Data,
    /// Closes the open entry: its size and content digest (JSON).
    EntryEnd,
    /// Closes a complete stream: totals (JSON).
    End,
    /// Closes an incomplete stream: the producer failed (JSON reason).
    Abort,
    /// Key-setup parameters written by `encrypt` (JSON), never itself encrypted.
    Cipher,
    /// A chunk the repository already holds, by its 32-byte ID alone (in place of its Data frame).
    ChunkRef,
    /// A kind this build does not know; passed through untouched.
    Unknown(u8),
}

impl Kind {
    /// The kind's byte in the frame header.
    pub fn code(self) -> u8 {
        match self {
            Kind::Begin => 1,
            Kind::Entry => 2,
            Kind::Data => 3,
            Kind::EntryEnd => 4,
            Kind::End => 5,
            Kind::Abort => 6,
            Kind::Cipher => 7,
            Kind::ChunkRef => 8,
            Kind::Unknown(code) => code,
        }
    }

    /// The kind for a header byte.
    pub fn from_code(code: u8) -> Kind {
        match code {
            1 => Kind::Begin,
            2 => Kind::Entry,
            3 => Kind::Data,
            4 => Kind::EntryEnd,
            5 => Kind::End,
            6 => Kind::Abort,
            7 => Kind::Cipher,
            8 => Kind::ChunkRef,
            other => Kind::Unknown(other),
        }
    }

    /// A short name for messages and listings.
    pub fn name(self) -> String {
        match self {
            Kind::Begin => "Begin".into(),
            Kind::Entry => "Entry".into(),
            Kind::Data => "Data".into(),
            Kind::EntryEnd => "EntryEnd".into(),
            Kind::End => "End".into(),
            Kind::Abort => "Abort".into(),
            Kind::Cipher => "Cipher".into(),
            Kind::ChunkRef => "ChunkRef".into(),
            Kind::Unknown(code) => format!("kind-{code:#04x}"),
        }
    }
}

/// The encodings applied to a frame's payload, the second header byte.
///
/// Applied innermost first: chunked, then compressed, then encrypted. Each
/// reverse filter undoes only its own bit and refuses a payload whose outer
/// layers it cannot see through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Encodings(pub u8);

impl Encodings {
    /// Payload is a chunk: a 32-byte chunk ID, then the chunk body.
    pub const CHUNKED: u8 = 0x01;
    /// Payload (or chunk body) is one zstd frame.
    pub const ZSTD: u8 = 0x02;
    /// Payload (or chunk body) is AES-256-GCM ciphertext.
    pub const ENCRYPTED: u8 = 0x04;
    /// Every bit this build understands.
    pub const KNOWN: u8 = Self::CHUNKED | Self::ZSTD | Self::ENCRYPTED;

    /// True when every bit in `bits` is set.
    pub fn has(self, bits: u8) -> bool {
        self.0 & bits == bits
    }

    /// These encodings with `bits` added.
    pub fn with(self, bits: u8) -> Encodings {
        Encodings(self.0 | bits)
    }

    /// These encodings with `bits` removed.
    pub fn without(self, bits: u8) -> Encodings {
        Encodings(self.0 & !bits)
    }

    /// True when a bit this build does not know is set.
    pub fn has_unknown(self) -> bool {
        self.0 & !Self::KNOWN != 0
    }

    /// Names of the set bits, innermost first, for listings ("chunked,zstd").
    pub fn describe(self) -> String {
        let mut names = Vec::new();
        if self.has(Self::CHUNKED) {
            names.push("chunked".to_string());
        }
        if self.has(Self::ZSTD) {
            names.push("zstd".to_string());
        }
        if self.has(Self::ENCRYPTED) {
            names.push("encrypted".to_string());
        }
        if self.has_unknown() {
            names.push(format!("unknown:{:#04x}", self.0 & !Self::KNOWN));
        }
        names.join(",")
    }
}

/// The random identity of one stream, carried in its preamble and mixed into
/// every frame header checksum, so frames spliced in from another stream fail.
pub type StreamId = [u8; 16];

/// Makes a fresh random stream ID.
pub fn new_stream_id() -> StreamId {
    let mut id = [0u8; 16];
    crate::random::fill(&mut id);
    id
}

/// Encodes the 32-byte preamble for a stream.
pub fn encode_preamble(id: &StreamId) -> [u8; PREAMBLE_LEN] {
    let mut out = [0u8; PREAMBLE_LEN];
    out[0..8].copy_from_slice(&MAGIC);
    out[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // bytes 10..12: flags, reserved, zero
    out[12..28].copy_from_slice(id);
    let crc = crc32c::crc32c(&out[0..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and checks a preamble, returning the stream ID.
pub fn decode_preamble(bytes: &[u8; PREAMBLE_LEN]) -> Result<StreamId> {
    if bytes[0..8] != MAGIC {
        return Err(Error::integrity("not a backpipe stream (bad magic in the preamble)"));
    }
    let stored = u32::from_le_bytes(bytes[28..32].try_into().unwrap());
    if crc32c::crc32c(&bytes[0..28]) != stored {
        return Err(Error::integrity("preamble checksum mismatch (the stream header is damaged)"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(Error::other(format!(
            "stream format version {version} is not supported (this build reads version {FORMAT_VERSION})"
        )));
    }
    let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
    if flags != 0 {
        return Err(Error::other(format!("preamble flags {flags:#06x} are not supported")));
    }
    Ok(bytes[12..28].try_into().unwrap())
}

/// The fields of a frame header, as decoded from or encoded to 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame kind.
    pub kind: Kind,
    /// The payload encodings.
    pub encodings: Encodings,
    /// Payload length in bytes.
    pub length: u32,
    /// Position of the frame in its stream, counting from 0 after the preamble.
    pub sequence: u64,
    /// CRC-32C of the payload.
    pub payload_crc: u32,
}

/// The checksum over a header's first 20 bytes, seeded with the stream ID.
fn header_crc(id: &StreamId, first20: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(id), first20)
}

impl Header {
    /// Encodes the header for a stream, computing its own checksum.
    pub fn encode(&self, id: &StreamId) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.kind.code();
        out[1] = self.encodings.0;
        // bytes 2..4: reserved, zero
        out[4..8].copy_from_slice(&self.length.to_le_bytes());
        out[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        out[16..20].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = header_crc(id, &out[0..20]);
        out[20..24].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header, checking its checksum, reserved bytes and length bound.
    /// Errors name only the problem; the reader adds the position.
    pub fn decode(bytes: &[u8; HEADER_LEN], id: &StreamId) -> Result<Header> {
        let stored = u32::from_le_bytes(bytes[20..24].try_into().unwrap());
        if header_crc(id, &bytes[0..20]) != stored {
            return Err(Error::integrity(
                "frame header checksum mismatch (damaged, or a frame spliced in from another stream)",
            ));
        }
        if bytes[2] != 0 || bytes[3] != 0 {
            return Err(Error::integrity("reserved header bytes are not zero"));
        }
        let length = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        if length as usize > MAX_PAYLOAD {
            return Err(Error::integrity(format!("frame length {length} exceeds the limit of {MAX_PAYLOAD} bytes")));
        }
        Ok(Header {
            kind: Kind::from_code(bytes[0]),
            encodings: Encodings(bytes[1]),
            length,
            sequence: u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
            payload_crc: u32::from_le_bytes(bytes[16..20].try_into().unwrap()),
        })
    }
}

/// One frame as tools handle it: kind, encodings and payload. Sequence numbers
/// and checksums belong to the wire and are assigned by the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame kind.
    pub kind: Kind,
    /// The payload encodings.
    pub encodings: Encodings,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame with no encodings.
    pub fn plain(kind: Kind, payload: Vec<u8>) -> Frame {
        Frame { kind, encodings: Encodings::default(), payload }
    }

    /// A frame whose payload is the JSON encoding of `value`.
    pub fn json<T: serde::Serialize>(kind: Kind, value: &T) -> Frame {
        let payload = serde_json::to_vec(value).expect("metadata always serializes");
        Frame::plain(kind, payload)
    }

    /// Decodes the JSON payload of an unencoded metadata frame.
    pub fn parse_json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        if self.encodings.0 != 0 {
            return Err(Error::other(format!(
                "{} frame is {}; undo that first (encrypt -d, squeeze -d)",
                self.kind.name(),
                self.encodings.describe()
            )));
        }
        serde_json::from_slice(&self.payload)
            .map_err(|e| Error::integrity(format!("{} frame holds invalid metadata: {e}", self.kind.name())))
    }

    /// For a ChunkRef frame: the chunk ID it stands for (a bare ID, no encodings).
    pub fn chunk_ref_id(&self) -> Result<[u8; CHUNK_ID_LEN]> {
        match (self.encodings.0, <[u8; CHUNK_ID_LEN]>::try_from(&self.payload[..])) {
            (0, Ok(id)) => Ok(id),
            _ => Err(Error::integrity("a ChunkRef frame is malformed")),
        }
    }

    /// For a chunked Data frame: the chunk ID and the (possibly encoded) body.
    pub fn chunk_parts(&self) -> Result<(&[u8; CHUNK_ID_LEN], &[u8])> {
        if self.payload.len() < CHUNK_ID_LEN {
            return Err(Error::integrity("chunked Data frame is shorter than its chunk ID"));
        }
        let (id, body) = self.payload.split_at(CHUNK_ID_LEN);
        Ok((id.try_into().unwrap(), body))
    }

    /// The encodable body: after the chunk ID for chunked Data frames, the
    /// whole payload otherwise. Fails for a chunked frame too short to hold its ID.
    pub fn body(&self) -> Result<&[u8]> {
        if self.body_start() > 0 {
            return self.chunk_parts().map(|(_, body)| body);
        }
        Ok(&self.payload)
    }

    /// The offset where the encodable body starts: after the chunk ID for
    /// chunked frames, at 0 otherwise. Codecs transform only `payload[body_start()..]`.
    pub fn body_start(&self) -> usize {
        if self.kind == Kind::Data && self.encodings.has(Encodings::CHUNKED) {
            CHUNK_ID_LEN
        } else {
            0
        }
    }
}

/// Refuses a frame whose payload carries an encoding bit this build does not know.
pub fn refuse_unknown_encodings(frame: &Frame) -> Result<()> {
    if frame.encodings.has_unknown() {
        return Err(Error::other(format!(
            "{} frame has an encoding this version does not know ({}); use a newer backpipe",
            frame.kind.name(),
            frame.encodings.describe()
        )));
    }
    Ok(())
}

/// Refuses a frame that `consumer`, a sink, cannot read as plain content,
/// naming the reverse filter to run first.
pub fn require_plain(frame: &Frame, consumer: &str) -> Result<()> {
    refuse_unknown_encodings(frame)?;
    if frame.encodings.0 != 0 {
        let undo = if frame.encodings.has(Encodings::ENCRYPTED) {
            "encrypt -d"
        } else if frame.encodings.has(Encodings::ZSTD) {
            "squeeze -d"
        } else {
            "chunk -d"
        };
        return Err(Error::other(format!(
            "{} frame is {}; run `{undo}` before {consumer}",
            frame.kind.name(),
            frame.encodings.describe()
        )));
    }
    Ok(())
}
