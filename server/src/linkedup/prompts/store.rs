//! Writing a generation of prompts: `prompts.store`, the one mutation that does, and
//! `store_generated`, through which both generating actions call it. At commit the mutation
//! re-checks the generation's idempotency, so racing actions never write twice, and that none of
//! the users whose profiles it was made from is being erased: the erasure job deletes a
//! meeting's prompts once, and may pass the meeting while the provider is answering, after
//! which nothing made of their profile may be stored. It then stores nothing and names them;
//! the action makes the prompts again without them with the local heuristics (no more provider
//! time: the action's may be nearly spent) and stores those instead.

use std::collections::BTreeMap;

use linkedup_schema::api::ai::limits::MAX_PROMPTS_LISTED;
use linkedup_schema::api::ai::{Prompt, PromptType, Provenance};
use linkedup_schema::api::Role;
use linkedup_schema::tables::names::{MEETINGS, PROMPTS, USERS};
use linkedup_schema::tables::provenance;
use linkedup_schema::ErrorCode;
use query_engine::context::Ctx;
use query_engine::engine::ActionCtx;
use query_engine::error::FunctionResult;
use query_engine::functions::{Functions, Visibility};
use query_engine::obj;
use query_engine::schema::v;
use query_engine::value::Value;
use serde::{Deserialize, Serialize};

use super::{by_ids, of_type, IN_CALL_SCOPE};
use crate::ai::{
    text, AiService, Generated, Idea, InCallRequest, ParticipantProfile, PreCallRequest,
};
use crate::linkedup::guards::{assert_meeting_access, being_erased};
use crate::linkedup::idempotency::{check_and_record, store_result, DEFAULT_TTL_MS};
use crate::linkedup::{decode, encode};

const STORE: &str = "prompts.store";
/// The fallback reason of prompts made again without users being erased.
const ERASED_REASON: &str =
    "made again without participants whose erasure was requested while it was generated";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoreArgs {
    meeting_id: String,
    #[serde(rename = "type")]
    prompt_type: PromptType,
    request_hash: String,
    ideas: Vec<Idea>,
    provenance: Provenance,
    /// The users whose profiles the generation was made from.
    made_from: Vec<String>,
}

/// What `prompts.store` did.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
enum Stored {
    /// Stored these prompts (or found those of the same generation stored before).
    Prompts { prompts: Vec<Prompt> },
    /// Stored nothing: these users, whose profiles the generation was made from, are being
    /// erased.
    #[serde(rename_all = "camelCase")]
    Erased { user_ids: Vec<String> },
}

/// A request prompts are generated from, as far as storing them goes.
pub(super) trait Generation {
    const TYPE: PromptType;
    /// The participants described in it.
    fn participants_mut(&mut self) -> &mut Vec<ParticipantProfile>;
    /// The input features recorded in the prompts' provenance.
    fn features(&self) -> Value;
    /// The local heuristics' prompts for it, used because of `reason`.
    fn local(&self, service: &AiService, reason: &str) -> FunctionResult<Generated<Vec<Idea>>>;
}

impl Generation for PreCallRequest {
    const TYPE: PromptType = PromptType::Precall;

    fn participants_mut(&mut self) -> &mut Vec<ParticipantProfile> {
        &mut self.participants
    }

    /// What the ideas could be based on.
    fn features(&self) -> Value {
        let mut holders: BTreeMap<String, usize> = BTreeMap::new();
        for p in &self.participants {
            for i in &p.interests {
                *holders.entry(i.clone()).or_default() += 1;
            }
        }
        let shared: Vec<Value> = holders
            .into_iter()
            .filter(|(_, n)| *n >= 2)
            .take(20)
            .map(|(i, _)| Value::from(i))
            .collect();
        obj! {
            "participants" => self.participants.len() as i64,
            "withGoals" => self.participants.iter().filter(|p| p.goals.is_some()).count() as i64,
            "sharedInterests" => Value::Array(shared),
            "titleKeywords" => Value::Array(
                text::keywords([self.title.as_str()], 5).into_iter().map(Value::from).collect()
            ),
        }
    }

    fn local(&self, service: &AiService, reason: &str) -> FunctionResult<Generated<Vec<Idea>>> {
        service.local_pre_call_ideas(self, Some(reason.to_string()))
    }
}

impl Generation for InCallRequest {
    const TYPE: PromptType = PromptType::Incall;

    fn participants_mut(&mut self) -> &mut Vec<ParticipantProfile> {
        &mut self.participants
    }

    fn features(&self) -> Value {
        obj! {
            "participants" => self.participants.len() as i64,
            "lullDetected" => self.lull_detected,
            "currentTopics" => Value::Array(
                self.current_topics.iter().map(|t| Value::from(t.as_str())).collect()
            ),
            "transcriptChars" => self.recent_transcript.chars().count() as i64,
        }
    }

    fn local(&self, service: &AiService, reason: &str) -> FunctionResult<Generated<Vec<Idea>>> {
        service.local_in_call_prompts(self, Some(reason.to_string()))
    }
}

pub(super) fn register(f: &mut Functions) {
    // prompts.store (internal): writes one generation unless it was written already, or
    // nothing if users it was made from are being erased. Returns {kind: "prompts", prompts}
    // or {kind: "erased", userIds}.
    f.mutation(
        STORE,
        Visibility::Internal,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            (
                "type",
                v::union([v::literal("precall"), v::literal("incall")]),
            ),
            ("requestHash", v::string()),
            (
                "ideas",
                v::array(v::object([
                    ("content", v::string()),
                    ("tags", v::array(v::string())),
                    ("relevance", v::float64()),
                ])),
            ),
            ("provenance", provenance()),
            ("madeFrom", v::array(v::id(USERS))),
        ]),
        v::any(),
        store,
    );
}

/// Stores the prompts `generated` from `request` in meeting `meeting_id` (`hash`: the request
/// hash of a request, the key of in-call prompts) and returns them, or those of the same
/// generation stored before. While `prompts.store` finds users the prompts were made from
/// being erased, they are made again without those users by the local heuristics; each round
/// has fewer participants, so this ends.
/// Returns: INTERNAL if the store names users the request did not describe (a bug); what
/// `prompts.store` returns.
pub(super) async fn store_generated<R: Generation>(
    ctx: &ActionCtx,
    service: &AiService,
    meeting_id: &str,
    mut request: R,
    mut generated: Generated<Vec<Idea>>,
    hash: impl Fn(&R) -> String,
) -> FunctionResult<Vec<Prompt>> {
    loop {
        let request_hash = hash(&request);
        let args = StoreArgs {
            meeting_id: meeting_id.to_string(),
            prompt_type: R::TYPE,
            provenance: generated.provenance(&request_hash, request.features()),
            request_hash,
            ideas: generated.value,
            made_from: request
                .participants_mut()
                .iter()
                .map(|p| p.user_id.clone())
                .collect(),
        };
        let user_ids = match decode(&ctx.run_mutation(STORE, encode(&args)?).await?)? {
            Stored::Prompts { prompts } => return Ok(prompts),
            Stored::Erased { user_ids } => user_ids,
        };
        let participants = request.participants_mut();
        let before = participants.len();
        participants.retain(|p| !user_ids.contains(&p.user_id));
        if participants.len() == before {
            return Err(ErrorCode::Internal.err("prompts.store refused users it was not given"));
        }
        generated = request.local(service, ERASED_REASON)?;
    }
}

fn store(ctx: &mut Ctx<'_, '_>, a: StoreArgs) -> FunctionResult<Stored> {
    assert_meeting_access(ctx, &a.meeting_id, Role::Participant)?;
    // Read here, so an erasure requested since commits first or makes this store run again.
    let mut erased = Vec::new();
    for user in &a.made_from {
        if being_erased(ctx, user)? {
            erased.push(user.clone());
        }
    }
    if !erased.is_empty() {
        return Ok(Stored::Erased { user_ids: erased });
    }
    match a.prompt_type {
        PromptType::Precall => {
            let limit = MAX_PROMPTS_LISTED as usize;
            let existing = of_type(ctx, &a.meeting_id, PromptType::Precall, limit)?;
            if !existing.is_empty() {
                return Ok(Stored::Prompts { prompts: existing });
            }
        }
        PromptType::Incall => {
            if let Some(ids) = check_and_record(
                ctx,
                "requestHash",
                &a.request_hash,
                IN_CALL_SCOPE,
                DEFAULT_TTL_MS,
            )? {
                return Ok(Stored::Prompts {
                    prompts: by_ids(ctx, &ids)?,
                });
            }
        }
    }
    let now = ctx.now_ms();
    let provenance = encode(&a.provenance)?;
    let mut ids = Vec::with_capacity(a.ideas.len());
    for idea in &a.ideas {
        let id = ctx.insert(
            PROMPTS,
            obj! {
                "meetingId" => a.meeting_id.as_str(),
                "type" => a.prompt_type.as_str(),
                "content" => idea.content.as_str(),
                "tags" => Value::Array(idea.tags.iter().map(|t| Value::from(t.as_str())).collect()),
                "relevance" => idea.relevance,
                "createdAt" => now,
                "provenance" => provenance.clone(),
            },
        )?;
        ids.push(Value::from(id));
    }
    let ids = Value::Array(ids);
    if a.prompt_type == PromptType::Incall {
        store_result(ctx, &a.request_hash, IN_CALL_SCOPE, ids.clone())?;
    }
    let mut prompts = by_ids(ctx, &ids)?;
    prompts.sort_by(|x, y| y.relevance.total_cmp(&x.relevance));
    Ok(Stored::Prompts { prompts })
}
