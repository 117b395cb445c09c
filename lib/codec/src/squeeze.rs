//! `squeeze`: zstd compression of Data payloads (chunk bodies when chunked),
//! and `squeeze -d`. A payload that does not shrink is left as it was.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::filter::{split_item, Job, Output, Planner, Step};
use crate::format::{Encodings, Frame, Kind, MAX_PLAIN_PAYLOAD};
use crate::reader::Item;

/// Payloads shorter than this are not worth a zstd frame.
const MIN_COMPRESS: usize = 64;

/// The default zstd level, as for the `zstd` command.
pub const DEFAULT_LEVEL: i32 = 3;

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Compresses `body` at `level` with this thread's reusable context.
fn compress(body: &[u8], level: i32) -> Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            let compressor = zstd::bulk::Compressor::new(level)
                .map_err(|e| Error::other(format!("cannot set up zstd level {level}: {e}")))?;
            *slot = Some((level, compressor));
        }
        let (_, compressor) = slot.as_mut().unwrap();
        compressor.compress(body).map_err(|e| Error::other(format!("zstd compression failed: {e}")))
    })
}

/// Decompresses one zstd frame whose declared size must fit a frame payload.
fn decompress(body: &[u8]) -> Result<Vec<u8>> {
    let size = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) if size as usize <= MAX_PLAIN_PAYLOAD => size as usize,
        Ok(Some(size)) => {
            return Err(Error::integrity(format!("zstd payload declares {size} bytes, more than a frame may hold")))
        }
        _ => return Err(Error::integrity("zstd payload is damaged (no valid frame header)")),
    };
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let decompressor =
                zstd::bulk::Decompressor::new().map_err(|e| Error::other(format!("cannot set up zstd: {e}")))?;
            *slot = Some(decompressor);
        }
        let out = slot
            .as_mut()
            .unwrap()
            .decompress(body, size)
            .map_err(|e| Error::integrity(format!("zstd payload is damaged: {e}")))?;
        if out.len() != size {
            return Err(Error::integrity("zstd payload is damaged (size differs from its header)"));
        }
        Ok(out)
    })
}

/// The sequential half of `squeeze`.
pub struct Squeezer {
    /// zstd level, 1 to 22 (negative levels are faster still).
    pub level: i32,
}

/// The sequential half of `squeeze -d`.
pub struct Unsqueezer;

/// Compresses or decompresses one frame's body.
pub enum Recode {
    /// Compress at this level.
    Compress(Frame, i32),
    /// Decompress.
    Decompress(Frame),
}

impl Job for Recode {
    fn run(self) -> Result<Frame> {
        match self {
            Recode::Compress(mut frame, level) => {
                let start = frame.body_start();
                let packed = compress(&frame.payload[start..], level)?;
                if packed.len() < frame.payload.len() - start {
                    frame.payload.truncate(start);
                    frame.payload.extend_from_slice(&packed);
                    frame.encodings = frame.encodings.with(Encodings::ZSTD);
                }
                Ok(frame)
            }
            Recode::Decompress(mut frame) => {
                let start = frame.body_start();
                let plain = decompress(&frame.payload[start..])?;
                frame.payload.truncate(start);
                frame.payload.extend_from_slice(&plain);
                frame.encodings = frame.encodings.without(Encodings::ZSTD);
                Ok(frame)
            }
        }
    }
}

impl Planner for Squeezer {
    type Job = Recode;

    fn plan(&mut self, item: Item, out: &mut Vec<Step<Recode>>) -> Result<()> {
        let Some(frame) = split_item(item, out) else {
            return Ok(());
        };
        let body_len = frame.body().map(<[u8]>::len)?;
        let ours = frame.kind == Kind::Data
            && frame.encodings.without(Encodings::CHUNKED).0 == 0
            && (MIN_COMPRESS..=MAX_PLAIN_PAYLOAD).contains(&body_len);
        out.push(if ours {
            let level = self.level;
            Step::Work(Recode::Compress(frame, level))
        } else {
            Step::Ready(Output::Frame(frame))
        });
        Ok(())
    }
}

impl Planner for Unsqueezer {
    type Job = Recode;

    fn plan(&mut self, item: Item, out: &mut Vec<Step<Recode>>) -> Result<()> {
        let Some(frame) = split_item(item, out) else {
            return Ok(());
        };
        if !frame.encodings.has(Encodings::ZSTD) {
            out.push(Step::Ready(Output::Frame(frame)));
            return Ok(());
        }
        crate::format::refuse_unknown_encodings(&frame)?;
        super::refuse_outer_layers(&frame, "squeeze -d", &[(Encodings::ENCRYPTED, "encrypt -d")])?;
        frame.body()?;
        out.push(Step::Work(Recode::Decompress(frame)));
        Ok(())
    }
}
