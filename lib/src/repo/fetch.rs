//! `fetch`: finds snapshots and writes stored streams back out, each chunk
//! reference replaced by the stored chunk.

use std::collections::HashMap;
use std::io::Write;

use super::pack::{pack_name, Location};
use super::snapshot::{self, Summary};
use super::Repository;
use crate::error::{Error, Result};
use crate::format::{Frame, Kind, CHUNK_ID_LEN};
use crate::progress::Progress;
use crate::reader::{Item, StreamReader};
use crate::writer::StreamWriter;

/// Every snapshot's ID and summary, oldest first.
pub fn list(repo: &Repository) -> Result<Vec<(String, Summary)>> {
    let mut all = Vec::new();
    for name in repo.storage().list("snapshots")? {
        let id = name.rsplit('/').next().unwrap_or_default().to_string();
        let bytes = repo.storage().read(&name)?;
        let (summary, _) = snapshot::decode(&bytes, repo.master(), &repo.config.id, &id)?;
        all.push((id, summary));
    }
    all.sort_by(|a, b| (&a.1.started, &a.1.stored).cmp(&(&b.1.started, &b.1.stored)));
    Ok(all)
}

/// The snapshot a name means: `latest`, a full ID, or an unambiguous ID prefix.
pub fn resolve(repo: &Repository, name: &str) -> Result<String> {
    let all = list(repo)?;
    if name == "latest" {
        return all.last().map(|(id, _)| id.clone()).ok_or_else(|| Error::other("the repository holds no snapshots"));
    }
    let matches: Vec<_> = all.iter().filter(|(id, _)| id.starts_with(name)).collect();
    match matches.as_slice() {
        [(id, _)] => Ok(id.clone()),
        [] => Err(Error::usage(format!("no snapshot '{name}' (see `repo snapshots`)"))),
        _ => Err(Error::usage(format!("'{name}' matches {} snapshots; give more of the ID", matches.len()))),
    }
}

/// Writes the stored stream of each snapshot in `ids`, in order, to `output`.
pub fn fetch(repo: &Repository, ids: &[String], output: impl Write) -> Result<()> {
    let progress = Progress::for_stage("fetch");
    let index = repo.chunk_index()?;
    let mut writer = StreamWriter::new(std::io::BufWriter::with_capacity(crate::filter::IO_BUFFER, output));
    for id in ids {
        let bytes = repo.storage().read(&format!("snapshots/{id}"))?;
        let (summary, skeleton) = snapshot::decode(&bytes, repo.master(), &repo.config.id, id)?;
        progress.set_total(summary.stream_bytes);
        progress.set(0);
        let mut reader = StreamReader::new(skeleton);
        while let Some(item) = reader.next_item().map_err(|e| e.context(format!("snapshot {id}")))? {
            match item {
                Item::Start(stream) => writer.start(stream)?,
                Item::Frame(frame) if frame.kind == Kind::ChunkRef => {
                    let chunk = read_chunk(repo, &index, &frame.payload)?;
                    progress.add(chunk.payload.len() as u64);
                    writer.write(&chunk)?;
                }
                Item::Frame(frame) => writer.write(&frame)?,
            }
        }
    }
    writer.flush()?;
    progress.finish();
    Ok(())
}

/// The stored Data frame of chunk `id`.
fn read_chunk(repo: &Repository, index: &HashMap<[u8; 32], Location>, id: &[u8]) -> Result<Frame> {
    let short = hex::encode(&id[..8.min(id.len())]);
    let location =
        id.try_into().ok().and_then(|id: [u8; 32]| index.get(&id)).ok_or_else(|| {
            Error::integrity(format!("chunk {short} is missing from the repository (run `repo check`)"))
        })?;
    let payload = repo.storage().read_range(&pack_name(&location.pack), location.offset, location.length as usize)?;
    if payload.len() < CHUNK_ID_LEN || payload[..CHUNK_ID_LEN] != *id {
        return Err(Error::integrity(format!("pack {} is damaged at chunk {short}", location.pack)));
    }
    Ok(Frame { kind: Kind::Data, encodings: location.encodings, payload })
}
