//! LinkedUp's schema crate: the tables and indexes (`tables`), the typed contract of the
//! public functions shared by server and client (`api`), the error taxonomy (`errors`), and
//! the text OT used by collaborative notes (`ot`).

pub mod api;
pub mod errors;
pub mod ot;
pub mod tables;

pub use errors::ErrorCode;
pub use tables::schema;
