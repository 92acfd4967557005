//! The names of the parameter profiles and of the rounding modes; their numbers are in
//! [`crate::crypto::kahe::params`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use super::CryptoError;

/// A named parameter set, recorded in every key and ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Ring dimension 4096: about 59 bits of margin over the 128-bit estimate. The default.
    #[default]
    Secure,
    /// Ring dimension 2048: the dimension, modulus size and noise of tfhe's compact public-key
    /// parameters, 4.5 bits of margin (`docs/CRYPTO.md` A.4).
    Fast,
}

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::Secure, Profile::Fast];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Secure => "secure",
            Profile::Fast => "fast",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "secure" => Ok(Profile::Secure),
            "fast" => Ok(Profile::Fast),
            other => Err(CryptoError::InvalidParams(format!(
                "unknown profile {other:?}; supported: secure, fast"
            ))),
        }
    }
}

/// How floats are rounded to fixed point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    /// Round to nearest: error ≤ 2^-(frac_bits+1) per value, deterministic.
    #[default]
    Nearest,
    /// Unbiased stochastic rounding: error < 2^-frac_bits per value, zero mean.
    Stochastic,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(p.name().parse::<Profile>().unwrap(), p);
        }
        assert!("ckks".parse::<Profile>().is_err());
    }
}
