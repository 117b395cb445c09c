//! The keys of encrypted streams: the Cipher frame's parameters, what opens
//! a stream's secret (a master key, or the write key for the copy a stream
//! carries in transit to `ship`), the working keys derived from it, and a
//! cache of opened secrets for streams whose chunks come from many others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::envelope;
use crate::error::{Error, Result};
use crate::keys::{Argon2Params, MasterKey, WriteKey};

/// The scheme name recorded in Cipher frames.
pub(crate) const SCHEME: &str = "x25519-aes-256-gcm/v1";
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;
/// A stream secret sealed to a public key.
pub(crate) const ENVELOPE_LEN: usize = 32 + envelope::OVERHEAD;
/// Associated data of a sealed stream secret.
pub(crate) const ENVELOPE_AAD: &[u8] = b"backpipe/v1/stream-secret";

/// Payload of a Cipher frame (JSON): what a holder of the key needs to decrypt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CipherParams {
    /// The encryption scheme, "x25519-aes-256-gcm/v1".
    pub scheme: String,
    /// ID of the public key the stream is sealed to (hex, 8 bytes): tells a wrong key from damage.
    pub recipient: String,
    /// The stream secret sealed to that public key (hex, 80 bytes).
    pub envelope: String,
    /// In transit only: the stream secret sealed under the write key (hex), for `ship`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit: Option<String>,
    /// Present when the key comes from a passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argon2: Option<Argon2Params>,
}

impl CipherParams {
    /// The same parameters without the transit copy: what `ship` stores.
    pub fn without_transit(&self) -> CipherParams {
        CipherParams { transit: None, ..self.clone() }
    }
}

/// The ID of a public key, as Cipher frames record it.
pub(crate) fn key_id(public: &PublicKey) -> String {
    hex::encode(&blake3::hash(public.as_bytes()).as_bytes()[..8])
}

/// The working keys of one stream, from its stream secret.
pub(crate) struct StreamKeys {
    /// Seals chunk bodies.
    pub(crate) chunk: Aes256Gcm,
    /// Seals every other frame.
    pub(crate) stream: Aes256Gcm,
    /// The stream secret sealed to the public key, put in front of every chunk.
    pub(crate) envelope: [u8; ENVELOPE_LEN],
}

impl StreamKeys {
    pub(crate) fn from_secret(secret: &[u8], envelope: [u8; ENVELOPE_LEN]) -> StreamKeys {
        let key = |context: &str| Zeroizing::new(blake3::derive_key(context, secret));
        StreamKeys {
            chunk: Aes256Gcm::new_from_slice(&key("backpipe v1 chunk body key")[..]).expect("32-byte key"),
            stream: Aes256Gcm::new_from_slice(&key("backpipe v1 stream frame key")[..]).expect("32-byte key"),
            envelope,
        }
    }
}

/// The AES key that seals the transit copy of stream secrets.
pub(crate) fn transit_cipher(write: &WriteKey) -> Aes256Gcm {
    let material = Zeroizing::new([&write.chunk_id[..], &write.chunk_gear[..]].concat());
    let key = Zeroizing::new(blake3::derive_key("backpipe v1 transit key", &material));
    Aes256Gcm::new_from_slice(&key[..]).expect("32-byte key")
}

/// What opens stream secrets: the secret half of the public key streams are
/// sealed to (a master key), or the write key, which opens only the transit
/// copy a stream carries on its way to `ship`.
pub enum KeyRing {
    /// Opens any stream and any stored chunk sealed to this secret's public key.
    Recipient(StaticSecret),
    /// Opens a stream in transit, and its chunks, through the write key.
    Transit(Box<WriteKey>),
}

impl KeyRing {
    /// The ring of a master key.
    pub fn for_master(master: &MasterKey) -> KeyRing {
        KeyRing::Recipient(master.recipient_secret())
    }

    pub(crate) fn public(&self) -> PublicKey {
        match self {
            KeyRing::Recipient(secret) => PublicKey::from(secret),
            KeyRing::Transit(write) => write.recipient,
        }
    }

    /// The keys of the stream a Cipher frame announces.
    pub(crate) fn stream_keys(&self, params: &CipherParams) -> Result<StreamKeys> {
        if params.scheme != SCHEME {
            return Err(Error::other(format!("unsupported encryption scheme '{}'", params.scheme)));
        }
        if params.recipient != key_id(&self.public()) {
            return Err(Error::integrity(
                "wrong key or passphrase: this stream was encrypted for another key (or another repository)",
            ));
        }
        let damaged = |what: &str| Error::integrity(format!("the Cipher frame is damaged ({what})"));
        let envelope: [u8; ENVELOPE_LEN] = hex::decode(&params.envelope)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| damaged("its sealed stream secret is malformed"))?;
        let secret = match self {
            KeyRing::Recipient(secret) => envelope::open(secret, &envelope, ENVELOPE_AAD)
                .ok_or_else(|| damaged("its stream secret does not open"))?,
            KeyRing::Transit(write) => {
                let transit = params.transit.as_deref().ok_or_else(|| {
                    Error::usage("this stream was stored or fetched, not written by `encrypt --repo` just now; ship takes streams straight from encrypt")
                })?;
                let sealed = hex::decode(transit).ok().filter(|b| b.len() == NONCE_LEN + 32 + TAG_LEN);
                let sealed = sealed.ok_or_else(|| damaged("its transit copy is malformed"))?;
                let opened = transit_cipher(write)
                    .decrypt(
                        Nonce::from_slice(&sealed[..NONCE_LEN]),
                        Payload { msg: &sealed[NONCE_LEN..], aad: &envelope },
                    )
                    .map_err(|_| damaged("its transit copy does not open"))?;
                Zeroizing::new(opened)
            }
        };
        Ok(StreamKeys::from_secret(&secret, envelope))
    }
}

/// Stream keys by sealed stream secret: chunks from many streams appear in
/// one fetched stream, and opening a secret costs an X25519 operation.
pub(crate) struct KeyCache {
    pub(crate) ring: Arc<KeyRing>,
    opened: Mutex<HashMap<[u8; ENVELOPE_LEN], Arc<StreamKeys>>>,
}

/// How many opened stream secrets a cache keeps before it starts over.
const CACHE_LIMIT: usize = 4096;

impl KeyCache {
    pub(crate) fn new(ring: Arc<KeyRing>) -> KeyCache {
        KeyCache { ring, opened: Mutex::new(HashMap::new()) }
    }

    /// Remembers the keys of a stream opened through its Cipher frame.
    pub(crate) fn remember(&self, keys: &Arc<StreamKeys>) {
        let mut opened = self.opened.lock().expect("no panics while locked");
        if opened.len() >= CACHE_LIMIT {
            opened.clear();
        }
        opened.insert(keys.envelope, keys.clone());
    }

    /// The keys of the stream a chunk was sealed in, from the sealed secret in front of it.
    pub(crate) fn chunk_keys(&self, envelope: &[u8]) -> Option<Arc<StreamKeys>> {
        let envelope: [u8; ENVELOPE_LEN] = envelope.try_into().ok()?;
        if let Some(keys) = self.opened.lock().expect("no panics while locked").get(&envelope) {
            return Some(keys.clone());
        }
        // A write key opens only streams in transit, never stored chunks.
        let KeyRing::Recipient(secret) = &*self.ring else { return None };
        let stream_secret = envelope::open(secret, &envelope, ENVELOPE_AAD)?;
        let keys = Arc::new(StreamKeys::from_secret(&stream_secret, envelope));
        self.remember(&keys);
        Some(keys)
    }
}
