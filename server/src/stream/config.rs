//! The Stream settings the server runs with, from its options (`--stream-*`,
//! `LINKEDUP_STREAM_*`, the config file): which room provider, and the secret webhooks are
//! verified with. In development without a configured secret, a random one is kept in the
//! data directory (`dev-stream-secret`, made on first start, mode 0600) so webhooks can be
//! signed and tried locally; its path is printed at startup.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;

use super::tokens::DEFAULT_CALL_TOKEN_TTL;
use super::{ApiSettings, RoomProvider, Secret, StreamClient, StreamError};
use crate::config::Options;

/// The development webhook secret's file in the data directory.
pub const DEV_SECRET_FILE: &str = "dev-stream-secret";
/// Random bytes in a generated secret (written as hex).
const DEV_SECRET_BYTES: usize = 32;

/// Stream settings of the LinkedUp functions.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Creates meeting rooms; the local provider by default.
    pub provider: RoomProvider,
    /// Verifies webhook signatures (Stream signs with the API secret). `None`: every webhook
    /// is refused (401).
    pub webhook_secret: Option<Secret>,
    /// The application's API key; when set, a webhook without it in `X-Api-Key` (Stream
    /// always sends it) or with another is refused.
    pub api_key: Option<String>,
    /// How long the call tokens `meetings.streamCallToken` mints are valid (signed with
    /// `webhook_secret`, the API secret).
    pub call_token_ttl: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            provider: RoomProvider::default(),
            webhook_secret: None,
            api_key: None,
            call_token_ttl: DEFAULT_CALL_TOKEN_TTL,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamConfigError {
    #[error("--stream-api-key needs --stream-api-secret (LINKEDUP_STREAM_API_SECRET)")]
    MissingSecret,
    #[error("--{0} is only used with --stream-api-key")]
    NeedsApiKey(&'static str),
    #[error("Stream settings: {0}")]
    Invalid(#[from] StreamError),
    #[error("development Stream secret {path}: {source}")]
    DevSecret { path: PathBuf, source: io::Error },
    #[error("development Stream secret {path} is not {} hex characters", 2 * DEV_SECRET_BYTES)]
    BadDevSecret { path: PathBuf },
}

impl StreamConfig {
    /// From layered options: with an API key (and its secret), Stream's API; otherwise the
    /// local provider. Webhooks are verified with the API secret if one is configured (also
    /// without an API key, to sign test webhooks with a known secret), else in development
    /// with the data directory's `dev-stream-secret`, else not at all.
    pub fn from_options(options: &Options, development: bool) -> Result<Self, StreamConfigError> {
        let call_type = options
            .stream_call_type
            .clone()
            .unwrap_or_else(|| super::DEFAULT_CALL_TYPE.to_string());
        if !super::is_call_id(&call_type) {
            return Err(StreamError::InvalidRequest(
                "the call type must be 1 to 64 of a-z A-Z 0-9 _ -".into(),
            )
            .into());
        }
        let secret = options.stream_api_secret.clone();
        let provider = match (&options.stream_api_key, &secret) {
            (Some(key), Some(secret)) => {
                let mut settings = ApiSettings::new(key.clone(), secret.clone());
                settings.call_type = call_type;
                if let Some(url) = &options.stream_base_url {
                    settings.base_url = url.clone();
                }
                RoomProvider::Stream(StreamClient::new(settings)?)
            }
            (Some(_), None) => return Err(StreamConfigError::MissingSecret),
            (None, _) if options.stream_base_url.is_some() => {
                return Err(StreamConfigError::NeedsApiKey("stream-base-url"))
            }
            (None, _) => RoomProvider::local(call_type),
        };
        let webhook_secret = match secret {
            Some(secret) => Some(secret),
            None if development => Some(load_or_create_dev_secret(&options.data_dir())?),
            None => None,
        };
        Ok(StreamConfig {
            provider,
            webhook_secret,
            api_key: options.stream_api_key.clone(),
            call_token_ttl: DEFAULT_CALL_TOKEN_TTL,
        })
    }
}

/// The secret in `dir/dev-stream-secret`, made (random, mode 0600) if there is none yet.
pub fn load_or_create_dev_secret(dir: &Path) -> Result<Secret, StreamConfigError> {
    let path = dir.join(DEV_SECRET_FILE);
    let io_err = |source| StreamConfigError::DevSecret {
        path: path.clone(),
        source,
    };
    match fs::read_to_string(&path) {
        Ok(text) => return parse_dev_secret(&path, &text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    crate::files::create_private_dir(dir).map_err(io_err)?;
    let bytes: [u8; DEV_SECRET_BYTES] = rand::thread_rng().gen();
    let hex = crate::hex::hex(&bytes);
    // Written whole and linked into place: a racing start reads the first one's secret,
    // never half a file.
    if crate::files::create_once(&path, hex.as_bytes(), true).map_err(io_err)? {
        return Ok(Secret::new(hex));
    }
    let text = fs::read_to_string(&path).map_err(io_err)?;
    parse_dev_secret(&path, &text)
}

fn parse_dev_secret(path: &Path, text: &str) -> Result<Secret, StreamConfigError> {
    let text = text.trim();
    if text.len() == 2 * DEV_SECRET_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Secret::new(text))
    } else {
        Err(StreamConfigError::BadDevSecret {
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Options {
        use clap::Parser;
        crate::config::Cli::try_parse_from(
            std::iter::once("linkedup-server").chain(args.iter().copied()),
        )
        .unwrap()
        .options
    }

    #[test]
    fn no_settings_is_the_local_provider_with_a_dev_secret_kept_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_str().unwrap();
        let config = StreamConfig::from_options(&options(&["--data-dir", data]), true).unwrap();
        assert!(matches!(config.provider, RoomProvider::Local { .. }));
        let secret = config.webhook_secret.clone().unwrap();
        assert_eq!(secret.expose().len(), 64);
        let again = StreamConfig::from_options(&options(&["--data-dir", data]), true).unwrap();
        assert_eq!(again.webhook_secret, Some(secret));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(DEV_SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Production without a secret verifies nothing, and makes no file.
        let prod = tempfile::tempdir().unwrap();
        let config = StreamConfig::from_options(
            &options(&["--data-dir", prod.path().to_str().unwrap()]),
            false,
        )
        .unwrap();
        assert!(config.webhook_secret.is_none());
        assert!(!prod.path().join(DEV_SECRET_FILE).exists());
    }

    #[test]
    fn a_damaged_dev_secret_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DEV_SECRET_FILE), "short").unwrap();
        assert!(matches!(
            load_or_create_dev_secret(dir.path()),
            Err(StreamConfigError::BadDevSecret { .. })
        ));
    }

    #[test]
    fn an_api_key_and_secret_select_stream_s_api() {
        let config = StreamConfig::from_options(
            &options(&[
                "--stream-api-key",
                "key1",
                "--stream-api-secret",
                "sec",
                "--stream-call-type",
                "audio_room",
                "--stream-base-url",
                "http://127.0.0.1:9",
            ]),
            false,
        )
        .unwrap();
        assert!(matches!(config.provider, RoomProvider::Stream(_)));
        assert_eq!(config.provider.call_type(), "audio_room");
        assert_eq!(config.webhook_secret, Some(Secret::new("sec")));
        assert_eq!(config.api_key.as_deref(), Some("key1"));
        let printed = format!("{config:?}");
        assert!(!printed.contains("sec\""), "{printed}");
    }

    #[test]
    fn incomplete_or_invalid_settings_are_refused() {
        let refused = |args: &[&str]| StreamConfig::from_options(&options(args), false).is_err();
        assert!(refused(&["--stream-api-key", "k"]));
        assert!(refused(&["--stream-base-url", "https://x"]));
        assert!(refused(&["--stream-call-type", "a:b"]));
        assert!(refused(&[
            "--stream-api-key",
            "k",
            "--stream-api-secret",
            "s",
            "--stream-base-url",
            "ftp://x"
        ]));
        // A secret alone signs webhooks for the local provider.
        let config =
            StreamConfig::from_options(&options(&["--stream-api-secret", "s"]), false).unwrap();
        assert!(matches!(config.provider, RoomProvider::Local { .. }));
        assert_eq!(config.webhook_secret, Some(Secret::new("s")));
    }
}
