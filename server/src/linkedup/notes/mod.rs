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

/// Limits of note editing that an operator may tune.
#[derive(Clone, Debug)]
pub struct NotesConfig {
    /// Most op weight (`op_weight`) `notes.applyOperation` reads to transform an edit past
    /// the ops committed after its base; an edit further behind is refused with `CONFLICT`
    /// (`tooFarBehind`), and its editor catches up through `notes.opsSince` and sends it again
    /// from a newer base. Keeps the transform's reads far below the read limit (1,000 whole-note
    /// pastes behind would be ~400 MB).
    pub max_transform_weight: u64,
}

impl Default for NotesConfig {
    fn default() -> Self {
        NotesConfig {
            max_transform_weight: 8 * 1024 * 1024,
        }
    }
}

/// Registers the notes functions.
pub fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    operations::register(f, config);
    compaction::register(f, config);
}
