//! `Secret`: an API key, secret or token from configuration (AI provider key, Stream API
//! secret, metrics token). Its `Debug` does not show it, so it cannot leak through logged
//! configuration; only the code that signs, sends or checks requests reads it (`expose`). A
//! secret may also be kept in a file (`Secret::read_file`), out of process listings and the
//! environment.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Largest secret file read: far above any token, small enough to read whole.
const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// Empty or blank values are refused wherever a secret is read from configuration: an unset
/// variable expanded into `LINKEDUP_STREAM_API_SECRET=` must not become a key anyone holds
/// (webhooks signed with an empty key would be accepted from anyone).
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Secret(String);

/// A configured secret that is empty or only whitespace.
#[derive(Debug, thiserror::Error)]
#[error("a secret must not be empty or blank")]
pub struct BlankSecret;

/// Why a secret file was not taken. Messages name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is larger than {MAX_SECRET_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} is empty")]
    Empty { path: PathBuf },
    #[error("{path} must hold one line of visible ASCII characters (no spaces inside)")]
    NotOneWord { path: PathBuf },
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for signing, sending and checking only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret in the file at `path`, without surrounding whitespace (so a final newline
    /// is not part of it). It must be visible ASCII without spaces, which any header (e.g.
    /// `Authorization: Bearer`) can carry unchanged.
    pub fn read_file(path: &Path) -> Result<Secret, SecretFileError> {
        let read_err = |source| SecretFileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let Some(text) =
            crate::files::read_text_at_most(path, MAX_SECRET_FILE_BYTES).map_err(read_err)?
        else {
            return Err(SecretFileError::TooLarge {
                path: path.to_path_buf(),
            });
        };
        let secret = text.trim();
        if secret.is_empty() {
            return Err(SecretFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretFileError::NotOneWord {
                path: path.to_path_buf(),
            });
        }
        Ok(Secret::new(secret))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = BlankSecret;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Secret::try_from(s.to_string())
    }
}

impl TryFrom<String> for Secret {
    type Error = BlankSecret;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.trim().is_empty() {
            return Err(BlankSecret);
        }
        Ok(Secret(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let read = |contents: &[u8]| {
            std::fs::write(&path, contents).unwrap();
            Secret::read_file(&path)
        };
        assert_eq!(
            read(b"s3cret-token\n").unwrap(),
            Secret::new("s3cret-token")
        );
        assert!(matches!(read(b" \n"), Err(SecretFileError::Empty { .. })));
        assert!(matches!(
            read(b"two words\n"),
            Err(SecretFileError::NotOneWord { .. })
        ));
        assert!(matches!(
            read(b"l\xc3\xa9\n"),
            Err(SecretFileError::NotOneWord { .. })
        ));
        let big = vec![b'a'; MAX_SECRET_FILE_BYTES as usize + 1];
        assert!(matches!(read(&big), Err(SecretFileError::TooLarge { .. })));
        let missing = Secret::read_file(&dir.path().join("missing"));
        assert!(matches!(missing, Err(SecretFileError::Read { .. })));
        // The error names the file, never the secret.
        let err = read(b"hunter2 hunter3").unwrap_err().to_string();
        assert!(!err.contains("hunter"), "{err}");
    }
}
