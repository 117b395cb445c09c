//! Notices: what the library has to tell a person while it works (a damaged
//! key slot skipped, a database dropped, a storage that is not answering).
//! The library never writes to stderr itself: it hands each notice, one line
//! without the tool's name, to the sink the tool installed with [`set_sink`]
//! (`cli::main` prints them on stderr after the tool's name). Without a sink,
//! notices are dropped.

use std::sync::OnceLock;

/// Where notices go; set once by the tool.
static SINK: OnceLock<Box<dyn Fn(&str) + Send + Sync>> = OnceLock::new();

/// Sends every notice from now on to `sink`; the first call wins.
pub fn set_sink(sink: impl Fn(&str) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(sink));
}

/// Tells `line` to the sink, if one is installed.
pub fn notice(line: &str) {
    if let Some(sink) = SINK.get() {
        sink(line);
    }
}

/// True when a sink is installed, so work done only to build a notice can be skipped.
pub fn wanted() -> bool {
    SINK.get().is_some()
}
