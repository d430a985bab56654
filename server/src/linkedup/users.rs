//! Users, profiles and interests: the caller's own user document (created/linked from the
//! WorkOS identity by `users.ensure`), their profile, the interest catalogue and the caller's
//! chosen interests.

use std::collections::BTreeSet;
use std::sync::Arc;

use linkedup_schema::api::limits::{MAX_INTERESTS, MAX_TEXT_CHARS};
use linkedup_schema::api::{
    EnsureUserArgs, Interest, ListInterestsArgs, NoArgs, Profile, SetInterestsArgs,
    UpdateProfileArgs, User,
};
use linkedup_schema::errors::invalid_field;
use linkedup_schema::tables::names::{INTERESTS, PROFILES, USER_INTERESTS};
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::Deserialize;

use super::embeddings::{profile_content, refresh_if_changed};
use super::guards::{current_user, current_user_named};
use super::{audited, check_text, decode, fields, id_of, LinkedUpConfig};

/// Most catalogue entries `interests.list` returns.
const MAX_CATALOGUE: usize = 1_000;
/// Longest display name, in chars.
const MAX_NAME_CHARS: usize = 200;
/// Most languages on a profile.
const MAX_LANGUAGES: usize = 20;

pub(crate) fn register(f: &mut Functions, config: &Arc<LinkedUpConfig>) {
    // users.me: the caller's user document.
    // Returns: UNAUTHORIZED (no identity, or no user yet: call users.ensure), VALIDATION_ERROR.
    f.query(
        "users.me",
        Visibility::Public,
        v::object([]),
        v::any(),
        audited(
            config,
            "users.me",
            |ctx, _a: NoArgs| -> FunctionResult<User> { Ok(current_user(ctx)?.user) },
        ),
    );

    // users.ensure: creates the caller's user document on first call, links it to the token
    // afterwards (email, organisation, role); idempotent. Returns the document.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR.
    f.mutation(
        "users.ensure",
        Visibility::Public,
        v::object([("displayName", v::optional(v::string()))]),
        v::any(),
        audited(config, "users.ensure", |ctx, a: EnsureUserArgs| {
            if let Some(n) = &a.display_name {
                check_text("displayName", n, 1, MAX_NAME_CHARS)?;
            }
            Ok(current_user_named(ctx, a.display_name.as_deref())?.user)
        }),
    );

    // users.heartbeat: marks the caller as seen (at most one write a minute). Returns null.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR.
    f.mutation(
        "users.heartbeat",
        Visibility::Public,
        v::object([]),
        v::null(),
        audited(config, "users.heartbeat", |ctx, _a: NoArgs| {
            current_user(ctx).map(|_| ())
        }),
    );

    // profiles.get: the caller's profile, or null if they have none yet.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR.
    f.query(
        "profiles.get",
        Visibility::Public,
        v::object([]),
        v::any(),
        audited(config, "profiles.get", |ctx, _a: NoArgs| {
            let me = current_user(ctx)?;
            own_profile(ctx, &me.id)
        }),
    );

    // profiles.update: creates or updates the caller's profile with the given fields; when
    // that changes the text their embedding is made of, schedules its refresh
    // (`embeddings::refresh_if_changed`). Returns the profile.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR.
    let cfg = config.clone();
    f.mutation(
        "profiles.update",
        Visibility::Public,
        v::object([
            ("displayName", v::optional(v::string())),
            ("bio", v::optional(v::string())),
            ("goals", v::optional(v::string())),
            ("languages", v::optional(v::array(v::string()))),
            ("experience", v::optional(v::string())),
        ]),
        v::any(),
        audited(config, "profiles.update", move |ctx, a| {
            update_profile(ctx, &cfg, a)
        }),
    );

    // interests.list: the interest catalogue, optionally of one category, by key.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR.
    f.query(
        "interests.list",
        Visibility::Public,
        v::object([("category", v::optional(v::string()))]),
        v::array(v::any()),
        audited(config, "interests.list", |ctx, a: ListInterestsArgs| {
            current_user(ctx)?;
            let rows = match &a.category {
                Some(c) => ctx
                    .query(INTERESTS, "by_category")
                    .eq("category", c.as_str())
                    .take(MAX_CATALOGUE)?,
                None => ctx.query(INTERESTS, "by_key").take(MAX_CATALOGUE)?,
            };
            rows.iter()
                .map(decode::<Interest>)
                .collect::<FunctionResult<Vec<_>>>()
        }),
    );

    // interests.setMine: replaces the caller's interests with `keys` (each must be in the
    // catalogue; duplicates ignored) and, as `profiles.update`, refreshes their embedding when
    // its text changed. Returns the keys now held, sorted.
    // Returns: UNAUTHORIZED, VALIDATION_ERROR (naming `keys[i]`).
    let cfg = config.clone();
    f.mutation(
        "interests.setMine",
        Visibility::Public,
        v::object([("keys", v::array(v::string()))]),
        v::array(v::string()),
        audited(config, "interests.setMine", move |ctx, a| {
            set_my_interests(ctx, &cfg, a)
        }),
    );

    // interests.upsert (internal, for seeding the catalogue): creates or relabels an interest.
    f.mutation(
        "interests.upsert",
        Visibility::Internal,
        v::object([
            ("key", v::string()),
            ("label", v::string()),
            ("category", v::string()),
        ]),
        v::string(),
        |ctx, a: UpsertInterest| {
            let existing = ctx
                .query(INTERESTS, "by_key")
                .eq("key", a.key.as_str())
                .first()?;
            match existing {
                Some(doc) => {
                    let id = id_of(&doc)?;
                    ctx.patch(
                        INTERESTS,
                        &id,
                        fields(obj! { "label" => a.label, "category" => a.category }),
                    )?;
                    Ok(id)
                }
                None => {
                    let now = ctx.now_ms();
                    ctx.insert(
                        INTERESTS,
                        obj! {
                            "key" => a.key, "label" => a.label,
                            "category" => a.category, "createdAt" => now,
                        },
                    )
                }
            }
        },
    );
}

#[derive(Deserialize)]
struct UpsertInterest {
    key: String,
    label: String,
    category: String,
}

fn own_profile(ctx: &mut Ctx<'_, '_>, user_id: &str) -> FunctionResult<Option<Profile>> {
    ctx.query(PROFILES, "by_user")
        .eq("userId", user_id)
        .first()?
        .map(|d| decode(&d))
        .transpose()
}

fn update_profile(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    a: UpdateProfileArgs,
) -> FunctionResult<Profile> {
    if let Some(n) = &a.display_name {
        check_text("displayName", n, 1, MAX_NAME_CHARS)?;
    }
    for (path, text) in [
        ("bio", &a.bio),
        ("goals", &a.goals),
        ("experience", &a.experience),
    ] {
        if let Some(t) = text {
            check_text(path, t, 0, MAX_TEXT_CHARS)?;
        }
    }
    if let Some(langs) = &a.languages {
        if langs.len() > MAX_LANGUAGES {
            return Err(invalid_field(
                "languages",
                format!("at most {MAX_LANGUAGES} languages"),
            ));
        }
        for (i, l) in langs.iter().enumerate() {
            check_text(&format!("languages[{i}]"), l, 1, 64)?;
        }
    }
    let me = current_user(ctx)?;
    let embedded_before = profile_content(ctx, &me.id)?;
    let now = ctx.now_ms();
    let mut changes = fields(obj! { "updatedAt" => now });
    for (k, val) in [
        ("displayName", &a.display_name),
        ("bio", &a.bio),
        ("goals", &a.goals),
        ("experience", &a.experience),
    ] {
        if let Some(x) = val {
            changes.insert(k.into(), x.as_str().into());
        }
    }
    if let Some(langs) = &a.languages {
        changes.insert(
            "languages".into(),
            Value::Array(langs.iter().map(|l| l.as_str().into()).collect()),
        );
    }
    let id = match own_profile(ctx, &me.id)? {
        Some(p) => {
            ctx.patch(PROFILES, &p.id, changes)?;
            p.id
        }
        None => {
            // Never the email: profiles are shown to other participants and reach the AI
            // provider (seed §20, data minimisation). Empty until the user names themself.
            let default_name = me.user.display_name.clone().unwrap_or_default();
            changes
                .entry("displayName".into())
                .or_insert_with(|| default_name.into());
            changes
                .entry("languages".into())
                .or_insert_with(|| Value::Array(Vec::new()));
            changes.insert("userId".into(), me.id.as_str().into());
            changes.insert("createdAt".into(), now.into());
            ctx.insert(PROFILES, Value::from(changes))?
        }
    };
    refresh_if_changed(ctx, config, &me.id, embedded_before)?;
    own_profile(ctx, &me.id)?.ok_or_else(|| {
        query_engine::error::FunctionError::internal(format!("profile {id} not readable"))
    })
}

fn set_my_interests(
    ctx: &mut Ctx<'_, '_>,
    config: &LinkedUpConfig,
    a: SetInterestsArgs,
) -> FunctionResult<Vec<String>> {
    if a.keys.len() > MAX_INTERESTS {
        return Err(invalid_field(
            "keys",
            format!("at most {MAX_INTERESTS} interests"),
        ));
    }
    let me = current_user(ctx)?;
    let mut wanted = BTreeSet::new();
    for (i, k) in a.keys.iter().enumerate() {
        let known = ctx
            .query(INTERESTS, "by_key")
            .eq("key", k.as_str())
            .first()?;
        if known.is_none() {
            return Err(invalid_field(
                &format!("keys[{i}]"),
                format!("{k:?} is not in the interest catalogue"),
            ));
        }
        wanted.insert(k.clone());
    }
    let embedded_before = profile_content(ctx, &me.id)?;
    let current = ctx
        .query(USER_INTERESTS, "by_user")
        .eq("userId", me.id.as_str())
        .take(MAX_INTERESTS * 2)?;
    let now = ctx.now_ms();
    let mut have = BTreeSet::new();
    for doc in &current {
        let key = doc
            .get_path("interestKey")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if wanted.contains(&key) && !have.contains(&key) {
            have.insert(key);
        } else {
            ctx.delete(USER_INTERESTS, &id_of(doc)?)?;
        }
    }
    for k in wanted.difference(&have) {
        ctx.insert(
            USER_INTERESTS,
            obj! { "userId" => me.id.as_str(), "interestKey" => k.as_str(), "createdAt" => now },
        )?;
    }
    refresh_if_changed(ctx, config, &me.id, embedded_before)?;
    Ok(wanted.into_iter().collect())
}
