//! Binds each profile to its torus width and caches the ring plan (immutable, shared).

use std::sync::OnceLock;

use super::params::Profile;
use super::ring::{BinaryRing, Torus};

pub(crate) trait ProfileTorus: Torus {
    const PROFILE: Profile;
    fn ring() -> &'static BinaryRing<Self>;
}

impl ProfileTorus for u128 {
    const PROFILE: Profile = Profile::Secure;
    fn ring() -> &'static BinaryRing<Self> {
        static RING: OnceLock<BinaryRing<u128>> = OnceLock::new();
        RING.get_or_init(|| {
            BinaryRing::new(Self::PROFILE.params().ring_dim)
                .expect("profile ring size is supported")
        })
    }
}

impl ProfileTorus for u64 {
    const PROFILE: Profile = Profile::Fast;
    fn ring() -> &'static BinaryRing<Self> {
        static RING: OnceLock<BinaryRing<u64>> = OnceLock::new();
        RING.get_or_init(|| {
            BinaryRing::new(Self::PROFILE.params().ring_dim)
                .expect("profile ring size is supported")
        })
    }
}
