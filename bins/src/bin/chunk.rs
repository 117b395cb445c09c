//! `chunk`: content-defined chunking of entry content, and `chunk -d`.

use std::sync::Arc;

use backpipe::cdc::ChunkSizes;
use backpipe::cli::{self, KeyArgs};
use backpipe::codec::chunk::{ChunkIdKey, Chunker, Joiner};
use backpipe::format::MAX_PLAIN_PAYLOAD;
use backpipe::keys::Secret;
use clap::Parser;

/// Cut entry content into content-defined chunks named by their hash (or join them again with -d).
///
/// Chunk boundaries follow the content (FastCDC with a gear hash), so an
/// insertion shifts only the chunks around it and unchanged data gives the
/// same chunks in every backup. Each chunk is one Data frame carrying its
/// 32-byte ID: BLAKE3 of the chunk, or keyed BLAKE3 with --key-file, in which
/// case the cut points are keyed too. With --repo, the repository's key and
/// chunk sizes are used, and chunks the repository already holds are passed
/// on as references without their content, so later stages skip them.
/// Metadata frames and frames that are already encoded pass through.
///
/// `chunk -d` with the key the chunks were made with (--key-file, or --repo
/// and its key) checks every chunk's content against its ID before passing
/// any of it on, and fails (exit 4) naming a chunk that does not match: a
/// forged chunk stored under another chunk's ID never reaches the next stage.
/// Without a key the IDs cannot be checked; entry digests still are, by
/// `unpack` and the restore tools.
#[derive(Parser)]
#[command(name = "chunk", version, after_help = cli::EXIT_STATUS_HELP)]
struct Args {
    /// Join chunks back into plain Data frames (reverse of chunking).
    #[arg(short = 'd', long = "decode")]
    decode: bool,
    /// Use this repository's key and chunk sizes, and refer to chunks it already
    /// holds (with -d: check chunks against their IDs with its key).
    #[arg(long, value_name = "REPO", env = "BACKPIPE_REPOSITORY", conflicts_with_all = ["min_size", "avg_size", "max_size"])]
    repo: Option<String>,
    /// Smallest chunk (K, M suffixes allowed).
    #[arg(long, value_name = "SIZE", default_value = "256K", value_parser = backpipe::units::parse_size)]
    min_size: usize,
    /// Average chunk, rounded to a power of two.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = backpipe::units::parse_size)]
    avg_size: usize,
    /// Largest chunk; at most 16M.
    #[arg(long, value_name = "SIZE", default_value = "4M", value_parser = backpipe::units::parse_size)]
    max_size: usize,
    #[command(flatten)]
    keys: KeyArgs,
}

fn main() {
    let args = cli::parse::<Args>();
    cli::main(if args.decode { "chunk -d" } else { "chunk" }, || {
        let (input, output) = (cli::stream_stdin()?, cli::stream_stdout()?);
        // The write half of the key chunk IDs are made with: from the repository or the key file.
        let (repo, write_key) =
            match &args.repo {
                Some(location) => {
                    let repo = cli::open_repo(location, &args.keys)?;
                    let write_key = repo.write_key().duplicate();
                    (Some(repo), Some(write_key))
                }
                None => match args.keys.source().map(|s| s.load()).transpose()? {
                    None => (None, None),
                    Some(Secret::Key(master)) => (None, Some(master.write_key())),
                    Some(Secret::Passphrase(_)) => return Err(backpipe::Error::usage(
                        "chunk takes a key file or --repo, not a passphrase (chunk IDs must not change between runs)",
                    )),
                },
            };
        if args.decode {
            let joiner = match &write_key {
                Some(key) => Joiner::checking(ChunkIdKey::for_key(key)),
                None => Joiner::unchecked(),
            };
            return backpipe::filter::run("chunk -d", joiner, input, output);
        }
        let chunker = match (repo, write_key) {
            (Some(repo), _) => {
                let known = Arc::new(repo.dedup_index()?.into_keys().collect());
                Chunker::deduplicating(repo.write_key(), repo.config.sizes(), known)
            }
            (None, key) => {
                let sizes = ChunkSizes { min: args.min_size, avg: args.avg_size, max: args.max_size };
                sizes.validate(MAX_PLAIN_PAYLOAD)?;
                match key {
                    Some(key) => Chunker::keyed(&key, sizes),
                    None => Chunker::public(sizes),
                }
            }
        };
        backpipe::filter::run("chunk", chunker, input, output)
    })
}
