//! The command-line kit: what every tool's `main` shares: argument parsing
//! (and the manual page and completion written from it), pipe sizing, the
//! library's notices printed after the tool's name, key and selection
//! options, opening a repository, stdin and stdout set up for a stream, and
//! turning an error into one line on stderr and a documented exit status.

#![deny(missing_docs)]

use std::path::PathBuf;

// The crates below, under the names the kit uses.
use backpipe_codec::keys;
use backpipe_repo as repo;
use backpipe_stream::{error, notice, pipe};

use crate::error::Result;
use crate::keys::SecretSource;

/// The environment variable `scripts/install` sets to a directory: a tool
/// started with it and no arguments writes its manual page (`man1/TOOL.1`)
/// and its bash completion (`bash-completion/TOOL`) there, from its own
/// argument definitions, and exits. With arguments it is ignored, so the
/// variable leaking into a job's environment never turns a backup or a
/// purge into a silent success.
pub const MANUALS_ENV: &str = "BACKPIPE_INSTALL_MANUALS";

/// Parses the tool's arguments (exiting with clap's message and status 2
/// when they are wrong), or writes its manual and completion (see
/// [`MANUALS_ENV`]) and exits.
pub fn parse<A: clap::Parser>() -> A {
    if let Some(dir) = std::env::var_os(MANUALS_ENV).filter(|_| std::env::args_os().len() == 1) {
        let dir = PathBuf::from(dir);
        match write_manuals(&mut A::command(), &dir) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                say(&format!("cannot write the manual into '{}': {e}", dir.display()));
                std::process::exit(1)
            }
        }
    }
    A::parse()
}

/// Writes `command`'s manual page and bash completion under `dir`.
fn write_manuals(command: &mut clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
    let name = command.get_name().to_string();
    std::fs::create_dir_all(dir.join("man1"))?;
    std::fs::create_dir_all(dir.join("bash-completion"))?;
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    std::fs::write(dir.join("man1").join(format!("{name}.1")), page)?;
    let mut completion = Vec::new();
    clap_complete::generate(clap_complete::Shell::Bash, command, name.clone(), &mut completion);
    std::fs::write(dir.join("bash-completion").join(name), completion)
}

/// Runs a tool's body and exits: 0 on success, the error's class status otherwise.
/// The library's notices go to stderr as they come, after the tool's name.
pub fn main(tool: &str, body: impl FnOnce() -> Result<()>) -> ! {
    prepare_process();
    let name = tool.to_string();
    crate::notice::set_sink(move |notice| say(&format!("{name}: {notice}")));
    let result = body();
    // Interrupted (for the tools that catch signals): the signal's status, not this.
    backpipe_kit::interrupt::wait_if_interrupted();
    match result {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            if !err.is_quiet() {
                say(&format!("{tool}: {err}"));
            }
            std::process::exit(err.kind().exit_code())
        }
    }
}

/// Writes one line to stderr in a single write, so lines from the stages of a
/// pipeline never interleave.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Tunes the allocator for frame-sized buffers and widens pipes on stdin and
/// stdout to 1 MiB so frames move in few system calls. SIGPIPE stays ignored
/// (Rust's default): a closed stdout ends the tool quietly through the
/// broken-pipe error instead, and a dropped SSH connection is an error, not a
/// silent kill.
fn prepare_process() {
    // Frame buffers of a few MiB are allocated and freed all the time. By
    // default glibc maps and unmaps each one (or trims the heap after it),
    // and the page faults cost more than the work; keep them on the heap.
    // SAFETY: mallopt only sets allocator parameters, before any threads start.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 32 << 20);
        nix::libc::mallopt(nix::libc::M_TRIM_THRESHOLD, 256 << 20);
    }
    for fd in [0, 1] {
        if crate::pipe::is_pipe(fd) {
            crate::pipe::widen(fd);
        }
    }
}

/// The host name a producer's backups record: the option every `dump-*` takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Recorded {
    /// Record NAME as the backup's host instead of this machine's host name
    /// (for a container or a renamed machine; `fetch --host` and `repo
    /// snapshots` show it).
    #[arg(long = "host-name", value_name = "NAME", env = "BACKPIPE_HOST_NAME", value_parser = host_name)]
    pub host_name: Option<String>,
}

/// Refuses, as clap reads the options (before any stream is started), a
/// host name a Begin frame cannot carry.
fn host_name(text: &str) -> std::result::Result<String, String> {
    match backpipe_stream::meta::is_name(text) {
        true => Ok(text.to_string()),
        false => Err("a host name is 1 to 255 bytes without control characters".to_string()),
    }
}

impl Recorded {
    /// Makes the backups this process writes record the name given, if any.
    pub fn apply(&self) -> Result<()> {
        match &self.host_name {
            Some(name) => backpipe_stream::meta::record_host_as(name),
            None => Ok(()),
        }
    }
}

/// Which backups a command considers: the options `fetch` and `repo` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selection {
    /// Only backups of this host (the host name the backup recorded, see `repo snapshots`).
    #[arg(long)]
    pub host: Option<String>,
    /// Only backups of this engine (files, mysql, ...).
    #[arg(long)]
    pub engine: Option<String>,
    /// Only backups of this source: the instance backed up, as the engine
    /// names it (`repo snapshots --json` shows it; a MySQL server is
    /// `server ID BINLOG-BASENAME`). Needed where one host backs up several.
    #[arg(long)]
    pub source: Option<String>,
}

impl Selection {
    /// The repository's filter for it.
    pub fn filter(&self) -> repo::listing::Filter {
        repo::listing::Filter { host: self.host.clone(), engine: self.engine.clone(), source: self.source.clone() }
    }
}

/// The key options shared by tools that encrypt or decrypt. At most one may be given.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(multiple = false)]
pub struct KeyArgs {
    /// Key file made by `keygen`.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Read the passphrase from this file (one trailing newline is ignored).
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the passphrase from this open file descriptor, e.g. `3<secret`.
    #[arg(long, value_name = "FD")]
    pub passphrase_fd: Option<i32>,
    /// Read the passphrase from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
}

impl KeyArgs {
    /// The chosen secret source, if any.
    pub fn source(&self) -> Option<SecretSource> {
        source_from(&self.key_file, &self.passphrase_file, self.passphrase_fd, &self.passphrase_env)
    }
}

/// The key to add to a repository (`repo key add`). Exactly one is required.
#[derive(Debug, Clone, Default, clap::Args)]
#[group(required = true, multiple = false)]
pub struct NewKeyArgs {
    /// The new key: a key file made by `keygen`.
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
    /// The new key: a passphrase read from this file.
    #[arg(long, value_name = "FILE")]
    pub new_passphrase_file: Option<PathBuf>,
    /// The new key: a passphrase read from this open file descriptor.
    #[arg(long, value_name = "FD")]
    pub new_passphrase_fd: Option<i32>,
    /// The new key: a passphrase in this environment variable.
    #[arg(long, value_name = "VAR")]
    pub new_passphrase_env: Option<String>,
}

impl NewKeyArgs {
    /// The new key's source.
    pub fn source(&self) -> Option<SecretSource> {
        source_from(&self.new_key_file, &self.new_passphrase_file, self.new_passphrase_fd, &self.new_passphrase_env)
    }
}

/// The one source among the options given.
fn source_from(
    key_file: &Option<PathBuf>,
    passphrase_file: &Option<PathBuf>,
    passphrase_fd: Option<i32>,
    passphrase_env: &Option<String>,
) -> Option<SecretSource> {
    if let Some(path) = key_file {
        Some(SecretSource::KeyFile(path.clone()))
    } else if let Some(path) = passphrase_file {
        Some(SecretSource::PassphraseFile(path.clone()))
    } else if let Some(fd) = passphrase_fd {
        Some(SecretSource::PassphraseFd(fd))
    } else {
        passphrase_env.as_ref().map(|name| SecretSource::PassphraseEnv(name.clone()))
    }
}

/// Standard output for a stream, unbuffered by std (the stream writer buffers
/// in whole frames). Refuses a terminal, where binary frames would only
/// garble the screen.
pub fn stream_stdout() -> Result<std::fs::File> {
    use std::io::IsTerminal;
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    if stdout.is_terminal() {
        return Err(crate::error::Error::usage(
            "refusing to write a binary stream to a terminal; pipe it into the next tool or redirect it to a file",
        ));
    }
    let fd = stdout.as_fd().try_clone_to_owned().map_err(|e| crate::error::Error::io("cannot use stdout", e))?;
    Ok(std::fs::File::from(fd))
}

/// Standard input, unbuffered by std (the stream reader buffers).
pub fn stream_stdin() -> Result<std::fs::File> {
    use std::os::fd::AsFd;
    let fd =
        std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| crate::error::Error::io("cannot use stdin", e))?;
    Ok(std::fs::File::from(fd))
}

/// The secret named by `keys`, or from the `BACKPIPE_PASSPHRASE` environment
/// variable when no option is given; `None` when neither is.
pub fn optional_secret(keys: &KeyArgs) -> Result<Option<crate::keys::Secret>> {
    let source = keys
        .source()
        .or_else(|| std::env::var_os(PASSPHRASE_ENV).map(|_| SecretSource::PassphraseEnv(PASSPHRASE_ENV.to_string())));
    source.map(|s| s.load()).transpose()
}

/// The environment variable that names the repository for every tool that
/// takes one, so a pipeline need not repeat it.
pub const REPOSITORY_ENV: &str = "BACKPIPE_REPOSITORY";

/// Splits a command's words into the repository and the rest: the first
/// word, or, when [`REPOSITORY_ENV`] is set, that repository unless the
/// first word is one itself (a URL, a path with a slash, or an existing
/// directory; snapshot IDs and `latest` are none of these).
pub fn split_repository(words: &[String]) -> Result<(String, Vec<String>)> {
    let from_env = std::env::var(REPOSITORY_ENV).ok().filter(|r| !r.is_empty());
    let is_repository = |word: &str| word.contains("://") || word.contains('/') || std::path::Path::new(word).is_dir();
    match (words.split_first(), from_env) {
        (Some((first, rest)), Some(_)) if is_repository(first) => Ok((first.clone(), rest.to_vec())),
        (_, Some(repository)) => Ok((repository, words.to_vec())),
        (Some((first, rest)), None) => Ok((first.clone(), rest.to_vec())),
        (None, None) => Err(crate::error::Error::usage(format!("name the repository (or set {REPOSITORY_ENV})"))),
    }
}

/// Opens the repository at `location` with the key options given.
pub fn open_repo(location: &str, keys: &KeyArgs) -> Result<crate::repo::Repository> {
    crate::repo::Repository::open(location, &require_secret(keys)?)
}

/// Like [`optional_secret`], but a missing key is a usage error.
pub fn require_secret(keys: &KeyArgs) -> Result<crate::keys::Secret> {
    optional_secret(keys)?.ok_or_else(|| {
        crate::error::Error::usage(format!(
            "no key given: use --key-file, --passphrase-file, --passphrase-fd or --passphrase-env, or set {PASSPHRASE_ENV}"
        ))
    })
}

/// The environment variable read for a passphrase when no key option is given.
pub const PASSPHRASE_ENV: &str = "BACKPIPE_PASSPHRASE";

/// The exit status table, for every tool's `--help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  other error (I/O, permissions, unsupported input)
  2  usage error (bad option, missing or unusable key)
  3  incomplete input (truncated, no End frame)
  4  integrity failure (checksum, digest, order or authentication)
  5  database error, when an agent upstream met one
  6  complete, but the source changed while it was read (dump-files)
A stream aborted upstream exits with the status of the stage that failed.";

/// The exit status table of the database agents (`dump-*`, `restore-*`).
pub const ENGINE_EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  other error (I/O, permissions, a client tool missing)
  2  usage error (bad option, unreadable password file)
  3  incomplete input (truncated, no End frame)
  4  integrity failure (checksum, digest, a damaged binary log)
  5  database error (server unreachable, login refused, missing privilege,
     purged binary log, restore target not empty)
A stream aborted upstream exits with the status of the stage that failed.";
