//! A subscriber that stops reading: a raw QUIC connection (no SDK, whose connection task
//! always drains the socket) that signs in, subscribes, reads until its first transition,
//! then never reads again. Its control stream's flow-control window fills and the server's
//! writes to it stall; the other subscribers' latency must not move.

use std::net::SocketAddr;
use std::time::Duration;

use linkedup_server::transport::tls::{pinned_client_config, CertFingerprint};
use query_engine::protocol::{
    decode_server, encode, read_frame, write_frame, ClientMessage, ServerMessage,
    DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use query_engine::value::Value;

use super::server::Target;

/// Longest wait for the handshake and the first transition.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StalledError {
    #[error("address {0}: {1}")]
    Address(String, String),
    #[error("QUIC: {0}")]
    Quic(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out waiting for the server")]
    Timeout,
}

/// The stalled connection; dropping it closes it.
pub struct StalledClient {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    // Held, never read again.
    _send: quinn::SendStream,
    _recv: quinn::RecvStream,
}

impl StalledClient {
    /// Connects as `subject`, subscribes to each `(function, args)`, waits for the first
    /// transition, and stops reading.
    pub async fn connect(
        target: &Target,
        subject: &str,
        subscriptions: &[(String, Value)],
    ) -> Result<Self, StalledError> {
        let addr: SocketAddr = target.addr.parse().map_err(|e: std::net::AddrParseError| {
            StalledError::Address(target.addr.clone(), e.to_string())
        })?;
        let config = pinned_client_config(CertFingerprint(target.fingerprint))
            .map_err(|e| StalledError::Quic(e.to_string()))?;
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| StalledError::Quic(e.to_string()))?;
        endpoint.set_default_client_config(config);
        let token = target.token(subject);
        let setup = async {
            let conn = endpoint
                .connect(addr, "localhost")
                .map_err(|e| StalledError::Quic(e.to_string()))?
                .await
                .map_err(|e| StalledError::Quic(e.to_string()))?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| StalledError::Quic(e.to_string()))?;
            let mut messages = vec![
                ClientMessage::Connect {
                    protocol_version: PROTOCOL_VERSION,
                    client_name: "fanout-stalled".into(),
                    last_seen_ts: None,
                    transition_parts: false,
                },
                ClientMessage::Authenticate { token: Some(token) },
            ];
            for (i, (function, args)) in subscriptions.iter().enumerate() {
                messages.push(ClientMessage::Subscribe {
                    query_id: i as u32 + 1,
                    function: function.clone(),
                    args: args.clone(),
                });
            }
            for m in &messages {
                let bytes = encode(m).map_err(|e| StalledError::Protocol(e.to_string()))?;
                write_frame(&mut send, &bytes)
                    .await
                    .map_err(|e| StalledError::Protocol(e.to_string()))?;
            }
            // Read until the first transition with results, then stop for good.
            loop {
                let frame = read_frame(&mut recv, DEFAULT_MAX_FRAME_BYTES)
                    .await
                    .map_err(|e| StalledError::Protocol(e.to_string()))?
                    .ok_or_else(|| StalledError::Protocol("control stream closed".into()))?;
                match decode_server(&frame).map_err(|e| StalledError::Protocol(e.to_string()))? {
                    ServerMessage::Transition { modifications, .. }
                        if !modifications.is_empty() =>
                    {
                        break
                    }
                    ServerMessage::Error { code, message, .. } => {
                        return Err(StalledError::Protocol(format!("{code}: {message}")))
                    }
                    _ => {}
                }
            }
            Ok::<_, StalledError>((conn, send, recv))
        };
        let (conn, send, recv) = tokio::time::timeout(HANDSHAKE_TIMEOUT, setup)
            .await
            .map_err(|_| StalledError::Timeout)??;
        Ok(StalledClient {
            conn,
            endpoint,
            _send: send,
            _recv: recv,
        })
    }

    /// Closes the connection.
    pub fn close(self) {
        self.conn.close(0u8.into(), b"done");
        drop(self.endpoint);
    }
}
