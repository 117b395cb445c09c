//! Repositories on SFTP servers and S3-compatible services, through Apache
//! OpenDAL. Our [`Storage`] operations are blocking; each call runs OpenDAL's
//! future to completion on a small private Tokio runtime.
//!
//! Publishing never relies on conditional writes: object names are content
//! hashes or random, so two writers of one name write the same bytes, and an
//! S3 PUT is atomic. SFTP writes land in a `.tmp-` name first and are renamed
//! into place, so a killed writer never leaves a partial object under a real name.
//! The one exception is `config`, which `repo init` creates only where none
//! exists ([`Storage::create_new`]): an exclusive open on SFTP, a conditional
//! PUT (`If-None-Match: *`) on S3.
//!
//! Messages quote the location through [`redact_location`] and OpenDAL's
//! causes through [`redact`], so no user information in a URL reaches stderr.

use std::future::IntoFuture;
use std::io::Read;
use std::time::Duration;

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind as DalKind, Operator};

use super::address::{check_endpoint, redact, redact_location, Address, S3Address, SftpAddress};
use super::storage::{is_temporary, Storage};
use crate::error::{Error, Result};

/// Bytes sent per write request (S3 multipart parts are at least 5 MiB).
const UPLOAD_PIECE: usize = 8 << 20;

/// A repository on a remote service.
pub struct RemoteStorage {
    runtime: tokio::runtime::Runtime,
    operator: Operator,
    /// Where, for messages (redacted).
    location: String,
    /// Write under a temporary name and rename (SFTP, where writes are not atomic).
    staged_writes: bool,
}

impl RemoteStorage {
    /// Connects lazily to the service an `sftp://` or `s3://` address names.
    pub fn open(address: &Address, location: &str) -> Result<RemoteStorage> {
        // Registers the HTTP transport S3 requests go through (once per process).
        opendal::install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backpipe-storage")
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the storage runtime", e))?;
        let shown = redact_location(location);
        let config_error = |e: opendal::Error| Error::usage(format!("'{shown}': {}", redact(&one_line(&e))));
        let (operator, staged_writes) = match address {
            Address::Sftp(sftp) => (sftp_operator(sftp).map_err(config_error)?, true),
            Address::S3(s3) => {
                if s3.endpoint.is_none() {
                    endpoint_from_environment().map_err(|e| Error::usage(format!("'{shown}': {e}")))?;
                }
                (s3_operator(s3).map_err(config_error)?, false)
            }
            Address::Local(_) => unreachable!("local repositories use LocalStorage"),
        };
        let operator = operator
            .layer(TimeoutLayer::new().with_timeout(Duration::from_secs(120)).with_io_timeout(Duration::from_secs(300)))
            .layer(RetryLayer::new().with_max_times(3).with_jitter());
        Ok(RemoteStorage { runtime, operator, location: shown, staged_writes })
    }

    fn run<T>(&self, work: impl IntoFuture<Output = opendal::Result<T>>) -> opendal::Result<T> {
        self.runtime.block_on(work.into_future())
    }

    fn fail(&self, name: &str, what: &str, err: opendal::Error) -> Error {
        let mut cause = redact(&one_line(&err));
        if cause.contains("failed to load signing credential") {
            cause.push_str(
                " (no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use a credentials file: AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE)",
            );
        }
        let message = format!("cannot {what} '{name}' in {}: {cause}", self.location);
        match err.kind() {
            DalKind::ConfigInvalid => Error::usage(message),
            _ => Error::other(message),
        }
    }

    /// Writes what `content` reads to object `target`, a piece at a time.
    fn upload(&self, name: &str, target: &str, content: &mut dyn Read) -> Result<()> {
        let mut writer = self.run(self.operator.writer(target)).map_err(|e| self.fail(name, "write", e))?;
        let sent = match self.send(name, &mut writer, content) {
            Ok(sent) => sent,
            Err(err) => {
                // Gives up a multipart upload, so no stored parts are left behind.
                let _ = self.run(writer.abort());
                return Err(err);
            }
        };
        // A write retried after partial progress could leave a longer, shifted
        // object: it must hold exactly what was sent before anything refers to it.
        let stored = self.run(self.operator.stat(target)).map_err(|e| self.fail(name, "inspect", e))?;
        if stored.content_length() != sent {
            return Err(Error::other(format!(
                "cannot write '{name}' in {}: {} bytes arrived of {sent} sent (the connection failed mid-write)",
                self.location,
                stored.content_length()
            )));
        }
        Ok(())
    }

    /// Sends everything `content` reads; returns the byte count.
    fn send(&self, name: &str, writer: &mut opendal::Writer, content: &mut dyn Read) -> Result<u64> {
        let mut sent = 0u64;
        loop {
            // Each piece is read into a buffer of its own and handed over, not copied.
            let mut piece = Vec::with_capacity(UPLOAD_PIECE);
            content
                .take(UPLOAD_PIECE as u64)
                .read_to_end(&mut piece)
                .map_err(|e| Error::io(format!("cannot read what goes into '{name}'"), e))?;
            if piece.is_empty() {
                break;
            }
            sent += piece.len() as u64;
            self.run(writer.write(piece)).map_err(|e| self.write_failure(name, e))?;
        }
        self.run(writer.close()).map_err(|e| self.write_failure(name, e))?;
        Ok(sent)
    }

    fn write_failure(&self, name: &str, err: opendal::Error) -> Error {
        // SFTP version 3 has no codes for a full disk or a read-only file system.
        let vague = err.kind() == DalKind::Unexpected && err.to_string().contains("kind Failure");
        let hint = if vague { " (the server gave no reason: often a full disk or a read-only directory)" } else { "" };
        Error::other(format!("{}{hint}", self.fail(name, "write", err)))
    }

    /// Writes under a temporary name in the same folder, then renames it into
    /// place. Whether the rename may replace an existing object depends on the
    /// server (OpenSSH's posix-rename does); either is safe, since two objects
    /// of one name hold the same bytes.
    fn create_staged(&self, name: &str, content: &mut dyn Read) -> Result<bool> {
        let (folder, file) = name.rsplit_once('/').unwrap_or(("", name));
        let mut random = [0u8; 8];
        crate::random::fill(&mut random);
        let temp = format!("{folder}/.tmp-{}-{file}", hex::encode(random));
        if let Err(err) = self.upload(name, &temp, content) {
            let _ = self.run(self.operator.delete(&temp));
            return Err(err);
        }
        match self.run(self.operator.rename(&temp, name)) {
            Ok(()) => Ok(true),
            Err(err) => {
                let _ = self.run(self.operator.delete(&temp));
                if self.exists(name)? {
                    Ok(false)
                } else {
                    Err(self.fail(name, "publish", err))
                }
            }
        }
    }
}

/// The environment variable naming the SSH private key file for `sftp://`
/// repositories; without it, `ssh`'s own configuration and agent decide.
pub const SFTP_IDENTITY: &str = "BACKPIPE_SFTP_IDENTITY";

fn sftp_operator(sftp: &SftpAddress) -> opendal::Result<Operator> {
    let endpoint = match sftp.port {
        Some(port) => format!("ssh://{}:{port}", sftp.host),
        None => format!("ssh://{}", sftp.host),
    };
    let mut builder = opendal::services::Sftp::default().endpoint(&endpoint).root(&sftp.path);
    if let Some(user) = &sftp.user {
        builder = builder.user(user);
    }
    if let Some(identity) = std::env::var_os(SFTP_IDENTITY).filter(|v| !v.is_empty()) {
        builder = builder.key(&identity.to_string_lossy());
    }
    // Host keys are checked against known_hosts; an unknown server is refused.
    builder = builder.known_hosts_strategy("strict");
    Operator::new(builder)
}

/// The variables OpenDAL reads an S3 endpoint from when the URL names none, first set first.
const ENDPOINT_VARIABLES: [&str; 3] = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_S3_ENDPOINT"];

/// Refuses an endpoint from the environment that carries credentials, as one in the URL is.
fn endpoint_from_environment() -> std::result::Result<(), String> {
    let Some((name, value)) = ENDPOINT_VARIABLES
        .iter()
        .find_map(|name| Some((name, std::env::var(name).ok()?)))
        .filter(|(_, v)| !v.is_empty())
    else {
        return Ok(());
    };
    match check_endpoint(&value) {
        Err(why) if why.contains("user name or password") => Err(format!(
            "{name} has a user name or password in it; credentials never go in a URL (see docs/REPOSITORY.md for where they go)"
        )),
        _ => Ok(()),
    }
}

fn s3_operator(s3: &S3Address) -> opendal::Result<Operator> {
    let region = s3.region.clone().or_else(|| std::env::var("AWS_REGION").ok()).unwrap_or_else(|| "us-east-1".into());
    let mut builder = opendal::services::S3::default()
        .bucket(&s3.bucket)
        .root(&format!("/{}", s3.prefix))
        .region(&region)
        .disable_ec2_metadata();
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.endpoint(endpoint);
    }
    if s3.virtual_host {
        builder = builder.enable_virtual_host_style();
    }
    Operator::new(builder)
}

/// OpenDAL's error as one line a user can act on: what kind of failure,
/// then the chain of causes (the deepest is usually the useful one), without
/// the request context OpenDAL attaches.
fn one_line(err: &opendal::Error) -> String {
    let kind = match err.kind() {
        DalKind::PermissionDenied => "permission denied (check the credentials and the access rights)",
        DalKind::NotFound => "not found",
        DalKind::ConfigInvalid => "invalid configuration",
        DalKind::RateLimited => "the service is refusing requests (rate limit)",
        DalKind::Unsupported => "not supported by this service",
        _ => "",
    };
    let mut parts: Vec<String> = Vec::new();
    let mut push = |text: String| {
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    };
    push(kind.to_string());
    push(err.message().to_string());
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        push(inner.to_string());
        cause = inner.source();
    }
    parts.join(": ")
}

impl Storage for RemoteStorage {
    fn create_new(&self, name: &str, bytes: &[u8]) -> Result<bool> {
        // One request, under the final name: SFTP opens it with SSH_FXF_EXCL
        // (O_EXCL on the server), S3 sends If-None-Match: *. (A staged SFTP
        // write is no use here: OpenSSH's posix-rename replaces the target.)
        match self.run(self.operator.write_with(name, bytes.to_vec()).if_not_exists(true)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == DalKind::ConditionNotMatch => Ok(false),
            // S3's "a conflicting conditional write is in progress", still so after the retries.
            Err(e) if e.kind() == DalKind::Conflict && self.exists(name)? => Ok(false),
            Err(e) => Err(self.write_failure(name, e)),
        }
    }

    fn create_from(&self, name: &str, content: &mut dyn Read) -> Result<bool> {
        if self.staged_writes {
            return self.create_staged(name, content);
        }
        // Same name, same bytes: an existing object is rewritten identically.
        self.upload(name, name, content)?;
        Ok(true)
    }

    fn read(&self, name: &str) -> Result<Vec<u8>> {
        self.run(self.operator.read(name)).map(|b| b.to_vec()).map_err(|e| self.fail(name, "read", e))
    }

    fn read_if_exists(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.run(self.operator.read(name)) {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(e) if e.kind() == DalKind::NotFound => Ok(None),
            Err(e) => Err(self.fail(name, "read", e)),
        }
    }

    fn read_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let bytes = self
            .run(self.operator.read_with(name).range(offset..offset + len as u64))
            .map_err(|e| self.fail(name, "read", e))?;
        if bytes.len() != len {
            return Err(Error::other(format!(
                "cannot read '{name}' in {}: it ends {} bytes short of what its index says",
                self.location,
                len - bytes.len().min(len)
            )));
        }
        Ok(bytes.to_vec())
    }

    fn list(&self, folder: &str) -> Result<Vec<String>> {
        let entries = match self.run(self.operator.list_with(&format!("{folder}/")).recursive(true)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == DalKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.fail(folder, "list", e)),
        };
        let mut names: Vec<String> = entries
            .into_iter()
            .map(|entry| entry.path().trim_start_matches('/').to_string())
            .filter(|path| !path.ends_with('/') && !is_temporary(path))
            .collect();
        names.sort();
        Ok(names)
    }

    fn exists(&self, name: &str) -> Result<bool> {
        self.run(self.operator.exists(name)).map_err(|e| self.fail(name, "look for", e))
    }

    fn size(&self, name: &str) -> Result<u64> {
        self.run(self.operator.stat(name)).map(|m| m.content_length()).map_err(|e| self.fail(name, "inspect", e))
    }

    fn remove(&self, name: &str) -> Result<()> {
        self.run(self.operator.delete(name)).map_err(|e| self.fail(name, "delete", e))
    }

    fn ensure_empty(&self) -> Result<()> {
        let entries = self.run(self.operator.list("/")).or_else(|e| match e.kind() {
            DalKind::NotFound => Ok(Vec::new()),
            _ => Err(self.fail("/", "list", e)),
        })?;
        if entries.iter().any(|entry| entry.path() != "/" && !entry.path().is_empty()) {
            return Err(Error::other(format!("{} is not empty; a repository needs a place of its own", self.location)));
        }
        Ok(())
    }
}
