//! What the AI functions tell a provider about people: a user's profile and interest labels
//! (`profile_of`), and a meeting's participants as such profiles (`participants_of`), leaving
//! out those whose erasure was requested. Bounded in count and text, and without emails or ids
//! other than the users' document ids (seed §20: sensitive data minimisation).

use std::collections::BTreeMap;

use linkedup_schema::api::{Participant, Profile, User};
use linkedup_schema::tables::names::{
    INTERESTS, MEETING_PARTICIPANTS, PROFILES, USERS, USER_INTERESTS,
};
use query_engine::context::Ctx;
use query_engine::error::FunctionResult;
use query_engine::value::Value;

use super::decode;
use super::guards::being_erased;
use crate::ai::text::truncate;
use crate::ai::ParticipantProfile;

/// Most participants described to a provider.
pub const MAX_CONTEXT_PARTICIPANTS: usize = 50;
/// Most interests described per person.
const MAX_CONTEXT_INTERESTS: usize = 20;
/// Longest bio, goals or experience passed on, in chars.
const MAX_PROFILE_TEXT_CHARS: usize = 500;

/// Interest labels by key, looked up once per key per call.
#[derive(Default)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    fn label(&mut self, ctx: &mut Ctx<'_, '_>, key: &str) -> FunctionResult<String> {
        if let Some(l) = self.0.get(key) {
            return Ok(l.clone());
        }
        let label = ctx
            .query(INTERESTS, "by_key")
            .eq("key", key)
            .first()?
            .and_then(|d| {
                d.get_path("label")
                    .and_then(Value::as_str)
                    .map(String::from)
            })
            .unwrap_or_else(|| key.to_string());
        self.0.insert(key.to_string(), label.clone());
        Ok(label)
    }
}

/// The user's profile as a provider sees it: name, bounded profile texts and interests.
pub fn profile_of(
    ctx: &mut Ctx<'_, '_>,
    labels: &mut Labels,
    user_id: &str,
) -> FunctionResult<ParticipantProfile> {
    let user: Option<User> = ctx.get(USERS, user_id)?.map(|d| decode(&d)).transpose()?;
    let profile: Option<Profile> = ctx
        .query(PROFILES, "by_user")
        .eq("userId", user_id)
        .first()?
        .map(|d| decode(&d))
        .transpose()?;
    let keys = ctx
        .query(USER_INTERESTS, "by_user")
        .eq("userId", user_id)
        .take(MAX_CONTEXT_INTERESTS)?;
    let mut interests = Vec::with_capacity(keys.len());
    for k in &keys {
        if let Some(key) = k.get_path("interestKey").and_then(Value::as_str) {
            interests.push(labels.label(ctx, key)?);
        }
    }
    let name = profile
        .as_ref()
        .map(|p| p.display_name.clone())
        .or_else(|| user.and_then(|u| u.display_name))
        // An email (profiles made before names stopped defaulting to it) is no name to share.
        .filter(|n| !n.trim().is_empty() && !n.contains('@'))
        .unwrap_or_else(|| "a participant".to_string());
    let text = |t: Option<&String>| {
        t.map(|s| truncate(s.trim(), MAX_PROFILE_TEXT_CHARS))
            .filter(|s| !s.is_empty())
    };
    Ok(ParticipantProfile {
        user_id: user_id.to_string(),
        name: truncate(name.trim(), 100),
        bio: text(profile.as_ref().and_then(|p| p.bio.as_ref())),
        goals: text(profile.as_ref().and_then(|p| p.goals.as_ref())),
        experience: text(profile.as_ref().and_then(|p| p.experience.as_ref())),
        interests,
    })
}

/// The first `MAX_CONTEXT_PARTICIPANTS` participants of a meeting, plus any of `also` (user
/// ids) not among them, as profiles — but for users whose erasure was requested: the job
/// erasing them deletes what was made of their profile, once, and may already be past this
/// meeting (or not have reached their profile yet), so nothing more may be made of it.
pub fn participants_of(
    ctx: &mut Ctx<'_, '_>,
    meeting_id: &str,
    also: &[String],
) -> FunctionResult<Vec<ParticipantProfile>> {
    let rows = ctx
        .query(MEETING_PARTICIPANTS, "by_meeting")
        .eq("meetingId", meeting_id)
        .take(MAX_CONTEXT_PARTICIPANTS)?;
    let mut ids = Vec::with_capacity(rows.len() + also.len());
    for r in &rows {
        let p: Participant = decode(r)?;
        ids.push(p.user_id);
    }
    for a in also {
        if !ids.contains(a) {
            ids.push(a.clone());
        }
    }
    let mut labels = Labels::default();
    let mut profiles = Vec::with_capacity(ids.len());
    for id in &ids {
        if !being_erased(ctx, id)? {
            profiles.push(profile_of(ctx, &mut labels, id)?);
        }
    }
    Ok(profiles)
}
