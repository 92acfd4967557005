//! The phases of a session, as the coordinator's machine moves through them and every node
//! reports them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Ordered as a session moves through them (`Failed` last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(utoipa::ToSchema)]
pub enum Phase {
    /// Created; the plan is being delivered to the committee.
    Proposed,
    /// Participants deliver seeds and submit encrypted updates.
    Collecting,
    /// Collecting is over; the members say which seeds they hold.
    Closing,
    /// S and T are fixed; the members release their keys.
    Decrypting,
    Done,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Proposed,
        Phase::Collecting,
        Phase::Closing,
        Phase::Decrypting,
        Phase::Done,
        Phase::Failed,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Proposed => "proposed",
            Phase::Collecting => "collecting",
            Phase::Closing => "closing",
            Phase::Decrypting => "decrypting",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
