//! Subscriptions on the client: the table of live queries with their current values, how a
//! `Transition` moves all of them at once (diffs applied, stale or repeated results held back),
//! and the `Subscription` stream a caller reads, which keeps only the latest undelivered value.
//! A result equal to the one last handed to the reader is never handed over again, whether it
//! comes back after a reconnect, a re-subscription or a detour through other values.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::Stream;
use parking_lot::Mutex;
use query_engine::diff::{self, ResultDiff};
use query_engine::protocol::{ClientMessage, Modification};
use query_engine::value::Value;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::ClientError;

/// The single-value mailbox between the connection and one `Subscription`: a newer value
/// overwrites an unread older one, so a slow reader costs one value of memory, not a queue;
/// one equal to the value the reader last took withdraws the unread one instead.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    latest: Option<Result<Value, ClientError>>,
    /// The value the reader last took: a value that replaces an unread one may be the very
    /// one the reader has, which is no news. A copy that shares the result's objects (one
    /// reference count each), compared only over an unread value, so a reader that keeps up
    /// pays for the copy alone.
    taken: Option<Value>,
    ended: bool,
    waker: Option<Waker>,
}

impl Slot {
    /// Offers a new value, news to the reader if it read everything before; returns the
    /// reader's waker to wake once every slot of the transition has been written.
    fn publish(&self, value: Value) -> Option<Waker> {
        let mut s = self.state.lock();
        if s.ended {
            return None;
        }
        // Over an unread value (a slow reader, the only case that pays for the comparison),
        // the result may have come back to what the reader took: then it has nothing new.
        if s.latest.is_some() && s.taken.as_ref() == Some(&value) {
            s.latest = None;
            return None;
        }
        s.latest = Some(Ok(value));
        s.waker.take()
    }

    /// Ends the stream, after `error` if given (which replaces an unread value).
    pub(crate) fn end(&self, error: Option<ClientError>) -> Option<Waker> {
        let mut s = self.state.lock();
        if s.ended {
            return None;
        }
        s.ended = true;
        if let Some(e) = error {
            s.latest = Some(Err(e));
        }
        s.waker.take()
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Value, ClientError>>> {
        let mut s = self.state.lock();
        if let Some(item) = s.latest.take() {
            s.taken = item.as_ref().ok().cloned();
            return Poll::Ready(Some(item));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// What a `Subscription` tells its client: it was dropped, or (tests only) its copy drifted.
pub(crate) trait SubscriptionOwner: Send + Sync {
    fn unsubscribe(&self, key: u64);
    fn resubscribe(&self, key: u64);
}

/// A live query: a `Stream` of its results, each at least as new as the one before. The first
/// item is the current result; later items arrive as the data changes. A failure of the query
/// (e.g. `FORBIDDEN`) is yielded as one `Err` and ends the stream. Reconnects are invisible:
/// the stream pauses and resumes with the current state. So is a token that lapsed while a
/// token refresher is set: a query that failed only for it (protocol §11) pauses, and resumes
/// once a fresh token is accepted, or ends with the `UNAUTHORIZED` if none comes. Dropping it
/// unsubscribes.
pub struct Subscription {
    key: u64,
    function: String,
    slot: Arc<Slot>,
    owner: Arc<dyn SubscriptionOwner>,
}

impl Subscription {
    pub(crate) fn new(
        key: u64,
        function: String,
        slot: Arc<Slot>,
        owner: Arc<dyn SubscriptionOwner>,
    ) -> Self {
        Self {
            key,
            function,
            slot,
            owner,
        }
    }

    /// The subscribed query's name.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// For tests of the SDK against a real server, which never sends a diff that does not
    /// apply: handles the subscription as if its local copy had drifted from the server's
    /// (protocol §7), subscribing it again under a fresh query id.
    #[doc(hidden)]
    pub fn simulate_drift(&self) {
        self.owner.resubscribe(self.key);
    }

    /// The same subscription, with each result decoded into `R`.
    pub fn typed<R: DeserializeOwned>(self) -> TypedSubscription<R> {
        TypedSubscription {
            inner: self,
            _result: PhantomData,
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("function", &self.function)
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Result<Value, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.slot.poll(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.owner.unsubscribe(self.key);
    }
}

/// A `Subscription` whose results are decoded into `R`; a result that does not decode is
/// yielded as `ClientError::Decode` (the stream goes on).
pub struct TypedSubscription<R> {
    inner: Subscription,
    _result: PhantomData<fn() -> R>,
}

impl<R> TypedSubscription<R> {
    pub fn function(&self) -> &str {
        self.inner.function()
    }
}

impl<R> std::fmt::Debug for TypedSubscription<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl<R: DeserializeOwned> Stream for TypedSubscription<R> {
    type Item = Result<R, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.slot.poll(cx).map(|item| {
            item.map(|r| {
                r.and_then(|v| {
                    query_engine::json::from_value(&v)
                        .map_err(|e| ClientError::Decode(e.to_string()))
                })
            })
        })
    }
}

/// One live subscription's client-side state.
struct SubEntry {
    query_id: u32,
    function: String,
    args: Value,
    /// The result as of the last transition that touched it, on connection `value_gen`; the
    /// base that the next array diff applies to.
    value: Option<Value>,
    value_gen: u64,
    /// `endTs` of the last transition whose result was handed to the reader: a result from
    /// an earlier timestamp (say, from a server restored from an older backup) is held back.
    delivered_ts: Option<u64>,
    /// What the reader was last given, next to `value`.
    delivered: Delivered,
    slot: Arc<Slot>,
    /// The server ended the query because the connection's token had lapsed (`Failed` marked
    /// `tokenExpired`, §11): it waits, under no query id, to be subscribed again once a fresh
    /// token is accepted, or to end with this error if none comes.
    parked: Option<ClientError>,
}

/// What a subscription's reader was last handed, as far as telling whether the entry's
/// `value` is news to it. Kept as "that very value" while results flow as usual, so the common
/// path copies and hashes nothing; only when `value` may move away from it without the reader
/// being told (results held back during a resync or as stale, a drifted copy dropped) is the
/// reader's result reduced to a fingerprint, to compare what is handed over later with.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Delivered {
    /// Nothing, or a result known to differ from `value`: `value` is news.
    Older,
    /// Exactly `value`.
    Value,
    /// The result with this fingerprint; `value` may or may not equal it.
    Fingerprint([u8; 32]),
}

/// SHA-256 of a result's canonical encoding (the order-preserving key encoding, which maps
/// equal values, and only those, to equal bytes): 32 bytes kept instead of a copy of a
/// result that may be large.
fn fingerprint(value: &Value) -> [u8; 32] {
    let mut bytes = Vec::new();
    query_engine::encoding::encode_value(value, &mut bytes);
    Sha256::digest(&bytes).into()
}

impl SubEntry {
    /// The `Subscribe` of this subscription under its current query id.
    fn subscribe_message(&self) -> ClientMessage {
        ClientMessage::Subscribe {
            query_id: self.query_id,
            function: self.function.clone(),
            args: self.args.clone(),
        }
    }

    /// `value` is about to change without the reader being told at once: keep a fingerprint
    /// of what the reader has, if that is `value`.
    fn detach_from_reader(&mut self) {
        if self.delivered == Delivered::Value {
            self.delivered = match &self.value {
                Some(value) => Delivered::Fingerprint(fingerprint(value)),
                None => Delivered::Older,
            };
        }
    }

    /// `value` was changed while results flow as usual (it is handed over in this transition).
    fn changed_in_step(&mut self) {
        if self.delivered == Delivered::Value {
            self.delivered = Delivered::Older;
        }
    }

    /// Hands `value` to the reader unless the reader already has it; returns the reader's
    /// waker if it was handed over.
    fn deliver(&mut self) -> Option<Waker> {
        let value = self.value.as_ref()?;
        let news = match self.delivered {
            Delivered::Value => false,
            Delivered::Older => true,
            Delivered::Fingerprint(seen) => fingerprint(value) != seen,
        };
        self.delivered = Delivered::Value;
        if news {
            self.slot.publish(value.clone())
        } else {
            None
        }
    }
}

/// What applying a transition asks the connection to do next.
#[derive(Default)]
pub(crate) struct TransitionEffects {
    /// Readers to wake, after the whole transition was applied.
    pub wakers: Vec<Waker>,
    /// Control messages to send (re-subscriptions of queries whose copy drifted).
    pub outbox: Vec<ClientMessage>,
    /// Some subscription failed for a lapsed token and was parked (`SubEntry::parked`): the
    /// client decides whether it waits, is subscribed again or ends.
    pub parked: bool,
}

/// Every live subscription of a client, across connections. Keys are local and stable;
/// query ids are what the current connection knows them by.
pub(crate) struct SubscriptionTable {
    entries: HashMap<u64, SubEntry>,
    by_query_id: HashMap<u32, u64>,
    next_key: u64,
    next_query_id: u32,
    /// Connection generation whose transitions are being applied.
    conn_gen: u64,
    /// `endTs` of the last transition on that connection; 0 before the first.
    conn_ts: u64,
    /// Subscriptions re-subscribed on this connection whose first result has not come yet.
    /// While any is left, new results are held back (`held`), so the reader never sees some
    /// results from the new connection beside others from the old one (protocol §12.3).
    resyncing: HashSet<u64>,
    /// Subscriptions whose results changed while held back (resyncing); each compares its
    /// value with what its reader has when they are released.
    held: HashSet<u64>,
}

impl SubscriptionTable {
    pub(crate) fn new() -> Self {
        Self {
            entries: HashMap::new(),
            by_query_id: HashMap::new(),
            next_key: 0,
            next_query_id: 1,
            conn_gen: 0,
            conn_ts: 0,
            resyncing: HashSet::new(),
            held: HashSet::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Registers a subscription; returns its key, its slot and the `Subscribe` to send.
    pub(crate) fn insert(
        &mut self,
        function: String,
        args: Value,
    ) -> (u64, Arc<Slot>, ClientMessage) {
        let key = self.next_key;
        self.next_key += 1;
        let query_id = self.allocate_query_id();
        let slot = Arc::new(Slot::default());
        let subscribe = ClientMessage::Subscribe {
            query_id,
            function: function.clone(),
            args: args.clone(),
        };
        self.by_query_id.insert(query_id, key);
        self.entries.insert(
            key,
            SubEntry {
                query_id,
                function,
                args,
                value: None,
                value_gen: 0,
                delivered_ts: None,
                delivered: Delivered::Older,
                slot: slot.clone(),
                parked: None,
            },
        );
        (key, slot, subscribe)
    }

    /// Forgets a subscription; returns the `Unsubscribe` to send if it was still live (a
    /// parked one is not, on the server), and the readers to wake: if it was the last
    /// re-subscription the others' results waited for after a reconnect, they are handed over
    /// now (its `Subscribe` may have been withdrawn unsent, and then no transition follows).
    pub(crate) fn remove(&mut self, key: u64) -> (Option<ClientMessage>, Vec<Waker>) {
        let Some(entry) = self.entries.remove(&key) else {
            return (None, Vec::new());
        };
        self.resyncing.remove(&key);
        self.held.remove(&key);
        let mut wakers = Vec::new();
        self.release_held(&mut wakers);
        if entry.parked.is_some() {
            return (None, wakers);
        }
        self.by_query_id.remove(&entry.query_id);
        let unsubscribe = ClientMessage::Unsubscribe {
            query_id: entry.query_id,
        };
        (Some(unsubscribe), wakers)
    }

    /// A new connection (generation `gen`) is up, its transitions at `ts` so far (0, or the
    /// end of empty transitions seen during the handshake): nothing of the old one survives on
    /// the server, so every live query is subscribed again. Values stay as they are until the
    /// new connection has a first result (or failure) for every one of them, and then all
    /// change together.
    pub(crate) fn begin_connection(&mut self, gen: u64, ts: u64) -> Vec<ClientMessage> {
        self.conn_gen = gen;
        self.conn_ts = ts;
        for entry in self.entries.values_mut() {
            // Subscribed again below, under the token this connection signed in with.
            entry.parked = None;
        }
        self.resyncing = self.entries.keys().copied().collect();
        self.held.clear();
        self.by_query_id = self
            .entries
            .iter()
            .map(|(key, e)| (e.query_id, *key))
            .collect();
        let mut keys: Vec<u64> = self.entries.keys().copied().collect();
        keys.sort_unstable();
        keys.iter()
            .filter_map(|key| self.entries.get(key))
            .map(SubEntry::subscribe_message)
            .collect()
    }

    /// Applies one transition of the current connection to every subscription it names, then
    /// hands the new results to their readers. `Err` means the server broke the protocol
    /// (a gap in timestamps) and the connection must be dropped.
    pub(crate) fn apply_transition(
        &mut self,
        start_ts: u64,
        end_ts: u64,
        modifications: Vec<Modification>,
    ) -> Result<TransitionEffects, String> {
        if start_ts != self.conn_ts {
            return Err(format!(
                "transition starts at {start_ts} but the previous one ended at {}",
                self.conn_ts
            ));
        }
        if end_ts < start_ts {
            return Err(format!(
                "transition ends at {end_ts}, before its start {start_ts}"
            ));
        }
        self.conn_ts = end_ts;
        let mut effects = TransitionEffects::default();
        // Results are held back while re-subscriptions are to answer, or released now.
        let holding = !self.resyncing.is_empty() || !self.held.is_empty();
        // Keys whose value this transition updated (or confirmed).
        let mut changed: Vec<u64> = Vec::new();
        for modification in modifications {
            match modification {
                Modification::Updated { query_id, diff } => {
                    let Some(&key) = self.by_query_id.get(&query_id) else {
                        continue; // unsubscribed meanwhile
                    };
                    let Some(entry) = self.entries.get_mut(&key) else {
                        continue;
                    };
                    // Not handed over in this transition: the reader's result must be
                    // remembered before `value` moves away from it.
                    let deferred = holding || end_ts < entry.delivered_ts.unwrap_or(0);
                    match diff {
                        ResultDiff::Replace(new_value) => {
                            self.resyncing.remove(&key);
                            // The same value again (as after a reconnect) changes nothing.
                            if entry.value.as_ref() != Some(&new_value) {
                                if deferred {
                                    entry.detach_from_reader();
                                } else {
                                    entry.changed_in_step();
                                }
                                entry.value = Some(new_value);
                            }
                        }
                        ResultDiff::Array(_) => {
                            if entry.value.is_none() || entry.value_gen != self.conn_gen {
                                // An array diff with no base from this connection: drifted.
                                self.resubscribe(key, &mut effects);
                                continue;
                            }
                            if deferred {
                                entry.detach_from_reader();
                            }
                            let Some(base) = entry.value.as_mut() else {
                                continue;
                            };
                            // Edited in place: no copy of the list per transition; on error
                            // the base is left as it was.
                            if let Err(e) = diff::apply_in_place(base, &diff) {
                                tracing::warn!(query_id, error = %e, "result diff does not apply; resubscribing");
                                self.resubscribe(key, &mut effects);
                                continue;
                            }
                            entry.changed_in_step();
                        }
                    }
                    entry.value_gen = self.conn_gen;
                    changed.push(key);
                }
                Modification::Failed { query_id, error } => {
                    let error = ClientError::function(error);
                    // Failed only for want of a fresh token: not the query's end, yet.
                    if error.is_token_expired() {
                        effects.parked |= self.park(query_id, error);
                    } else {
                        effects.wakers.extend(self.end_query(query_id, error));
                    }
                }
                Modification::Removed { query_id } => {
                    // Only sent after our Unsubscribe, by which time the entry is gone.
                    if let Some(key) = self.by_query_id.get(&query_id).copied() {
                        if !self.entries.contains_key(&key) {
                            self.by_query_id.remove(&query_id);
                        }
                    }
                }
            }
        }
        let changed: Vec<u64> = if holding {
            // Held back with the others while re-subscriptions are still to answer.
            self.held.extend(changed);
            if !self.resyncing.is_empty() {
                return Ok(effects);
            }
            self.held.drain().collect()
        } else {
            changed
        };
        // Every value is updated; now expose them together.
        self.hand_over(changed, end_ts, &mut effects.wakers);
        Ok(effects)
    }

    /// Hands the values of `keys`, as of `end_ts`, to their readers.
    fn hand_over(&mut self, keys: Vec<u64>, end_ts: u64, wakers: &mut Vec<Waker>) {
        for key in keys {
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if end_ts < entry.delivered_ts.unwrap_or(0) {
                // Older than what the reader has seen: kept as the diff base only.
                continue;
            }
            entry.delivered_ts = Some(end_ts);
            wakers.extend(entry.deliver());
        }
    }

    /// Ends the subscription the connection knows as `query_id` with `error`; returns its
    /// reader's waker.
    fn end_query(&mut self, query_id: u32, error: ClientError) -> Option<Waker> {
        let key = self.by_query_id.remove(&query_id)?;
        self.resyncing.remove(&key);
        self.held.remove(&key);
        self.entries.remove(&key)?.slot.end(Some(error))
    }

    /// The server ended the subscription it knows as `query_id` because the token lapsed:
    /// it keeps its value and reader and waits, under no query id, for `resume_parked` or
    /// `end_parked`. It answered its re-subscription, if it was one, so the others' results
    /// no longer wait for it. Returns whether it was live.
    fn park(&mut self, query_id: u32, error: ClientError) -> bool {
        let Some(key) = self.by_query_id.remove(&query_id) else {
            return false;
        };
        self.resyncing.remove(&key);
        // Its value changes nowhere while parked; released with the others it is news to no one.
        self.held.remove(&key);
        match self.entries.get_mut(&key) {
            Some(entry) => {
                entry.parked = Some(error);
                true
            }
            None => false,
        }
    }

    /// The keys of the subscriptions parked for a lapsed token, oldest first.
    fn parked_keys(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| e.parked.is_some())
            .map(|(key, _)| *key)
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Whether any subscription is parked for a lapsed token.
    pub(crate) fn has_parked(&self) -> bool {
        self.entries.values().any(|e| e.parked.is_some())
    }

    /// A fresh token was accepted: every parked subscription is subscribed again under a fresh
    /// query id (a late message for the old one is then ignored). The fresh subscription's
    /// first result is compared with what the reader has, as after a reconnect: the same
    /// result is no update. Returns the `Subscribe`s to send.
    pub(crate) fn resume_parked(&mut self) -> Vec<ClientMessage> {
        let keys = self.parked_keys();
        let mut subscribes = Vec::with_capacity(keys.len());
        for key in keys {
            let query_id = self.allocate_query_id();
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            entry.parked = None;
            entry.query_id = query_id;
            self.by_query_id.insert(query_id, key);
            subscribes.push(entry.subscribe_message());
        }
        subscribes
    }

    /// No fresh token will come: every parked subscription ends with its error. Returns the
    /// readers' wakers.
    pub(crate) fn end_parked(&mut self) -> Vec<Waker> {
        self.parked_keys()
            .into_iter()
            .filter_map(|key| {
                let entry = self.entries.remove(&key)?;
                entry.slot.end(entry.parked)
            })
            .collect()
    }

    /// Ends the subscription whose `Subscribe` for `query_id` could not be sent with `error`,
    /// between transitions. If it was the last one the others' results waited for after a
    /// reconnect, they are handed over now, as of the connection's last transition.
    pub(crate) fn fail(&mut self, query_id: u32, error: ClientError) -> Vec<Waker> {
        let mut wakers: Vec<Waker> = self.end_query(query_id, error).into_iter().collect();
        self.release_held(&mut wakers);
        wakers
    }

    /// Between transitions, once no re-subscription is left to answer: hands the results held
    /// back for them to their readers, as of the connection's last transition.
    fn release_held(&mut self, wakers: &mut Vec<Waker>) {
        if self.resyncing.is_empty() && !self.held.is_empty() {
            let held = self.held.drain().collect();
            self.hand_over(held, self.conn_ts, wakers);
        }
    }

    /// Ends every subscription (the client is closed or gave up reconnecting).
    pub(crate) fn end_all(&mut self, error: Option<ClientError>) -> Vec<Waker> {
        self.by_query_id.clear();
        self.resyncing.clear();
        self.held.clear();
        self.entries
            .drain()
            .filter_map(|(_, e)| e.slot.end(error.clone()))
            .collect()
    }

    /// The local copy of `key` drifted from the server's: subscribe again under a fresh id,
    /// whose first result is a full `replace`.
    pub(crate) fn resubscribe(&mut self, key: u64, effects: &mut TransitionEffects) {
        if self.entries.get(&key).is_none_or(|e| e.parked.is_some()) {
            // Gone, or subscribed again anyway once it is resumed.
            return;
        }
        let query_id = self.allocate_query_id();
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        self.by_query_id.remove(&entry.query_id);
        effects.outbox.push(ClientMessage::Unsubscribe {
            query_id: entry.query_id,
        });
        entry.query_id = query_id;
        // The fresh subscription's first result is compared with what the reader has: the
        // same result again is no update.
        entry.detach_from_reader();
        entry.value = None;
        effects.outbox.push(entry.subscribe_message());
        self.by_query_id.insert(query_id, key);
    }

    fn allocate_query_id(&mut self) -> u32 {
        // Ids are not reused until the counter wraps, so a late `Removed` or `Updated` for a
        // dropped subscription can never be mistaken for a new one.
        loop {
            let id = self.next_query_id;
            self.next_query_id = self.next_query_id.wrapping_add(1);
            if !self.by_query_id.contains_key(&id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker;
    use query_engine::diff::ArrayEdit;
    use query_engine::obj;
    use query_engine::protocol::ErrorPayload;

    fn poll_now(slot: &Slot) -> Poll<Option<Result<Value, ClientError>>> {
        let waker = noop_waker();
        slot.poll(&mut Context::from_waker(&waker))
    }

    fn next_value(slot: &Slot) -> Option<Value> {
        match poll_now(slot) {
            Poll::Ready(Some(Ok(v))) => Some(v),
            Poll::Pending => None,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn doc(id: &str, n: i64) -> Value {
        obj! {"_id" => id, "n" => n}
    }

    fn list(items: &[(&str, i64)]) -> Value {
        Value::Array(items.iter().map(|(id, n)| doc(id, *n)).collect())
    }

    fn updated(query_id: u32, diff: ResultDiff) -> Modification {
        Modification::Updated { query_id, diff }
    }

    fn query_id_of(msg: &ClientMessage) -> u32 {
        match msg {
            ClientMessage::Subscribe { query_id, .. } | ClientMessage::Unsubscribe { query_id } => {
                *query_id
            }
            other => panic!("not a subscription message: {other:?}"),
        }
    }

    #[test]
    fn replace_then_array_diffs_apply_in_order() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, slot, sub) = t.insert("list".into(), obj! {});
        let q = query_id_of(&sub);
        let v0 = list(&[("a", 1), ("b", 2), ("c", 3)]);
        t.apply_transition(0, 10, vec![updated(q, ResultDiff::Replace(v0.clone()))])
            .unwrap();
        assert_eq!(next_value(&slot), Some(v0.clone()));
        let v1 = list(&[("b", 2), ("c", 30), ("d", 4)]);
        // The worked example of protocol §7.
        let d = ResultDiff::Array(vec![
            ArrayEdit::Remove {
                index: 0,
                id: "a".into(),
            },
            ArrayEdit::Change {
                index: 1,
                id: "c".into(),
                value: doc("c", 30),
            },
            ArrayEdit::Insert {
                index: 2,
                value: doc("d", 4),
            },
        ]);
        let effects = t.apply_transition(10, 12, vec![updated(q, d)]).unwrap();
        assert!(effects.outbox.is_empty());
        assert_eq!(next_value(&slot), Some(v1));
        // A transition without modifications changes nothing.
        t.apply_transition(12, 15, vec![]).unwrap();
        assert_eq!(next_value(&slot), None);
    }

    #[test]
    fn slow_reader_sees_only_the_latest_value() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, slot, sub) = t.insert("count".into(), obj! {});
        let q = query_id_of(&sub);
        for n in 0..100u64 {
            let value = Value::Int64(n as i64);
            t.apply_transition(n, n + 1, vec![updated(q, ResultDiff::Replace(value))])
                .unwrap();
        }
        assert_eq!(next_value(&slot), Some(Value::Int64(99)));
        assert_eq!(next_value(&slot), None);
    }

    /// A reader that took V and has not read V′ yet, when the result goes back to V, already
    /// has it: the unread V′ is dropped and V is not handed over again.
    #[test]
    fn a_slow_reader_is_not_handed_the_result_it_has_again() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, slot, sub) = t.insert("count".into(), obj! {});
        let q = query_id_of(&sub);
        let replace = |n: i64| vec![updated(q, ResultDiff::Replace(Value::Int64(n)))];
        t.apply_transition(0, 1, replace(1)).unwrap();
        assert_eq!(next_value(&slot), Some(Value::Int64(1)));
        t.apply_transition(1, 2, replace(2)).unwrap();
        t.apply_transition(2, 3, replace(1)).unwrap();
        assert_eq!(
            next_value(&slot),
            None,
            "the result the reader has, handed over again"
        );
        // Later results flow as usual, the one it had before included.
        t.apply_transition(3, 4, replace(2)).unwrap();
        assert_eq!(next_value(&slot), Some(Value::Int64(2)));
        t.apply_transition(4, 5, replace(1)).unwrap();
        assert_eq!(next_value(&slot), Some(Value::Int64(1)));
    }

    #[test]
    fn gaps_and_backward_transitions_are_protocol_violations() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        assert!(t.apply_transition(5, 6, vec![]).is_err());
        t.apply_transition(0, 6, vec![]).unwrap();
        assert!(t.apply_transition(7, 8, vec![]).is_err());
        assert!(t.apply_transition(6, 5, vec![]).is_err());
        t.apply_transition(6, 6, vec![]).unwrap();
    }

    /// After a reconnect the readers keep the old connection's results until the new one has
    /// answered every re-subscription, then all change at once (protocol §12.3): never some
    /// results from the new connection beside others from the old.
    #[test]
    fn after_a_reconnect_results_change_together() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, a, sub_a) = t.insert("a".into(), obj! {});
        let (_, b, sub_b) = t.insert("b".into(), obj! {});
        let (_, c, sub_c) = t.insert("c".into(), obj! {});
        let (qa, qb, qc) = (
            query_id_of(&sub_a),
            query_id_of(&sub_b),
            query_id_of(&sub_c),
        );
        let replace = |q, n: i64| updated(q, ResultDiff::Replace(Value::Int64(n)));
        t.apply_transition(0, 10, vec![replace(qa, 1), replace(qb, 1), replace(qc, 1)])
            .unwrap();
        for s in [&a, &b, &c] {
            assert_eq!(next_value(s), Some(Value::Int64(1)));
        }

        let resubscribed: Vec<u32> = t.begin_connection(2, 0).iter().map(query_id_of).collect();
        assert_eq!(resubscribed.len(), 3);
        t.apply_transition(0, 20, vec![replace(qa, 2)]).unwrap();
        assert_eq!(next_value(&a), None, "a waits for b and c");
        // c's query now fails: it ends, and no longer holds the others back once b answers.
        t.apply_transition(
            20,
            21,
            vec![
                replace(qa, 3),
                Modification::Failed {
                    query_id: qc,
                    error: ErrorPayload {
                        code: "FORBIDDEN".into(),
                        message: "no".into(),
                        data: Value::Null,
                    },
                },
            ],
        )
        .unwrap();
        assert_eq!(next_value(&a), None);
        assert!(matches!(poll_now(&c), Poll::Ready(Some(Err(_)))));
        t.apply_transition(21, 22, vec![replace(qb, 1)]).unwrap();
        assert_eq!(next_value(&a), Some(Value::Int64(3)));
        assert_eq!(next_value(&b), None, "b's result is the one its reader has");
        // Afterwards, results flow as usual.
        t.apply_transition(22, 23, vec![replace(qb, 4)]).unwrap();
        assert_eq!(next_value(&b), Some(Value::Int64(4)));
        // Dropping a subscription that has not answered yet does not hold the rest for ever.
        t.begin_connection(3, 23);
        t.apply_transition(23, 25, vec![replace(qa, 5)]).unwrap();
        assert_eq!(next_value(&a), None);
        let key_b = *t.by_query_id.get(&qb).unwrap();
        t.remove(key_b);
        t.apply_transition(25, 26, vec![]).unwrap();
        assert_eq!(next_value(&a), Some(Value::Int64(5)));
    }

    /// A subscription dropped while the others' results wait for its re-subscription's first
    /// result hands them over at once: its `Subscribe` may have been withdrawn unsent, and then
    /// no transition about it (nor any other, on a quiet server) ever comes.
    #[test]
    fn dropping_the_last_resubscription_waited_for_releases_the_held_results() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, a, sub_a) = t.insert("a".into(), obj! {});
        let (key_b, _, _) = t.insert("b".into(), obj! {});
        let qa = query_id_of(&sub_a);
        t.begin_connection(2, 0);
        t.apply_transition(
            0,
            5,
            vec![updated(qa, ResultDiff::Replace(Value::Int64(1)))],
        )
        .unwrap();
        assert_eq!(next_value(&a), None, "a waits for b");
        let (unsubscribe, wakers) = t.remove(key_b);
        assert!(unsubscribe.is_some());
        assert_eq!(wakers.len(), 1, "a's reader is woken");
        assert_eq!(next_value(&a), Some(Value::Int64(1)));
    }

    /// A re-subscription that cannot be sent (after a reconnect to a server with a lower
    /// frame limit) ends with the error, and the results held back for it go to their readers.
    #[test]
    fn a_resubscription_that_cannot_be_sent_ends_and_holds_back_no_one() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, a, sub_a) = t.insert("a".into(), obj! {});
        let (_, big, sub_big) = t.insert("big".into(), obj! {});
        let (qa, qbig) = (query_id_of(&sub_a), query_id_of(&sub_big));
        let replace = |q, n: i64| updated(q, ResultDiff::Replace(Value::Int64(n)));
        t.apply_transition(0, 10, vec![replace(qa, 1), replace(qbig, 1)])
            .unwrap();
        assert_eq!(next_value(&a), Some(Value::Int64(1)));
        assert_eq!(next_value(&big), Some(Value::Int64(1)));

        t.begin_connection(2, 0);
        t.apply_transition(0, 20, vec![replace(qa, 2)]).unwrap();
        assert_eq!(next_value(&a), None, "a waits for big");
        assert_eq!(next_value(&big), None);
        let wakers = t.fail(qbig, ClientError::Encode("too large".into()));
        assert_eq!(wakers.len(), 2, "both readers are woken");
        assert!(matches!(
            poll_now(&big),
            Poll::Ready(Some(Err(ClientError::Encode(_))))
        ));
        assert!(matches!(poll_now(&big), Poll::Ready(None)));
        assert_eq!(next_value(&a), Some(Value::Int64(2)));
        assert_eq!(t.len(), 1);
        // Results flow as usual afterwards.
        t.apply_transition(20, 21, vec![replace(qa, 3)]).unwrap();
        assert_eq!(next_value(&a), Some(Value::Int64(3)));
    }

    #[test]
    fn reconnect_holds_back_stale_and_repeated_results() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, slot, sub) = t.insert("count".into(), obj! {});
        let q = query_id_of(&sub);
        t.apply_transition(
            0,
            50,
            vec![updated(q, ResultDiff::Replace(Value::Int64(5)))],
        )
        .unwrap();
        assert_eq!(next_value(&slot), Some(Value::Int64(5)));

        // New connection: the query is subscribed again under the same id.
        let resubscribe = t.begin_connection(2, 0);
        assert_eq!(resubscribe.len(), 1);
        assert_eq!(query_id_of(&resubscribe[0]), q);
        // Same value at a newer timestamp: nothing new for the reader.
        t.apply_transition(
            0,
            60,
            vec![updated(q, ResultDiff::Replace(Value::Int64(5)))],
        )
        .unwrap();
        assert_eq!(next_value(&slot), None);

        // A third connection to a server whose clock is behind (restored backup): its older
        // results are not shown, but later diffs still apply to them.
        t.begin_connection(3, 0);
        t.apply_transition(
            0,
            40,
            vec![updated(q, ResultDiff::Replace(Value::Int64(4)))],
        )
        .unwrap();
        assert_eq!(next_value(&slot), None);
        t.apply_transition(
            40,
            55,
            vec![updated(q, ResultDiff::Replace(Value::Int64(6)))],
        )
        .unwrap();
        assert_eq!(next_value(&slot), None);
        t.apply_transition(
            55,
            61,
            vec![updated(q, ResultDiff::Replace(Value::Int64(7)))],
        )
        .unwrap();
        assert_eq!(next_value(&slot), Some(Value::Int64(7)));
    }

    #[test]
    fn array_diff_from_a_previous_connection_is_drift() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, slot, sub) = t.insert("list".into(), obj! {});
        let q = query_id_of(&sub);
        t.apply_transition(
            0,
            1,
            vec![updated(q, ResultDiff::Replace(list(&[("a", 1)])))],
        )
        .unwrap();
        next_value(&slot);
        t.begin_connection(2, 0);
        let edits = vec![ArrayEdit::Remove {
            index: 0,
            id: "a".into(),
        }];
        let effects = t
            .apply_transition(0, 2, vec![updated(q, ResultDiff::Array(edits))])
            .unwrap();
        assert_eq!(effects.outbox.len(), 2);
        assert_eq!(next_value(&slot), None);
    }

    #[test]
    fn drifted_copy_resubscribes_under_a_fresh_id() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, slot, sub) = t.insert("list".into(), obj! {"limit" => 3i64});
        let q = query_id_of(&sub);
        t.apply_transition(
            0,
            1,
            vec![updated(q, ResultDiff::Replace(list(&[("a", 1)])))],
        )
        .unwrap();
        assert!(next_value(&slot).is_some());
        let bad = ResultDiff::Array(vec![ArrayEdit::Change {
            index: 0,
            id: "zzz".into(),
            value: doc("zzz", 9),
        }]);
        let effects = t.apply_transition(1, 2, vec![updated(q, bad)]).unwrap();
        assert!(
            matches!(effects.outbox[0], ClientMessage::Unsubscribe { query_id } if query_id == q)
        );
        let q2 = query_id_of(&effects.outbox[1]);
        assert_ne!(q2, q);
        assert_eq!(next_value(&slot), None, "drifted value is not shown");
        // The old id is dead; the new one takes a replace.
        t.apply_transition(2, 3, vec![updated(q, ResultDiff::Replace(Value::Null))])
            .unwrap();
        assert_eq!(next_value(&slot), None);
        let fresh = list(&[("b", 2)]);
        t.apply_transition(3, 4, vec![updated(q2, ResultDiff::Replace(fresh.clone()))])
            .unwrap();
        assert_eq!(next_value(&slot), Some(fresh));
    }

    /// A drifted copy is subscribed again; if the fresh subscription's first result is the
    /// one the reader already has, it is no update.
    #[test]
    fn a_resubscribed_drifted_copy_repeats_no_result() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, slot, sub) = t.insert("list".into(), obj! {});
        let q = query_id_of(&sub);
        let v = list(&[("a", 1)]);
        t.apply_transition(0, 1, vec![updated(q, ResultDiff::Replace(v.clone()))])
            .unwrap();
        assert_eq!(next_value(&slot), Some(v.clone()));
        let bad = ResultDiff::Array(vec![ArrayEdit::Remove {
            index: 0,
            id: "zzz".into(),
        }]);
        let effects = t.apply_transition(1, 2, vec![updated(q, bad)]).unwrap();
        let q2 = query_id_of(&effects.outbox[1]);
        t.apply_transition(2, 3, vec![updated(q2, ResultDiff::Replace(v.clone()))])
            .unwrap();
        assert_eq!(next_value(&slot), None, "the same result delivered again");
        // Later results flow as usual, as diffs on the fresh subscription's result.
        let d = ResultDiff::Array(vec![ArrayEdit::Insert {
            index: 1,
            value: doc("b", 2),
        }]);
        t.apply_transition(3, 4, vec![updated(q2, d)]).unwrap();
        assert_eq!(next_value(&slot), Some(list(&[("a", 1), ("b", 2)])));
    }

    /// While results are held back after a reconnect, a query may change and change back:
    /// released, it is what the reader has, and no update.
    #[test]
    fn a_held_result_that_changed_back_is_no_update() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, a, sub_a) = t.insert("a".into(), obj! {});
        let (_, b, sub_b) = t.insert("b".into(), obj! {});
        let (qa, qb) = (query_id_of(&sub_a), query_id_of(&sub_b));
        let v1 = list(&[("x", 1)]);
        t.apply_transition(
            0,
            10,
            vec![
                updated(qa, ResultDiff::Replace(v1.clone())),
                updated(qb, ResultDiff::Replace(Value::Int64(1))),
            ],
        )
        .unwrap();
        assert_eq!(next_value(&a), Some(v1.clone()));
        assert_eq!(next_value(&b), Some(Value::Int64(1)));

        t.begin_connection(2, 0);
        t.apply_transition(0, 20, vec![updated(qa, ResultDiff::Replace(v1.clone()))])
            .unwrap();
        // a changes (an array diff) and changes back (a replace) before b answers.
        let change = |n| {
            ResultDiff::Array(vec![ArrayEdit::Change {
                index: 0,
                id: "x".into(),
                value: doc("x", n),
            }])
        };
        t.apply_transition(20, 21, vec![updated(qa, change(2))])
            .unwrap();
        t.apply_transition(21, 22, vec![updated(qa, change(1))])
            .unwrap();
        t.apply_transition(
            22,
            23,
            vec![updated(qb, ResultDiff::Replace(Value::Int64(5)))],
        )
        .unwrap();
        assert_eq!(next_value(&a), None, "a's result is the one its reader has");
        assert_eq!(next_value(&b), Some(Value::Int64(5)));
        // Afterwards a's diffs apply to that result and flow as usual.
        t.apply_transition(23, 24, vec![updated(qa, change(3))])
            .unwrap();
        assert_eq!(next_value(&a), Some(list(&[("x", 3)])));
    }

    /// Results older than the reader's are not shown; a later result equal to the reader's
    /// is no update either.
    #[test]
    fn a_result_back_at_the_readers_after_stale_ones_is_no_update() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, slot, sub) = t.insert("count".into(), obj! {});
        let q = query_id_of(&sub);
        let replace = |n: i64| updated(q, ResultDiff::Replace(Value::Int64(n)));
        t.apply_transition(0, 50, vec![replace(5)]).unwrap();
        assert_eq!(next_value(&slot), Some(Value::Int64(5)));
        // A server restored from an older backup: its clock is behind.
        t.begin_connection(2, 0);
        t.apply_transition(0, 40, vec![replace(4)]).unwrap();
        t.apply_transition(40, 60, vec![replace(5)]).unwrap();
        assert_eq!(next_value(&slot), None);
        t.apply_transition(60, 61, vec![replace(6)]).unwrap();
        assert_eq!(next_value(&slot), Some(Value::Int64(6)));
    }

    #[test]
    fn failure_is_reported_once_then_the_stream_ends() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (key, slot, sub) = t.insert("secret".into(), obj! {});
        let q = query_id_of(&sub);
        let error = ErrorPayload {
            code: "FORBIDDEN".into(),
            message: "no".into(),
            data: Value::Null,
        };
        t.apply_transition(0, 3, vec![Modification::Failed { query_id: q, error }])
            .unwrap();
        match poll_now(&slot) {
            Poll::Ready(Some(Err(e))) => assert_eq!(e.code(), Some("FORBIDDEN")),
            other => panic!("expected the failure, got {other:?}"),
        }
        assert!(matches!(poll_now(&slot), Poll::Ready(None)));
        assert_eq!(t.len(), 0);
        // Dropping the subscription afterwards sends nothing.
        assert!(t.remove(key).0.is_none());
    }

    fn lapsed(query_id: u32) -> Modification {
        Modification::Failed {
            query_id,
            error: ErrorPayload {
                code: "UNAUTHORIZED".into(),
                message: "the token expired".into(),
                data: obj! { query_engine::protocol::TOKEN_EXPIRED => true },
            },
        }
    }

    /// A query the server ended for a lapsed token (§11) is parked, not ended: its reader
    /// waits, and once resumed under a fresh query id its results flow again (the same result
    /// is no update); parked again and ended, it yields the error.
    #[test]
    fn a_query_failed_for_a_lapsed_token_waits_to_be_subscribed_again() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (_, slot, sub) = t.insert("mine".into(), obj! {});
        let q = query_id_of(&sub);
        let replace = |q, n: i64| updated(q, ResultDiff::Replace(Value::Int64(n)));
        t.apply_transition(0, 1, vec![replace(q, 1)]).unwrap();
        assert_eq!(next_value(&slot), Some(Value::Int64(1)));
        let effects = t.apply_transition(1, 2, vec![lapsed(q)]).unwrap();
        assert!(effects.parked && effects.wakers.is_empty());
        assert!(poll_now(&slot).is_pending(), "the stream goes on");
        assert!(t.has_parked());
        // Late results for the old id are ignored.
        t.apply_transition(2, 3, vec![replace(q, 9)]).unwrap();
        assert!(poll_now(&slot).is_pending());

        let resubscribed = t.resume_parked();
        assert_eq!(resubscribed.len(), 1);
        let q2 = query_id_of(&resubscribed[0]);
        assert_ne!(q2, q);
        assert!(!t.has_parked());
        t.apply_transition(3, 4, vec![replace(q2, 1)]).unwrap();
        assert_eq!(next_value(&slot), None, "the result the reader has");
        t.apply_transition(4, 5, vec![replace(q2, 2)]).unwrap();
        assert_eq!(next_value(&slot), Some(Value::Int64(2)));

        // A second lapse, and no fresh token this time.
        t.apply_transition(5, 6, vec![lapsed(q2)]).unwrap();
        assert!(poll_now(&slot).is_pending());
        let wakers = t.end_parked();
        assert_eq!(wakers.len(), 1, "the waiting reader is woken");
        match poll_now(&slot) {
            Poll::Ready(Some(Err(e))) => assert!(e.is_token_expired(), "{e}"),
            other => panic!("expected the lapse's error, got {other:?}"),
        }
        assert!(matches!(poll_now(&slot), Poll::Ready(None)));
        assert_eq!(t.len(), 0);
    }

    /// A parked query is not live on the server: dropping it sends nothing; a reconnect
    /// subscribes it again with the rest, and it no longer holds back the others' results
    /// once parked while they resync.
    #[test]
    fn a_parked_query_is_dropped_silently_and_subscribed_again_on_reconnect() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (key_a, _, sub_a) = t.insert("a".into(), obj! {});
        let (_, b, sub_b) = t.insert("b".into(), obj! {});
        let (qa, qb) = (query_id_of(&sub_a), query_id_of(&sub_b));
        let replace = |q, n: i64| updated(q, ResultDiff::Replace(Value::Int64(n)));
        t.apply_transition(0, 1, vec![replace(qa, 1), replace(qb, 1)])
            .unwrap();
        t.apply_transition(1, 2, vec![lapsed(qa)]).unwrap();
        assert!(
            t.remove(key_a).0.is_none(),
            "no Unsubscribe for a parked query"
        );
        assert!(!t.has_parked());

        let (_, c, sub_c) = t.insert("c".into(), obj! {});
        let qc = query_id_of(&sub_c);
        t.apply_transition(2, 3, vec![replace(qc, 1)]).unwrap();
        assert_eq!(next_value(&c), Some(Value::Int64(1)));
        t.apply_transition(3, 4, vec![lapsed(qc)]).unwrap();
        assert!(t.has_parked());
        let resubscribed: Vec<u32> = t.begin_connection(2, 0).iter().map(query_id_of).collect();
        assert_eq!(resubscribed.len(), 2, "b and the parked c");
        assert!(!t.has_parked());
        assert!(resubscribed.contains(&qc));
        // On the new connection c is parked again before answering: b's result is not held
        // back for it.
        t.apply_transition(0, 10, vec![lapsed(qc), replace(qb, 2)])
            .unwrap();
        assert_eq!(next_value(&b), Some(Value::Int64(2)));
        assert!(next_value(&c).is_none());
    }

    #[test]
    fn unsubscribed_queries_ignore_late_results() {
        let mut t = SubscriptionTable::new();
        t.begin_connection(1, 0);
        let (key_a, slot_a, sub_a) = t.insert("a".into(), obj! {});
        let (_, slot_b, sub_b) = t.insert("b".into(), obj! {});
        let (qa, qb) = (query_id_of(&sub_a), query_id_of(&sub_b));
        assert_ne!(qa, qb);
        let unsub = t.remove(key_a).0.unwrap();
        assert_eq!(query_id_of(&unsub), qa);
        t.apply_transition(
            0,
            4,
            vec![
                updated(qa, ResultDiff::Replace(Value::Int64(1))),
                updated(qb, ResultDiff::Replace(Value::Int64(2))),
                Modification::Removed { query_id: qa },
            ],
        )
        .unwrap();
        assert_eq!(next_value(&slot_a), None);
        assert_eq!(next_value(&slot_b), Some(Value::Int64(2)));
        // A second subscription gets a different id from the dropped one.
        let (_, _, sub_c) = t.insert("c".into(), obj! {});
        assert!(query_id_of(&sub_c) != qa && query_id_of(&sub_c) != qb);
    }

    #[test]
    fn end_all_wakes_and_ends_every_stream() {
        let mut t = SubscriptionTable::new();
        let (_, slot, _) = t.insert("a".into(), obj! {});
        t.end_all(Some(ClientError::Disconnected));
        assert!(matches!(
            poll_now(&slot),
            Poll::Ready(Some(Err(ClientError::Disconnected)))
        ));
        assert!(matches!(poll_now(&slot), Poll::Ready(None)));
    }
}
