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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind as DalKind, Operator};

use super::address::{check_endpoint, redact, redact_location, Address, S3Address, SftpAddress};
use super::storage::{is_temporary, Listed, Storage};
use crate::error::{Error, Result};

/// Bytes sent per write request (S3 multipart parts are at least 5 MiB).
const UPLOAD_PIECE: usize = 8 << 20;

/// How long a remote storage may take, how often a step is tried, and how
/// many requests go out at once; from the environment ([`Limits::VARIABLES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long one attempt of a step (a request, one piece of a transfer or
    /// listing) may go without completing before it is given up.
    pub step: Duration,
    /// How many times a step that failed in a way that may pass (no answer
    /// in time, a server error) is tried again.
    pub retries: usize,
    /// How many requests to have in flight at once where work allows it
    /// (reading many snapshots or indexes).
    pub requests: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { step: Duration::from_secs(120), retries: 3, requests: 16 }
    }
}

impl Limits {
    /// The environment variables that set the limits: seconds per attempt,
    /// retries, and requests at once, with their ranges.
    pub const VARIABLES: [(&'static str, u64, u64); 3] = [
        ("BACKPIPE_STORAGE_TIMEOUT", 1, 86_400),
        ("BACKPIPE_STORAGE_RETRIES", 0, 100),
        ("BACKPIPE_STORAGE_REQUESTS", 1, 32),
    ];

    /// The defaults, with whatever [`Limits::VARIABLES`] set; a value that is not a
    /// whole number in range is a usage error.
    pub fn from_environment() -> Result<Limits> {
        let mut limits = Limits::default();
        for (name, low, high) in Self::VARIABLES {
            let Some(value) = std::env::var_os(name).filter(|v| !v.is_empty()) else { continue };
            let value = value.to_string_lossy();
            let number =
                value.trim().parse::<u64>().ok().filter(|n| (low..=high).contains(n)).ok_or_else(|| {
                    Error::usage(format!("{name}='{value}' is not a whole number from {low} to {high}"))
                })?;
            match name {
                "BACKPIPE_STORAGE_TIMEOUT" => limits.step = Duration::from_secs(number),
                "BACKPIPE_STORAGE_RETRIES" => limits.retries = number as usize,
                _ => limits.requests = number as usize,
            }
        }
        Ok(limits)
    }

    /// The longest pause between two attempts: they start at 1 s and double
    /// up to this, and a random part of up to as much again is added.
    const MAX_PAUSE: Duration = Duration::from_secs(8);

    /// The longest a step can take when the service answers nothing: every
    /// attempt runs out its time, with the longest pauses between them.
    pub fn bound(&self) -> Duration {
        let pause = |n: usize| Duration::from_secs(1 << n.min(3)).min(Self::MAX_PAUSE) * 2;
        self.step * (self.retries as u32 + 1) + (0..self.retries).map(pause).sum::<Duration>()
    }

    /// How long a step waits before the first notice that the service is not
    /// answering: 30 s, or half an attempt's time when that is shorter.
    fn first_notice(&self) -> Duration {
        Duration::from_secs(30).min(self.step / 2).max(Duration::from_millis(500))
    }

    /// How long between further notices: a minute, or an attempt's time when that is shorter.
    fn next_notice(&self) -> Duration {
        Duration::from_secs(60).min(self.step)
    }
}

/// The `--help` paragraph on the limits of remote storage, for the tools that
/// take a repository (a macro, so that `concat!` joins it to their text).
#[macro_export]
macro_rules! storage_limits_help {
    () => {
        "SFTP and S3: a server that does not answer is named on stderr after 30 s,
then every minute; the tool gives up after 4 attempts of 120 s at one step
(8 min 14 s). BACKPIPE_STORAGE_TIMEOUT (seconds per attempt),
BACKPIPE_STORAGE_RETRIES and BACKPIPE_STORAGE_REQUESTS (requests at once,
default 16) set the limits; see docs/REPOSITORY.md, Failures."
    };
}

/// "45 s", "8 min 14 s", "2 h 3 min", "3 d 1 h": a duration for people, to two units.
pub fn describe_duration(duration: Duration) -> String {
    let secs = duration.as_secs_f64().round() as u64;
    let units = [(secs / 86_400, "d"), (secs / 3600 % 24, "h"), (secs / 60 % 60, "min"), (secs % 60, "s")];
    let first = units.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    let shown: Vec<String> = units[first..(first + 2).min(4)]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}"))
        .collect();
    match shown.is_empty() {
        true => "0 s".to_string(),
        false => shown.join(" "),
    }
}

/// A repository on a remote service.
pub struct RemoteStorage {
    runtime: tokio::runtime::Runtime,
    operator: Operator,
    /// Where, for messages (redacted).
    location: String,
    /// Write under a temporary name and rename (SFTP, where writes are not atomic).
    staged_writes: bool,
    limits: Limits,
    /// When the last notice of waiting went out: one per interval, however many requests wait.
    last_notice: Mutex<Option<Instant>>,
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
        let limits = Limits::from_environment()?;
        // Every attempt of a step has the same time; retries pause 1, 2, 4, 8, 8... s, each plus up to as much.
        let operator =
            operator.layer(TimeoutLayer::new().with_timeout(limits.step).with_io_timeout(limits.step)).layer(
                RetryLayer::new()
                    .with_max_times(limits.retries)
                    .with_min_delay(Duration::from_secs(1))
                    .with_factor(2.0)
                    .with_max_delay(Limits::MAX_PAUSE)
                    .with_jitter(),
            );
        Ok(RemoteStorage { runtime, operator, location: shown, staged_writes, limits, last_notice: Mutex::new(None) })
    }

    /// Runs one step (`what` object `name`, e.g. "write", "data/ab/..."),
    /// sending a notice while it goes unanswered: first after
    /// [`Limits::first_notice`], then every [`Limits::next_notice`].
    fn run<T>(&self, what: &str, name: &str, work: impl IntoFuture<Output = opendal::Result<T>>) -> opendal::Result<T> {
        self.runtime.block_on(async {
            let mut work = std::pin::pin!(work.into_future());
            let began = Instant::now();
            let mut wait = self.limits.first_notice();
            loop {
                match tokio::time::timeout(wait, &mut work).await {
                    Ok(result) => return result,
                    Err(_) => self.notice_waiting(what, name, began.elapsed()),
                }
                wait = self.limits.next_notice();
            }
        })
    }

    /// Runs a clean-up step after a failure (giving up an upload, deleting a
    /// temporary object) once, for at most one attempt's time: a service
    /// that stopped answering must not hold the tool for another full bound.
    fn clean_up<T>(&self, work: impl IntoFuture<Output = opendal::Result<T>>) {
        let _ = self.runtime.block_on(async { tokio::time::timeout(self.limits.step, work.into_future()).await });
    }

    fn notice_waiting(&self, what: &str, name: &str, waited: Duration) {
        if !crate::notice::wanted() {
            return;
        }
        {
            // However many requests wait at once, one line per interval.
            let mut last = self.last_notice.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.limits.first_notice()) {
                return;
            }
            *last = Some(Instant::now());
        }
        crate::notice::notice(&format!(
            "{} is not answering: no reply for {} while {what} '{name}'; giving up after {} (BACKPIPE_STORAGE_TIMEOUT={} s per attempt, BACKPIPE_STORAGE_RETRIES={})",
            self.location,
            describe_duration(waited),
            describe_duration(self.limits.bound()),
            self.limits.step.as_secs(),
            self.limits.retries,
        ));
    }

    fn fail(&self, name: &str, what: &str, err: opendal::Error) -> Error {
        let mut cause = redact(&one_line(&err));
        // OpenDAL's own words: "operation timeout reached", "write part timeout", ...
        if cause.contains("timeout") {
            cause = format!(
                "no answer: {} attempts of {} each went unanswered (see BACKPIPE_STORAGE_TIMEOUT and BACKPIPE_STORAGE_RETRIES)",
                self.limits.retries + 1,
                describe_duration(self.limits.step)
            );
        }
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
        let mut writer =
            self.run("writing", name, self.operator.writer(target)).map_err(|e| self.fail(name, "write", e))?;
        let sent = match self.send(name, &mut writer, content) {
            Ok(sent) => sent,
            Err(err) => {
                // Gives up a multipart upload, so no stored parts are left behind.
                self.clean_up(writer.abort());
                return Err(err);
            }
        };
        // A write retried after partial progress could leave a longer, shifted
        // object: it must hold exactly what was sent before anything refers to it.
        let stored =
            self.run("inspecting", name, self.operator.stat(target)).map_err(|e| self.fail(name, "inspect", e))?;
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
            self.run("writing", name, writer.write(piece)).map_err(|e| self.write_failure(name, e))?;
        }
        self.run("writing", name, writer.close()).map_err(|e| self.write_failure(name, e))?;
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
            self.clean_up(self.operator.delete(&temp));
            return Err(err);
        }
        match self.run("publishing", name, self.operator.rename(&temp, name)) {
            Ok(()) => Ok(true),
            Err(err) => {
                self.clean_up(self.operator.delete(&temp));
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
        match self.run("writing", name, self.operator.write_with(name, bytes.to_vec()).if_not_exists(true)) {
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
        self.run("reading", name, self.operator.read(name)).map(|b| b.to_vec()).map_err(|e| self.fail(name, "read", e))
    }

    fn read_if_exists(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.run("reading", name, self.operator.read(name)) {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(e) if e.kind() == DalKind::NotFound => Ok(None),
            Err(e) => Err(self.fail(name, "read", e)),
        }
    }

    fn read_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let bytes = self
            .run("reading", name, self.operator.read_with(name).range(offset..offset + len as u64))
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

    fn list_detailed(&self, folder: &str) -> Result<Vec<Listed>> {
        let path = format!("{folder}/");
        let entries = match self.run("listing", folder, self.operator.list_with(&path).recursive(true)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == DalKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.fail(folder, "list", e)),
        };
        let mut objects: Vec<Listed> = entries
            .into_iter()
            .map(|entry| {
                let (path, metadata) = entry.into_parts();
                let modified = metadata.last_modified().map(|t| DateTime::<Utc>::from(std::time::SystemTime::from(t)));
                Listed { name: path.trim_start_matches('/').to_string(), size: metadata.content_length(), modified }
            })
            .filter(|object| !object.name.ends_with('/') && !is_temporary(&object.name))
            .collect();
        objects.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(objects)
    }

    fn concurrency(&self) -> usize {
        self.limits.requests
    }

    fn exists(&self, name: &str) -> Result<bool> {
        self.run("looking for", name, self.operator.exists(name)).map_err(|e| self.fail(name, "look for", e))
    }

    fn size(&self, name: &str) -> Result<u64> {
        self.run("inspecting", name, self.operator.stat(name))
            .map(|m| m.content_length())
            .map_err(|e| self.fail(name, "inspect", e))
    }

    fn remove(&self, name: &str) -> Result<()> {
        self.run("deleting", name, self.operator.delete(name)).map_err(|e| self.fail(name, "delete", e))
    }

    fn ensure_empty(&self) -> Result<()> {
        let entries = self.run("listing", "/", self.operator.list("/")).or_else(|e| match e.kind() {
            DalKind::NotFound => Ok(Vec::new()),
            _ => Err(self.fail("/", "list", e)),
        })?;
        if entries.iter().any(|entry| entry.path() != "/" && !entry.path().is_empty()) {
            return Err(Error::other(format!("{} is not empty; a repository needs a place of its own", self.location)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_bound_every_attempt_and_pause() {
        let limits = Limits::default();
        assert_eq!(limits.bound(), Duration::from_secs(4 * 120 + 2 * (1 + 2 + 4)));
        assert_eq!(describe_duration(limits.bound()), "8 min 14 s");
        let none = Limits { step: Duration::from_secs(2), retries: 0, requests: 1 };
        assert_eq!(none.bound(), Duration::from_secs(2));
        assert_eq!((none.first_notice(), none.next_notice()), (Duration::from_secs(1), Duration::from_secs(2)));
        assert_eq!((limits.first_notice(), limits.next_notice()), (Duration::from_secs(30), Duration::from_secs(60)));
        for (secs, text) in
            [(0, "0 s"), (45, "45 s"), (3600, "1 h"), (3 * 86_400 + 3700, "3 d 1 h"), (125, "2 min 5 s")]
        {
            assert_eq!(describe_duration(Duration::from_secs(secs)), text);
        }
    }
}
