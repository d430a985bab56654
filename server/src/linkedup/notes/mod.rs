//! Collaborative meeting notes with real OT (seed §8): `meetingNotes` holds the materialised
//! text and its version, `noteOps` the committed operations in version order. `operations`
//! applies client edits (transforming them past what was committed since their base) and
//! serves the note and its op log; `compaction` deletes old ops without losing the note.

mod compaction;
mod operations;

use std::sync::Arc;

use query_engine::functions::Functions;

use super::LinkedUpConfig;

pub use compaction::{
    CompactAllArgs, CompactAllResult, CompactArgs, CompactResult, NOTE_OPS_RETENTION_MS,
};
pub use linkedup_schema::api::notes::{
    ApplyOperationArgs, ApplyResult, NoteOpEntry, NoteState, OpsSinceArgs, MAX_NOTE_CHARS,
    MAX_OPS_BEHIND, MAX_OPS_SINCE,
};

/// Function names: the public ones (from the API contract) and the internal ones.
pub mod fns {
    pub use linkedup_schema::api::notes::fns::*;
    /// Internal.
    pub const COMPACT: &str = "notes.compact";
    /// Internal, for a daily cron.
    pub const COMPACT_ALL: &str = "notes.compactAll";
}

/// Registers the notes functions.
pub fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    operations::register(f, config);
    compaction::register(f, config);
}
