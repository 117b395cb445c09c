//! Runs arbitrary bytes through the decoding filters (`chunk -d`,
//! `squeeze -d`, `encrypt -d` with a fixed key) and through `inspect`.
//! Each may fail with an error; none may panic.

#![no_main]

use std::io;
use std::path::PathBuf;
use std::sync::OnceLock;

use backpipe::codec::chunk::{ChunkIdKey, Joiner};
use backpipe::codec::crypt::Decryptor;
use backpipe::codec::squeeze::Unsqueezer;
use backpipe::inspect::{inspect, InspectOptions};
use backpipe::keys::{MasterKey, Secret};
use libfuzzer_sys::fuzz_target;

/// The fixed fuzzing key, in key file form. Seeds encrypted with it (see
/// docs/FUZZING.md) let the fuzzer get past the key check.
const KEY_FILE_TEXT: &str = "backpipe key v1\n4242424242424242424242424242424242424242424242424242424242424242\n";

/// `MasterKey` can only be read from a key file, so the file is written once
/// per process into the temp dir (renamed into place, so parallel fuzzing
/// jobs never see a half-written file).
fn key() -> MasterKey {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let dir = std::env::temp_dir();
        let path = dir.join("backpipe-fuzz-fixed.key");
        let tmp = dir.join(format!("backpipe-fuzz-fixed.key.{}", std::process::id()));
        std::fs::write(&tmp, KEY_FILE_TEXT).expect("write the fuzzing key file");
        std::fs::rename(&tmp, &path).expect("rename the fuzzing key file");
        path
    });
    MasterKey::read_file(path).expect("read the fuzzing key file")
}

fuzz_target!(|data: &[u8]| {
    let _ = backpipe::filter::run("chunk -d", Joiner::unchecked(), data, io::sink());
    let checking = Joiner::checking(ChunkIdKey::for_key(&key().write_key()));
    let _ = backpipe::filter::run("chunk -d", checking, data, io::sink());
    let _ = backpipe::filter::run("squeeze -d", Unsqueezer, data, io::sink());
    let _ = backpipe::filter::run("encrypt -d", Decryptor::new(Secret::Key(key())), data, io::sink());
    let listing = InspectOptions { json: false, frames: true };
    let _ = inspect(data, io::sink(), &listing, None);
    let json = InspectOptions { json: true, frames: true };
    let _ = inspect(data, io::sink(), &json, Some(Decryptor::new(Secret::Key(key()))));
});
