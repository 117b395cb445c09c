//! The checked sink: reading a plain stream at the end of a pipeline, as
//! `unpack` and every `restore-<engine>` do. One loop for all of them: it
//! refuses what only another stage can undo (an Abort from upstream,
//! encrypted frames, unresolved chunk references, encodings not removed),
//! checks every entry's content against the size and digest its EntryEnd
//! frame records and every stream's End frame against what the stream held,
//! and hands each part to a [`Consumer`]. A consumer acts on an entry's
//! content only once [`Consumer::entry_end`] says it checked, or keeps what
//! it did undoable until then.

use std::io::Read;

use crate::error::{Error, Result};
use crate::filter::aborted_upstream;
use crate::format::{require_plain, Kind, UNRESOLVED_REF};
use crate::meta::{Begin, End, Entry, EntryEnd};
use crate::progress::Progress;
use crate::reader::{Item, StreamReader};

/// What a tool at the end of a pipeline does with a stream's parts, in the
/// order the stream holds them.
pub trait Consumer {
    /// A stream starts (a concatenated input holds several, one after another).
    fn start(&mut self) -> Result<()> {
        Ok(())
    }

    /// The stream's Begin frame.
    fn begin(&mut self, begin: Begin) -> Result<()>;

    /// An entry starts.
    fn entry(&mut self, entry: Entry) -> Result<()>;

    /// A piece of the open entry's content, not yet checked (the entry's
    /// digest is checked at its end).
    fn data(&mut self, content: Vec<u8>) -> Result<()>;

    /// The open entry ended; its size and digest matched what was read.
    fn entry_end(&mut self, end: EntryEnd) -> Result<()>;

    /// The stream ended; its End frame's totals matched what was read.
    fn end(&mut self, end: End) -> Result<()>;
}

/// What a checked read went through.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Streams read to their End.
    pub streams: u64,
    /// Entries checked.
    pub entries: u64,
    /// Content bytes checked.
    pub bytes: u64,
}

/// The entry being read.
struct OpenEntry {
    name: String,
    hasher: blake3::Hasher,
    size: u64,
}

/// Reads `input` (one stream or several concatenated) to its end, checking
/// it as the module says and handing its parts to `consumer`. `tool` names
/// the reader in messages; `aborted` says what a stream aborted upstream
/// leaves behind (for example "nothing from it was written").
pub fn consume(tool: &str, input: impl Read, consumer: &mut impl Consumer, aborted: &str) -> Result<Totals> {
    let progress = Progress::for_stage(tool);
    let mut reader = StreamReader::new(std::io::BufReader::with_capacity(crate::filter::IO_BUFFER, input));
    let mut totals = Totals::default();
    let mut stream = Totals::default();
    let mut open: Option<OpenEntry> = None;
    while let Some(item) = reader.next_item()? {
        let frame = match item {
            Item::Start(_) => {
                stream = Totals::default();
                consumer.start()?;
                continue;
            }
            Item::Frame(frame) => frame,
        };
        match frame.kind {
            Kind::Abort => return Err(aborted_upstream(&frame).with_note(aborted)),
            Kind::Cipher => {
                return Err(Error::other(format!("the stream is encrypted; run `encrypt -d` before {tool}")))
            }
            Kind::ChunkRef => return Err(Error::other(UNRESOLVED_REF)),
            Kind::Unknown(_) => continue,
            _ => require_plain(&frame, tool)?,
        }
        match frame.kind {
            Kind::Begin => {
                let begin: Begin = frame.parse_json()?;
                if let Some(total) = begin.expected_bytes {
                    progress.set_total(total);
                }
                consumer.begin(begin)?;
            }
            Kind::Entry => {
                let entry: Entry = frame.parse_json()?;
                let name = entry.path.display().to_string();
                consumer.entry(entry)?;
                open = Some(OpenEntry { name, hasher: blake3::Hasher::new(), size: 0 });
            }
            Kind::Data => {
                let entry = open.as_mut().ok_or_else(|| Error::integrity("a Data frame outside an entry"))?;
                entry.hasher.update(&frame.payload);
                entry.size += frame.payload.len() as u64;
                progress.add(frame.payload.len() as u64);
                consumer.data(frame.payload)?;
            }
            Kind::EntryEnd => {
                let entry = open.take().ok_or_else(|| Error::integrity("an EntryEnd frame outside an entry"))?;
                let end: EntryEnd = frame.parse_json()?;
                let digest = entry.hasher.finalize().to_hex().to_string();
                if entry.size != end.size || !digest.eq_ignore_ascii_case(&end.blake3) {
                    return Err(Error::integrity(format!(
                        "'{}': content does not match its digest ({} bytes received, {} expected); the data was \
                         altered after the source read it",
                        entry.name, entry.size, end.size
                    )));
                }
                stream.entries += 1;
                stream.bytes += end.size;
                consumer.entry_end(end)?;
            }
            Kind::End => {
                let end: End = frame.parse_json()?;
                if (stream.entries, stream.bytes) != (end.entries, end.bytes) {
                    return Err(Error::integrity(format!(
                        "the stream holds {} entries and {} bytes but its End frame says {} and {}",
                        stream.entries, stream.bytes, end.entries, end.bytes
                    )));
                }
                consumer.end(end)?;
                totals.streams += 1;
                totals.entries += stream.entries;
                totals.bytes += stream.bytes;
            }
            _ => {}
        }
    }
    progress.finish();
    Ok(totals)
}
