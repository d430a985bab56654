//! The AI settings of the LinkedUp functions (`AiConfig`, in `LinkedUpConfig::ai`) and how
//! the server builds them from its options (`--ai-*`, `LINKEDUP_AI_*`, the config file). The
//! default is the local provider: no configuration, no network.

use std::sync::Arc;
use std::time::Duration;

use query_engine::engine::ActionCtx;
use tokio::time::Instant;

use super::openai::{OpenAiProvider, OpenAiSettings};
use super::AiService;
use crate::config::{at_most, ConfigError, Options};
use crate::linkedup::RateLimit;

/// What the AI functions use and how hard they may use it.
#[derive(Clone, Debug)]
pub struct AiConfig {
    /// The configured provider, with validation and the local fallback.
    pub service: AiService,
    /// At most one in-call generation per meeting per this many ms (seed §13: throttling of
    /// in-call prompt generation), so load cannot fan out into provider calls.
    pub in_call_interval_ms: i64,
    /// Attempts at a participant's insight with the configured provider (one per scheduled
    /// run) before the local heuristics write it.
    pub insight_attempts: u32,
    /// Wait before the first retry of a failed insight; doubled per further attempt.
    pub insight_retry_delay_ms: i64,
    /// A meeting's insight generation whose latest run was due this long ago without a next
    /// one is restarted by `insights.resumeStalled`; longer than a run may take (an action
    /// runs at most 60 s) and than the scheduler's backlog usually delays one.
    pub insight_stall_ms: i64,
    /// `embeddings.refreshMine` calls per user.
    pub refresh_limit: RateLimit,
    /// Provider calls a user's own requests may make in 24 h (pre-call ideas, in-call
    /// prompts, `embeddings.refreshMine`; see `linkedup::ai_budget`).
    pub user_daily_calls: i64,
    /// How long a call's claim on generating prompts (`linkedup::prompts`) holds: longer than
    /// an action may run (60 s), so it lapses only when the claiming call has died.
    pub generation_lease_ms: i64,
    /// How long a call waits for the same generation another call is making before it
    /// answers CONFLICT (`generationInProgress`); below the action time limit.
    pub generation_wait_ms: i64,
    /// How long before its action's time limit a provider call must end, whatever is left of
    /// its own (`openai::MAX_CALL_TIME`): the time the action needs afterwards to store the
    /// answer, or to fall back to the local heuristics and store theirs
    /// (`provider_deadline`).
    pub store_margin_ms: i64,
}

impl Default for AiConfig {
    fn default() -> Self {
        AiConfig {
            service: AiService::default(),
            in_call_interval_ms: 10_000,
            insight_attempts: 3,
            insight_retry_delay_ms: 5_000,
            insight_stall_ms: 10 * 60_000,
            refresh_limit: RateLimit {
                max: 10,
                window_ms: 600_000,
            },
            // A busy day: a dozen meetings with in-call prompts every few minutes.
            user_daily_calls: 200,
            generation_lease_ms: 90_000,
            generation_wait_ms: 30_000,
            store_margin_ms: 5_000,
        }
    }
}

/// Bounds of the numeric options.
const MIN_TIMEOUT_MS: u64 = 100;
const MAX_TIMEOUT_MS: u64 = 60_000;
const MAX_RETRIES: u32 = 5;
const MAX_IN_CALL_INTERVAL_MS: u64 = 3_600_000;
const MAX_USER_DAILY_CALLS: u64 = 1_000_000;

impl AiConfig {
    /// When a provider call the action `ctx` makes must end: `store_margin_ms` before the
    /// engine stops the action (now, if that is sooner).
    pub fn provider_deadline(&self, ctx: &ActionCtx) -> Instant {
        let margin = Duration::from_millis(u64::try_from(self.store_margin_ms).unwrap_or(0));
        ctx.deadline()
            .checked_sub(margin)
            .unwrap_or_else(Instant::now)
    }

    /// The provider `--ai-provider` names (default: `openai` when an API key is set, else
    /// `local`) with its settings.
    pub fn from_options(o: &Options) -> Result<AiConfig, ConfigError> {
        let invalid =
            |name: &'static str, value: String, reason: &'static str| ConfigError::Invalid {
                name,
                value,
                reason,
            };
        let mut config = AiConfig::default();
        if let Some(ms) = o.ai_in_call_interval_ms {
            let ms = at_most(
                "ai-in-call-interval-ms",
                ms,
                MAX_IN_CALL_INTERVAL_MS,
                "must be at most 3600000 (an hour)",
            )?;
            config.in_call_interval_ms = ms as i64;
        }
        if let Some(n) = o.ai_daily_calls_per_user {
            if !(1..=MAX_USER_DAILY_CALLS).contains(&n) {
                return Err(invalid(
                    "ai-daily-calls-per-user",
                    n.to_string(),
                    "must be 1 to 1000000",
                ));
            }
            config.user_daily_calls = n as i64;
        }
        let provider = match o.ai_provider.as_deref() {
            Some(p) => p,
            None if o.ai_api_key.is_some() => "openai",
            None => "local",
        };
        match provider {
            "local" => return Ok(config),
            "openai" => {}
            other => {
                return Err(invalid(
                    "ai-provider",
                    other.to_string(),
                    "must be local or openai",
                ))
            }
        }
        let key = o
            .ai_api_key
            .clone()
            .filter(|k| !k.expose().trim().is_empty())
            .ok_or_else(|| {
                invalid(
                    "ai-api-key",
                    String::new(),
                    "is required for the openai provider",
                )
            })?;
        let base = o
            .ai_base_url
            .clone()
            .unwrap_or_else(|| OpenAiSettings::DEFAULT_BASE_URL.to_string());
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(invalid("ai-base-url", base, "must be an http(s) URL"));
        }
        let mut settings = OpenAiSettings::new(base, key);
        for (name, given, slot) in [
            ("ai-chat-model", &o.ai_chat_model, &mut settings.chat_model),
            (
                "ai-embedding-model",
                &o.ai_embedding_model,
                &mut settings.embedding_model,
            ),
        ] {
            if let Some(model) = given {
                if model.trim().is_empty() {
                    return Err(invalid(name, model.clone(), "must not be empty"));
                }
                *slot = model.trim().to_string();
            }
        }
        if let Some(ms) = o.ai_timeout_ms {
            if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&ms) {
                return Err(invalid(
                    "ai-timeout-ms",
                    ms.to_string(),
                    "must be 100 to 60000",
                ));
            }
            settings.request_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = o.ai_max_retries {
            settings.max_retries = at_most("ai-max-retries", n, MAX_RETRIES, "must be at most 5")?;
        }
        let provider = OpenAiProvider::new(settings).map_err(|detail| {
            tracing::error!(%detail, "building the AI provider");
            invalid(
                "ai-provider",
                "openai".into(),
                "its HTTP client could not be built",
            )
        })?;
        config.service = AiService::new(Arc::new(provider));
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;

    fn options(args: &[&str]) -> Options {
        Cli::try_parse_from(std::iter::once("linkedup-server").chain(args.iter().copied()))
            .unwrap()
            .options
    }

    #[test]
    fn the_default_is_the_local_provider() {
        let c = AiConfig::from_options(&options(&[])).unwrap();
        assert_eq!(c.service.provider_name(), "local");
    }

    #[test]
    fn a_key_selects_openai_and_its_settings_are_checked() {
        let c = AiConfig::from_options(&options(&[
            "--ai-api-key",
            "sk-test",
            "--ai-base-url",
            "http://127.0.0.1:9/v1",
            "--ai-in-call-interval-ms",
            "2500",
            "--ai-daily-calls-per-user",
            "40",
        ]))
        .unwrap();
        assert_eq!(c.service.provider_name(), "openai");
        assert_eq!(c.in_call_interval_ms, 2_500);
        assert_eq!(c.user_daily_calls, 40);
        assert!(!format!("{c:?}").contains("sk-test"));
        for bad in [
            &["--ai-provider", "openai"][..],
            &["--ai-provider", "gpt"],
            &["--ai-api-key", "k", "--ai-base-url", "ftp://x"],
            &["--ai-api-key", "k", "--ai-timeout-ms", "5"],
            &["--ai-api-key", "k", "--ai-max-retries", "9"],
            &["--ai-api-key", "k", "--ai-chat-model", " "],
            &["--ai-daily-calls-per-user", "0"],
        ] {
            assert!(
                matches!(
                    AiConfig::from_options(&options(bad)),
                    Err(ConfigError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
        let local =
            AiConfig::from_options(&options(&["--ai-provider", "local", "--ai-api-key", "k"]))
                .unwrap();
        assert_eq!(local.service.provider_name(), "local");
    }

    #[test]
    fn the_config_file_can_hold_the_ai_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "ai-provider = \"openai\"\nai-api-key = \"sk-file\"\nai-chat-model = \"m\"\n",
        )
        .unwrap();
        let o = options(&["--config", path.to_str().unwrap(), "--ai-timeout-ms", "500"])
            .layered()
            .unwrap();
        assert_eq!(
            o.ai_api_key.as_ref().map(crate::secret::Secret::expose),
            Some("sk-file")
        );
        assert_eq!(o.ai_timeout_ms, Some(500));
        let c = AiConfig::from_options(&o).unwrap();
        assert_eq!(c.service.provider_name(), "openai");
    }

    #[test]
    fn keys_do_not_show_in_debug_output() {
        let o = options(&["--ai-api-key", "sk-secret-value"]);
        assert!(!format!("{o:?}").contains("sk-secret-value"));
        assert_eq!(o.ai_api_key.unwrap().expose(), "sk-secret-value");
    }
}
