//! Intelligent matching (seed §11, §21, §24): users wait in `matchingQueue` with an
//! availability window and constraints; sharded cycles pair compatible users by score and
//! matched users record outcomes in `matchingAnalytics`.
//!
//! - `queue`: enter / leave / status (public, gated by the `matching` flag).
//! - `respond`: the matched users' outcomes and feedback (public).
//! - `parties`: what matching reads about an entry's user; `eligibility`: the hard
//!   constraints; `scoring`: the signals and the score; `pairing`: blocking and greedy
//!   pairing — the last three pure.
//! - `cycle`: the internal cycle, commit, expiry and purge, and the cron that drives them.

pub mod cycle;
pub mod eligibility;
pub mod match_id;
pub mod pairing;
pub mod parties;
pub mod queue;
pub mod respond;
pub mod scoring;

use std::sync::Arc;

use linkedup_schema::api::matching::MatchWeights;
use query_engine::functions::Functions;

use super::{LinkedUpConfig, RateLimit};
use eligibility::Rules;
pub use scoring::RoleComplements;

/// The feature flag that gates matching.
pub const FLAG: &str = "matching";

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

/// Matching settings. The defaults need no configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct MatchingConfig {
    pub weights: MatchWeights,
    /// Least score, in [0, 1], a pair needs to be matched.
    pub min_score: f64,
    /// Least time two windows must share, from now on.
    pub min_meeting_ms: i64,
    /// Two users who both list languages must share one.
    pub require_shared_language: bool,
    /// How long a declined match keeps the pair apart.
    pub decline_cooldown_ms: i64,
    /// The roles users may give and which complement which.
    pub roles: RoleComplements,
    /// Shards the cron splits each cycle into (1..=64).
    pub shards: u32,
    /// Most waiting entries one cycle reads (most urgent first).
    pub max_entries_per_cycle: usize,
    /// Most candidates one user is compared with per cycle.
    pub max_candidates_per_user: usize,
    /// `matching.enterQueue` calls per user.
    pub enter_rate_limit: RateLimit,
    /// How long finished entries are kept after their window ended.
    pub queue_retention_ms: i64,
}

impl Default for MatchingConfig {
    fn default() -> Self {
        MatchingConfig {
            weights: MatchWeights {
                interests: 0.35,
                roles: 0.2,
                languages: 0.15,
                vector: 0.3,
            },
            min_score: 0.25,
            min_meeting_ms: 30 * MINUTE_MS,
            require_shared_language: true,
            decline_cooldown_ms: 30 * DAY_MS,
            roles: RoleComplements::default(),
            shards: 4,
            max_entries_per_cycle: 2_000,
            max_candidates_per_user: 32,
            enter_rate_limit: RateLimit {
                max: 20,
                window_ms: MINUTE_MS,
            },
            queue_retention_ms: 90 * DAY_MS,
        }
    }
}

impl MatchingConfig {
    /// The settings the hard constraints depend on.
    pub fn rules(&self) -> Rules {
        Rules {
            min_meeting_ms: self.min_meeting_ms,
            require_shared_language: self.require_shared_language,
        }
    }
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    queue::register(f, config);
    respond::register(f, config);
    cycle::register(f, config);
}
