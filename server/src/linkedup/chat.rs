//! In-meeting chat: participants of an active meeting send messages (rate-limited, optionally
//! idempotent by client message id); participants read them newest first, either as pages
//! (`chat.list`) or as a live window of the newest ones (`chat.recent`, for subscriptions).

use std::sync::Arc;

use linkedup_schema::api::limits::{MAX_ATTACHMENT_BYTES, MAX_CHAT_PAGE, MAX_MESSAGE_CHARS};
use linkedup_schema::api::{
    ListMessagesArgs, Message, MessagePage, RecentMessagesArgs, Role, SendMessageArgs,
};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{MEETINGS, MESSAGES};
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;

use super::guards::{assert_meeting_access, require_active};
use super::idempotency::{earlier_id, store_result};
use super::rate_limit::check_and_consume;
use super::{audited, check_text, decode, decoded_page, fields, limit_arg, LinkedUpConfig};

/// Most attachments on one message.
const MAX_ATTACHMENTS: usize = 10;
/// Rate limiter action name of `chat.send`.
pub const CHAT_SEND_ACTION: &str = "chat.send";

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // chat.send: posts a message (1..=4000 chars; up to 10 attachments, objects of 8 KiB
    // together) to an active meeting the caller takes part in. With `clientMessageId`, a retry returns the first call's message id. Returns the
    // message id. Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN,
    // MEETING_NOT_ACTIVE, RATE_LIMITED.
    let cfg = config.clone();
    f.mutation(
        "chat.send",
        Visibility::Public,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("content", v::string()),
            ("attachments", v::optional(v::array(v::any()))),
            ("clientMessageId", v::optional(v::string())),
        ]),
        v::id(MESSAGES),
        audited(config, "chat.send", move |ctx, a: SendMessageArgs| {
            send(ctx, &cfg, a)
        }),
    );

    // chat.list: one page of the meeting's messages, newest first; `numItems` 1..=100,
    // `cursor` from the previous page. Returns {page, continueCursor, isDone}.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR (including a foreign cursor), NOT_FOUND,
    // FORBIDDEN.
    f.shared_query(
        "chat.list",
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("cursor", v::optional(v::string())),
            ("numItems", v::int64()),
        ]),
        v::any(),
        audited(config, "chat.list", |ctx, a: ListMessagesArgs| {
            assert_meeting_access(ctx, &a.meeting_id, Role::Participant).map(|_| ())
        }),
        list,
    );

    // chat.recent: the newest `limit` (1..=100, default 50) messages, newest first; meant to
    // be subscribed to. Returns: UNAUTHORIZED, VALIDATION_ERROR, NOT_FOUND, FORBIDDEN.
    f.shared_query(
        "chat.recent",
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("limit", v::optional(v::int64())),
        ]),
        v::array(v::any()),
        audited(config, "chat.recent", |ctx, a: RecentMessagesArgs| {
            assert_meeting_access(ctx, &a.meeting_id, Role::Participant).map(|_| ())
        }),
        recent,
    );
}

fn send(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    a: SendMessageArgs,
) -> FunctionResult<String> {
    check_text("content", &a.content, 1, MAX_MESSAGE_CHARS)?;
    if a.content.trim().is_empty() {
        return Err(invalid_field("content", "must not be blank"));
    }
    if let Some(att) = &a.attachments {
        check_attachments(att)?;
    }
    let access = assert_meeting_access(ctx, &a.meeting_id, Role::Participant)?;
    require_active(&access.meeting)?;
    let me = &access.user.id;
    let scope = format!("chat.send:{}:{me}", a.meeting_id);
    if let Some(id) = earlier_id(
        ctx,
        "clientMessageId",
        a.client_message_id.as_deref(),
        &scope,
    )? {
        return Ok(id);
    }
    check_and_consume(
        ctx,
        &config.rate_limits,
        me,
        CHAT_SEND_ACTION,
        config.rate_limits.chat_send,
    )?;
    let mut doc = fields(obj! {
        "meetingId" => a.meeting_id.as_str(),
        "userId" => me.as_str(),
        "content" => a.content.as_str(),
        "timestamp" => ctx.now_ms(),
    });
    if let Some(att) = a.attachments {
        doc.insert("attachments".into(), Value::Array(att));
    }
    let id = ctx.insert(MESSAGES, Value::from(doc))?;
    if let Some(key) = &a.client_message_id {
        store_result(ctx, key, &scope, id.as_str().into())?;
    }
    Ok(id)
}

/// At most `MAX_ATTACHMENTS` objects of at most `MAX_ATTACHMENT_BYTES` together. Unbounded,
/// a few messages near the document size limit made every participant's `chat.recent` fail
/// on the result size limit until they scrolled out.
fn check_attachments(att: &[Value]) -> FunctionResult<()> {
    if att.len() > MAX_ATTACHMENTS {
        return Err(invalid_field(
            "attachments",
            format!("at most {MAX_ATTACHMENTS} attachments"),
        ));
    }
    if let Some(i) = att.iter().position(|x| x.as_object().is_none()) {
        return Err(invalid_field(
            &format!("attachments[{i}]"),
            "must be an object describing the file",
        ));
    }
    let bytes: usize = att.iter().map(Value::size_bytes).sum();
    if bytes > MAX_ATTACHMENT_BYTES {
        return Err(invalid_field(
            "attachments",
            format!("are {bytes} bytes together; at most {MAX_ATTACHMENT_BYTES}"),
        ));
    }
    Ok(())
}

fn list(ctx: &mut Ctx<'_, '_>, a: ListMessagesArgs) -> FunctionResult<MessagePage> {
    let n = limit_arg("numItems", Some(a.num_items), 50, MAX_CHAT_PAGE)?;
    let query = ctx
        .query(MESSAGES, "by_meeting_time")
        .eq("meetingId", a.meeting_id.as_str())
        .desc();
    decoded_page(query, a.cursor.as_deref(), n)
}

fn recent(ctx: &mut Ctx<'_, '_>, a: RecentMessagesArgs) -> FunctionResult<Vec<Message>> {
    let n = limit_arg("limit", a.limit, 50, MAX_CHAT_PAGE)?;
    ctx.query(MESSAGES, "by_meeting_time")
        .eq("meetingId", a.meeting_id.as_str())
        .desc()
        .take(n)?
        .iter()
        .map(decode::<Message>)
        .collect()
}
