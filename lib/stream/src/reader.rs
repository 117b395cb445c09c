//! Reading a stream: frames checked one by one (checksums, sequence, length
//! bound, grammar), across concatenated streams.

use std::io::Read;

use crate::error::{Error, Result};
use crate::format::{self, Frame, Header, Kind, StreamId, HEADER_LEN, PREAMBLE_LEN};

/// What the reader yields: the start of a stream, or one of its frames.
#[derive(Debug)]
pub enum Item {
    /// A preamble: a new stream starts (the first, or one concatenated after an End).
    Start(StreamId),
    /// A checked frame of the current stream.
    Frame(Frame),
}

/// Where in the stream grammar the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a preamble: at the start of input or after an End frame.
    BetweenStreams,
    /// After the preamble, before Begin; a Cipher frame may come first.
    AwaitBegin { cipher_seen: bool },
    /// Inside a stream, outside any entry.
    InStream,
    /// Inside an entry, before its EntryEnd.
    InEntry,
    /// After an Abort frame: nothing more is read.
    Aborted,
}

/// Reads and checks frames from a byte source.
///
/// Every frame's header checksum (seeded with the stream ID), payload
/// checksum, sequence number, length bound and position in the grammar are
/// checked before it is returned; any failure is an error naming the frame and
/// its byte offset. The reader never holds more than one frame in memory.
pub struct StreamReader<R: Read> {
    input: R,
    state: State,
    stream: StreamId,
    streams_seen: u64,
    next_sequence: u64,
    offset: u64,
}

impl<R: Read> StreamReader<R> {
    /// A reader over `input`, which should be buffered.
    pub fn new(input: R) -> Self {
        StreamReader {
            input,
            state: State::BetweenStreams,
            stream: [0; 16],
            streams_seen: 0,
            next_sequence: 0,
            offset: 0,
        }
    }

    /// The input.
    pub fn get_ref(&self) -> &R {
        &self.input
    }

    /// Bytes consumed from the input so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next item, or `None` at a clean end of input (after an End or Abort frame).
    pub fn next_item(&mut self) -> Result<Option<Item>> {
        match self.state {
            State::Aborted => Ok(None),
            State::BetweenStreams => self.read_preamble(),
            _ => self.read_frame().map(|f| Some(Item::Frame(f))),
        }
    }

    fn read_preamble(&mut self) -> Result<Option<Item>> {
        let mut bytes = [0u8; PREAMBLE_LEN];
        let got = self.fill(&mut bytes)?;
        if got == 0 {
            if self.streams_seen == 0 {
                return Err(Error::incomplete("empty input: expected a backpipe stream"));
            }
            return Ok(None);
        }
        if got < PREAMBLE_LEN && bytes[..got.min(format::MAGIC.len())] != format::MAGIC[..got.min(format::MAGIC.len())]
        {
            return Err(Error::integrity(format!("not a backpipe stream (bad magic at byte {})", self.offset)));
        }
        if got < PREAMBLE_LEN {
            return Err(Error::incomplete(format!(
                "input truncated inside the preamble at byte {}",
                self.offset + got as u64
            )));
        }
        let at = self.offset;
        let id = format::decode_preamble(&bytes).map_err(|e| e.context(format!("at byte {at}")))?;
        self.offset += PREAMBLE_LEN as u64;
        self.stream = id;
        self.streams_seen += 1;
        self.next_sequence = 0;
        self.state = State::AwaitBegin { cipher_seen: false };
        Ok(Some(Item::Start(id)))
    }

    fn read_frame(&mut self) -> Result<Frame> {
        let at = self.offset;
        let number = self.next_sequence;
        let mut header_bytes = [0u8; HEADER_LEN];
        let got = self.fill(&mut header_bytes)?;
        if got == 0 {
            return Err(Error::incomplete(format!(
                "input ended at byte {at} before the End frame (the stream is incomplete)"
            )));
        }
        if got < HEADER_LEN {
            return Err(Error::incomplete(format!("input truncated inside the header of frame {number} at byte {at}")));
        }
        let header = Header::decode(&header_bytes, &self.stream)
            .map_err(|e| e.context(format!("frame {number} at byte {at}")))?;
        if header.sequence != number {
            return Err(Error::integrity(format!(
                "frame at byte {at}: expected frame {number}, found frame {} (a frame was dropped, repeated or reordered)",
                header.sequence
            )));
        }
        let describe = || format!("frame {number} ({}, {} bytes) at byte {at}", header.kind.name(), header.length);
        let mut payload = vec![0u8; header.length as usize];
        let got = self.fill(&mut payload)?;
        if got < payload.len() {
            return Err(Error::incomplete(format!("input truncated inside {}", describe())));
        }
        if crc32c::crc32c(&payload) != header.payload_crc {
            return Err(Error::integrity(format!("{}: payload checksum mismatch", describe())));
        }
        self.offset += (HEADER_LEN + payload.len()) as u64;
        self.next_sequence += 1;
        self.advance(header.kind).map_err(|e| e.context(describe()))?;
        Ok(Frame { kind: header.kind, encodings: header.encodings, payload })
    }

    /// Moves the grammar state machine on by one frame kind.
    fn advance(&mut self, kind: Kind) -> Result<()> {
        use State::*;
        let misplaced = |what: &str| Err(Error::integrity(format!("{} {what}", kind.name())));
        self.state = match (self.state, kind) {
            (_, Kind::Abort) => Aborted,
            (AwaitBegin { cipher_seen: false }, Kind::Cipher) => AwaitBegin { cipher_seen: true },
            (AwaitBegin { .. }, Kind::Begin) => InStream,
            (AwaitBegin { .. }, _) => return misplaced("where the stream must open with Begin"),
            (InStream, Kind::Entry) => InEntry,
            (InStream, Kind::End) => BetweenStreams,
            (InStream, Kind::Unknown(_)) => InStream,
            (InStream, _) => return misplaced("outside an entry"),
            (InEntry, Kind::Data | Kind::ChunkRef | Kind::Unknown(_)) => InEntry,
            (InEntry, Kind::EntryEnd) => InStream,
            (InEntry, _) => return misplaced("inside an open entry"),
            (BetweenStreams | Aborted, _) => unreachable!("frames are read only inside a stream"),
        };
        Ok(())
    }

    /// Reads until `buf` is full or the input ends; returns the bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.input.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("cannot read the input stream", e)),
            }
        }
        Ok(got)
    }
}
