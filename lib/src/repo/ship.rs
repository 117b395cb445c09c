//! `ship`: stores a stream (or concatenated streams) in the repository, one
//! snapshot per stream, and returns a receipt for each.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, Write};

use serde::Serialize;

use super::pack::PackWriter;
use super::snapshot::{self, Summary};
use super::Repository;
use crate::codec::crypt::{CipherParams, Decryptor};
use crate::error::{Error, Result};
use crate::filter::{describe_abort, run_inline, Output};
use crate::format::{Encodings, Frame, Kind, StreamId, CHUNK_ID_LEN};
use crate::meta::{Begin, End};
use crate::progress::Progress;
use crate::reader::{Item, StreamReader};
use crate::writer::StreamWriter;

/// What `ship` prints for each stored stream (one JSON line), for post-backup actions.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    /// The new snapshot's ID.
    pub snapshot: String,
    /// The stored stream's summary: engine, kind, time, positions, sizes.
    #[serde(flatten)]
    pub summary: Summary,
    /// Stored bytes of the stream's chunks that the repository already held.
    pub deduplicated_bytes: u64,
}

const NOT_ENCRYPTED: &str =
    "ship stores streams encrypted with the repository's key: put `encrypt --repo R` before `ship R` in the pipeline";

/// What ship knows of a chunk the repository holds.
struct Known {
    /// Its stored size.
    stored: u64,
    /// The pack holding it, when `prune` has marked that pack for deletion.
    marked_pack: Option<String>,
}

/// A skeleton on its way to the repository, spooled to an unnamed temporary
/// file (it grows with the backup) and hashed as it is written.
struct Spool {
    file: std::io::BufWriter<std::fs::File>,
    hasher: blake3::Hasher,
}

impl Spool {
    fn new() -> Result<Spool> {
        let file = tempfile::tempfile().map_err(|e| Error::io("cannot create a temporary file for the skeleton", e))?;
        Ok(Spool {
            file: std::io::BufWriter::with_capacity(crate::filter::IO_BUFFER, file),
            hasher: blake3::Hasher::new(),
        })
    }

    /// The skeleton's hash, and the file rewound to read it back.
    fn finish(self) -> Result<([u8; 32], std::fs::File)> {
        let failed = |e: std::io::Error| Error::io("cannot spool the skeleton", e);
        let mut file = self.file.into_inner().map_err(|e| failed(e.into_error()))?;
        file.rewind().map_err(failed)?;
        Ok((*self.hasher.finalize().as_bytes(), file))
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf).map_err(|e| {
            let err = Error::io("cannot spool the skeleton to a temporary file (in $TMPDIR, else /tmp)", e);
            std::io::Error::other(err)
        })?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// One stream being shipped.
struct Shipment {
    /// Marked packs this stream refers to: unmarked before its snapshot is stored.
    revived: HashSet<String>,
    /// Whether the stream's first frame has been seen (it must be Cipher).
    opened: bool,
    skeleton: StreamWriter<Spool>,
    stream_id: StreamId,
    begin: Option<Begin>,
    started_at: u64,
    chunks: u64,
    new_chunks: u64,
    new_bytes: u64,
    deduplicated_bytes: u64,
}

/// Feeds an item to the decryptor and returns the frames it yields.
fn decrypt(decryptor: &mut Decryptor, item: Item) -> Result<Vec<Frame>> {
    Ok(run_inline(decryptor, item)?
        .into_iter()
        .filter_map(|output| match output {
            Output::Frame(frame) => Some(frame),
            Output::Start(_) => None,
        })
        .collect())
}

fn chunk_ref(id: &[u8]) -> Frame {
    Frame::plain(Kind::ChunkRef, id.to_vec())
}

/// Reads streams from `input` and stores each as a snapshot. A stream is
/// stored only when it is complete (End frame) and authenticates under the
/// repository's key; otherwise nothing of it becomes visible.
pub fn ship(repo: &Repository, input: impl Read, mut receipt: impl FnMut(&Receipt) -> Result<()>) -> Result<()> {
    let progress = Progress::for_stage("ship");
    // Every chunk the repository holds: its stored size, and whether new data
    // may be deduplicated against it (not when `prune` has marked its pack).
    // References made before the mark are still honoured: the grace period covers them.
    let marked = super::prune::marked(repo.storage())?;
    let mut known: HashMap<[u8; CHUNK_ID_LEN], Known> = repo
        .chunk_index()?
        .into_iter()
        .map(|(id, at)| {
            let marked_pack = marked.contains(&*at.pack).then(|| at.pack.to_string());
            (id, Known { stored: at.length as u64, marked_pack })
        })
        .collect();
    let mut packs = PackWriter::new(repo.storage());
    let (mut decryptor, opener) = Decryptor::in_transit(repo.write_key().duplicate());
    let mut reader = StreamReader::new(std::io::BufReader::with_capacity(crate::filter::IO_BUFFER, input));
    let mut current: Option<Shipment> = None;
    while let Some(item) = reader.next_item()? {
        progress.set(reader.offset());
        let frame = match item {
            Item::Start(id) => {
                let mut skeleton = StreamWriter::new(Spool::new()?);
                skeleton.start(id)?;
                decrypt(&mut decryptor, Item::Start(id))?;
                current = Some(Shipment {
                    revived: HashSet::new(),
                    opened: false,
                    skeleton,
                    stream_id: id,
                    begin: None,
                    started_at: reader.offset() - crate::format::PREAMBLE_LEN as u64,
                    chunks: 0,
                    new_chunks: 0,
                    new_bytes: 0,
                    deduplicated_bytes: 0,
                });
                continue;
            }
            Item::Frame(frame) => frame,
        };
        let ship = current.as_mut().expect("frames come after a preamble");
        if !ship.opened && !matches!(frame.kind, Kind::Cipher | Kind::Abort) {
            return Err(Error::usage(NOT_ENCRYPTED));
        }
        ship.opened = true;
        if frame.kind == Kind::Data && !frame.encodings.has(Encodings::CHUNKED) {
            return Err(Error::usage(
                "ship stores chunked content only: put `chunk --repo R` before `ship R` in the pipeline",
            ));
        }
        let is_chunk = frame.kind == Kind::Data;
        if is_chunk || frame.kind == Kind::ChunkRef {
            let id: [u8; CHUNK_ID_LEN] = if is_chunk {
                if !frame.encodings.has(Encodings::ENCRYPTED) {
                    return Err(Error::usage(NOT_ENCRYPTED));
                }
                *frame.chunk_parts()?.0
            } else {
                frame.chunk_ref_id()?
            };
            ship.chunks += 1;
            match known.get(&id) {
                Some(held) if held.marked_pack.is_none() || !is_chunk => {
                    ship.deduplicated_bytes += held.stored;
                    if let Some(pack) = &held.marked_pack {
                        ship.revived.insert(pack.clone());
                    }
                }
                _ if !is_chunk => {
                    return Err(Error::integrity(format!(
                        "the stream refers to chunk {} which the repository does not hold",
                        hex::encode(&id[..8])
                    )))
                }
                _ => {
                    // The chunk must open with this stream's keys and be bound to its ID
                    // before it is stored and later backups deduplicate against it.
                    opener.check(&frame).map_err(|e| e.context("ship"))?;
                    packs.add(id, frame.encodings, &frame.payload)?;
                    known.insert(id, Known { stored: frame.payload.len() as u64, marked_pack: None });
                    ship.new_chunks += 1;
                    ship.new_bytes += frame.payload.len() as u64;
                }
            }
            let reference = chunk_ref(&id);
            ship.skeleton.write(&reference)?;
            decrypt(&mut decryptor, Item::Frame(reference))?;
            continue;
        }
        if frame.kind == Kind::Cipher {
            // The transit copy of the stream secret opens with the write key: it never reaches the repository.
            let params: CipherParams = frame.parse_json()?;
            ship.skeleton.write(&Frame::json(Kind::Cipher, &params.without_transit()))?;
        } else {
            ship.skeleton.write(&frame)?;
        }
        for plain in decrypt(&mut decryptor, Item::Frame(frame))? {
            match plain.kind {
                Kind::Begin => {
                    // Refused before anything of it is stored: every reader relies on these fields.
                    let begin: Begin = plain.parse_json()?;
                    snapshot::check_begin(&begin).map_err(|why| {
                        Error::integrity(format!(
                            "the stream's Begin frame is not valid ({why}); no snapshot was stored"
                        ))
                    })?;
                    ship.begin = Some(begin);
                }
                Kind::Abort => {
                    return Err(Error::incomplete(format!(
                        "the stream was aborted upstream: {}; no snapshot was stored",
                        describe_abort(&plain)
                    )))
                }
                Kind::End => {
                    let end: End = plain.parse_json()?;
                    let done = current.take().expect("a stream is open");
                    let stream_bytes = reader.offset() - done.started_at;
                    let stored = finish(repo, &mut packs, done, end, stream_bytes)?;
                    receipt(&stored)?;
                    break;
                }
                _ => {}
            }
        }
    }
    progress.finish();
    Ok(())
}

/// Makes a complete stream's packs durable, then stores its snapshot.
fn finish(repo: &Repository, packs: &mut PackWriter, done: Shipment, end: End, stream_bytes: u64) -> Result<Receipt> {
    packs.flush()?;
    let begin = done.begin.ok_or_else(|| Error::integrity("the stream has no Begin frame"))?;
    let (skeleton_hash, mut skeleton) = done.skeleton.into_inner().finish()?;
    let summary = Summary {
        stream_id: hex::encode(done.stream_id),
        begin,
        end_positions: end.positions,
        entries: end.entries,
        bytes: end.bytes,
        changed: end.changed,
        stream_bytes,
        chunks: done.chunks,
        new_chunks: done.new_chunks,
        new_bytes: done.new_bytes,
        stored: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        skeleton_blake3: hex::encode(skeleton_hash),
    };
    // A marked pack this snapshot needs is in use again: unmark it before the snapshot appears.
    for pack in &done.revived {
        repo.storage().remove(&format!("pending/{pack}"))?;
    }
    let header = snapshot::header(&summary, &repo.write_key().recipient, &repo.config.id);
    let id = snapshot::id_of(&header);
    repo.storage().create_from(&format!("snapshots/{id}"), &mut (&header[..]).chain(&mut skeleton))?;
    Ok(Receipt { snapshot: id, deduplicated_bytes: done.deduplicated_bytes, summary })
}
