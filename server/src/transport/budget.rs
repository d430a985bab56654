//! Byte budgets for inbound frames: one per connection, one per source address (shared by its
//! connections; see `admission`) and one server-wide. A frame's payload is reserved from all
//! three, by its declared length, before any of it is buffered, and released when the frame
//! has been decoded: clients that leave frames half-sent pin at most the per-connection budget
//! each, the per-address budget from one address and the server-wide budget in all, and a frame
//! that does not fit waits unread, held back by QUIC flow control.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::admission::AddressSlot;
use crate::config::ConnectionLimits;
use crate::metrics::ServerMetrics;

/// The server-wide budget, shared by every connection.
pub(crate) struct InboundBudget {
    bytes: Arc<Semaphore>,
    per_connection_bytes: usize,
    per_address_bytes: usize,
    metrics: Arc<ServerMetrics>,
}

impl InboundBudget {
    /// Sizes the budgets so that any frame the limits allow fits in each: a frame larger than
    /// a budget could never be reserved and its stream would wait for ever.
    pub fn new(limits: &ConnectionLimits, metrics: Arc<ServerMetrics>) -> Arc<Self> {
        let per_connection_bytes = limits
            .max_inbound_frame_bytes_per_connection
            .max(limits.max_frame_bytes as usize)
            .min(Semaphore::MAX_PERMITS);
        let total_bytes = limits
            .max_inbound_frame_bytes
            .max(per_connection_bytes)
            .min(Semaphore::MAX_PERMITS);
        // Above the server's budget it would mean nothing; at least one frame, as the server's
        // budget is.
        let per_address_bytes = limits
            .max_inbound_frame_bytes_per_address
            .max(limits.max_frame_bytes as usize)
            .min(total_bytes);
        Arc::new(InboundBudget {
            bytes: Arc::new(Semaphore::new(total_bytes)),
            per_connection_bytes,
            per_address_bytes,
            metrics,
        })
    }

    /// What each source address's budget holds (`Admission` keeps them, with its counts).
    pub fn per_address_bytes(&self) -> usize {
        self.per_address_bytes
    }

    /// A fresh budget for one connection, drawing on its address's and on this one.
    pub fn connection(self: &Arc<Self>, address: AddressSlot) -> ConnBudget {
        ConnBudget {
            bytes: Arc::new(Semaphore::new(self.per_connection_bytes)),
            address: Arc::new(address),
            server: self.clone(),
        }
    }
}

/// One connection's budget, shared by its control stream and call streams.
#[derive(Clone)]
pub(crate) struct ConnBudget {
    bytes: Arc<Semaphore>,
    address: Arc<AddressSlot>,
    server: Arc<InboundBudget>,
}

impl ConnBudget {
    /// Waits until `bytes` fit in the connection's budget, then in its address's, then in the
    /// server's: a frame never holds a wider budget while it waits for a narrower one, so a
    /// connection, or an address, at its limit waits without holding bytes others could use.
    /// Every queue is first come, first served, so a large frame is not overtaken for ever by
    /// small ones. `None` only if a budget was closed, which nothing does.
    pub fn reserve(
        &self,
        bytes: u32,
    ) -> impl Future<Output = Option<Reservation>> + Send + 'static {
        let connection = self.bytes.clone();
        let address = self.address.clone();
        let server = self.server.clone();
        async move {
            let connection = connection.acquire_many_owned(bytes).await.ok()?;
            let address_permit = address
                .inbound_bytes()
                .clone()
                .acquire_many_owned(bytes)
                .await
                .ok()?;
            let server_permit = server.bytes.clone().acquire_many_owned(bytes).await.ok()?;
            server
                .metrics
                .inbound_frame_bytes
                .fetch_add(i64::from(bytes), Ordering::Relaxed);
            Some(Reservation {
                _permits: [connection, address_permit, server_permit],
                _address: address,
                bytes,
                metrics: server.metrics.clone(),
            })
        }
    }
}

/// Bytes of one frame held in the three budgets until dropped.
pub(crate) struct Reservation {
    _permits: [OwnedSemaphorePermit; 3],
    /// Keeps the address's entry, and so its budget, for as long as these bytes are held.
    _address: Arc<AddressSlot>,
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
    use std::net::SocketAddr;

    use super::super::admission::Admission;
    use super::*;
    use futures::FutureExt;

    const A: &str = "192.0.2.1:1000";
    const B: &str = "192.0.2.2:1000";

    /// A server's budget and the admission keeping its addresses' budgets.
    struct Budgets {
        server: Arc<InboundBudget>,
        admission: Arc<Admission>,
    }

    impl Budgets {
        fn new(per_connection: usize, per_address: usize, total: usize, max_frame: u32) -> Self {
            let limits = ConnectionLimits {
                max_frame_bytes: max_frame,
                max_inbound_frame_bytes_per_connection: per_connection,
                max_inbound_frame_bytes_per_address: per_address,
                max_inbound_frame_bytes: total,
                ..ConnectionLimits::default()
            };
            let metrics = Arc::new(ServerMetrics::default());
            let server = InboundBudget::new(&limits, metrics.clone());
            let admission = Admission::new(&limits, server.per_address_bytes(), metrics);
            Budgets { server, admission }
        }

        fn connection(&self, from: &str) -> ConnBudget {
            let remote: SocketAddr = from.parse().unwrap();
            self.server
                .connection(self.admission.claim(remote).expect("a slot"))
        }

        fn reserved(&self) -> i64 {
            self.server
                .metrics
                .inbound_frame_bytes
                .load(Ordering::Relaxed)
        }
    }

    #[test]
    fn a_frame_waits_for_its_connection_and_then_for_the_server() {
        let budgets = Budgets::new(100, 150, 150, 10);
        let (a, b) = (budgets.connection(A), budgets.connection(B));
        let a1 = a.reserve(60).now_or_never().flatten().expect("fits");
        assert!(a.reserve(60).now_or_never().is_none(), "over a's budget");
        let b1 = b.reserve(60).now_or_never().flatten().expect("fits");
        assert_eq!(budgets.reserved(), 120);
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
        assert_eq!(budgets.reserved(), 0);
    }

    #[test]
    fn an_address_shares_one_budget_and_waits_for_it_without_server_bytes() {
        let budgets = Budgets::new(100, 100, 150, 10);
        let (a1, a2, b) = (
            budgets.connection(A),
            budgets.connection(A),
            budgets.connection(B),
        );
        let held = a1.reserve(80).now_or_never().flatten().expect("fits");
        // a2's own budget is free, its address's is not.
        let mut waiting = Box::pin(a2.reserve(40));
        assert!((&mut waiting).now_or_never().is_none(), "over A's budget");
        // Waiting for A's budget, a2 holds none of the server's: b gets the rest of it.
        let b1 = b.reserve(70).now_or_never().flatten().expect("fits");
        drop(held);
        let a2_1 = waiting
            .now_or_never()
            .flatten()
            .expect("A's bytes came back");
        assert_eq!(budgets.reserved(), 110);
        drop((a2_1, b1));
        assert_eq!(budgets.reserved(), 0);
    }

    #[test]
    fn budgets_never_fall_below_one_frame() {
        let budgets = Budgets::new(1, 1, 1, 1000);
        let conn = budgets.connection(A);
        assert!(conn.reserve(1000).now_or_never().flatten().is_some());
    }
}
