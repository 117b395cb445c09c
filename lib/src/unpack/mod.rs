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

use crate::error::{Error, Result};
use crate::meta::{Begin, End, Entry, EntryEnd};
use crate::sink::{consume, Consumer};
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
    let mut unpacker = Unpacker { options, stage: None, streams: 0 };
    let totals = consume("unpack", input, &mut unpacker, "nothing from it was written")?;
    Ok(UnpackSummary { streams: totals.streams, entries: totals.entries, bytes: totals.bytes })
}

/// Writes each stream of the input into a staging directory of its own and
/// commits it at its End.
struct Unpacker<'a> {
    options: &'a UnpackOptions,
    stage: Option<Stage>,
    /// Streams begun so far, which numbers their staging directories.
    streams: u64,
}

impl Unpacker<'_> {
    fn stage(&mut self) -> &mut Stage {
        self.stage.as_mut().expect("frames come after a preamble")
    }
}

impl Consumer for Unpacker<'_> {
    fn start(&mut self) -> Result<()> {
        let options = self.options;
        self.stage = Some(Stage::new(&options.dir, self.streams, options.force, options.xattrs)?);
        self.streams += 1;
        Ok(())
    }

    fn begin(&mut self, _begin: Begin) -> Result<()> {
        Ok(())
    }

    fn entry(&mut self, entry: Entry) -> Result<()> {
        self.stage().begin_entry(entry)
    }

    fn data(&mut self, content: Vec<u8>) -> Result<()> {
        self.stage().data(&content)
    }

    fn entry_end(&mut self, _end: EntryEnd) -> Result<()> {
        self.stage().end_entry()
    }

    fn end(&mut self, _end: End) -> Result<()> {
        self.stage.take().expect("a stream is open").commit(self.options.verbose)
    }
}
