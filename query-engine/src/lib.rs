//! A generic reactive document database on redb. It knows nothing about any application:
//! tables, validators and functions are registered by the embedding program.
//!
//! Data path: functions (`functions`) run in a `transaction` over a snapshot (`storage`),
//! recording reads (`reads`) and buffering writes (`writes`); the `committer` validates and
//! group-commits them; `subscriptions` re-runs the queries whose read sets a commit touched.

pub mod admission;
mod background;
pub mod catalog;
pub mod committer;
pub mod context;
pub mod diff;
pub mod doc_cache;
pub mod encoding;
pub mod engine;
pub mod error;
pub mod functions;
mod group_commit;
pub mod id;
pub mod identity;
pub mod import;
mod index_maintenance;
pub mod json;
pub mod key_merge;
pub mod metrics;
pub mod msgpack_reader;
pub mod mutation_ids;
pub mod protocol;
pub mod reads;
pub mod scheduler;
pub mod schema;
pub mod storage;
pub mod subscriptions;
pub mod transaction;
pub mod value;
mod value_serde;
pub mod wal;
pub mod writes;
