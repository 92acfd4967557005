//! The address book: the listen addresses of the fhenode peers this node has met, kept so
//! that a restarted node redials them at once instead of waiting to be found (a node started
//! without `--bootstrap`, the first node of a network, would otherwise be cut off until a
//! peer happened to dial it).
//!
//! Records `peers/{peer id}` → [`KnownPeer`].

use serde::{Deserialize, Serialize};

use super::{trees, Store, StoreError};

/// Peers redialled at start, the most recently seen first.
pub const REDIAL_AT_MOST: usize = 64;
/// Peers kept in the book; the least recently seen beyond this are forgotten.
pub const KEEP_AT_MOST: usize = 512;
/// Addresses kept per peer.
pub const ADDRESSES_PER_PEER: usize = 8;
/// A peer not seen for this long is forgotten (thirty days).
pub const FORGET_AFTER_SECS: u64 = 30 * 24 * 3600;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeer {
    /// Multiaddresses as text: the record does not depend on libp2p's encoding of them.
    pub addresses: Vec<String>,
    /// When the peer last told us its addresses, in seconds since the Unix epoch.
    pub last_seen_secs: u64,
}

/// The book, over the node's store.
#[derive(Clone, Debug)]
pub struct PeerBook {
    store: Store,
}

impl PeerBook {
    pub fn new(store: Store) -> Self {
        PeerBook { store }
    }

    /// The peers worth redialling now, the most recently seen first, at most
    /// [`REDIAL_AT_MOST`]; records past [`FORGET_AFTER_SECS`] or beyond [`KEEP_AT_MOST`] are
    /// removed on the way, and unreadable ones skipped.
    pub fn load(&self, now_secs: u64) -> Result<Vec<(String, KnownPeer)>, StoreError> {
        let mut known = Vec::new();
        for (key, record) in self
            .store
            .scan_prefix_each::<KnownPeer>(trees::PEERS, b"")?
        {
            match record {
                Ok(peer) => known.push((String::from_utf8_lossy(&key).into_owned(), peer)),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable address-book record");
                    self.store.remove(trees::PEERS, &key)?;
                }
            }
        }
        known.sort_by_key(|(_, peer)| std::cmp::Reverse(peer.last_seen_secs));
        let mut kept = Vec::new();
        for (index, (peer, record)) in known.into_iter().enumerate() {
            let stale = now_secs.saturating_sub(record.last_seen_secs) > FORGET_AFTER_SECS;
            if stale || index >= KEEP_AT_MOST {
                self.store.remove(trees::PEERS, peer.as_bytes())?;
            } else {
                kept.push((peer, record));
            }
        }
        kept.truncate(REDIAL_AT_MOST);
        Ok(kept)
    }

    /// Records `peer`'s addresses (the first [`ADDRESSES_PER_PEER`]) as seen at `now_secs`.
    /// Not flushed: an address lost to a crash is learnt again from the next connection.
    pub fn record(
        &self,
        peer: &str,
        addresses: &[String],
        now_secs: u64,
    ) -> Result<(), StoreError> {
        let record = KnownPeer {
            addresses: addresses.iter().take(ADDRESSES_PER_PEER).cloned().collect(),
            last_seen_secs: now_secs,
        };
        self.store.put(trees::PEERS, peer.as_bytes(), &record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_come_back_most_recent_first_and_stale_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let book = PeerBook::new(Store::open(dir.path()).unwrap());
        let now = 10 * FORGET_AFTER_SECS;
        let addrs = |n: usize| -> Vec<String> {
            (0..n)
                .map(|i| format!("/ip4/127.0.0.1/tcp/{}", 4000 + i))
                .collect()
        };
        book.record("old", &addrs(1), now - FORGET_AFTER_SECS - 1)
            .unwrap();
        book.record("recent", &addrs(20), now - 5).unwrap();
        book.record("latest", &addrs(2), now).unwrap();
        let loaded = book.load(now).unwrap();
        let names: Vec<&str> = loaded.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["latest", "recent"]);
        assert_eq!(loaded[1].1.addresses.len(), ADDRESSES_PER_PEER);
        assert_eq!(loaded[0].1.addresses, addrs(2));
        // The stale record is gone for good, not only skipped.
        assert_eq!(book.load(now).unwrap().len(), 2);
        assert!(book
            .store
            .get::<KnownPeer>(trees::PEERS, b"old")
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_book_keeps_a_bounded_number_of_peers() {
        let dir = tempfile::tempdir().unwrap();
        let book = PeerBook::new(Store::open(dir.path()).unwrap());
        for i in 0..(KEEP_AT_MOST + 3) {
            book.record(&format!("peer-{i:04}"), &[], 1000 + i as u64)
                .unwrap();
        }
        let loaded = book.load(2000).unwrap();
        assert_eq!(loaded.len(), REDIAL_AT_MOST);
        assert_eq!(loaded[0].0, format!("peer-{:04}", KEEP_AT_MOST + 2));
        assert_eq!(
            book.store.scan::<KnownPeer>(trees::PEERS).unwrap().len(),
            KEEP_AT_MOST
        );
    }
}
