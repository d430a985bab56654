//! Collaborative meeting notes with real OT (seed §8): `meetingNotes` holds the materialised
//! text and its version, `noteOps` the committed operations in version order. `operations`
//! applies client edits (transforming them past what was committed since their base) and
//! serves the note and its op log; `compaction` deletes old ops without losing the note.

mod compaction;
mod operations;

use std::sync::Arc;

use linkedup_schema::ot::TextOperation;
use query_engine::functions::Functions;
use serde::{Deserialize, Serialize};

use super::LinkedUpConfig;

pub use compaction::{
    CompactAllArgs, CompactAllResult, CompactArgs, CompactResult, NOTE_OPS_RETENTION_MS,
};
pub use operations::{
    ApplyOperationArgs, ApplyResult, OpsSinceArgs, MAX_NOTE_CHARS, MAX_OPS_BEHIND, MAX_OPS_SINCE,
};

/// Function names.
pub mod fns {
    pub const APPLY_OPERATION: &str = "notes.applyOperation";
    pub const GET: &str = "notes.get";
    pub const OPS_SINCE: &str = "notes.opsSince";
    /// Internal.
    pub const COMPACT: &str = "notes.compact";
    /// Internal, for a daily cron.
    pub const COMPACT_ALL: &str = "notes.compactAll";
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

/// Registers the notes functions.
pub fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    operations::register(f, config);
    compaction::register(f, config);
}
