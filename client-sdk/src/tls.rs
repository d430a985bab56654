//! The client's TLS: TLS 1.3 only, ALPN `linkedup/1`, the ring provider, and how the server's
//! certificate is trusted — either pinned by the SHA-256 of its DER (development servers with
//! a self-signed certificate) or checked against CA certificates given as PEM.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::ClientError;

/// ALPN protocol id of wire protocol version 1.
pub const ALPN: &[u8] = b"linkedup/1";
/// Largest PEM input accepted; real certificate bundles are a few KiB.
pub const MAX_PEM_BYTES: usize = 1 << 20;

/// How the client decides to trust the server's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Accept exactly the end-entity certificate whose DER hashes to this SHA-256 (the
    /// handshake signature is still verified against that certificate's key).
    PinnedSha256([u8; 32]),
    /// Verify the chain and the server name against these CA certificates (PEM text).
    CaPem(String),
}

/// SHA-256 of a DER certificate, the value a pin compares against.
pub fn fingerprint_sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The fingerprint of the first certificate in a PEM file (for pinning a dev server's
/// `dev-cert.pem`).
pub fn fingerprint_from_pem(pem: &[u8]) -> Result<[u8; 32], ClientError> {
    if pem.len() > MAX_PEM_BYTES {
        return Err(ClientError::Tls(format!(
            "PEM input of {} bytes exceeds {MAX_PEM_BYTES}",
            pem.len()
        )));
    }
    let cert = CertificateDer::from_pem_slice(pem)
        .map_err(|e| ClientError::Tls(format!("no certificate in PEM: {e}")))?;
    Ok(fingerprint_sha256(cert.as_ref()))
}

/// Parses a fingerprint written as 64 hex digits, with or without `:` separators.
pub fn parse_fingerprint(hex: &str) -> Result<[u8; 32], ClientError> {
    let digits: Vec<u8> = hex
        .bytes()
        .filter(|b| *b != b':' && !b.is_ascii_whitespace())
        .collect();
    if digits.len() != 64 {
        return Err(ClientError::Tls(format!(
            "a SHA-256 fingerprint has 64 hex digits, got {}",
            digits.len()
        )));
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| bad_hex())?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| bad_hex())?;
    }
    Ok(out)
}

/// Lower-case hex of a fingerprint, as `parse_fingerprint` reads it.
pub fn fingerprint_hex(fingerprint: &[u8; 32]) -> String {
    fingerprint.iter().map(|b| format!("{b:02x}")).collect()
}

fn bad_hex() -> ClientError {
    ClientError::Tls("fingerprint is not hexadecimal".into())
}

/// The quinn client configuration for `trust`, with keep-alives every `keep_alive` and the
/// connection declared dead after `idle_timeout` without any packet from the server. `Client`
/// uses it; tests and tools that speak the protocol over a raw quinn endpoint use it too.
pub fn quic_client_config(
    trust: &Trust,
    keep_alive: Duration,
    idle_timeout: Duration,
) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut config = match trust {
        Trust::PinnedSha256(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
                fingerprint: *fingerprint,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::CaPem(pem) => {
            if pem.len() > MAX_PEM_BYTES {
                return Err(ClientError::Tls("CA PEM too large".into()));
            }
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| ClientError::Tls(format!("bad CA PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(format!("unusable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ClientError::Tls("no CA certificate in PEM".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(config).map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(keep_alive));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle_timeout)
            .map_err(|_| ClientError::Tls("idle timeout out of range".into()))?,
    ));
    // Version 1 uses no unidirectional streams.
    transport.max_concurrent_uni_streams(0u8.into());
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Trusts one certificate, identified by the SHA-256 of its DER encoding. The server name is
/// not checked (a pin is more specific than a name), but the handshake signatures are, so a
/// peer must hold the pinned certificate's private key.
#[derive(Debug)]
struct PinnedCertVerifier {
    fingerprint: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint_sha256(end_entity.as_ref());
        // Not secret, but compare without early exit anyway.
        let differ = got
            .iter()
            .zip(self.fingerprint.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differ == 0 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_hex_roundtrip() {
        let fp = fingerprint_sha256(b"certificate");
        let hex = fingerprint_hex(&fp);
        assert_eq!(parse_fingerprint(&hex).unwrap(), fp);
        let colons: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), fp);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn configs_build() {
        let d = Duration::from_secs(5);
        assert!(quic_client_config(&Trust::PinnedSha256([0; 32]), d, d * 2).is_ok());
        assert!(quic_client_config(&Trust::CaPem("nothing".into()), d, d * 2).is_err());
    }
}
