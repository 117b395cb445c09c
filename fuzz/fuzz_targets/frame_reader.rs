//! Feeds arbitrary bytes to the frame reader. It must return an error or
//! `None` at some point, and never panic.

#![no_main]

use backpipe_stream::reader::StreamReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = StreamReader::new(data);
    while let Ok(Some(_item)) = reader.next_item() {}
});
