
pub mod note_editor;
