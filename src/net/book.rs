//! The network actor's side of the address book ([`crate::store::peers`]): the peers to
//! redial at start, and the writes of addresses learnt since, off the executor and without
//! blocking the swarm (a write that fails, say on a full disk, is logged and learnt again
//! from the next connection).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::store::peers::PeerBook;

/// A peer whose addresses did not change is recorded again (its `last_seen` refreshed) at
/// most this often.
const REFRESH_EVERY: Duration = Duration::from_secs(3600);
/// Writes in flight at most; more are skipped (and made at the peer's next identify).
const WRITES_IN_FLIGHT: usize = 8;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) struct AddressBook {
    book: Option<PeerBook>,
    /// What was last written per peer, and when.
    recorded: HashMap<PeerId, (Vec<String>, Instant)>,
    pub(super) writes: JoinSet<()>,
}

impl AddressBook {
    pub(super) fn new(book: Option<PeerBook>) -> Self {
        AddressBook {
            book,
            recorded: HashMap::new(),
            writes: JoinSet::new(),
        }
    }

    /// The peers to redial at start with their addresses; unreadable entries are skipped.
    pub(super) fn known(&self) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let Some(book) = &self.book else {
            return Vec::new();
        };
        let loaded = match book.load(now_secs()) {
            Ok(loaded) => loaded,
            Err(e) => {
                warn!(error = %e, "cannot read the address book; starting without it");
                return Vec::new();
            }
        };
        loaded
            .into_iter()
            .filter_map(|(peer, record)| {
                let peer: PeerId = peer.parse().ok()?;
                let addresses: Vec<Multiaddr> = record
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect();
                (!addresses.is_empty()).then_some((peer, addresses))
            })
            .collect()
    }

    /// Records `peer`'s listen addresses, when they changed or were last written long ago.
    pub(super) fn seen(&mut self, peer: PeerId, addresses: &[Multiaddr]) {
        let Some(book) = &self.book else { return };
        let mut texts: Vec<String> = addresses
            .iter()
            .filter(|a| is_dialable(a))
            .map(|a| a.to_string())
            .collect();
        texts.sort();
        texts.dedup();
        if texts.is_empty() {
            return;
        }
        if let Some((last, at)) = self.recorded.get(&peer) {
            if *last == texts && at.elapsed() < REFRESH_EVERY {
                return;
            }
        }
        if self.writes.len() >= WRITES_IN_FLIGHT {
            debug!(%peer, "address book busy; its addresses wait for the next identify");
            return;
        }
        self.recorded.insert(peer, (texts.clone(), Instant::now()));
        let book = book.clone();
        self.writes.spawn_blocking(move || {
            if let Err(e) = book.record(&peer.to_string(), &texts, now_secs()) {
                warn!(%peer, error = %e, "cannot record the peer's addresses");
            }
        });
    }
}

/// An address another node could dial: not an unspecified (0.0.0.0, ::) or relayed one.
fn is_dialable(addr: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        Protocol::P2pCircuit => false,
        _ => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_and_relayed_addresses_are_not_recorded() {
        let ok: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let any: Multiaddr = "/ip4/0.0.0.0/tcp/4001".parse().unwrap();
        let quic: Multiaddr = "/ip6/::1/udp/4001/quic-v1".parse().unwrap();
        assert!(is_dialable(&ok));
        assert!(is_dialable(&quic));
        assert!(!is_dialable(&any));
    }

    #[tokio::test]
    async fn addresses_are_written_once_until_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let mut book = AddressBook::new(Some(PeerBook::new(store)));
        let peer = PeerId::random();
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let b: Multiaddr = "/ip4/127.0.0.1/tcp/4002".parse().unwrap();
        book.seen(peer, std::slice::from_ref(&a));
        book.seen(peer, std::slice::from_ref(&a));
        assert_eq!(
            book.writes.len(),
            1,
            "an unchanged address is not written again"
        );
        while book.writes.join_next().await.is_some() {}
        book.seen(peer, &[a.clone(), b.clone()]);
        while book.writes.join_next().await.is_some() {}
        assert_eq!(book.known(), vec![(peer, vec![a, b])]);
    }
}
