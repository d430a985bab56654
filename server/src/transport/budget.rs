//! Byte budgets for inbound frames, one server-wide and one per connection. A frame's payload
//! is reserved from both, by its declared length, before any of it is buffered, and released
//! when the frame has been decoded: clients that leave frames half-sent pin at most the
//! per-connection budget each and the server-wide budget in all, and a frame that does not
//! fit waits unread, held back by QUIC flow control.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ConnectionLimits;
use crate::metrics::ServerMetrics;

/// The server-wide budget, shared by every connection.
pub(crate) struct InboundBudget {
    bytes: Arc<Semaphore>,
    per_connection_bytes: usize,
    metrics: Arc<ServerMetrics>,
}

impl InboundBudget {
    /// Sizes the budgets so that any frame the limits allow fits in either: a frame larger
    /// than a budget could never be reserved and its stream would wait for ever.
    pub fn new(limits: &ConnectionLimits, metrics: Arc<ServerMetrics>) -> Arc<Self> {
        let per_connection_bytes = limits
            .max_inbound_frame_bytes_per_connection
            .max(limits.max_frame_bytes as usize)
            .min(Semaphore::MAX_PERMITS);
        let total_bytes = limits
            .max_inbound_frame_bytes
            .max(per_connection_bytes)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(InboundBudget {
            bytes: Arc::new(Semaphore::new(total_bytes)),
            per_connection_bytes,
            metrics,
        })
    }

    /// A fresh budget for one connection, drawing on this one.
    pub fn connection(self: &Arc<Self>) -> ConnBudget {
        ConnBudget {
            bytes: Arc::new(Semaphore::new(self.per_connection_bytes)),
            server: self.clone(),
        }
    }
}

/// One connection's budget, shared by its control stream and call streams.
#[derive(Clone)]
pub(crate) struct ConnBudget {
    bytes: Arc<Semaphore>,
    server: Arc<InboundBudget>,
}

impl ConnBudget {
    /// Waits until `bytes` fit in the connection's budget, then in the server's: a connection
    /// queues behind its own frames without holding server-wide bytes meanwhile. Both queues
    /// are first come, first served, so a large frame is not overtaken for ever by small ones.
    /// `None` only if a budget was closed, which nothing does.
    pub fn reserve(
        &self,
        bytes: u32,
    ) -> impl Future<Output = Option<Reservation>> + Send + 'static {
        let connection = self.bytes.clone();
        let server = self.server.clone();
        async move {
            let connection = connection.acquire_many_owned(bytes).await.ok()?;
            let server_permit = server.bytes.clone().acquire_many_owned(bytes).await.ok()?;
            server
                .metrics
                .inbound_frame_bytes
                .fetch_add(i64::from(bytes), Ordering::Relaxed);
            Some(Reservation {
                _connection: connection,
                _server: server_permit,
                bytes,
                metrics: server.metrics.clone(),
            })
        }
    }
}

/// Bytes of one frame held in both budgets until dropped.
pub(crate) struct Reservation {
    _connection: OwnedSemaphorePermit,
    _server: OwnedSemaphorePermit,
    bytes: u32,
    metrics: Arc<ServerMetrics>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.metrics
            .inbound_frame_bytes
            .fetch_sub(i64::from(self.bytes), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn budget(per_connection: usize, total: usize, max_frame: u32) -> Arc<InboundBudget> {
        let limits = ConnectionLimits {
            max_frame_bytes: max_frame,
            max_inbound_frame_bytes_per_connection: per_connection,
            max_inbound_frame_bytes: total,
            ..ConnectionLimits::default()
        };
        InboundBudget::new(&limits, Arc::new(ServerMetrics::default()))
    }

    fn reserved(budget: &InboundBudget) -> i64 {
        budget.metrics.inbound_frame_bytes.load(Ordering::Relaxed)
    }

    #[test]
    fn a_frame_waits_for_its_connection_and_then_for_the_server() {
        let server = budget(100, 150, 10);
        let (a, b) = (server.connection(), server.connection());
        let a1 = a.reserve(60).now_or_never().flatten().expect("fits");
        assert!(a.reserve(60).now_or_never().is_none(), "over a's budget");
        let b1 = b.reserve(60).now_or_never().flatten().expect("fits");
        assert_eq!(reserved(&server), 120);
        let mut b2 = Box::pin(b.reserve(40));
        assert!(
            (&mut b2).now_or_never().is_none(),
            "over the server's budget"
        );
        drop(a1);
        let b2 = b2
            .now_or_never()
            .flatten()
            .expect("the server's bytes came back");
        drop((b1, b2));
        assert_eq!(reserved(&server), 0);
    }

    #[test]
    fn budgets_never_fall_below_one_frame() {
        let server = budget(1, 1, 1000);
        let conn = server.connection();
        assert!(conn.reserve(1000).now_or_never().flatten().is_some());
    }
}
