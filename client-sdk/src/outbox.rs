//! The control stream's queue: messages for the current connection not yet taken by its
//! writer. A `Subscribe` still queued when its subscription is dropped or subscribed again
//! (its copy drifted) is withdrawn rather than followed by its `Unsubscribe`, so however long
//! the stream is blocked, each subscription has at most one `Subscribe` and one `Unsubscribe`
//! (of an id already sent) queued.

use std::collections::VecDeque;

use query_engine::protocol::ClientMessage;

#[derive(Default)]
pub(crate) struct Outbox {
    queue: VecDeque<ClientMessage>,
}

impl Outbox {
    /// Queues `msg`; an `Unsubscribe` whose `Subscribe` is still queued withdraws it instead.
    pub(crate) fn push(&mut self, msg: ClientMessage) {
        if let ClientMessage::Unsubscribe { query_id } = msg {
            let queued = self.queue.iter().position(
                |m| matches!(m, ClientMessage::Subscribe { query_id: q, .. } if *q == query_id),
            );
            if let Some(at) = queued {
                self.queue.remove(at);
                return;
            }
        }
        self.queue.push_back(msg);
    }

    /// Queues every message of `msgs`, in order.
    pub(crate) fn extend(&mut self, msgs: impl IntoIterator<Item = ClientMessage>) {
        for msg in msgs {
            self.push(msg);
        }
    }

    /// Everything queued, for the writer.
    pub(crate) fn take_all(&mut self) -> Vec<ClientMessage> {
        self.queue.drain(..).collect()
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::{SubscriptionTable, TransitionEffects};
    use query_engine::obj;

    fn query_id(msg: &ClientMessage) -> u32 {
        match msg {
            ClientMessage::Subscribe { query_id, .. } | ClientMessage::Unsubscribe { query_id } => {
                *query_id
            }
            other => panic!("not a subscription message: {other:?}"),
        }
    }

    /// While the writer is blocked on the stream, a subscription whose copy keeps drifting
    /// queues one `Unsubscribe` for the id already sent and one `Subscribe` for its newest id,
    /// not a pair per drift.
    #[test]
    fn resubscribing_while_the_stream_is_blocked_queues_one_pair_per_subscription() {
        let mut table = SubscriptionTable::new();
        table.begin_connection(1, 0);
        let mut outbox = Outbox::default();
        let (key, _slot, subscribe) = table.insert("list".into(), obj! {});
        let sent = query_id(&subscribe);
        outbox.push(subscribe);
        // The writer takes the Subscribe and blocks writing it.
        assert_eq!(outbox.take_all().len(), 1);
        for _ in 0..100 {
            let mut effects = TransitionEffects::default();
            table.resubscribe(key, &mut effects);
            outbox.extend(effects.outbox);
        }
        let queued = outbox.take_all();
        let (Some(ClientMessage::Unsubscribe { query_id: current }), _) = table.remove(key) else {
            panic!("the subscription is live");
        };
        assert!(
            matches!(
                queued.as_slice(),
                [ClientMessage::Unsubscribe { query_id: a }, ClientMessage::Subscribe { query_id: b, .. }]
                    if *a == sent && *b == current
            ),
            "{} messages queued",
            queued.len()
        );

        // A subscription dropped before its Subscribe was taken sends nothing.
        let (key, _slot, subscribe) = table.insert("list".into(), obj! {});
        outbox.push(subscribe);
        outbox.push(table.remove(key).0.expect("live"));
        assert!(outbox.take_all().is_empty());
    }
}
