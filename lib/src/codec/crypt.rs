//! `encrypt`: AES-256-GCM over every frame's payload (metadata included), and
//! `encrypt -d`.
//!
//! Each stream gets a Cipher frame with a fresh random salt. Chunk bodies are
//! sealed with a random nonce under a key derived from the master key alone,
//! with the chunk ID as associated data, so a stored chunk stays decryptable
//! on its own. ChunkRef frames (a chunk ID alone) stay in the clear. Every
//! other frame is sealed under a per-stream key with its position as nonce
//! and, as associated data, its kind, its inner encodings, its position, and
//! a hash of the chunk IDs (of Data frames and ChunkRefs) since the previous
//! such frame. A dropped, reordered, replayed or foreign frame therefore fails
//! authentication at the latest at the next metadata frame; EntryEnd follows
//! every entry and End closes every stream.

use std::collections::HashMap;
use std::sync::Arc;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::filter::{split_item, Job, Output, Planner, Step};
use crate::format::{Encodings, Frame, Kind, CHUNK_ID_LEN};
use crate::keys::{Argon2Params, MasterKey, Secret};
use crate::reader::Item;

/// The scheme name recorded in Cipher frames.
const SCHEME: &str = "aes-256-gcm/v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Payload of a Cipher frame (JSON): what a holder of the key needs to decrypt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CipherParams {
    /// The encryption scheme, "aes-256-gcm/v1".
    pub scheme: String,
    /// Per-stream random salt, hex (32 bytes).
    pub salt: String,
    /// Key check value, hex (8 bytes): tells a wrong key from damage.
    pub check: String,
    /// Present when the master key comes from a passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argon2: Option<Argon2Params>,
}

/// The working keys of one stream.
struct StreamKeys {
    chunk: Aes256Gcm,
    stream: Aes256Gcm,
}

impl StreamKeys {
    fn derive(master: &MasterKey, salt: &[u8]) -> (StreamKeys, String) {
        let with_salt = |label: &[u8]| [label, salt].concat();
        let chunk = master.derive(b"backpipe/v1/chunk-body");
        let stream = master.derive(&with_salt(b"backpipe/v1/stream/"));
        let check = master.derive(&with_salt(b"backpipe/v1/check/"));
        let keys = StreamKeys {
            chunk: Aes256Gcm::new_from_slice(&chunk[..]).expect("32-byte key"),
            stream: Aes256Gcm::new_from_slice(&stream[..]).expect("32-byte key"),
        };
        (keys, hex::encode(&check[..8]))
    }
}

fn chunk_aad(inner: Encodings, id: &[u8]) -> Vec<u8> {
    [b"backpipe/v1/chunk".as_slice(), &[inner.0], id].concat()
}

fn frame_aad(kind: Kind, inner: Encodings, position: u64, chain: &[u8; 32]) -> Vec<u8> {
    [b"backpipe/v1/frame".as_slice(), &[kind.code(), inner.0], &position.to_le_bytes(), chain].concat()
}

fn position_nonce(position: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..8].copy_from_slice(&position.to_le_bytes());
    nonce
}

/// Links chunks (Data frames and ChunkRefs alike) to the metadata frame
/// after them by their IDs, so a chunk stored once in a repository and put
/// back in place of its reference authenticates the same way.
#[derive(Default)]
struct Chain(Option<blake3::Hasher>);

impl Chain {
    fn add(&mut self, id: &[u8]) {
        self.0.get_or_insert_with(blake3::Hasher::new).update(id);
    }

    /// The digest of the chunks since the last call (all zeros if none), and a reset.
    fn take(&mut self) -> [u8; 32] {
        self.0.take().map(|h| *h.finalize().as_bytes()).unwrap_or([0; 32])
    }
}

/// Per-stream state shared by both directions.
#[derive(Default)]
struct StreamState {
    keys: Option<Arc<StreamKeys>>,
    position: u64,
    chain: Chain,
}

/// Seals or opens one frame.
pub struct Seal {
    frame: Frame,
    keys: Arc<StreamKeys>,
    how: SealKind,
    /// The frame's index in its input stream, for messages.
    index: u64,
}

enum SealKind {
    /// Encrypt a chunk body with this fresh nonce.
    ChunkEncrypt([u8; NONCE_LEN]),
    /// Encrypt a frame at this position with this chain digest.
    FrameEncrypt(u64, [u8; 32]),
    /// Decrypt a chunk body.
    ChunkDecrypt,
    /// Decrypt a frame at this position with this chain digest.
    FrameDecrypt(u64, [u8; 32]),
}

/// The ID a ChunkRef frame carries.
fn chunk_ref_id(frame: &Frame, index: u64) -> Result<&[u8]> {
    if frame.payload.len() != CHUNK_ID_LEN || frame.encodings.0 != 0 {
        return Err(Error::integrity(format!("frame {index} (ChunkRef) is malformed")));
    }
    Ok(&frame.payload)
}

fn auth_failure(index: u64, kind: Kind) -> Error {
    Error::integrity(format!(
        "frame {index} ({}): authentication failed (wrong key, or the stream was altered: damaged, or frames dropped, reordered or spliced in)",
        kind.name()
    ))
}

impl Job for Seal {
    fn run(self) -> Result<Frame> {
        let Seal { mut frame, keys, how, index } = self;
        let kind = frame.kind;
        match how {
            SealKind::ChunkEncrypt(nonce) => {
                let inner = frame.encodings;
                let (id, body) = frame.payload.split_at(CHUNK_ID_LEN);
                let mut sealed = Vec::with_capacity(frame.payload.len() + NONCE_LEN + TAG_LEN);
                sealed.extend_from_slice(id);
                sealed.extend_from_slice(&nonce);
                sealed.extend_from_slice(body);
                let aad = chunk_aad(inner, id);
                let tag = keys
                    .chunk
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut sealed[CHUNK_ID_LEN + NONCE_LEN..])
                    .map_err(|_| Error::other("encryption failed"))?;
                sealed.extend_from_slice(&tag);
                frame.payload = sealed;
                frame.encodings = inner.with(Encodings::ENCRYPTED);
            }
            SealKind::FrameEncrypt(position, chain) => {
                let inner = frame.encodings;
                let aad = frame_aad(kind, inner, position, &chain);
                let tag = keys
                    .stream
                    .encrypt_in_place_detached(Nonce::from_slice(&position_nonce(position)), &aad, &mut frame.payload)
                    .map_err(|_| Error::other("encryption failed"))?;
                frame.payload.extend_from_slice(&tag);
                frame.encodings = inner.with(Encodings::ENCRYPTED);
            }
            SealKind::ChunkDecrypt => {
                let inner = frame.encodings.without(Encodings::ENCRYPTED);
                if frame.payload.len() < CHUNK_ID_LEN + NONCE_LEN + TAG_LEN {
                    return Err(auth_failure(index, kind));
                }
                let tag_at = frame.payload.len() - TAG_LEN;
                let tag = Tag::clone_from_slice(&frame.payload[tag_at..]);
                let (head, body) = frame.payload[..tag_at].split_at_mut(CHUNK_ID_LEN + NONCE_LEN);
                let (id, nonce) = head.split_at(CHUNK_ID_LEN);
                keys.chunk
                    .decrypt_in_place_detached(Nonce::from_slice(nonce), &chunk_aad(inner, id), body, &tag)
                    .map_err(|_| auth_failure(index, kind))?;
                frame.payload.truncate(tag_at);
                frame.payload.drain(CHUNK_ID_LEN..CHUNK_ID_LEN + NONCE_LEN);
                frame.encodings = inner;
            }
            SealKind::FrameDecrypt(position, chain) => {
                let inner = frame.encodings.without(Encodings::ENCRYPTED);
                if frame.payload.len() < TAG_LEN {
                    return Err(auth_failure(index, kind));
                }
                let tag_at = frame.payload.len() - TAG_LEN;
                let tag = Tag::clone_from_slice(&frame.payload[tag_at..]);
                frame.payload.truncate(tag_at);
                keys.stream
                    .decrypt_in_place_detached(
                        Nonce::from_slice(&position_nonce(position)),
                        &frame_aad(kind, inner, position, &chain),
                        &mut frame.payload,
                        &tag,
                    )
                    .map_err(|_| auth_failure(index, kind))?;
                frame.encodings = inner;
            }
        }
        Ok(frame)
    }
}

/// Opens stored chunks with a master key's chunk key, outside any stream
/// (for `repo check --read-data`).
pub struct ChunkOpener {
    keys: Arc<StreamKeys>,
}

impl ChunkOpener {
    /// An opener for chunks encrypted under `master`.
    pub fn new(master: &MasterKey) -> ChunkOpener {
        ChunkOpener { keys: Arc::new(StreamKeys::derive(master, &[0; 32]).0) }
    }

    /// Decrypts one encrypted chunk Data frame, checking it against its ID.
    pub fn open(&self, frame: Frame) -> Result<Frame> {
        Seal { frame, keys: self.keys.clone(), how: SealKind::ChunkDecrypt, index: 0 }.run()
    }

    /// Checks an encrypted chunk Data frame authenticates, without keeping the plaintext.
    pub fn check(&self, frame: &Frame) -> Result<()> {
        if !frame.encodings.has(Encodings::ENCRYPTED) {
            return Err(Error::integrity("chunk is not encrypted"));
        }
        self.open(frame.clone()).map(|_| ())
    }
}

/// The sequential half of `encrypt`.
pub struct Encryptor {
    secret: Secret,
    /// Index of the next frame in the current input stream, for messages.
    index: u64,
    /// For a passphrase: the stretched key and its parameters, made once per run.
    stretched: Option<(MasterKey, Argon2Params)>,
    state: StreamState,
}

impl Encryptor {
    /// An encryptor for a key or passphrase.
    pub fn new(secret: Secret) -> Encryptor {
        Encryptor { secret, index: 0, stretched: None, state: StreamState::default() }
    }

    /// Sets up a new stream: fresh salt and keys, and the Cipher frame announcing them.
    fn start_stream(&mut self) -> Result<Frame> {
        let (master, argon2) = match &self.secret {
            Secret::Key(key) => (key, None),
            Secret::Passphrase(passphrase) => {
                if self.stretched.is_none() {
                    let params = Argon2Params::fresh();
                    self.stretched = Some((MasterKey::from_passphrase(passphrase, &params)?, params));
                }
                let (key, params) = self.stretched.as_ref().unwrap();
                (key, Some(params.clone()))
            }
        };
        let mut salt = [0u8; 32];
        crate::random::fill(&mut salt);
        let (keys, check) = StreamKeys::derive(master, &salt);
        self.state = StreamState { keys: Some(Arc::new(keys)), ..StreamState::default() };
        let params = CipherParams { scheme: SCHEME.to_string(), salt: hex::encode(salt), check, argon2 };
        Ok(Frame::json(Kind::Cipher, &params))
    }
}

impl Planner for Encryptor {
    type Job = Seal;

    fn plan(&mut self, item: Item, out: &mut Vec<Step<Seal>>) -> Result<()> {
        if let Item::Start(id) = item {
            out.push(Step::Ready(Output::Start(id)));
            let cipher = self.start_stream()?;
            self.index = 0;
            out.push(Step::Ready(Output::Frame(cipher)));
            return Ok(());
        }
        let Some(frame) = split_item(item, out) else {
            return Ok(());
        };
        let index = self.index;
        self.index += 1;
        if frame.kind == Kind::Cipher || frame.encodings.has(Encodings::ENCRYPTED) {
            return Err(Error::other("the stream is already encrypted"));
        }
        if frame.kind == Kind::ChunkRef {
            // A reference carries only a keyed chunk ID, which stays in the clear like the IDs of chunks.
            self.state.chain.add(chunk_ref_id(&frame, index)?);
            out.push(Step::Ready(Output::Frame(frame)));
            return Ok(());
        }
        let keys = self.state.keys.clone().expect("a stream starts before its frames");
        let how = if frame.kind == Kind::Data && frame.encodings.has(Encodings::CHUNKED) {
            let (id, _) = frame.chunk_parts()?;
            self.state.chain.add(id);
            let mut nonce = [0u8; NONCE_LEN];
            crate::random::fill(&mut nonce);
            SealKind::ChunkEncrypt(nonce)
        } else {
            self.state.position += 1;
            SealKind::FrameEncrypt(self.state.position, self.state.chain.take())
        };
        out.push(Step::Work(Seal { frame, keys, how, index }));
        Ok(())
    }
}

/// The sequential half of `encrypt -d`.
pub struct Decryptor {
    secret: Secret,
    /// Passphrase-derived keys by Argon2 parameters, so concatenated streams stretch once.
    stretched: HashMap<Argon2Params, MasterKey>,
    state: StreamState,
    /// Index of the next frame in the current stream, for messages.
    index: u64,
    /// Accept ChunkRef frames (only a repository's own skeletons hold them).
    skeletons: bool,
}

impl Decryptor {
    /// A decryptor for a key or passphrase. It refuses ChunkRef frames: a
    /// stream for people to use has its chunks in place (`fetch` puts them back).
    pub fn new(secret: Secret) -> Decryptor {
        Decryptor { secret, stretched: HashMap::new(), state: StreamState::default(), index: 0, skeletons: false }
    }

    /// A decryptor that authenticates a repository skeleton, where ChunkRef
    /// frames stand for stored chunks (for `ship` and `repo check`).
    pub fn for_skeletons(secret: Secret) -> Decryptor {
        Decryptor { skeletons: true, ..Self::new(secret) }
    }

    fn open_stream(&mut self, frame: &Frame) -> Result<()> {
        let params: CipherParams = frame.parse_json()?;
        if params.scheme != SCHEME {
            return Err(Error::other(format!("unsupported encryption scheme '{}'", params.scheme)));
        }
        let salt = hex::decode(&params.salt)
            .ok()
            .filter(|salt| salt.len() == 32)
            .ok_or_else(|| Error::integrity("the Cipher frame is damaged (its salt is not 32 bytes of hex)"))?;
        let master = match (&self.secret, &params.argon2) {
            (Secret::Key(key), None) => key,
            (Secret::Passphrase(passphrase), Some(argon2)) => {
                argon2.check_plausible()?;
                if !self.stretched.contains_key(argon2) {
                    let key = MasterKey::from_passphrase(passphrase, argon2)?;
                    self.stretched.insert(argon2.clone(), key);
                }
                &self.stretched[argon2]
            }
            (Secret::Key(_), Some(_)) => {
                return Err(Error::usage("this stream was encrypted with a passphrase, not a key file"))
            }
            (Secret::Passphrase(_), None) => {
                return Err(Error::usage("this stream was encrypted with a key file, not a passphrase"))
            }
        };
        let (keys, check) = StreamKeys::derive(master, &salt);
        if check != params.check {
            return Err(Error::integrity(
                "wrong key or passphrase: it does not match the one this stream was encrypted with",
            ));
        }
        self.state = StreamState { keys: Some(Arc::new(keys)), ..StreamState::default() };
        Ok(())
    }
}

impl Planner for Decryptor {
    type Job = Seal;

    fn plan(&mut self, item: Item, out: &mut Vec<Step<Seal>>) -> Result<()> {
        if let Item::Start(_) = item {
            self.state = StreamState::default();
            self.index = 0;
        }
        let Some(frame) = split_item(item, out) else {
            return Ok(());
        };
        let index = self.index;
        self.index += 1;
        if frame.kind == Kind::Cipher {
            return self.open_stream(&frame);
        }
        let encrypted = frame.encodings.has(Encodings::ENCRYPTED);
        if frame.kind == Kind::Abort && !encrypted {
            // Written in the clear by a stage after encryption; pass it on.
            out.push(Step::Ready(Output::Frame(frame)));
            return Ok(());
        }
        if frame.kind == Kind::ChunkRef {
            if !self.skeletons {
                return Err(Error::integrity(format!(
                    "frame {index} is a reference to a chunk stored in a repository, not the chunk; decrypt what `fetch` writes"
                )));
            }
            self.state.chain.add(chunk_ref_id(&frame, index)?);
            out.push(Step::Ready(Output::Frame(frame)));
            return Ok(());
        }
        let Some(keys) = self.state.keys.clone() else {
            return Err(Error::integrity(if encrypted {
                format!("frame {index} ({}) is encrypted but the stream has no Cipher frame", frame.kind.name())
            } else {
                "the stream is not encrypted (no Cipher frame); there is nothing to decrypt".to_string()
            }));
        };
        if !encrypted {
            return Err(Error::integrity(format!(
                "frame {index} ({}) is not encrypted inside an encrypted stream (inserted?)",
                frame.kind.name()
            )));
        }
        let how = if frame.kind == Kind::Data && frame.encodings.has(Encodings::CHUNKED) {
            let (id, rest) = frame.chunk_parts()?;
            if rest.len() < NONCE_LEN + TAG_LEN {
                return Err(auth_failure(index, frame.kind));
            }
            self.state.chain.add(id);
            SealKind::ChunkDecrypt
        } else {
            self.state.position += 1;
            SealKind::FrameDecrypt(self.state.position, self.state.chain.take())
        };
        out.push(Step::Work(Seal { frame, keys, how, index }));
        Ok(())
    }
}
