//! Tables a single transaction cannot read consistently (MyISAM, Aria,
//! MEMORY, CSV, ARCHIVE …): a logical full dumps them while a global read
//! lock of its own holds every write, taken before `mariadb-dump` starts its
//! transaction and released once they are read, so they hold exactly the rows
//! of the backup's binary log position and the replay of later events never
//! adds a row twice.

use std::io::Read;
use std::process::{ChildStdout, Stdio};

use crate::client::{Client, Running};
use crate::error::{Error, Result};
use crate::session::Session;
use crate::tail::{TailReader, COMPLETED};

/// The engines whose tables a consistent-snapshot transaction reads as of
/// its start. Every other engine's tables are read under the lock.
const TRANSACTIONAL_ENGINES: &[&str] = &["InnoDB", "ROCKSDB"];

/// Seconds the lock waits for running statements before the backup gives up
/// (rather than holding every writer back behind a long query).
const LOCK_WAIT_SECONDS: u32 = 60;

/// Marks the lock session's answers.
const LOCKED: &str = "backpipe-locked";
const UNLOCKED: &str = "backpipe-unlocked";

/// A base table, by schema and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The database.
    pub schema: String,
    /// The table.
    pub name: String,
}

/// Base tables of non-transactional engines outside the system schemas,
/// sorted by schema and name. Names are read as hex, so no byte in them
/// (a tab, a newline) can be misread.
pub fn non_transactional_tables(client: &Client) -> Result<Vec<Table>> {
    let engines: Vec<String> = TRANSACTIONAL_ENGINES.iter().map(|e| format!("'{e}'")).collect();
    let rows = client.query(&format!(
        "SELECT HEX(TABLE_SCHEMA), HEX(TABLE_NAME) FROM information_schema.TABLES \
         WHERE TABLE_TYPE = 'BASE TABLE' AND ENGINE IS NOT NULL AND ENGINE NOT IN ({}) \
         AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
         ORDER BY TABLE_SCHEMA, TABLE_NAME",
        engines.join(", ")
    ))?;
    rows.iter()
        .map(|row| match row.as_slice() {
            [schema, name] => Ok(Table { schema: unhex(schema)?, name: unhex(name)? }),
            _ => Err(Error::engine(format!("unexpected answer listing tables: {}", row.join(" ")))),
        })
        .collect()
}

fn unhex(text: &str) -> Result<String> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| Error::engine(format!("the server answered '{text}' where a name in hex belongs")))
}

/// `mariadb-dump --ignore-table` values for `tables`: the logical dump's
/// transaction leaves them to [`TableDump`]. A schema name holding a dot
/// cannot be named there unambiguously and is refused.
pub fn ignore_options(tables: &[Table]) -> Result<Vec<String>> {
    tables
        .iter()
        .map(|t| match t.schema.contains('.') {
            true => Err(Error::engine(format!(
                "database '{}' holds a non-transactional table ('{}') and a '.' in its name, which mariadb-dump \
                 cannot exclude; use --physical, or convert the table to InnoDB",
                t.schema, t.name
            ))),
            false => Ok(format!("--ignore-table={}.{}", t.schema, t.name)),
        })
        .collect()
}

/// An SQL identifier in backquotes.
fn quoted(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A global read lock (FLUSH TABLES WITH READ LOCK) held by a session of
/// ours: writes wait while it is held. Released by [`ReadLock::release`], or
/// by the session ending if this process dies.
pub struct ReadLock {
    session: Session,
}

/// What a failed lock exchange says first.
const HOLDING: &str = "cannot hold writes while non-transactional tables are read";

impl ReadLock {
    /// Takes the lock, waiting at most [`LOCK_WAIT_SECONDS`] for running statements.
    pub fn acquire(client: &Client) -> Result<ReadLock> {
        let sql = format!(
            "SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}; FLUSH TABLES WITH READ LOCK; SELECT '{LOCKED}';"
        );
        Ok(ReadLock { session: Session::open(client)?.expect(&sql, LOCKED, HOLDING)? })
    }

    /// Lets writes go on.
    pub fn release(self) -> Result<()> {
        self.session.expect(&format!("UNLOCK TABLES; SELECT '{UNLOCKED}';"), UNLOCKED, HOLDING)?.close()
    }
}

/// The non-transactional tables as SQL, one `mariadb-dump` per database
/// (run while a [`ReadLock`] holds writes), each preceded by the database's
/// creation (if it does not exist yet, with its character set and collation)
/// and a `USE`, so the text loads before the main dump that creates the rest.
pub struct TableDump<'a> {
    client: &'a Client,
    /// Databases still to dump, with their tables.
    pending: std::vec::IntoIter<(String, Vec<String>)>,
    /// The part being read: its header, then the running dump's output.
    current: Option<(std::io::Cursor<Vec<u8>>, Running, TailReader<ChildStdout>)>,
}

impl<'a> TableDump<'a> {
    /// The dump of `tables`.
    pub fn new(client: &'a Client, tables: &[Table]) -> TableDump<'a> {
        let mut by_schema: Vec<(String, Vec<String>)> = Vec::new();
        for table in tables {
            match by_schema.last_mut() {
                Some((schema, names)) if *schema == table.schema => names.push(table.name.clone()),
                _ => by_schema.push((table.schema.clone(), vec![table.name.clone()])),
            }
        }
        TableDump { client, pending: by_schema.into_iter(), current: None }
    }

    /// Starts the next database's dump; false when all are done.
    fn start_next(&mut self) -> Result<bool> {
        let Some((schema, tables)) = self.pending.next() else { return Ok(false) };
        let charset = self.client.query(&format!(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA \
             WHERE HEX(SCHEMA_NAME) = '{}'",
            hex::encode_upper(schema.as_bytes())
        ))?;
        let [charset, collation] = charset.first().map(Vec::as_slice).unwrap_or_default() else {
            return Err(Error::engine(format!("database '{schema}' vanished while it was being backed up")));
        };
        let header = format!(
            "\n-- Non-transactional tables of {db}, read while writes were held\n\
             CREATE DATABASE IF NOT EXISTS {db} CHARACTER SET {charset} COLLATE {collation};\nUSE {db};\n",
            db = quoted(&schema)
        );
        let mut args: Vec<&str> = vec!["--skip-lock-tables", "--triggers", "--hex-blob", "--quick", "--", &schema];
        args.extend(tables.iter().map(String::as_str));
        let mut dump = self.client.spawn("mariadb-dump", &args, |c| {
            c.stdout(Stdio::piped());
        })?;
        let stdout = dump.child.stdout.take().expect("stdout is piped");
        self.current = Some((std::io::Cursor::new(header.into_bytes()), dump, TailReader::new(stdout)));
        Ok(true)
    }

    /// Ends the current database's dump, checking it completed.
    fn finish_current(&mut self) -> Result<()> {
        let Some((_, dump, stdout)) = self.current.take() else { return Ok(()) };
        let completed = stdout.last.windows(COMPLETED.len()).any(|w| w == COMPLETED);
        drop(stdout);
        dump.finish()?;
        if !completed {
            return Err(Error::engine("mariadb-dump exited without error but its dump does not end as complete"));
        }
        Ok(())
    }

    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        loop {
            if self.current.is_none() && !self.start_next()? {
                return Ok(0);
            }
            let (header, _, stdout) = self.current.as_mut().expect("started above");
            let got = header.read(buf).map_err(|e| Error::io("cannot read a header", e))?;
            if got > 0 {
                return Ok(got);
            }
            let got = stdout.read(buf).map_err(|e| Error::io("cannot read mariadb-dump's output", e))?;
            if got > 0 {
                return Ok(got);
            }
            self.finish_current()?;
        }
    }
}

impl Read for TableDump<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read_some(buf).map_err(std::io::Error::other)
    }
}
