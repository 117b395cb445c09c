//! `encrypt`: AES-256-GCM over every frame's payload (metadata included), and
//! `encrypt -d`.
//!
//! Each stream gets a fresh random stream secret, announced in its Cipher
//! frame sealed to the key's X25519 public key (see [`crate::envelope`]), so
//! only a holder of the master key (or passphrase) can open it, while a
//! write-only key can still encrypt. In transit the Cipher frame also carries
//! the secret sealed under the write key, for `ship` to authenticate what it
//! stores; `ship` removes that copy. Chunk bodies are sealed under a key from
//! the stream secret with a random nonce and the chunk ID as associated data,
//! and carry the sealed stream secret in front, so a stored chunk stays
//! decryptable on its own when another stream refers to it. ChunkRef frames
//! (a chunk ID alone) stay in the clear. Every other frame is sealed under a
//! second key from the stream secret with its position as nonce and, as
//! associated data, its kind, its inner encodings, its position, and a hash of
//! the chunk IDs (of Data frames and ChunkRefs) since the previous such frame.
//! A dropped, reordered, replayed or foreign frame therefore fails
//! authentication at the latest at the next metadata frame; EntryEnd follows
//! every entry and End closes every stream.

use std::collections::HashMap;
use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadInPlace, Payload};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use x25519_dalek::PublicKey;
use zeroize::Zeroizing;

use crate::envelope;
use crate::error::{Error, Result};
use crate::filter::{split_item, Job, Output, Planner, Step};
use crate::format::{Encodings, Frame, Kind, CHUNK_ID_LEN};
use crate::keys::{Argon2Params, MasterKey, Secret, WriteKey};
use crate::reader::Item;
use crate::stream_keys::{
    key_id, transit_cipher, KeyCache, StreamKeys, ENVELOPE_AAD, ENVELOPE_LEN, NONCE_LEN, SCHEME, TAG_LEN,
};
pub use crate::stream_keys::{CipherParams, KeyRing};

/// Bytes an encrypted chunk adds in front of its body: ID, sealed stream secret, nonce.
const CHUNK_HEAD: usize = CHUNK_ID_LEN + ENVELOPE_LEN + NONCE_LEN;

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
fn chunk_ref_id(frame: &Frame, index: u64) -> Result<[u8; CHUNK_ID_LEN]> {
    frame.chunk_ref_id().map_err(|e| e.context(format!("frame {index}")))
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
                let mut sealed = Vec::with_capacity(frame.payload.len() + CHUNK_HEAD - CHUNK_ID_LEN + TAG_LEN);
                sealed.extend_from_slice(id);
                sealed.extend_from_slice(&keys.envelope);
                sealed.extend_from_slice(&nonce);
                sealed.extend_from_slice(body);
                let aad = chunk_aad(inner, id);
                let tag = keys
                    .chunk
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut sealed[CHUNK_HEAD..])
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
                if frame.payload.len() < CHUNK_HEAD + TAG_LEN {
                    return Err(auth_failure(index, kind));
                }
                let tag_at = frame.payload.len() - TAG_LEN;
                let tag = Tag::clone_from_slice(&frame.payload[tag_at..]);
                let (head, body) = frame.payload[..tag_at].split_at_mut(CHUNK_HEAD);
                let (id, nonce) = (&head[..CHUNK_ID_LEN], &head[CHUNK_HEAD - NONCE_LEN..]);
                keys.chunk
                    .decrypt_in_place_detached(Nonce::from_slice(nonce), &chunk_aad(inner, id), body, &tag)
                    .map_err(|_| auth_failure(index, kind))?;
                frame.payload.truncate(tag_at);
                frame.payload.drain(CHUNK_ID_LEN..CHUNK_HEAD);
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

/// The sealed stream secret in front of an encrypted chunk's body.
fn chunk_envelope(frame: &Frame) -> Option<&[u8]> {
    frame.payload.get(CHUNK_ID_LEN..CHUNK_ID_LEN + ENVELOPE_LEN)
}

/// Opens encrypted chunks outside any stream: stored chunks for `repo
/// check --read-data`, and new chunks of a stream in transit for `ship`.
pub struct ChunkOpener {
    cache: Arc<KeyCache>,
}

impl ChunkOpener {
    /// An opener for any chunk sealed to `master`'s public key.
    pub fn new(master: &MasterKey) -> ChunkOpener {
        ChunkOpener { cache: Arc::new(KeyCache::new(Arc::new(KeyRing::for_master(master)))) }
    }

    /// Decrypts one encrypted chunk Data frame, authenticating it with its ID
    /// (the ID is associated data; re-hashing the content to it is the caller's part).
    pub fn open(&self, frame: Frame) -> Result<Frame> {
        let kind = frame.kind;
        let keys =
            chunk_envelope(&frame).and_then(|e| self.cache.chunk_keys(e)).ok_or_else(|| auth_failure(0, kind))?;
        Seal { frame, keys, how: SealKind::ChunkDecrypt, index: 0 }.run()
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
    recipient: PublicKey,
    transit: Aes256Gcm,
    /// For a passphrase: the stretching parameters, recorded in every Cipher frame.
    argon2: Option<Argon2Params>,
    /// Index of the next frame in the current input stream, for messages.
    index: u64,
    state: StreamState,
}

impl Encryptor {
    /// An encryptor for a key file's key or a passphrase (stretched once, here).
    pub fn new(secret: Secret) -> Result<Encryptor> {
        match secret {
            Secret::Key(master) => Ok(Self::for_write_key(&master.write_key())),
            Secret::Passphrase(passphrase) => {
                let params = Argon2Params::fresh();
                let master = MasterKey::from_passphrase(&passphrase, &params)?;
                Ok(Encryptor { argon2: Some(params), ..Self::for_write_key(&master.write_key()) })
            }
        }
    }

    /// An encryptor that needs only the write half of a key (a repository's write-only key will do).
    pub fn for_write_key(write: &WriteKey) -> Encryptor {
        Encryptor {
            recipient: write.recipient,
            transit: transit_cipher(write),
            argon2: None,
            index: 0,
            state: StreamState::default(),
        }
    }

    /// Sets up a new stream: a fresh stream secret, sealed to the public key
    /// and (for `ship`) under the write key, announced in a Cipher frame.
    fn start_stream(&mut self) -> Frame {
        let mut secret = Zeroizing::new([0u8; 32]);
        crate::random::fill(&mut secret[..]);
        let envelope: [u8; ENVELOPE_LEN] =
            envelope::seal(&self.recipient, &secret[..], ENVELOPE_AAD).try_into().expect("a sealed 32-byte secret");
        let mut nonce = [0u8; NONCE_LEN];
        crate::random::fill(&mut nonce);
        let transit = self
            .transit
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &secret[..], aad: &envelope })
            .expect("AES-GCM sealing does not fail");
        self.state = StreamState {
            keys: Some(Arc::new(StreamKeys::from_secret(&secret[..], envelope))),
            ..StreamState::default()
        };
        let params = CipherParams {
            scheme: SCHEME.to_string(),
            recipient: key_id(&self.recipient),
            envelope: hex::encode(envelope),
            transit: Some(hex::encode([&nonce[..], &transit].concat())),
            argon2: self.argon2.clone(),
        };
        Frame::json(Kind::Cipher, &params)
    }
}

impl Planner for Encryptor {
    type Job = Seal;

    fn plan(&mut self, item: Item, out: &mut Vec<Step<Seal>>) -> Result<()> {
        if let Item::Start(id) = item {
            out.push(Step::Ready(Output::Start(id)));
            let cipher = self.start_stream();
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
            self.state.chain.add(&chunk_ref_id(&frame, index)?);
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

/// Where `encrypt -d` gets its keys.
enum KeySource {
    /// A key: one ring for every stream.
    Ring(Arc<KeyCache>),
    /// A passphrase, stretched once per set of Argon2 parameters.
    Passphrase(Zeroizing<Vec<u8>>, HashMap<Argon2Params, Arc<KeyCache>>),
}

/// The sequential half of `encrypt -d`.
pub struct Decryptor {
    source: KeySource,
    /// The keys of the current stream's key, for chunks sealed in other streams.
    current: Option<Arc<KeyCache>>,
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
        let source = match secret {
            Secret::Key(master) => KeySource::Ring(Arc::new(KeyCache::new(Arc::new(KeyRing::for_master(&master))))),
            Secret::Passphrase(passphrase) => KeySource::Passphrase(passphrase, HashMap::new()),
        };
        Decryptor { source, current: None, state: StreamState::default(), index: 0, skeletons: false }
    }

    /// A decryptor that authenticates a repository skeleton, where ChunkRef
    /// frames stand for stored chunks (for `repo check` and `inspect`).
    pub fn for_skeletons(secret: Secret) -> Decryptor {
        Decryptor { skeletons: true, ..Self::new(secret) }
    }

    /// For `ship`: a decryptor that opens streams in transit with the write
    /// key (ChunkRefs allowed), and an opener for their new chunks.
    pub fn in_transit(write: WriteKey) -> (Decryptor, ChunkOpener) {
        let cache = Arc::new(KeyCache::new(Arc::new(KeyRing::Transit(Box::new(write)))));
        let opener = ChunkOpener { cache: cache.clone() };
        let decryptor = Decryptor {
            source: KeySource::Ring(cache),
            current: None,
            state: StreamState::default(),
            index: 0,
            skeletons: true,
        };
        (decryptor, opener)
    }

    fn open_stream(&mut self, frame: &Frame) -> Result<()> {
        let params: CipherParams = frame.parse_json()?;
        let cache = match (&mut self.source, &params.argon2) {
            (KeySource::Ring(cache), None) => cache.clone(),
            (KeySource::Passphrase(passphrase, stretched), Some(argon2)) => {
                argon2.check_plausible()?;
                if !stretched.contains_key(argon2) {
                    let master = MasterKey::from_passphrase(passphrase, argon2)?;
                    stretched.insert(argon2.clone(), Arc::new(KeyCache::new(Arc::new(KeyRing::for_master(&master)))));
                }
                stretched[argon2].clone()
            }
            (KeySource::Ring(_), Some(_)) => {
                return Err(Error::usage("this stream was encrypted with a passphrase, not a key file"))
            }
            (KeySource::Passphrase(..), None) => {
                return Err(Error::usage("this stream was encrypted with a key file, not a passphrase"))
            }
        };
        let keys = Arc::new(cache.ring.stream_keys(&params)?);
        cache.remember(&keys);
        self.state = StreamState { keys: Some(keys), ..StreamState::default() };
        self.current = Some(cache);
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
            self.state.chain.add(&chunk_ref_id(&frame, index)?);
            out.push(Step::Ready(Output::Frame(frame)));
            return Ok(());
        }
        let Some(stream_keys) = self.state.keys.clone() else {
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
        let (how, keys) = if frame.kind == Kind::Data && frame.encodings.has(Encodings::CHUNKED) {
            let (id, rest) = frame.chunk_parts()?;
            if rest.len() < CHUNK_HEAD - CHUNK_ID_LEN + TAG_LEN {
                return Err(auth_failure(index, frame.kind));
            }
            self.state.chain.add(id);
            // A chunk stored from another stream carries that stream's sealed secret.
            let envelope = chunk_envelope(&frame).expect("length checked");
            let keys = if envelope == stream_keys.envelope {
                stream_keys
            } else {
                let cache = self.current.as_ref().expect("a stream with keys has a key cache");
                cache.chunk_keys(envelope).ok_or_else(|| auth_failure(index, frame.kind))?
            };
            (SealKind::ChunkDecrypt, keys)
        } else {
            self.state.position += 1;
            (SealKind::FrameDecrypt(self.state.position, self.state.chain.take()), stream_keys)
        };
        out.push(Step::Work(Seal { frame, keys, how, index }));
        Ok(())
    }
}
