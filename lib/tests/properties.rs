//! Property tests: the frame codec round-trips any frames, and every reader,
//! filter and sink refuses arbitrary, mutated or truncated input with an
//! error, never a panic.

use backpipe::cdc::ChunkSizes;
use backpipe::codec::chunk::{Chunker, Joiner};
use backpipe::codec::crypt::{Decryptor, Encryptor};
use backpipe::codec::squeeze::{Squeezer, Unsqueezer};
use backpipe::format::{Encodings, Frame, Kind};
use backpipe::inspect::{inspect, InspectOptions};
use backpipe::keys::{MasterKey, Secret};
use backpipe::meta::{Begin, End, Entry, EntryEnd, EntryType, RawPath};
use backpipe::reader::{Item, StreamReader};
use backpipe::unpack::{unpack, UnpackOptions};
use backpipe::writer::StreamWriter;
use proptest::prelude::*;

/// A complete, valid plain stream of files with the given contents.
fn plain_stream(files: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = StreamWriter::new(&mut out);
    w.start([7; 16]).unwrap();
    let begin = Begin::now("test", "files", "full");
    w.write(&Frame::json(Kind::Begin, &begin)).unwrap();
    let mut total = 0;
    for (i, content) in files.iter().enumerate() {
        let entry = Entry {
            path: RawPath(format!("f{i}").into_bytes()),
            entry_type: EntryType::File,
            role: "file".into(),
            size: content.len() as u64,
            mode: 0o644,
            mtime: 1,
            mtime_ns: 0,
            uid: None,
            gid: None,
            target: None,
            links: None,
            xattrs: Vec::new(),
            attrs: Default::default(),
        };
        w.write(&Frame::json(Kind::Entry, &entry)).unwrap();
        for piece in content.chunks(1000) {
            w.write(&Frame::plain(Kind::Data, piece.to_vec())).unwrap();
        }
        let end = EntryEnd { size: content.len() as u64, blake3: blake3::hash(content).to_hex().to_string() };
        w.write(&Frame::json(Kind::EntryEnd, &end)).unwrap();
        total += content.len() as u64;
    }
    w.write(&Frame::json(Kind::End, &End { entries: files.len() as u64, bytes: total, ..End::default() })).unwrap();
    w.flush().unwrap();
    out
}

fn key() -> MasterKey {
    MasterKey::read_file(&KEY_FILE).unwrap()
}

static KEY_FILE: std::sync::LazyLock<std::path::PathBuf> = std::sync::LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("k");
    MasterKey::generate().write_new_file(&path).unwrap();
    path
});

fn small_sizes() -> ChunkSizes {
    ChunkSizes { min: 64, avg: 256, max: 1024 }
}

/// Runs every filter and sink over `input`; none may panic. Returns each
/// tool's name and whether it succeeded.
fn run_everything(input: &[u8]) -> Vec<(&'static str, bool)> {
    let mut results = Vec::new();
    macro_rules! filter {
        ($name:expr, $planner:expr) => {{
            let ok = backpipe::filter::run($name, $planner, input, std::io::sink()).is_ok();
            results.push(($name, ok));
        }};
    }
    filter!("chunk", Chunker::public(small_sizes()));
    filter!("chunk -d", Joiner::unchecked());
    filter!("squeeze", Squeezer { level: 1 });
    filter!("squeeze -d", Unsqueezer);
    filter!("encrypt", Encryptor::new(Secret::Key(key())).unwrap());
    filter!("encrypt -d", Decryptor::new(Secret::Key(key())));
    let options = InspectOptions { json: true, frames: true };
    results.push(("inspect", inspect(input, std::io::sink(), &options, None).is_ok()));
    let decryptor = Some(Decryptor::new(Secret::Key(key())));
    results.push(("inspect with key", inspect(input, std::io::sink(), &options, decryptor).is_ok()));
    let dir = tempfile::tempdir().unwrap();
    let options = UnpackOptions { dir: dir.path().join("out"), force: false, verbose: false, xattrs: true };
    results.push(("unpack", unpack(input, &options).is_ok()));
    results
}

/// Asserts every tool refused the input.
fn all_refused(results: Vec<(&'static str, bool)>) -> std::result::Result<(), TestCaseError> {
    for (tool, ok) in results {
        prop_assert!(!ok, "{} accepted damaged input", tool);
    }
    Ok(())
}

/// The encodings of a stream through chunk, squeeze and encrypt, as one byte string.
fn sealed(files: &[Vec<u8>]) -> Vec<u8> {
    let mut chunked = Vec::new();
    backpipe::filter::run("chunk", Chunker::public(small_sizes()), &plain_stream(files)[..], &mut chunked).unwrap();
    let mut squeezed = Vec::new();
    backpipe::filter::run("squeeze", Squeezer { level: 1 }, &chunked[..], &mut squeezed).unwrap();
    let mut out = Vec::new();
    backpipe::filter::run("encrypt", Encryptor::new(Secret::Key(key())).unwrap(), &squeezed[..], &mut out).unwrap();
    out
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    (
        prop_oneof![Just(Kind::Data), (9u8..=255).prop_map(Kind::Unknown)],
        0u8..8,
        proptest::collection::vec(any::<u8>(), 0..3000),
    )
        .prop_map(|(kind, enc, payload)| Frame { kind, encodings: Encodings(enc), payload })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn frames_round_trip_through_writer_and_reader(frames in proptest::collection::vec(frame_strategy(), 0..20)) {
        let mut out = Vec::new();
        let mut w = StreamWriter::new(&mut out);
        w.start([1; 16]).unwrap();
        w.write(&Frame::plain(Kind::Begin, b"{}".to_vec())).unwrap();
        w.write(&Frame::plain(Kind::Entry, b"{}".to_vec())).unwrap();
        for f in &frames {
            w.write(f).unwrap();
        }
        w.write(&Frame::plain(Kind::EntryEnd, b"{}".to_vec())).unwrap();
        w.write(&Frame::plain(Kind::End, b"{}".to_vec())).unwrap();
        w.flush().unwrap();
        let mut reader = StreamReader::new(&out[..]);
        let mut read = Vec::new();
        while let Some(item) = reader.next_item().unwrap() {
            if let Item::Frame(f) = item {
                read.push(f);
            }
        }
        prop_assert_eq!(read.len(), frames.len() + 4);
        prop_assert_eq!(&read[2..2 + frames.len()], &frames[..]);
    }

    #[test]
    fn the_codecs_round_trip_any_content(files in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 0..4)) {
        let mut decrypted = Vec::new();
        backpipe::filter::run("encrypt -d", Decryptor::new(Secret::Key(key())), &sealed(&files)[..], &mut decrypted).unwrap();
        let mut unsqueezed = Vec::new();
        backpipe::filter::run("squeeze -d", Unsqueezer, &decrypted[..], &mut unsqueezed).unwrap();
        let mut joined = Vec::new();
        backpipe::filter::run("chunk -d", Joiner::unchecked(), &unsqueezed[..], &mut joined).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let summary = unpack(&joined[..], &UnpackOptions { dir: dir.path().to_path_buf(), force: false, verbose: false, xattrs: true }).unwrap();
        prop_assert_eq!(summary.entries, files.len() as u64);
        for (i, content) in files.iter().enumerate() {
            prop_assert_eq!(&std::fs::read(dir.path().join(format!("f{i}"))).unwrap(), content);
        }
    }

    #[test]
    fn arbitrary_bytes_are_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        all_refused(run_everything(&bytes))?;
        let mut with_preamble = backpipe::format::encode_preamble(&[3; 16]).to_vec();
        with_preamble.extend_from_slice(&bytes);
        all_refused(run_everything(&with_preamble))?;
    }

    #[test]
    fn mutated_streams_are_refused_without_panic(
        files in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..3),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        for stream in [plain_stream(&files), sealed(&files)] {
            let mut bad = stream.clone();
            let positions: std::collections::BTreeMap<usize, u8> =
                flips.iter().map(|(at, value)| (at.index(bad.len()), value | 1)).collect();
            for (i, value) in positions {
                bad[i] ^= value;
            }
            all_refused(run_everything(&bad))?;
            all_refused(run_everything(&stream[..cut.index(stream.len())]))?;
        }
    }
}

/// Option values, as a hostile or careless user could type them: near-misses
/// of the real syntax, and anything at all.
mod option_values {
    use backpipe::meta::Begin;
    use backpipe::repo::forget::{decide, Policy};
    use backpipe::repo::snapshot::Summary;
    use backpipe::units::parse_duration;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;

    /// A snapshot summary of `host`, `kind` and start time `started`.
    fn summary(host: &str, kind: &str, started: &str) -> Summary {
        let begin = Begin { host: host.into(), started: started.into(), ..Begin::now("test", "files", kind) };
        let mut value = serde_json::to_value(&begin).unwrap();
        for (name, member) in [
            ("stream_id", serde_json::json!("00")),
            ("entries", 0.into()),
            ("bytes", 0.into()),
            ("stream_bytes", 0.into()),
            ("chunks", 0.into()),
            ("new_chunks", 0.into()),
            ("new_bytes", 0.into()),
            ("stored", started.into()),
            ("skeleton_blake3", "00".into()),
        ] {
            value[name] = member;
        }
        serde_json::from_value(value).unwrap()
    }

    /// Any instant chrono can hold.
    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        let (min, max) = (DateTime::<Utc>::MIN_UTC.timestamp(), DateTime::<Utc>::MAX_UTC.timestamp());
        prop_oneof![
            min..=max,
            Just(min),
            Just(max),
            // Around the present.
            1_500_000_000i64..2_500_000_000,
        ]
        .prop_map(|secs| DateTime::from_timestamp(secs, 0).unwrap())
    }

    /// Any instant RFC 3339 can write (years 0000 to 9999).
    fn writable() -> impl Strategy<Value = DateTime<Utc>> {
        (-62_167_219_200i64..=253_402_300_799).prop_map(|secs| DateTime::from_timestamp(secs, 0).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

        #[test]
        fn durations_parse_or_are_refused(text in prop_oneof![
            "[0-9]{0,25}[mhdwyMs]?",
            "[-+ ]?[0-9]{1,8}(\\.[0-9])?[a-z ]{0,3}",
            ".{0,30}",
        ]) {
            if let Ok(duration) = parse_duration(&text) {
                prop_assert!(duration >= chrono::Duration::zero());
                prop_assert!(duration <= chrono::Duration::days(365 * 1000), "{} accepted as {:?}", text, duration);
            }
        }

        #[test]
        fn times_parse_or_are_refused(text in prop_oneof![
            "[-+]?[0-9]{1,7}-[0-9]{1,2}-[0-9]{1,2}([ T][0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2})?)?",
            "[-+]?[0-9]{4,6}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[-+][0-9]{2}:[0-9]{2})",
            ".{0,40}",
        ]) {
            if let Ok(time) = backpipe::units::parse_time(&text) {
                prop_assert!((0..=9999).contains(&chrono::Datelike::year(&time)), "{} accepted as {}", text, time);
            }
        }

        #[test]
        fn sizes_parse_or_are_refused(text in prop_oneof![
            " ?[0-9]{0,25}[kKmMgGbBiIpP]{0,3} ?",
            ".{0,30}",
        ]) {
            let _ = backpipe::units::parse_size(&text);
        }

        #[test]
        fn locations_parse_or_are_refused(text in prop_oneof![
            "(sftp|s3|ftp|file)://[a-zA-Z0-9@:%./?&=_#\\[\\]-]{0,40}",
            "s3://[a-z]{1,8}(/[a-z%0-9]{0,8})?\\?(endpoint|region|addressing)=[a-zA-Z0-9:/@%.&=]{0,30}",
            "sftp://([a-z:%0-9]{0,8}@)?[a-z0-9.\\[\\]:]{0,12}(:[0-9]{0,7})?(/[a-z%0-9]{0,8}){0,3}",
            ".{0,40}",
        ]) {
            let _ = backpipe::repo::address::Address::parse(&text);
        }

        #[test]
        fn retention_decides_or_refuses_at_any_time(
            now in instant(),
            within in prop_oneof![
                Just(None),
                (0i64..=365_000 * 24 * 60).prop_map(|m| Some(chrono::Duration::minutes(m))),
                any::<i32>().prop_map(|s| Some(chrono::Duration::seconds(s.into()))),
            ],
            counts in proptest::collection::vec(prop_oneof![0usize..4, Just(usize::MAX)], 6),
            started in proptest::collection::vec((prop_oneof![instant(), writable()], 0usize..3, any::<bool>()), 0..6),
        ) {
            let snapshots: Vec<(String, Summary)> = started
                .iter()
                .enumerate()
                .map(|(i, (at, host, full))| {
                    let time = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                    (format!("s{i}"), summary(&format!("h{host}"), if *full { "full" } else { "incremental" }, &time))
                })
                .collect();
            let policy = Policy {
                last: counts[0],
                hourly: counts[1],
                daily: counts[2],
                weekly: counts[3],
                monthly: counts[4],
                yearly: counts[5],
                within,
            };
            let received = std::collections::HashMap::new();
            if let Ok(decisions) = decide(&snapshots, &received, &policy, now) {
                prop_assert_eq!(decisions.len(), snapshots.len());
            }
        }
    }
}
