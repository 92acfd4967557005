//! The API's rate limit on creating sessions and series (`api.sessions_per_minute`): a
//! client, or anything that reached the API, cannot make the node coordinate sessions faster
//! than the operator allows. Every creation attempt counts, a refused one included.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::ApiError;

pub struct CreationLimit {
    limiter: DefaultDirectRateLimiter,
    per_minute: u32,
}

impl CreationLimit {
    /// `per_minute` creations a minute, in bursts of as many (0 is taken as 1).
    pub fn per_minute(per_minute: u32) -> Self {
        let n = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        CreationLimit {
            limiter: RateLimiter::direct(Quota::per_minute(n)),
            per_minute: n.get(),
        }
    }

    /// Takes one creation, or refuses with 429 `rate_limited`, saying when to try again.
    pub fn take(&self) -> Result<(), ApiError> {
        self.limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let secs = wait.max(Duration::from_secs(1)).as_secs_f64().ceil() as u64;
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this node creates at most {} sessions a minute (api.sessions_per_minute); \
                     try again in {secs} s",
                    self.per_minute
                ),
            )
            .retry_after(secs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_over_the_limit_is_refused_with_when_to_try_again() {
        let limit = CreationLimit::per_minute(3);
        for _ in 0..3 {
            limit.take().unwrap();
        }
        let refused = limit.take().unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.code, "rate_limited");
        // One creation comes back every 20 s.
        assert!(
            matches!(refused.retry_after_secs, Some(1..=20)),
            "{refused:?}"
        );
    }
}
