//! Running a database's own tools (its dump, backup, log and client
//! programs): stdin and stdout for the caller, pipes widened, stderr kept
//! (its last lines) and turned into a one-line cause when the tool fails,
//! the tool stopped if a signal ends this process and killed if it is
//! abandoned. What a cause line looks like and what advice goes with it is
//! the engine's: it passes a [`Messages`].

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

/// Lines of a tool's stderr kept for its error message.
const KEPT_LINES: usize = 200;

/// How long a tool may take to stop when this process is interrupted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How an engine reads its tools' messages.
pub trait Messages: Send + Sync {
    /// What to say when `tool` cannot be found: which packages hold it.
    fn not_installed(&self, tool: &str) -> String;

    /// A stderr line without the tool's decorations (timestamps, its own name).
    fn clean(&self, line: &str) -> String {
        line.trim().to_string()
    }

    /// Advice to add to a failure whose cause is `cause` (starting with a
    /// space), or nothing.
    fn hint(&self, _cause: &str) -> String {
        String::new()
    }
}

/// A tool running, its stderr collected by a thread.
pub struct Running {
    /// The process; its stdin and stdout are the caller's to use.
    pub child: Child,
    stderr: Option<JoinHandle<VecDeque<String>>>,
    tool: String,
    messages: Box<dyn Messages>,
    /// Stops the tool if a signal ends this process first.
    _stopped_on_signal: crate::interrupt::Registration,
}

impl Running {
    /// Starts `command` (the tool `tool`), collecting its stderr; `messages`
    /// says how to read it.
    pub fn spawn(tool: &str, mut command: Command, messages: Box<dyn Messages>) -> Result<Running> {
        command.stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::other(messages.not_installed(tool))
            } else {
                Error::io(format!("cannot run {tool}"), e)
            }
        })?;
        // Wide pipes: the tools write in small pieces, and every full 64 KiB
        // pipe costs a context switch.
        use std::os::fd::AsRawFd;
        let fds = [child.stdin.as_ref().map(|p| p.as_raw_fd()), child.stdout.as_ref().map(|p| p.as_raw_fd())];
        fds.into_iter().flatten().for_each(backpipe_stream::pipe::widen);
        let stderr = child.stderr.take().expect("stderr is piped");
        let collector = std::thread::spawn(move || {
            let mut kept = VecDeque::new();
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
            kept
        });
        let registration = crate::interrupt::stop_on_signal(child.id(), STOP_GRACE);
        Ok(Running {
            child,
            stderr: Some(collector),
            tool: tool.to_string(),
            messages,
            _stopped_on_signal: registration,
        })
    }

    /// Waits for the tool; a failure becomes one line naming the cause
    /// (the last line that reads as an error, else the last line, else the
    /// exit status) and the engine's advice. Returns the last lines the
    /// tool wrote to stderr.
    pub fn finish(mut self) -> Result<Vec<String>> {
        drop(self.child.stdin.take());
        let status = self.child.wait().map_err(|e| Error::io(format!("cannot wait for {}", self.tool), e))?;
        let lines: Vec<String> = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default().into();
        if status.success() {
            return Ok(lines);
        }
        let cause = lines
            .iter()
            .rev()
            .find(|l| is_error_line(l))
            .or_else(|| lines.iter().rev().find(|l| !l.trim().is_empty()))
            .map(|l| self.messages.clean(l))
            .unwrap_or_else(|| match status.code() {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            });
        let hint = self.messages.hint(&cause);
        Err(Error::engine(format!("{} failed: {cause}{hint}", self.tool)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A tool abandoned on an error path must not outlive us.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// True for the lines that carry a tool's error.
fn is_error_line(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    lower.contains("error") || lower.contains("denied") || lower.contains("can't") || lower.contains("failed")
}
