//! MySQL and MariaDB: the `dump-mysql` and `restore-mysql` agents, over the
//! server's own client tools, and what they need to understand of the
//! server's binary logs.

/// How the names of `restore-mysql`'s working directories start (then the
/// process ID): its own, and its temporary server's.
pub const RESTORE_WORK_PREFIX: &str = ".backpipe-restore-";

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
