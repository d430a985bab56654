//! The per-user daily budget of AI provider calls (`AiConfig::user_daily_calls`). Every
//! provider call a user's own request makes — pre-call ideas (by the call that claims the
//! meeting's generation), in-call prompts (a request not answered before), a profile
//! embedding (`embeddings.refreshMine`) — is counted against that user in the mutation that
//! decides to make it, so a refused request asks the provider nothing and writes nothing.
//! Jobs the server runs on its own (post-call insights, refreshes after a profile change,
//! which have their own limit) are not counted.
//!
//! The count is the rate limiter's (`rate_limit`), over a rolling 24 h window that slides in
//! hours, counted exactly in one window document per user (`Counters::Inline`: a user makes a
//! few such calls a minute at most, so contention on it does not matter). A refused call
//! commits nothing, so it cannot be audited where it happens; the call that spends the last
//! call of the budget writes `ai.budgetExhausted` instead (one row per exhaustion, not one per
//! refused call).

use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::obj;
use query_engine::value::Value;

use super::audit;
use super::rate_limit::{check_and_consume_on_grid, Counters, RateLimit};
use crate::ai::AiConfig;

/// The rate limiter's action name of the budget.
pub const ACTION: &str = "ai.providerCalls";
/// The budget's window, and the steps it slides in.
const WINDOW_MS: i64 = 24 * 3_600_000;
const BUCKET_MS: i64 = 3_600_000;

/// Counts one provider call that `user_id`'s call of `function` is about to make, or refuses
/// it. Returns: RATE_LIMITED with `data.reason = "aiBudget"`, `data.retryAfterMs` (until the
/// oldest counted hour leaves the window) and `data.limit`.
pub fn spend(
    ctx: &mut Ctx<'_, '_>,
    config: &AiConfig,
    user_id: &str,
    function: &str,
) -> FunctionResult<()> {
    let limit = RateLimit {
        max: config.user_daily_calls,
        window_ms: WINDOW_MS,
    };
    let counted =
        check_and_consume_on_grid(ctx, user_id, ACTION, limit, Counters::Inline, BUCKET_MS);
    let left = match counted {
        Ok(left) => left,
        Err(e) if e.code == ErrorCode::RateLimited.as_str() => {
            let retry_after_ms = e
                .data
                .get_path("retryAfterMs")
                .and_then(Value::as_i64)
                .unwrap_or(BUCKET_MS);
            return Err(ErrorCode::RateLimited.err_with(
                format!(
                    "daily AI budget used up: {} provider calls per 24 h",
                    limit.max
                ),
                obj! {
                    "reason" => "aiBudget",
                    "retryAfterMs" => retry_after_ms,
                    "limit" => limit.max,
                },
            ));
        }
        Err(e) => return Err(e),
    };
    if left == 0 {
        audit::record(
            ctx,
            Some(user_id),
            "user",
            user_id,
            "ai.budgetExhausted",
            obj! { "limit" => limit.max, "function" => function },
        )?;
    }
    Ok(())
}
