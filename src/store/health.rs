//! Whether the store can take writes: the free space of its disk against
//! `store.min_free_bytes`, checked before work that would write, and the outcome of the latest
//! write, which `/readyz` reports. A write that fails marks the store failing; the next one that
//! succeeds (space came back) marks it healthy again, with nothing to restart.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// What went wrong with the store, as far as a caller can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The disk is full, or below `store.min_free_bytes`: retry once space is freed (507).
    NoSpace,
    /// Reading or writing failed otherwise (an I/O error): retry later (503).
    Failing,
    /// A record cannot be read or encoded: retrying will not help (500).
    Corrupt,
}

/// A store failure as the actors report it, by what a caller can do about it: the one
/// variant of `SessionError` and `InferenceActorError` that carries a store's failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreFailure {
    /// [`FailureKind::NoSpace`]: `insufficient_storage`.
    #[error("{0}")]
    NoSpace(String),
    /// [`FailureKind::Failing`]: `store_unavailable`.
    #[error("the store is failing: {0}")]
    Failing(String),
    /// [`FailureKind::Corrupt`]: `store`.
    #[error("storage: {0}")]
    Corrupt(String),
}

impl StoreFailure {
    /// The stable code it answers with.
    pub fn code(&self) -> &'static str {
        match self {
            StoreFailure::NoSpace(_) => "insufficient_storage",
            StoreFailure::Failing(_) => "store_unavailable",
            StoreFailure::Corrupt(_) => "store",
        }
    }
}

impl From<super::StoreError> for StoreFailure {
    fn from(e: super::StoreError) -> Self {
        match e.kind() {
            FailureKind::NoSpace => StoreFailure::NoSpace(e.to_string()),
            FailureKind::Failing => StoreFailure::Failing(e.to_string()),
            FailureKind::Corrupt => StoreFailure::Corrupt(e.to_string()),
        }
    }
}

impl From<sled::Error> for StoreFailure {
    fn from(e: sled::Error) -> Self {
        super::StoreError::Sled(e).into()
    }
}

/// ENOSPC and EDQUOT: the disk, or the owner's quota on it, is full.
pub(super) fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}

#[derive(Debug, Default)]
pub(super) struct Health {
    min_free_bytes: AtomicU64,
    failing: AtomicBool,
    /// Some write failed for want of space since writes last succeeded.
    failed_for_space: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// The store's state as `/readyz` and `/v1/status` report it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StoreHealth {
    /// Whether the latest write succeeded.
    pub writable: bool,
    /// Free bytes on the store's disk (absent when they cannot be read).
    pub free_bytes: Option<u64>,
    /// `store.min_free_bytes`: below it, new work that writes is refused.
    pub min_free_bytes: u64,
    /// The latest write error, while writes fail.
    pub last_error: Option<String>,
}

impl StoreHealth {
    /// Writes succeed and the disk has room.
    pub fn is_healthy(&self) -> bool {
        self.writable
            && self
                .free_bytes
                .is_none_or(|free| free >= self.min_free_bytes)
    }
}

impl Health {
    pub(super) fn set_min_free_bytes(&self, bytes: u64) {
        self.min_free_bytes.store(bytes, Ordering::Relaxed);
    }

    pub(super) fn min_free_bytes(&self) -> u64 {
        self.min_free_bytes.load(Ordering::Relaxed)
    }

    /// Records a write's outcome: only I/O failures mark the store failing (a record that
    /// does not encode says nothing about the disk).
    pub(super) fn note<T>(
        &self,
        result: Result<T, super::StoreError>,
    ) -> Result<T, super::StoreError> {
        match &result {
            Ok(_) => {
                self.failed_for_space.store(false, Ordering::Release);
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("store writes succeed again");
                    if let Ok(mut last) = self.last_error.lock() {
                        *last = None;
                    }
                }
            }
            Err(e) if e.kind() != FailureKind::Corrupt => {
                if e.kind() == FailureKind::NoSpace {
                    self.failed_for_space.store(true, Ordering::Release);
                }
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, "a store write failed; the node reports itself not ready until one succeeds");
                }
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Whether writes fail and one of them failed for want of space: the failure that space
    /// coming back can mend.
    pub(super) fn failed_for_space(&self) -> bool {
        self.failing.load(Ordering::Acquire) && self.failed_for_space.load(Ordering::Acquire)
    }

    pub(super) fn report(&self, path: &Path) -> StoreHealth {
        StoreHealth {
            writable: !self.failing.load(Ordering::Acquire),
            free_bytes: free_bytes(path),
            min_free_bytes: self.min_free_bytes(),
            last_error: self.last_error.lock().ok().and_then(|l| l.clone()),
        }
    }
}

/// Free bytes, for this process, on the disk holding `path`.
pub(super) fn free_bytes(path: &Path) -> Option<u64> {
    fs4::available_space(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_keeps_its_kind_code_and_words() {
        let full = StoreFailure::NoSpace("the disk is full".into());
        assert_eq!(
            (full.code(), full.to_string().as_str()),
            ("insufficient_storage", "the disk is full")
        );
        let failing = StoreFailure::Failing("I/O error".into());
        assert_eq!(failing.code(), "store_unavailable");
        assert_eq!(failing.to_string(), "the store is failing: I/O error");
        let corrupt = StoreFailure::Corrupt("bad record".into());
        assert_eq!(
            (corrupt.code(), corrupt.to_string().as_str()),
            ("store", "storage: bad record")
        );
    }
}
