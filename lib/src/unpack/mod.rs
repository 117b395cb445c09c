//! `unpack`: writes a stream's entries under a directory, verifying every
//! entry's size and digest.
//!
//! Entries are written into a private staging directory inside the target
//! and moved into place only when their stream's End frame has arrived and
//! every digest matched, all top-level names together or none, so an
//! incomplete or damaged stream leaves the target as it was. In a
//! concatenated input each stream commits at its own End. Paths are checked
//! (relative, no `..`), parents are only ever directories the same stream
//! created, and nothing is written through a symlink. Staging directories
//! left by a killed run are removed by the next run on the same target.

mod paths;
mod stage;

use std::io::Read;
use std::path::PathBuf;

use crate::codec::require_plain;
use crate::error::{Error, Result};
use crate::filter::describe_abort;
use crate::format::Kind;
use crate::meta::{Begin, End};
use crate::progress::Progress;
use crate::reader::{Item, StreamReader};
use stage::Stage;

/// Options for [`unpack`].
pub struct UnpackOptions {
    /// The directory entries are written under (created if missing).
    pub dir: PathBuf,
    /// Replace existing entries with the same top-level name, as whole trees.
    pub force: bool,
    /// Print each entry's path on stderr as it is committed.
    pub verbose: bool,
    /// Restore extended attributes (ACLs and capabilities included).
    pub xattrs: bool,
}

/// What an unpack run wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UnpackSummary {
    /// Streams committed.
    pub streams: u64,
    /// Entries written.
    pub entries: u64,
    /// Content bytes written.
    pub bytes: u64,
}

/// Reads a stream (or concatenated streams) from `input` and writes its
/// entries under `options.dir`.
pub fn unpack(input: impl Read, options: &UnpackOptions) -> Result<UnpackSummary> {
    std::fs::create_dir_all(&options.dir)
        .map_err(|e| Error::io(format!("cannot create '{}'", options.dir.display()), e))?;
    for note in crate::workdir::remove_stale(&options.dir, paths::STAGING_PREFIX) {
        crate::notice::notice(&note);
    }
    let progress = Progress::for_stage("unpack");
    let mut reader = StreamReader::new(std::io::BufReader::with_capacity(crate::filter::IO_BUFFER, input));
    let mut summary = UnpackSummary::default();
    let mut stage: Option<Stage> = None;
    while let Some(item) = reader.next_item()? {
        let frame = match item {
            Item::Start(_) => {
                stage = Some(Stage::new(&options.dir, summary.streams, options.force, options.xattrs)?);
                continue;
            }
            Item::Frame(frame) => frame,
        };
        let current = stage.as_mut().expect("frames come after a preamble");
        match frame.kind {
            Kind::Begin => {
                require_plain(&frame, "unpack")?;
                if let Some(total) = frame.parse_json::<Begin>()?.expected_bytes {
                    progress.set_total(total);
                }
            }
            Kind::Entry => {
                require_plain(&frame, "unpack")?;
                current.begin_entry(frame.parse_json()?)?;
            }
            Kind::Data => {
                require_plain(&frame, "unpack")?;
                current.data(&frame)?;
                progress.add(frame.payload.len() as u64);
            }
            Kind::EntryEnd => {
                require_plain(&frame, "unpack")?;
                current.end_entry(frame.parse_json()?)?;
            }
            Kind::End => {
                require_plain(&frame, "unpack")?;
                let end: End = frame.parse_json()?;
                let done = stage.take().expect("a stream is open");
                let (entries, bytes) = done.totals;
                if (entries, bytes) != (end.entries, end.bytes) {
                    return Err(Error::integrity(format!(
                        "the stream holds {entries} entries and {bytes} bytes but its End frame says {} and {}",
                        end.entries, end.bytes
                    )));
                }
                done.commit(options.verbose)?;
                summary.streams += 1;
                summary.entries += entries;
                summary.bytes += bytes;
            }
            Kind::Abort => {
                return Err(Error::incomplete(format!(
                    "the stream was aborted upstream: {}; nothing from it was written",
                    describe_abort(&frame)
                )))
            }
            Kind::Cipher => return Err(Error::other("the stream is encrypted; run `encrypt -d` before unpack")),
            Kind::ChunkRef => return Err(Error::other(crate::format::UNRESOLVED_REF)),
            Kind::Unknown(_) => {}
        }
    }
    progress.finish();
    Ok(summary)
}
