//! The QUIC side of the server: the endpoint and its accept loop (here), who may connect
//! (`admission`), one task per connection (`connection`), its control stream (`control`), one
//! task per call stream, each running many calls (`call`), framing over streams (`stream`)
//! under byte budgets for inbound frames and unwritten results (`budget`), and TLS.

mod admission;
mod budget;
mod call;
mod connection;
mod control;
mod output;
pub mod stream;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use query_engine::engine::Engine;
use query_engine::subscriptions::SubscriptionManager;
use quinn::{Endpoint, IdleTimeout, VarInt};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::TokenVerifier;
use crate::config::{ConnectionLimits, MIN_CONNECTION_WINDOW_BYTES};
use crate::metrics::ServerMetrics;
use admission::Admission;
use budget::ServerBudget;
use tls::{CertifiedKey, TlsError};

/// Beyond the drain timeout, how long connections get to flush their closing frames.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// What every connection task shares.
pub(crate) struct Shared {
    pub engine: Engine,
    pub subscriptions: SubscriptionManager,
    pub verifier: Arc<TokenVerifier>,
    pub metrics: Arc<ServerMetrics>,
    pub limits: ConnectionLimits,
    /// Becomes true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    pub drain_timeout: Duration,
    pub server_version: String,
}

/// Asks clients to acknowledge every `ACK_ELICITING_THRESHOLD + 1`-th packet (QUIC ACK
/// frequency extension) instead of every second one.
fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut c = quinn::AckFrequencyConfig::default();
    c.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    c
}
const ACK_ELICITING_THRESHOLD: u32 = 9;

/// Binds the QUIC endpoint: TLS 1.3 with ALPN `linkedup/1`, one bidirectional stream of credit
/// per allowed call plus the control stream (a client with one call per stream gets as many
/// calls in flight as one that multiplexes), no unidirectional streams, no datagrams.
pub(crate) fn bind(
    addr: SocketAddr,
    cert: &CertifiedKey,
    limits: &ConnectionLimits,
) -> Result<Endpoint, BindError> {
    // Unread data a client may have sent on one connection, across all its streams: what
    // quinn buffers beyond the inbound byte budgets, since a frame waiting for room is not read
    // (one being read returns its credit as its bytes are read, so a frame of any allowed size
    // flows through a smaller window). Worst case, every connection's window full:
    // `max_connections` × window in all (10,000 × 1 MiB, about 10 GiB, by default) and
    // `max_connections_per_address` × window from one address (256 × 1 MiB). One stream may
    // fill half, so a stream left unread (its frame waiting for room or for a call slot) cannot
    // stall the frames being read on the others by itself. The floors also hold for callers
    // that build `ConnectionLimits` themselves: a window of a few bytes lets next to nothing
    // through.
    let receive_window = limits
        .connection_receive_window_bytes
        .max(MIN_CONNECTION_WINDOW_BYTES);
    // Output written on one connection that the client has not acknowledged, across all its
    // streams: quinn keeps it for retransmission, so a client that grants flow-control credit
    // but acknowledges slowly or never could make the server hold quinn's default, about
    // 10 MB, per connection. Worst case, every window full: `max_connections` × window
    // in all (10,000 × 2 MiB, about 20 GiB, by default) and `max_connections_per_address` ×
    // window from one address (256 × 2 MiB = 512 MiB), where it was 100 GB and 2.5 GB. A
    // write beyond it waits, never fails: a call result waits (holding its call slot), and
    // the control stream's writer takes no further transition, so the subscription outbox
    // merges a slow client's updates instead.
    let send_window = limits
        .connection_send_window_bytes
        .max(MIN_CONNECTION_WINDOW_BYTES);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(
            limits.max_concurrent_calls.saturating_add(1),
        ))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .ack_frequency_config(Some(ack_frequency()))
        .receive_window(VarInt::from_u32(receive_window))
        .stream_receive_window(VarInt::from_u32(receive_window / 2))
        .send_window(u64::from(send_window))
        // Our own keep-alives keep idle but live clients connected; a dead one stops
        // acknowledging them and times out.
        .keep_alive_interval(Some(limits.idle_timeout / 3))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(limits.idle_timeout).map_err(|_| BindError::IdleTimeout)?,
        ));
    let mut config = quinn::ServerConfig::with_crypto(cert.quic_server_crypto()?);
    config.transport_config(Arc::new(transport));
    let io = |source| BindError::Io { addr, source };
    let udp = query_engine::protocol::udp::bind_udp(addr).map_err(io)?;
    if udp.recv_buffer < query_engine::protocol::udp::UDP_BUFFER_BYTES {
        tracing::warn!(
            granted = udp.recv_buffer,
            wanted = query_engine::protocol::udp::UDP_BUFFER_BYTES,
            "the kernel limits the QUIC socket's receive buffer; bursts may be dropped \
             (raise net.core.rmem_max)"
        );
    }
    Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        udp.socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(io)
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the idle timeout is too large for QUIC")]
    IdleTimeout,
    #[error("binding the QUIC endpoint on {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Accepts connections until shutdown, then waits (bounded) for them to drain and close.
pub(crate) async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    let budget = ServerBudget::new(&shared.limits, shared.metrics.clone());
    let admission = Admission::new(&shared.limits, budget.clone(), shared.metrics.clone());
    let mut connections = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stopping| *stopping) => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                // Connections that have ended no longer count against the limits.
                while let Some(joined) = connections.try_join_next() {
                    report_panic(joined, "connection");
                }
                if let Some(incoming) = admission.admit(incoming, connections.len()) {
                    connections.spawn(connection::serve(
                        shared.clone(),
                        admission.clone(),
                        budget.clone(),
                        incoming,
                    ));
                }
            }
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                report_panic(joined, "connection");
            }
        }
    }
    // New handshakes are refused from here on; open connections drain on their own.
    endpoint.set_server_config(None);
    let drained = tokio::time::timeout(shared.drain_timeout + CLOSE_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "connections did not close in time; aborting them"
        );
        connections.abort_all();
    }
    endpoint.close(stream::CLOSE_SHUTDOWN, b"server shutting down");
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
}

/// Logs a task that panicked; one that ended or was aborted is nothing to report.
pub(crate) fn report_panic(joined: Result<(), tokio::task::JoinError>, task: &'static str) {
    if let Err(e) = joined {
        if e.is_panic() {
            tracing::error!(error = %e, task, "task panicked");
        }
    }
}

#[cfg(test)]
mod tests;
