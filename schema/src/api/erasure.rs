//! The wire contract of personal-data erasure on request (seed §20): the signed-in user asks
//! for their personal data to be erased (`users.requestErasure`) and follows the request
//! (`users.erasureStatus`). Shared by the server and clients so both agree by construction.

use serde::{Deserialize, Serialize};

/// Function names, as clients call them.
pub mod fns {
    pub const REQUEST_ERASURE: &str = "users.requestErasure";
    pub const ERASURE_STATUS: &str = "users.erasureStatus";
}

/// What `data.reason` says when a call is refused because the caller's account is being
/// erased (code `CONFLICT`).
pub const ERASURE_PENDING: &str = "erasurePending";

/// `users.requestErasure` arguments: `confirm` must be `true`, so that no client erases an
/// account by sending an empty object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestErasureArgs {
    pub confirm: bool,
}

/// Where an erasure request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErasureStatus {
    /// Recorded; the job has not run yet.
    Pending,
    /// The job is working through the account's data.
    Running,
    /// Everything is erased; the account is a tombstone.
    Done,
}

/// An erasure request as the functions return it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErasureRequest {
    pub request_id: String,
    pub status: ErasureStatus,
    pub requested_at: i64,
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// Documents deleted or redacted so far.
    pub documents: i64,
}
