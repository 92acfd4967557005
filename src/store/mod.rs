//! Persistence: one sled database under `data_dir`, one tree per record kind (plus one per
//! upload owner for bulk pieces, see [`pieces`]), every record tagged with its encoding
//! version. sled flushes on its own only every 500 ms, so callers flush explicitly at protocol
//! checkpoints (an acknowledged submission must be durable).

mod health;
pub mod peers;
pub mod pieces;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libp2p::identity::Keypair;
use serde::{de::DeserializeOwned, Serialize};
use zeroize::Zeroizing;

pub use health::{FailureKind, StoreFailure, StoreHealth};

/// The trees, one per kind of record.
pub mod trees {
    pub const IDENTITY: &str = "identity";
    pub const KEYS: &str = "keys";
    pub const SESSIONS: &str = "sessions";
    pub const SUBMISSIONS: &str = "submissions";
    pub const RESULTS: &str = "results";
    pub const CONTEXTS: &str = "contexts";
    pub const MODELS: &str = "models";
    /// The address book (see [`super::peers`]).
    pub const PEERS: &str = "peers";
    pub const ALL: [&str; 8] = [
        IDENTITY,
        KEYS,
        SESSIONS,
        SUBMISSIONS,
        RESULTS,
        CONTEXTS,
        MODELS,
        PEERS,
    ];
}

/// Encoding version written in front of every record of `tree`; bumped when the layout of
/// that tree's records changes, so that a record of an older build is refused by name rather
/// than misread.
///
/// `sessions` 2: key shares moved out of the session states into records of their own.
/// `sessions` 3: a submission's digest is its update's envelope digest, not a hash of all of
/// its bytes.
/// `sessions` 4, `keys` 2: key-additive sessions (role machines, participant keys and member
/// seed bundles) replace the committee-key ceremony's records.
/// `results` 2: a result's values are packed as the fixed-point sums they come from.
/// `keys` 3: a participant key carries the seed of its encryption's randomness (a body is
/// sealed again from its update instead of being stored).
/// `sessions` 5, `results` 3: a session's plan carries its integer policy and the weighted
/// mean's bound; a result its total weight.
/// `sessions` 6: a coordinated session records the peers that acknowledged its end notice.
pub fn record_version(tree: &str) -> u8 {
    match tree {
        trees::SESSIONS => 6,
        trees::KEYS => 3,
        trees::RESULTS => 3,
        _ => 1,
    }
}
const IDENTITY_KEY: &[u8] = b"ed25519";

/// Values above this, in the trees of [`kept_for_good`], are stored in files of their own beside
/// the database, with a manifest in their place. sled keeps a value above its blob threshold (a
/// quarter of a 512 KiB segment) in a file too, but also in memory for as long as the value
/// lives, charged to its cache at the size of the file's pointer: such records never left memory
/// (8 MB per session result at every node, tens of MB per evaluation key). Splitting them into
/// pages small enough for sled's log made an 8 MB write take most of a second.
const FILE_ABOVE: usize = 64 << 10;
/// How a manifest begins; then the file's generation as u64 LE, the value's length as u64 LE and
/// its BLAKE3 digest. Records begin with a small version number and raw values with their own
/// envelope's magic, so this prefix is free.
const MANIFEST_MAGIC: &[u8; 8] = b"\xffFILE\x00\x00\x01";
const MANIFEST_LEN: usize = MANIFEST_MAGIC.len() + 8 + 8 + 32;
/// sled's page cache, per database. Its default (1 GiB) is sized for a database that owns the
/// machine; a node's working set is its open sessions' records.
const CACHE_BYTES: u64 = 64 << 20;

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
    #[error(
        "the store's disk has {free} bytes free, below store.min_free_bytes = {min}: \
         nothing new is accepted until space is freed"
    )]
    LowSpace { free: u64, min: u64 },
}

impl StoreError {
    /// What a caller can do about it (see [`FailureKind`]).
    pub fn kind(&self) -> FailureKind {
        let io = match self {
            StoreError::LowSpace { .. } => return FailureKind::NoSpace,
            StoreError::Corrupt { .. } | StoreError::Encode(_) => return FailureKind::Corrupt,
            StoreError::Io(e) => Some(e),
            StoreError::Sled(sled::Error::Io(e))
            | StoreError::Open {
                source: sled::Error::Io(e),
                ..
            } => Some(e),
            StoreError::Sled(sled::Error::Corruption { .. }) => return FailureKind::Corrupt,
            StoreError::Sled(_) | StoreError::Open { .. } => None,
        };
        match io {
            Some(e) if health::is_no_space(e) => FailureKind::NoSpace,
            _ => FailureKind::Failing,
        }
    }
}

/// The node's database. Cloning is cheap (sled handles are reference counted); each actor
/// writes only its own trees.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    /// Large values kept for good, one file each (see [`FILE_ABOVE`]).
    files: PathBuf,
    /// The blob files already synced, and their length then (see [`sync_blobs`]).
    synced_blobs: Arc<Mutex<BTreeMap<i64, u64>>>,
    /// Free space and the latest write's outcome (see [`health`]).
    health: Arc<health::Health>,
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
        let config = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES);
        // sled lets go of its file lock from its flusher thread, a moment after the last
        // handle drops: a store reopened in the same process right after it was closed (a node
        // restarted in place) can find the lock still held. Such an open is retried for a
        // while; one held by another process still fails, two seconds later.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if attempts < 40 && e.to_string().contains("could not acquire lock") =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(StoreError::Open {
                        path: path.clone(),
                        source,
                    })
                }
            }
        };
        for tree in trees::ALL {
            db.open_tree(tree)?;
        }
        // The identity key lives in these files: owner-only, like an ssh key.
        restrict_tree(&path)?;
        let store = Store {
            db,
            path,
            files: data_dir.join("files"),
            synced_blobs: Arc::default(),
            health: Arc::default(),
        };
        store.sweep_files()?;
        Ok(store)
    }

    /// Removes the files no manifest names: a crash between writing a value's file and
    /// recording its manifest, or between replacing a value and removing its old file, leaves
    /// one behind.
    fn sweep_files(&self) -> Result<(), StoreError> {
        for tree in [trees::RESULTS, trees::CONTEXTS, trees::MODELS] {
            let dir = self.files.join(tree);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let mut named = std::collections::BTreeSet::new();
            for item in self.tree(tree)?.iter() {
                if let Some(manifest) = Manifest::parse(&item?.1) {
                    named.insert(manifest.file_name());
                }
            }
            for entry in entries.flatten() {
                let unnamed = !named.contains(entry.file_name().to_string_lossy().as_ref());
                if unnamed && entry.file_type().is_ok_and(|t| t.is_file()) {
                    if let Err(e) = std::fs::remove_file(entry.path()) {
                        tracing::warn!(path = %entry.path().display(), error = %e,
                            "could not remove a file no record names");
                    }
                }
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets `store.min_free_bytes` (0, the default of a store opened here, checks nothing).
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.health.set_min_free_bytes(bytes);
    }

    /// Refuses new work that would write (a session, an upload, a context) while the disk has
    /// less than `store.min_free_bytes` free: the node keeps the room to finish what it took.
    pub fn ensure_room(&self) -> Result<(), StoreError> {
        let min = self.health.min_free_bytes();
        if min == 0 {
            return Ok(());
        }
        match health::free_bytes(&self.path) {
            Some(free) if free < min => Err(StoreError::LowSpace { free, min }),
            _ => Ok(()),
        }
    }

    /// Whether the store takes writes, for `/readyz`.
    pub fn health(&self) -> StoreHealth {
        self.health.report(&self.path)
    }

    /// Whether writes fail and one failed for want of space: what a restart mends once space
    /// is back (sled keeps its first write error). Another I/O error is a failing disk, which
    /// restarting would not mend.
    pub fn failed_for_space(&self) -> bool {
        self.health.failed_for_space()
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
        // Wiped once written: some records hold secrets (seeds of one-time keys, a client
        // context's keys), and this serialised copy would otherwise linger in freed memory.
        let encoded = Zeroizing::new(encode_record(tree, value)?);
        self.put_bytes(tree, key, &encoded)
    }

    pub fn get<V: DeserializeOwned>(
        &self,
        tree: &'static str,
        key: &[u8],
    ) -> Result<Option<V>, StoreError> {
        match self.tree(tree)?.get(key)? {
            None => Ok(None),
            Some(value) => decode_record(tree, key, &self.whole(tree, key, &value)?).map(Some),
        }
    }

    /// Stores raw bytes under `key`. A large value of a tree in [`kept_for_good`] goes to a file
    /// of its own, written and synced before its manifest takes the key; a replaced value's file
    /// is removed only once the new manifest is durable. A crash leaves the old value or the new
    /// one whole (and at worst a file no manifest names, which the next open removes).
    pub fn put_bytes(
        &self,
        tree: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        self.health.note(self.put_bytes_unnoted(tree, key, bytes))
    }

    fn put_bytes_unnoted(
        &self,
        tree: &'static str,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        if Manifest::parse(bytes).is_some() {
            return Err(StoreError::Encode(
                "a value that reads as a file manifest".into(),
            ));
        }
        let main = self.tree(tree)?;
        let old = if bytes.len() <= FILE_ABOVE || !kept_for_good(tree) {
            main.insert(key, bytes)?
        } else {
            let manifest = Manifest {
                generation: self.db.generate_id()?,
                len: bytes.len() as u64,
                digest: *blake3::hash(bytes).as_bytes(),
            };
            let dir = self.files_dir(tree)?;
            let path = dir.join(manifest.file_name());
            let written = (|| {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                restrict_to_owner(&path, false)?;
                std::io::Write::write_all(&mut file, bytes)?;
                file.sync_all()?;
                std::fs::File::open(&dir)?.sync_all()
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&path);
                return Err(e.into());
            }
            main.insert(key, &manifest.to_bytes()[..])?
        };
        self.drop_file(tree, old.as_deref())
    }

    /// The raw bytes under `key`, read from its file if it has one.
    pub fn get_bytes(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.tree(tree)?.get(key)? {
            None => Ok(None),
            Some(value) => Ok(Some(self.whole(tree, key, &value)?.into_owned())),
        }
    }

    pub fn remove(&self, tree: &'static str, key: &[u8]) -> Result<(), StoreError> {
        self.health.note((|| {
            let old = self.tree(tree)?.remove(key)?;
            self.drop_file(tree, old.as_deref())
        })())
    }

    /// The directory of `tree`'s large values, created (owner only) if missing.
    fn files_dir(&self, tree: &str) -> Result<PathBuf, StoreError> {
        let dir = self.files.join(tree);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)?;
            restrict_to_owner(&dir, true)?;
            restrict_to_owner(&self.files, true)?;
            // The new directories' entries, durable like the files they will hold.
            for created in [&self.files, &dir] {
                if let Some(parent) = created.parent() {
                    std::fs::File::open(parent)?.sync_all()?;
                }
            }
        }
        Ok(dir)
    }

    /// A stored value, whole: itself, or the file its manifest names, checked against it.
    fn whole<'v>(
        &self,
        tree: &'static str,
        key: &[u8],
        value: &'v [u8],
    ) -> Result<Cow<'v, [u8]>, StoreError> {
        let Some(manifest) = Manifest::parse(value) else {
            return Ok(Cow::Borrowed(value));
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            tree,
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
        };
        let path = self.files.join(tree).join(manifest.file_name());
        let bytes = std::fs::read(&path)
            .map_err(|e| corrupt(format!("its file {}: {e}", path.display())))?;
        if bytes.len() as u64 != manifest.len || *blake3::hash(&bytes).as_bytes() != manifest.digest
        {
            return Err(corrupt(format!(
                "its file {} does not match its digest",
                path.display()
            )));
        }
        Ok(Cow::Owned(bytes))
    }

    /// Removes the file of a value that was replaced or removed, if it had one, once the
    /// change is durable (until then a crash would bring back the manifest naming it).
    fn drop_file(&self, tree: &str, old: Option<&[u8]>) -> Result<(), StoreError> {
        if let Some(manifest) = old.and_then(Manifest::parse) {
            self.db.flush()?;
            let path = self.files.join(tree).join(manifest.file_name());
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
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
        self.scan_prefix_each(tree, prefix)?
            .into_iter()
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect()
    }

    /// Like [`scan_prefix`](Store::scan_prefix), but a record that cannot be read (it does
    /// not decode, or its file is missing or fails its digest) comes back as its own error
    /// beside the others instead of ending the scan: one bad record must not hide the rest.
    #[allow(clippy::type_complexity)]
    pub fn scan_prefix_each<V: DeserializeOwned>(
        &self,
        tree: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Result<V, StoreError>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(tree)?.scan_prefix(prefix) {
            let (k, v) = item?;
            let value = self
                .whole(tree, &k, &v)
                .and_then(|bytes| decode_record(tree, &k, &bytes));
            out.push((k.to_vec(), value));
        }
        Ok(out)
    }

    /// Makes every write so far durable. Returns the bytes written.
    pub fn flush(&self) -> Result<usize, StoreError> {
        self.health.note((|| {
            let written = self.db.flush()?;
            sync_blobs(&self.path, &self.synced_blobs)?;
            Ok(written)
        })())
    }

    /// [`flush`](Store::flush) on the blocking pool. Not sled's own `flush_async`: in sled
    /// 0.34 concurrent `flush_async` calls on several databases in one process can wait for
    /// each other forever (spacejam/sled#1241, fixed only on an unreleased branch), and a
    /// node's demo and benchmark networks keep dozens of databases in one process.
    pub async fn flush_async(&self) -> Result<usize, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
    }

    /// Size of the store on disk, in bytes: the database and the large values beside it.
    pub fn size_on_disk(&self) -> u64 {
        let files: u64 = std::fs::read_dir(&self.files)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|tree| std::fs::read_dir(tree.path()).ok())
            .flatten()
            .flatten()
            .filter_map(|file| file.metadata().ok())
            .map(|meta| meta.len())
            .sum();
        self.db.size_on_disk().unwrap_or(0) + files
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

/// sled 0.34 writes each value over its blob threshold (an upload piece, a key) to a file of
/// its own, `blobs/{lsn}`, and never syncs it: its flush syncs only the log that points at the
/// file, so after a power loss an acknowledged piece could be a dangling pointer. Every blob
/// file not yet synced at its present length is synced here, then the directory. Kept by name
/// and length, not as the highest number synced: concurrent writers can create a blob with a
/// lower number after a higher one, or be caught halfway through writing one.
fn sync_blobs(db_path: &Path, synced: &Mutex<BTreeMap<i64, u64>>) -> std::io::Result<()> {
    let dir = db_path.join("blobs");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // Removed meanwhile (sled dropped the value it held): nothing to sync.
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut present = BTreeMap::new();
    for entry in entries {
        let entry = entry?;
        let Some(lsn) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        match entry.metadata() {
            Ok(meta) => present.insert(lsn, meta.len()),
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
    }
    let lock = || {
        synced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    let due: Vec<i64> = {
        let synced = lock();
        present
            .iter()
            .filter(|(lsn, len)| synced.get(lsn) != Some(len))
            .map(|(lsn, _)| *lsn)
            .collect()
    };
    // Synced without the lock, so that concurrent flushes overlap their disk waits; two of
    // them may sync the same file, which costs little the second time.
    for lsn in &due {
        match std::fs::File::open(dir.join(lsn.to_string())) {
            Ok(file) => file.sync_all()?,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    if !due.is_empty() {
        std::fs::File::open(&dir)?.sync_all()?;
    }
    let mut synced = lock();
    synced.retain(|lsn, _| present.contains_key(lsn));
    for lsn in due {
        if let Some(&len) = present.get(&lsn) {
            synced.insert(lsn, len);
        }
    }
    Ok(())
}

/// Trees whose large values stay for good (results, evaluation keys): those go to files of
/// their own. Elsewhere large values live for one session (upload pieces) and are
/// removed with it.
fn kept_for_good(tree: &str) -> bool {
    matches!(tree, trees::RESULTS | trees::CONTEXTS | trees::MODELS)
}

/// What a large value's key holds in place of the value.
#[derive(Debug, PartialEq)]
struct Manifest {
    /// Names the file: unique per write (sled's id generator), so a new value never
    /// overwrites the file of the value it replaces.
    generation: u64,
    len: u64,
    digest: [u8; 32],
}

impl Manifest {
    fn file_name(&self) -> String {
        format!("{:016x}", self.generation)
    }

    fn to_bytes(&self) -> [u8; MANIFEST_LEN] {
        let mut out = [0u8; MANIFEST_LEN];
        out[..8].copy_from_slice(MANIFEST_MAGIC);
        out[8..16].copy_from_slice(&self.generation.to_le_bytes());
        out[16..24].copy_from_slice(&self.len.to_le_bytes());
        out[24..].copy_from_slice(&self.digest);
        out
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != MANIFEST_LEN || !bytes.starts_with(MANIFEST_MAGIC) {
            return None;
        }
        Some(Manifest {
            generation: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
            len: u64::from_le_bytes(bytes[16..24].try_into().ok()?),
            digest: bytes[24..].try_into().ok()?,
        })
    }
}

fn encode_record<V: Serialize + ?Sized>(tree: &str, value: &V) -> Result<Vec<u8>, StoreError> {
    // Not sized by a first pass: a result's values are packed while serialised
    // (`session/packed.rs`), and a sizing pass packed them twice (10 ms for a million).
    let mut out = vec![record_version(tree)];
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

    /// Values sled keeps in files of their own are synced by `flush`, each once, and
    /// forgotten when sled removes them.
    #[test]
    fn flush_syncs_blob_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree(trees::SESSIONS).unwrap();
        tree.insert(b"big", vec![7u8; 1 << 20]).unwrap();
        store.flush().unwrap();
        let blobs: Vec<(i64, u64)> = std::fs::read_dir(store.path.join("blobs"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let lsn = e.file_name().to_str().unwrap().parse().unwrap();
                (lsn, e.metadata().unwrap().len())
            })
            .collect();
        assert_eq!(blobs.len(), 1, "a 1 MiB value is a blob file: {blobs:?}");
        let synced = || store.synced_blobs.lock().unwrap().clone();
        assert_eq!(synced().into_iter().collect::<Vec<_>>(), blobs);
        tree.remove(b"big").unwrap();
        tree.insert(b"small", vec![1u8; 16]).unwrap();
        store.flush().unwrap();
        store.flush().unwrap();
        let left = std::fs::read_dir(store.path.join("blobs")).unwrap().count();
        assert_eq!(synced().len(), left);
    }

    /// A store is opened by one holder at a time: a second open waits a while for the lock,
    /// then fails naming the database; once the first holder is gone it opens.
    #[test]
    fn a_store_in_use_is_refused_then_opens_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let second = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(&second, StoreError::Open { .. }) && second.to_string().contains("db"),
            "{second}"
        );
        drop(first);
        Store::open(dir.path()).unwrap();
    }

    /// Large values kept for good go to files of their own (not sled blobs, which sled keeps
    /// in memory), read back whole, across a reopen and in scans; replaced or removed, their
    /// files go too; a damaged file is reported by name.
    #[test]
    fn large_values_are_kept_in_files() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u64> = (0..100_000).collect();
        let raw: Vec<u8> = (0..(3 * FILE_ABOVE + 5)).map(|i| (i % 251) as u8).collect();
        let files = |tree: &str| {
            std::fs::read_dir(dir.path().join("files").join(tree))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.put(trees::RESULTS, b"r/1", &big).unwrap();
            store.put(trees::RESULTS, b"r/2", &vec![1u64, 2]).unwrap();
            store.put_bytes(trees::CONTEXTS, b"key", &raw).unwrap();
            store.flush().unwrap();
            let blobs = std::fs::read_dir(store.path.join("blobs"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(blobs, 0, "a large value kept for good is no sled blob");
            assert_eq!((files(trees::RESULTS), files(trees::CONTEXTS)), (1, 1));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.get::<Vec<u64>>(trees::RESULTS, b"r/1").unwrap(),
            Some(big.clone())
        );
        assert_eq!(store.get_bytes(trees::CONTEXTS, b"key").unwrap(), Some(raw));
        let all: Vec<(Vec<u8>, Vec<u64>)> = store.scan(trees::RESULTS).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].1, big);

        // Replaced by another large value, then a small one, then removed: no file is left.
        store
            .put(trees::RESULTS, b"r/1", &big[..20_000].to_vec())
            .unwrap();
        assert_eq!(files(trees::RESULTS), 1);
        let back: Vec<u64> = store.get(trees::RESULTS, b"r/1").unwrap().unwrap();
        assert_eq!(back.len(), 20_000);
        store.put(trees::RESULTS, b"r/1", &vec![5u64]).unwrap();
        assert_eq!(files(trees::RESULTS), 0);
        store.remove(trees::CONTEXTS, b"key").unwrap();
        assert_eq!(files(trees::CONTEXTS), 0);
        assert_eq!(store.get_bytes(trees::CONTEXTS, b"key").unwrap(), None);

        // A crash while replacing a large value, after the new file was written and before its
        // manifest was durable: the old value is whole at the next open, and the new file,
        // which no manifest names, is swept.
        store.put(trees::RESULTS, b"r/4", &big).unwrap();
        store.flush().unwrap();
        std::fs::write(
            dir.path().join("files").join(trees::RESULTS).join("00ff"),
            b"x",
        )
        .unwrap();
        assert_eq!(files(trees::RESULTS), 2);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(files(trees::RESULTS), 1);
        assert_eq!(
            store.get::<Vec<u64>>(trees::RESULTS, b"r/4").unwrap(),
            Some(big.clone())
        );
        store.remove(trees::RESULTS, b"r/4").unwrap();
        assert_eq!(files(trees::RESULTS), 0);

        // A raw value that would read as a manifest is refused rather than misread later.
        let lookalike = Manifest {
            generation: 1,
            len: 2,
            digest: [3; 32],
        };
        assert!(store
            .put_bytes(trees::CONTEXTS, b"odd", &lookalike.to_bytes())
            .is_err());

        // Large values of session trees stay in sled (they are removed with their session).
        store.put(trees::SESSIONS, b"s", &big).unwrap();
        assert_eq!(files(trees::SESSIONS), 0);

        // A damaged or missing file is reported, naming the record.
        store.put(trees::RESULTS, b"r/3", &big).unwrap();
        let file = std::fs::read_dir(dir.path().join("files").join(trees::RESULTS))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let e = store.get::<Vec<u64>>(trees::RESULTS, b"r/3").unwrap_err();
        assert!(
            e.to_string().contains("r/3") && e.to_string().contains("digest"),
            "{e}"
        );
        std::fs::remove_file(&file).unwrap();
        let e = store.get::<Vec<u64>>(trees::RESULTS, b"r/3").unwrap_err();
        assert!(e.to_string().contains("r/3"), "{e}");
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
            e.contains("unknown record version 1 (this build reads 6)"),
            "{e}"
        );
    }
}
