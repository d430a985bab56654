//! Transitions: what a client receives — all of its subscriptions brought from one timestamp
//! to the next together — and their wire encoding, which splices each changed result's diff,
//! encoded once per execution, into every subscriber's message.

use std::sync::Arc;

use crate::diff::ResultDiff;
use crate::error::FunctionError;
use crate::protocol::{ErrorPayload, Modification, ServerMessage};

#[derive(Clone, Debug, PartialEq)]
pub enum QueryUpdate {
    /// The subscription's result changed; the first update of a subscription is a `Replace`.
    Updated {
        query_id: u32,
        diff: Arc<ResultDiff>,
        /// The diff's MessagePack encoding, shared by all subscribers of the execution.
        encoded: Option<Arc<Vec<u8>>>,
    },
    /// The query failed (e.g. access revoked); the subscription has ended.
    Failed { query_id: u32, error: FunctionError },
    /// The subscription was removed at the client's request.
    Removed { query_id: u32 },
}

impl QueryUpdate {
    pub fn query_id(&self) -> u32 {
        match self {
            QueryUpdate::Updated { query_id, .. }
            | QueryUpdate::Failed { query_id, .. }
            | QueryUpdate::Removed { query_id } => *query_id,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub start_ts: u64,
    pub end_ts: u64,
    pub updates: Vec<QueryUpdate>,
}

/// Encodes a diff for the wire (MessagePack, named fields).
pub(crate) fn encode_diff(diff: &ResultDiff) -> Vec<u8> {
    // A ResultDiff holds only Values, which always encode; an empty payload would be
    // rejected by the client rather than misread.
    rmp_serde::to_vec_named(diff).unwrap_or_default()
}

/// One update of a transition cannot go in a frame even alone (its result or diff is larger
/// than the frame limit): the transition cannot be sent in any number of parts.
#[derive(Debug, thiserror::Error)]
#[error(
    "the update of query {query_id} takes {len} bytes in a transition, over the frame limit of {max} bytes"
)]
pub struct UpdateTooLarge {
    pub query_id: u32,
    /// The smallest payload that would carry it: the update and a part's header.
    pub len: usize,
    pub max: usize,
}

impl Transition {
    /// The protocol message for this transition, whole.
    pub fn to_message(&self) -> ServerMessage {
        ServerMessage::Transition {
            start_ts: self.start_ts,
            end_ts: self.end_ts,
            modifications: self
                .updates
                .iter()
                .map(|u| match u {
                    QueryUpdate::Updated { query_id, diff, .. } => Modification::Updated {
                        query_id: *query_id,
                        diff: (**diff).clone(),
                    },
                    QueryUpdate::Failed { query_id, error } => Modification::Failed {
                        query_id: *query_id,
                        error: ErrorPayload::from(error.clone()),
                    },
                    QueryUpdate::Removed { query_id } => Modification::Removed {
                        query_id: *query_id,
                    },
                })
                .collect(),
            continued: false,
        }
    }

    /// The MessagePack payload of `ServerMessage::Transition`, byte-compatible with
    /// `protocol::encode(&self.to_message())`, reusing pre-encoded diffs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        write_header(
            &mut out,
            self.start_ts,
            self.end_ts,
            false,
            self.updates.len(),
        );
        for u in &self.updates {
            write_update(&mut out, u);
        }
        out
    }

    /// This transition as the payloads of several `Transition` messages, each at most
    /// `max_payload_bytes`, for a transition too large for one frame (protocol §8): every
    /// part has this transition's `startTs` and `endTs` and the next updates in order, as
    /// many as fit, and all but the last are marked `continued`. Meant for a transition whose
    /// `encode` is over the limit (so a transition is encoded twice only when it is split);
    /// one that fits with room for the largest header a part can have is one part, encoded
    /// as `encode` does. Fails only if one update alone does not fit in a part: every part
    /// leaves that room, so an update that would only just fit next to a smaller header is
    /// refused too.
    pub fn encode_in_parts(
        &self,
        max_payload_bytes: usize,
    ) -> Result<Vec<Vec<u8>>, UpdateTooLarge> {
        let header_max = self.max_header_len();
        let room = max_payload_bytes.saturating_sub(header_max);
        let mut parts = Vec::new();
        // Updates of the part being filled; `count` of them.
        let mut body = Vec::new();
        let mut count = 0;
        for u in &self.updates {
            let before = body.len();
            write_update(&mut body, u);
            let len = body.len() - before;
            if len > room {
                return Err(UpdateTooLarge {
                    query_id: u.query_id(),
                    len: header_max + len,
                    max: max_payload_bytes,
                });
            }
            if body.len() > room {
                // The part is full without this update, which starts the next one.
                let next = body.split_off(before);
                parts.push(self.part(&body, count, true));
                body = next;
                count = 0;
            }
            count += 1;
        }
        parts.push(self.part(&body, count, false));
        debug_assert!(parts
            .iter()
            .all(|p| p.len() <= max_payload_bytes.max(header_max)));
        Ok(parts)
    }

    /// Replaces every update that could not go in a payload of `max_payload_bytes` even alone
    /// (as `encode_in_parts` would refuse it) by the `Failed` that `fail` makes of it, and
    /// returns what was replaced; the other updates stay as they are, in order. Diffs not
    /// encoded yet are encoded here, once, and kept for `encode` to splice in.
    pub fn fail_oversized(
        &mut self,
        max_payload_bytes: usize,
        fail: impl Fn(&UpdateTooLarge) -> FunctionError,
    ) -> Vec<UpdateTooLarge> {
        let header_max = self.max_header_len();
        let mut failed = Vec::new();
        let mut scratch = Vec::new();
        for u in &mut self.updates {
            if let QueryUpdate::Updated { diff, encoded, .. } = u {
                if encoded.is_none() {
                    *encoded = Some(Arc::new(encode_diff(diff)));
                }
            }
            let len = header_max + update_len(u, &mut scratch);
            if len > max_payload_bytes {
                let too_large = UpdateTooLarge {
                    query_id: u.query_id(),
                    len,
                    max: max_payload_bytes,
                };
                *u = QueryUpdate::Failed {
                    query_id: too_large.query_id,
                    error: fail(&too_large),
                };
                failed.push(too_large);
            }
        }
        failed
    }

    /// The largest header a part of this transition can have: `continued`, and an array
    /// length in 32 bits.
    fn max_header_len(&self) -> usize {
        let mut header = Vec::new();
        write_header(
            &mut header,
            self.start_ts,
            self.end_ts,
            true,
            u32::MAX as usize,
        );
        header.len()
    }

    /// One part's payload: the header, then `count` encoded updates.
    fn part(&self, updates: &[u8], count: usize, continued: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + updates.len());
        write_header(&mut out, self.start_ts, self.end_ts, continued, count);
        out.extend_from_slice(updates);
        out
    }
}

/// A `Transition` message up to the elements of its `modifications` array, of `count`
/// elements. Writes into a Vec cannot fail.
fn write_header(out: &mut Vec<u8>, start_ts: u64, end_ts: u64, continued: bool, count: usize) {
    use rmp::encode as e;
    let _ = e::write_map_len(out, if continued { 5 } else { 4 });
    let _ = e::write_str(out, "type");
    let _ = e::write_str(out, "Transition");
    let _ = e::write_str(out, "startTs");
    let _ = e::write_uint(out, start_ts);
    let _ = e::write_str(out, "endTs");
    let _ = e::write_uint(out, end_ts);
    if continued {
        let _ = e::write_str(out, "continued");
        let _ = e::write_bool(out, true);
    }
    let _ = e::write_str(out, "modifications");
    // A client has far fewer than 2^32 subscriptions (the server's limit per connection).
    let _ = e::write_array_len(out, u32::try_from(count).unwrap_or(u32::MAX));
}

/// The length of `u`'s element of `modifications`, without copying a pre-encoded diff;
/// `scratch` is reused for what is encoded to be measured.
fn update_len(u: &QueryUpdate, scratch: &mut Vec<u8>) -> usize {
    scratch.clear();
    match u {
        QueryUpdate::Updated {
            query_id,
            encoded: Some(bytes),
            ..
        } => {
            write_updated_head(scratch, *query_id);
            scratch.len() + bytes.len()
        }
        _ => {
            write_update(scratch, u);
            scratch.len()
        }
    }
}

/// An `Updated` modification up to its `diff`'s value.
fn write_updated_head(out: &mut Vec<u8>, query_id: u32) {
    use rmp::encode as e;
    let _ = e::write_map_len(out, 3);
    let _ = e::write_str(out, "type");
    let _ = e::write_str(out, "Updated");
    let _ = e::write_str(out, "queryId");
    let _ = e::write_uint(out, u64::from(query_id));
    let _ = e::write_str(out, "diff");
}

/// One element of `modifications`, splicing in a pre-encoded diff where there is one.
fn write_update(out: &mut Vec<u8>, u: &QueryUpdate) {
    let m = match u {
        QueryUpdate::Updated {
            query_id,
            diff,
            encoded,
        } => {
            write_updated_head(out, *query_id);
            match encoded {
                Some(bytes) => out.extend_from_slice(bytes),
                None => out.extend_from_slice(&encode_diff(diff)),
            }
            return;
        }
        QueryUpdate::Failed { query_id, error } => Modification::Failed {
            query_id: *query_id,
            error: ErrorPayload::from(error.clone()),
        },
        QueryUpdate::Removed { query_id } => Modification::Removed {
            query_id: *query_id,
        },
    };
    out.extend_from_slice(&rmp_serde::to_vec_named(&m).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::ArrayEdit;
    use crate::obj;
    use crate::protocol::decode_server;

    #[test]
    fn spliced_encoding_decodes_as_the_protocol_message() {
        let diff = Arc::new(ResultDiff::Array(vec![ArrayEdit::Insert {
            index: 0,
            value: obj! {"_id" => "a", "n" => 1i64},
        }]));
        let t = Transition {
            start_ts: 5,
            end_ts: 1 << 40,
            updates: vec![
                QueryUpdate::Updated {
                    query_id: 1,
                    encoded: Some(Arc::new(encode_diff(&diff))),
                    diff,
                },
                QueryUpdate::Updated {
                    query_id: 2,
                    diff: Arc::new(ResultDiff::Replace(obj! {"x" => 1.5})),
                    encoded: None,
                },
                QueryUpdate::Failed {
                    query_id: 3,
                    error: FunctionError::forbidden("no").with_data(obj! {"a" => 1i64}),
                },
                QueryUpdate::Removed { query_id: 4 },
            ],
        };
        assert_eq!(decode_server(&t.encode()).unwrap(), t.to_message());
    }

    /// `n` updates of about `bytes` each, with a failure and a removal among them.
    fn large(n: u32, bytes: usize) -> Transition {
        let mut updates: Vec<QueryUpdate> = (0..n)
            .map(|q| {
                let diff = Arc::new(ResultDiff::Replace(obj! {"pad" => "x".repeat(bytes)}));
                QueryUpdate::Updated {
                    query_id: q,
                    // Half pre-encoded, half encoded when written.
                    encoded: (q % 2 == 0).then(|| Arc::new(encode_diff(&diff))),
                    diff,
                }
            })
            .collect();
        updates.push(QueryUpdate::Failed {
            query_id: n,
            error: FunctionError::forbidden("no"),
        });
        updates.push(QueryUpdate::Removed { query_id: n + 1 });
        Transition {
            start_ts: 7,
            end_ts: 9,
            updates,
        }
    }

    #[test]
    fn a_transition_that_fits_is_one_part_encoded_as_usual() {
        let t = large(3, 100);
        let whole = t.encode();
        // Room for the largest header: `continued` and a 32-bit array length.
        let room = whole.len() + 16;
        assert_eq!(t.encode_in_parts(room).unwrap(), vec![whole]);
    }

    /// Parts each fit, carry the transition's timestamps and its updates in order, and all
    /// but the last are marked `continued`; both decoders read them alike.
    #[test]
    fn a_transition_too_large_for_a_frame_is_split_by_updates() {
        let t = large(10, 1_000);
        let max = 3_500;
        assert!(t.encode().len() > max);
        let parts = t.encode_in_parts(max).unwrap();
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut all = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            assert!(part.len() <= max, "part {i} is {} bytes", part.len());
            let msg = decode_server(part).unwrap();
            assert_eq!(crate::protocol::decode_transition(part).unwrap(), msg);
            let ServerMessage::Transition {
                start_ts: 7,
                end_ts: 9,
                modifications,
                continued,
            } = msg
            else {
                panic!("part {i} is not of the transition: {msg:?}");
            };
            assert_eq!(continued, i + 1 < parts.len(), "part {i}");
            assert!(!modifications.is_empty(), "part {i} is empty");
            all.extend(modifications);
        }
        let ServerMessage::Transition { modifications, .. } = t.to_message() else {
            unreachable!()
        };
        assert_eq!(all, modifications);
    }

    /// An update too large for any part becomes the `Failed` made for it; the rest of the
    /// transition is kept, in order, and then goes in parts.
    #[test]
    fn an_update_larger_than_a_frame_is_replaced_by_its_failure() {
        let mut t = large(4, 1_000);
        let QueryUpdate::Updated { diff, .. } = &mut t.updates[1] else {
            unreachable!()
        };
        *diff = Arc::new(ResultDiff::Replace(obj! {"pad" => "y".repeat(5_000)}));
        let refused = t.encode_in_parts(3_500).unwrap_err();
        let failed = t.fail_oversized(3_500, |e| {
            FunctionError::internal(format!("{} over {}", e.len, e.max))
        });
        assert_eq!(failed.len(), 1);
        assert_eq!((failed[0].query_id, failed[0].max), (1, 3_500));
        // Measured as `encode_in_parts` measures it.
        assert_eq!(failed[0].len, refused.len);
        let ids: Vec<u32> = t.updates.iter().map(QueryUpdate::query_id).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5]);
        let QueryUpdate::Failed { error, .. } = &t.updates[1] else {
            panic!("query 1 failed: {:?}", t.updates[1]);
        };
        assert_eq!(error.code, crate::error::codes::INTERNAL);
        assert_eq!(error.message, format!("{} over 3500", failed[0].len));
        // Every diff is encoded now, for `encode` to splice in.
        assert!(t
            .updates
            .iter()
            .all(|u| !matches!(u, QueryUpdate::Updated { encoded: None, .. })));
        assert!(t.encode_in_parts(3_500).is_ok());
        assert!(t.fail_oversized(3_500, |_| unreachable!()).is_empty());
    }

    #[test]
    fn an_update_larger_than_a_frame_cannot_be_split() {
        let t = large(4, 1_000);
        let err = t.encode_in_parts(900).unwrap_err();
        assert_eq!((err.query_id, err.max), (0, 900));
        assert!(err.len > 1_000);
    }
}
