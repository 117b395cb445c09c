//! backpipe: database backup agents as small Unix filters over one framed stream.
//!
//! The stream format ([`format`], [`reader`], [`writer`]) is the contract
//! between every tool; docs/FORMAT.md specifies it byte for byte. Filters
//! ([`codec`]) run on one driver ([`filter`]) that checks every frame, works
//! in parallel, keeps order, and ends a failed run's output with an Abort
//! frame. Sources ([`source`]) start pipelines; [`unpack`] and [`inspect`]
//! end them. The stream core and the codecs are crates of their own
//! (`backpipe-stream`, `backpipe-codec`), re-exported here under the same
//! names.

pub use backpipe_codec as codec;
pub use backpipe_codec::{cdc, envelope, keys};
pub use backpipe_stream::{error, filter, format, meta, notice, parallel, pipe, progress, random, reader, writer};

pub mod cli;
pub mod inspect;
pub mod interrupt;
pub mod mysql;
pub mod repo;
pub mod source;
pub mod unpack;
pub mod workdir;
pub mod xattr;

pub use error::{Error, ErrorKind, Result};
