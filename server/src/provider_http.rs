//! Calling an external provider's HTTP API within bounds, shared by the AI client
//! (`ai::openai`) and Stream's (`stream::client`): attempts are retried with jittered
//! exponential backoff (or the wait `Retry-After` asks for, capped) only while the failure is
//! transient and the caller's deadline leaves room, response bodies are read up to a cap, and
//! reqwest errors are described without their URL (which may carry a key).
//!
//! What counts as transient, and the errors themselves, stay each provider's own: an attempt
//! reports `Failure::Retryable` or `Failure::Fatal` in the provider's error type.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;
use tokio::time::Instant;

/// Longest excerpt of an error's text kept in a description.
const MAX_DESCRIPTION_CHARS: usize = 200;

/// How often and how long a request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (0 is taken as 1).
    pub max_attempts: u32,
    /// The wait after the first failure; doubles per further failure.
    pub backoff_base: Duration,
    /// Cap on any wait, `Retry-After` included.
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based): the exponential step jittered to
    /// [½, 1] of itself, so clients that failed together do not retry together, or what the
    /// server asked for if that is longer; never above `backoff_max`.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let step = self
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.backoff_max);
        let jittered = step.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
        retry_after
            .map_or(jittered, |asked| asked.max(jittered))
            .min(self.backoff_max)
    }
}

/// How one attempt failed, in the provider's error type.
pub enum Failure<E> {
    /// Worth another attempt, after `retry_after` if the server asked for a wait.
    Retryable {
        error: E,
        retry_after: Option<Duration>,
    },
    Fatal(E),
}

impl<E> Failure<E> {
    pub fn retryable(error: E) -> Self {
        Failure::Retryable {
            error,
            retry_after: None,
        }
    }
}

/// An attempt cut short by the deadline; providers turn it into their transport error.
#[derive(Clone, Copy, Debug)]
pub struct OutOfTime;

/// Why `with_retries` stopped without a result.
pub struct GaveUp<E> {
    /// The last attempt's error.
    pub error: E,
    pub attempts: u32,
    /// The last failure was retryable, but attempts or time ran out (else it was fatal).
    pub exhausted: bool,
}

/// Runs `attempt` until it succeeds, fails fatally, `policy.max_attempts` are used, or the
/// next wait would end at or after `deadline`. Each attempt is also cut at `deadline` (an
/// `OutOfTime` failure, retryable like any timeout). `what` names the request in logs.
pub async fn with_retries<T, E, F, Fut>(
    policy: &RetryPolicy,
    deadline: Instant,
    what: &str,
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    E: From<OutOfTime> + Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let mut attempts = 1;
    loop {
        let outcome = tokio::time::timeout_at(deadline, attempt())
            .await
            .unwrap_or_else(|_| Err(Failure::retryable(E::from(OutOfTime))));
        let (error, retry_after) = match outcome {
            Ok(value) => return Ok(value),
            Err(Failure::Fatal(error)) => {
                return Err(GaveUp {
                    error,
                    attempts,
                    exhausted: false,
                })
            }
            Err(Failure::Retryable { error, retry_after }) => (error, retry_after),
        };
        let wait = policy.wait(attempts, retry_after);
        if attempts >= policy.max_attempts || Instant::now() + wait >= deadline {
            return Err(GaveUp {
                error,
                attempts,
                exhausted: true,
            });
        }
        tracing::debug!(what, attempts, wait_ms = wait.as_millis() as u64, error = %error,
            "retrying a provider request");
        tokio::time::sleep(wait).await;
        attempts += 1;
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Transport(String),
}

/// The response body, refused past `max_bytes` (announced by `Content-Length` or as it
/// streams in).
pub async fn read_capped(
    mut response: reqwest::Response,
    max_bytes: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|n| n > max_bytes as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(describe(&e)))?
    {
        if body.len() + chunk.len() > max_bytes {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After-Ms` (milliseconds, sent by OpenAI and Azure) or `Retry-After` (seconds). The
/// HTTP-date form is not used by these APIs and is ignored.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0 && *x < 1e9)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
}

/// A reqwest error and its causes, without the URL: what kind of failure, then each cause,
/// shortened and without control characters.
pub fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the response body could not be read"
    } else {
        "the request failed"
    }
    .to_string();
    let mut source = std::error::Error::source(e);
    for _ in 0..4 {
        let Some(s) = source else { break };
        out.push_str(": ");
        out.push_str(&excerpt(&s.to_string()));
        source = s.source();
    }
    out
}

/// `s` shortened to `MAX_DESCRIPTION_CHARS`, control characters as spaces.
pub fn excerpt(s: &str) -> String {
    s.chars()
        .take(MAX_DESCRIPTION_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(4),
        }
    }

    #[test]
    fn waits_grow_are_capped_and_honour_retry_after_up_to_the_cap() {
        let p = policy();
        for attempt in 1..=3 {
            let d = p.wait(attempt, None);
            let full = p.backoff_base * (1 << (attempt - 1));
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
        assert!(p.wait(30, None) <= p.backoff_max);
        assert_eq!(
            p.wait(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(p.wait(1, Some(Duration::from_secs(3600))), p.backoff_max);
    }

    #[test]
    fn retry_after_prefers_milliseconds_and_ignores_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "1e300".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[derive(Debug, PartialEq)]
    enum TestError {
        Busy,
        Broken,
        Late,
    }

    impl From<OutOfTime> for TestError {
        fn from(_: OutOfTime) -> Self {
            TestError::Late
        }
    }

    impl Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn retries_transient_failures_until_success_or_the_attempts_run_out() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let calls = AtomicU32::new(0);
        let result = with_retries(&fast(), deadline, "t", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Failure::retryable(TestError::Busy)),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(result.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let gave_up = with_retries(&fast(), deadline, "t", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Failure::retryable(TestError::Busy))
        })
        .await
        .err()
        .unwrap();
        assert_eq!((gave_up.attempts, gave_up.exhausted), (3, true));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_fatal_failure_is_not_retried() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let calls = AtomicU32::new(0);
        let gave_up = with_retries(&fast(), deadline, "t", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Failure::Fatal(TestError::Broken))
        })
        .await
        .err()
        .unwrap();
        assert_eq!(gave_up.error, TestError::Broken);
        assert_eq!((gave_up.attempts, gave_up.exhausted), (1, false));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_deadline_cuts_an_attempt_and_stops_the_retries() {
        let deadline = Instant::now() + Duration::from_millis(200);
        let calls = AtomicU32::new(0);
        let gave_up = with_retries(&policy(), deadline, "t", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<(), Failure<TestError>>(())
        })
        .await
        .err()
        .unwrap();
        assert_eq!(gave_up.error, TestError::Late);
        assert!(gave_up.exhausted);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
