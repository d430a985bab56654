//! Shared helpers for the benchmark binaries.
pub mod pg;
pub mod report;
