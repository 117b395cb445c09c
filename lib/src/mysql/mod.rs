//! MySQL and MariaDB: what the `dump-mysql` agent needs to understand of the
//! server's files.

pub mod binlog;
