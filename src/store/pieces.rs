//! Uploads that arrive in numbered pieces (submissions, evaluation keys). Each piece is one
//! record `{owner}{digest hex}/{index:08}` in a tree, so an owner's pieces sort by upload and
//! then by index, and a retransmitted piece overwrites itself.

/// One upload, known by its owner's key prefix (ending in `/`) and the digest of its bytes.
#[derive(Clone, Debug)]
pub struct Upload {
    owner: Vec<u8>,
    prefix: Vec<u8>,
    digest: [u8; 32],
}

impl Upload {
    pub fn new(owner: Vec<u8>, digest: [u8; 32]) -> Upload {
        let mut prefix = owner.clone();
        prefix.extend_from_slice(format!("{}/", hex::encode(digest)).as_bytes());
        Upload {
            owner,
            prefix,
            digest,
        }
    }

    /// Stores piece `index`, first dropping the pieces of any other upload by the same owner
    /// (an abandoned earlier attempt). Returns how many pieces of this upload are stored.
    pub fn put(&self, tree: &sled::Tree, index: u32, bytes: Vec<u8>) -> Result<u32, sled::Error> {
        for key in tree.scan_prefix(&self.owner).keys() {
            let key = key?;
            if !key.starts_with(&self.prefix) {
                tree.remove(key)?;
            }
        }
        let mut key = self.prefix.clone();
        key.extend_from_slice(format!("{index:08}").as_bytes());
        tree.insert(key, bytes)?;
        Ok(tree.scan_prefix(&self.prefix).count() as u32)
    }

    /// Concatenates the stored pieces in index order into `out`; `false` when they do not
    /// hash to the upload's digest (missing, damaged or forged pieces).
    pub fn assemble(&self, tree: &sled::Tree, out: &mut Vec<u8>) -> Result<bool, sled::Error> {
        out.clear();
        for piece in tree.scan_prefix(&self.prefix).values() {
            out.extend_from_slice(&piece?);
        }
        Ok(*blake3::hash(out).as_bytes() == self.digest)
    }

    /// Removes this upload's pieces.
    pub fn remove(&self, tree: &sled::Tree) -> Result<(), sled::Error> {
        for key in tree.scan_prefix(&self.prefix).keys() {
            tree.remove(key?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_assemble_in_order_and_replace_older_uploads() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let whole: Vec<u8> = (0..=255).collect();
        let upload = Upload::new(b"owner/".to_vec(), *blake3::hash(&whole).as_bytes());
        let older = Upload::new(b"owner/".to_vec(), [9; 32]);
        older.put(&tree, 0, vec![1]).unwrap();
        assert_eq!(upload.put(&tree, 1, whole[128..].to_vec()).unwrap(), 1);
        assert_eq!(tree.len(), 1, "the older upload's piece is dropped");
        assert_eq!(upload.put(&tree, 0, whole[..128].to_vec()).unwrap(), 2);
        assert_eq!(upload.put(&tree, 0, whole[..128].to_vec()).unwrap(), 2);
        let mut out = Vec::new();
        assert!(upload.assemble(&tree, &mut out).unwrap());
        assert_eq!(out, whole);
        upload.put(&tree, 1, vec![0]).unwrap();
        assert!(!upload.assemble(&tree, &mut out).unwrap());
        upload.remove(&tree).unwrap();
        assert!(tree.is_empty());
    }
}
