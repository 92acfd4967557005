//! The range and shape checks of [`Config::validate`]: every error names its key.

use std::collections::HashSet;
use std::str::FromStr;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use super::*;

impl Config {
    /// Checks every value against its documented range; [`load`] calls it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }

        let p2p = &self.p2p;
        if p2p.listen.is_empty() {
            return Err(invalid("p2p.listen", "must contain at least one address"));
        }
        let mut seen = HashSet::new();
        for addr in &p2p.listen {
            check_transport(addr, true).map_err(|why| {
                invalid(
                    "p2p.listen",
                    format!("`{addr}` is not a listen address: {why}"),
                )
            })?;
            if !seen.insert(addr) {
                return Err(invalid("p2p.listen", format!("`{addr}` is listed twice")));
            }
        }
        for addr in &p2p.bootstrap {
            check_bootstrap(addr).map_err(|why| {
                invalid(
                    "p2p.bootstrap",
                    format!("`{addr}` is not a bootstrap address: {why}"),
                )
            })?;
        }
        check_range(
            "p2p.max_request_bytes",
            p2p.max_request_bytes as u64,
            1,
            MAX_MESSAGE_BYTES_LIMIT,
        )?;
        check_range(
            "p2p.max_response_bytes",
            p2p.max_response_bytes as u64,
            1,
            MAX_MESSAGE_BYTES_LIMIT,
        )?;
        check_range(
            "p2p.max_gossip_bytes",
            p2p.max_gossip_bytes as u64,
            1,
            MAX_GOSSIP_BYTES_LIMIT,
        )?;
        check_range(
            "p2p.max_connections",
            p2p.max_connections.into(),
            1,
            u32::MAX.into(),
        )?;
        check_range(
            "p2p.max_connections_per_peer",
            p2p.max_connections_per_peer.into(),
            1,
            p2p.max_connections.into(),
        )?;
        check_range(
            "aggregation.min_contributors_floor",
            self.aggregation.min_contributors_floor.into(),
            1,
            1024,
        )?;
        check_range(
            "aggregation.max_sessions_per_peer",
            self.aggregation.max_sessions_per_peer.into(),
            1,
            1 << 20,
        )?;
        check_range(
            "aggregation.max_pending_bytes",
            self.aggregation.max_pending_bytes,
            MIB as u64,
            u64::MAX,
        )?;
        check_range(
            "aggregation.expire_grace_secs",
            self.aggregation.expire_grace_secs,
            0,
            crate::session::spec::MAX_DEADLINE_SECS,
        )?;
        check_range(
            "aggregation.plans_per_minute_per_peer",
            self.aggregation.plans_per_minute_per_peer.into(),
            1,
            1 << 20,
        )?;
        if self.aggregation.allowed_profiles.is_empty() {
            return Err(invalid(
                "aggregation.allowed_profiles",
                "must name at least one profile",
            ));
        }
        check_range(
            "p2p.request_timeout_secs",
            p2p.request_timeout_secs,
            1,
            MAX_REQUEST_TIMEOUT_SECS,
        )?;
        check_range(
            "p2p.unreachable_after_secs",
            p2p.unreachable_after_secs,
            1,
            MAX_UNREACHABLE_AFTER_SECS,
        )?;
        check_range(
            "p2p.idle_timeout_secs",
            p2p.idle_timeout_secs,
            1,
            MAX_IDLE_TIMEOUT_SECS,
        )?;

        let api = &self.api;
        match &api.token {
            None if !api.is_loopback() => {
                return Err(invalid(
                    "api.token",
                    format!(
                        "required when api.listen ({}) is not a loopback address",
                        api.listen
                    ),
                ));
            }
            None => {}
            Some(token) => check_token(token.expose()).map_err(|why| invalid("api.token", why))?,
        }
        check_range(
            "api.max_body_bytes",
            api.max_body_bytes as u64,
            1,
            MAX_BODY_BYTES_LIMIT,
        )?;
        check_range(
            "api.sessions_per_minute",
            api.sessions_per_minute.into(),
            1,
            1 << 20,
        )?;

        let inference = &self.inference;
        check_range(
            "inference.workers",
            inference.workers as u64,
            1,
            MAX_INFERENCE_WORKERS,
        )?;
        if inference.memory_budget_bytes == 0 {
            return Err(invalid(
                "inference.memory_budget_bytes",
                "must be at least 1 byte (a budget below the evaluation key's size refuses \
                 every mlp evaluation, linear ones need none)",
            ));
        }

        check_log_level(&self.log.level)?;
        EnvFilter::try_new(&self.log.level).map_err(|e| {
            invalid(
                "log.level",
                format!("`{}` is not a valid filter directive: {e}", self.log.level),
            )
        })?;
        Ok(())
    }
}

fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            key,
            format!("{value} is out of range; expected {min} to {max}"),
        ));
    }
    Ok(())
}

/// `/ip4|ip6/<addr>` followed by `/tcp/<port>` or `/udp/<port>/quic-v1`, and nothing else
/// unless `exact` is false, in which case the remaining components are returned.
fn check_transport(addr: &Multiaddr, exact: bool) -> Result<Vec<Protocol<'_>>, String> {
    let mut parts = addr.iter();
    match parts.next() {
        Some(Protocol::Ip4(_)) | Some(Protocol::Ip6(_)) => {}
        _ => return Err("it must start with /ip4/<address> or /ip6/<address>".to_owned()),
    }
    match parts.next() {
        Some(Protocol::Tcp(_)) => {}
        Some(Protocol::Udp(_)) if matches!(parts.next(), Some(Protocol::QuicV1)) => {}
        _ => {
            return Err(
                "the address must be followed by /tcp/<port> or /udp/<port>/quic-v1".to_owned(),
            )
        }
    }
    let rest: Vec<Protocol<'_>> = parts.collect();
    if exact && !rest.is_empty() {
        return Err("nothing may follow /tcp/<port> or /udp/<port>/quic-v1".to_owned());
    }
    Ok(rest)
}

fn check_bootstrap(addr: &Multiaddr) -> Result<(), String> {
    let rest = check_transport(addr, false)?;
    if !matches!(rest.as_slice(), [Protocol::P2p(_)]) {
        return Err("it must end with /p2p/<peer id>".to_owned());
    }
    for part in addr.iter() {
        match part {
            Protocol::Ip4(ip) if ip.is_unspecified() => {
                return Err("0.0.0.0 cannot be dialled".to_owned())
            }
            Protocol::Ip6(ip) if ip.is_unspecified() => {
                return Err(":: cannot be dialled".to_owned())
            }
            Protocol::Tcp(0) | Protocol::Udp(0) => {
                return Err("port 0 cannot be dialled".to_owned())
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_token(token: &str) -> Result<(), String> {
    if token == REDACTED {
        return Err(format!(
            "`{REDACTED}` is the placeholder of a redacted dump, not a token"
        ));
    }
    if token.chars().count() < MIN_TOKEN_LEN {
        return Err(format!("must be at least {MIN_TOKEN_LEN} characters long"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must consist of printable ASCII characters without spaces (it is sent in an HTTP header)"
                .to_owned(),
        );
    }
    Ok(())
}

/// `EnvFilter` reads a bare word as a target with every level enabled, so `level = "warning"`
/// would silence everything but a target named `warning`; bare words must be levels.
pub(super) fn check_log_level(level: &str) -> Result<(), ConfigError> {
    if level.trim().is_empty() {
        return Err(invalid("log.level", "must not be empty"));
    }
    for directive in level.split(',').map(str::trim) {
        if directive.is_empty() || directive.contains(['=', '[']) || directive.contains("::") {
            continue;
        }
        if LevelFilter::from_str(directive).is_err() {
            return Err(invalid(
                "log.level",
                format!(
                    "`{directive}` is not a level (trace, debug, info, warn, error, off); \
                     write `{directive}=<level>` to filter by target"
                ),
            ));
        }
    }
    Ok(())
}
