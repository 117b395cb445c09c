//! `ship`: stores a stream (or concatenated streams) in the repository, one
//! snapshot per stream, and returns a receipt for each.
//!
//! Before a snapshot is stored, every pack it needs (written by this ship or
//! deduplicated against) is proven to be stored and not being deleted by
//! `repo prune`, and proven again once the snapshot is stored; when the second
//! proof fails the snapshot is removed. With `prune`'s deletion record written
//! before it reads the snapshots again, a ship and a prune never both succeed
//! with a pack the snapshot needs deleted (docs/REPOSITORY.md).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Read, Seek, Write};
use std::sync::Arc;

use super::pack::{pack_name, IndexEntry, PackWriter};
use super::prune;
use super::snapshot::{self, Summary};
use super::Repository;
use crate::crypt::{CipherParams, Decryptor};
use crate::error::{Error, Result};
use crate::filter::{aborted_upstream, run_inline, Output};
use crate::format::{Encodings, Frame, Kind, StreamId, CHUNK_ID_LEN};
use crate::meta::{Begin, End};
use crate::progress::Progress;
use crate::reader::{Item, StreamReader};
use crate::writer::StreamWriter;

use crate::receipt::Receipt;

const NOT_ENCRYPTED: &str =
    "ship stores streams encrypted with the repository's key: put `encrypt --repo R` before `ship R` in the pipeline";

/// What ship knows of a chunk the repository holds.
struct Known {
    /// Its stored size.
    stored: u64,
    /// The pack holding it; `None` while it is in the pack being filled.
    pack: Option<Arc<str>>,
    /// Whether `prune` had marked that pack for deletion when ship started.
    marked: bool,
}

/// At most this many packs are looked up one by one; more are found by listing.
const LOOKUPS: usize = 32;

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
    /// Every pack the stream's snapshot needs: proven present before and after it is stored.
    needed: BTreeSet<Arc<str>>,
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

/// Takes note of a pack the writer just stored (`entries` is its index, empty
/// when none was): its chunks now have a home, and the stream needs it.
fn note_stored(
    known: &mut HashMap<[u8; CHUNK_ID_LEN], Known>,
    needed: &mut BTreeSet<Arc<str>>,
    entries: Vec<IndexEntry>,
) {
    for entry in entries {
        if let Some(held) = known.get_mut(&entry.id) {
            held.pack = Some(entry.location.pack.clone());
        }
        needed.insert(entry.location.pack);
    }
}

/// Reads streams from `input` and stores each as a snapshot. A stream is
/// stored only when it is complete (End frame) and authenticates under the
/// repository's key; otherwise nothing of it becomes visible.
pub fn ship(repo: &Repository, input: impl Read, mut receipt: impl FnMut(&Receipt) -> Result<()>) -> Result<()> {
    let progress = Progress::for_stage("ship");
    // Every chunk the repository holds: its stored size, its pack, and whether
    // new data may be deduplicated against it (not when `prune` has marked its
    // pack). References made before the mark are still honoured: the pack's
    // mark is taken back before the snapshot is stored, if the pack is still there.
    let (index, marked) = repo.chunk_index_and_marks()?;
    let mut known: HashMap<[u8; CHUNK_ID_LEN], Known> = index
        .into_iter()
        .map(|(id, at)| {
            let marked = marked.contains(&*at.pack);
            (id, Known { stored: at.length as u64, pack: Some(at.pack), marked })
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
                    needed: BTreeSet::new(),
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
                Some(held) if !held.marked || !is_chunk => {
                    ship.deduplicated_bytes += held.stored;
                    // A chunk in the pack being filled: that pack is noted when it is stored.
                    ship.needed.extend(held.pack.clone());
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
                    known.insert(id, Known { stored: frame.payload.len() as u64, pack: None, marked: false });
                    note_stored(&mut known, &mut ship.needed, packs.add(id, frame.encodings, &frame.payload)?);
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
                Kind::Abort => return Err(aborted_upstream(&plain).with_note("no snapshot was stored")),
                Kind::End => {
                    let end: End = plain.parse_json()?;
                    let mut done = current.take().expect("a stream is open");
                    let stream_bytes = reader.offset() - done.started_at;
                    note_stored(&mut known, &mut done.needed, packs.flush()?);
                    let stored = finish(repo, done, end, stream_bytes)?;
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

/// Stores a complete stream's snapshot once its packs are durable, if every
/// pack it needs is still there.
fn finish(repo: &Repository, done: Shipment, end: End, stream_bytes: u64) -> Result<Receipt> {
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
    secure(repo, &done.needed, true)?;
    let header = snapshot::header(&summary, &repo.write_key().recipient, &repo.config.id);
    let id = snapshot::id_of(&header);
    let name = format!("snapshots/{id}");
    repo.storage().create_from(&name, &mut (&header[..]).chain(&mut skeleton))?;
    // A prune that did not see the snapshot, and deletes a pack it needs, has its record up (or the pack gone) by now.
    if let Err(err) = secure(repo, &done.needed, false) {
        return Err(match repo.storage().remove(&name) {
            Ok(()) => err,
            Err(also) => Error::new(
                err.kind(),
                format!("{}; but snapshot {id}, stored meanwhile, could not be removed ({also}): remove it with `repo forget`", err.message()),
            ),
        });
    }
    Ok(Receipt { snapshot: id, deduplicated_bytes: done.deduplicated_bytes, summary })
}

/// Proves that every pack in `packs` is stored with its index and that no
/// `repo prune` is deleting it; with `revive`, first takes back the marks
/// `prune` put on any of them (the snapshot about to be stored needs them).
fn secure(repo: &Repository, packs: &BTreeSet<Arc<str>>, revive: bool) -> Result<()> {
    let storage = repo.storage();
    let pending = prune::pending(storage)?;
    if revive {
        for pack in packs.iter().filter(|pack| pending.marks.contains_key(&***pack)) {
            storage.remove(&format!("pending/{pack}"))?;
        }
    }
    // The records before the packs: a prune whose record is gone has deleted what it deleted.
    let deleting = prune::being_deleted(storage, &pending.records)?;
    let present = present(storage, packs)?;
    for pack in packs {
        let why = if deleting.contains(&**pack) {
            "is being deleted by `repo prune`"
        } else if !present.contains(&**pack) {
            "has been deleted"
        } else {
            continue;
        };
        return Err(Error::other(format!(
            "pack {pack}, which this backup needs, {why} (the backup took longer than the grace period of \
             `repo prune`, or the pack was lost); nothing was stored: run the backup again"
        )));
    }
    Ok(())
}

/// Which of `packs` are stored with their index: looked up one by one when
/// they are few, else found by listing.
fn present(storage: &dyn super::storage::Storage, packs: &BTreeSet<Arc<str>>) -> Result<HashSet<String>> {
    let id = |name: &String| name.rsplit('/').next().unwrap_or_default().to_string();
    if packs.len() > LOOKUPS {
        let indexed: HashSet<String> = storage.list("index")?.iter().map(id).collect();
        return Ok(storage.list("data")?.iter().map(id).filter(|pack| indexed.contains(pack)).collect());
    }
    let mut found = HashSet::new();
    for pack in packs {
        if storage.exists(&format!("index/{pack}"))? && storage.exists(&pack_name(pack))? {
            found.insert(pack.to_string());
        }
    }
    Ok(found)
}
