//! Erasure of a user's personal data on request (seed §20: "user-initiated deletion supported
//! for … upon request, personal data"). This module owns the request: `users.requestErasure`
//! (the signed-in user, for their own account) and `erasure.eraseAccount` (operators'
//! tooling) record one `erasureRequests` document per account, lock the account (see
//! `guards`: every other call of it is refused from then on), strip its `users` document of
//! everything but its id and schedule the job (`job`), which works through the account's
//! data a bounded page per run. `users.erasureStatus` shows the request while it runs;
//! `erasure.resumeStalled` (cron) restarts a request whose job stopped making progress.
//!
//! When the job is done the `users` document is a tombstone that no token subject resolves
//! to: ids held elsewhere (meetings, notes, other users' records) stay valid but name nobody,
//! and the same subject signing in again gets a new, empty account from `users.ensure`.

mod hosting;
mod job;

use std::collections::BTreeMap;
use std::sync::Arc;

use linkedup_schema::api::erasure::{fns, ErasureRequest, ErasureStatus, RequestErasureArgs};
use linkedup_schema::api::{NoArgs, User};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{ERASURE_REQUESTS, USERS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::engine::Engine;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::guards::account_of_caller;
use super::{audit, audited, decode, encode, fields, LinkedUpConfig};

pub use job::{REDACTED, STEP};

/// Operators' tooling: erases the account `userId` (internal).
pub const ERASE_ACCOUNT: &str = "erasure.eraseAccount";
/// The cron that restarts stalled requests.
pub const RESUME_STALLED: &str = "erasure.resumeStalled";
/// How often `erasure.resumeStalled` runs.
pub const RESUME_INTERVAL_MS: i64 = 15 * 60_000;
/// Most requests one `erasure.resumeStalled` run restarts.
const MAX_RESUMED: usize = 100;

/// How the erasure job paces itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErasureConfig {
    /// Most documents one run of the job reads or writes (1..=4096); a larger account takes
    /// more runs, each scheduled by the one before.
    pub page_documents: usize,
    /// A request still unfinished this long after its last progress is restarted by
    /// `erasure.resumeStalled` (its job failed, or the server stopped while it was due).
    pub stall_ms: i64,
}

impl Default for ErasureConfig {
    fn default() -> Self {
        ErasureConfig {
            page_documents: 256,
            stall_ms: 10 * 60_000,
        }
    }
}

impl ErasureConfig {
    fn page(&self) -> usize {
        self.page_documents.clamp(1, 4_096)
    }
}

/// An `erasureRequests` document: the request and where its job stands (see the table).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    #[serde(rename = "_id", skip_serializing)]
    id: String,
    user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    org_id: Option<String>,
    source: String,
    status: ErasureStatus,
    phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meeting_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meeting_phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    meeting_cursor: Option<String>,
    run: i64,
    steps: i64,
    counts: BTreeMap<String, i64>,
    requested_at: i64,
    updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completed_at: Option<i64>,
}

/// Operators' offline path (the CLI's `erase`, on a stopped server's database): opens the
/// request for `user_id` as `erasure.eraseAccount` does, then runs the job's steps here, one
/// after another, until it is done or `max_runs` have run. The runs each step schedules stay
/// in the database and do nothing when a server later starts them (their run numbers are
/// behind the request's); an unfinished request is carried on by the server the same way.
/// Returns the request as `users.erasureStatus` shows it and the number of runs made here.
pub async fn erase_offline(
    engine: &Engine,
    user_id: &str,
    max_runs: usize,
) -> FunctionResult<(ErasureRequest, usize)> {
    let opened = engine
        .mutation(ERASE_ACCOUNT, obj! { "userId" => user_id }, None)
        .await?
        .value;
    let request_id = opened
        .get_path("requestId")
        .and_then(Value::as_str)
        .ok_or_else(|| ErrorCode::Internal.err("erasure request without an id"))?
        .to_string();
    let mut runs = 0;
    loop {
        let id = request_id.clone();
        let doc = engine
            .read(move |ctx| Ok(ctx.get(ERASURE_REQUESTS, &id)?.unwrap_or(Value::Null)))
            .await?;
        let r: Request = decode(&doc)?;
        if r.status == ErasureStatus::Done || runs >= max_runs {
            return Ok((r.view(), runs));
        }
        let args = obj! { "requestId" => request_id.as_str(), "run" => r.run };
        engine.mutation(STEP, args, None).await?;
        runs += 1;
    }
}

impl Request {
    fn view(&self) -> ErasureRequest {
        ErasureRequest {
            request_id: self.id.clone(),
            status: self.status,
            requested_at: self.requested_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
            documents: self.counts.values().sum(),
        }
    }

    /// Stores the request as it now stands.
    fn save(&self, ctx: &mut Ctx<'_, '_>) -> FunctionResult<()> {
        ctx.replace(ERASURE_REQUESTS, &self.id, encode(self)?)
    }

    /// Schedules the job's next run, which must carry the new `run`.
    fn schedule_next(&mut self, ctx: &mut Ctx<'_, '_>) -> FunctionResult<()> {
        self.run += 1;
        self.updated_at = ctx.now_ms();
        ctx.schedule_after(
            0,
            STEP,
            obj! { "requestId" => self.id.as_str(), "run" => self.run },
        )?;
        Ok(())
    }
}

/// The account's request, if it has one.
fn request_of(ctx: &mut Ctx<'_, '_>, user_id: &str) -> FunctionResult<Option<Request>> {
    ctx.query(ERASURE_REQUESTS, "by_user")
        .eq("userId", user_id)
        .first()?
        .map(|d| decode(&d))
        .transpose()
}

/// Records the erasure of `user`'s personal data, once: a second call returns the first
/// request. Locks the account, keeps of its `users` document only what the lock and the
/// other tables' references need (its id, subject and creation time), audits the request
/// (ids only) and schedules the job.
fn open_request(
    ctx: &mut Ctx<'_, '_>,
    user: &User,
    source: &str,
    actor: Option<&str>,
) -> FunctionResult<ErasureRequest> {
    if let Some(existing) = request_of(ctx, &user.id)? {
        return Ok(existing.view());
    }
    let now = ctx.now_ms();
    ctx.replace(
        USERS,
        &user.id,
        obj! {
            "workosUserId" => user.workos_user_id.as_str(),
            "email" => "",
            "isActive" => false,
            "createdAt" => user.created_at,
            "updatedAt" => now,
            "erasureRequestedAt" => now,
        },
    )?;
    let mut doc = fields(obj! {
        "userId" => user.id.as_str(),
        "source" => source,
        "status" => "pending",
        "phase" => job::FIRST_PHASE,
        "run" => 0i64,
        "steps" => 0i64,
        "counts" => obj! {},
        "requestedAt" => now,
        "updatedAt" => now,
    });
    if let Some(org) = &user.org_id {
        doc.insert("orgId".into(), org.as_str().into());
    }
    let id = ctx.insert(ERASURE_REQUESTS, Value::from(doc))?;
    audit::record_in_org(
        ctx,
        user.org_id.as_deref(),
        actor,
        "user",
        &user.id,
        "users.erasureRequested",
        obj! { "requestId" => id.as_str(), "source" => source },
    )?;
    ctx.schedule_after(0, STEP, obj! { "requestId" => id.as_str(), "run" => 0i64 })?;
    let stored = ctx
        .get(ERASURE_REQUESTS, &id)?
        .ok_or_else(|| ErrorCode::Internal.err("erasure request not readable"))?;
    Ok(decode::<Request>(&stored)?.view())
}

fn request_erasure(ctx: &mut Ctx<'_, '_>, a: RequestErasureArgs) -> FunctionResult<ErasureRequest> {
    if !a.confirm {
        return Err(invalid_field(
            "confirm",
            "must be true: erasure cannot be undone",
        ));
    }
    let user = account_of_caller(ctx)?.ok_or_else(|| {
        ErrorCode::Unauthorized.err("no account for this identity: nothing to erase")
    })?;
    let actor = user.id.clone();
    open_request(ctx, &user, "user", Some(&actor))
}

fn erasure_status(ctx: &mut Ctx<'_, '_>) -> FunctionResult<Option<ErasureRequest>> {
    match account_of_caller(ctx)? {
        Some(user) => Ok(request_of(ctx, &user.id)?.map(|r| r.view())),
        None => Ok(None),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EraseAccountArgs {
    user_id: String,
}

/// Restarts the requests that made no progress for `stall_ms`: each gets a new run number
/// (so a run of the stalled job that turns up after all does nothing) and a run scheduled.
/// Returns how many it restarted.
fn resume_stalled(ctx: &mut Ctx<'_, '_>, config: &ErasureConfig) -> FunctionResult<i64> {
    let before = ctx.now_ms().saturating_sub(config.stall_ms);
    let mut resumed = 0;
    for status in ["pending", "running"] {
        let stalled = ctx
            .query(ERASURE_REQUESTS, "by_status_updated")
            .eq("status", status)
            .lte("updatedAt", before)
            .take(MAX_RESUMED - resumed)?;
        for doc in &stalled {
            let mut r: Request = decode(doc)?;
            r.schedule_next(ctx)?;
            r.save(ctx)?;
            resumed += 1;
        }
    }
    Ok(resumed as i64)
}

fn request_validator() -> query_engine::schema::Validator {
    v::object([
        ("requestId", v::id(ERASURE_REQUESTS)),
        ("status", v::string()),
        ("requestedAt", v::int64()),
        ("updatedAt", v::int64()),
        ("completedAt", v::optional(v::int64())),
        ("documents", v::int64()),
    ])
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // users.requestErasure: the caller asks for their account's personal data to be erased
    // (`confirm` must be true). Idempotent: asking again returns the same request. From then
    // on the account is locked (CONFLICT, data.reason "erasurePending"); when the job is done,
    // signing in again starts a new, empty account. Returns {requestId, status, requestedAt,
    // updatedAt, completedAt?, documents}.
    // Returns: UNAUTHORIZED (no identity, or no account), VALIDATION_ERROR.
    f.mutation(
        fns::REQUEST_ERASURE,
        Visibility::Public,
        v::object([("confirm", v::boolean())]),
        request_validator(),
        audited(config, fns::REQUEST_ERASURE, request_erasure),
    );

    // users.erasureStatus: the caller's erasure request, or null when their account has none
    // (null too once it is done: the identity then has no account, and nothing is kept that
    // would tell an erased account from one never created). Returns: UNAUTHORIZED.
    f.query(
        fns::ERASURE_STATUS,
        Visibility::Public,
        v::object([]),
        v::union([v::null(), request_validator()]),
        audited(config, fns::ERASURE_STATUS, |ctx, _a: NoArgs| {
            erasure_status(ctx)
        }),
    );

    // erasure.eraseAccount (internal, operators' tooling, e.g. a request that came in by
    // mail): as users.requestErasure for the account `userId`. Returns the request.
    // Returns: NOT_FOUND (no such user).
    f.mutation(
        ERASE_ACCOUNT,
        Visibility::Internal,
        v::object([("userId", v::id(USERS))]),
        request_validator(),
        |ctx, a: EraseAccountArgs| {
            let doc = ctx
                .get(USERS, &a.user_id)?
                .ok_or_else(|| ErrorCode::NotFound.err(format!("no user {}", a.user_id)))?;
            open_request(ctx, &decode(&doc)?, "operator", None)
        },
    );

    // erasure.resumeStalled (internal, cron): see `resume_stalled`.
    let erasure = config.erasure;
    f.mutation(
        RESUME_STALLED,
        Visibility::Internal,
        v::object([]),
        v::int64(),
        move |ctx, _a: NoArgs| resume_stalled(ctx, &erasure),
    );

    job::register(f, config);
}
