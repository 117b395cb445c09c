//! `fetch`: writes stored streams back out, each chunk reference replaced by
//! the stored chunk, verified. Which snapshots to write is the listing's
//! ([`crate::listing`]).

use std::io::Write;
use std::sync::Mutex;

use super::pack::pack_name;
use super::verify::ChunkVerifier;
use super::{ChunkCopies, Repository};
use crate::error::{Error, Result};
use crate::format::{Frame, Kind, StreamId};
use crate::progress::Progress;
use crate::reader::Item;
use crate::writer::StreamWriter;

/// What the skeleton reader hands on, in stream order.
enum Job {
    /// Written as it is.
    Pass(Piece),
    /// A chunk reference: the chunk is read back and verified by a worker.
    Chunk([u8; 32]),
}

/// What is written, in stream order.
enum Piece {
    /// A new stream: its ID, and its size for the progress display.
    Start(StreamId, u64),
    /// A frame.
    Frame(Frame),
}

/// Writes the stored stream of each snapshot in `ids`, in order, to `output`.
///
/// Every chunk is verified before it is written: decrypted with the master
/// key, decompressed and hashed again to its ID, so a forged or damaged
/// chunk never reaches the consumer. A copy that fails is passed over for
/// another copy of the same chunk (quarantined copies are tried last); a
/// chunk with no good copy fails the fetch (integrity error) naming it.
/// Chunks are read and verified several at a time and written in order.
/// Returns one line for each bad copy passed over while a good one was used.
pub fn fetch(repo: &Repository, ids: &[String], output: impl Write + Send) -> Result<Vec<String>> {
    let verifier = ChunkVerifier::new(repo.master()?);
    let copies = repo.chunk_copies()?;
    let progress = Progress::for_stage("fetch");
    let mut writer = StreamWriter::new(std::io::BufWriter::with_capacity(crate::filter::IO_BUFFER, output));
    let passed_over = Mutex::new(Vec::new());
    let produce = |send: &mut dyn FnMut(Job) -> bool| -> Result<()> {
        for id in ids {
            let opened =
                repo.open_snapshot(id)?.ok_or_else(|| Error::other(format!("snapshot {id} no longer exists")))?;
            let mut reader = opened.skeleton(repo.storage(), id)?;
            let in_snapshot = |e: Error| e.context(format!("snapshot {id}"));
            while let Some(item) = reader.next_item().map_err(in_snapshot)? {
                let job = match item {
                    Item::Start(stream) => {
                        reader.get_ref().check_stream(&stream)?;
                        Job::Pass(Piece::Start(stream, opened.summary.stream_bytes))
                    }
                    Item::Frame(frame) if frame.kind == Kind::ChunkRef => Job::Chunk(frame.chunk_ref_id()?),
                    Item::Frame(frame) if frame.kind == Kind::End => {
                        // The End frame commits the stream downstream: first read the
                        // skeleton to its end, which checks it against the summary.
                        if reader.next_item().map_err(in_snapshot)?.is_some() {
                            return Err(Error::integrity(format!(
                                "snapshot {id} is damaged (data after its End frame)"
                            )));
                        }
                        Job::Pass(Piece::Frame(frame))
                    }
                    Item::Frame(frame) => Job::Pass(Piece::Frame(frame)),
                };
                if !send(job) {
                    return Ok(());
                }
            }
        }
        Ok(())
    };
    let work = |job: Job| match job {
        Job::Pass(piece) => Ok(piece),
        Job::Chunk(id) => read_chunk(repo, &copies, &verifier, &id, &passed_over).map(Piece::Frame),
    };
    let write = |piece: Piece| match piece {
        Piece::Start(stream, total) => {
            progress.set_total(total);
            progress.set(0);
            writer.start(stream)
        }
        Piece::Frame(frame) => {
            progress.add(frame.payload.len() as u64);
            writer.write(&frame)
        }
    };
    if let Err(err) = crate::parallel::run_ordered(repo.storage().concurrency(), produce, work, write) {
        // What was written is marked incomplete, with this failure's status,
        // so the stages after say only that it was aborted, and exit as this did.
        if !err.is_broken_pipe() {
            crate::filter::send_abort(&mut writer, "fetch", &err);
        }
        return Err(err);
    }
    writer.flush()?;
    progress.finish();
    Ok(passed_over.into_inner().expect("no panics while locked"))
}

/// The stored Data frame of chunk `id`, from the first of its copies that
/// verifies; `passed_over` gets a line for each bad copy skipped on the way.
/// A copy that cannot be read (its pack deleted meanwhile, a storage error)
/// is passed over too; when no copy is good, the error is the integrity
/// failure naming every bad copy, or else the first read error.
fn read_chunk(
    repo: &Repository,
    copies: &ChunkCopies,
    verifier: &ChunkVerifier,
    id: &[u8; 32],
    passed_over: &Mutex<Vec<String>>,
) -> Result<Frame> {
    // Named only when something is wrong, not for every chunk.
    let short = hex::encode(&id[..8]);
    let (mut bad, mut unreadable) = (Vec::new(), None);
    for copy in copies.of(id) {
        let length = copy.length as usize;
        if length > crate::format::MAX_PAYLOAD {
            bad.push(format!("in pack {} its index entry is damaged (length {length})", copy.pack));
            continue;
        }
        let payload = match repo.storage().read_range(&pack_name(&copy.pack), copy.offset, length) {
            Ok(payload) => payload,
            Err(e) => {
                unreadable.get_or_insert(e);
                continue;
            }
        };
        if let Err(e) = verifier.verify(id, copy.encodings, &payload) {
            bad.push(format!("in pack {} {}", copy.pack, e.message()));
            continue;
        }
        let mut lines = passed_over.lock().expect("no panics while locked");
        lines.extend(bad.iter().map(|flaw| {
            format!("chunk {short} {flaw}; read the copy in pack {} instead (run `repo check --read-data`)", copy.pack)
        }));
        return Ok(Frame { kind: Kind::Data, encodings: copy.encodings, payload });
    }
    match (bad.is_empty(), unreadable) {
        (true, Some(e)) => Err(e),
        (true, None) => {
            Err(Error::integrity(format!("chunk {short} is missing from the repository (run `repo check`)")))
        }
        (false, _) => Err(Error::integrity(format!(
            "chunk {short} has no good copy: {}; nothing of it was written (run `repo check --read-data`)",
            bad.join("; ")
        ))),
    }
}
