//! MySQL and MariaDB: the `dump-mysql` and `restore-mysql` agents, over the
//! server's own client tools, and what they need to understand of the
//! server's binary logs.
//!
//! The format code is [`binlog`] (checking binary log files) and
//! [`positions`] (where a backup sits in the binary log); the server talk
//! is [`client`], [`server`] and [`scratch`] (a temporary private server);
//! the dump side is [`dump`] (full), [`locked`] and [`tail`] (its parts),
//! [`incremental`] and [`purge`]; the restore side is [`restore`], with
//! [`plan`], [`replay`], [`target`] and [`datadir`].

#![deny(missing_docs)]

pub mod binlog;
pub mod client;
pub mod datadir;
pub mod dump;
pub mod incremental;
pub mod locked;
pub mod plan;
pub mod positions;
pub mod purge;
pub mod replay;
pub mod restore;
pub mod scratch;
pub mod server;
pub mod tail;
pub mod target;

// The crates below, under the names the engine uses.
use backpipe_kit::{emit, interrupt, sink, tool, workdir};
use backpipe_repo as repo;
use backpipe_stream::{error, filter, format, meta, notice, progress, units};

/// How the names of `restore-mysql`'s working directories start (then the
/// process ID): its own, and its temporary server's.
pub const RESTORE_WORK_PREFIX: &str = ".backpipe-restore-";
