//! Shared helpers for the benchmark binaries.
pub mod fanout;
pub mod pg;
pub mod pg_listen;
pub mod report;
pub mod thread_cpu;
pub mod transfer;

/// Every benchmark binary links this crate, so they all measure with the allocator the
/// server ships with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
