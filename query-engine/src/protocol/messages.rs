//! The messages of wire protocol version 1 and their MessagePack encoding: maps with named,
//! camelCase fields and a `type` tag. Decoding checks every size the peer controls, so a
//! hostile message is an error value, never a panic, a deep recursion or memory out of
//! proportion to what a message may hold (`MAX_DECODED_MESSAGE_BYTES`).

use std::collections::btree_map;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use super::direct;
use crate::diff::ResultDiff;
use crate::error::{codes, FunctionError};
use crate::msgpack_reader::{Limit, Reader, Unread};
use crate::value::Value;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Every version a server built from this crate accepts in `Connect`.
pub const SUPPORTED_PROTOCOL_VERSIONS: &[u32] = &[PROTOCOL_VERSION];

pub const MAX_FUNCTION_NAME_BYTES: usize = 256;
pub const MAX_MUTATION_ID_BYTES: usize = 128;
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
pub const MAX_CLIENT_NAME_BYTES: usize = 256;
/// Deepest array/object nesting in call and subscription arguments (a scalar is depth 0,
/// `{"a": [1]}` is depth 2).
pub const MAX_ARGS_DEPTH: usize = 64;
/// Deepest MessagePack nesting of a whole message, envelope included. Enforced while parsing,
/// before any value is built, so that deeply nested input cannot exhaust the stack.
pub const MAX_MESSAGE_DEPTH: usize = 128;
/// Most memory a client message may take decoded, by an estimate the decoder charges as it
/// reads, before it builds what it charged for (`msgpack_reader`): 32 bytes a value, the bytes
/// of its text, and for an object 40 bytes, plus 632 for its first B-tree node and 64 an entry
/// once it has entries. Without it a frame of 8 MiB decoded to gigabytes: 8 million empty
/// objects (a byte each on the wire) to 700 MB, one-entry objects (three bytes each) to 1.9 GB.
///
/// The costliest shape for its size, one-entry objects with empty keys nested in one another,
/// is charged 184 bytes per byte of `Value::size_bytes`, so any value within the engine's
/// document limit (1 MiB) decodes whatever its shape, with room for the rest of its message;
/// so does any message of up to about 8 million values. The estimate is of the values built:
/// building a large array or object takes up to about twice as much for a moment, and the
/// serde path (`decode_client`), which also builds an intermediate copy, up to about five
/// times for one large array.
pub const MAX_DECODED_MESSAGE_BYTES: usize = 256 << 20;

/// Messages a client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ClientMessage {
    /// First message on the control stream.
    Connect {
        protocol_version: u32,
        client_name: String,
        last_seen_ts: Option<u64>,
        /// The client reassembles a transition sent in parts (`Transition::continued`); a
        /// server sends parts to no other client. Absent (false) from older clients.
        #[serde(
            default,
            skip_serializing_if = "is_false",
            deserialize_with = "nil_as_false"
        )]
        transition_parts: bool,
    },
    /// Sets, replaces (token refresh) or, with `None`, clears the identity. Subscriptions
    /// survive and are re-run under the new identity.
    Authenticate {
        token: Option<String>,
    },
    /// Starts a subscription under a client-chosen id, unique on the connection.
    Subscribe {
        query_id: u32,
        function: String,
        args: Value,
    },
    Unsubscribe {
        query_id: u32,
    },
    /// Sent alone on its own bidirectional stream.
    Call {
        request_id: u64,
        kind: CallKind,
        function: String,
        args: Value,
        /// Client-generated; a retried mutation with the same id (for the same identity)
        /// returns the first result instead of running again.
        mutation_id: Option<String>,
    },
    Ping {
        nonce: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    Query,
    Mutation,
    Action,
}

/// Messages a server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ServerMessage {
    /// Answer to `Connect`, announcing the limits this connection runs under.
    Connected {
        protocol_version: u32,
        server_version: String,
        session_id: String,
        max_frame_bytes: u32,
        max_subscriptions: u32,
        max_concurrent_calls: u32,
    },
    /// The token in the last `Authenticate` was accepted; `None` subject means anonymous.
    AuthOk {
        subject: Option<String>,
    },
    /// The one message on a call stream.
    CallResult {
        request_id: u64,
        result: CallOutcome,
    },
    /// Moves every subscription of the connection from `start_ts` to `end_ts` at once.
    Transition {
        start_ts: u64,
        end_ts: u64,
        modifications: Vec<Modification>,
        /// More parts of this transition follow (same `start_ts` and `end_ts`, further
        /// modifications): a transition too large for one frame, sent only to a client that
        /// announced `transition_parts`, which applies the parts together after the last.
        /// Never written when false, so an unsplit transition is encoded as before.
        #[serde(
            default,
            skip_serializing_if = "is_false",
            deserialize_with = "nil_as_false"
        )]
        continued: bool,
    },
    /// A protocol-level error; when `fatal`, the server closes the connection after it.
    Error {
        code: String,
        message: String,
        data: Value,
        fatal: bool,
    },
    Pong {
        nonce: u64,
    },
}

/// For `skip_serializing_if`: optional flags are written only when set, so that messages
/// without them keep the encoding older peers know.
fn is_false(flag: &bool) -> bool {
    !*flag
}

/// An optional flag (§3: `T?` may be nil or absent) read as a plain bool: nil is false.
fn nil_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status")]
pub enum CallOutcome {
    /// `ts` is the commit timestamp of a mutation, the snapshot timestamp of a query, and the
    /// timestamp after the last mutation an action ran (0 when it ran none).
    Ok {
        value: Value,
        ts: u64,
    },
    Err(ErrorPayload),
}

/// An error as it crosses the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorPayload {
    pub code: String,
    pub message: String,
    pub data: Value,
}

impl From<FunctionError> for ErrorPayload {
    fn from(e: FunctionError) -> Self {
        ErrorPayload {
            code: e.code,
            message: e.message,
            data: e.data,
        }
    }
}

impl From<ErrorPayload> for FunctionError {
    fn from(e: ErrorPayload) -> Self {
        FunctionError {
            code: e.code,
            message: e.message,
            data: e.data,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum Modification {
    /// The subscription's result changed (the first one after `Subscribe` is a `Replace`).
    Updated { query_id: u32, diff: ResultDiff },
    /// The query failed; the subscription has ended.
    Failed { query_id: u32, error: ErrorPayload },
    /// Acknowledges `Unsubscribe`; no further modifications for this id.
    Removed { query_id: u32 },
}

impl ServerMessage {
    /// The fatal error a server sends for a `Connect` with a version it does not speak.
    pub fn unsupported_version(requested: u32) -> ServerMessage {
        let supported = SUPPORTED_PROTOCOL_VERSIONS
            .iter()
            .map(|v| Value::Int64(i64::from(*v)))
            .collect::<Vec<_>>();
        let mut data = crate::value::Object::new();
        data.insert("supportedVersions".into(), Value::Array(supported));
        ServerMessage::Error {
            code: codes::VALIDATION_ERROR.into(),
            message: format!(
                "protocol version {requested} is not supported; supported: {SUPPORTED_PROTOCOL_VERSIONS:?}"
            ),
            data: Value::from(data),
            fatal: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Not MessagePack, or not a message of this protocol version.
    #[error("malformed message: {0}")]
    Malformed(#[from] rmp_serde::decode::Error),
    #[error("{count} bytes after the end of the message")]
    TrailingBytes { count: u64 },
    #[error("{field} is {len} bytes long; the limit is {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} nests deeper than {max} levels")]
    TooDeep { field: &'static str, max: usize },
    /// Not one well-formed MessagePack value, found before anything is decoded.
    #[error(
        "malformed message: not a well-formed MessagePack value (cut short, a length past the \
         end of the frame, or the reserved marker)"
    )]
    NotMessagePack,
    /// A client message that would take more than `max` bytes decoded, by the estimate of
    /// `MAX_DECODED_MESSAGE_BYTES`: refused once the estimate passes it, before the rest is
    /// built.
    #[error("the message would take more than {max} bytes of memory decoded")]
    DecodedTooLarge { max: usize },
    #[error("cannot encode message: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

impl ProtocolError {
    /// The wire error code to report this error with.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::Encode(_) => codes::INTERNAL,
            _ => codes::VALIDATION_ERROR,
        }
    }

    /// The message field over a limit, if that is the error.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ProtocolError::FieldTooLong { field, .. } | ProtocolError::TooDeep { field, .. } => {
                Some(field)
            }
            _ => None,
        }
    }

    /// The `Error` message that reports this error to the peer.
    pub fn to_message(&self, fatal: bool) -> ServerMessage {
        ServerMessage::Error {
            code: self.code().into(),
            message: self.to_string(),
            data: Value::Null,
            fatal,
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ClientMessage {}
    impl Sealed for super::ServerMessage {}
}

/// A message of either direction.
pub trait WireMessage: Serialize + sealed::Sealed {}
impl WireMessage for ClientMessage {}
impl WireMessage for ServerMessage {}

/// Encodes a message as a MessagePack map with field names (one frame's payload).
pub fn encode(msg: &impl WireMessage) -> Result<Vec<u8>, ProtocolError> {
    Ok(rmp_serde::to_vec_named(msg)?)
}

/// Appends `msg` to `out` as a whole frame: the length prefix, then the payload. Returns the
/// payload's length, which the caller checks against its frame limit. On error `out` is left
/// as it was.
pub fn encode_frame_into(
    msg: &impl WireMessage,
    out: &mut Vec<u8>,
) -> Result<usize, ProtocolError> {
    let start = out.len();
    out.extend_from_slice(&[0; crate::protocol::frame::LENGTH_PREFIX_BYTES]);
    if let Err(e) = rmp_serde::encode::write_named(out, msg) {
        out.truncate(start);
        return Err(e.into());
    }
    let payload_len = out.len() - start - crate::protocol::frame::LENGTH_PREFIX_BYTES;
    // A payload over 4 GiB gets a saturated prefix; every frame limit rejects it anyway.
    let prefix = u32::try_from(payload_len).unwrap_or(u32::MAX).to_be_bytes();
    out[start..start + prefix.len()].copy_from_slice(&prefix);
    Ok(payload_len)
}

/// Decodes and validates a message from a client. Its structure and decoded size are checked
/// first (`check_shape`): serde would otherwise reserve room from the lengths the message
/// claims and build a copy of all of it before finding that out.
pub fn decode_client(bytes: &[u8]) -> Result<ClientMessage, ProtocolError> {
    check_shape(bytes)?;
    let msg: ClientMessage = decode_bounded(bytes)?;
    validate_client(&msg)?;
    Ok(msg)
}

/// Walks a client message without building it: one well-formed MessagePack value (every
/// length it claims is there), nested at most `MAX_MESSAGE_DEPTH` levels, whose values would
/// take at most `MAX_DECODED_MESSAGE_BYTES` decoded. What passes is decoded by serde in
/// proportion to its size: about its decoded size again for serde's intermediate copy (all the
/// fields of a message tagged by `type` are buffered before the tag is known).
fn check_shape(bytes: &[u8]) -> Result<(), ProtocolError> {
    let mut r = Reader::bounded(bytes, MAX_MESSAGE_DEPTH, MAX_DECODED_MESSAGE_BYTES);
    r.skip(0).map_err(|Unread| match r.exceeded() {
        Some(Limit::Depth) => ProtocolError::TooDeep {
            field: "message",
            max: MAX_MESSAGE_DEPTH,
        },
        Some(Limit::DecodedBytes) => ProtocolError::DecodedTooLarge {
            max: MAX_DECODED_MESSAGE_BYTES,
        },
        None => ProtocolError::NotMessagePack,
    })
}

/// Decodes and validates a message read on a call stream. Same result as `decode_client`,
/// cheaper for a `Call`: the derived decoder of `ClientMessage` first buffers the whole
/// message to find its `type` tag, and a call stream carries only calls, so the call is read
/// directly first (`direct`).
pub fn decode_call(bytes: &[u8]) -> Result<ClientMessage, ProtocolError> {
    match direct::call(bytes) {
        Some(msg) => {
            validate_client(&msg)?;
            Ok(msg)
        }
        // Another message, or a malformed one: the general decoder says which.
        None => decode_client(bytes),
    }
}

/// Decodes a message from a server.
pub fn decode_server(bytes: &[u8]) -> Result<ServerMessage, ProtocolError> {
    decode_bounded(bytes)
}

/// Decodes a message read on a call stream. Same result as `decode_server`, cheaper for a
/// `CallResult` (see `decode_call`).
pub fn decode_call_result(bytes: &[u8]) -> Result<ServerMessage, ProtocolError> {
    direct::call_result(bytes).map_or_else(|| decode_server(bytes), Ok)
}

/// Decodes a message read on the sync stream. Same result as `decode_server`, cheaper for a
/// `Transition`: the derived decoder of `ServerMessage` would first buffer the whole message —
/// every changed document — to find its `type` tag, then decode it again through serde's
/// generic machinery, and transitions are most of what a client decodes.
pub fn decode_transition(bytes: &[u8]) -> Result<ServerMessage, ProtocolError> {
    direct::transition(bytes).map_or_else(|| decode_server(bytes), Ok)
}

fn decode_bounded<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    // rmp-serde fails once its counter reaches zero, so N allows N - 1 levels.
    de.set_max_depth(MAX_MESSAGE_DEPTH + 1);
    let msg = T::deserialize(&mut de)?;
    let consumed = de.position();
    let total = bytes.len() as u64;
    if consumed < total {
        return Err(ProtocolError::TrailingBytes {
            count: total - consumed,
        });
    }
    Ok(msg)
}

/// Checks the sizes of §10 that a server answers with a fatal `Error` when exceeded (field
/// lengths, argument nesting). `decode_client` applies it; a client applies it before sending.
pub fn validate_client(msg: &ClientMessage) -> Result<(), ProtocolError> {
    match msg {
        ClientMessage::Connect { client_name, .. } => {
            check_len("clientName", client_name, MAX_CLIENT_NAME_BYTES)
        }
        ClientMessage::Authenticate { token } => match token {
            Some(token) => check_len("token", token, MAX_TOKEN_BYTES),
            None => Ok(()),
        },
        ClientMessage::Subscribe { function, args, .. } => {
            check_len("function", function, MAX_FUNCTION_NAME_BYTES)?;
            check_depth("args", args, MAX_ARGS_DEPTH)
        }
        ClientMessage::Call {
            function,
            args,
            mutation_id,
            ..
        } => {
            check_len("function", function, MAX_FUNCTION_NAME_BYTES)?;
            if let Some(id) = mutation_id {
                check_len("mutationId", id, MAX_MUTATION_ID_BYTES)?;
            }
            check_depth("args", args, MAX_ARGS_DEPTH)
        }
        ClientMessage::Unsubscribe { .. } | ClientMessage::Ping { .. } => Ok(()),
    }
}

fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), ProtocolError> {
    if s.len() > max {
        return Err(ProtocolError::FieldTooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// Nesting depth of `value` (containers count as one level even when empty), walked with an
/// explicit stack of the containers open: as deep as the value, never as wide.
pub fn value_depth(value: &Value) -> usize {
    let mut open = Vec::new();
    open.extend(Children::of(value));
    let mut deepest = open.len();
    while let Some(children) = open.last_mut() {
        match children.next() {
            Some(child) => {
                if let Some(grandchildren) = Children::of(child) {
                    open.push(grandchildren);
                    deepest = deepest.max(open.len());
                }
            }
            None => {
                open.pop();
            }
        }
    }
    deepest
}

/// The values inside an array or object, in turn.
enum Children<'a> {
    Array(std::slice::Iter<'a, Value>),
    Object(btree_map::Values<'a, String, Value>),
}

impl<'a> Children<'a> {
    /// `None` for a value that is not a container.
    fn of(value: &'a Value) -> Option<Self> {
        match value {
            Value::Array(items) => Some(Children::Array(items.iter())),
            Value::Object(fields) => Some(Children::Object(fields.values())),
            _ => None,
        }
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = &'a Value;

    fn next(&mut self) -> Option<&'a Value> {
        match self {
            Children::Array(items) => items.next(),
            Children::Object(fields) => fields.next(),
        }
    }
}

fn check_depth(field: &'static str, value: &Value, max: usize) -> Result<(), ProtocolError> {
    if value_depth(value) > max {
        return Err(ProtocolError::TooDeep { field, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::ArrayEdit;
    use crate::encoding::tests::arb_value;
    use crate::msgpack_reader::tests::{arb_msgpack, damaged};
    use crate::obj;
    use proptest::prelude::*;

    fn nested(depth: usize) -> Value {
        let mut v = Value::Int64(1);
        for _ in 0..depth {
            v = Value::Array(vec![v]);
        }
        v
    }

    fn sample_args() -> Value {
        obj! {
            "int" => 7i64,
            "negative" => -3i64,
            "big" => i64::MAX,
            "float" => 1.0f64,
            "text" => "héllo",
            "flag" => true,
            "none" => Value::Null,
            "bytes" => Value::Bytes(vec![0, 1, 255]),
            "list" => vec![Value::Int64(1), Value::Float64(2.5), obj! { "_id" => "abc" }],
        }
    }

    fn client_samples() -> Vec<ClientMessage> {
        vec![
            ClientMessage::Connect {
                protocol_version: PROTOCOL_VERSION,
                client_name: "linkedup-cli/0.1".into(),
                last_seen_ts: Some(42),
                transition_parts: true,
            },
            ClientMessage::Connect {
                protocol_version: PROTOCOL_VERSION,
                client_name: String::new(),
                last_seen_ts: None,
                transition_parts: false,
            },
            ClientMessage::Authenticate {
                token: Some("eyJ...".into()),
            },
            ClientMessage::Authenticate { token: None },
            ClientMessage::Subscribe {
                query_id: 3,
                function: "notes:list".into(),
                args: sample_args(),
            },
            ClientMessage::Unsubscribe { query_id: 3 },
            ClientMessage::Call {
                request_id: u64::MAX,
                kind: CallKind::Mutation,
                function: "notes:update".into(),
                args: sample_args(),
                mutation_id: Some("m-1".into()),
            },
            ClientMessage::Ping { nonce: 9 },
        ]
    }

    fn server_samples() -> Vec<ServerMessage> {
        vec![
            ServerMessage::Connected {
                protocol_version: PROTOCOL_VERSION,
                server_version: "0.1.0".into(),
                session_id: "s-1".into(),
                max_frame_bytes: crate::protocol::frame::DEFAULT_MAX_FRAME_BYTES,
                max_subscriptions: 1000,
                max_concurrent_calls: 64,
            },
            ServerMessage::AuthOk {
                subject: Some("user_1".into()),
            },
            ServerMessage::CallResult {
                request_id: 1,
                result: CallOutcome::Ok {
                    value: sample_args(),
                    ts: 17,
                },
            },
            ServerMessage::CallResult {
                request_id: 2,
                result: CallOutcome::Err(FunctionError::forbidden("no").into()),
            },
            ServerMessage::Transition {
                start_ts: 10,
                end_ts: 12,
                modifications: vec![
                    Modification::Updated {
                        query_id: 1,
                        diff: ResultDiff::Replace(sample_args()),
                    },
                    Modification::Updated {
                        query_id: 2,
                        diff: ResultDiff::Array(vec![
                            ArrayEdit::Remove {
                                index: 0,
                                id: "a".into(),
                            },
                            ArrayEdit::Insert {
                                index: 4,
                                value: sample_args(),
                            },
                            ArrayEdit::Change {
                                index: 1,
                                id: "b".into(),
                                value: Value::Bytes(vec![1, 2]),
                            },
                        ]),
                    },
                    Modification::Failed {
                        query_id: 3,
                        error: FunctionError::not_found("gone").into(),
                    },
                    Modification::Removed { query_id: 4 },
                ],
                continued: true,
            },
            ServerMessage::Transition {
                start_ts: 10,
                end_ts: 12,
                modifications: vec![Modification::Removed { query_id: 5 }],
                continued: false,
            },
            ServerMessage::unsupported_version(9),
            ServerMessage::Pong { nonce: 9 },
        ]
    }

    #[test]
    fn every_message_roundtrips_losslessly() {
        for msg in client_samples() {
            let bytes = encode(&msg).expect("encode");
            assert_eq!(decode_client(&bytes).expect("decode"), msg);
        }
        for msg in server_samples() {
            let bytes = encode(&msg).expect("encode");
            assert_eq!(decode_server(&bytes).expect("decode"), msg);
        }
    }

    /// These fields encoded as one MessagePack map.
    fn map(fields: Vec<(&str, Value)>) -> Vec<u8> {
        let obj: crate::value::Object = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        rmp_serde::to_vec_named(&Value::from(obj)).expect("encode")
    }

    /// The wire form of each sample message.
    fn encoded<M: WireMessage>(samples: &[M]) -> Vec<Vec<u8>> {
        samples.iter().map(|m| encode(m).expect("encode")).collect()
    }

    /// Both decoders give the same message, or the same error, for every input.
    fn assert_decoders_agree<T, E>(
        inputs: &[Vec<u8>],
        fast: impl Fn(&[u8]) -> Result<T, E>,
        general: impl Fn(&[u8]) -> Result<T, E>,
    ) where
        T: PartialEq + std::fmt::Debug,
        E: std::fmt::Display + std::fmt::Debug,
    {
        for bytes in inputs {
            match (fast(bytes), general(bytes)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("decoders disagree: {a:?} vs {b:?}"),
            }
        }
    }

    #[test]
    fn the_call_decoder_agrees_with_the_general_one() {
        let mut inputs = encoded(&client_samples());
        // No mutationId, an unknown key, a wrong type, a missing field, an unknown tag,
        // trailing bytes, garbage.
        let call = |extra: Vec<(&str, Value)>| {
            let mut fields = vec![
                ("type", Value::from("Call")),
                ("requestId", Value::Int64(3)),
                ("kind", Value::from("query")),
                ("function", Value::from("f")),
                ("args", obj! {}),
            ];
            fields.extend(extra);
            map(fields)
        };
        inputs.push(call(vec![]));
        inputs.push(call(vec![("future", Value::Int64(1))]));
        inputs.push(call(vec![("requestId", Value::from("x"))]));
        inputs.push(call(vec![("kind", Value::from("other"))]));
        inputs.push(call(vec![("function", Value::from("f".repeat(300)))]));
        inputs.push(map(vec![
            ("type", Value::from("Call")),
            ("requestId", Value::Int64(1)),
        ]));
        inputs.push(map(vec![("type", Value::from("Nope"))]));
        let mut trailing = call(vec![]);
        trailing.push(0);
        inputs.push(trailing);
        let as_array = Value::Array(vec![
            Value::from("Call"),
            Value::Int64(3),
            Value::from("query"),
            Value::from("f"),
            obj! {},
            Value::Null,
        ]);
        inputs.push(rmp_serde::to_vec_named(&as_array).expect("encode"));
        inputs.push(vec![0xc1]);
        assert_decoders_agree(&inputs, decode_call, decode_client);
    }

    #[test]
    fn the_call_result_decoder_agrees_with_the_general_one() {
        let mut inputs = encoded(&server_samples());
        let result = |outcome: Value| {
            map(vec![
                ("type", Value::from("CallResult")),
                ("requestId", Value::Int64(4)),
                ("result", outcome),
            ])
        };
        inputs.push(result(
            obj! { "status" => "Ok", "value" => Value::Null, "ts" => 1i64 },
        ));
        inputs.push(result(obj! { "status" => "Ok", "ts" => 1i64 }));
        inputs.push(result(obj! { "status" => "Ok", "value" => 1i64 }));
        inputs.push(result(
            obj! { "status" => "Err", "code" => "X", "message" => "m" },
        ));
        inputs.push(result(
            obj! { "status" => "Err", "code" => "X", "message" => "m", "data" => Value::Null },
        ));
        inputs.push(result(
            obj! { "status" => "Maybe", "value" => 1i64, "ts" => 1i64 },
        ));
        inputs.push(result(
            obj! { "status" => "Ok", "value" => 1i64, "ts" => 1i64, "x" => 2i64 },
        ));
        inputs.push(map(vec![
            ("type", Value::from("Pong")),
            ("requestId", Value::Int64(4)),
            (
                "result",
                obj! { "status" => "Ok", "value" => 1i64, "ts" => 1i64 },
            ),
        ]));
        inputs.push(vec![0xc1]);
        assert_decoders_agree(&inputs, decode_call_result, decode_server);
    }

    #[test]
    fn the_transition_decoder_agrees_with_the_general_one() {
        let mut inputs = encoded(&server_samples());
        let transition = |tag: &str, modifications: Vec<Value>| {
            map(vec![
                ("type", Value::from(tag)),
                ("startTs", Value::Int64(1)),
                ("endTs", Value::Int64(2)),
                ("modifications", Value::Array(modifications)),
            ])
        };
        let updated = |edits: Vec<Value>| {
            obj! {
                "type" => "Updated",
                "queryId" => 1i64,
                "diff" => obj! { "kind" => "array", "value" => Value::Array(edits) },
            }
        };
        let remove = obj! { "op" => "remove", "index" => 0i64, "id" => "a" };
        let insert_null = obj! { "op" => "insert", "index" => 0i64, "value" => Value::Null };
        let change = obj! { "op" => "change", "index" => 1i64, "id" => "b", "value" => 5i64 };
        let failed = obj! {
            "type" => "Failed",
            "queryId" => 2i64,
            "error" => obj! { "code" => "FORBIDDEN", "message" => "m", "data" => Value::Null },
        };
        let removed = obj! { "type" => "Removed", "queryId" => 3i64 };
        // Valid: every edit and modification kind, a null inserted, unknown keys ignored.
        inputs.push(transition(
            "Transition",
            vec![
                updated(vec![remove.clone(), insert_null.clone(), change.clone()]),
                failed.clone(),
                removed.clone(),
            ],
        ));
        inputs.push(transition(
            "Transition",
            vec![obj! { "type" => "Removed", "queryId" => 3i64, "diff" => 1i64 }],
        ));
        // Invalid: missing or nil fields, unknown kinds, wrong types, another message's tag.
        for bad in [
            obj! { "type" => "Updated", "queryId" => 1i64 },
            obj! { "type" => "Updated", "queryId" => 1i64, "diff" => Value::Null },
            obj! { "type" => "Failed", "queryId" => 1i64 },
            obj! { "type" => "Moved", "queryId" => 1i64 },
            obj! { "type" => "Removed", "queryId" => "one" },
            updated(vec![obj! { "op" => "remove", "index" => 0i64 }]),
            updated(vec![
                obj! { "op" => "change", "index" => 0i64, "id" => "a" },
            ]),
            updated(vec![obj! { "op" => "insert", "index" => 0i64 }]),
            updated(vec![obj! { "op" => "move", "index" => 0i64, "id" => "a" }]),
            updated(vec![
                obj! { "op" => "remove", "index" => -1i64, "id" => "a" },
            ]),
        ] {
            inputs.push(transition("Transition", vec![bad]));
        }
        inputs.push(transition("Pong", vec![removed.clone()]));
        inputs.push(map(vec![
            ("type", Value::from("Transition")),
            ("startTs", Value::from("1")),
            ("endTs", Value::Int64(2)),
            ("modifications", Value::Array(vec![])),
        ]));
        // `continued` set, unset, nil (an optional field, §3) and of the wrong type.
        for flag in [
            Value::Bool(true),
            Value::Bool(false),
            Value::Null,
            Value::Int64(1),
        ] {
            inputs.push(map(vec![
                ("type", Value::from("Transition")),
                ("startTs", Value::Int64(1)),
                ("endTs", Value::Int64(2)),
                ("modifications", Value::Array(vec![removed.clone()])),
                ("continued", flag),
            ]));
        }
        let mut trailing = transition("Transition", vec![]);
        trailing.push(0xc0);
        inputs.push(trailing);
        inputs.push(vec![0xc1]);
        assert_decoders_agree(&inputs, decode_transition, decode_server);
        let ok = decode_transition(&inputs[server_samples().len()]).expect("decode");
        assert!(
            matches!(ok, ServerMessage::Transition { ref modifications, .. } if modifications.len() == 3)
        );
    }

    /// The flags added to version 1 (`Connect.transitionParts`, `Transition.continued`) are
    /// written only when set, so messages without them encode as older peers know them, and
    /// read as unset when absent or nil (§3).
    #[test]
    fn optional_flags_are_written_only_when_set_and_read_as_unset_when_absent() {
        let connect = |parts: bool| ClientMessage::Connect {
            protocol_version: 1,
            client_name: "c".into(),
            last_seen_ts: None,
            transition_parts: parts,
        };
        // The keys written, whatever their order.
        let fields = |bytes: &[u8]| crate::msgpack_reader::value_from_slice(bytes).expect("map");
        let unset = encode(&connect(false)).expect("encode");
        assert_eq!(
            fields(&unset),
            fields(&map(vec![
                ("type", Value::from("Connect")),
                ("protocolVersion", Value::Int64(1)),
                ("clientName", Value::from("c")),
                ("lastSeenTs", Value::Null),
            ]))
        );
        let set = encode(&connect(true)).expect("encode");
        assert!(set.len() > unset.len());
        assert_eq!(decode_client(&set).expect("decode"), connect(true));
        let nil = map(vec![
            ("type", Value::from("Connect")),
            ("protocolVersion", Value::Int64(1)),
            ("clientName", Value::from("c")),
            ("lastSeenTs", Value::Null),
            ("transitionParts", Value::Null),
        ]);
        assert_eq!(decode_client(&nil).expect("decode"), connect(false));

        let transition = |continued: bool| ServerMessage::Transition {
            start_ts: 1,
            end_ts: 2,
            modifications: vec![],
            continued,
        };
        let unset = encode(&transition(false)).expect("encode");
        assert_eq!(
            fields(&unset),
            fields(&map(vec![
                ("type", Value::from("Transition")),
                ("startTs", Value::Int64(1)),
                ("endTs", Value::Int64(2)),
                ("modifications", Value::Array(vec![])),
            ]))
        );
        for decode in [decode_server, decode_transition] {
            let set = encode(&transition(true)).expect("encode");
            assert_eq!(decode(&set).expect("decode"), transition(true));
            assert_eq!(decode(&unset).expect("decode"), transition(false));
        }
    }

    #[test]
    fn frames_appended_in_place_match_encode_then_frame() {
        let mut out = b"before".to_vec();
        let mut expected = out.clone();
        for msg in server_samples() {
            let len = encode_frame_into(&msg, &mut out).expect("encode");
            let payload = encode(&msg).expect("encode");
            assert_eq!(len, payload.len());
            expected.extend(crate::protocol::frame::encode_frame(&payload).expect("frame"));
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn ints_floats_and_bytes_keep_their_types() {
        let msg = ClientMessage::Subscribe {
            query_id: 1,
            function: "f".into(),
            args: sample_args(),
        };
        let ClientMessage::Subscribe { args, .. } =
            decode_client(&encode(&msg).expect("encode")).expect("decode")
        else {
            panic!("wrong variant");
        };
        assert!(matches!(args.get_path("int"), Some(Value::Int64(7))));
        assert!(matches!(args.get_path("float"), Some(Value::Float64(f)) if *f == 1.0));
        assert!(matches!(args.get_path("bytes"), Some(Value::Bytes(b)) if b == &[0, 1, 255]));
    }

    #[test]
    fn wire_shape_is_a_named_map_with_type_tag() {
        let bytes = encode(&ClientMessage::Unsubscribe { query_id: 5 }).expect("encode");
        // fixmap(2) "type" "Unsubscribe" "queryId" 5
        let mut expected = vec![0x82, 0xa4];
        expected.extend(b"type");
        expected.push(0xab);
        expected.extend(b"Unsubscribe");
        expected.push(0xa7);
        expected.extend(b"queryId");
        expected.push(0x05);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn oversize_fields_are_rejected() {
        let call = |function: String, mutation_id: Option<String>| ClientMessage::Call {
            request_id: 1,
            kind: CallKind::Query,
            function,
            args: Value::Null,
            mutation_id,
        };
        let long_name = call("f".repeat(MAX_FUNCTION_NAME_BYTES + 1), None);
        assert!(matches!(
            decode_client(&encode(&long_name).expect("encode")),
            Err(ProtocolError::FieldTooLong {
                field: "function",
                ..
            })
        ));
        let long_id = call("f".into(), Some("m".repeat(MAX_MUTATION_ID_BYTES + 1)));
        assert!(matches!(
            decode_client(&encode(&long_id).expect("encode")),
            Err(ProtocolError::FieldTooLong {
                field: "mutationId",
                ..
            })
        ));
        let long_token = ClientMessage::Authenticate {
            token: Some("t".repeat(MAX_TOKEN_BYTES + 1)),
        };
        assert!(matches!(
            decode_client(&encode(&long_token).expect("encode")),
            Err(ProtocolError::FieldTooLong { field: "token", .. })
        ));
    }

    #[test]
    fn args_depth_is_bounded() {
        let subscribe = |args| ClientMessage::Subscribe {
            query_id: 1,
            function: "f".into(),
            args,
        };
        let ok = encode(&subscribe(nested(MAX_ARGS_DEPTH))).expect("encode");
        assert!(decode_client(&ok).is_ok());
        let deep = encode(&subscribe(nested(MAX_ARGS_DEPTH + 1))).expect("encode");
        assert!(matches!(
            decode_client(&deep),
            Err(ProtocolError::TooDeep { field: "args", .. })
        ));
        // The whole message, its map included, may nest `MAX_MESSAGE_DEPTH` levels: args one
        // level less are read (and refused as args), one level more are not read at all.
        let at_limit = encode(&subscribe(nested(MAX_MESSAGE_DEPTH - 1))).expect("encode");
        assert!(matches!(
            decode_client(&at_limit),
            Err(ProtocolError::TooDeep { field: "args", .. })
        ));
        let over = encode(&subscribe(nested(MAX_MESSAGE_DEPTH))).expect("encode");
        assert!(matches!(
            decode_client(&over),
            Err(ProtocolError::TooDeep {
                field: "message",
                ..
            })
        ));
    }

    #[test]
    fn hostile_nesting_does_not_overflow_the_stack() {
        // A Subscribe whose args are a million nested one-element arrays, written by hand
        // since building that `Value` would itself be the problem.
        let mut bytes = encode(&ClientMessage::Subscribe {
            query_id: 1,
            function: "f".into(),
            args: Value::Null,
        })
        .expect("encode");
        assert_eq!(bytes.pop(), Some(0xc0), "args is the last field");
        bytes.extend(std::iter::repeat_n(0x91, 1_000_000));
        bytes.push(0xc0);
        assert!(matches!(
            decode_client(&bytes),
            Err(ProtocolError::TooDeep {
                field: "message",
                max: MAX_MESSAGE_DEPTH
            })
        ));
        let deep_maps: Vec<u8> = std::iter::repeat_n([0x81, 0xa1, b'a'], 100_000)
            .flatten()
            .collect();
        assert!(decode_server(&deep_maps).is_err());
        // The deepest message the decoder accepts still decodes on a test thread's stack.
        let mut at_limit = encode(&ServerMessage::CallResult {
            request_id: 1,
            result: CallOutcome::Ok {
                value: Value::Null,
                ts: 0,
            },
        })
        .expect("encode");
        let value_at = at_limit
            .iter()
            .position(|b| *b == 0xc0)
            .expect("value is the only nil");
        // CallResult map and CallOutcome map are two levels; the value may use the rest.
        let levels = MAX_MESSAGE_DEPTH - 2;
        at_limit.splice(
            value_at..=value_at,
            std::iter::repeat_n(0x91, levels).chain([0xc0]),
        );
        assert!(decode_server(&at_limit).is_ok());
        at_limit.insert(value_at, 0x91);
        assert!(decode_server(&at_limit).is_err());
    }

    #[test]
    fn huge_length_claims_fail_without_allocating() {
        // array32 / map32 / str32 / bin32 claiming 4 G elements, with nothing after them.
        for marker in [0xdd, 0xdf, 0xdb, 0xc6] {
            let mut bytes = encode(&ClientMessage::Subscribe {
                query_id: 1,
                function: "f".into(),
                args: Value::Null,
            })
            .expect("encode");
            bytes.pop();
            bytes.extend([marker, 0xff, 0xff, 0xff, 0xff]);
            assert!(decode_client(&bytes).is_err());
        }
    }

    /// docs/protocol.md §3: unknown keys are ignored, optional fields may be absent, an unknown
    /// `type` is an error.
    #[test]
    fn unknown_keys_ignored_optional_fields_may_be_absent() {
        let map = |fields: Vec<(&str, Value)>| {
            let v = Value::from(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<crate::value::Object>(),
            );
            rmp_serde::to_vec_named(&v).expect("encode")
        };
        let ping = map(vec![
            ("type", "Ping".into()),
            ("nonce", Value::Int64(3)),
            ("future", Value::Bool(true)),
        ]);
        assert_eq!(
            decode_client(&ping).ok(),
            Some(ClientMessage::Ping { nonce: 3 })
        );
        let connect = map(vec![
            ("type", "Connect".into()),
            ("protocolVersion", Value::Int64(1)),
            ("clientName", "c".into()),
        ]);
        assert!(matches!(
            decode_client(&connect),
            Ok(ClientMessage::Connect {
                last_seen_ts: None,
                ..
            })
        ));
        let unknown = map(vec![("type", "Teleport".into())]);
        assert!(matches!(
            decode_client(&unknown),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&ClientMessage::Ping { nonce: 1 }).expect("encode");
        bytes.push(0);
        assert!(matches!(
            decode_client(&bytes),
            Err(ProtocolError::TrailingBytes { count: 1 })
        ));
    }

    #[test]
    fn unsupported_version_is_fatal_validation_error() {
        match ServerMessage::unsupported_version(2) {
            ServerMessage::Error {
                code, fatal, data, ..
            } => {
                assert_eq!(code, "VALIDATION_ERROR");
                assert!(fatal);
                assert_eq!(
                    data.get_path("supportedVersions"),
                    Some(&Value::Array(vec![Value::Int64(1)]))
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn value_depth_counts_containers() {
        assert_eq!(value_depth(&Value::Null), 0);
        assert_eq!(value_depth(&Value::Array(vec![])), 1);
        assert_eq!(value_depth(&obj! { "a" => vec![Value::Int64(1)] }), 2);
        assert_eq!(value_depth(&nested(500)), 500);
    }

    /// The hex examples in docs/protocol.md are what the encoder produces, so the document
    /// cannot drift from the code.
    #[test]
    fn doc_examples_match_the_encoder() {
        let doc = include_str!("../../../docs/protocol.md");
        let obj = |fields: Vec<(&str, Value)>| {
            Value::from(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<crate::value::Object>(),
            )
        };
        let client = [
            ClientMessage::Connect {
                protocol_version: 1,
                client_name: "cli".into(),
                last_seen_ts: None,
                transition_parts: false,
            },
            ClientMessage::Authenticate {
                token: Some("tok".into()),
            },
            ClientMessage::Subscribe {
                query_id: 1,
                function: "notes:list".into(),
                args: obj(vec![("limit", Value::Int64(20))]),
            },
            ClientMessage::Unsubscribe { query_id: 1 },
            ClientMessage::Call {
                request_id: 7,
                kind: CallKind::Mutation,
                function: "notes:create".into(),
                args: obj(vec![
                    ("text", Value::from("hi")),
                    ("w", Value::Float64(1.5)),
                ]),
                mutation_id: Some("m-1".into()),
            },
            ClientMessage::Ping { nonce: 5 },
        ];
        let server = [
            ServerMessage::Connected {
                protocol_version: 1,
                server_version: "0.1.0".into(),
                session_id: "s1".into(),
                max_frame_bytes: crate::protocol::frame::DEFAULT_MAX_FRAME_BYTES,
                max_subscriptions: 1000,
                max_concurrent_calls: 64,
            },
            ServerMessage::AuthOk {
                subject: Some("user_1".into()),
            },
            ServerMessage::CallResult {
                request_id: 7,
                result: CallOutcome::Ok {
                    value: Value::from("id1"),
                    ts: 42,
                },
            },
            ServerMessage::CallResult {
                request_id: 8,
                result: CallOutcome::Err(FunctionError::not_found("no such note").into()),
            },
            ServerMessage::Transition {
                start_ts: 41,
                end_ts: 42,
                modifications: vec![
                    Modification::Updated {
                        query_id: 1,
                        diff: ResultDiff::Array(vec![ArrayEdit::Remove {
                            index: 0,
                            id: "a".into(),
                        }]),
                    },
                    Modification::Removed { query_id: 2 },
                ],
                continued: false,
            },
            ServerMessage::Error {
                code: "VALIDATION_ERROR".into(),
                message: "bad".into(),
                data: Value::Null,
                fatal: false,
            },
            ServerMessage::Pong { nonce: 5 },
        ];
        let hex = |bytes: &[u8]| {
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        for msg in &client {
            let bytes = encode(msg).expect("encode");
            assert_eq!(&decode_client(&bytes).expect("decode"), msg);
            assert!(doc.contains(&hex(&bytes)), "{msg:?} = {}", hex(&bytes));
        }
        for msg in &server {
            let bytes = encode(msg).expect("encode");
            assert_eq!(&decode_server(&bytes).expect("decode"), msg);
            assert!(doc.contains(&hex(&bytes)), "{msg:?} = {}", hex(&bytes));
        }
        let frame = crate::protocol::frame::encode_frame(&encode(&client[5]).expect("encode"))
            .expect("frame");
        assert!(doc.contains(&format!(
            "prefix `{}` ({})",
            hex(&frame[..4]),
            frame.len() - 4
        )));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn decoders_never_panic_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_client(&bytes);
            let _ = decode_server(&bytes);
            let _ = decode_transition(&bytes);
        }

        #[test]
        fn decoders_never_panic_on_damaged_messages(
            which in any::<prop::sample::Index>(),
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            truncate in any::<Option<usize>>(),
        ) {
            let clients: Vec<Vec<u8>> = client_samples().iter().map(|m| encode(m).unwrap_or_default()).collect();
            let servers: Vec<Vec<u8>> = server_samples().iter().map(|m| encode(m).unwrap_or_default()).collect();
            let client = damaged(which.get(&clients).clone(), &flips, truncate);
            let server = damaged(which.get(&servers).clone(), &flips, truncate);
            for bytes in [&client, &server] {
                if let Ok(msg) = decode_client(bytes) {
                    // Whatever decodes re-encodes and decodes to itself.
                    prop_assert_eq!(decode_client(&encode(&msg).unwrap_or_default()).ok(), Some(msg));
                }
                // The fast decoders give what the general ones give.
                let client_general = decode_client(bytes).map_err(|e| e.to_string());
                prop_assert_eq!(decode_call(bytes).map_err(|e| e.to_string()), client_general);
                let general = decode_server(bytes).map_err(|e| e.to_string());
                prop_assert_eq!(decode_call_result(bytes).map_err(|e| e.to_string()), general.clone());
                prop_assert_eq!(decode_transition(bytes).map_err(|e| e.to_string()), general);
            }
        }
    }

    /// Arbitrary messages of the kinds the direct decoders read, their values arbitrary.
    fn arb_hot_message() -> impl Strategy<Value = Vec<u8>> {
        let payload = || {
            ("[A-Z_]{0,8}", "\\PC{0,8}", arb_value()).prop_map(|(code, message, data)| {
                ErrorPayload {
                    code,
                    message,
                    data,
                }
            })
        };
        let edit = prop_oneof![
            (any::<u32>(), "[a-z0-9]{0,6}").prop_map(|(index, id)| ArrayEdit::Remove { index, id }),
            (any::<u32>(), arb_value())
                .prop_map(|(index, value)| ArrayEdit::Insert { index, value }),
            (any::<u32>(), "[a-z0-9]{0,6}", arb_value())
                .prop_map(|(index, id, value)| ArrayEdit::Change { index, id, value }),
        ];
        let diff = prop_oneof![
            arb_value().prop_map(ResultDiff::Replace),
            prop::collection::vec(edit, 0..4).prop_map(ResultDiff::Array),
        ];
        let modification = prop_oneof![
            (any::<u32>(), diff)
                .prop_map(|(query_id, diff)| Modification::Updated { query_id, diff }),
            (any::<u32>(), payload())
                .prop_map(|(query_id, error)| Modification::Failed { query_id, error }),
            any::<u32>().prop_map(|query_id| Modification::Removed { query_id }),
        ];
        let transition = (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(modification, 0..4),
            any::<bool>(),
        )
            .prop_map(|(start_ts, end_ts, modifications, continued)| {
                ServerMessage::Transition {
                    start_ts,
                    end_ts,
                    modifications,
                    continued,
                }
            });
        let outcome = prop_oneof![
            (arb_value(), any::<u64>()).prop_map(|(value, ts)| CallOutcome::Ok { value, ts }),
            payload().prop_map(CallOutcome::Err),
        ];
        let call_result = (any::<u64>(), outcome)
            .prop_map(|(request_id, result)| ServerMessage::CallResult { request_id, result });
        let call = (
            any::<u64>(),
            prop::sample::select(vec![CallKind::Query, CallKind::Mutation, CallKind::Action]),
            "[a-z:]{0,12}",
            arb_value(),
            prop::option::of("[a-z0-9-]{0,8}"),
        )
            .prop_map(|(request_id, kind, function, args, mutation_id)| {
                ClientMessage::Call {
                    request_id,
                    kind,
                    function,
                    args,
                    mutation_id,
                }
            });
        prop_oneof![
            transition.prop_map(|m| encode(&m).expect("encode")),
            call_result.prop_map(|m| encode(&m).expect("encode")),
            call.prop_map(|m| encode(&m).expect("encode")),
        ]
    }

    /// A text no generated value contains, standing for a value to be spliced in raw.
    const HOLE: &str = "\u{1}hole\u{1}";

    /// Each hot message with one value written as `raw`, any MessagePack at all.
    fn with_raw_value(raw: &[u8]) -> Vec<Vec<u8>> {
        let hole = Value::from(HOLE);
        let messages = [
            encode(&ServerMessage::Transition {
                start_ts: 1,
                end_ts: 2,
                modifications: vec![Modification::Updated {
                    query_id: 1,
                    diff: ResultDiff::Array(vec![ArrayEdit::Insert {
                        index: 0,
                        value: hole.clone(),
                    }]),
                }],
                continued: false,
            }),
            encode(&ServerMessage::CallResult {
                request_id: 1,
                result: CallOutcome::Ok {
                    value: hole.clone(),
                    ts: 3,
                },
            }),
            encode(&ClientMessage::Call {
                request_id: 1,
                kind: CallKind::Query,
                function: "f".into(),
                args: hole.clone(),
                mutation_id: None,
            }),
        ];
        messages
            .into_iter()
            .map(|m| fill_hole(&m.expect("encode"), raw))
            .collect()
    }

    /// `message`, encoded with a value `HOLE`, with `raw` in its place.
    fn fill_hole(message: &[u8], raw: &[u8]) -> Vec<u8> {
        let hole = rmp_serde::to_vec_named(&Value::from(HOLE)).expect("encode");
        let at = message
            .windows(hole.len())
            .position(|w| w == hole)
            .expect("the hole is there");
        [&message[..at], raw, &message[at + hole.len()..]].concat()
    }

    /// A `Call` (read directly) and a `Subscribe` (read through serde) whose `args` are `raw`.
    fn client_messages_with_args(raw: &[u8]) -> [Vec<u8>; 2] {
        let args = Value::from(HOLE);
        [
            encode(&call_of(args.clone())),
            encode(&ClientMessage::Subscribe {
                query_id: 1,
                function: "f".into(),
                args,
            }),
        ]
        .map(|m| fill_hole(&m.expect("encode"), raw))
    }

    fn call_of(args: Value) -> ClientMessage {
        ClientMessage::Call {
            request_id: 1,
            kind: CallKind::Query,
            function: "f".into(),
            args,
            mutation_id: None,
        }
    }

    /// An array32 of `n` copies of `item`.
    fn array_of(n: usize, item: &[u8]) -> Vec<u8> {
        let mut raw = vec![0xdd];
        raw.extend(u32::try_from(n).expect("a u32 length").to_be_bytes());
        raw.extend(item.repeat(n));
        raw
    }

    #[test]
    fn messages_over_the_decoded_bound_are_refused() {
        let frame = crate::protocol::frame::DEFAULT_MAX_FRAME_BYTES as usize;
        // Frames of 8 MiB: empty objects, a byte each on the wire and about 80 decoded, and
        // objects of one empty key and nil, three bytes each and about 700 decoded.
        for item in [&[0x80][..], &[0x81, 0xa0, 0xc0]] {
            let raw = array_of((frame - 100) / item.len(), item);
            for bytes in client_messages_with_args(&raw) {
                assert!(bytes.len() <= frame);
                for decode in [decode_call, decode_client] {
                    let refused = decode(&bytes).expect_err("over the bound");
                    assert!(
                        matches!(
                            refused,
                            ProtocolError::DecodedTooLarge {
                                max: MAX_DECODED_MESSAGE_BYTES
                            }
                        ),
                        "{refused:?}"
                    );
                    // Reported as any other message the server cannot take (§9).
                    assert_eq!(refused.code(), codes::VALIDATION_ERROR);
                }
            }
        }
    }

    /// Any value within the engine's document limit decodes, whatever its shape, in a `Call`
    /// and in a `Subscribe`: the costliest shape for its size (one-entry objects with empty
    /// keys, nested as deep as arguments may) included.
    #[test]
    fn any_value_within_the_document_limit_decodes() {
        let limit = crate::transaction::Limits::default().max_document_bytes;
        let chain = |levels: usize| (0..levels).fold(Value::Null, |inner, _| obj! { "" => inner });
        // As many copies of `item` as the limit takes, in an array.
        let fill = |item: Value| {
            let n = (limit - 2) / item.size_bytes();
            Value::Array(vec![item; n])
        };
        for args in [
            fill(chain(MAX_ARGS_DEPTH - 1)),
            fill(chain(1)),
            fill(obj! {}),
            fill(Value::Null),
            Value::Array(vec![Value::Int64(1); 8192]),
        ] {
            assert!(args.size_bytes() <= limit);
            let call = encode(&call_of(args.clone())).expect("encode");
            assert_eq!(decode_call(&call).expect("decode"), call_of(args.clone()));
            let subscribe = ClientMessage::Subscribe {
                query_id: 1,
                function: "f".into(),
                args,
            };
            let bytes = encode(&subscribe).expect("encode");
            assert_eq!(decode_client(&bytes).expect("decode"), subscribe);
        }
    }

    /// `check_shape` refuses as malformed or too deep exactly what serde's own walk of the
    /// message refuses, so that the serde path decodes everything it decoded before the check
    /// (the decoded bound aside).
    fn shape_check_agrees_with_serde(bytes: &[u8]) -> Result<(), TestCaseError> {
        let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
        de.set_max_depth(MAX_MESSAGE_DEPTH + 1);
        let walked = serde::de::IgnoredAny::deserialize(&mut de).is_ok();
        match check_shape(bytes) {
            Ok(()) => prop_assert!(walked, "{:02x?}", bytes),
            Err(ProtocolError::DecodedTooLarge { .. }) => {}
            Err(e) => prop_assert!(!walked, "{:02x?}: {}", bytes, e),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_shape_check_refuses_what_serde_refuses(
            bytes in prop_oneof![
                arb_msgpack(),
                arb_msgpack().prop_map(|raw| client_messages_with_args(&raw).concat()),
                prop::collection::vec(any::<u8>(), 0..64),
            ],
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<Option<usize>>(),
        ) {
            shape_check_agrees_with_serde(&bytes)?;
            shape_check_agrees_with_serde(&damaged(bytes, &flips, cut))?;
        }
    }

    /// Every hot decoder gives what the general decoder gives: the same message bit for bit,
    /// or the same error.
    fn check_hot_decoders(bytes: &[u8]) -> Result<(), TestCaseError> {
        fn agree<T: WireMessage + std::fmt::Debug>(
            fast: Result<T, ProtocolError>,
            general: Result<T, ProtocolError>,
        ) -> Result<(), TestCaseError> {
            match (fast, general) {
                (Ok(a), Ok(b)) => prop_assert_eq!(encode(&a).ok(), encode(&b).ok()),
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => prop_assert!(false, "fast {:?}, general {:?}", a, b),
            }
            Ok(())
        }
        agree(decode_transition(bytes), decode_server(bytes))?;
        agree(decode_call_result(bytes), decode_server(bytes))?;
        agree(decode_call(bytes), decode_client(bytes))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn hot_messages_decode_directly_as_the_general_decoder_does(bytes in arb_hot_message()) {
            // What the encoder writes is read by the direct path, not handed on.
            prop_assert!(
                direct::transition(&bytes).is_some()
                    || direct::call_result(&bytes).is_some()
                    || direct::call(&bytes).is_some()
            );
            check_hot_decoders(&bytes)?;
        }

        #[test]
        fn any_value_inside_hot_messages_agrees(raw in arb_msgpack()) {
            for bytes in with_raw_value(&raw) {
                check_hot_decoders(&bytes)?;
            }
        }

        #[test]
        fn damaged_hot_messages_agree(
            bytes in prop_oneof![arb_hot_message(), arb_msgpack().prop_map(|raw| with_raw_value(&raw).concat())],
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<Option<usize>>(),
        ) {
            check_hot_decoders(&damaged(bytes, &flips, cut))?;
        }

        #[test]
        fn random_bytes_agree_on_hot_decoders(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            check_hot_decoders(&bytes)?;
        }
    }

    #[test]
    fn direct_decoders_keep_the_depth_limit() {
        // A CallResult whose value nests to the deepest level a message may have, and one more.
        let levels = MAX_MESSAGE_DEPTH - 2;
        for (extra, accepted) in [(0, true), (1, false)] {
            let raw = [vec![0x91; levels + extra], vec![0xc0]].concat();
            let [transition, call_result, call] =
                <[Vec<u8>; 3]>::try_from(with_raw_value(&raw)).expect("three messages");
            assert_eq!(direct::call_result(&call_result).is_some(), accepted);
            assert_eq!(decode_call_result(&call_result).is_ok(), accepted);
            check_hot_decoders(&call_result).unwrap();
            // The value of an edit in a transition sits four levels deeper.
            check_hot_decoders(&transition).unwrap();
            // The args of a call sit one level shallower.
            check_hot_decoders(&call).unwrap();
            assert!(direct::call(&call).is_some());
        }
    }
}
