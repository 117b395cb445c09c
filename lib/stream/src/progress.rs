//! Progress display on a terminal: one bar per pipeline, drawn on stderr.
//!
//! A tool draws only when stderr is a terminal and it is the last stage, that
//! is, its stdout is not a pipe into another backpipe tool. Scripts, cron and
//! redirected stderr see nothing.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress display that may be disabled; every method is cheap when it is.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A display for a stage of a pipeline labelled `label`: enabled only on a
    /// terminal and only for the last stage.
    pub fn for_stage(label: &str) -> Progress {
        // A pipe on stdout means another stage downstream draws instead.
        let wanted = std::io::stderr().is_terminal() && !crate::pipe::is_pipe(1);
        if wanted {
            Progress::shown(label)
        } else {
            Progress::hidden()
        }
    }

    /// A display that never draws.
    pub fn hidden() -> Progress {
        Progress { bar: None }
    }

    fn shown(label: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
        bar.set_style(Self::style(false));
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar: Some(bar) }
    }

    fn style(with_total: bool) -> ProgressStyle {
        let template = if with_total {
            "{prefix}: {bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} eta {eta}"
        } else {
            "{prefix}: {bytes} {spinner} {binary_bytes_per_sec} {elapsed}"
        };
        ProgressStyle::with_template(template).expect("progress templates are valid")
    }

    /// Sets the expected total, switching to a bar with an ETA.
    pub fn set_total(&self, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_style(Self::style(true));
        }
    }

    /// Sets the bytes done so far.
    pub fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// Adds to the bytes done so far.
    pub fn add(&self, more: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(more);
        }
    }

    /// Removes the display from the terminal.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
