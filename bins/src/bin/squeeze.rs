//! `squeeze`: zstd compression of Data payloads, and `squeeze -d`.

use backpipe::cli;
use backpipe::codec::squeeze::{Squeezer, Unsqueezer, DEFAULT_LEVEL};
use clap::Parser;

/// Compress Data payloads with zstd on every core (or decompress with -d).
///
/// Each Data frame (each chunk body, after `chunk`) becomes one zstd frame,
/// compressed in parallel and written in order. A payload that would not
/// shrink, such as already-compressed or random data, is left as it is.
/// Metadata frames pass through. `squeeze -d` undoes only its own encoding and
/// refuses payloads that are still encrypted.
#[derive(Parser)]
#[command(name = "squeeze", version, after_help = cli::EXIT_STATUS_HELP)]
struct Args {
    /// Decompress instead.
    #[arg(short = 'd', long = "decompress")]
    decompress: bool,
    /// zstd level: negative is faster, 19 and above is slow.
    #[arg(short = 'l', long, default_value_t = DEFAULT_LEVEL, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(-7..=22))]
    level: i32,
}

fn main() {
    let args = cli::parse::<Args>();
    cli::main(if args.decompress { "squeeze -d" } else { "squeeze" }, || {
        let (input, output) = (cli::stream_stdin()?, cli::stream_stdout()?);
        if args.decompress {
            backpipe::filter::run("squeeze -d", Unsqueezer, input, output)
        } else {
            backpipe::filter::run("squeeze", Squeezer { level: args.level }, input, output)
        }
    })
}
