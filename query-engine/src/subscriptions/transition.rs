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

impl Transition {
    /// The protocol message for this transition.
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
        }
    }

    /// The MessagePack payload of `ServerMessage::Transition`, byte-compatible with
    /// `protocol::encode(&self.to_message())`, reusing pre-encoded diffs.
    pub fn encode(&self) -> Vec<u8> {
        use rmp::encode as e;
        let mut out = Vec::with_capacity(64);
        // Writes into a Vec cannot fail.
        let _ = e::write_map_len(&mut out, 4);
        let _ = e::write_str(&mut out, "type");
        let _ = e::write_str(&mut out, "Transition");
        let _ = e::write_str(&mut out, "startTs");
        let _ = e::write_uint(&mut out, self.start_ts);
        let _ = e::write_str(&mut out, "endTs");
        let _ = e::write_uint(&mut out, self.end_ts);
        let _ = e::write_str(&mut out, "modifications");
        let _ = e::write_array_len(&mut out, self.updates.len() as u32);
        for u in &self.updates {
            match u {
                QueryUpdate::Updated {
                    query_id,
                    diff,
                    encoded,
                } => {
                    let _ = e::write_map_len(&mut out, 3);
                    let _ = e::write_str(&mut out, "type");
                    let _ = e::write_str(&mut out, "Updated");
                    let _ = e::write_str(&mut out, "queryId");
                    let _ = e::write_uint(&mut out, u64::from(*query_id));
                    let _ = e::write_str(&mut out, "diff");
                    match encoded {
                        Some(bytes) => out.extend_from_slice(bytes),
                        None => out.extend_from_slice(&encode_diff(diff)),
                    }
                }
                other => {
                    let m = match other {
                        QueryUpdate::Failed { query_id, error } => Modification::Failed {
                            query_id: *query_id,
                            error: ErrorPayload::from(error.clone()),
                        },
                        QueryUpdate::Removed { query_id } => Modification::Removed {
                            query_id: *query_id,
                        },
                        QueryUpdate::Updated { .. } => continue,
                    };
                    out.extend_from_slice(&rmp_serde::to_vec_named(&m).unwrap_or_default());
                }
            }
        }
        out
    }
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
}
