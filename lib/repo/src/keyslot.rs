//! Key slots: the repository's master key, or only its write half for a
//! write-only key, sealed under each key that may open the repository (a
//! passphrase stretched with Argon2id, or a key file).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::{Argon2Params, MasterKey, Secret, WriteKey};

/// One key slot, stored as JSON at `keys/<id>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySlot {
    /// "passphrase" or "key-file".
    pub kind: String,
    /// Stretching parameters, for a passphrase slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argon2: Option<Argon2Params>,
    /// "full" (the master key) or "write-only" (its write half); "full" when absent.
    #[serde(default = "full_access")]
    pub access: String,
    /// The sealed key, AES-256-GCM: nonce (12 bytes), ciphertext, tag; hex.
    pub sealed: String,
}

fn full_access() -> String {
    "full".to_string()
}

/// What a key slot holds.
pub enum Unlocked {
    /// The master key: every operation.
    Full(MasterKey),
    /// The write half: ship new backups, nothing else.
    WriteOnly(WriteKey),
}

/// Binds a slot to its repository and its access, so a write-only slot cannot pass for a full one.
fn aad(repo_id: &str, access: &str) -> Vec<u8> {
    [b"backpipe/v1/key-slot/".as_slice(), repo_id.as_bytes(), b"/", access.as_bytes()].concat()
}

/// The key that seals a slot: derived from the key file or the stretched passphrase.
fn slot_key(secret: &Secret, argon2: Option<&Argon2Params>) -> Result<Zeroizing<[u8; 32]>> {
    match (secret, argon2) {
        (Secret::Key(key), None) => Ok(key.derive(b"backpipe/v1/key-slot")),
        (Secret::Passphrase(passphrase), Some(params)) => {
            params.check_plausible()?;
            Ok(MasterKey::from_passphrase(passphrase, params)?.derive(b"backpipe/v1/key-slot"))
        }
        _ => Err(Error::other("this key slot is for the other kind of secret")),
    }
}

impl KeySlot {
    /// Seals `master` (or, with `write_only`, only its write half) under
    /// `secret` for the repository `repo_id`.
    pub fn seal(master: &MasterKey, write_only: bool, secret: &Secret, repo_id: &str) -> Result<KeySlot> {
        let (kind, argon2) = match secret {
            Secret::Key(_) => ("key-file", None),
            Secret::Passphrase(_) => ("passphrase", Some(Argon2Params::fresh())),
        };
        let key = slot_key(secret, argon2.as_ref())?;
        let cipher = Aes256Gcm::new_from_slice(&key[..]).expect("32-byte key");
        let mut nonce = [0u8; 12];
        crate::random::fill(&mut nonce);
        let write_half = master.write_key().to_bytes();
        let (access, key) = if write_only { ("write-only", &write_half[..]) } else { ("full", master.expose()) };
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: key, aad: &aad(repo_id, access) })
            .map_err(|_| Error::other("cannot seal the master key"))?;
        Ok(KeySlot {
            kind: kind.to_string(),
            argon2,
            access: access.to_string(),
            sealed: hex::encode([&nonce[..], &sealed].concat()),
        })
    }

    /// Opens the slot with `secret`: `Ok(None)` when the secret is not this slot's.
    pub fn open(&self, secret: &Secret, repo_id: &str) -> Result<Option<Unlocked>> {
        let matches_kind = matches!(
            (secret, self.kind.as_str()),
            (Secret::Key(_), "key-file") | (Secret::Passphrase(_), "passphrase")
        );
        if !matches_kind {
            return Ok(None);
        }
        let key = slot_key(secret, self.argon2.as_ref())?;
        let bytes = hex::decode(&self.sealed).map_err(|_| Error::integrity("a key slot is damaged (not hex)"))?;
        let key_len = match self.access.as_str() {
            "full" => 32,
            "write-only" => WriteKey::LEN,
            other => return Err(Error::other(format!("a key slot has an unknown access '{other}'"))),
        };
        if bytes.len() != 12 + key_len + 16 {
            return Err(Error::integrity("a key slot is damaged (wrong length)"));
        }
        let cipher = Aes256Gcm::new_from_slice(&key[..]).expect("32-byte key");
        let opened = cipher
            .decrypt(Nonce::from_slice(&bytes[..12]), Payload { msg: &bytes[12..], aad: &aad(repo_id, &self.access) });
        let Ok(plain) = opened.map(Zeroizing::new) else { return Ok(None) };
        Ok(Some(match key_len {
            32 => Unlocked::Full(MasterKey::from_bytes(&plain)?),
            _ => Unlocked::WriteOnly(WriteKey::from_bytes(&plain)?),
        }))
    }
}

/// The readable slots of a repository: `(object name, slot)`. A damaged slot
/// is noticed and skipped, so it cannot lock out the others.
pub fn list(storage: &dyn super::storage::Storage) -> Result<Vec<(String, KeySlot)>> {
    let mut slots = Vec::new();
    for name in storage.list("keys")? {
        let Some(bytes) = storage.read_if_exists(&name)? else { continue };
        match serde_json::from_slice::<KeySlot>(&bytes) {
            Ok(slot) => slots.push((name, slot)),
            Err(e) => crate::notice::notice(&format!("warning: key slot '{name}' is damaged and was skipped: {e}")),
        }
    }
    Ok(slots)
}
