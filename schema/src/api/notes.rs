//! The wire contract of the collaborative-notes functions (seed §8): names, arguments, results
//! and limits, shared by the server and the client SDK's note editor.

use serde::{Deserialize, Serialize};

use crate::ot::{Component, TextOperation};

/// Function names.
pub mod fns {
    pub const APPLY_OPERATION: &str = "notes.applyOperation";
    pub const GET: &str = "notes.get";
    pub const OPS_SINCE: &str = "notes.opsSince";
}

/// Longest note, in chars.
pub const MAX_NOTE_CHARS: u64 = 100_000;
/// An edit based more than this many versions back must resync instead of being transformed.
pub const MAX_OPS_BEHIND: i64 = 1_000;
/// Most ops `notes.opsSince` returns.
pub const MAX_OPS_SINCE: i64 = 500;
/// Most weight (`op_weight`) one `notes.opsSince` result holds: it stops before the op that
/// would pass it (the first op always comes), so a window of large edits stays far below a
/// query's result limit (500 ops of a whole pasted note each would be ~200 MB).
pub const MAX_OPS_SINCE_WEIGHT: u64 = 2 * 1024 * 1024;
/// Most weight one stored op may have (an op within `OpLimits::DEFAULT` weighs at most
/// ~408 KB; what a transform adds is refused past this).
pub const MAX_OP_WEIGHT: u64 = 512 * 1024;

/// An op's weight, about its size on the wire: the bytes of its inserted text plus 8 per
/// component. The server and the SDK compute it alike.
pub fn op_weight(op: &TextOperation) -> u64 {
    op.components()
        .iter()
        .map(|c| match c {
            Component::Insert(s) => s.len() as u64 + 8,
            Component::Retain(_) | Component::Delete(_) => 8,
        })
        .sum()
}

/// Whether an `opsSince` result whose ops weigh `weight` together may have been cut short by
/// `MAX_OPS_SINCE_WEIGHT` (more ops may follow that no re-run of it will bring): its reader
/// re-subscribes after the last op it got.
pub fn window_may_be_cut(weight: u64) -> bool {
    weight + MAX_OP_WEIGHT > MAX_OPS_SINCE_WEIGHT
}

/// The note as `notes.get` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NoteState {
    pub content: String,
    /// Operations applied so far; 0 for a note nobody has edited.
    pub version: i64,
    /// ms of the last edit, 0 if none.
    pub last_updated: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_editor_id: Option<String>,
}

/// A committed operation as `notes.opsSince` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NoteOpEntry {
    #[serde(rename = "_id")]
    pub id: String,
    /// The version this op produced.
    pub sequence: i64,
    /// The op as applied to the note at `sequence - 1`.
    pub op: TextOperation,
    pub author_id: String,
    pub client_id: String,
    pub client_seq: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyOperationArgs {
    pub meeting_id: String,
    /// The note version the op was built against.
    pub base_version: i64,
    /// The op's components (`[{"retain":n},{"insert":"s"},{"delete":n}]`).
    pub op: Vec<Component>,
    /// The editor session's id; with `clientSeq` it identifies the op across retries.
    pub client_id: String,
    pub client_seq: i64,
}

/// What `notes.applyOperation` returns: the version the op produced and the op as applied
/// (transformed past the ops committed after its base).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    pub version: i64,
    pub op: TextOperation,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpsSinceArgs {
    pub meeting_id: String,
    /// Ops with a larger sequence are returned.
    pub version: i64,
    /// 1..=500, default 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}
