//! MySQL and MariaDB: the `dump-mysql` and `restore-mysql` agents, over the
//! server's own client tools, and what they need to understand of the
//! server's binary logs.
//!
//! Its modules are private; this facade is what the binaries use. Inside,
//! the format code is `binlog` (checking binary log files) and `positions`
//! (where a backup sits in the binary log); the server talk is `client`,
//! `server` and `scratch` (a temporary private server); the dump side is
//! `dump` (full), `locked` and `tail` (its parts), `incremental` and
//! `purge`; the restore side is `restore`, with `plan`, `replay`, `target`
//! and `datadir`.

#![deny(missing_docs)]

mod binlog;
mod client;
mod datadir;
mod dump;
mod incremental;
mod locked;
mod plan;
mod positions;
mod purge;
mod replay;
mod restore;
mod scratch;
mod server;
mod session;
mod tail;
mod target;

pub use binlog::{check as check_binlog, Checked as CheckedBinlog};
pub use client::{Client, ConnectArgs};
pub use dump::{full_logical, full_physical, ENGINE};
pub use incremental::{incremental, previous, IncrementalOptions};
pub use purge::purge;
pub use replay::{Logging, Until};
pub use restore::{restore, Options as RestoreOptions};
pub use server::ServerInfo;

// The crates below, under the names the engine uses.
use backpipe_kit::{emit, interrupt, sink, tool, workdir};
use backpipe_repo as repo;
use backpipe_stream::{error, filter, format, meta, notice, progress, units};

/// How the names of `restore-mysql`'s working directories start (then the
/// process ID): its own, and its temporary server's.
pub const RESTORE_WORK_PREFIX: &str = ".backpipe-restore-";
