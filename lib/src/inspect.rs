//! `inspect`: lists a stream like `tar tv`, or as JSON lines, checking every
//! frame on the way. Encrypted metadata is shown as kinds and sizes unless a
//! key is given.

use std::io::{Read, Write};

use serde_json::{json, Value};

use crate::codec::crypt::Decryptor;
use crate::error::{Error, Result};
use crate::filter::{aborted_upstream, describe_abort, run_inline, Output};
use crate::format::{Encodings, Frame, Kind, StreamId};
use crate::meta::{Begin, End, Entry, EntryEnd, EntryType};
use crate::reader::{Item, StreamReader};

/// Options for [`inspect`].
pub struct InspectOptions {
    /// One JSON object per line instead of the listing.
    pub json: bool,
    /// Also list every frame.
    pub frames: bool,
}

/// Counts for the entry being read.
#[derive(Default)]
struct EntryStats {
    entry: Option<Entry>,
    data_frames: u64,
    stored_bytes: u64,
    encodings: u8,
}

/// Writes lines to the output, in the chosen form.
struct Printer<W: Write> {
    out: W,
    json: bool,
}

impl<W: Write> Printer<W> {
    fn emit(&mut self, value: Value, text: impl FnOnce() -> String) -> Result<()> {
        let line = if self.json { value.to_string() } else { text() };
        writeln!(self.out, "{line}").map_err(|e| Error::io("cannot write the listing", e))
    }
}

fn mode_string(entry: &Entry) -> String {
    let kind = match entry.entry_type {
        EntryType::Dir => 'd',
        EntryType::Symlink => 'l',
        EntryType::File => '-',
        EntryType::Hardlink => 'h',
    };
    let mut s = String::from(kind);
    // Setuid and setgid show in the owner's and the group's execute place as
    // `s` (`S` without execute), sticky in the others' as `t` (`T`), as `ls -l`.
    for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (entry.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (entry.mode & special != 0, bits & 1 != 0) {
            (true, true) => letter,
            (true, false) => letter.to_ascii_uppercase(),
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn time_string(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// Decrypts frames in-process when a key was given.
struct Decrypting(Option<Decryptor>);

impl Decrypting {
    fn apply(&mut self, item: Item) -> Result<Vec<Output>> {
        let Some(decryptor) = self.0.as_mut() else {
            return Ok(vec![match item {
                Item::Start(id) => Output::Start(id),
                Item::Frame(frame) => Output::Frame(frame),
            }]);
        };
        run_inline(decryptor, item)
    }
}

/// Lists the stream(s) read from `input` on `out`. Returns an error (after
/// listing what it could) when the input is damaged, incomplete or aborted.
pub fn inspect(
    input: impl Read,
    out: impl Write,
    options: &InspectOptions,
    decryptor: Option<Decryptor>,
) -> Result<()> {
    let mut reader = StreamReader::new(std::io::BufReader::with_capacity(crate::filter::IO_BUFFER, input));
    let mut printer = Printer { out: std::io::BufWriter::new(out), json: options.json };
    let mut decrypting = Decrypting(decryptor);
    let mut stats = EntryStats::default();
    let mut frames_in_stream = 0u64;
    let mut stream_start = 0u64;
    let result = (|| -> Result<()> {
        loop {
            let offset = reader.offset();
            let Some(item) = reader.next_item()? else {
                return Ok(());
            };
            let raw = match &item {
                Item::Frame(frame) => Some((frame.kind, frame.encodings, frame.payload.len())),
                Item::Start(_) => None,
            };
            if let (true, Some((kind, enc, len))) = (options.frames, raw) {
                printer.emit(
                    json!({"type": "frame", "index": frames_in_stream, "offset": offset, "kind": kind.name(),
                           "encodings": enc.describe(), "length": len}),
                    || {
                        format!(
                            "  #{frames_in_stream:<6} @{offset:<12} {:<9} {:>9} bytes  {}",
                            kind.name(),
                            len,
                            enc.describe()
                        )
                    },
                )?;
            }
            if raw.is_some() {
                frames_in_stream += 1;
            }
            for output in decrypting.apply(item)? {
                match output {
                    Output::Start(id) => {
                        frames_in_stream = 0;
                        stream_start = offset;
                        show_start(&mut printer, &id)?;
                    }
                    Output::Frame(frame) => {
                        let stream_bytes = reader.offset() - stream_start;
                        show_frame(&mut printer, &frame, &mut stats, frames_in_stream, stream_bytes)?;
                    }
                }
            }
        }
    })();
    printer.out.flush().map_err(|e| Error::io("cannot write the listing", e))?;
    result
}

fn show_start<W: Write>(printer: &mut Printer<W>, id: &StreamId) -> Result<()> {
    let id = hex::encode(id);
    printer.emit(json!({"type": "stream", "id": id}), || format!("stream {id}"))
}

fn show_frame<W: Write>(
    printer: &mut Printer<W>,
    frame: &Frame,
    stats: &mut EntryStats,
    frames: u64,
    stream_bytes: u64,
) -> Result<()> {
    let hidden = frame.encodings.has(Encodings::ENCRYPTED);
    match frame.kind {
        Kind::Cipher => {
            let params: Value = frame.parse_json()?;
            let how = if params.get("argon2").is_some() { "passphrase" } else { "key file" };
            let scheme = params["scheme"].as_str().unwrap_or("?").to_string();
            printer.emit(json!({"type": "cipher", "scheme": scheme, "key": how}), || {
                format!("  encrypted with {scheme} ({how}); give the key to see names")
            })
        }
        Kind::Begin if !hidden => {
            let begin: Begin = frame.parse_json()?;
            let mut value = serde_json::to_value(&begin).expect("metadata serializes");
            value["type"] = json!("begin");
            printer.emit(value, || {
                let expected = begin.expected_bytes.map(|b| format!(", {b} bytes expected")).unwrap_or_default();
                format!(
                    "  {} {} on {}: engine {}, {} backup, started {}{expected}",
                    begin.producer, begin.version, begin.host, begin.engine, begin.kind, begin.started
                )
            })
        }
        Kind::Entry => {
            *stats = EntryStats::default();
            if !hidden {
                stats.entry = Some(frame.parse_json()?);
            }
            Ok(())
        }
        Kind::Data | Kind::ChunkRef => {
            stats.data_frames += 1;
            stats.stored_bytes += frame.payload.len() as u64;
            stats.encodings |= frame.encodings.0;
            Ok(())
        }
        Kind::EntryEnd => {
            let end: Option<EntryEnd> = if hidden { None } else { Some(frame.parse_json()?) };
            show_entry(printer, stats, end)
        }
        Kind::End if !hidden => {
            let end: End = frame.parse_json()?;
            printer.emit(
                json!({"type": "end", "entries": end.entries, "bytes": end.bytes, "frames": frames,
                       "stream_bytes": stream_bytes, "changed": end.changed, "warnings": end.warnings}),
                || {
                    let changed = match end.changed {
                        0 => String::new(),
                        n => format!("; {n} names changed while the source read them"),
                    };
                    format!(
                        "  end: {} entries, {} bytes ({frames} frames, {stream_bytes} stream bytes){changed}",
                        end.entries, end.bytes
                    )
                },
            )
        }
        Kind::Abort => {
            let reason = describe_abort(frame);
            printer.emit(json!({"type": "abort", "reason": reason}), || format!("  ABORTED: {reason}"))?;
            Err(aborted_upstream(frame))
        }
        Kind::Begin | Kind::End | Kind::Unknown(_) => printer.emit(
            json!({"type": "hidden", "kind": frame.kind.name(), "length": frame.payload.len(),
                   "encodings": frame.encodings.describe()}),
            || {
                format!(
                    "  [{} frame, {} bytes, {}]",
                    frame.kind.name(),
                    frame.payload.len(),
                    frame.encodings.describe()
                )
            },
        ),
    }
}

fn show_entry<W: Write>(printer: &mut Printer<W>, stats: &EntryStats, end: Option<EntryEnd>) -> Result<()> {
    let stored = Encodings(stats.encodings).describe();
    let Some(entry) = &stats.entry else {
        return printer.emit(
            json!({"type": "entry", "hidden": true, "data_frames": stats.data_frames,
                   "stored_bytes": stats.stored_bytes, "encodings": stored}),
            || {
                format!(
                    "  [entry, encrypted] {} data frames, {} bytes stored [{stored}]",
                    stats.data_frames, stats.stored_bytes
                )
            },
        );
    };
    let size = end.as_ref().map(|e| e.size).unwrap_or(entry.size);
    let mut value = serde_json::to_value(entry).expect("metadata serializes");
    value["type"] = json!("entry");
    value["size"] = json!(size);
    value["data_frames"] = json!(stats.data_frames);
    value["stored_bytes"] = json!(stats.stored_bytes);
    value["encodings"] = json!(stored);
    if let Some(end) = &end {
        value["blake3"] = json!(end.blake3);
    }
    printer.emit(value, || {
        let owner = match (entry.uid, entry.gid) {
            (Some(u), Some(g)) => format!("{u}/{g}"),
            _ => "-".to_string(),
        };
        let mut name = entry.path.display();
        match entry.entry_type {
            EntryType::Dir => name.push('/'),
            EntryType::Symlink => {
                name.push_str(" -> ");
                name.push_str(&entry.target.as_ref().map(|t| t.display()).unwrap_or_default());
            }
            EntryType::Hardlink => {
                name.push_str(" link to ");
                name.push_str(&entry.target.as_ref().map(|t| t.display()).unwrap_or_default());
            }
            EntryType::File => {}
        }
        if !entry.xattrs.is_empty() {
            name.push_str(&format!("  ({} extended attributes)", entry.xattrs.len()));
        }
        let stored = if stats.data_frames > 0 {
            format!(
                "  [{} frames, {} bytes stored{}{}]",
                stats.data_frames,
                stats.stored_bytes,
                if stored.is_empty() { "" } else { ", " },
                stored
            )
        } else {
            String::new()
        };
        format!("{} {:>9} {:>12} {} {}{stored}", mode_string(entry), owner, size, time_string(entry.mtime), name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_show_setuid_setgid_and_sticky_as_ls_does() {
        for (kind, mode, shown) in [
            ("file", 0o755, "-rwxr-xr-x"),
            ("file", 0o4755, "-rwsr-xr-x"),
            ("file", 0o4644, "-rwSr--r--"),
            ("file", 0o2755, "-rwxr-sr-x"),
            ("file", 0o2745, "-rwxr-Sr-x"),
            ("dir", 0o1777, "drwxrwxrwt"),
            ("dir", 0o1776, "drwxrwxrwT"),
            ("file", 0o7000, "---S--S--T"),
            ("file", 0o7777, "-rwsrwsrwt"),
        ] {
            let entry: Entry = serde_json::from_value(
                json!({"path": "x", "type": kind, "role": "file", "size": 0, "mode": mode, "mtime": 0}),
            )
            .unwrap();
            assert_eq!(mode_string(&entry), shown, "{mode:o}");
        }
    }
}
