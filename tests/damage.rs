//! Damage of every kind, each caught by the next consumer with the right
//! exit status (3 incomplete, 4 integrity) and a message naming the problem,
//! and nothing committed downstream.

mod common;

use std::path::Path;

use backpipe::format::{Frame, Kind};
use common::*;

const PREAMBLE: usize = 32;
const HEADER: usize = 24;

/// (offset, total length) of every frame, parsed independently of the reader.
fn frame_spans(stream: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut at = PREAMBLE;
    while at < stream.len() {
        let len = u32::from_le_bytes(stream[at + 4..at + 8].try_into().unwrap()) as usize;
        spans.push((at, HEADER + len));
        at += HEADER + len;
    }
    spans
}

fn kind_at(stream: &[u8], offset: usize) -> u8 {
    stream[offset]
}

/// A small tree whose stream has every frame kind: Begin, Entry, Data, EntryEnd, End.
fn sample(dir: &Path) {
    put(&dir.join("tree/a.txt"), &b"some text ".repeat(50_000), 0o644, 1_700_000_000);
    put(&dir.join("tree/b.bin"), &noise(300_000, 5), 0o600, 1_700_000_000);
    std::os::unix::fs::symlink("a.txt", dir.join("tree/link")).unwrap();
    sh_ok(
        dir,
        "keygen k
         dump-files tree > plain.bp
         dump-files tree | chunk --min-size 16K --avg-size 64K --max-size 256K | squeeze > chunked.bp
         dump-files tree | chunk --min-size 16K --avg-size 64K --max-size 256K | squeeze | encrypt --key-file k > sealed.bp",
    );
}

/// Consumers run on damaged input, with the status each must give.
fn consumers_for(name: &str) -> Vec<&'static str> {
    match name {
        "plain.bp" => vec!["inspect", "chunk", "unpack out"],
        "chunked.bp" => vec!["inspect", "squeeze -d | chunk -d | unpack out", "encrypt --key-file k"],
        _ => vec!["inspect", "encrypt -d --key-file k | squeeze -d | chunk -d | unpack out"],
    }
}

/// Runs `consumer` on `bytes`, expecting `code`; checks nothing reached `out`.
/// In a pipeline the first stage detects the damage and exits `code`; the
/// later stages see its Abort frame and exit with the same status (the
/// class of the cause, which the frame carries), so the pipeline does too.
fn expect_failure(dir: &Path, bytes: &[u8], consumer: &str, code: i32, what: &str) -> String {
    std::fs::write(dir.join("bad.bp"), bytes).unwrap();
    let _ = std::fs::remove_dir_all(dir.join("out"));
    let out = sh(dir, &format!("< bad.bp {consumer} > /dev/null"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{what}, consumer `{consumer}`: {stderr}");
    assert!(stderr.lines().count() >= 1 && stderr.lines().all(|l| !l.is_empty()), "{what}: {stderr}");
    if dir.join("out").exists() {
        let left: Vec<_> = std::fs::read_dir(dir.join("out")).unwrap().collect();
        assert!(left.is_empty(), "{what}: something was committed to out/");
    }
    stderr
}

#[test]
fn truncation_anywhere_is_incomplete() {
    let dir = scratch();
    sample(dir.path());
    for name in ["plain.bp", "chunked.bp", "sealed.bp"] {
        let stream = std::fs::read(dir.path().join(name)).unwrap();
        let mut cuts = vec![0, 1, PREAMBLE - 1, PREAMBLE, stream.len() - 1];
        for (offset, len) in frame_spans(&stream) {
            cuts.extend([offset, offset + 1, offset + HEADER - 1, offset + HEADER, offset + len / 2]);
        }
        cuts.extend((1..20).map(|i| stream.len() * i / 20));
        cuts.sort();
        cuts.dedup();
        for cut in cuts.into_iter().filter(|&c| c < stream.len()) {
            for consumer in consumers_for(name) {
                let err = expect_failure(dir.path(), &stream[..cut], consumer, 3, &format!("{name} cut at {cut}"));
                assert!(
                    err.contains("truncated")
                        || err.contains("ended")
                        || err.contains("empty input")
                        || err.contains("aborted upstream"),
                    "{name} cut at {cut}: {err}"
                );
            }
        }
    }
}

#[test]
fn a_flipped_byte_in_any_frame_is_an_integrity_failure() {
    let dir = scratch();
    sample(dir.path());
    for name in ["plain.bp", "chunked.bp", "sealed.bp"] {
        let stream = std::fs::read(dir.path().join(name)).unwrap();
        let mut kinds_hit = std::collections::BTreeSet::new();
        // The preamble.
        for at in [0, 9, 20, 30] {
            let mut bad = stream.clone();
            bad[at] ^= 0x40;
            let err = expect_failure(dir.path(), &bad, "inspect", 4, &format!("{name} preamble byte {at}"));
            assert!(err.contains("preamble") || err.contains("magic"), "{err}");
        }
        for (index, (offset, len)) in frame_spans(&stream).into_iter().enumerate() {
            kinds_hit.insert(kind_at(&stream, offset));
            let mut targets = vec![offset, offset + 1, offset + 5, offset + 9, offset + 17, offset + 22];
            if len > HEADER {
                targets.extend([offset + HEADER, offset + HEADER + (len - HEADER) / 2, offset + len - 1]);
            }
            for at in targets {
                let mut bad = stream.clone();
                bad[at] ^= 0x01;
                for consumer in consumers_for(name) {
                    let what = format!("{name} frame {index} byte {}", at - offset);
                    let err = expect_failure(dir.path(), &bad, consumer, 4, &what);
                    assert!(err.contains(&format!("frame {index}")), "{what}: {err}");
                }
            }
        }
        let expected: &[u8] = if name == "sealed.bp" { &[1, 2, 3, 4, 5, 7] } else { &[1, 2, 3, 4, 5] };
        assert_eq!(kinds_hit.into_iter().collect::<Vec<_>>(), expected, "{name} covers every frame kind");
    }
}

#[test]
fn dropped_reordered_and_spliced_frames_are_caught() {
    let dir = scratch();
    sample(dir.path());
    sh_ok(dir.path(), "dump-files tree > other.bp");
    let other = std::fs::read(dir.path().join("other.bp")).unwrap();
    let foreign = frame_spans(&other)[2];
    for name in ["plain.bp", "chunked.bp", "sealed.bp"] {
        let stream = std::fs::read(dir.path().join(name)).unwrap();
        let spans = frame_spans(&stream);
        let last = spans.len() - 1;
        for i in 0..last {
            let (offset, len) = spans[i];
            let dropped = [&stream[..offset], &stream[offset + len..]].concat();
            let err = expect_failure(dir.path(), &dropped, "inspect", 4, &format!("{name} without frame {i}"));
            assert!(err.contains("dropped"), "{err}");
            let (next_offset, next_len) = spans[i + 1];
            let swapped = [
                &stream[..offset],
                &stream[next_offset..next_offset + next_len],
                &stream[offset..offset + len],
                &stream[next_offset + next_len..],
            ]
            .concat();
            let err =
                expect_failure(dir.path(), &swapped, "inspect", 4, &format!("{name} frames {i},{} swapped", i + 1));
            assert!(err.contains("reordered"), "{err}");
            let spliced =
                [&stream[..offset], &other[foreign.0..foreign.0 + foreign.1], &stream[offset + len..]].concat();
            let err =
                expect_failure(dir.path(), &spliced, "inspect", 4, &format!("{name} frame {i} from another stream"));
            assert!(err.contains("another stream"), "{err}");
        }
        // Without its End frame the stream is incomplete, not damaged.
        let err = expect_failure(dir.path(), &stream[..spans[last].0], "inspect", 3, &format!("{name} without End"));
        assert!(err.contains("before the End frame"), "{err}");
    }
}

fn data_indexes(frames: &[Frame]) -> Vec<usize> {
    frames.iter().enumerate().filter(|(_, f)| f.kind == Kind::Data).map(|(i, _)| i).collect()
}

#[test]
fn forged_encrypted_streams_fail_authentication() {
    let dir = scratch();
    sample(dir.path());
    sh_ok(
        dir.path(),
        "cp -r tree tree2 && printf 'different content' >> tree2/a.txt
         dump-files tree2 | chunk --min-size 16K --avg-size 64K --max-size 256K | squeeze | encrypt --key-file k > sealed2.bp",
    );
    let sealed = std::fs::read(dir.path().join("sealed.bp")).unwrap();
    let other = std::fs::read(dir.path().join("sealed2.bp")).unwrap();
    let decrypt = "encrypt -d --key-file k | squeeze -d | chunk -d | unpack out";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "a chunk dropped",
            forge(&sealed, |f| {
                let i = data_indexes(f)[1];
                f.remove(i);
            }),
        ),
        (
            "two chunks swapped",
            forge(&sealed, |f| {
                let d = data_indexes(f);
                f.swap(d[0], d[1]);
            }),
        ),
        (
            "an entry dropped",
            forge(&sealed, |f| {
                let i = f.iter().position(|x| x.kind == Kind::Entry).unwrap();
                let j = f.iter().position(|x| x.kind == Kind::EntryEnd).unwrap();
                f.drain(i..=j);
            }),
        ),
        (
            "a ciphertext byte changed",
            forge(&sealed, |f| {
                let i = data_indexes(f)[0];
                let n = f[i].payload.len();
                f[i].payload[n / 2] ^= 1;
            }),
        ),
        ("a metadata byte changed", forge(&sealed, |f| f[1].payload[3] ^= 1)),
        (
            "a chunk from another stream",
            forge(&sealed, |f| {
                // A chunk with different content: one of the same content is the same chunk.
                let ours: Vec<Vec<u8>> =
                    f.iter().filter(|x| x.kind == Kind::Data).map(|x| x.payload[..32].to_vec()).collect();
                let foreign = frames_of(&other)
                    .into_iter()
                    .find(|x| x.kind == Kind::Data && !ours.contains(&x.payload[..32].to_vec()))
                    .unwrap();
                let i = data_indexes(f)[0];
                f[i] = foreign;
            }),
        ),
        (
            "the encodings byte changed",
            forge(&sealed, |f| {
                let i = data_indexes(f)[0];
                f[i].encodings.0 &= !0x02;
            }),
        ),
    ];
    for (what, bytes) in cases {
        let err = expect_failure(dir.path(), &bytes, decrypt, 4, what);
        assert!(err.contains("authentication failed"), "{what}: {err}");
    }
    let replayed = forge(&sealed, |f| {
        let i = f.iter().position(|x| x.kind == Kind::EntryEnd).unwrap();
        let copy = f[i].clone();
        f.insert(i + 1, copy);
    });
    let err = expect_failure(dir.path(), &replayed, "encrypt -d --key-file k", 4, "a metadata frame replayed");
    assert!(err.contains("EntryEnd outside an entry"), "{err}");
    let replayed_entry = forge(&sealed, |f| {
        let i = f.iter().position(|x| x.kind == Kind::EntryEnd).unwrap();
        let j = f.iter().rposition(|x| x.kind == Kind::EntryEnd).unwrap();
        let (entry_end, entry) = (f[i].clone(), f[i - 1].clone());
        f.splice(j + 1..j + 1, [entry, entry_end]);
    });
    let err = expect_failure(dir.path(), &replayed_entry, "encrypt -d --key-file k", 4, "an entry replayed");
    assert!(err.contains("authentication failed"), "{err}");
    let their_entry = frames_of(&other).into_iter().find(|x| x.kind == Kind::Entry).unwrap();
    let foreign_meta = forge(&sealed, |f| {
        let i = f.iter().position(|x| x.kind == Kind::Entry).unwrap();
        f[i] = their_entry;
    });
    let err = expect_failure(dir.path(), &foreign_meta, "encrypt -d --key-file k", 4, "an Entry from another stream");
    assert!(err.contains("authentication failed"), "{err}");
    // The Cipher frame's sealed stream secret: damaged, or another stream's (same key).
    let envelope_of = |frame: &backpipe::format::Frame| {
        let text = String::from_utf8(frame.payload.clone()).unwrap();
        text.split("\"envelope\":\"").nth(1).unwrap()[..160].to_string()
    };
    let theirs = envelope_of(&frames_of(&other)[0]);
    let swapped_secret = forge(&sealed, |f| {
        let ours = envelope_of(&f[0]);
        f[0].payload = String::from_utf8(f[0].payload.clone()).unwrap().replace(&ours, &theirs).into_bytes();
    });
    let err =
        expect_failure(dir.path(), &swapped_secret, "encrypt -d --key-file k", 4, "another stream's sealed secret");
    assert!(err.contains("authentication failed"), "{err}");
    let damaged_secret = forge(&sealed, |f| {
        let ours = envelope_of(&f[0]);
        let flipped = format!("{}{}", if ours.starts_with('0') { "1" } else { "0" }, &ours[1..]);
        f[0].payload = String::from_utf8(f[0].payload.clone()).unwrap().replace(&ours, &flipped).into_bytes();
    });
    let err = expect_failure(dir.path(), &damaged_secret, "encrypt -d --key-file k", 4, "a damaged sealed secret");
    assert!(err.contains("Cipher frame is damaged"), "{err}");
    // Stripping the encryption is refused, not passed through as plaintext.
    let stripped = forge(&sealed, |f| {
        f.remove(0);
    });
    let err = expect_failure(dir.path(), &stripped, decrypt, 4, "Cipher frame removed");
    assert!(err.contains("no Cipher frame"), "{err}");
}

#[test]
fn a_wrong_key_is_reported_and_nothing_is_written_as_if_good() {
    let dir = scratch();
    sample(dir.path());
    let out = sh(dir.path(), "keygen k2\nencrypt -d --key-file k2 < sealed.bp > dec.bp");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("wrong key"), "{stderr}");
    // What it wrote is only an aborted stream: no entry, no data.
    let listing = sh(dir.path(), "inspect --json dec.bp");
    assert_eq!(listing.status.code(), Some(4));
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(!text.contains("\"entry\"") && text.contains("\"abort\""), "{text}");
    let err = sh_fails(dir.path(), "printf 'nope' > pw\nencrypt -d --passphrase-file pw < sealed.bp > /dev/null", 2);
    assert!(err.contains("key file, not a passphrase"), "{err}");
}

#[test]
fn reverse_filters_refuse_what_is_not_theirs() {
    let dir = scratch();
    sample(dir.path());
    let err = sh_fails(dir.path(), "squeeze -d < sealed.bp > /dev/null", 1);
    assert!(err.contains("encrypt -d"), "{err}");
    let err = sh_fails(dir.path(), "chunk -d < chunked.bp > /dev/null", 1);
    assert!(err.contains("squeeze -d"), "{err}");
    let err = sh_fails(dir.path(), "unpack out < chunked.bp", 1);
    assert!(err.contains("squeeze -d"), "{err}");
    let err = sh_fails(dir.path(), "encrypt -d --key-file k < plain.bp > /dev/null", 4);
    assert!(err.contains("not encrypted"), "{err}");
    let err = sh_fails(dir.path(), "encrypt --key-file k < sealed.bp > /dev/null", 1);
    assert!(err.contains("already encrypted"), "{err}");
    let err = sh_fails(dir.path(), "echo 'not a stream at all' | inspect", 4);
    assert!(err.contains("not a backpipe stream"), "{err}");
    let err = sh_fails(dir.path(), "inspect < /dev/null", 3);
    assert!(err.contains("empty input"), "{err}");
}

#[test]
fn an_unreadable_file_aborts_the_stream_and_the_pipeline_fails() {
    let dir = scratch();
    sample(dir.path());
    // Reading /proc/self/mem from offset 0 fails with EIO, even for root.
    // One cause, said once by the stage that failed; the filters between say
    // nothing; the last stage says what it did not do, and exits with the
    // class of the cause (1 here, as dump-files does), not 3.
    let out = sh(dir.path(), "dump-files tree /proc/self/mem | chunk | squeeze | squeeze -d | chunk -d | unpack out");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(stderr.contains("dump-files: cannot read '/proc/self/mem'"), "{stderr}");
    assert!(stderr.contains("unpack: aborted upstream by dump-files; "), "{stderr}");
    assert!(std::fs::read_dir(dir.path().join("out")).unwrap().next().is_none(), "nothing committed");
    let status = sh(dir.path(), "dump-files tree /proc/self/mem > s.bp").status;
    assert_eq!(status.code(), Some(1));
    let listing = sh(dir.path(), "inspect s.bp");
    assert_eq!(listing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&listing.stdout).contains("ABORTED"));
}

#[test]
fn a_source_killed_mid_stream_fails_the_whole_pipeline() {
    let dir = scratch();
    let big = std::fs::File::create(dir.path().join("big")).unwrap();
    big.set_len(3 << 30).unwrap();
    let out = sh(
        dir.path(),
        "timeout -s KILL 0.5 dump-files big | chunk | squeeze | squeeze -d | chunk -d | unpack out || echo \"${PIPESTATUS[*]}\" > statuses",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let statuses = std::fs::read_to_string(dir.path().join("statuses")).unwrap();
    // timeout reports the kill (137); every later stage sees a truncated or aborted stream.
    assert_eq!(statuses.trim(), "137 3 3 3 3 3", "{stderr}");
    assert!(stderr.contains("chunk: input ended") || stderr.contains("chunk: input truncated"), "{stderr}");
    assert!(std::fs::read_dir(dir.path().join("out")).unwrap().next().is_none(), "nothing committed");
    // Each stage reports the incomplete input itself.
    let out = sh(dir.path(), "timeout -s KILL 0.5 dump-files big > part.bp || true\nchunk < part.bp > /dev/null");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn hostile_frames_are_refused_without_a_crash() {
    let dir = scratch();
    sample(dir.path());
    // A chunked Data frame too short to hold its chunk ID, with valid checksums.
    let short = forge(&std::fs::read(dir.path().join("plain.bp")).unwrap(), |f| {
        let i = data_indexes(f)[0];
        f[i].encodings.0 = 0x01;
        f[i].payload.truncate(5);
    });
    for tool in ["squeeze", "chunk -d", "encrypt --key-file k"] {
        let err = expect_failure(dir.path(), &short, tool, 4, "short chunk");
        assert!(err.contains("shorter than its chunk ID"), "{tool}: {err}");
    }
    // Garbage after a complete stream: the filter's Abort opens a new stream,
    // so the consumer after it reports the abort (with the filter's status),
    // not a damaged preamble.
    let mut trailing = std::fs::read(dir.path().join("plain.bp")).unwrap();
    trailing.extend_from_slice(&[0u8; 10]);
    std::fs::write(dir.path().join("trailing.bp"), &trailing).unwrap();
    let out = sh(dir.path(), "squeeze < trailing.bp > s.bp || echo $? > status\ninspect s.bp");
    assert_eq!(std::fs::read_to_string(dir.path().join("status")).unwrap().trim(), "4");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("inspect: aborted upstream by squeeze"), "{err}");
}

#[test]
fn a_key_file_other_users_can_read_or_change_is_refused() {
    let dir = scratch();
    let d = dir.path();
    put(&d.join("tree/a"), b"content", 0o644, 1_700_000_000);
    sh_ok(d, "keygen k && cp k k0 && repo init R --key-file k 2>/dev/null && dump-files tree > plain.bp");
    // Every tool that reads a key file, as ssh treats a private key: refused, one line, exit 2.
    let uses = [
        "encrypt --key-file k < plain.bp > out.bp",
        "chunk --key-file k < plain.bp > out.bp",
        "repo snapshots R --key-file k",
        "repo key add R --key-file k0 --new-key-file k",
    ];
    for mode in ["644", "640", "604", "660", "666", "620"] {
        for use_ in uses {
            let err = sh_fails(d, &format!("chmod {mode} k && {use_}"), 2);
            assert_eq!(err.trim_end().lines().count(), 1, "{mode} {use_}: {err}");
            assert!(err.contains("accessible by other users") && err.contains("chmod 600"), "{mode} {use_}: {err}");
        }
    }
    // Readable by its owner only (0600, 0400), it is used; keygen makes it so.
    for mode in ["600", "400"] {
        sh_ok(
            d,
            &format!("chmod {mode} k && encrypt --key-file k < plain.bp > out.bp && repo snapshots R --key-file k"),
        );
    }
    sh_ok(d, "keygen k3 && test \"$(stat -c %a k3)\" = 600 && encrypt --key-file k3 < plain.bp > /dev/null");
    // Through a pipe (mode 0600) it is read as before.
    sh_ok(d, "encrypt --key-file <(cat k) < plain.bp > /dev/null");
}

#[test]
fn chunk_d_with_the_key_refuses_a_chunk_whose_content_is_not_its_id() {
    let dir = scratch();
    let d = dir.path();
    put(&d.join("tree/a.txt"), &b"some text ".repeat(50_000), 0o644, 1_700_000_000);
    sh_ok(d, "keygen k && dump-files tree | chunk --key-file k --min-size 16K --avg-size 64K --max-size 256K > c.bp");
    // Other bytes under a chunk's keyed ID, as a holder of the key's write half can make them.
    let forged = forge(&std::fs::read(d.join("c.bp")).unwrap(), |frames| {
        let chunk = frames.iter_mut().find(|f| f.kind == Kind::Data).unwrap();
        chunk.payload[32..].fill(b'#');
    });
    std::fs::write(d.join("forged.bp"), forged).unwrap();
    let err = sh_fails(d, "chunk -d --key-file k < forged.bp > out.bp", 4);
    assert!(err.starts_with("chunk -d: chunk ") && err.contains("does not match its ID"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let out = std::fs::read(d.join("out.bp")).unwrap();
    assert!(!out.windows(64).any(|w| w.iter().all(|b| *b == b'#')), "forged bytes went downstream");
    // Encryption does not tell (the chunk is bound to its ID, not to its content); chunk -d with the key does.
    let err = sh_fails(
        d,
        "encrypt --key-file k < forged.bp | encrypt -d --key-file k | chunk -d --key-file k | unpack out \
         || exit ${PIPESTATUS[2]}",
        4,
    );
    assert!(err.contains("does not match its ID"), "{err}");
    assert!(!d.join("out/tree").exists());
    // Honest chunks pass, with the key and without it.
    sh_ok(d, "chunk -d --key-file k < c.bp | unpack out && chunk -d < c.bp | unpack out2");
    assert_eq!(std::fs::read(d.join("out/tree/a.txt")).unwrap(), b"some text ".repeat(50_000));
}
