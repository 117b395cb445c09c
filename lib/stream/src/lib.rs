//! The backpipe stream core: what every tool of a pipeline shares and
//! nothing more. The frame format ([`format`]), reading and writing streams
//! ([`reader`], [`writer`]), the JSON payloads of metadata frames
//! ([`meta`]), errors and their exit classes ([`error`]), ordered parallel
//! work ([`parallel`]), and the driver every filter runs on ([`filter`]),
//! with its progress display ([`progress`]), pipe set-up ([`pipe`]), the
//! notices the library hands to the tool ([`notice`]) and the parsers of
//! times, durations and sizes ([`units`]). docs/FORMAT.md
//! specifies the stream byte for byte.
//!
//! It builds without the repository's dependencies (no command-line parser,
//! storage client, async runtime or key derivation), so format code, fuzz
//! targets and engines' format parsers compile fast.

#![deny(missing_docs)]

pub mod error;
pub mod filter;
pub mod format;
pub mod meta;
pub mod notice;
pub mod parallel;
pub mod pipe;
pub mod progress;
pub mod random;
pub mod reader;
pub mod units;
pub mod writer;

pub use error::{Error, ErrorKind, Result};
