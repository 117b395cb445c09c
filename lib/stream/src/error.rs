//! One error type for every tool, carrying the exit status class it maps to.
//!
//! Every failure ends as a single line on stderr and a non-zero exit. The
//! [`ErrorKind`] decides which status: operators and scripts can tell a damaged
//! stream from an incomplete one from a plain usage mistake.

use std::fmt;

/// The class of a failure; each class has its own documented exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Anything not covered below: I/O errors, permissions, unsupported input.
    Other,
    /// The command line or its inputs were wrong (bad option, missing key file).
    Usage,
    /// The stream is incomplete: truncated, no End frame, or aborted upstream.
    Incomplete,
    /// The stream is damaged or forged: checksum, digest, order or authentication failure.
    Integrity,
    /// The database server refused or failed: unreachable, wrong login, missing
    /// privilege, purged or damaged logs, a restore target that is not empty.
    Engine,
    /// Not a failure of the output: it is complete, but its source changed
    /// while it was read (files vanished, were replaced or were written to).
    Changed,
}

impl ErrorKind {
    /// The process exit status for this class (see the README's table).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Incomplete => 3,
            ErrorKind::Integrity => 4,
            ErrorKind::Engine => 5,
            ErrorKind::Changed => 6,
        }
    }

    /// The class an exit status stands for, if it stands for one.
    pub fn from_exit_code(code: i32) -> Option<ErrorKind> {
        [
            ErrorKind::Other,
            ErrorKind::Usage,
            ErrorKind::Incomplete,
            ErrorKind::Integrity,
            ErrorKind::Engine,
            ErrorKind::Changed,
        ]
        .into_iter()
        .find(|kind| kind.exit_code() == code)
    }
}

/// A failure with its class and a one-line, human-readable cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    broken_pipe: bool,
    /// The cause was already said by the stage that failed (a filter passing on an Abort).
    said_upstream: bool,
}

impl Error {
    /// An error of the given class.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), broken_pipe: false, said_upstream: false }
    }

    /// A general failure (exit status 1).
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Other, message)
    }

    /// A usage mistake (exit status 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }

    /// An incomplete stream (exit status 3).
    pub fn incomplete(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Incomplete, message)
    }

    /// A damaged or forged stream (exit status 4).
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, message)
    }

    /// A failure of the database server or its data (exit status 5).
    pub fn engine(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Engine, message)
    }

    /// A complete output whose source changed while it was read (exit status 6).
    pub fn changed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Changed, message)
    }

    /// Wraps an I/O error with what was being done when it happened. An I/O
    /// error that carries one of ours (from a reader of repository objects)
    /// keeps its class.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let inner = err.into_inner().expect("checked above").downcast::<Error>().expect("checked above");
            return inner.context(context);
        }
        let mut error = Self::other(format!("{context}: {}", describe_io(&err)));
        error.broken_pipe = err.kind() == std::io::ErrorKind::BrokenPipe;
        error
    }

    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The one-line cause, without the tool name.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the cause with more context, keeping the class.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error { message: format!("{context}: {}", self.message), ..self }
    }

    /// Adds what follows from the cause (the state it left, what to do), keeping the class.
    pub fn with_note(self, note: impl fmt::Display) -> Self {
        Error { message: format!("{}; {note}", self.message), ..self }
    }

    /// True when the error is a closed downstream pipe, which is not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        self.broken_pipe
    }

    /// Marks the cause as already said by the stage that failed upstream: the
    /// tool exits with its class and prints nothing.
    pub fn said_upstream(self) -> Self {
        Error { said_upstream: true, ..self }
    }

    /// True when the error needs no message of this tool's: a closed
    /// downstream pipe, or a cause already said upstream.
    pub fn is_quiet(&self) -> bool {
        self.broken_pipe || self.said_upstream
    }
}

/// Renders an I/O error without Rust's "(os error N)" suffix.
fn describe_io(err: &std::io::Error) -> String {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        return "broken pipe (the next command in the pipeline exited)".to_string();
    }
    let text = err.to_string();
    match text.find(" (os error") {
        Some(cut) => text[..cut].to_string(),
        None => text,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The result type used throughout backpipe.
pub type Result<T> = std::result::Result<T, Error>;
