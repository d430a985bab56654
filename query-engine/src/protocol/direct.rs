//! The hot messages read straight off their MessagePack (`msgpack_reader`), without serde:
//! `Transition` (most of what a client decodes), `CallResult` (the client's call answers) and
//! `Call` (what a server reads on call streams). Each reads the form the encoder writes — a map
//! of known field names, each once, values in their usual formats, nothing after it — and
//! gives `None` for anything else (unknown fields, other messages, malformed input), which the
//! general decoder then decodes or names the error of, exactly as before. A `Call` comes from a
//! client: it is read under the bound on a message's decoded size, and one over it is given up
//! as soon as the estimate passes the bound, for the general decoder to refuse.

use crate::diff::{ArrayEdit, ResultDiff};
use crate::msgpack_reader::{Read, Reader, Unread, MAX_PREALLOCATED};
use crate::value::Value;

use super::messages::{
    CallKind, CallOutcome, ClientMessage, ErrorPayload, Modification, ServerMessage,
    MAX_DECODED_MESSAGE_BYTES, MAX_MESSAGE_DEPTH,
};

/// A `Transition`, or `None` (see the module comment).
pub(super) fn transition(bytes: &[u8]) -> Option<ServerMessage> {
    let mut r = Reader::new(bytes, MAX_MESSAGE_DEPTH);
    let (mut tag, mut start_ts, mut end_ts, mut modifications, mut continued) =
        (None, None, None, None, None);
    fields(&mut r, 0, |r, key, depth| match key {
        "type" => once(&mut tag, r.str()?),
        "startTs" => once(&mut start_ts, r.uint()?),
        "endTs" => once(&mut end_ts, r.uint()?),
        "modifications" => once(&mut modifications, list(r, depth, modification)?),
        "continued" => once(&mut continued, optional(r, Reader::bool)?),
        _ => Err(Unread),
    })
    .ok()?;
    (r.is_empty() && tag? == "Transition").then_some(ServerMessage::Transition {
        start_ts: start_ts?,
        end_ts: end_ts?,
        modifications: modifications?,
        continued: continued.flatten().unwrap_or(false),
    })
}

/// A `CallResult`, or `None` (see the module comment).
pub(super) fn call_result(bytes: &[u8]) -> Option<ServerMessage> {
    let mut r = Reader::new(bytes, MAX_MESSAGE_DEPTH);
    let (mut tag, mut request_id, mut result) = (None, None, None);
    fields(&mut r, 0, |r, key, depth| match key {
        "type" => once(&mut tag, r.str()?),
        "requestId" => once(&mut request_id, r.uint()?),
        "result" => once(&mut result, outcome(r, depth)?),
        _ => Err(Unread),
    })
    .ok()?;
    (r.is_empty() && tag? == "CallResult").then_some(ServerMessage::CallResult {
        request_id: request_id?,
        result: result?,
    })
}

/// A `Call`, not yet validated, or `None` (see the module comment).
pub(super) fn call(bytes: &[u8]) -> Option<ClientMessage> {
    let mut r = Reader::bounded(bytes, MAX_MESSAGE_DEPTH, MAX_DECODED_MESSAGE_BYTES);
    let (mut tag, mut request_id, mut kind, mut function, mut args, mut mutation_id) =
        (None, None, None, None, None, None);
    fields(&mut r, 0, |r, key, depth| match key {
        "type" => once(&mut tag, r.str()?),
        "requestId" => once(&mut request_id, r.uint()?),
        "kind" => once(&mut kind, call_kind(r.str()?)?),
        "function" => once(&mut function, r.str()?.to_owned()),
        "args" => once(&mut args, r.value(depth)?),
        "mutationId" => once(&mut mutation_id, optional(r, |r| Ok(r.str()?.to_owned()))?),
        _ => Err(Unread),
    })
    .ok()?;
    (r.is_empty() && tag? == "Call").then_some(ClientMessage::Call {
        request_id: request_id?,
        kind: kind?,
        function: function?,
        args: args?,
        mutation_id: mutation_id.flatten(),
    })
}

/// Reads a map inside `depth` containers whose keys are str, handing each key to `field`
/// with the reader at the key's value and the depth of that value's contents.
fn fields<'a>(
    r: &mut Reader<'a>,
    depth: usize,
    mut field: impl FnMut(&mut Reader<'a>, &'a str, usize) -> Read<()>,
) -> Read<()> {
    for _ in 0..r.map_header(depth)? {
        let key = r.str()?;
        field(r, key, depth + 1)?;
    }
    Ok(())
}

/// Sets a field read from the map; a field given twice is not read here.
fn once<T>(slot: &mut Option<T>, value: T) -> Read<()> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(Unread),
    }
}

/// An array inside `depth` containers, each element read by `item`.
fn list<'a, T>(
    r: &mut Reader<'a>,
    depth: usize,
    item: impl Fn(&mut Reader<'a>, usize) -> Read<T>,
) -> Read<Vec<T>> {
    let n = r.array_header(depth)?;
    let mut items = Vec::with_capacity(n.min(MAX_PREALLOCATED));
    for _ in 0..n {
        items.push(item(r, depth + 1)?);
    }
    Ok(items)
}

/// `None` for nil, else what `read` reads.
fn optional<'a, T>(
    r: &mut Reader<'a>,
    read: impl FnOnce(&mut Reader<'a>) -> Read<T>,
) -> Read<Option<T>> {
    if r.nil() {
        Ok(None)
    } else {
        read(r).map(Some)
    }
}

fn call_kind(name: &str) -> Read<CallKind> {
    match name {
        "query" => Ok(CallKind::Query),
        "mutation" => Ok(CallKind::Mutation),
        "action" => Ok(CallKind::Action),
        _ => Err(Unread),
    }
}

fn modification(r: &mut Reader<'_>, depth: usize) -> Read<Modification> {
    let (mut tag, mut query_id, mut diff, mut error) = (None, None, None, None);
    fields(r, depth, |r, key, depth| match key {
        "type" => once(&mut tag, r.str()?),
        "queryId" => once(&mut query_id, uint32(r)?),
        "diff" => once(&mut diff, optional(r, |r| result_diff(r, depth))?),
        "error" => once(&mut error, optional(r, |r| error_payload(r, depth))?),
        _ => Err(Unread),
    })?;
    let query_id = query_id.ok_or(Unread)?;
    // A field the type does not use was read above and is dropped, as serde ignores it.
    match tag.ok_or(Unread)? {
        "Updated" => Ok(Modification::Updated {
            query_id,
            diff: diff.flatten().ok_or(Unread)?,
        }),
        "Failed" => Ok(Modification::Failed {
            query_id,
            error: error.flatten().ok_or(Unread)?,
        }),
        "Removed" => Ok(Modification::Removed { query_id }),
        _ => Err(Unread),
    }
}

/// `{kind, value}`, in that order (the encoder's).
fn result_diff(r: &mut Reader<'_>, depth: usize) -> Read<ResultDiff> {
    if r.map_header(depth)? != 2 || r.str()? != "kind" {
        return Err(Unread);
    }
    let kind = r.str()?;
    if r.str()? != "value" {
        return Err(Unread);
    }
    match kind {
        "replace" => Ok(ResultDiff::Replace(r.value(depth + 1)?)),
        "array" => Ok(ResultDiff::Array(list(r, depth + 1, edit)?)),
        _ => Err(Unread),
    }
}

fn edit(r: &mut Reader<'_>, depth: usize) -> Read<ArrayEdit> {
    let (mut op, mut index, mut id, mut value) = (None, None, None, None);
    fields(r, depth, |r, key, depth| match key {
        "op" => once(&mut op, r.str()?),
        "index" => once(&mut index, uint32(r)?),
        "id" => once(&mut id, optional(r, |r| Ok(r.str()?.to_owned()))?),
        "value" => once(&mut value, r.value(depth)?),
        _ => Err(Unread),
    })?;
    let index = index.ok_or(Unread)?;
    let id = || id.flatten().ok_or(Unread);
    match op.ok_or(Unread)? {
        "remove" => Ok(ArrayEdit::Remove { index, id: id()? }),
        "insert" => Ok(ArrayEdit::Insert {
            index,
            value: value.ok_or(Unread)?,
        }),
        "change" => Ok(ArrayEdit::Change {
            index,
            id: id()?,
            value: value.ok_or(Unread)?,
        }),
        _ => Err(Unread),
    }
}

fn outcome(r: &mut Reader<'_>, depth: usize) -> Read<CallOutcome> {
    let (mut status, mut value, mut ts) = (None, None, None);
    let mut error = ErrorFields::default();
    fields(r, depth, |r, key, depth| match key {
        "status" => once(&mut status, r.str()?),
        "value" => once(&mut value, r.value(depth)?),
        "ts" => once(&mut ts, r.uint()?),
        _ => error.field(r, key, depth),
    })?;
    match status.ok_or(Unread)? {
        "Ok" => Ok(CallOutcome::Ok {
            value: value.ok_or(Unread)?,
            ts: ts.ok_or(Unread)?,
        }),
        "Err" => Ok(CallOutcome::Err(error.payload()?)),
        _ => Err(Unread),
    }
}

fn error_payload(r: &mut Reader<'_>, depth: usize) -> Read<ErrorPayload> {
    let mut error = ErrorFields::default();
    fields(r, depth, |r, key, depth| error.field(r, key, depth))?;
    error.payload()
}

/// The fields of an `ErrorPayload`, in its own map or among a `CallResult` outcome's.
#[derive(Default)]
struct ErrorFields {
    code: Option<String>,
    message: Option<String>,
    data: Option<Value>,
}

impl ErrorFields {
    /// Reads `key`'s value if it is one of these fields; any other key is not read here.
    fn field(&mut self, r: &mut Reader<'_>, key: &str, depth: usize) -> Read<()> {
        match key {
            "code" => once(&mut self.code, r.str()?.to_owned()),
            "message" => once(&mut self.message, r.str()?.to_owned()),
            "data" => once(&mut self.data, r.value(depth)?),
            _ => Err(Unread),
        }
    }

    fn payload(self) -> Read<ErrorPayload> {
        Ok(ErrorPayload {
            code: self.code.ok_or(Unread)?,
            message: self.message.ok_or(Unread)?,
            data: self.data.ok_or(Unread)?,
        })
    }
}

fn uint32(r: &mut Reader<'_>) -> Read<u32> {
    u32::try_from(r.uint()?).map_err(|_| Unread)
}
