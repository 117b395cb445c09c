//! The engine kit: what every `dump-<engine>` and `restore-<engine>` (and
//! the generic tools at the ends of a pipeline) share. The producer side of
//! a stream ([`emit`]: Begin, entries with digests, End, an Abort on any
//! failure); private working directories that a later run cleans up after
//! a killed one, and removing trees without crossing into other file
//! systems ([`workdir`]); stopping what a tool started and removing what it
//! made when a signal ends it ([`interrupt`]); and the checked reading of a
//! plain stream at the end of a pipeline ([`sink`]), for `unpack` and every
//! restore; and running a database's own tools ([`tool`]).

#![deny(missing_docs)]

pub mod emit;
pub mod interrupt;
pub mod sink;
pub mod tool;
pub mod workdir;

// The stream core, under the names the kit uses.
use backpipe_stream::{error, filter, format, meta, progress, reader, writer};
