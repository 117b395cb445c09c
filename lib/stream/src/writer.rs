//! Writing a stream: preamble, then frames numbered and checksummed in order.

use std::io::Write;

use crate::error::{Error, Result};
use crate::format::{self, Frame, Header, Kind, StreamId};

/// Writes frames to a byte sink, assigning sequence numbers and checksums.
pub struct StreamWriter<W: Write> {
    output: W,
    stream: StreamId,
    next_sequence: u64,
    /// A stream is started and not yet closed by End or Abort.
    open: bool,
}

impl<W: Write> StreamWriter<W> {
    /// A writer over `output`, which should be buffered. Call [`start`](Self::start) first.
    pub fn new(output: W) -> Self {
        StreamWriter { output, stream: [0; 16], next_sequence: 0, open: false }
    }

    /// Opens a stream with the given ID by writing its preamble.
    pub fn start(&mut self, stream: StreamId) -> Result<()> {
        self.stream = stream;
        self.next_sequence = 0;
        self.open = true;
        self.put(&format::encode_preamble(&stream))
    }

    /// Writes one frame of the current stream.
    pub fn write(&mut self, frame: &Frame) -> Result<()> {
        if frame.payload.len() > format::MAX_PAYLOAD {
            return Err(Error::other(format!(
                "cannot write a {} frame of {} bytes: the limit is {}",
                frame.kind.name(),
                frame.payload.len(),
                format::MAX_PAYLOAD
            )));
        }
        let header = Header {
            kind: frame.kind,
            encodings: frame.encodings,
            length: frame.payload.len() as u32,
            sequence: self.next_sequence,
            payload_crc: crc32c::crc32c(&frame.payload),
        };
        self.put(&header.encode(&self.stream))?;
        self.put(&frame.payload)?;
        self.next_sequence += 1;
        self.open = !matches!(frame.kind, Kind::End | Kind::Abort);
        Ok(())
    }

    /// The sink, once writing is done.
    pub fn into_inner(self) -> W {
        self.output
    }

    /// True between a stream's preamble and its End or Abort frame.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Flushes buffered bytes to the sink.
    pub fn flush(&mut self) -> Result<()> {
        self.output.flush().map_err(|e| Error::io("cannot write the output stream", e))
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.output.write_all(bytes).map_err(|e| Error::io("cannot write the output stream", e))?;
        Ok(())
    }
}
