//! TLS for the QUIC endpoint: loads a certificate and key from PEM files (production) or makes
//! a self-signed pair once and reuses it (development), and builds the rustls/quinn configs:
//! TLS 1.3 only, ALPN `linkedup/1`, ring provider. Clients pin the dev cert by SHA-256.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::files;

/// The ALPN protocol id of wire protocol version 1.
pub const ALPN: &[u8] = b"linkedup/1";
/// Names of the development certificate and key inside the data directory.
pub const DEV_CERT_FILE: &str = "dev-cert.pem";
pub const DEV_KEY_FILE: &str = "dev-key.pem";
/// Host names and addresses the development certificate is valid for.
const DEV_CERT_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
/// Largest certificate or key file read; real chains are a few KiB.
const MAX_PEM_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is larger than {MAX_PEM_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("{path} is not a valid PEM certificate chain: {detail}")]
    BadCertificate { path: PathBuf, detail: String },
    #[error("generating the development certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "{dir}: {DEV_CERT_FILE} was not made with {DEV_KEY_FILE} (left by an older build); \
         delete both to make a new pair, and pin the new fingerprint"
    )]
    DevPairMismatch { dir: PathBuf },
    #[error("the certificate and key do not form a usable TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("the TLS configuration cannot carry QUIC: {0}")]
    Quic(String),
}

/// SHA-256 of the server's end-entity certificate (DER), which clients may pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        CertFingerprint(Sha256::digest(cert.as_ref()).into())
    }

    /// Parses 64 hex digits, with or without `:` separators, in either case.
    pub fn parse(text: &str) -> Option<Self> {
        let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).ok()?;
            out[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(CertFingerprint(out))
    }
}

/// Lowercase hex, 64 digits, no separators.
impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

/// A certificate chain and its private key, ready for rustls.
pub struct CertifiedKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl CertifiedKey {
    /// Fingerprint of the end-entity (first) certificate.
    pub fn fingerprint(&self) -> CertFingerprint {
        // Both constructors refuse an empty chain.
        CertFingerprint::of(&self.chain[0])
    }

    /// Loads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_pem = read_pem_file(cert_path)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCertificate {
                path: cert_path.to_path_buf(),
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_path_buf(),
            });
        }
        let key_pem = read_pem_file(key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
            path: key_path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(CertifiedKey { chain, key })
    }

    /// The development certificate in `dir` (`dev-cert.pem`, `dev-key.pem`), generated on
    /// first use: self-signed for localhost/127.0.0.1/::1, key file mode 0600. Each file is
    /// put in place whole and the first start to do so wins (`files::create_once`); the
    /// certificate is always made from the key on disk, so starts racing each other, or
    /// following one that stopped half-way, end with a matching pair.
    pub fn load_or_generate_dev(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(DEV_CERT_FILE);
        let key_path = dir.join(DEV_KEY_FILE);
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Write { path, source }
        };
        files::create_private_dir(dir).map_err(write_err(dir))?;
        if !key_path.exists() {
            let key = rcgen::KeyPair::generate()?;
            files::create_once(&key_path, key.serialize_pem().as_bytes(), true)
                .map_err(write_err(&key_path))?;
        }
        if !cert_path.exists() {
            let key_pem = read_pem_file(&key_path)?;
            let key = String::from_utf8(key_pem)
                .ok()
                .and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok())
                .ok_or_else(|| TlsError::BadKey {
                    path: key_path.clone(),
                    detail: "not a key this server made".into(),
                })?;
            let names: Vec<String> = DEV_CERT_NAMES.iter().map(|n| n.to_string()).collect();
            let cert = rcgen::CertificateParams::new(names)?.self_signed(&key)?;
            files::create_once(&cert_path, cert.pem().as_bytes(), false)
                .map_err(write_err(&cert_path))?;
        }
        let pair = Self::load(&cert_path, &key_path)?;
        match pair.server_tls_config() {
            Err(TlsError::Config(rustls::Error::InconsistentKeys(_))) => {
                Err(TlsError::DevPairMismatch {
                    dir: dir.to_path_buf(),
                })
            }
            _ => Ok(pair),
        }
    }

    /// The rustls server configuration: TLS 1.3 only, ALPN `linkedup/1`, no client certs.
    pub fn server_tls_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// The crypto half of a quinn server configuration.
    pub fn quic_server_crypto(&self) -> Result<Arc<QuicServerConfig>, TlsError> {
        let tls = self.server_tls_config()?;
        let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
        Ok(Arc::new(quic))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    crate::files::read_at_most(path, MAX_PEM_BYTES)
        .map_err(read_err)?
        .ok_or_else(|| TlsError::TooLarge {
            path: path.to_path_buf(),
        })
}

/// A quinn client configuration that trusts exactly the certificate with `fingerprint`
/// (TLS 1.3, ALPN `linkedup/1`, the SDK's keep-alive and idle timeout); for tests and tools
/// talking to a development server over a raw endpoint. It is the SDK's own configuration,
/// so the pinning is implemented once.
pub fn pinned_client_config(fingerprint: CertFingerprint) -> Result<quinn::ClientConfig, TlsError> {
    let trust = linkedup_client::Trust::PinnedSha256(fingerprint.0);
    let options = linkedup_client::ClientOptions::new(trust.clone());
    linkedup_client::tls::quic_client_config(&trust, options.keep_alive, options.idle_timeout)
        .map_err(|e| TlsError::Quic(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn dev_certificate_is_reused_and_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertifiedKey::load_or_generate_dev(dir.path()).unwrap();
        let again = CertifiedKey::load_or_generate_dev(dir.path()).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(DEV_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let config = first.server_tls_config().unwrap();
        assert_eq!(config.alpn_protocols, vec![ALPN.to_vec()]);
    }

    #[test]
    fn racing_first_starts_end_with_one_matching_pair() {
        const STARTS: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let barrier = std::sync::Barrier::new(STARTS);
        let fingerprints: Vec<CertFingerprint> = std::thread::scope(|scope| {
            let starts: Vec<_> = (0..STARTS)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        CertifiedKey::load_or_generate_dev(dir.path())
                            .unwrap()
                            .fingerprint()
                    })
                })
                .collect();
            starts.into_iter().map(|s| s.join().unwrap()).collect()
        });
        let loaded = CertifiedKey::load(
            &dir.path().join(DEV_CERT_FILE),
            &dir.path().join(DEV_KEY_FILE),
        )
        .unwrap();
        loaded.server_tls_config().unwrap();
        assert!(fingerprints.iter().all(|f| *f == loaded.fingerprint()));
        // Only the two files are left, no staging copies.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);

        // A start that stopped after the key makes the certificate from that key.
        fs::remove_file(dir.path().join(DEV_CERT_FILE)).unwrap();
        let remade = CertifiedKey::load_or_generate_dev(dir.path()).unwrap();
        remade.server_tls_config().unwrap();
    }

    #[test]
    fn fingerprint_text_round_trips() {
        let fp = CertFingerprint([0xab; 32]);
        let text = fp.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(CertFingerprint::parse(&text), Some(fp));
        let colons = text
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(CertFingerprint::parse(&colons), Some(fp));
        assert_eq!(CertFingerprint::parse("abc"), None);
        assert_eq!(CertFingerprint::parse(&"zz".repeat(32)), None);
    }

    #[test]
    fn garbage_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        fs::write(&cert, "nothing here").unwrap();
        fs::write(&key, "nothing here").unwrap();
        assert!(matches!(
            CertifiedKey::load(&cert, &key),
            Err(TlsError::NoCertificate { .. })
        ));
    }
}
