//! A temporary, private `mariadbd` on a restored data directory, so binary
//! logs can be replayed into a physical restore before anyone else sees it:
//! no network, a socket in a private directory, no grant checks (replayed
//! account statements re-enable them with FLUSH PRIVILEGES first), no binary
//! log of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::error::{Error, Result};

/// How long the server may take to start (crash recovery included) or stop.
const TIMEOUT: Duration = Duration::from_secs(300);

/// A running temporary server.
pub struct ScratchServer {
    child: Child,
    /// Stops the server if a signal ends this process first.
    _stopped_on_signal: crate::interrupt::Registration,
    socket: PathBuf,
    log: PathBuf,
    _removed_on_signal: crate::interrupt::Registration,
    _dir: tempfile::TempDir,
}

/// Where Debian and most distributions install the server binary.
const SERVER_PATHS: &[&str] = &["/usr/sbin/mariadbd", "/usr/libexec/mariadbd", "/usr/sbin/mysqld"];

impl ScratchServer {
    /// Starts `mariadbd` on `datadir`, with the server options of `defaults`
    /// (the production my.cnf, for settings such as the InnoDB page size) when given.
    pub fn start(datadir: &Path, defaults: Option<&Path>) -> Result<ScratchServer> {
        // Short, for the socket's path; removed by a later restore if this one is killed.
        let dir = crate::workdir::create(&std::env::temp_dir(), crate::RESTORE_WORK_PREFIX)
            .map_err(|e| Error::io("cannot create a temporary directory", e))?;
        let removed_on_signal = crate::interrupt::remove_on_signal(dir.path());
        let socket = dir.path().join("mysqld.sock");
        let log = dir.path().join("error.log");
        let binary = SERVER_PATHS.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| "mariadbd".into());
        let mut command = Command::new(&binary);
        match defaults {
            Some(path) => command.arg(format!("--defaults-file={}", path.display())),
            None => command.arg("--no-defaults"),
        };
        command
            .arg(format!("--datadir={}", datadir.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.path().join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .args(["--skip-networking", "--skip-grant-tables", "--skip-log-bin", "--skip-slave-start"])
            // The replay passes a statement's row events as one packet, which may be large.
            .arg(format!("--max-allowed-packet={}", crate::replay::MAX_PACKET));
        if nix::unistd::geteuid().is_root() {
            command.arg("--user=root");
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = command.spawn().map_err(|e| Error::io(format!("cannot start {}", binary.display()), e))?;
        let registration = crate::interrupt::stop_on_signal(child.id(), TIMEOUT);
        let mut server = ScratchServer {
            child,
            _stopped_on_signal: registration,
            socket,
            log,
            _removed_on_signal: removed_on_signal,
            _dir: dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// A client logged in to it.
    pub fn client(&self) -> Client {
        Client::local_root(&self.socket)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| Error::io("cannot watch mariadbd", e))? {
                return Err(self.failure(&format!("exited at start ({status})")));
            }
            if self.socket.exists() && self.client().query("SELECT 1").is_ok() {
                return Ok(());
            }
            if started.elapsed() > TIMEOUT {
                return Err(self.failure("did not answer within 5 minutes"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Shuts the server down cleanly and waits for it.
    pub fn stop(mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| Error::io("cannot watch mariadbd", e))? {
                return if status.success() { Ok(()) } else { Err(self.failure(&format!("shut down with {status}"))) };
            }
            if started.elapsed() > TIMEOUT {
                return Err(self.failure("did not shut down within 5 minutes"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An error naming what went wrong and the server log's last error line.
    fn failure(&self, what: &str) -> Error {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let last = text.lines().rev().find(|l| l.contains("[ERROR]")).unwrap_or("").trim();
        Error::engine(format!("the temporary server on the restored data {what}: {last}"))
    }
}

impl Drop for ScratchServer {
    /// A server left running on an error path is asked to stop, then killed
    /// if it has not within a minute.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let asked = Instant::now();
            while matches!(self.child.try_wait(), Ok(None)) && asked.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
