//! Who may connect: the server-wide connection limit, checked on each handshake; a QUIC Retry
//! (stateless address validation) for unvalidated clients once half the slots are taken; a cap
//! per source address (an IPv4 address or an IPv6 /64), checked once the handshake has proven
//! the address, with the byte budgets its connections share (see `budget`); and refusals
//! logged at a bounded rate, since they come at the attacker's pace.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::budget::{AddressBudget, ServerBudget};
use crate::config::ConnectionLimits;
use crate::log_limit::LogLimit;
use crate::metrics::ServerMetrics;
use parking_lot::Mutex;
use quinn::Incoming;

pub(crate) struct Admission {
    max_connections: usize,
    max_per_address: usize,
    /// Makes each address's byte budgets.
    budget: Arc<ServerBudget>,
    /// Per source address with a connection past its handshake; an entry is removed when its
    /// last connection's slot is given back, so there are at most `max_connections` of them.
    per_address: Mutex<HashMap<AddressKey, AddressState>>,
    server_full: Mutex<LogLimit>,
    address_full: Mutex<LogLimit>,
    metrics: Arc<ServerMetrics>,
}

impl Admission {
    /// `budget` makes each address's byte budgets.
    pub fn new(
        limits: &ConnectionLimits,
        budget: Arc<ServerBudget>,
        metrics: Arc<ServerMetrics>,
    ) -> Arc<Self> {
        Arc::new(Admission {
            max_connections: limits.max_connections,
            max_per_address: limits.max_connections_per_address.max(1),
            budget,
            per_address: Mutex::new(HashMap::new()),
            server_full: Mutex::new(LogLimit::default()),
            address_full: Mutex::new(LogLimit::default()),
            metrics,
        })
    }

    /// Decides on a new handshake, given the connections open now (handshakes included).
    /// Returns it when it may go ahead; otherwise it has been refused or sent a Retry.
    ///
    /// Below half the limit no Retry is asked for, which would cost every client a round trip;
    /// above it, a client must prove its address before it takes a slot, so Initials from
    /// spoofed addresses cannot hold the remaining slots for the handshake timeout.
    pub fn admit(&self, incoming: Incoming, open: usize) -> Option<Incoming> {
        let remote = incoming.remote_address();
        if open >= self.max_connections {
            self.metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            if let Some(earlier) = self.server_full.lock().note(Instant::now()) {
                tracing::warn!(
                    %remote,
                    refused_since_last_line = earlier,
                    max_connections = self.max_connections,
                    "connection limit reached; refusing handshakes"
                );
            }
            incoming.refuse();
            return None;
        }
        if !incoming.remote_address_validated() && open.saturating_mul(2) >= self.max_connections {
            match incoming.retry() {
                Ok(()) => {
                    self.metrics
                        .connection_retries
                        .fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                // Not allowed for this packet: it goes ahead unvalidated.
                Err(e) => return Some(e.into_incoming()),
            }
        }
        Some(incoming)
    }

    /// Takes a slot for a connection from `remote` whose handshake is complete, or `None`
    /// (counted and logged) when its address already has as many connections as it may.
    pub fn claim(self: &Arc<Self>, remote: SocketAddr) -> Option<AddressSlot> {
        let key = AddressKey::of(remote.ip());
        {
            let mut per_address = self.per_address.lock();
            let state = per_address.entry(key).or_insert_with(|| AddressState {
                open: 0,
                budget: self.budget.address(),
            });
            if state.open < self.max_per_address {
                state.open += 1;
                return Some(AddressSlot {
                    admission: self.clone(),
                    key,
                    budget: state.budget.clone(),
                });
            }
        }
        self.metrics
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .connections_refused_per_address
            .fetch_add(1, Ordering::Relaxed);
        if let Some(earlier) = self.address_full.lock().note(Instant::now()) {
            tracing::warn!(
                address = %key,
                refused_since_last_line = earlier,
                max_connections_per_address = self.max_per_address,
                "too many connections from one address; closing new ones"
            );
        }
        None
    }
}

/// What one source address holds: its connections, and the byte budgets they share.
struct AddressState {
    open: usize,
    budget: AddressBudget,
}

/// One connection's place in its address's count, given back when dropped. The connection's
/// byte budget holds it, and so does each of its reservations: the address's entry, byte budget
/// included, outlives every byte reserved from it, so a returning address never finds a fresh
/// budget while bytes of an ending connection are still held.
pub(crate) struct AddressSlot {
    admission: Arc<Admission>,
    key: AddressKey,
    budget: AddressBudget,
}

impl AddressSlot {
    /// The byte budgets shared by the address's connections.
    pub fn budget(&self) -> &AddressBudget {
        &self.budget
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut per_address = self.admission.per_address.lock();
        if let Some(state) = per_address.get_mut(&self.key) {
            state.open = state.open.saturating_sub(1);
            if state.open == 0 {
                per_address.remove(&self.key);
            }
        }
    }
}

/// What connections are counted by: an IPv4 address, or the /64 of an IPv6 address, the
/// block one host usually gets (one IPv6 host could otherwise take every slot by itself).
/// IPv4 clients reaching a dual-stack socket are counted by their IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AddressKey {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl AddressKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4),
                None => AddressKey::V6Prefix((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

impl fmt::Display for AddressKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressKey::V4(v4) => v4.fmt(f),
            AddressKey::V6Prefix(prefix) => {
                write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*prefix) << 64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn addresses_are_counted_by_ipv4_address_or_ipv6_slash_64() {
        let key = |s: &str| AddressKey::of(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("192.0.2.7").to_string(), "192.0.2.7");
    }

    #[test]
    fn an_address_slot_is_given_back_when_dropped() {
        let limits = ConnectionLimits {
            max_connections_per_address: 2,
            ..ConnectionLimits::default()
        };
        let metrics = Arc::new(ServerMetrics::default());
        let admission = Admission::new(
            &limits,
            ServerBudget::new(&limits, metrics.clone()),
            metrics,
        );
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        let first = admission.claim(a).unwrap();
        let _second = admission.claim(a).unwrap();
        assert!(admission.claim(a).is_none());
        let _other = admission.claim(b).unwrap();
        drop(first);
        assert!(admission.claim(a).is_some());
        assert_eq!(
            admission
                .metrics
                .connections_refused_per_address
                .load(Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn an_address_entry_lasts_until_its_connections_and_their_bytes_are_gone() {
        let limits = ConnectionLimits::default();
        let metrics = Arc::new(ServerMetrics::default());
        let budget = ServerBudget::new(&limits, metrics.clone());
        let admission = Admission::new(&limits, budget.clone(), metrics);
        let conn = budget.connection(admission.claim("192.0.2.1:1000".parse().unwrap()).unwrap());
        let reservation = conn.reserve(10).now_or_never().flatten().expect("fits");
        drop(conn);
        assert_eq!(admission.per_address.lock().len(), 1, "bytes still held");
        drop(reservation);
        assert!(admission.per_address.lock().is_empty());
    }
}
