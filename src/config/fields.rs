//! How the values that are not plain numbers, booleans or paths are read and written: each
//! reads its text and says, in its own words, why a value does not parse (the loader adds the
//! key and the layer that set it).

use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;

use libp2p::Multiaddr;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

use super::LogFormat;
use crate::crypto::Profile;

fn write_display<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn write_all<T: Display, S: Serializer>(values: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(values.iter().map(|v| v.to_string()))
}

fn parse_profile(text: &str) -> Result<Profile, String> {
    Profile::from_str(text)
        .map_err(|_| format!("unknown profile `{text}`; expected `secure` or `fast`"))
}

/// `p2p.listen` and `p2p.bootstrap`: a list of multiaddrs.
pub mod multiaddrs {
    use super::*;

    pub fn serialize<S: Serializer>(values: &[Multiaddr], s: S) -> Result<S::Ok, S::Error> {
        write_all(values, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Multiaddr>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| {
                Multiaddr::from_str(text.trim()).map_err(|e| {
                    D::Error::custom(format!("`{text}` is not a valid multiaddr: {e}"))
                })
            })
            .collect()
    }
}

/// `api.listen`: an IP address and port.
pub mod socket_addr {
    use super::*;

    pub fn serialize<S: Serializer>(value: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        write_display(value, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        SocketAddr::from_str(text.trim()).map_err(|_| {
            D::Error::custom(format!(
                "`{text}` is not an IP address and port (e.g. `127.0.0.1:8470` or `[::1]:8470`)"
            ))
        })
    }
}

/// `profile`: `secure` or `fast`.
pub mod profile {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Profile, s: S) -> Result<S::Ok, S::Error> {
        write_display(value, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Profile, D::Error> {
        parse_profile(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// `aggregation.allowed_profiles`: a list of profiles.
pub mod profiles {
    use super::*;

    pub fn serialize<S: Serializer>(values: &[Profile], s: S) -> Result<S::Ok, S::Error> {
        write_all(values, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Profile>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| parse_profile(text).map_err(D::Error::custom))
            .collect()
    }
}

/// `log.format`: `pretty` or `json`.
pub mod log_format {
    use super::*;

    pub fn serialize<S: Serializer>(value: &LogFormat, s: S) -> Result<S::Ok, S::Error> {
        write_display(value, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
        LogFormat::from_str(String::deserialize(d)?.trim()).map_err(D::Error::custom)
    }
}
