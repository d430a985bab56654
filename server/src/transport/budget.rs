//! Byte budgets, each held per connection, per source address (shared by its connections; see
//! `admission`) and server-wide, in both directions:
//!
//! - Inbound frames: a frame's payload is reserved from all three, by its declared length,
//!   before any of it is buffered, and released when the frame has been decoded: clients that
//!   leave frames half-sent pin at most the per-connection budget each, the per-address budget
//!   from one address and the server-wide budget in all, and a frame that does not fit waits
//!   unread, held back by QUIC flow control.
//! - Call results encoded but not yet written (`call`): a result's size is known only once its
//!   call has run, and by then it has to be held, so its bytes are counted without waiting; it
//!   is starting a call that waits, while the connection, its address or the server holds
//!   its budget or more. Unwritten results are then held to the budget plus what the calls
//!   already running produce (at most one frame each), and the client that does not read is
//!   the one whose calls stop.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::admission::AddressSlot;
use crate::config::ConnectionLimits;
use crate::metrics::ServerMetrics;

/// What one budget holds at each level.
#[derive(Clone, Copy, Debug)]
struct Levels {
    per_connection: usize,
    per_address: usize,
    total: usize,
}

impl Levels {
    /// Sizes the three levels of one budget so that one frame fits in each (an inbound frame
    /// larger than a budget could never be reserved and its stream would wait for ever; a
    /// result budget smaller than one result would hold back every call after any large
    /// one), the server's holds at least a connection's, and an address's is no larger than
    /// the server's, above which it would mean nothing.
    fn new(per_connection: usize, per_address: usize, total: usize, max_frame_bytes: u32) -> Self {
        let frame = max_frame_bytes as usize;
        let per_connection = per_connection.max(frame).min(Semaphore::MAX_PERMITS);
        let total = total.max(per_connection).min(Semaphore::MAX_PERMITS);
        let per_address = per_address.max(frame).min(total);
        Levels {
            per_connection,
            per_address,
            total,
        }
    }
}

/// The server-wide budgets, shared by every connection.
pub(crate) struct ServerBudget {
    inbound: Arc<Semaphore>,
    outbound: OutputMeter,
    inbound_levels: Levels,
    outbound_levels: Levels,
    metrics: Arc<ServerMetrics>,
}

impl ServerBudget {
    pub fn new(limits: &ConnectionLimits, metrics: Arc<ServerMetrics>) -> Arc<Self> {
        let inbound_levels = Levels::new(
            limits.max_inbound_frame_bytes_per_connection,
            limits.max_inbound_frame_bytes_per_address,
            limits.max_inbound_frame_bytes,
            limits.max_frame_bytes,
        );
        let outbound_levels = Levels::new(
            limits.max_pending_result_bytes_per_connection,
            limits.max_pending_result_bytes_per_address,
            limits.max_pending_result_bytes,
            limits.max_frame_bytes,
        );
        Arc::new(ServerBudget {
            inbound: Arc::new(Semaphore::new(inbound_levels.total)),
            outbound: OutputMeter::new(outbound_levels.total),
            inbound_levels,
            outbound_levels,
            metrics,
        })
    }

    /// Fresh budgets for a source address (`Admission` keeps them, with its counts).
    pub fn address(&self) -> AddressBudget {
        AddressBudget {
            inbound: Arc::new(Semaphore::new(self.inbound_levels.per_address)),
            outbound: Arc::new(OutputMeter::new(self.outbound_levels.per_address)),
        }
    }

    /// Fresh budgets for one connection, drawing on its address's and on these.
    pub fn connection(self: &Arc<Self>, address: AddressSlot) -> ConnBudget {
        ConnBudget {
            inbound: Arc::new(Semaphore::new(self.inbound_levels.per_connection)),
            outbound: Arc::new(OutputMeter::new(self.outbound_levels.per_connection)),
            address: Arc::new(address),
            server: self.clone(),
        }
    }
}

/// One source address's budgets, shared by its connections.
#[derive(Clone)]
pub(crate) struct AddressBudget {
    inbound: Arc<Semaphore>,
    outbound: Arc<OutputMeter>,
}

/// One connection's budgets, shared by its control stream and call streams.
#[derive(Clone)]
pub(crate) struct ConnBudget {
    inbound: Arc<Semaphore>,
    outbound: Arc<OutputMeter>,
    address: Arc<AddressSlot>,
    server: Arc<ServerBudget>,
}

impl ConnBudget {
    /// Waits until `bytes` of an inbound frame fit in the connection's budget, then in its
    /// address's, then in the server's: a frame never holds a wider budget while it waits for
    /// a narrower one, so a connection, or an address, at its limit waits without holding bytes
    /// others could use. Every queue is first come, first served, so a large frame is not
    /// overtaken for ever by small ones. `None` only if a budget was closed, which nothing
    /// does.
    pub fn reserve(
        &self,
        bytes: u32,
    ) -> impl Future<Output = Option<Reservation>> + Send + 'static {
        let connection = self.inbound.clone();
        let address = self.address.clone();
        let server = self.server.clone();
        async move {
            let connection = connection.acquire_many_owned(bytes).await.ok()?;
            let address_permit = address
                .budget()
                .inbound
                .clone()
                .acquire_many_owned(bytes)
                .await
                .ok()?;
            let server_permit = server
                .inbound
                .clone()
                .acquire_many_owned(bytes)
                .await
                .ok()?;
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

    /// The result meters, narrowest first.
    fn meters(&self) -> [&OutputMeter; 3] {
        [
            &self.outbound,
            &self.address.budget().outbound,
            &self.server.outbound,
        ]
    }

    /// Whether a call may start now: the connection, its address and the server each hold
    /// less than their budget of unwritten results.
    pub fn has_output_room(&self) -> bool {
        self.meters().iter().all(|meter| meter.has_room())
    }

    /// Waits until `has_output_room` was true at one moment (it may be false again by the
    /// time the caller looks: the caller checks it before starting a call).
    pub async fn output_room(&self) {
        while let Some(full) = self.meters().into_iter().find(|meter| !meter.has_room()) {
            full.room().await;
        }
    }

    /// A count of unwritten result bytes, held in the three meters until written or dropped.
    pub fn held_output(&self) -> HeldOutput {
        HeldOutput {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes of one frame held in the three inbound budgets until dropped.
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

/// Bytes of encoded results not yet written under one budget. Counting never waits and may go
/// past the budget; what waits is starting a call, until the count is back below it.
struct OutputMeter {
    held: AtomicUsize,
    budget: usize,
    /// Woken when `held` falls from the budget or above to below it.
    below: Notify,
}

impl OutputMeter {
    fn new(budget: usize) -> Self {
        OutputMeter {
            held: AtomicUsize::new(0),
            budget,
            below: Notify::new(),
        }
    }

    fn has_room(&self) -> bool {
        self.held.load(Ordering::Acquire) < self.budget
    }

    fn add(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::AcqRel);
    }

    fn sub(&self, bytes: usize) {
        let before = self.held.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(before >= bytes, "released more result bytes than were held");
        // Only the crossing wakes anyone: writes below the budget cost no wake-ups.
        if before >= self.budget && before - bytes < self.budget {
            self.below.notify_waiters();
        }
    }

    /// Waits until the meter is below its budget.
    async fn room(&self) {
        loop {
            let mut below = pin!(self.below.notified());
            // Registered before looking, so a crossing between the look and the wait is seen.
            below.as_mut().enable();
            if self.has_room() {
                return;
            }
            below.await;
        }
    }
}

/// The unwritten result bytes of one call stream, counted in its connection's, address's and
/// the server's meters (and the gauge) until released or dropped. Keeps the address's entry,
/// and so its meter, for as long as it holds bytes, as a `Reservation` does.
pub(crate) struct HeldOutput {
    budget: ConnBudget,
    bytes: usize,
}

impl HeldOutput {
    pub fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        for meter in self.budget.meters() {
            meter.add(bytes);
        }
        self.budget
            .server
            .metrics
            .pending_result_bytes
            .fetch_add(gauge(bytes), Ordering::Relaxed);
    }

    /// Gives back `bytes` (at most what is held) once written.
    pub fn release(&mut self, bytes: usize) {
        debug_assert!(bytes <= self.bytes, "released more than held");
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        for meter in self.budget.meters() {
            meter.sub(bytes);
        }
        self.budget
            .server
            .metrics
            .pending_result_bytes
            .fetch_sub(gauge(bytes), Ordering::Relaxed);
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for HeldOutput {
    fn drop(&mut self) {
        self.release(self.bytes);
    }
}

fn gauge(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
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
        server: Arc<ServerBudget>,
        admission: Arc<Admission>,
    }

    impl Budgets {
        /// The same sizes for inbound frames and for unwritten results.
        fn new(per_connection: usize, per_address: usize, total: usize, max_frame: u32) -> Self {
            let limits = ConnectionLimits {
                max_frame_bytes: max_frame,
                max_inbound_frame_bytes_per_connection: per_connection,
                max_inbound_frame_bytes_per_address: per_address,
                max_inbound_frame_bytes: total,
                max_pending_result_bytes_per_connection: per_connection,
                max_pending_result_bytes_per_address: per_address,
                max_pending_result_bytes: total,
                ..ConnectionLimits::default()
            };
            let metrics = Arc::new(ServerMetrics::default());
            let server = ServerBudget::new(&limits, metrics.clone());
            let admission = Admission::new(&limits, server.clone(), metrics);
            Budgets { server, admission }
        }

        fn connection(&self, from: &str) -> ConnBudget {
            let remote: SocketAddr = from.parse().unwrap();
            self.server
                .connection(self.admission.claim(remote).expect("a slot"))
        }

        fn pending(&self) -> i64 {
            self.server
                .metrics
                .pending_result_bytes
                .load(Ordering::Relaxed)
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

    #[test]
    fn results_are_counted_without_waiting_and_calls_wait_below_each_budget() {
        let budgets = Budgets::new(100, 150, 200, 10);
        let (a1, a2, b) = (
            budgets.connection(A),
            budgets.connection(A),
            budgets.connection(B),
        );
        // A result is counted whole, past the budget: it exists already.
        let mut a1_out = a1.held_output();
        a1_out.add(120);
        assert!(!a1.has_output_room(), "a1 is over its budget");
        assert!(a2.has_output_room() && b.has_output_room());
        let mut a2_out = a2.held_output();
        a2_out.add(40);
        // A is over its budget (160 of 150): a2, under its own, waits too; b does not.
        assert!(!a2.has_output_room());
        let mut a2_waits = Box::pin(a2.output_room());
        assert!((&mut a2_waits).now_or_never().is_none());
        assert!(b.has_output_room(), "the server holds 160 of 200");
        let mut b_out = b.held_output();
        b_out.add(50);
        assert_eq!(budgets.pending(), 210);
        assert!(!b.has_output_room(), "over the server's budget");
        let mut b_waits = Box::pin(b.output_room());
        assert!((&mut b_waits).now_or_never().is_none());
        // Written in part: A is below its budget, the server below its own.
        a1_out.release(20);
        assert!(a2_waits.now_or_never().is_some(), "A's bytes came back");
        assert!(b_waits.now_or_never().is_some(), "the server's came back");
        assert!(!a1.has_output_room(), "a1 still holds its budget");
        drop((a1_out, a2_out, b_out));
        assert_eq!(budgets.pending(), 0);
        assert!(a1.has_output_room());
    }
}
