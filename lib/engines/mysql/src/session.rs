//! A `mariadb` session held open by the agent: statements go in one at a
//! time and each exchange ends with a marker line the statements select, so
//! what the server holds for the session (a global read lock, a named lock)
//! lasts exactly as long as the session, and ends with it if the agent dies.

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout, Stdio};

use crate::client::{Client, Running};
use crate::error::{Error, Result};

/// An open session.
pub struct Session {
    running: Running,
    input: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Session {
    /// Opens a session on the server `client` names.
    pub fn open(client: &Client) -> Result<Session> {
        let mut running = client.spawn("mariadb", &["--batch", "--skip-column-names", "--unbuffered"], |c| {
            c.stdin(Stdio::piped()).stdout(Stdio::piped());
        })?;
        let input = running.child.stdin.take().expect("stdin is piped");
        let answers = BufReader::new(running.child.stdout.take().expect("stdout is piped"));
        Ok(Session { running, input, answers })
    }

    /// Sends `sql`, which must end by selecting one line, and returns that
    /// line; `Err` holds what came instead (empty when the session ended).
    pub fn ask(&mut self, sql: &str) -> std::result::Result<String, String> {
        let mut line = String::new();
        let answered = writeln!(self.input, "{sql}")
            .and_then(|()| self.input.flush())
            .and_then(|()| self.answers.read_line(&mut line));
        match answered {
            Ok(n) if n > 0 => Ok(line.trim_end().to_string()),
            _ => Err(line.trim_end().to_string()),
        }
    }

    /// Sends `sql`, which must end by selecting the line `expected`, and
    /// gives the session back; otherwise its failure, said after `doing`.
    pub fn expect(mut self, sql: &str, expected: &str, doing: &str) -> Result<Session> {
        match self.ask(sql) {
            Ok(answer) if answer == expected => Ok(self),
            Ok(answer) | Err(answer) => Err(self.failed(doing, &answer, expected)),
        }
    }

    /// Ends the session; its failure (the server's message) is the error.
    pub fn close(self) -> Result<()> {
        drop(self.input);
        self.running.finish().map(drop)
    }

    /// The cause of a failed exchange that should have answered `expected`:
    /// the session's own message when it ended (a lock wait timeout, a
    /// missing privilege), with `doing` said first.
    pub fn failed(self, doing: &str, answer: &str, expected: &str) -> Error {
        match self.close() {
            Err(e) => e.context(doing),
            Ok(()) => Error::engine(format!("{doing}: the session answered '{answer}' instead of '{expected}'")),
        }
    }
}
