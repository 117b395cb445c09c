//! backpipe: database backup agents as small Unix filters over one framed stream.
//!
//! The stream format ([`format`], [`reader`], [`writer`]) is the contract
//! between every tool; docs/FORMAT.md specifies it byte for byte. Filters
//! ([`codec`]) run on one driver ([`filter`]) that checks every frame, works
//! in parallel, keeps order, and ends a failed run's output with an Abort
//! frame. Sources ([`source`]) start pipelines; [`unpack`] and [`inspect`]
//! end them.

pub mod cdc;
pub mod cli;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod filter;
pub mod format;
pub mod inspect;
pub mod interrupt;
pub mod keys;
pub mod meta;
pub mod mysql;
pub mod notice;
pub mod parallel;
pub mod pipe;
pub mod progress;
pub mod random;
pub mod reader;
pub mod repo;
pub mod source;
pub mod unpack;
pub mod workdir;
pub mod writer;
pub mod xattr;

pub use error::{Error, ErrorKind, Result};
