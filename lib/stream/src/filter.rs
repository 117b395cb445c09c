//! The driver every filter runs on: read checked frames, plan work in stream
//! order, do the work in parallel, write results in order, and on any failure
//! end the output with an Abort frame so nothing downstream commits it.

use std::io::{BufReader, BufWriter, Read, Write};

use crate::error::{Error, ErrorKind, Result};
use crate::format::{Frame, Kind, StreamId};
use crate::meta::Abort;
use crate::parallel;
use crate::progress::Progress;
use crate::reader::{Item, StreamReader};
use crate::writer::StreamWriter;

/// Buffer size for stream input and output.
pub const IO_BUFFER: usize = 1 << 20;

/// One unit of output, in stream order.
pub enum Output {
    /// Start an output stream with this ID (write its preamble).
    Start(StreamId),
    /// Write this frame.
    Frame(Frame),
}

/// What a planner emits for each input item: output that is ready now, or a
/// job to run on the worker pool that yields one frame.
pub enum Step<J> {
    /// Output to write as is.
    Ready(Output),
    /// Work whose resulting frame is written in this position.
    Work(J),
}

impl<J: Job> Step<J> {
    /// The output of this step, running its job if it has one.
    pub fn run(self) -> Result<Output> {
        match self {
            Step::Ready(output) => Ok(output),
            Step::Work(job) => job.run().map(Output::Frame),
        }
    }
}

/// A self-contained piece of work that yields one output frame.
pub trait Job: Send {
    /// Does the work.
    fn run(self) -> Result<Frame>;
}

/// The sequential half of a filter: sees every input item in order and
/// decides what to emit.
pub trait Planner {
    /// The filter's job type.
    type Job: Job;
    /// Handles one input item, appending zero or more steps to `out`.
    fn plan(&mut self, item: Item, out: &mut Vec<Step<Self::Job>>) -> Result<()>;
}

/// Runs a planner on one item in the calling thread, jobs included: for tools
/// that need a filter's effect on a few frames rather than a whole pipeline.
pub fn run_inline<P: Planner>(planner: &mut P, item: Item) -> Result<Vec<Output>> {
    let mut steps = Vec::new();
    planner.plan(item, &mut steps)?;
    steps.into_iter().map(Step::run).collect()
}

/// Passes a stream start straight through to `out`; returns the frame otherwise.
pub fn split_item<J>(item: Item, out: &mut Vec<Step<J>>) -> Option<Frame> {
    match item {
        Item::Start(id) => {
            out.push(Step::Ready(Output::Start(id)));
            None
        }
        Item::Frame(frame) => Some(frame),
    }
}

/// Runs a filter named `tool` from `input` to `output`.
///
/// On failure the output receives an Abort frame carrying the cause (unless
/// the failure is a closed output pipe or an Abort that already came from
/// upstream), then the error is returned for the exit status. An Abort from
/// upstream is passed on and returned as an error of its cause's class that
/// prints nothing: the stage that failed said why, and the last stage says
/// what was not done.
pub fn run<P: Planner>(tool: &str, mut planner: P, input: impl Read, output: impl Write + Send) -> Result<()> {
    let progress = Progress::for_stage(tool);
    let mut reader = StreamReader::new(BufReader::with_capacity(IO_BUFFER, input));
    let mut writer = StreamWriter::new(BufWriter::with_capacity(IO_BUFFER, output));
    let mut upstream_abort: Option<Error> = None;
    let result = parallel::run_ordered(
        parallel::default_threads(),
        |send| {
            let mut steps = Vec::new();
            while let Some(item) = reader.next_item()? {
                planner.plan(item, &mut steps)?;
                for step in steps.drain(..) {
                    if !send(step) {
                        return Ok(());
                    }
                }
                progress.set(reader.offset());
            }
            Ok(())
        },
        Step::run,
        |output| match output {
            Output::Start(id) => writer.start(id),
            Output::Frame(frame) => {
                // As passed on (decrypted by `encrypt -d`), so its status is readable.
                if frame.kind == Kind::Abort {
                    upstream_abort = Some(aborted_upstream(&frame));
                }
                writer.write(&frame)
            }
        },
    )
    .and_then(|()| writer.flush());
    progress.finish();
    match (result, upstream_abort) {
        (Ok(()), None) => Ok(()),
        (Ok(()), Some(aborted)) => Err(aborted.said_upstream()),
        (Err(err), abort) => {
            if abort.is_none() && !err.is_broken_pipe() {
                send_abort(&mut writer, tool, &err);
            }
            Err(err)
        }
    }
}

/// The cause an Abort frame carries, for messages.
pub fn describe_abort(frame: &Frame) -> String {
    if frame.encodings.0 != 0 {
        return "(the reason is encrypted)".to_string();
    }
    match frame.parse_json::<Abort>() {
        Ok(abort) => format!("{}: {}", abort.producer, abort.reason),
        Err(_) => "(the Abort frame's reason is unreadable)".to_string(),
    }
}

/// The error a stage reading an Abort frame ends with: "aborted upstream by
/// PRODUCER", of the class of the producer's failure (incomplete where the
/// frame does not say, or is encrypted). Callers add what they did not do.
pub fn aborted_upstream(frame: &Frame) -> Error {
    let abort = if frame.encodings.0 == 0 { frame.parse_json::<Abort>().ok() } else { None };
    // Only the classes of failures: 6 (changed) stands for a whole stream.
    let kind = abort
        .as_ref()
        .and_then(|a| a.status)
        .and_then(ErrorKind::from_exit_code)
        .filter(|kind| *kind != ErrorKind::Changed);
    match abort {
        Some(abort) => {
            Error::new(kind.unwrap_or(ErrorKind::Incomplete), format!("aborted upstream by {}", abort.producer))
        }
        None => Error::incomplete("aborted upstream"),
    }
}

/// Ends `writer`'s output with an Abort frame describing `err` (in a new
/// stream if none is open); best effort, since the output may itself be what failed.
pub fn send_abort<W: Write>(writer: &mut StreamWriter<W>, tool: &str, err: &Error) {
    let abort =
        Abort { producer: tool.to_string(), reason: err.message().to_string(), status: Some(err.kind().exit_code()) };
    let _ = (|| -> Result<()> {
        if !writer.is_open() {
            writer.start(crate::format::new_stream_id())?;
        }
        writer.write(&Frame::json(Kind::Abort, &abort))?;
        writer.flush()
    })();
}
