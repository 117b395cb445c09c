//! backpipe: database backup agents as small Unix filters over one framed stream.
//!
//! The stream format ([`format`], [`reader`], [`writer`]) is the contract
//! between every tool; docs/FORMAT.md specifies it byte for byte. Filters
//! ([`codec`]) run on one driver ([`filter`]) that checks every frame, works
//! in parallel, keeps order, and ends a failed run's output with an Abort
//! frame. Sources ([`source`]) start pipelines; [`unpack`] and [`inspect`]
//! end them. The stream core and the codecs are crates of their own
//! (`backpipe-stream`, `backpipe-codec`), re-exported here under the same
//! names, as are the repository (`backpipe-repo`) and the engine kit
//! (`backpipe-kit`), each engine (`backpipe-mysql`) and the command-line kit
//! (`backpipe-cli`).

pub use backpipe_cli as cli;
pub use backpipe_codec as codec;
pub use backpipe_codec::{cdc, envelope, keys};
pub use backpipe_kit::{interrupt, sink, workdir};
pub use backpipe_mysql as mysql;
pub use backpipe_repo as repo;
pub use backpipe_repo::storage_limits_help;
pub use backpipe_stream::{
    error, filter, format, meta, notice, parallel, pipe, progress, random, reader, units, writer,
};

pub mod inspect;
pub mod source;
pub mod unpack;
pub mod xattr;

pub use error::{Error, ErrorKind, Result};
