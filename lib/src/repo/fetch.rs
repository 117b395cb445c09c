//! `fetch`: finds snapshots and writes stored streams back out, each chunk
//! reference replaced by the stored chunk.

use std::collections::HashMap;
use std::io::Write;

use super::pack::{pack_name, Location};
use super::snapshot::Summary;
use super::Repository;
use crate::error::{Error, Result};
use crate::format::{Frame, Kind, CHUNK_ID_LEN};
use crate::progress::Progress;
use crate::reader::Item;
use crate::writer::StreamWriter;

/// Every snapshot's ID and summary, oldest first.
pub fn list(repo: &Repository) -> Result<Vec<(String, Summary)>> {
    repo.master()?;
    let mut all = Vec::new();
    for name in repo.storage().list("snapshots")? {
        let id = name.rsplit('/').next().unwrap_or_default().to_string();
        // A snapshot removed by `forget` since it was listed is simply gone.
        match repo.open_snapshot(&id) {
            Ok(Some(opened)) => all.push((id, opened.summary)),
            Ok(None) => {}
            Err(e) => crate::cli::say(&format!("warning: {e}; skipped (run `repo check`)")),
        }
    }
    let when = |s: &Summary| (parse_time(&s.begin.started).ok(), parse_time(&s.stored).ok());
    all.sort_by_key(|(_, s)| when(s));
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

/// Parses a point in time: RFC 3339, or `YYYY-MM-DD[ HH:MM[:SS]]` in local time.
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    use chrono::{Local, NaiveDate, NaiveDateTime, TimeZone, Utc};
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(23, 59, 59)));
    naive
        .and_then(|n| Local.from_local_datetime(&n).earliest())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| Error::usage(format!("'{text}' is not a time (use 2026-11-21 10:00 or RFC 3339)")))
}

/// Which snapshots a selection applies to.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only this host.
    pub host: Option<String>,
    /// Only this engine.
    pub engine: Option<String>,
}

impl Filter {
    /// True when the summary matches.
    pub fn matches(&self, s: &Summary) -> bool {
        self.host.as_ref().is_none_or(|h| *h == s.begin.host)
            && self.engine.as_ref().is_none_or(|e| *e == s.begin.engine)
    }
}

/// The newest chain that covers `until`: the last full backup started at or
/// before it, then every later non-full backup of the same host and engine
/// started at or before it, oldest first, and the first non-full backup
/// started after it, which holds the logs written up to `until`.
pub fn chain_until(repo: &Repository, until: &str, filter: &Filter) -> Result<Vec<String>> {
    let until = parse_time(until)?;
    let started = |s: &Summary| parse_time(&s.begin.started).ok();
    let all: Vec<(String, Summary)> = list(repo)?.into_iter().filter(|(_, s)| filter.matches(s)).collect();
    let (covered, later): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, s)| started(s).is_some_and(|t| t <= until));
    let Some(full) = covered.iter().rposition(|(_, s)| s.begin.kind == "full") else {
        return Err(Error::other(format!("no full backup started at or before {until} (see `repo snapshots`)")));
    };
    let groups: std::collections::HashSet<_> =
        covered.iter().filter(|(_, s)| s.begin.kind == "full").map(|(_, s)| (&s.begin.host, &s.begin.engine)).collect();
    if groups.len() > 1 {
        return Err(Error::usage(format!(
            "backups of {} hosts or engines match; choose one with --host and --engine",
            groups.len()
        )));
    }
    let (host, engine) = (covered[full].1.begin.host.clone(), covered[full].1.begin.engine.clone());
    let continues = |s: &Summary| s.begin.kind != "full" && s.begin.host == host && s.begin.engine == engine;
    let mut chain: Vec<String> = covered[full..]
        .iter()
        .enumerate()
        .filter(|(i, (_, s))| *i == 0 || continues(s))
        .map(|(_, (id, _))| id.clone())
        .collect();
    // An incremental after a later full still starts where the last one ended.
    if let Some((id, _)) = later.iter().find(|(_, s)| continues(s)) {
        chain.push(id.clone());
    }
    Ok(chain)
}

/// Writes the stored stream of each snapshot in `ids`, in order, to `output`.
pub fn fetch(repo: &Repository, ids: &[String], output: impl Write) -> Result<()> {
    repo.master()?;
    let progress = Progress::for_stage("fetch");
    let index = repo.chunk_index()?;
    let mut writer = StreamWriter::new(std::io::BufWriter::with_capacity(crate::filter::IO_BUFFER, output));
    for id in ids {
        let opened = repo.open_snapshot(id)?.ok_or_else(|| Error::other(format!("snapshot {id} no longer exists")))?;
        progress.set_total(opened.summary.stream_bytes);
        progress.set(0);
        let mut reader = opened.skeleton(repo.storage(), id)?;
        let in_snapshot = |e: Error| e.context(format!("snapshot {id}"));
        while let Some(item) = reader.next_item().map_err(in_snapshot)? {
            match item {
                Item::Start(stream) => {
                    reader.get_ref().check_stream(&stream)?;
                    writer.start(stream)?
                }
                Item::Frame(frame) if frame.kind == Kind::ChunkRef => {
                    let chunk = read_chunk(repo, &index, &frame.payload)?;
                    progress.add(chunk.payload.len() as u64);
                    writer.write(&chunk)?;
                }
                Item::Frame(frame) if frame.kind == Kind::End => {
                    // The End frame commits the stream downstream: first read the
                    // skeleton to its end, which checks it against the summary.
                    if reader.next_item().map_err(in_snapshot)?.is_some() {
                        return Err(Error::integrity(format!("snapshot {id} is damaged (data after its End frame)")));
                    }
                    writer.write(&frame)?;
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
    // Named only when something is wrong, not for every chunk.
    let short = || hex::encode(&id[..8.min(id.len())]);
    let location = id.try_into().ok().and_then(|id: [u8; 32]| index.get(&id)).ok_or_else(|| {
        Error::integrity(format!("chunk {} is missing from the repository (run `repo check`)", short()))
    })?;
    if location.length as usize > crate::format::MAX_PAYLOAD {
        return Err(Error::integrity(format!(
            "the index entry of chunk {} is damaged (length {})",
            short(),
            location.length
        )));
    }
    let payload = repo.storage().read_range(&pack_name(&location.pack), location.offset, location.length as usize)?;
    if payload.len() < CHUNK_ID_LEN || payload[..CHUNK_ID_LEN] != *id {
        return Err(Error::integrity(format!("pack {} is damaged at chunk {}", location.pack, short())));
    }
    Ok(Frame { kind: Kind::Data, encodings: location.encodings, payload })
}
