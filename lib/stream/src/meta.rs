//! The JSON payloads of the metadata frames: Begin, Entry, EntryEnd, End, Abort.
//!
//! Readers ignore fields they do not know, so producers can add fields
//! without breaking older consumers.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Payload of the Begin frame that opens every stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Begin {
    /// The tool that produced the stream ("dump-files").
    pub producer: String,
    /// The producer's version.
    pub version: String,
    /// Host name of the machine the data came from.
    pub host: String,
    /// The engine ("files", "mysql", "exchange", ...).
    pub engine: String,
    /// The backup kind ("full", "incremental", "differential", "log").
    pub kind: String,
    /// When the backup started, RFC 3339 in UTC.
    pub started: String,
    /// The engine's positions at the start (log generation, LSN, binlog coordinates).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub positions: Map<String, Value>,
    /// The backup this one continues: the stream ID (hex) of its full for
    /// a differential, of the previous backup in its log chain for a log or
    /// incremental backup (log chains may run on across later fulls). None
    /// for a full, and in streams written before parents were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The instance backed up, as the engine names it (a MySQL server's
    /// binary log sequence, a SQL Server database, a PostgreSQL cluster):
    /// backups of one host and engine with different sources are separate
    /// histories, never one chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Total content bytes the producer expects to send, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_bytes: Option<u64>,
}

impl Begin {
    /// A Begin for a backup by `producer` starting now on this host.
    pub fn now(producer: &str, engine: &str, kind: &str) -> Begin {
        Begin {
            producer: producer.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            host: host_name(),
            engine: engine.to_string(),
            kind: kind.to_string(),
            started: now_rfc3339(),
            positions: Map::new(),
            parent: None,
            source: None,
            expected_bytes: None,
        }
    }

    /// The backup kind, typed.
    pub fn backup_kind(&self) -> BackupKind {
        BackupKind::from_name(&self.kind)
    }
}

/// What a backup holds, and so how it chains to others.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackupKind {
    /// Everything: a base that needs no other backup.
    Full,
    /// A full taken outside the schedule (SQL Server's COPY_ONLY): a base for
    /// restores, but not one later differentials build on.
    CopyOnlyFull,
    /// What changed since its full (`parent`).
    Differential,
    /// What changed since the previous backup of its chain (`parent`).
    Incremental,
    /// The logs written since the previous log backup (`parent`).
    Log,
    /// A kind a newer producer wrote: kept and listed, never a base.
    Other(String),
}

impl BackupKind {
    /// The kind a Begin frame's `kind` names.
    pub fn from_name(name: &str) -> BackupKind {
        match name {
            "full" => BackupKind::Full,
            "copy-only" | "copy-only-full" => BackupKind::CopyOnlyFull,
            "differential" => BackupKind::Differential,
            "incremental" => BackupKind::Incremental,
            "log" => BackupKind::Log,
            other => BackupKind::Other(other.to_string()),
        }
    }

    /// True for a backup a restore can start from.
    pub fn is_base(&self) -> bool {
        matches!(self, BackupKind::Full | BackupKind::CopyOnlyFull)
    }

    /// True for a backup of a log chain (a log or incremental backup).
    pub fn is_log(&self) -> bool {
        matches!(self, BackupKind::Incremental | BackupKind::Log)
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    /// A regular file (or any byte content: a dump, a log): Data frames follow.
    File,
    /// A directory: no Data frames.
    Dir,
    /// A symbolic link: no Data frames; the target is in the metadata.
    Symlink,
    /// A further name of a file stored earlier in the same stream (a hard
    /// link): no Data frames; the earlier entry's path is the target.
    Hardlink,
}

/// A path as raw bytes; UTF-8 paths serialize as JSON strings, others as `{"hex": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPath(pub Vec<u8>);

impl RawPath {
    /// The path for display, with invalid UTF-8 replaced.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum RawPathRepr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for RawPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => RawPathRepr::Text(text.to_string()).serialize(s),
            Err(_) => RawPathRepr::Hex { hex: hex::encode(&self.0) }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for RawPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawPathRepr::deserialize(d)? {
            RawPathRepr::Text(text) => Ok(RawPath(text.into_bytes())),
            RawPathRepr::Hex { hex } => hex::decode(hex).map(RawPath).map_err(serde::de::Error::custom),
        }
    }
}

/// Payload of an Entry frame: one file, directory, symlink, log or dump.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Relative path, `/`-separated.
    pub path: RawPath,
    /// What the entry is.
    #[serde(rename = "type")]
    pub entry_type: EntryType,
    /// The entry's role for its engine ("file", "database", "log", "checkpoint", ...).
    pub role: String,
    /// Content size the producer expects; EntryEnd carries the size actually sent.
    pub size: u64,
    /// Unix permission bits (including setuid, setgid, sticky).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    #[serde(default)]
    pub mtime_ns: u32,
    /// Numeric owner, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Numeric group, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// A symlink's target, verbatim; for a hard link, the path of the
    /// earlier entry it is another name of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RawPath>,
    /// A file's number of names at the source, when it had more than one:
    /// later entries of the stream may be hard links to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<u64>,
    /// Extended attributes (POSIX ACLs and file capabilities among them), in
    /// the order the source listed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// Engine-specific attributes (page size, log generation, checksums verified).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attrs: Map<String, Value>,
}

/// One extended attribute: its full name (`user.mime_type`,
/// `system.posix_acl_access`, `security.capability`) and its value, hex.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Xattr {
    /// The attribute's name, namespace included.
    pub name: RawPath,
    /// The value's bytes as lowercase hex.
    pub value: String,
}

/// Payload of an EntryEnd frame: what the producer actually sent for the entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryEnd {
    /// Content bytes sent.
    pub size: u64,
    /// BLAKE3 digest of the content, lowercase hex.
    pub blake3: String,
}

/// Payload of the End frame that closes a complete stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct End {
    /// Number of entries in the stream.
    pub entries: u64,
    /// Total content bytes of all entries.
    pub bytes: u64,
    /// The engine's positions known only at the end, such as where a hot
    /// physical backup became consistent; they add to (and override) Begin's.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub positions: Map<String, Value>,
    /// How many things changed while the source read them (files that
    /// vanished, were replaced or were written to): the stream is complete,
    /// but not a snapshot of one instant. Zero for a consistent read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub changed: u64,
    /// The first of those changes, one line each (at most [`End::MAX_WARNINGS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl End {
    /// The most change warnings an End frame carries; `changed` counts them all.
    pub const MAX_WARNINGS: usize = 100;
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Payload of an Abort frame: why the stream is incomplete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Abort {
    /// The tool that gave up.
    pub producer: String,
    /// The one-line cause.
    pub reason: String,
    /// The exit status of the cause's class (5 for a database error), so
    /// the last stage of a pipeline exits as the stage that failed did.
    /// Absent in streams of earlier versions: read as incomplete (3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
}

/// The current time as RFC 3339 in UTC, to the second.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The host name the backups written by this process record, when set
/// (`--host-name`, `BACKPIPE_HOST_NAME`): a container whose host name changes
/// on every restart, or a renamed machine, keeps one name.
static RECORDED_HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// True when `text` can be a host, engine, kind or source name in a Begin
/// frame: 1 to 255 bytes, no control characters (so a listing line can
/// never be forged with one).
pub fn is_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= 255 && !text.chars().any(char::is_control)
}

/// Sets the host name the backups written by this process record; refuses
/// what is not a name (see [`is_name`]).
pub fn record_host_as(name: &str) -> crate::Result<()> {
    if !is_name(name) {
        return Err(crate::Error::usage(format!("host name {name:?} is not a name")));
    }
    let _ = RECORDED_HOST.set(name.to_string());
    Ok(())
}

/// The host name backups record: the one set by [`record_host_as`], else
/// this machine's, or "unknown".
pub fn host_name() -> String {
    if let Some(name) = RECORDED_HOST.get() {
        return name.clone();
    }
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".to_string())
}
