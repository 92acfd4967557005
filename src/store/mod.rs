//! Persistence: one sled database under `data_dir`, one tree per record kind (plus one per
//! upload owner for bulk pieces, see [`pieces`]), every record tagged with its encoding
//! version. sled flushes on its own only every 500 ms, so callers flush explicitly at protocol
//! checkpoints (an acknowledged submission must be durable).

pub mod pieces;

use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use serde::{de::DeserializeOwned, Serialize};
use zeroize::Zeroizing;

/// The trees, one per kind of record (DESIGN §2).
pub mod trees {
    pub const IDENTITY: &str = "identity";
    pub const KEYS: &str = "keys";
    pub const SESSIONS: &str = "sessions";
    pub const SUBMISSIONS: &str = "submissions";
    pub const ACCUMULATORS: &str = "accumulators";
    pub const RESULTS: &str = "results";
    pub const CONTEXTS: &str = "contexts";
    pub const MODELS: &str = "models";
    pub const ALL: [&str; 8] = [
        IDENTITY,
        KEYS,
        SESSIONS,
        SUBMISSIONS,
        ACCUMULATORS,
        RESULTS,
        CONTEXTS,
        MODELS,
    ];
}

/// Encoding version written in front of every record of `tree`; bumped when the layout of
/// that tree's records changes, so that a record of an older build is refused by name rather
/// than misread.
///
/// `sessions` 2: key shares moved out of the session states into records of their own.
/// `sessions` 3: a submission's digest is its update's envelope digest, not a hash of all of
/// its bytes.
pub fn record_version(tree: &str) -> u8 {
    match tree {
        trees::SESSIONS => 3,
        _ => 1,
    }
}
const IDENTITY_KEY: &[u8] = b"ed25519";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: {0}")]
    Io(#[from] std::io::Error),
    #[error("record {tree}/{key}: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("record encoding: {0}")]
    Encode(String),
}

/// The node's database. Cloning is cheap (sled handles are reference counted); each actor
/// writes only its own trees.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the database in `data_dir/db`, readable by the owner only.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        restrict_to_owner(data_dir, true)?;
        let path = data_dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        for tree in trees::ALL {
            db.open_tree(tree)?;
        }
        // The identity key lives in these files: owner-only, like an ssh key.
        restrict_tree(&path)?;
        Ok(Store { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tree(&self, name: &'static str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Writes `value` under `key`, tagged with its [`record_version`]. Not durable until
    /// [`flush`].
    ///
    /// [`flush`]: Store::flush
    pub fn put<V: Serialize>(
        &self,
        tree: &'static str,
        key: &[u8],
        value: &V,
    ) -> Result<(), StoreError> {
        let bytes = encode_record(tree, value)?;
        self.tree(tree)?.insert(key, bytes)?;
        Ok(())
    }

    pub fn get<V: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &[u8],
    ) -> Result<Option<V>, StoreError> {
        match self.tree(tree)?.get(key)? {
            None => Ok(None),
            Some(bytes) => decode_record(tree, key, &bytes).map(Some),
        }
    }

    pub fn remove(&self, tree: &'static str, key: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.remove(key)?;
        Ok(())
    }

    /// Every record of a tree, in key order.
    pub fn scan<V: DeserializeOwned>(
        &self,
        tree: &'static str,
    ) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        self.scan_prefix(tree, b"")
    }

    /// Every record of a tree whose key starts with `prefix`, in key order.
    pub fn scan_prefix<V: DeserializeOwned>(
        &self,
        tree: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(tree)?.scan_prefix(prefix) {
            let (k, v) = item?;
            let value = decode_record(tree, &k, &v)?;
            out.push((k.to_vec(), value));
        }
        Ok(out)
    }

    /// Makes every write so far durable. Returns the bytes written.
    pub fn flush(&self) -> Result<usize, StoreError> {
        Ok(self.db.flush()?)
    }

    /// [`flush`](Store::flush) on the blocking pool. Not sled's own `flush_async`: in sled
    /// 0.34 concurrent `flush_async` calls on several databases in one process can wait for
    /// each other forever (spacejam/sled#1241, fixed only on an unreleased branch), and a
    /// node's demo and benchmark networks keep dozens of databases in one process.
    pub async fn flush_async(&self) -> Result<usize, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
            .map_err(StoreError::from)
    }

    /// Size of the database on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// The node's libp2p identity: loaded if present, otherwise generated, stored and flushed,
    /// so the peer id survives restarts.
    pub fn identity(&self) -> Result<Keypair, StoreError> {
        let tree = self.tree(trees::IDENTITY)?;
        if let Some(bytes) = tree.get(IDENTITY_KEY)? {
            let encoded: Zeroizing<Vec<u8>> = Zeroizing::new(
                decode_record::<serde_bytes::ByteBuf>(trees::IDENTITY, IDENTITY_KEY, &bytes)?
                    .into_vec(),
            );
            return Keypair::from_protobuf_encoding(&encoded).map_err(|e| StoreError::Corrupt {
                tree: trees::IDENTITY,
                key: "ed25519".into(),
                reason: e.to_string(),
            });
        }
        let keypair = Keypair::generate_ed25519();
        let encoded = Zeroizing::new(
            keypair
                .to_protobuf_encoding()
                .map_err(|e| StoreError::Encode(e.to_string()))?,
        );
        let record = Zeroizing::new(encode_record(
            trees::IDENTITY,
            &serde_bytes::Bytes::new(&encoded),
        )?);
        tree.insert(IDENTITY_KEY, record.as_slice())?;
        self.flush()?;
        restrict_tree(&self.path)?;
        Ok(keypair)
    }
}

fn encode_record<V: Serialize + ?Sized>(tree: &str, value: &V) -> Result<Vec<u8>, StoreError> {
    let size = bincode::serialized_size(value).map_err(|e| StoreError::Encode(e.to_string()))?;
    // Sized up front: a result of a million values grew by doubling, through fresh pages.
    let mut out = Vec::with_capacity(1 + size as usize);
    out.push(record_version(tree));
    bincode::serialize_into(&mut out, value).map_err(|e| StoreError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes the record under `key` in `tree`; anything unreadable is [`StoreError::Corrupt`],
/// naming the record.
fn decode_record<V: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<V, StoreError> {
    let version = record_version(tree);
    let decoded = match bytes.split_first() {
        Some((&v, body)) if v == version => bincode::deserialize(body).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!(
            "unknown record version {v} (this build reads {version})"
        )),
        None => Err("empty record".into()),
    };
    decoded.map_err(|reason| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    })
}

#[cfg(unix)]
fn restrict_to_owner(path: &Path, is_dir: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if is_dir { 0o700 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &Path, _is_dir: bool) -> std::io::Result<()> {
    Ok(())
}

fn restrict_tree(dir: &Path) -> std::io::Result<()> {
    restrict_to_owner(dir, true)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            restrict_tree(&entry.path())?;
        } else if kind.is_file() {
            restrict_to_owner(&entry.path(), false)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_reopen_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path())
            .unwrap()
            .identity()
            .unwrap()
            .public()
            .to_peer_id();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.identity().unwrap().public().to_peer_id(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for entry in std::fs::read_dir(store.path()).unwrap() {
                let meta = entry.unwrap().metadata().unwrap();
                if meta.is_file() {
                    assert_eq!(meta.permissions().mode() & 0o077, 0);
                }
            }
        }
    }

    #[test]
    fn records_are_versioned_and_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .put(trees::SESSIONS, b"a", &(1u32, "x".to_string()))
            .unwrap();
        let v: Option<(u32, String)> = store.get(trees::SESSIONS, b"a").unwrap();
        assert_eq!(v, Some((1, "x".into())));
        store
            .tree(trees::SESSIONS)
            .unwrap()
            .insert(b"b", vec![9u8, 1, 2])
            .unwrap();
        let e = store
            .get::<(u32, String)>(trees::SESSIONS, b"b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown record version 9"), "{e}");
        store
            .tree(trees::SESSIONS)
            .unwrap()
            .insert(b"c", vec![record_version(trees::SESSIONS), 1])
            .unwrap();
        assert!(store.get::<(u32, String)>(trees::SESSIONS, b"c").is_err());
        // A session record of the earlier layout is refused by name, not misread.
        let mut old = vec![1u8];
        old.extend(bincode::serialize(&(1u32, "x".to_string())).unwrap());
        store
            .tree(trees::SESSIONS)
            .unwrap()
            .insert(b"d", old)
            .unwrap();
        let e = store
            .get::<(u32, String)>(trees::SESSIONS, b"d")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown record version 1 (this build reads 3)"),
            "{e}"
        );
    }
}
