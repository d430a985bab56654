//! The wire contract of the do-not-match (block) list: the signed-in user blocks a user
//! (`users.block`), unblocks them (`users.unblock`) and lists whom they block
//! (`users.listBlocked`). A block keeps the two apart both ways: no connection requests and
//! no matches between them. Shared by the server and clients so both agree by construction.

use serde::{Deserialize, Serialize};

/// Function names, as clients call them.
pub mod fns {
    pub const BLOCK: &str = "users.block";
    pub const UNBLOCK: &str = "users.unblock";
    pub const LIST_BLOCKED: &str = "users.listBlocked";
}

/// Bounds the server enforces on the block functions' arguments.
pub mod limits {
    /// Longest private reason, in chars.
    pub const MAX_REASON_CHARS: usize = 500;
    /// Most blocks `users.listBlocked` returns per page.
    pub const MAX_LIST_PAGE: i64 = 100;
    /// Blocks per page when `numItems` is not given.
    pub const DEFAULT_LIST_PAGE: i64 = 50;
}

/// What `data.reason` says when `users.block` is refused because the caller already blocks
/// as many users as they may (code `CONFLICT`, with `data.max`).
pub const BLOCK_LIMIT: &str = "blockLimit";
/// What `data.reason` says when the caller asks to connect with a user they block (code
/// `CONFLICT`): unblock first. The blocked side is told only that there is no such user.
pub const BLOCKED: &str = "blocked";

/// `users.block` arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockArgs {
    pub user_id: String,
    /// A private note for the caller (1..=500 chars): returned by `users.listBlocked` to them
    /// only, never shown to the blocked user nor written to the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `users.listBlocked` arguments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListBlockedArgs {
    /// From a previous page's `continueCursor`; absent for the first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// 1..=100, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_items: Option<i64>,
}

/// A `userBlocks` document: `blockerId` blocks `blockedId`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Block {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_creationTime")]
    pub creation_time: i64,
    pub blocker_id: String,
    pub blocked_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: i64,
}
