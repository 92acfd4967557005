//! Uploads that arrive in numbered pieces (submissions, evaluation keys).
//!
//! Each owner (a participant in a session, an evaluation-key slot) gets a tree of its own,
//! `{kind}/{owner}`, holding records `{digest hex}/{index:08}`: pieces sort by upload and then
//! by index, and a retransmitted piece overwrites itself. Why not one tree per kind: sled
//! rewrites a whole leaf (up to 16 records) after every 10 changes to it, so multi-megabyte
//! pieces of many owners in one tree were written to disk several times over (3.6× the
//! uploaded bytes in a 10-participant round). An owner's few pieces never reach that.

use std::sync::Arc;

use super::{health::Health, Store, StoreError};

/// One upload, known by its owner's tree and the digest of its bytes.
#[derive(Clone, Debug)]
pub struct Upload {
    db: sled::Db,
    name: String,
    tree: sled::Tree,
    prefix: Vec<u8>,
    digest: [u8; 32],
    health: Arc<Health>,
}

/// The name of `owner`'s upload tree for records of `kind`.
fn tree_name(kind: &str, owner: &str) -> String {
    format!("{kind}/{owner}")
}

impl Upload {
    /// Opens (or creates) the owner's tree for the upload with this digest.
    pub fn open(
        store: &Store,
        kind: &str,
        owner: &str,
        digest: [u8; 32],
    ) -> Result<Upload, sled::Error> {
        let name = tree_name(kind, owner);
        Ok(Upload {
            db: store.db.clone(),
            tree: store.db.open_tree(&name)?,
            name,
            prefix: format!("{}/", hex::encode(digest)).into_bytes(),
            digest,
            health: store.health.clone(),
        })
    }

    /// Stores piece `index`, first dropping the pieces of any other upload by the same owner
    /// (an abandoned earlier attempt). Returns how many pieces of this upload are stored.
    pub fn put(&self, index: u32, bytes: impl Into<sled::IVec>) -> Result<u32, StoreError> {
        let written = self.put_unnoted(index, bytes).map_err(StoreError::Sled);
        self.health.note(written)
    }

    fn put_unnoted(&self, index: u32, bytes: impl Into<sled::IVec>) -> Result<u32, sled::Error> {
        for key in self.tree.iter().keys() {
            let key = key?;
            if !key.starts_with(&self.prefix) {
                self.tree.remove(key)?;
            }
        }
        let mut key = self.prefix.clone();
        key.extend_from_slice(format!("{index:08}").as_bytes());
        self.tree.insert(key, bytes)?;
        Ok(self.tree.scan_prefix(&self.prefix).count() as u32)
    }

    /// Concatenates the stored pieces in index order into `out`; `false` when they do not
    /// hash to the upload's digest (missing, damaged or forged pieces).
    pub fn assemble(&self, out: &mut Vec<u8>) -> Result<bool, sled::Error> {
        self.concat(out)?;
        Ok(*blake3::hash(out).as_bytes() == self.digest)
    }

    /// Concatenates the stored pieces in index order into `out`, for uploads whose own format
    /// carries their digest (an encrypted update's envelope) and is checked by its reader.
    pub fn concat(&self, out: &mut Vec<u8>) -> Result<(), sled::Error> {
        let pieces = self
            .tree
            .scan_prefix(&self.prefix)
            .values()
            .collect::<Result<Vec<_>, _>>()?;
        out.clear();
        out.reserve_exact(pieces.iter().map(|p| p.len()).sum());
        for piece in &pieces {
            out.extend_from_slice(piece);
        }
        Ok(())
    }

    /// Removes this upload's pieces.
    pub fn remove(&self) -> Result<(), sled::Error> {
        for key in self.tree.scan_prefix(&self.prefix).keys() {
            self.tree.remove(key?)?;
        }
        Ok(())
    }

    /// Drops the owner's whole tree, once nothing more is to come from it.
    pub fn discard(self) -> Result<(), sled::Error> {
        self.db.drop_tree(&self.name).map(|_| ())
    }
}

impl Store {
    /// The owners of every upload tree of `kind`.
    pub fn upload_owners(&self, kind: &str) -> Vec<String> {
        let prefix = tree_name(kind, "");
        self.db
            .tree_names()
            .iter()
            .filter_map(|name| {
                std::str::from_utf8(name)
                    .ok()?
                    .strip_prefix(&prefix)
                    .map(str::to_string)
            })
            .collect()
    }

    /// Drops every upload tree of `kind` whose owner starts with `owner_prefix`; returns how
    /// many were dropped.
    pub fn drop_uploads(&self, kind: &str, owner_prefix: &str) -> Result<usize, sled::Error> {
        let prefix = tree_name(kind, owner_prefix);
        let mut dropped = 0;
        for name in self.db.tree_names() {
            if name.starts_with(prefix.as_bytes()) && self.db.drop_tree(&name)? {
                dropped += 1;
            }
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_owners_are_listed_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        Upload::open(&store, "t", "s1/a", [1; 32])
            .unwrap()
            .put(0, &[1])
            .unwrap();
        Upload::open(&store, "u", "s2/b", [1; 32])
            .unwrap()
            .put(0, &[1])
            .unwrap();
        assert_eq!(store.upload_owners("t"), vec!["s1/a".to_string()]);
        store.drop_uploads("t", "s1/").unwrap();
        assert!(store.upload_owners("t").is_empty());
        assert_eq!(store.upload_owners("u").len(), 1);
    }

    #[test]
    fn pieces_assemble_in_order_and_replace_older_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let whole: Vec<u8> = (0..=255).collect();
        let upload =
            Upload::open(&store, "t", "s/owner", *blake3::hash(&whole).as_bytes()).unwrap();
        let older = Upload::open(&store, "t", "s/owner", [9; 32]).unwrap();
        let other = Upload::open(&store, "t", "s/other", [9; 32]).unwrap();
        older.put(0, &[1]).unwrap();
        other.put(0, &[2]).unwrap();
        assert_eq!(upload.put(1, &whole[128..]).unwrap(), 1);
        assert_eq!(upload.tree.len(), 1, "the older upload's piece is dropped");
        assert_eq!(other.tree.len(), 1, "another owner's upload is not touched");
        assert_eq!(upload.put(0, &whole[..128]).unwrap(), 2);
        assert_eq!(upload.put(0, &whole[..128]).unwrap(), 2);
        let mut out = Vec::new();
        assert!(upload.assemble(&mut out).unwrap());
        assert_eq!(out, whole);
        upload.concat(&mut out).unwrap();
        assert_eq!(out, whole);
        upload.put(1, &[0]).unwrap();
        assert!(!upload.assemble(&mut out).unwrap());
        upload.remove().unwrap();
        assert!(upload.tree.is_empty());
        let name = upload.name.clone();
        upload.discard().unwrap();
        assert!(!store.db.tree_names().iter().any(|n| n == name.as_bytes()));

        // Dropping by owner prefix takes what is left of session `s` (the other owner), and
        // nothing of session `s2`.
        let kept = Upload::open(&store, "t", "s2/owner", [9; 32]).unwrap();
        kept.put(0, &[3]).unwrap();
        assert_eq!(store.drop_uploads("t", "s/").unwrap(), 1);
        assert_eq!(kept.tree.len(), 1);
        assert_eq!(store.drop_uploads("t", "s/").unwrap(), 0);
    }
}
