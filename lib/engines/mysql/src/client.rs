//! Talking to a MariaDB server through its own client tools (`mariadb`,
//! `mariadb-dump`, `mariadb-backup`, `mariadb-binlog`, `mbstream`): the
//! connection options every agent shares, the password kept out of argv, and
//! a tool's failure turned into one line with a hint.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::tool::Messages;
pub use crate::tool::Running;

/// How to reach and log in to the server, as the MariaDB client tools take it.
/// The password never appears on a command line: it comes from a file or a
/// file descriptor (handed to the client tools as an option file of their
/// own that exists only in memory, which outranks every other), an option
/// file (`[client] password=`), or `MYSQL_PWD` (which option files outrank).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// Read connection settings ([client] user, password, socket, host, port)
    /// from this option file only, instead of the usual my.cnf files.
    #[arg(long, value_name = "FILE")]
    pub defaults_file: Option<PathBuf>,
    /// The server's Unix socket.
    #[arg(long, short = 'S', value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The server's host name or address (TCP).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// The server's TCP port.
    #[arg(long, short = 'P', value_name = "PORT")]
    pub port: Option<u16>,
    /// The user to log in as.
    #[arg(long, short = 'u', value_name = "NAME")]
    pub user: Option<String>,
    /// Read the password from this file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "password_fd")]
    pub password_file: Option<PathBuf>,
    /// Read the password from this open file descriptor (its first line).
    #[arg(long, value_name = "N")]
    pub password_fd: Option<i32>,
}

/// A way to run the client tools against one server.
pub struct Client {
    /// Connection options, `--defaults-file` first as the tools require.
    options: Vec<OsString>,
    /// The option file holding the password given by file or descriptor: a
    /// memory file (memfd) the client tools open as `/dev/fd/N`, so nothing
    /// reaches a disk and nothing outlives this process, however it ends.
    password_file: Option<std::os::fd::OwnedFd>,
    /// Says where the server is, for messages.
    target: String,
}

impl Client {
    /// A client for the server `args` name. Reads the password source now.
    pub fn new(args: &ConnectArgs) -> Result<Client> {
        let mut options: Vec<OsString> = Vec::new();
        if let Some(path) = &args.defaults_file {
            if !path.is_file() {
                return Err(Error::usage(format!("option file '{}' does not exist", path.display())));
            }
            options.push(flag("defaults-file", path.as_os_str()));
        }
        if let Some(socket) = &args.socket {
            options.push(flag("socket", socket.as_os_str()));
        }
        if let Some(host) = &args.host {
            options.push(flag("host", host.as_ref()));
        }
        if let Some(port) = args.port {
            options.push(flag("port", port.to_string().as_ref()));
        }
        if let Some(user) = &args.user {
            options.push(flag("user", user.as_ref()));
        }
        let password = match (&args.password_file, args.password_fd) {
            (Some(path), _) => Some(read_password(
                std::fs::File::open(path)
                    .map_err(|e| Error::io(format!("cannot read password file '{}'", path.display()), e))?,
                &format!("password file '{}'", path.display()),
            )?),
            (None, Some(fd)) => Some(read_password(open_fd(fd)?, &format!("password file descriptor {fd}"))?),
            (None, None) => None,
        };
        let target = match (&args.socket, &args.host, &args.defaults_file) {
            (Some(socket), _, _) => format!("the server at {}", socket.display()),
            (None, Some(host), _) => format!("the server at {host}:{}", args.port.unwrap_or(3306)),
            (None, None, Some(file)) => format!("the server named in {}", file.display()),
            (None, None, None) => "the server".to_string(),
        };
        let password_file = match password {
            Some(password) => Some(password_option_file(&password, args.defaults_file.as_deref())?),
            None => None,
        };
        if let Some(file) = &password_file {
            // It includes the option files that would have been read, then sets the password.
            if args.defaults_file.is_some() {
                options.remove(0);
            }
            options.insert(0, flag("defaults-file", fd_path(file).as_ref()));
        }
        Ok(Client { options, password_file, target })
    }

    /// A client that logs in as root over `socket` with no option files, for a
    /// server this process started itself.
    pub fn local_root(socket: &std::path::Path) -> Client {
        Client {
            options: vec!["--no-defaults".into(), flag("socket", socket.as_os_str()), "--user=root".into()],
            password_file: None,
            target: format!("the temporary server at {}", socket.display()),
        }
    }

    /// Where the server is, for messages ("the server at /run/mysqld/mysqld.sock").
    pub fn target(&self) -> &str {
        &self.target
    }

    /// A command running client `tool` with the connection options, then `args`.
    pub fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut command = Command::new(tool);
        command.args(&self.options).args(args);
        command.stdin(Stdio::null());
        if let Some(file) = &self.password_file {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fd = file.as_raw_fd();
            // SAFETY: only fcntl runs between fork and exec, which is async-signal-safe.
            // The option file is inherited by the client tools, and by nothing else.
            unsafe {
                command.pre_exec(move || {
                    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
                        .map(drop)
                        .map_err(std::io::Error::from)
                });
            }
        }
        command
    }

    /// Runs one statement (or several, `;`-separated) and returns the rows of
    /// the last result, tab-separated fields, without column names.
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        let args = ["--batch", "--raw", "--skip-column-names", "--execute", sql];
        let mut running = self.spawn("mariadb", &args, |c| {
            c.stdout(Stdio::piped());
        })?;
        let mut out = String::new();
        let read = running.child.stdout.take().expect("stdout is piped").read_to_string(&mut out);
        running.finish()?;
        read.map_err(|e| Error::io("cannot read the answer of mariadb", e))?;
        Ok(out.lines().map(|line| line.split('\t').map(str::to_string).collect()).collect())
    }

    /// Runs a query expected to return one value.
    pub fn value(&self, sql: &str) -> Result<String> {
        let rows = self.query(sql)?;
        rows.into_iter()
            .next()
            .and_then(|row| row.into_iter().next())
            .ok_or_else(|| Error::engine(format!("the server returned nothing for `{sql}`")))
    }

    /// Starts client `tool` with the connection options and `args`; stdin and
    /// stdout as `configure` sets them, stderr kept for the error message.
    pub fn spawn(&self, tool: &str, args: &[&str], configure: impl FnOnce(&mut Command)) -> Result<Running> {
        let mut command = self.command(tool, args);
        configure(&mut command);
        Running::spawn(tool, command, Box::new(MariaDbMessages { target: Some(self.target.clone()) }))
    }
}

fn flag(name: &str, value: &std::ffi::OsStr) -> OsString {
    let mut text = OsString::from(format!("--{name}="));
    text.push(value);
    text
}

/// Takes over file descriptor `fd` (given on the command line) to read it once.
fn open_fd(fd: i32) -> Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    if fd < 3 || nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return Err(Error::usage(format!("--password-fd {fd} is not an open file descriptor (use 3 or above)")));
    }
    // SAFETY: the descriptor is open (checked above), is not stdin/stdout/stderr,
    // and is named by the user for this one read; nothing else in the process owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// The option files the client tools read when given none (MariaDB's search order).
const STANDARD_OPTION_FILES: &[&str] = &["/etc/my.cnf", "/etc/mysql/my.cnf"];

/// The path under which a child that inherited `file` opens it.
fn fd_path(file: &std::os::fd::OwnedFd) -> OsString {
    use std::os::fd::AsRawFd;
    OsString::from(format!("/dev/fd/{}", file.as_raw_fd()))
}

/// A private option file in memory (mode 0600, as the client tools require
/// of option files) that includes `defaults` (or the standard option files
/// and ~/.my.cnf) and then sets `password`, quoted and escaped as option
/// files read it: the last setting wins, so the password given by file or
/// descriptor outranks any. Closed on exec except in the client tools.
fn password_option_file(password: &str, defaults: Option<&std::path::Path>) -> Result<std::os::fd::OwnedFd> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    use std::io::Write;
    let mut includes: Vec<PathBuf> = match defaults {
        Some(path) => vec![path.to_path_buf()],
        None => STANDARD_OPTION_FILES.iter().map(PathBuf::from).collect(),
    };
    if defaults.is_none() {
        includes.extend(std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".my.cnf")));
    }
    let mut content = Zeroizing::new(String::new());
    for path in includes.iter().filter(|p| p.is_file()) {
        let absolute =
            std::fs::canonicalize(path).map_err(|e| Error::io(format!("cannot read '{}'", path.display()), e))?;
        content.push_str(&format!("!include {}\n", absolute.display()));
    }
    let escaped = password.replace('\\', "\\\\").replace('"', "\\\"");
    content.push_str(&format!("[client]\npassword=\"{escaped}\"\n"));
    let cannot = |e: nix::errno::Errno| {
        Error::other(format!("cannot create a private option file for the password: {}", e.desc()))
    };
    let fd = memfd_create(c"backpipe-login.cnf", MemFdCreateFlag::MFD_CLOEXEC).map_err(cannot)?;
    nix::sys::stat::fchmod(std::os::fd::AsRawFd::as_raw_fd(&fd), nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(cannot)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(content.as_bytes())
        .map_err(|e| Error::io("cannot write the private option file for the password", e))?;
    Ok(file.into())
}

/// The first line of `source`, without its line ending.
fn read_password(source: impl Read, what: &str) -> Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    BufReader::new(source).read_line(&mut line).map_err(|e| Error::io(format!("cannot read the {what}"), e))?;
    let password = Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string());
    if password.is_empty() {
        return Err(Error::usage(format!("the {what} is empty")));
    }
    Ok(password)
}

/// How the MariaDB tools' messages read: their decorations, the packages
/// that hold them, and advice for the common failures of talking to
/// `target` (when the tool talks to a server).
#[derive(Default)]
pub struct MariaDbMessages {
    /// The server the tool talks to, for advice.
    pub target: Option<String>,
}

impl Messages for MariaDbMessages {
    fn not_installed(&self, tool: &str) -> String {
        format!("{tool} is not installed (Debian: apt-get install mariadb-client mariadb-backup)")
    }

    fn clean(&self, line: &str) -> String {
        clean(line)
    }

    fn hint(&self, cause: &str) -> String {
        self.target.as_deref().map(|target| hint(cause, target)).unwrap_or_default()
    }
}

/// Starts the MariaDB tool `tool` as `command` sets it up (one that talks
/// to no server through the connection options: `mbstream`,
/// `mariadb-backup --prepare`, `mariadb-binlog` on files).
pub fn run_tool(tool: &str, command: Command) -> Result<Running> {
    Running::spawn(tool, command, Box::new(MariaDbMessages::default()))
}

/// A stderr line without the tools' decorations (timestamps, tool names).
fn clean(line: &str) -> String {
    let mut text = line.trim();
    // mariadb-backup: "[00] 2026-11-22 07:14:43 message"
    if text.starts_with('[') {
        if let Some(end) = text.find("] ") {
            text = text[end + 2..].trim_start();
            if text.len() > 20 && text.as_bytes()[4] == b'-' && text.as_bytes()[10] == b' ' {
                text = text[20..].trim_start();
            }
        }
    }
    for prefix in ["mariadb-dump: ", "mysqldump: ", "mariadb: ", "mariadb-binlog: "] {
        text = text.strip_prefix(prefix).unwrap_or(text);
    }
    text.to_string()
}

/// Advice for the common failures, from the server's error text.
fn hint(cause: &str, target: &str) -> String {
    let lower = cause.to_ascii_lowercase();
    if lower.contains("can't connect") || lower.contains("connection refused") || lower.contains("lost connection") {
        format!(" (is {target} running? check --socket, --host and --port)")
    } else if lower.contains("access denied for user") && !lower.contains(" at line ") {
        " (check the user and password: --user, --password-file, MYSQL_PWD or the option file)".to_string()
    } else if lower.contains("privilege") || lower.contains("command denied") || lower.contains("access denied") {
        " (the user lacks a privilege; docs/engines/mysql.md lists what each mode needs)".to_string()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_tool_decorations() {
        assert_eq!(clean("[00] 2026-11-22 07:14:43 Error: failed to execute query"), "Error: failed to execute query");
        assert_eq!(clean("mariadb-dump: Got error: 1045: \"Access denied\""), "Got error: 1045: \"Access denied\"");
        assert_eq!(clean("ERROR 1045 (28000): Access denied"), "ERROR 1045 (28000): Access denied");
    }

    #[test]
    fn reads_the_first_line_as_password() {
        assert_eq!(read_password(&b"s3cret\nrest\n"[..], "test").unwrap().as_str(), "s3cret");
        assert!(read_password(&b"\n"[..], "test").is_err());
    }
}
