//! What every source does the same way: opening a stream and ending a failed
//! one with an Abort frame, announcing an entry, and sending its content as
//! Data frames.

use std::io::{BufWriter, Read, Write};

use crate::error::{Error, Result};
use crate::filter::send_abort;
use crate::format::{new_stream_id, Frame, Kind};
use crate::meta::{Entry, EntryEnd, EntryType, RawPath};
use crate::progress::Progress;
use crate::writer::StreamWriter;

/// Content bytes per Data frame.
pub const BLOCK: usize = 1 << 20;

/// The writer a source's body writes frames to.
pub type SourceWriter<W> = StreamWriter<BufWriter<W>>;

/// Writes one stream to `output`: the preamble, then what `body` writes (its
/// Begin, entries and End). If `body` fails, the stream ends with an Abort
/// frame from `tool`, so nothing downstream takes it for a backup, and the
/// error is returned.
pub fn produce<W: Write>(tool: &str, output: W, body: impl FnOnce(&mut SourceWriter<W>) -> Result<()>) -> Result<()> {
    let mut writer = StreamWriter::new(BufWriter::with_capacity(crate::filter::IO_BUFFER, output));
    writer.start(new_stream_id())?;
    let result = body(&mut writer).and_then(|()| writer.flush());
    if let Err(err) = &result {
        if !err.is_broken_pipe() {
            send_abort(&mut writer, tool, err);
        }
    }
    result
}

/// Sends everything `content` yields as Data frames of [`BLOCK`] bytes, then
/// the EntryEnd frame with its size and BLAKE3 digest, which it returns.
/// `what` names the content in messages.
pub fn send_content<W: Write>(
    writer: &mut StreamWriter<W>,
    content: &mut dyn Read,
    progress: &Progress,
    what: &str,
) -> Result<EntryEnd> {
    let mut hasher = blake3::Hasher::new();
    let mut sent = 0u64;
    loop {
        let mut block = Vec::with_capacity(BLOCK);
        let got = content
            .take(BLOCK as u64)
            .read_to_end(&mut block)
            .map_err(|e| Error::io(format!("cannot read {what}"), e))?;
        if got == 0 {
            break;
        }
        hasher.update(&block);
        sent += got as u64;
        writer.write(&Frame::plain(Kind::Data, block))?;
        progress.add(got as u64);
    }
    let end = EntryEnd { size: sent, blake3: hasher.finalize().to_hex().to_string() };
    writer.write(&Frame::json(Kind::EntryEnd, &end))?;
    Ok(end)
}

/// Writes the Entry frame of a file entry whose size is not known in
/// advance (a database tool's output), private to its owner (mode 0600), as
/// of now.
pub fn write_entry<W: Write>(writer: &mut SourceWriter<W>, path: &str, role: &str) -> Result<()> {
    let entry = Entry {
        path: RawPath(path.as_bytes().to_vec()),
        entry_type: EntryType::File,
        role: role.to_string(),
        size: 0,
        mode: 0o600,
        mtime: chrono::Utc::now().timestamp(),
        mtime_ns: 0,
        uid: None,
        gid: None,
        target: None,
        links: None,
        xattrs: Vec::new(),
        attrs: Default::default(),
    };
    writer.write(&Frame::json(Kind::Entry, &entry))
}
