//! The backpipe codecs: each a [`Planner`](crate::filter::Planner) that owns
//! one payload encoding and passes every other frame through untouched:
//! content-defined chunking with keyed chunk IDs ([`chunk`], over [`cdc`]),
//! compression ([`squeeze`]) and encryption ([`crypt`], with the key
//! material of [`keys`] and the envelopes of [`envelope`]).

#![deny(missing_docs)]

pub mod cdc;
pub mod chunk;
pub mod crypt;
pub mod envelope;
pub mod keys;
pub mod squeeze;
mod stream_keys;

// The stream core, under the names the codecs use.
use backpipe_stream::{error, filter, format, random, reader};

use crate::error::{Error, Result};
use crate::format::{Encodings, Frame};

/// Refuses to undo `bit` on a frame that still carries an outer encoding.
pub fn refuse_outer_layers(frame: &Frame, tool: &str, outer: &[(u8, &str)]) -> Result<()> {
    for (bit, undo) in outer {
        if frame.encodings.has(*bit) {
            return Err(Error::other(format!(
                "{} frame is still {}; run `{undo}` before `{tool}`",
                frame.kind.name(),
                Encodings(*bit).describe(),
            )));
        }
    }
    Ok(())
}
