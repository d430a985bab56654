//! The audit log (seed §3, §12): `record` for every critical transition (meeting state
//! changes, participant add/remove/role change, flag changes) and for access denials, and the
//! `audit.query` function (organisation admins see their organisation's log, users their own).
//!
//! What is logged: state changes and denials, not successful reads. Logging every allowed read
//! would turn each query into a write, which a query cannot do, and would make every
//! subscription re-run write too.
//!
//! Denials cannot be written in the transaction that denies: a mutation that returns an error
//! commits nothing, and a query never writes. So a denial (any `FORBIDDEN` outcome, from a
//! query, a subscription re-run or a mutation) is appended to the bounded in-memory
//! `DenialLog`, and a background task (`spawn_denial_writer`, started by `linkedup::start`)
//! writes it to `auditLogs` through the internal mutation `audit.recordDenials` shortly after.
//! If the queue is full the denial is counted in `DenialLog::dropped` instead. The denial's
//! actor is the account its token subject signs in to when it is denied, not when it is
//! written: by then that account may have been erased (its subject cleared) and the subject
//! may have signed in to a new one. A denial of an account whose erasure was requested is
//! written without the subject (the erasure strips it from the rows it finds, and a row
//! written later must not add it back). One subject adds at most `MAX_DENIALS_PER_SUBJECT`
//! rows a minute; the rest of that minute's denials become one summary row
//! (`metadata.suppressed`), so a loop of refused calls cannot grow the log (kept a year)
//! without bound. Anonymous calls (`UNAUTHORIZED`) are not logged: they name no actor, and
//! logging them would let anyone fill the log. A denial the caller was shown as a missing
//! resource (`guards::hidden`) is logged with `metadata.hidden` and never returned by
//! `audit.query`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use linkedup_schema::api::limits::MAX_AUDIT_ROWS;
use linkedup_schema::api::{AuditLog, AuditQueryArgs};
use linkedup_schema::tables::names::{AUDIT_LOGS, USERS};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::engine::Engine;
use query_engine::error::{FunctionError, FunctionResult};
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::guards::{current_user, erasure_requested};
use super::{audited, decode, encode, fields, limit_arg, LinkedUpConfig};

/// Most denials waiting in memory; further ones are counted and dropped.
pub const MAX_PENDING_DENIALS: usize = 10_000;
/// Most denial rows one subject adds to the log per minute; further denials in that minute
/// are counted and written as one summary row when it is over, so a caller looping on a
/// refused call cannot grow the log (kept a year) without bound.
pub const MAX_DENIALS_PER_SUBJECT: usize = 30;
const DENIAL_WINDOW_MS: i64 = 60_000;
/// Most subjects whose minute is tracked at once.
const MAX_TRACKED_SUBJECTS: usize = 10_000;
/// Most denials written per `audit.recordDenials` call.
pub const DENIAL_BATCH: usize = 256;
/// How often the writer looks for denials when it was not woken.
const DENIAL_POLL: Duration = Duration::from_millis(500);
/// Most index entries `audit.query` examines per call.
const MAX_AUDIT_SCAN: usize = 1_000;
/// The metadata field listing the users, besides the actor, an entry concerns as much as its
/// actor (both sides of a connection): `audit.query` shows it to them too.
pub const PARTIES: &str = "parties";

/// Appends an audit entry in the current mutation. `actor` is the acting user's document id
/// (absent for system actions); the organisation is taken from the caller's token.
pub fn record(
    ctx: &mut Ctx<'_, '_>,
    actor: Option<&str>,
    resource_type: &str,
    resource_id: &str,
    action: &str,
    metadata: Value,
) -> FunctionResult<()> {
    let org = ctx.auth().and_then(|i| i.org_id.clone());
    record_in_org(
        ctx,
        org.as_deref(),
        actor,
        resource_type,
        resource_id,
        action,
        metadata,
    )
}

/// `record` for system jobs, which have no caller token: the organisation is given.
pub fn record_in_org(
    ctx: &mut Ctx<'_, '_>,
    org: Option<&str>,
    actor: Option<&str>,
    resource_type: &str,
    resource_id: &str,
    action: &str,
    metadata: Value,
) -> FunctionResult<()> {
    let mut doc = fields(obj! {
        "resourceType" => resource_type,
        "resourceId" => resource_id,
        "action" => action,
        "metadata" => metadata,
        "timestamp" => ctx.now_ms(),
    });
    if let Some(a) = actor {
        doc.insert("actorUserId".into(), a.into());
    }
    if let Some(org) = org {
        doc.insert("orgId".into(), org.into());
    }
    ctx.insert(AUDIT_LOGS, Value::from(doc))?;
    Ok(())
}

/// One access denial waiting to be written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Denial {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The account `subject` signed in to when denied (`users` id), if it had one; one the
    /// refused call itself created does not exist when the denial is written, and is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    pub function: String,
    pub resource_type: String,
    pub resource_id: String,
    pub message: String,
    pub at_ms: i64,
    /// Set on a summary: how many denials of the subject in the minute ending at `at_ms` were
    /// not written one by one (past `MAX_DENIALS_PER_SUBJECT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
    /// The caller was shown the resource as missing (`guards::hidden`). The row is kept out
    /// of `audit.query`: its readers — the caller and their organisation's admins — would
    /// learn from it (even from its being there) what the caller was not told.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

/// Whose denials a window counts: (subject, actor, hidden).
type WindowKey = (Option<String>, Option<String>, bool);

/// One subject's denials in the current minute.
struct SubjectWindow {
    start_ms: i64,
    written: usize,
    suppressed: u64,
    /// The last denial suppressed: who and where, for the summary.
    last: Option<Denial>,
}

impl SubjectWindow {
    fn new(start_ms: i64) -> Self {
        SubjectWindow {
            start_ms,
            written: 0,
            suppressed: 0,
            last: None,
        }
    }

    /// The summary row of a window that suppressed something.
    fn summary(&self) -> Option<Denial> {
        let last = self.last.as_ref()?;
        Some(Denial {
            message: format!(
                "{} further access denials of this subject within a minute were not logged one \
                 by one (the last: {})",
                self.suppressed, last.message
            ),
            at_ms: self.start_ms + DENIAL_WINDOW_MS,
            suppressed: Some(self.suppressed),
            ..last.clone()
        })
    }
}

/// The bounded queue of denials between the functions that deny and the writer task.
#[derive(Clone, Default)]
pub struct DenialLog {
    inner: Arc<DenialInner>,
}

#[derive(Default)]
struct DenialInner {
    queue: parking_lot::Mutex<VecDeque<Denial>>,
    /// Per subject, the current minute's count (`MAX_TRACKED_SUBJECTS` at most); each account
    /// of a subject apart, so that a summary names the account its denials were of, and
    /// hidden denials apart, so that a summary of them is hidden too.
    windows: parking_lot::Mutex<HashMap<WindowKey, SubjectWindow>>,
    dropped: AtomicU64,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for DenialLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenialLog")
            .field("pending", &self.pending())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl DenialLog {
    /// Notes that `function` refused the caller with `error`; `ctx` is the refusing call's,
    /// in which the caller's account is looked up (`account_of`).
    pub fn record(&self, ctx: &mut Ctx<'_, '_>, function: &str, error: &FunctionError) {
        let subject = ctx.auth().map(|i| i.subject.clone());
        let actor_user_id = subject.as_deref().and_then(|s| account_of(ctx, s));
        let data = |k: &str| {
            error
                .data
                .get_path(k)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let denial = Denial {
            subject,
            actor_user_id,
            org_id: ctx.auth().and_then(|i| i.org_id.clone()),
            function: function.to_string(),
            resource_type: data("resourceType").unwrap_or_else(|| "function".into()),
            resource_id: data("resourceId").unwrap_or_else(|| function.to_string()),
            message: error.message.clone(),
            at_ms: ctx.now_ms(),
            suppressed: None,
            hidden: super::guards::is_hidden(error),
        };
        if !self.admit(&denial) {
            return;
        }
        self.push(denial);
    }

    /// Counts `denial` in its subject's minute; false if that minute has had
    /// `MAX_DENIALS_PER_SUBJECT` already (it is then counted for the window's summary). A
    /// subject beyond `MAX_TRACKED_SUBJECTS` is admitted untracked (the queue still bounds it).
    fn admit(&self, denial: &Denial) -> bool {
        let now = denial.at_ms;
        let mut windows = self.inner.windows.lock();
        let key = (
            denial.subject.clone(),
            denial.actor_user_id.clone(),
            denial.hidden,
        );
        if windows.len() >= MAX_TRACKED_SUBJECTS && !windows.contains_key(&key) {
            drop(windows);
            self.sweep(now);
            windows = self.inner.windows.lock();
            if windows.len() >= MAX_TRACKED_SUBJECTS {
                return true;
            }
        }
        let w = windows
            .entry(key)
            .or_insert_with(|| SubjectWindow::new(now));
        if now - w.start_ms >= DENIAL_WINDOW_MS {
            let summary = w.summary();
            *w = SubjectWindow::new(now);
            if let Some(s) = summary {
                self.push(s);
            }
        }
        if w.written >= MAX_DENIALS_PER_SUBJECT {
            w.suppressed += 1;
            w.last = Some(denial.clone());
            return false;
        }
        w.written += 1;
        true
    }

    /// Ends the windows a minute old as of `now_ms`: queues their summaries and forgets them.
    /// The writer task calls it on every pass; a test calls it with a later `now_ms` to end
    /// the minute at once.
    pub fn sweep(&self, now_ms: i64) {
        let mut summaries = Vec::new();
        self.inner.windows.lock().retain(|_, w| {
            let open = now_ms - w.start_ms < DENIAL_WINDOW_MS;
            if !open {
                summaries.extend(w.summary());
            }
            open
        });
        for s in summaries {
            self.push(s);
        }
    }

    fn push(&self, denial: Denial) {
        let mut q = self.inner.queue.lock();
        if q.len() >= MAX_PENDING_DENIALS {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(denial);
        drop(q);
        self.inner.wake.notify_one();
    }

    /// Denials waiting to be written.
    pub fn pending(&self) -> usize {
        self.inner.queue.lock().len()
    }

    /// Denials dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn take(&self, max: usize) -> Vec<Denial> {
        let mut q = self.inner.queue.lock();
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    fn put_back(&self, batch: Vec<Denial>) {
        let mut q = self.inner.queue.lock();
        for d in batch.into_iter().rev() {
            if q.len() >= MAX_PENDING_DENIALS {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                q.push_front(d);
            }
        }
    }
}

/// The id of the account `subject` signs in to now, if any. Read in the refusing call's
/// transaction, which has mostly read it already (`current_user`); if the read fails the
/// denial is recorded without an actor, as one of a subject with no account.
fn account_of(ctx: &mut Ctx<'_, '_>, subject: &str) -> Option<String> {
    let found = ctx
        .query(USERS, "by_workos_id")
        .eq("workosUserId", subject)
        .first();
    match found {
        Ok(user) => user.and_then(|u| u.get_path("_id").and_then(Value::as_str).map(String::from)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up the account of a denied caller");
            None
        }
    }
}

/// Writes every pending denial to `auditLogs` now; returns how many were written.
pub async fn flush_denials(engine: &Engine, log: &DenialLog) -> FunctionResult<usize> {
    let mut written = 0;
    loop {
        let batch = log.take(DENIAL_BATCH);
        if batch.is_empty() {
            return Ok(written);
        }
        let n = batch.len();
        let args = obj! { "entries" => encode(&batch)? };
        if let Err(e) = engine.mutation("audit.recordDenials", args, None).await {
            log.put_back(batch);
            return Err(e);
        }
        written += n;
    }
}

/// The task that drains `log` into `auditLogs` (see the module comment).
pub fn spawn_denial_writer(engine: Engine, log: DenialLog) -> tokio::task::JoinHandle<()> {
    let mut shutdown = engine.shutdown_signal();
    tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::timeout(DENIAL_POLL, log.inner.wake.notified()) => false,
                _ = shutdown.wait_for(|s| *s) => true,
            };
            log.sweep(query_engine::committer::now_millis());
            if let Err(e) = flush_denials(&engine, &log).await {
                tracing::warn!(error = %e, "cannot write access denials to the audit log");
                if !stopping {
                    tokio::time::sleep(DENIAL_POLL).await;
                }
            }
            // On shutdown: one last flush, then let go of the engine so it can close.
            if stopping {
                return;
            }
        }
    })
}

#[derive(Deserialize)]
struct RecordDenialsArgs {
    entries: Vec<Denial>,
}

fn denial_validator() -> query_engine::schema::Validator {
    v::object([
        ("subject", v::optional(v::string())),
        ("actorUserId", v::optional(v::id(USERS))),
        ("orgId", v::optional(v::string())),
        ("function", v::string()),
        ("resourceType", v::string()),
        ("resourceId", v::string()),
        ("message", v::string()),
        ("atMs", v::int64()),
        ("suppressed", v::optional(v::int64())),
        ("hidden", v::optional(v::boolean())),
    ])
}

fn audit_query_validator() -> query_engine::schema::Validator {
    v::object([
        ("actorUserId", v::optional(v::id(USERS))),
        ("resourceType", v::optional(v::string())),
        ("resourceId", v::optional(v::string())),
        ("action", v::optional(v::string())),
        ("since", v::optional(v::int64())),
        ("until", v::optional(v::int64())),
        ("limit", v::optional(v::int64())),
    ])
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // audit.query: entries newest first, filtered by actor / resource / action / time.
    // Organisation admins see their organisation's entries; everyone else sees the entries
    // they are the actor of (asking for another actor is FORBIDDEN), and, asking by resource,
    // those naming them among the `metadata.parties` (the other side's answer to their
    // connection request).
    // Returns: UNAUTHORIZED, FORBIDDEN, VALIDATION_ERROR.
    f.query(
        "audit.query",
        Visibility::Public,
        audit_query_validator(),
        v::array(v::any()),
        audited(config, "audit.query", query_audit),
    );

    // audit.recordDenials (internal): writes denials collected by `DenialLog`.
    f.mutation(
        "audit.recordDenials",
        Visibility::Internal,
        v::object([("entries", v::array(denial_validator()))]),
        v::int64(),
        |ctx, a: RecordDenialsArgs| {
            let n = a.entries.len() as i64;
            for d in a.entries {
                // The account refused, as it stands now. None if the refused call itself
                // created it (a first call): that insert was rolled back with the call.
                let account = match &d.actor_user_id {
                    Some(a) => ctx.get(USERS, a)?,
                    None => None,
                };
                // The erasure strips the subject from the rows it finds; a row written from
                // its request on (queued before, or a minute's summary) must not carry it.
                let erased = account.as_ref().is_some_and(erasure_requested);
                let mut doc = fields(obj! {
                    "resourceType" => d.resource_type.as_str(),
                    "resourceId" => d.resource_id.as_str(),
                    "action" => "access.denied",
                    "metadata" => {
                        let mut m = obj! {
                            "function" => d.function.as_str(),
                            "message" => d.message.as_str(),
                        };
                        if let (false, Some(o)) = (erased, m.as_object_mut()) {
                            let subject = d.subject.clone().map(Value::from);
                            o.insert("subject".into(), subject.unwrap_or(Value::Null));
                        }
                        if let (Some(n), Some(o)) = (d.suppressed, m.as_object_mut()) {
                            o.insert("suppressed".into(), (n as i64).into());
                        }
                        if let (true, Some(o)) = (d.hidden, m.as_object_mut()) {
                            o.insert("hidden".into(), true.into());
                        }
                        m
                    },
                    "timestamp" => d.at_ms,
                });
                if let (Some(a), Some(_)) = (d.actor_user_id, account) {
                    doc.insert("actorUserId".into(), a.into());
                }
                if let Some(org) = d.org_id {
                    doc.insert("orgId".into(), org.into());
                }
                ctx.insert(AUDIT_LOGS, Value::from(doc))?;
            }
            Ok(n)
        },
    );
}

fn query_audit(ctx: &mut Ctx<'_, '_>, a: AuditQueryArgs) -> FunctionResult<Vec<AuditLog>> {
    let limit = limit_arg("limit", a.limit, 50, MAX_AUDIT_ROWS)?;
    let me = current_user(ctx)?;
    let admin_org = me
        .identity
        .is_org_admin()
        .then(|| me.identity.org_id.clone())
        .flatten();
    if admin_org.is_none() && a.actor_user_id.as_deref().is_some_and(|x| x != me.id) {
        return Err(ErrorCode::Forbidden.err_with(
            "only organisation admins may read other users' audit entries",
            obj! { "resourceType" => "auditLogs", "resourceId" => "actor" },
        ));
    }
    let actor = match &admin_org {
        Some(_) => a.actor_user_id.clone(),
        None => Some(me.id.clone()),
    };
    // Pick the most selective index; the remaining filters apply to what it returns.
    let (index, eqs): (&str, Vec<(&str, Value)>) =
        if let (Some(t), Some(r)) = (&a.resource_type, &a.resource_id) {
            (
                "by_resource",
                vec![
                    ("resourceType", t.as_str().into()),
                    ("resourceId", r.as_str().into()),
                ],
            )
        } else if let Some(actor) = &actor {
            ("by_actor", vec![("actorUserId", actor.as_str().into())])
        } else if let Some(action) = &a.action {
            ("by_action", vec![("action", action.as_str().into())])
        } else if let Some(org) = &admin_org {
            ("by_org_time", vec![("orgId", org.as_str().into())])
        } else {
            return Err(ErrorCode::Internal.err("audit query without a scope"));
        };
    let mut q = ctx.query(AUDIT_LOGS, index);
    for (field, value) in eqs {
        q = q.eq(field, value);
    }
    if let Some(s) = a.since {
        q = q.gte("timestamp", s);
    }
    if let Some(u) = a.until {
        q = q.lt("timestamp", u);
    }
    let rows = q.desc().take(MAX_AUDIT_SCAN)?;
    let mut out = Vec::new();
    for row in rows {
        let entry: AuditLog = decode(&row)?;
        let visible = match &admin_org {
            Some(org) => entry.org_id.as_ref() == Some(org),
            None => {
                entry.actor_user_id.as_deref() == Some(me.id.as_str())
                    || entry
                        .metadata
                        .get_path(PARTIES)
                        .and_then(Value::as_array)
                        .is_some_and(|p| p.iter().any(|u| u.as_str() == Some(me.id.as_str())))
            }
        };
        let hidden = entry.metadata.get_path("hidden") == Some(&Value::Bool(true));
        // The actor asked for, not the caller: what a caller may see is `visible`'s to say.
        let matches = visible
            && !hidden
            && a.actor_user_id
                .as_ref()
                .is_none_or(|x| entry.actor_user_id.as_ref() == Some(x))
            && a.action.as_ref().is_none_or(|x| entry.action == *x)
            && a.resource_type
                .as_ref()
                .is_none_or(|x| entry.resource_type == *x)
            && a.resource_id
                .as_ref()
                .is_none_or(|x| entry.resource_id == *x)
            && a.since.is_none_or(|s| entry.timestamp >= s)
            && a.until.is_none_or(|u| entry.timestamp < u);
        if matches {
            out.push(entry);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(subject: &str, at_ms: i64) -> Denial {
        Denial {
            subject: Some(subject.into()),
            actor_user_id: None,
            org_id: None,
            function: "meetings.get".into(),
            resource_type: "meeting".into(),
            resource_id: "m1".into(),
            message: "not a participant".into(),
            at_ms,
            suppressed: None,
            hidden: false,
        }
    }

    fn queued(log: &DenialLog) -> Vec<Denial> {
        log.take(MAX_PENDING_DENIALS)
    }

    #[test]
    fn a_subject_s_denials_past_the_minute_s_limit_become_one_summary() {
        let log = DenialLog::default();
        let admitted = (0..MAX_DENIALS_PER_SUBJECT + 10)
            .filter(|i| log.admit(&denial("mallory", 1_000 + *i as i64)))
            .count();
        assert_eq!(admitted, MAX_DENIALS_PER_SUBJECT);
        assert!(log.admit(&denial("alice", 2_000)), "others are not limited");
        assert!(queued(&log).is_empty(), "admit queues only summaries");

        // The next minute: its first denial is admitted, after the last minute's summary.
        assert!(log.admit(&denial("mallory", 1_000 + DENIAL_WINDOW_MS)));
        let summaries = queued(&log);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].suppressed, Some(10));
        assert_eq!(summaries[0].subject.as_deref(), Some("mallory"));
        assert_eq!(summaries[0].at_ms, 1_000 + DENIAL_WINDOW_MS);

        // A subject who stops: the writer's sweep writes the summary and forgets the window.
        for i in 0..MAX_DENIALS_PER_SUBJECT + 3 {
            log.admit(&denial("eve", 5_000 + i as i64));
        }
        log.sweep(5_000 + DENIAL_WINDOW_MS - 1);
        assert!(queued(&log).is_empty(), "the minute is not over");
        log.sweep(5_000 + DENIAL_WINDOW_MS);
        let summaries = queued(&log);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].suppressed, Some(3));
        assert!(!log
            .inner
            .windows
            .lock()
            .contains_key(&(Some("eve".into()), None, false)));
    }
}
