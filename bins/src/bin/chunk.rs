//! `chunk`: content-defined chunking of entry content, and `chunk -d`.

use std::path::PathBuf;

use backpipe::cdc::ChunkSizes;
use backpipe::cli;
use backpipe::codec::chunk::{Chunker, Joiner};
use backpipe::format::MAX_PLAIN_PAYLOAD;
use backpipe::keys::MasterKey;
use clap::Parser;

/// Cut entry content into content-defined chunks named by their hash (or join them again with -d).
///
/// Chunk boundaries follow the content (FastCDC with a gear hash), so an
/// insertion shifts only the chunks around it and unchanged data gives the
/// same chunks in every backup. Each chunk is one Data frame carrying its
/// 32-byte ID: BLAKE3 of the chunk, or keyed BLAKE3 with --key-file, in which
/// case the cut points are keyed too and neither reveals known content.
/// Metadata frames and frames that are already encoded pass through.
#[derive(Parser)]
#[command(name = "chunk", version, after_help = cli::EXIT_STATUS_HELP)]
struct Args {
    /// Join chunks back into plain Data frames (reverse of chunking).
    #[arg(short = 'd', long = "decode")]
    decode: bool,
    /// Smallest chunk (K, M suffixes allowed).
    #[arg(long, value_name = "SIZE", default_value = "256K", value_parser = cli::parse_size)]
    min_size: usize,
    /// Average chunk, rounded to a power of two.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = cli::parse_size)]
    avg_size: usize,
    /// Largest chunk; at most 16M.
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = cli::parse_size)]
    max_size: usize,
    /// Key file (from `keygen`) for keyed chunk IDs and cut points.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    cli::main(if args.decode { "chunk -d" } else { "chunk" }, || {
        let (input, output) = (cli::stream_stdin()?, cli::stream_stdout()?);
        if args.decode {
            return backpipe::filter::run("chunk -d", Joiner, input, output);
        }
        let sizes = ChunkSizes { min: args.min_size, avg: args.avg_size, max: args.max_size };
        sizes.validate(MAX_PLAIN_PAYLOAD)?;
        let chunker = match &args.key_file {
            None => Chunker::public(sizes),
            Some(path) => Chunker::keyed(&MasterKey::read_file(path)?, sizes),
        };
        backpipe::filter::run("chunk", chunker, input, output)
    })
}
