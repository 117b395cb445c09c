//! `encrypt`: authenticated encryption of every payload, and `encrypt -d`.

use backpipe::cli::{self, KeyArgs};
use backpipe::codec::crypt::{Decryptor, Encryptor};
use backpipe::keys::Secret;
use clap::Parser;

/// Encrypt every frame's payload with AES-256-GCM (or decrypt with -d).
///
/// Names, paths and all other metadata are encrypted along with the data;
/// only frame kinds, sizes and chunk IDs stay visible (chunk with the same
/// key, `chunk --key-file`, so the IDs reveal nothing). Frames cannot be
/// altered, dropped, reordered or moved between streams without `encrypt -d`
/// failing with an authentication error, and a wrong key is reported as such
/// before any frame is decrypted: the output is then only an Abort.
///
/// The key comes from a key file (`keygen`) or a passphrase stretched with
/// Argon2id, read from a file, a file descriptor or an environment variable
/// (BACKPIPE_PASSPHRASE when no option is given). Never from the command line.
#[derive(Parser)]
#[command(name = "encrypt", version, after_help = AFTER_HELP)]
struct Args {
    /// Decrypt instead.
    #[arg(short = 'd', long = "decrypt")]
    decrypt: bool,
    /// Use this repository's key (the key options then unlock the repository).
    #[arg(long, value_name = "REPO", env = "BACKPIPE_REPOSITORY")]
    repo: Option<String>,
    #[command(flatten)]
    keys: KeyArgs,
}

const AFTER_HELP: &str = "\
Examples:
  keygen backup.key
  dump-files /srv | chunk --key-file backup.key | squeeze | encrypt --key-file backup.key > srv.bp
  encrypt -d --key-file backup.key < srv.bp | squeeze -d | chunk -d | unpack /restore
  encrypt --passphrase-fd 3 3<passphrase.txt

Exit status: 0 success, 1 error, 2 usage or missing key, 3 incomplete input,
4 integrity failure (wrong key, damaged or altered stream).";

fn main() {
    let args = cli::parse::<Args>();
    cli::main(if args.decrypt { "encrypt -d" } else { "encrypt" }, || {
        let (input, output) = (cli::stream_stdin()?, cli::stream_stdout()?);
        match &args.repo {
            Some(location) => {
                let repo = cli::open_repo(location, &args.keys)?;
                if args.decrypt {
                    let secret = Secret::Key(repo.master()?.duplicate());
                    backpipe::filter::run("encrypt -d", Decryptor::new(secret), input, output)
                } else {
                    backpipe::filter::run("encrypt", Encryptor::for_write_key(repo.write_key()), input, output)
                }
            }
            None => {
                let secret = cli::require_secret(&args.keys)?;
                if args.decrypt {
                    backpipe::filter::run("encrypt -d", Decryptor::new(secret), input, output)
                } else {
                    backpipe::filter::run("encrypt", Encryptor::new(secret)?, input, output)
                }
            }
        }
    })
}
