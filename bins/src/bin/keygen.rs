//! `keygen`: makes a key file for `encrypt` and `chunk`.

use std::path::PathBuf;

use backpipe::cli;
use backpipe::keys::MasterKey;
use clap::Parser;

/// Make a new random 256-bit key file (mode 0600) for `encrypt --key-file` and `chunk --key-file`.
///
/// The file is never overwritten. Keep a copy somewhere safe and apart from
/// the backups: without it, encrypted backups cannot be read by anyone.
#[derive(Parser)]
#[command(name = "keygen", version)]
struct Args {
    /// Where to write the key file.
    file: PathBuf,
}

fn main() {
    let args = cli::parse::<Args>();
    cli::main("keygen", || MasterKey::generate().write_new_file(&args.file))
}
