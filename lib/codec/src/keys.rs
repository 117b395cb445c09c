//! Keys: key files, passphrases stretched with Argon2id, and the subkeys
//! derived from a master key with HKDF-SHA-256.
//!
//! Secrets come from files, file descriptors or environment variables, never
//! from the command line, where any user could read them in the process list.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// First line of a key file.
const KEY_FILE_HEADER: &str = "backpipe key v1";

/// A 256-bit master key; every working key is derived from it.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> MasterKey {
        let mut key = Zeroizing::new([0u8; 32]);
        crate::random::fill(&mut key[..]);
        MasterKey(key)
    }

    /// A key from 32 raw bytes (as unsealed from a repository key slot).
    pub fn from_bytes(bytes: &[u8]) -> Result<MasterKey> {
        let key: [u8; 32] = bytes.try_into().map_err(|_| Error::integrity("a master key must be 32 bytes"))?;
        Ok(MasterKey(Zeroizing::new(key)))
    }

    /// A second copy of this key (for a tool that needs to hand one over).
    pub fn duplicate(&self) -> MasterKey {
        MasterKey(self.0.clone())
    }

    /// The raw key bytes, for sealing into a repository key slot.
    pub fn expose(&self) -> &[u8] {
        &self.0[..]
    }

    /// The subkey for `label` (HKDF-SHA-256 expand, no salt).
    pub fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0[..]);
        let mut out = Zeroizing::new([0u8; 32]);
        hkdf.expand(label, &mut out[..]).expect("32 bytes is a valid HKDF length");
        out
    }

    /// The X25519 secret that opens what is sealed to this key's public key
    /// (stream keys, snapshot summaries).
    pub fn recipient_secret(&self) -> x25519_dalek::StaticSecret {
        x25519_dalek::StaticSecret::from(*self.derive(b"backpipe/v1/recipient"))
    }

    /// What a writer needs and nothing more: see [`WriteKey`].
    pub fn write_key(&self) -> WriteKey {
        WriteKey {
            chunk_id: self.derive(b"backpipe/v1/chunk-id"),
            chunk_gear: self.derive(b"backpipe/v1/chunk-gear"),
            recipient: x25519_dalek::PublicKey::from(&self.recipient_secret()),
        }
    }

    /// Stretches a passphrase into a master key with Argon2id.
    pub fn from_passphrase(passphrase: &[u8], params: &Argon2Params) -> Result<MasterKey> {
        let salt = hex::decode(&params.salt).map_err(|_| Error::integrity("Argon2 salt is not hex"))?;
        let argon = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(params.m_kib, params.t, params.p, Some(32))
                .map_err(|e| Error::integrity(format!("invalid Argon2 parameters: {e}")))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, &salt, &mut key[..])
            .map_err(|e| Error::other(format!("Argon2 failed: {e}")))?;
        Ok(MasterKey(key))
    }

    /// Writes a new key file at `path`, readable by its owner only; refuses to
    /// overwrite an existing file.
    pub fn write_new_file(&self, path: &Path) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("cannot create key file '{}'", path.display()), e))?;
        let text = Zeroizing::new(format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(&self.0[..])));
        let written = file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).and_then(|()| {
            // The key must survive a crash as surely as the backups made with it.
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            std::fs::File::open(parent)?.sync_all()
        });
        written.map_err(|e| {
            let _ = std::fs::remove_file(path);
            Error::io(format!("cannot write key file '{}'", path.display()), e)
        })
    }

    /// Reads a key file written by [`write_new_file`](Self::write_new_file).
    /// Like ssh with a private key, refuses one that other users may read or
    /// write (any group or other permission bit): a usage error naming the fix.
    pub fn read_file(path: &Path) -> Result<MasterKey> {
        let cannot = |e| usage_io(format!("cannot read key file '{}'", path.display()), e);
        let mut file = std::fs::File::open(path).map_err(cannot)?;
        // The mode of what was opened, not of what the name points to a moment later.
        let mode = std::os::unix::fs::MetadataExt::mode(&file.metadata().map_err(cannot)?);
        refuse_exposed(path, mode)?;
        let mut text = Zeroizing::new(String::with_capacity(256));
        file.read_to_string(&mut text).map_err(cannot)?;
        let mut lines = text.lines();
        let bad = || Error::usage(format!("'{}' is not a backpipe key file (make one with keygen)", path.display()));
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(bad());
        }
        let bytes = Zeroizing::new(hex::decode(lines.next().unwrap_or("").trim()).map_err(|_| bad())?);
        let key: [u8; 32] = bytes[..].try_into().map_err(|_| bad())?;
        Ok(MasterKey(Zeroizing::new(key)))
    }
}

/// Refuses a key file whose `mode` lets users other than its owner read or
/// change it: they could learn the key, or swap in one of their own.
fn refuse_exposed(path: &Path, mode: u32) -> Result<()> {
    if mode & 0o077 == 0 {
        return Ok(());
    }
    let shown = path.display();
    Err(Error::usage(format!(
        "key file '{shown}' is accessible by other users (mode {:04o}); it must be readable by its owner only: \
         chmod 600 '{shown}'",
        mode & 0o7777
    )))
}

/// An I/O failure while reading a secret: the operator gave an unusable key (exit status 2).
fn usage_io(context: String, err: std::io::Error) -> Error {
    let cause = Error::io(context, err);
    Error::usage(cause.message())
}

/// Argon2id parameters, stored with what they protect so decryption can redo them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
    /// Salt, hex.
    pub salt: String,
}

impl Argon2Params {
    /// Fresh parameters for new data: 64 MiB, 3 passes, 1 lane, random 16-byte salt.
    pub fn fresh() -> Argon2Params {
        let mut salt = [0u8; 16];
        crate::random::fill(&mut salt);
        Argon2Params { m_kib: 64 * 1024, t: 3, p: 1, salt: hex::encode(salt) }
    }

    /// Refuses parameters from a stream that would take unreasonable memory or time.
    pub fn check_plausible(&self) -> Result<()> {
        if self.m_kib > 4 * 1024 * 1024 || self.t > 64 || self.p > 64 {
            return Err(Error::integrity(format!(
                "implausible Argon2 parameters in the stream (m={} KiB, t={}, p={})",
                self.m_kib, self.t, self.p
            )));
        }
        Ok(())
    }
}

/// The write half of a master key: the chunking and chunk-ID keys, so equal
/// data gives equal chunks and deduplicates, and the public key that new
/// streams are sealed to. It cannot open anything: a repository hands it to
/// a write-only key slot.
pub struct WriteKey {
    /// Keys chunk IDs (keyed BLAKE3).
    pub chunk_id: Zeroizing<[u8; 32]>,
    /// Seeds the content-defined chunker's gear table.
    pub chunk_gear: Zeroizing<[u8; 32]>,
    /// The public key new stream keys and snapshot summaries are sealed to.
    pub recipient: x25519_dalek::PublicKey,
}

impl WriteKey {
    /// Length of [`WriteKey::to_bytes`].
    pub const LEN: usize = 96;

    /// A second copy of this key.
    pub fn duplicate(&self) -> WriteKey {
        WriteKey { chunk_id: self.chunk_id.clone(), chunk_gear: self.chunk_gear.clone(), recipient: self.recipient }
    }

    /// `chunk_id || chunk_gear || recipient`, for sealing into a key slot.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new([&self.chunk_id[..], &self.chunk_gear[..], self.recipient.as_bytes()].concat())
    }

    /// The inverse of [`WriteKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<WriteKey> {
        if bytes.len() != Self::LEN {
            return Err(Error::integrity("a write key must be 96 bytes"));
        }
        let part = |i: usize| Zeroizing::new(<[u8; 32]>::try_from(&bytes[i * 32..(i + 1) * 32]).unwrap());
        Ok(WriteKey { chunk_id: part(0), chunk_gear: part(1), recipient: (*part(2)).into() })
    }
}

/// Where a secret comes from. Never argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A key file made by `keygen`.
    KeyFile(PathBuf),
    /// A file whose content (less one trailing newline) is the passphrase.
    PassphraseFile(PathBuf),
    /// An open file descriptor to read the passphrase from.
    PassphraseFd(i32),
    /// An environment variable holding the passphrase.
    PassphraseEnv(String),
}

/// A loaded secret: a key, or a passphrase still to be stretched.
pub enum Secret {
    /// A master key from a key file.
    Key(MasterKey),
    /// A passphrase.
    Passphrase(Zeroizing<Vec<u8>>),
}

impl SecretSource {
    /// Loads the secret.
    pub fn load(&self) -> Result<Secret> {
        let passphrase = match self {
            SecretSource::KeyFile(path) => return MasterKey::read_file(path).map(Secret::Key),
            SecretSource::PassphraseFile(path) => Zeroizing::new(
                std::fs::read(path)
                    .map_err(|e| usage_io(format!("cannot read passphrase file '{}'", path.display()), e))?,
            ),
            SecretSource::PassphraseFd(fd) if *fd <= 2 => {
                return Err(Error::usage(format!(
                    "--passphrase-fd {fd} is a standard stream; pass the passphrase on another descriptor, e.g. 3<file"
                )))
            }
            SecretSource::PassphraseFd(fd) => {
                let mut bytes = Zeroizing::new(Vec::new());
                std::fs::File::open(format!("/dev/fd/{fd}"))
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .map_err(|e| usage_io(format!("cannot read the passphrase from file descriptor {fd}"), e))?;
                bytes
            }
            SecretSource::PassphraseEnv(name) => match std::env::var_os(name) {
                Some(value) => Zeroizing::new(value.into_encoded_bytes()),
                None => return Err(Error::usage(format!("environment variable {name} is not set"))),
            },
        };
        let mut passphrase = passphrase;
        if passphrase.last() == Some(&b'\n') {
            passphrase.pop();
        }
        if passphrase.is_empty() {
            return Err(Error::usage("the passphrase is empty"));
        }
        Ok(Secret::Passphrase(passphrase))
    }
}
