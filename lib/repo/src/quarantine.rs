//! The quarantine: stored copies of chunks that `repo check --read-data`
//! found forged or damaged (a copy that does not decrypt, or whose content
//! does not hash to its ID, as a write-only key can store). One object per
//! copy, `quarantine/<chunk ID>-<pack>`, holding JSON: the reason, and a MAC
//! under a key derived from the master key, so only a full key makes one.
//!
//! New backups never deduplicate against a quarantined copy (`chunk --repo`
//! and `ship`, which may hold only the write half, honour every object by its
//! name: the worst a planted one does is have a good chunk stored again), and
//! `fetch`, which verifies every chunk it reads, tries the other copies
//! first. What deletes or keeps data (`repo prune`, `repo check`) trusts
//! only genuine objects: a planted one cannot make a good copy count as bad.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::pack::is_pack_name;
use super::storage::Storage;
use crate::error::Result;
use crate::keys::MasterKey;

/// The folder of quarantine objects.
const FOLDER: &str = "quarantine";

/// Quarantined copies, by chunk ID: the packs that hold a bad copy.
#[derive(Debug, Default)]
pub struct Quarantine(HashMap<[u8; 32], Vec<String>>);

/// The content of a quarantine object.
#[derive(Serialize, Deserialize)]
struct Record {
    /// What is wrong with the copy, for people.
    reason: String,
    /// keyed BLAKE3 of the object name, a zero byte and the reason, hex.
    mac: String,
}

/// The object that quarantines the copy of chunk `id` in `pack`.
fn object_name(id: &[u8; 32], pack: &str) -> String {
    format!("{FOLDER}/{}-{pack}", hex::encode(id))
}

/// The chunk ID and pack a quarantine object names; `None` for another name.
fn parse_name(name: &str) -> Option<([u8; 32], String)> {
    let (id, pack) = name.strip_prefix(FOLDER)?.strip_prefix('/')?.split_once('-')?;
    let id: [u8; 32] = hex::decode(id).ok()?.try_into().ok()?;
    is_pack_name(pack).then(|| (id, pack.to_string()))
}

/// The MAC of a quarantine object.
fn mac(master: &MasterKey, name: &str, reason: &str) -> String {
    let key = master.derive(b"backpipe/v1/quarantine");
    hex::encode(blake3::keyed_hash(&key, &[name.as_bytes(), b"\0", reason.as_bytes()].concat()).as_bytes())
}

/// Every quarantine object, by its name alone (one listing): what new
/// backups and `fetch` honour, with or without the master key.
pub fn load(storage: &dyn Storage) -> Result<Quarantine> {
    let mut quarantine = Quarantine::default();
    for (id, pack) in storage.list(FOLDER)?.iter().filter_map(|name| parse_name(name)) {
        quarantine.insert(id, pack);
    }
    Ok(quarantine)
}

/// The quarantine objects a full key made (their MAC checks), for what
/// decides whether a copy is bad; the names of the others come second.
pub fn load_genuine(storage: &dyn Storage, master: &MasterKey) -> Result<(Quarantine, Vec<String>)> {
    let (mut genuine, mut planted) = (Quarantine::default(), Vec::new());
    for name in storage.list(FOLDER)? {
        let Some((id, pack)) = parse_name(&name) else { continue };
        // One removed since it was listed (by `repo check`) is simply gone.
        let Some(bytes) = storage.read_if_exists(&name)? else { continue };
        match serde_json::from_slice::<Record>(&bytes) {
            Ok(record) if record.mac == mac(master, &name, &record.reason) => genuine.insert(id, pack),
            _ => planted.push(name),
        }
    }
    Ok((genuine, planted))
}

impl Quarantine {
    fn insert(&mut self, id: [u8; 32], pack: String) {
        self.0.entry(id).or_default().push(pack);
    }

    /// True when the copy of chunk `id` in `pack` is quarantined.
    pub fn holds(&self, id: &[u8; 32], pack: &str) -> bool {
        self.0.get(id).is_some_and(|packs| packs.iter().any(|p| p == pack))
    }

    /// Every quarantined copy: (chunk ID, pack).
    pub fn copies(&self) -> Vec<([u8; 32], String)> {
        self.0.iter().flat_map(|(id, packs)| packs.iter().map(move |pack| (*id, pack.clone()))).collect()
    }

    /// Quarantines the copy of chunk `id` in `pack`, saying why (replacing
    /// any object of that name that is not genuine).
    pub fn add(
        &mut self,
        storage: &dyn Storage,
        master: &MasterKey,
        id: &[u8; 32],
        pack: &str,
        reason: &str,
    ) -> Result<()> {
        let name = object_name(id, pack);
        let record = Record { reason: reason.to_string(), mac: mac(master, &name, reason) };
        storage.remove(&name)?;
        storage.create(&name, &serde_json::to_vec(&record).expect("records serialize"))?;
        self.insert(*id, pack.to_string());
        Ok(())
    }

    /// Takes the copy of chunk `id` in `pack` out of quarantine (it verified, or its pack is gone).
    pub fn lift(&mut self, storage: &dyn Storage, id: &[u8; 32], pack: &str) -> Result<()> {
        storage.remove(&object_name(id, pack))?;
        if let Some(packs) = self.0.get_mut(id) {
            packs.retain(|p| p != pack);
            if packs.is_empty() {
                self.0.remove(id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_strangers_are_ignored() {
        let (id, pack) = ([0xab; 32], "cd".repeat(32));
        assert_eq!(parse_name(&object_name(&id, &pack)), Some((id, pack.clone())));
        let long = format!("quarantine/{}", "ab".repeat(32));
        for stranger in ["quarantine/x", "quarantine/abab-cdcd", "other/ab", &long] {
            assert_eq!(parse_name(stranger), None, "{stranger}");
        }
        let mut quarantine = Quarantine::default();
        quarantine.insert(id, pack.clone());
        assert!(quarantine.holds(&id, &pack));
        assert!(!quarantine.holds(&id, &"ef".repeat(32)) && !quarantine.holds(&[0; 32], &pack));
    }

    #[test]
    fn only_the_master_key_makes_a_genuine_object() {
        let (master, other) = (MasterKey::generate(), MasterKey::generate());
        let name = object_name(&[1; 32], &"ab".repeat(32));
        assert_eq!(mac(&master, &name, "bad"), mac(&master, &name, "bad"));
        assert_ne!(mac(&master, &name, "bad"), mac(&other, &name, "bad"));
        assert_ne!(mac(&master, &name, "bad"), mac(&master, &name, "good"));
        assert_ne!(mac(&master, &name, "bad"), mac(&master, &object_name(&[2; 32], &"ab".repeat(32)), "bad"));
    }
}
