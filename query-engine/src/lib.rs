//! A generic reactive document database on redb. It knows nothing about any application:
//! tables, validators and functions are registered by the embedding program.
//!
//! Data path: functions (`functions`) run in a `transaction` over a snapshot (`storage`),
//! recording reads (`reads`) and buffering writes (`writes`); the `committer` validates and
//! group-commits them; `subscriptions` re-runs the queries whose read sets a commit touched.

pub mod diff;
pub mod doc_cache;
pub mod encoding;
pub mod error;
pub mod id;
pub mod identity;
pub mod json;
pub mod protocol;
pub mod schema;
pub mod value;
pub mod catalog;
pub mod committer;
pub mod context;
pub mod engine;
pub mod functions;
pub mod metrics;
pub mod reads;
pub mod scheduler;
pub mod storage;
pub mod subscriptions;
pub mod transaction;
pub mod writes;
