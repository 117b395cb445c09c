//! Sealing to a public key: anyone with a repository's (or a key's) X25519
//! public key can seal; only the holder of the matching secret can open.
//!
//! A sealed message is `ephemeral public key (32) || AES-256-GCM ciphertext || tag (16)`.
//! The AES key is BLAKE3 in key-derivation mode, context [`CONTEXT`], over
//! `ephemeral public || recipient public || X25519 shared secret`; every key
//! is used for one message, so the nonce is all zeros.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// BLAKE3 key-derivation context for envelope keys.
const CONTEXT: &str = "backpipe v1 envelope key";

/// Bytes a sealed message adds to its plaintext.
pub const OVERHEAD: usize = 32 + 16;

fn message_key(ephemeral: &PublicKey, recipient: &PublicKey, shared: &[u8; 32]) -> Aes256Gcm {
    let mut material = Zeroizing::new([0u8; 96]);
    material[..32].copy_from_slice(ephemeral.as_bytes());
    material[32..64].copy_from_slice(recipient.as_bytes());
    material[64..].copy_from_slice(shared);
    let key = Zeroizing::new(blake3::derive_key(CONTEXT, &material[..]));
    Aes256Gcm::new_from_slice(&key[..]).expect("32-byte key")
}

/// Seals `message` (bound to `aad`) so that only `recipient`'s secret opens it.
pub fn seal(recipient: &PublicKey, message: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut seed = Zeroizing::new([0u8; 32]);
    crate::random::fill(&mut seed[..]);
    let ephemeral = StaticSecret::from(*seed);
    let ephemeral_public = PublicKey::from(&ephemeral);
    let shared = ephemeral.diffie_hellman(recipient);
    let sealed = message_key(&ephemeral_public, recipient, shared.as_bytes())
        .encrypt(Nonce::from_slice(&[0; 12]), Payload { msg: message, aad })
        .expect("AES-GCM sealing does not fail");
    [ephemeral_public.as_bytes().as_slice(), &sealed].concat()
}

/// Opens what [`seal`] made for `secret`'s public key; `None` when it was
/// sealed to another key, bound to other data, or altered.
pub fn open(secret: &StaticSecret, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < OVERHEAD {
        return None;
    }
    let ephemeral = PublicKey::from(<[u8; 32]>::try_from(&sealed[..32]).ok()?);
    let shared = secret.diffie_hellman(&ephemeral);
    if !shared.was_contributory() {
        return None;
    }
    message_key(&ephemeral, &PublicKey::from(secret), shared.as_bytes())
        .decrypt(Nonce::from_slice(&[0; 12]), Payload { msg: &sealed[32..], aad })
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens_and_only_unaltered() {
        let secret = StaticSecret::from([7u8; 32]);
        let sealed = seal(&PublicKey::from(&secret), b"stream key", b"context");
        assert_eq!(sealed.len(), 10 + OVERHEAD);
        assert_eq!(open(&secret, &sealed, b"context").unwrap().as_slice(), b"stream key");
        assert!(open(&StaticSecret::from([8u8; 32]), &sealed, b"context").is_none());
        assert!(open(&secret, &sealed, b"other").is_none());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&secret, &bad, b"context").is_none(), "byte {i}");
        }
    }
}
