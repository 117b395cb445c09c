//! `inspect`: lists a stream.

use std::path::PathBuf;

use backpipe::cli::{self, KeyArgs};
use backpipe::codec::crypt::Decryptor;
use backpipe::inspect::{inspect, InspectOptions};
use clap::Parser;

/// List a stream like `tar tv`: engine, backup kind, entries, sizes and encodings.
///
/// Every frame is checked on the way (checksums, order, grammar), so
/// `inspect` also verifies a stream file is intact and complete. An encrypted
/// stream shows frame kinds and sizes only, unless a key is given.
#[derive(Parser)]
#[command(name = "inspect", version, after_help = cli::EXIT_STATUS_HELP)]
struct Args {
    /// Stream file to read; stdin when absent.
    file: Option<PathBuf>,
    /// One JSON object per line (stream, begin, entry, end, frame, ...).
    #[arg(long)]
    json: bool,
    /// Also list every frame: index, byte offset, kind, length, encodings.
    #[arg(long)]
    frames: bool,
    #[command(flatten)]
    keys: KeyArgs,
}

fn main() {
    let args = cli::parse::<Args>();
    cli::main("inspect", || {
        let options = InspectOptions { json: args.json, frames: args.frames };
        // Listing a repository skeleton is fine: references are shown, not resolved.
        let decryptor = cli::optional_secret(&args.keys)?.map(Decryptor::for_skeletons);
        let stdout = std::io::stdout().lock();
        match &args.file {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .map_err(|e| backpipe::Error::io(format!("cannot open '{}'", path.display()), e))?;
                inspect(file, stdout, &options, decryptor)
            }
            None => inspect(cli::stream_stdin()?, stdout, &options, decryptor),
        }
    })
}
