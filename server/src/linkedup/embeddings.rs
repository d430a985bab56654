//! Embeddings (seed §11): `embeddings.generate` (internal) embeds a text for a source and
//! `embeddings.refreshMine` embeds the caller's own profile and interests (source `user`,
//! their `users` id) — as does a change of that text (`refresh_if_changed`, called by
//! `profiles.update` and `interests.setMine`, through the job `embeddings.refreshUser`) — all
//! through `embeddings.store`, which keeps one unit-length vector per (source, model) and the
//! `vectorIndexMeta` entry of its index.
//!
//! The refresh job carries the user's id, not their text: it reads the profile when it runs,
//! so no profile text sits in `_scheduled_jobs` (kept a week after the job ran, and never
//! touched by an erasure), and a job still queued when the user's erasure is requested sends
//! nothing to the provider.
//!
//! One index per (provider, model) — `indexName` is the model — records the dimensions and
//! version of its vectors; a vector that disagrees with its active index is refused, since it
//! could not be compared with the vectors already there (re-index under a new model instead).
//! Matching reads these vectors through `by_source` and compares those of one model.
//! Embeddings never fall back to the local provider: its vectors are of another model.

use std::sync::Arc;

use linkedup_schema::api::ai::limits::MAX_EMBED_CHARS;
use linkedup_schema::api::ai::{fns, EmbeddingResult};
use linkedup_schema::api::NoArgs;
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{EMBEDDINGS, USERS, VECTOR_INDEX_META};
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::engine::ActionCtx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::{v, Validator};
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::ai_budget;
use super::ai_context::{profile_of, Labels};
use super::guards::{being_erased, current_user};
use super::rate_limit::check_and_consume;
use super::{check_text, decode, encode, id_of, LinkedUpConfig};
use crate::ai::text::{content_words, truncate};
use crate::ai::MAX_DIMENSIONS;
use crate::hex::sha256_hex;

/// The internal action that embeds a source's text.
pub const GENERATE: &str = "embeddings.generate";
/// The job a profile change schedules: embeds the user's profile as it is when it runs.
pub const REFRESH_USER: &str = "embeddings.refreshUser";
const USER_TEXT: &str = "embeddings.userText";
const BEGIN_REFRESH: &str = "embeddings.beginRefresh";
const STORE: &str = "embeddings.store";
/// The rate limiter's action name for `embeddings.refreshMine`.
const REFRESH_ACTION: &str = "embeddings.refreshMine";
/// The rate limiter's action name for refreshes scheduled by profile changes: the same limit
/// (`AiConfig::refresh_limit`), counted apart so that editing a profile does not use up the
/// user's own `refreshMine` calls.
const AUTO_REFRESH_ACTION: &str = "embeddings.autoRefresh";
/// What an embedding may be of.
pub const SOURCE_TYPES: [&str; 5] = ["user", "profile", "meeting", "note", "transcriptSegment"];
const MAX_SOURCE_ID_CHARS: usize = 200;
const MAX_MODEL_CHARS: usize = 100;
/// Most embeddings one source may hold (one per model); more is a bug, refused by `collect`.
const MAX_PER_SOURCE: usize = 32;
/// Most indexes one provider may hold.
const MAX_INDEXES_PER_PROVIDER: usize = 64;
/// How far from 1 a stored vector's length may be.
const UNIT_TOLERANCE: f64 = 1e-6;

fn source_type_validator() -> Validator {
    v::union(SOURCE_TYPES.iter().map(|s| v::literal(*s)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateArgs {
    source_type: String,
    source_id: String,
    content: String,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreArgs {
    source_type: String,
    source_id: String,
    vector: Vec<f64>,
    provider: String,
    model: String,
    version: String,
    metadata: Value,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserArgs {
    user_id: String,
}

/// The caller and the text of their profile, from `embeddings.beginRefresh`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefreshStart {
    user_id: String,
    content: String,
}

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // embeddings.generate (internal action): embeds `content` (1..=8000 chars) with `model`
    // (default: the provider's) and stores it for the source, replacing that source's older
    // vector of the same model. Returns {embeddingId, model, dimensions, vector}.
    // Returns: VALIDATION_ERROR, PROVIDER_ERROR, CONFLICT (the model's index disagrees).
    let cfg = config.clone();
    f.action(
        GENERATE,
        Visibility::Internal,
        v::object([
            ("sourceType", source_type_validator()),
            ("sourceId", v::string()),
            ("content", v::string()),
            ("model", v::optional(v::string())),
        ]),
        v::any(),
        move |ctx, a: GenerateArgs| {
            let cfg = cfg.clone();
            async move {
                check_content("content", &a.content)?;
                check_text("sourceId", &a.source_id, 1, MAX_SOURCE_ID_CHARS)?;
                if let Some(m) = &a.model {
                    check_text("model", m, 1, MAX_MODEL_CHARS)?;
                }
                embed_and_store(&ctx, &cfg, &a.source_type, &a.source_id, a.content, a.model).await
            }
        },
    );

    // embeddings.refreshMine (action): embeds the caller's profile (bio, goals, experience)
    // and interests as their `user` embedding. Returns {embeddingId, model, dimensions,
    // vector}. Returns: UNAUTHORIZED, VALIDATION_ERROR (nothing to embed yet), RATE_LIMITED
    // (the refresh limit, or data.reason "aiBudget": the daily AI budget), PROVIDER_ERROR,
    // CONFLICT.
    let cfg = config.clone();
    f.action(
        fns::EMBEDDINGS_REFRESH_MINE,
        Visibility::Public,
        v::object([]),
        v::any(),
        move |ctx, _a: NoArgs| {
            let cfg = cfg.clone();
            async move {
                let start: RefreshStart = decode(&ctx.run_mutation(BEGIN_REFRESH, obj! {}).await?)?;
                embed_and_store(&ctx, &cfg, "user", &start.user_id, start.content, None).await
            }
        },
    );
    // embeddings.refreshUser (internal action, scheduled by `refresh_if_changed`): embeds the
    // profile text of `userId` as it is now as their `user` embedding; nothing (null) if it has
    // no words or their erasure was requested. Returns {embeddingId, model, dimensions,
    // vector} or null. Returns: PROVIDER_ERROR, CONFLICT.
    let cfg = config.clone();
    f.action(
        REFRESH_USER,
        Visibility::Internal,
        v::object([("userId", v::id(USERS))]),
        v::any(),
        move |ctx, a: UserArgs| {
            let cfg = cfg.clone();
            async move {
                let text = ctx.run_query(USER_TEXT, encode(&a)?).await?;
                let Some(content) = decode::<Option<String>>(&text)? else {
                    return Ok(None);
                };
                let stored = embed_and_store(&ctx, &cfg, "user", &a.user_id, content, None);
                stored.await.map(Some)
            }
        },
    );
    f.query(
        USER_TEXT,
        Visibility::Internal,
        v::object([("userId", v::id(USERS))]),
        v::union([v::null(), v::string()]),
        |ctx, a: UserArgs| user_text(ctx, &a.user_id),
    );
    let cfg = config.clone();
    f.mutation(
        BEGIN_REFRESH,
        Visibility::Internal,
        v::object([]),
        v::any(),
        move |ctx, _a: NoArgs| begin_refresh(ctx, &cfg).and_then(|s| encode(&s)),
    );

    // embeddings.store (internal): see the module comment. Returns the embedding's id.
    f.mutation(
        STORE,
        Visibility::Internal,
        v::object([
            ("sourceType", source_type_validator()),
            ("sourceId", v::string()),
            ("vector", v::array(v::float64())),
            ("provider", v::string()),
            ("model", v::string()),
            ("version", v::string()),
            ("metadata", v::any()),
        ]),
        v::string(),
        store,
    );
}

/// Checks text to embed: 1..=MAX_EMBED_CHARS chars with at least one word that means
/// something. Returns: VALIDATION_ERROR.
fn check_content(path: &str, content: &str) -> FunctionResult<()> {
    check_text(path, content, 1, MAX_EMBED_CHARS)?;
    if content_words(content).is_empty() {
        return Err(invalid_field(path, "has no words to embed"));
    }
    Ok(())
}

async fn embed_and_store(
    ctx: &ActionCtx,
    config: &LinkedUpConfig,
    source_type: &str,
    source_id: &str,
    content: String,
    model: Option<String>,
) -> FunctionResult<EmbeddingResult> {
    let texts = [content];
    let deadline = config.ai.provider_deadline(ctx);
    let embedded = config
        .ai
        .service
        .embed(model.as_deref(), &texts, deadline)
        .await?;
    let vector = embedded
        .vectors
        .into_iter()
        .next()
        .ok_or_else(|| ErrorCode::Internal.err("no embedding returned"))?;
    let digest = sha256_hex(texts[0].as_bytes());
    let args = StoreArgs {
        source_type: source_type.to_string(),
        source_id: source_id.to_string(),
        vector: vector.clone(),
        provider: embedded.provider.to_string(),
        model: embedded.model.clone(),
        version: embedded.version,
        metadata: obj! {
            "provider" => embedded.provider,
            "contentSha256" => digest,
            "contentChars" => texts[0].chars().count() as i64,
        },
    };
    let id = ctx.run_mutation(STORE, encode(&args)?).await?;
    Ok(EmbeddingResult {
        embedding_id: id
            .as_str()
            .ok_or_else(|| ErrorCode::Internal.err("embeddings.store returned no id"))?
            .to_string(),
        model: embedded.model,
        dimensions: vector.len() as i64,
        vector,
    })
}

/// The text a user's `user` embedding is made of: their bio, goals, experience and interest
/// labels; `None` when it has no words to embed.
pub(crate) fn profile_content(
    ctx: &mut Ctx<'_, '_>,
    user_id: &str,
) -> FunctionResult<Option<String>> {
    let profile = profile_of(ctx, &mut Labels::default(), user_id)?;
    // The name is left out: it says nothing about what the user shares with others.
    let mut parts: Vec<String> = [profile.bio, profile.goals, profile.experience]
        .into_iter()
        .flatten()
        .collect();
    if !profile.interests.is_empty() {
        parts.push(format!("Interests: {}.", profile.interests.join(", ")));
    }
    let content = truncate(&parts.join("\n"), MAX_EMBED_CHARS);
    Ok((!content_words(&content).is_empty()).then_some(content))
}

/// What `embeddings.refreshUser` embeds: `profile_content`, or nothing for a user whose
/// erasure was requested (their profile may not be deleted yet).
fn user_text(ctx: &mut Ctx<'_, '_>, user_id: &str) -> FunctionResult<Option<String>> {
    if being_erased(ctx, user_id)? {
        return Ok(None);
    }
    profile_content(ctx, user_id)
}

/// The caller's profile text, after their rate limit and daily AI budget (`ai_budget`).
/// Returns: UNAUTHORIZED, VALIDATION_ERROR (nothing to embed), RATE_LIMITED.
fn begin_refresh(ctx: &mut Ctx<'_, '_>, config: &LinkedUpConfig) -> FunctionResult<RefreshStart> {
    let me = current_user(ctx)?;
    let Some(content) = profile_content(ctx, &me.id)? else {
        return Err(invalid_field(
            "profile",
            "nothing to embed yet: add a bio, goals, experience or interests first",
        ));
    };
    check_and_consume(
        ctx,
        &config.rate_limits,
        &me.id,
        REFRESH_ACTION,
        config.ai.refresh_limit,
    )?;
    ai_budget::spend(ctx, &config.ai, &me.id, fns::EMBEDDINGS_REFRESH_MINE)?;
    Ok(RefreshStart {
        user_id: me.id,
        content,
    })
}

/// Called by the mutations that change what `profile_content` reads (`profiles.update`,
/// `interests.setMine`) after their change, with the content from before it: when the content
/// changed, has words, and differs from what the user's stored embeddings were made of,
/// schedules `embeddings.refreshUser` for the user. Automatic refreshes are limited as
/// `embeddings.refreshMine` is (`AUTO_REFRESH_ACTION`); over the limit, nothing is scheduled
/// and the change itself still commits (the next change or a `refreshMine` catches up).
/// Returns whether it scheduled.
pub(crate) fn refresh_if_changed(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    user_id: &str,
    before: Option<String>,
) -> FunctionResult<bool> {
    let after = profile_content(ctx, user_id)?;
    let Some(content) = after.filter(|a| before.as_ref() != Some(a)) else {
        return Ok(false);
    };
    let digest = sha256_hex(content.as_bytes());
    let embedded = ctx
        .query(EMBEDDINGS, "by_source")
        .eq("sourceType", "user")
        .eq("sourceId", user_id)
        .collect(MAX_PER_SOURCE)?
        .iter()
        .any(|d| d.get_path("metadata.contentSha256").and_then(Value::as_str) == Some(&digest));
    if embedded {
        return Ok(false);
    }
    let limited = check_and_consume(
        ctx,
        &config.rate_limits,
        user_id,
        AUTO_REFRESH_ACTION,
        config.ai.refresh_limit,
    );
    match limited {
        Err(e) if e.code == ErrorCode::RateLimited.as_str() => return Ok(false),
        other => other?,
    }
    ctx.schedule_after(0, REFRESH_USER, obj! { "userId" => user_id })?;
    Ok(true)
}

/// Makes sure the (provider, model) index exists and agrees with a vector of `dimensions` of
/// `version`. Returns: CONFLICT when it does not (or is not active).
fn ensure_index(
    ctx: &mut Ctx<'_, '_>,
    provider: &str,
    model: &str,
    dimensions: usize,
    version: &str,
) -> FunctionResult<()> {
    let indexes = ctx
        .query(VECTOR_INDEX_META, "by_provider")
        .eq("provider", provider)
        .collect(MAX_INDEXES_PER_PROVIDER)?;
    let existing = indexes
        .iter()
        .find(|d| d.get_path("indexName").and_then(Value::as_str) == Some(model));
    let Some(index) = existing else {
        let now = ctx.now_ms();
        ctx.insert(
            VECTOR_INDEX_META,
            obj! {
                "provider" => provider,
                "indexName" => model,
                "config" => obj! {
                    "model" => model,
                    "dimensions" => dimensions as i64,
                    "version" => version,
                    "metric" => "cosine",
                    "normalized" => true,
                },
                "status" => "active",
                "createdAt" => now,
                "updatedAt" => now,
            },
        )?;
        return Ok(());
    };
    let status = index
        .get_path("status")
        .and_then(Value::as_str)
        .unwrap_or("");
    let held = index.get_path("config.dimensions").and_then(Value::as_i64);
    let held_version = index.get_path("config.version").and_then(Value::as_str);
    let refuse = |why: String| {
        Err(ErrorCode::Conflict.err_with(
            format!("vector index {provider}/{model}: {why}"),
            obj! { "provider" => provider, "indexName" => model },
        ))
    };
    if status != "active" {
        return refuse(format!("the index is {status}"));
    }
    if held != Some(dimensions as i64) {
        return refuse(format!(
            "it holds {}-dimensional vectors, this one has {dimensions}",
            held.unwrap_or(0)
        ));
    }
    if held_version != Some(version) {
        return refuse(format!(
            "it holds version {:?} vectors, this one is {version:?}",
            held_version.unwrap_or("")
        ));
    }
    Ok(())
}

/// A `user` vector must be made of the user's profile text as it is now (`profile_content`,
/// compared by `metadata.contentSha256`): refreshes run as separate actions and may finish in
/// any order, and one made of an older text must not replace a newer one. Nor may a vector be
/// stored for a user whose erasure was requested: it would outlive the erasure.
/// Returns: CONFLICT.
fn check_user_source(ctx: &mut Ctx<'_, '_>, a: &StoreArgs) -> FunctionResult<()> {
    if a.source_type != "user" || ctx.parse_id(USERS, &a.source_id).is_err() {
        return Ok(());
    }
    if being_erased(ctx, &a.source_id)? {
        return Err(ErrorCode::Conflict.err("the user's personal data is being erased"));
    }
    let current = profile_content(ctx, &a.source_id)?.map(|c| sha256_hex(c.as_bytes()));
    let made_of = a.metadata.get_path("contentSha256").and_then(Value::as_str);
    if current.as_deref() != made_of {
        return Err(ErrorCode::Conflict.err(
            "the profile changed since this vector was made of it; a newer refresh replaces it",
        ));
    }
    Ok(())
}

fn store(ctx: &mut Ctx<'_, '_>, a: StoreArgs) -> FunctionResult<String> {
    let dims = a.vector.len();
    let norm = a.vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    if dims == 0 || dims > MAX_DIMENSIONS || (norm - 1.0).abs() > UNIT_TOLERANCE {
        return Err(invalid_field(
            "vector",
            format!("must be a unit vector of 1..={MAX_DIMENSIONS} dimensions"),
        ));
    }
    check_user_source(ctx, &a)?;
    ensure_index(ctx, &a.provider, &a.model, dims, &a.version)?;
    let now = ctx.now_ms();
    let doc = obj! {
        "sourceType" => a.source_type.as_str(),
        "sourceId" => a.source_id.as_str(),
        "vector" => Value::Array(a.vector.iter().map(|x| Value::from(*x)).collect()),
        "model" => a.model.as_str(),
        "dimensions" => dims as i64,
        "version" => a.version.as_str(),
        "metadata" => a.metadata,
        "createdAt" => now,
    };
    let same_model: Vec<String> = ctx
        .query(EMBEDDINGS, "by_source")
        .eq("sourceType", a.source_type.as_str())
        .eq("sourceId", a.source_id.as_str())
        .collect(MAX_PER_SOURCE)?
        .iter()
        .filter(|d| d.get_path("model").and_then(Value::as_str) == Some(a.model.as_str()))
        .map(id_of)
        .collect::<FunctionResult<_>>()?;
    match same_model.split_first() {
        Some((keep, extra)) => {
            ctx.replace(EMBEDDINGS, keep, doc)?;
            for id in extra {
                ctx.delete(EMBEDDINGS, id)?;
            }
            Ok(keep.clone())
        }
        None => ctx.insert(EMBEDDINGS, doc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_needs_words() {
        assert!(check_content("content", "rust and databases").is_ok());
        assert_eq!(
            check_content("content", "the of and").unwrap_err().code,
            "VALIDATION_ERROR"
        );
        assert!(check_content("content", "").is_err());
        assert!(check_content("content", &"word ".repeat(MAX_EMBED_CHARS)).is_err());
    }
}
