//! The LinkedUp tables (seed §4) in the engine's schema DSL: every collection, its validator and
//! its indexes. Unit conventions: every timestamp and every duration is int64 milliseconds
//! (the seed's `v.number()` timestamps became int64 because our validators are strict), while
//! scores, confidences, relevances, sentiments and vector components stay float64.
//!
//! Where the seed's schema does not fit its own design it is fixed here, each fix with a
//! comment saying why. All fields are camelCase; ids are `id(table)`.

use query_engine::schema::{v, SchemaDefinition, TableDefinition, Validator};

/// Table names, so callers never spell them twice.
pub mod names {
    pub const USERS: &str = "users";
    pub const PROFILES: &str = "profiles";
    pub const INTERESTS: &str = "interests";
    pub const USER_INTERESTS: &str = "userInterests";
    pub const CONNECTIONS: &str = "connections";
    pub const MEETINGS: &str = "meetings";
    pub const MEETING_PARTICIPANTS: &str = "meetingParticipants";
    pub const MEETING_STATE: &str = "meetingState";
    pub const MEETING_NOTES: &str = "meetingNotes";
    pub const NOTE_OPS: &str = "noteOps";
    pub const TRANSCRIPTS: &str = "transcripts";
    pub const TRANSCRIPT_SEGMENTS: &str = "transcriptSegments";
    pub const PROMPTS: &str = "prompts";
    pub const INSIGHTS: &str = "insights";
    pub const MATCHING_QUEUE: &str = "matchingQueue";
    pub const MATCHING_ANALYTICS: &str = "matchingAnalytics";
    pub const EMBEDDINGS: &str = "embeddings";
    pub const VECTOR_INDEX_META: &str = "vectorIndexMeta";
    pub const MESSAGES: &str = "messages";
    pub const IDEMPOTENCY_KEYS: &str = "idempotencyKeys";
    pub const RATE_LIMITS: &str = "rateLimits";
    pub const RATE_LIMIT_WINDOWS: &str = "rateLimitWindows";
    pub const AUDIT_LOGS: &str = "auditLogs";
    pub const FEATURE_FLAGS: &str = "featureFlags";
    pub const ERASURE_REQUESTS: &str = "erasureRequests";
    pub const USER_BLOCKS: &str = "userBlocks";
    pub const FORMER_PARTICIPANTS: &str = "formerParticipants";
    pub const INSIGHT_RUNS: &str = "insightRuns";
}

use names::*;

/// Millisecond timestamps and durations.
fn ms() -> Validator {
    v::int64()
}

fn opt(inner: Validator) -> Validator {
    v::optional(inner)
}

fn literals(values: &[&str]) -> Validator {
    v::union(values.iter().map(|s| v::literal(*s)))
}

/// Meeting lifecycle states.
pub const MEETING_STATES: [&str; 4] = ["scheduled", "active", "concluded", "cancelled"];
/// Participant roles; a host holds every participant right as well.
pub const PARTICIPANT_ROLES: [&str; 2] = ["host", "participant"];
/// Participant presence. Presence is not membership: a `left` participant keeps its record.
pub const PRESENCE: [&str; 3] = ["invited", "joined", "left"];
/// Connection request states.
pub const CONNECTION_STATUSES: [&str; 3] = ["pending", "accepted", "declined"];

/// One component of a text operation, in the wire form of [`crate::ot::TextOperation`]:
/// `{"retain": n}`, `{"insert": "text"}` or `{"delete": n}` (counts in chars).
pub fn ot_component() -> Validator {
    v::union([
        v::object([("retain", v::int64())]),
        v::object([("insert", v::string())]),
        v::object([("delete", v::int64())]),
    ])
}

/// A whole text operation: its normalised component list.
pub fn ot_operation() -> Validator {
    v::array(ot_component())
}

fn users() -> TableDefinition {
    TableDefinition::new(
        USERS,
        v::object([
            // The WorkOS user id: the verified token's subject.
            ("workosUserId", v::string()),
            ("email", v::string()),
            ("orgId", opt(v::string())),
            ("orgRole", opt(v::string())),
            ("displayName", opt(v::string())),
            ("avatarUrl", opt(v::string())),
            ("isActive", v::boolean()),
            // Refreshed at most once a minute, by mutations only, so reads never write.
            ("lastSeenAt", opt(ms())),
            ("createdAt", ms()),
            ("updatedAt", ms()),
            // Added (seed §20, erasure on request): when the user asked for their personal
            // data to be erased (the account is locked from then on), and when it was done
            // (the document is then a tombstone that only keeps its id; see `erasureRequests`).
            ("erasureRequestedAt", opt(ms())),
            ("erasedAt", opt(ms())),
        ]),
    )
    .index("by_workos_id", &["workosUserId"])
    .index("by_org_and_active", &["orgId", "isActive"])
    .index("by_email", &["email"])
    .index("by_last_seen", &["lastSeenAt"])
}

fn profiles() -> TableDefinition {
    TableDefinition::new(
        PROFILES,
        v::object([
            ("userId", v::id(USERS)),
            ("displayName", v::string()),
            ("bio", opt(v::string())),
            ("goals", opt(v::string())),
            ("languages", v::array(v::string())),
            ("experience", opt(v::string())),
            ("createdAt", ms()),
            ("updatedAt", ms()),
        ]),
    )
    .index("by_user", &["userId"])
    .index("by_updated", &["updatedAt"])
}

fn interests() -> TableDefinition {
    TableDefinition::new(
        INTERESTS,
        v::object([
            ("key", v::string()),
            ("label", v::string()),
            ("category", v::string()),
            ("createdAt", ms()),
        ]),
    )
    .index("by_key", &["key"])
    .index("by_category", &["category"])
}

fn user_interests() -> TableDefinition {
    TableDefinition::new(
        USER_INTERESTS,
        v::object([
            ("userId", v::id(USERS)),
            ("interestKey", v::string()),
            ("createdAt", ms()),
        ]),
    )
    .index("by_user", &["userId"])
    .index("by_interest", &["interestKey"])
}

/// Not in the seed's schema listing (only named as a collection). One document per unordered
/// pair: `userA` is the smaller of the two user ids (string order), `userB` the larger, so a
/// request from either side finds the same document through `by_pair`.
fn connections() -> TableDefinition {
    TableDefinition::new(
        CONNECTIONS,
        v::object([
            ("userA", v::id(USERS)),
            ("userB", v::id(USERS)),
            ("requestedBy", v::id(USERS)),
            ("status", literals(&CONNECTION_STATUSES)),
            ("respondedAt", opt(ms())),
            ("createdAt", ms()),
            ("updatedAt", ms()),
        ]),
    )
    // Each side's index has the status next so "my pending requests" is one range, then the
    // last change, so that range reads newest first; the `_updated` ones serve "my newest
    // connections" of any status.
    .index("by_user_a", &["userA", "status", "updatedAt"])
    .index("by_user_b", &["userB", "status", "updatedAt"])
    .index("by_user_a_updated", &["userA", "updatedAt"])
    .index("by_user_b_updated", &["userB", "updatedAt"])
    .index("by_pair", &["userA", "userB"])
}

fn meetings() -> TableDefinition {
    TableDefinition::new(
        MEETINGS,
        v::object([
            ("organizerId", v::id(USERS)),
            // Added: the organizer's organisation; members of other organisations are refused
            // even if somehow listed as participants (tenant isolation).
            ("orgId", opt(v::string())),
            ("title", v::string()),
            ("description", opt(v::string())),
            ("scheduledAt", opt(ms())),
            // Planned length in ms.
            ("duration", opt(ms())),
            ("streamRoomId", opt(v::string())),
            ("state", literals(&MEETING_STATES)),
            ("createdAt", ms()),
            ("updatedAt", ms()),
        ]),
    )
    .index("by_organizer", &["organizerId"])
    .index("by_state", &["state"])
    .index("by_scheduled", &["scheduledAt"])
    // Added: an organisation's meetings by state without scanning every tenant's.
    .index("by_org_and_state", &["orgId", "state"])
}

fn meeting_participants() -> TableDefinition {
    TableDefinition::new(
        MEETING_PARTICIPANTS,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("userId", v::id(USERS)),
            ("role", literals(&PARTICIPANT_ROLES)),
            ("joinedAt", opt(ms())),
            ("leftAt", opt(ms())),
            ("presence", literals(&PRESENCE)),
            // Added: the signed `created_at` of the last Stream presence event applied to the
            // participant (joined, left, session ended); an older one arriving late (a retry)
            // is ignored. Absent until the first.
            ("presenceEventAt", opt(ms())),
            ("createdAt", ms()),
        ]),
    )
    .index("by_meeting", &["meetingId"])
    .index("by_user", &["userId"])
    .index("by_meeting_and_user", &["meetingId", "userId"])
    // Added: counting a meeting's hosts (the last host cannot be removed or demoted) reads
    // only the host rows.
    .index("by_meeting_and_role", &["meetingId", "role"])
}

fn meeting_state() -> TableDefinition {
    TableDefinition::new(
        MEETING_STATE,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("active", v::boolean()),
            ("startedAt", opt(ms())),
            ("endedAt", opt(ms())),
            ("speakingStats", opt(v::any())),
            (
                "lullState",
                opt(v::object([
                    ("detected", v::boolean()),
                    ("lastActivity", ms()),
                    ("duration", ms()),
                ])),
            ),
            ("topics", v::array(v::string())),
            ("recordingEnabled", v::boolean()),
            // Added: how many participants are currently joined, kept by join/leave so that
            // a state subscriber sees presence changes.
            ("joinedCount", opt(v::int64())),
            ("updatedAt", ms()),
        ]),
    )
    .index("by_meeting", &["meetingId"])
    .index("by_active", &["active"])
}

fn meeting_notes() -> TableDefinition {
    TableDefinition::new(
        MEETING_NOTES,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("content", v::string()),
            // The number of operations applied; an op's `sequence` is the version it produced.
            ("version", v::int64()),
            ("lastRebasedAt", ms()),
            ("updatedAt", ms()),
            // Added: who applied the latest operation.
            ("lastEditorId", opt(v::id(USERS))),
            // Added: noteOps with `sequence <= minRetainedVersion` were compacted away, so an
            // edit based on an older version cannot be transformed and must resync (absent: 0).
            ("minRetainedVersion", opt(v::int64())),
        ]),
    )
    .index("by_meeting", &["meetingId"])
}

/// Fixed: the seed's `operation` held one insert/delete/retain at a position, which cannot
/// express a text operation over the whole document (what OT transforms); it is now the full
/// component list (see [`ot_operation`]). Added `clientId`/`clientSeq` so a retried submit is
/// recognised (index `by_meeting_client`) and `baseVersion`, the version the client edited.
fn note_ops() -> TableDefinition {
    TableDefinition::new(
        NOTE_OPS,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("sequence", v::int64()),
            ("authorId", v::id(USERS)),
            ("clientId", v::string()),
            ("clientSeq", v::int64()),
            ("baseVersion", v::int64()),
            ("operation", ot_operation()),
            ("timestamp", ms()),
            ("applied", v::boolean()),
        ]),
    )
    .index("by_meeting_sequence", &["meetingId", "sequence"])
    .index("by_meeting_timestamp", &["meetingId", "timestamp"])
    .index("by_meeting_client", &["meetingId", "clientId", "clientSeq"])
}

/// Added `chunkId` (the producer's id for a chunk, so a retried ingest is recognised through
/// `by_meeting_chunk`) and `by_meeting_sequence` (the resumable stream reads "after sequence
/// n" for one meeting; the seed's indexes start with the bucket, which a resuming reader does
/// not know).
///
/// Dropped the seed's `by_meeting_bucket`, `by_meeting_bucket_seq` and `by_meeting_time`: the
/// first two served only its clock-bucketed stream scan, which `by_meeting_sequence` replaces,
/// and nothing reads chunks by time (aggregation and the stream go by sequence, segments have
/// their own `by_meeting_time`), while every index costs an entry per chunk on the hottest
/// write path — written by the mutation, the committer and the applier, and purged with the
/// chunk. "Time-based sharding" has nothing to spread here: one B-tree per index, and writes
/// of different meetings never conflict. `bucketMs` and `startMs` stay on the document.
pub fn transcripts() -> TableDefinition {
    TableDefinition::new(
        TRANSCRIPTS,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("bucketMs", ms()),
            ("sequence", v::int64()),
            ("chunkId", v::string()),
            ("speakerId", opt(v::string())),
            ("text", v::string()),
            ("confidence", v::float64()),
            ("startMs", ms()),
            ("endMs", ms()),
            ("createdAt", ms()),
            // Added (provenance, seed §"insights"): the participant whose call stored the
            // chunk. `speakerId` is the producer's label for who spoke; this is who sent it.
            // Optional only for chunks stored before it existed.
            ("ingestedBy", opt(v::id(USERS))),
        ]),
    )
    .index("by_meeting_sequence", &["meetingId", "sequence"])
    .index("by_meeting_chunk", &["meetingId", "chunkId"])
}

/// Added `firstSequence`/`lastSequence` (the transcript chunks a segment covers) with
/// `by_meeting_last_sequence`, so aggregation resumes after the last aggregated chunk and a
/// repeated run creates no duplicates. Added `spokenBy`: the users whose words the segment
/// holds, by the chunks' rule (`speakers` keeps the producer's labels, which need not be user
/// ids); absent on segments aggregated before it existed.
fn transcript_segments() -> TableDefinition {
    TableDefinition::new(
        TRANSCRIPT_SEGMENTS,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("startMs", ms()),
            ("endMs", ms()),
            ("speakers", v::array(v::string())),
            ("text", v::string()),
            ("topics", v::array(v::string())),
            ("sentiment", opt(v::float64())),
            ("createdAt", ms()),
            ("firstSequence", opt(v::int64())),
            ("lastSequence", opt(v::int64())),
            ("spokenBy", opt(v::array(v::id(USERS)))),
        ]),
    )
    .index("by_meeting", &["meetingId"])
    .index("by_meeting_time", &["meetingId", "startMs"])
    .index("by_meeting_last_sequence", &["meetingId", "lastSequence"])
}

/// How a prompt or insight was generated (seed §9 provenance: input features and generation
/// parameters), kept on the document itself so it lives and is purged with it. Optional so
/// that documents written before it existed stay valid.
pub fn provenance() -> Validator {
    v::object([
        ("provider", v::string()),
        ("model", v::string()),
        ("requestHash", v::string()),
        ("fallback", v::boolean()),
        ("fallbackReason", opt(v::string())),
        ("temperature", opt(v::float64())),
        ("maxTokens", opt(v::int64())),
        ("features", v::any()),
    ])
}

/// Added `provenance` and `by_meeting_type_relevance`, so one type's prompts are listed by
/// relevance as one range.
fn prompts() -> TableDefinition {
    TableDefinition::new(
        PROMPTS,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("type", literals(&["precall", "incall"])),
            ("content", v::string()),
            ("tags", v::array(v::string())),
            ("relevance", v::float64()),
            ("usedAt", opt(ms())),
            ("feedback", opt(literals(&["used", "dismissed", "upvoted"]))),
            ("createdAt", ms()),
            ("provenance", opt(provenance())),
        ]),
    )
    .index("by_meeting_type", &["meetingId", "type"])
    .index("by_meeting_relevance", &["meetingId", "relevance"])
    .index(
        "by_meeting_type_relevance",
        &["meetingId", "type", "relevance"],
    )
}

/// Added `provenance` (see [`provenance`]).
/// One of an insight's `recommendations` (also what `insights.store` takes). Added `userId`,
/// the user recommended, so a block between them and the owner hides it; optional, so
/// insights stored before it still validate.
pub fn insight_recommendation() -> Validator {
    v::object([
        ("type", v::string()),
        ("content", v::string()),
        ("confidence", v::float64()),
        ("userId", opt(v::id(USERS))),
    ])
}

/// One of an insight's `links` (also what `insights.store` takes).
pub fn insight_link() -> Validator {
    v::object([
        ("type", v::string()),
        ("url", v::string()),
        ("title", v::string()),
    ])
}

/// One of an insight's `quotes` (also what `insights.store` takes): added so the erasure of a
/// participant can redact what others' insights quote of them (see `api::ai::Quote`).
pub fn insight_quote() -> Validator {
    v::object([
        ("userId", v::id(USERS)),
        ("part", literals(&["summary", "actionItem", "link"])),
        ("index", v::int64()),
    ])
}

fn insights() -> TableDefinition {
    TableDefinition::new(
        INSIGHTS,
        v::object([
            ("userId", v::id(USERS)),
            ("meetingId", v::id(MEETINGS)),
            ("summary", v::string()),
            ("actionItems", v::array(v::string())),
            ("recommendations", v::array(insight_recommendation())),
            ("links", v::array(insight_link())),
            ("quotes", opt(v::array(insight_quote()))),
            ("createdAt", ms()),
            ("provenance", opt(provenance())),
        ]),
    )
    .index("by_user", &["userId"])
    .index("by_meeting", &["meetingId"])
    .index("by_user_meeting", &["userId", "meetingId"])
}

/// Added: the post-call insight generations in progress, one per meeting from `meetings.end`
/// until its job chain's last run (then deleted). `run` numbers the chain (a restarted chain
/// gets the next one, and runs of an older chain do nothing); `dueAt` is when its latest run
/// was due, so `insights.resumeStalled` finds a chain that stopped (the engine records an
/// action interrupted by a restart as failed and never runs it again).
fn insight_runs() -> TableDefinition {
    TableDefinition::new(
        INSIGHT_RUNS,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("run", v::int64()),
            ("dueAt", ms()),
            ("resumes", v::int64()),
            ("createdAt", ms()),
        ]),
    )
    .index("by_meeting", &["meetingId"])
    .index("by_due", &["dueAt"])
}

fn matching_queue() -> TableDefinition {
    TableDefinition::new(
        MATCHING_QUEUE,
        v::object([
            ("userId", v::id(USERS)),
            ("availableFrom", ms()),
            ("availableTo", ms()),
            (
                "constraints",
                v::object([
                    ("interests", v::array(v::string())),
                    ("roles", v::array(v::string())),
                    ("orgConstraints", opt(v::string())),
                ]),
            ),
            (
                "status",
                literals(&["waiting", "matched", "expired", "cancelled"]),
            ),
            ("matchedWith", opt(v::id(USERS))),
            ("createdAt", ms()),
            ("updatedAt", ms()),
            // Added: what the match was scored with (set with `matchedWith`), so the outcome
            // recorded later in `matchingAnalytics` carries the features and weights that
            // made it, not ones recomputed from profiles changed since.
            (
                "match",
                opt(v::object([
                    ("matchId", v::string()),
                    ("matchedAt", ms()),
                    ("score", v::float64()),
                    ("features", v::any()),
                    ("weights", v::any()),
                ])),
            ),
        ]),
    )
    .index("by_user", &["userId"])
    .index("by_status", &["status"])
    .index("by_availability", &["availableFrom", "availableTo"])
    // Added: waiting entries by the end of their window, so a matching cycle reads the
    // entries that can still meet (most urgent first) and expiry reads the ended ones, each
    // as one range; finished entries are purged by the same index.
    .index("by_status_and_end", &["status", "availableTo"])
}

fn matching_analytics() -> TableDefinition {
    TableDefinition::new(
        MATCHING_ANALYTICS,
        v::object([
            ("userId", v::id(USERS)),
            ("matchId", v::string()),
            ("outcome", literals(&["accepted", "declined", "completed"])),
            (
                "feedback",
                opt(v::object([
                    // A 1–5 star rating: a count, so int64.
                    ("rating", v::int64()),
                    ("comments", opt(v::string())),
                ])),
            ),
            ("features", v::any()),
            ("weights", v::any()),
            ("createdAt", ms()),
        ]),
    )
    .index("by_user", &["userId"])
    .index("by_match", &["matchId"])
    .index("by_outcome", &["outcome"])
}

fn embeddings() -> TableDefinition {
    TableDefinition::new(
        EMBEDDINGS,
        v::object([
            (
                "sourceType",
                literals(&["user", "profile", "meeting", "note", "transcriptSegment"]),
            ),
            ("sourceId", v::string()),
            ("vector", v::array(v::float64())),
            ("model", v::string()),
            ("dimensions", v::int64()),
            ("version", v::string()),
            ("metadata", v::any()),
            ("createdAt", ms()),
        ]),
    )
    .index("by_source", &["sourceType", "sourceId"])
    .index("by_model", &["model"])
    .index("by_created", &["createdAt"])
}

fn vector_index_meta() -> TableDefinition {
    TableDefinition::new(
        VECTOR_INDEX_META,
        v::object([
            ("provider", v::string()),
            ("indexName", v::string()),
            ("config", v::any()),
            ("status", literals(&["active", "inactive", "migrating"])),
            ("createdAt", ms()),
            ("updatedAt", ms()),
        ]),
    )
    .index("by_provider", &["provider"])
    .index("by_status", &["status"])
}

fn messages() -> TableDefinition {
    TableDefinition::new(
        MESSAGES,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            // Absent for system messages.
            ("userId", opt(v::id(USERS))),
            ("content", v::string()),
            ("attachments", opt(v::array(v::any()))),
            ("timestamp", ms()),
        ]),
    )
    .index("by_meeting", &["meetingId"])
    .index("by_meeting_time", &["meetingId", "timestamp"])
    // Added: an author's messages, so erasing a user's personal data finds them.
    .index("by_user", &["userId", "timestamp"])
}

/// Added `result` (what the first call returned, replayed to retries) and `expiresAt` with
/// `by_expiry`, so expired keys can be found and purged without a scan.
fn idempotency_keys() -> TableDefinition {
    TableDefinition::new(
        IDEMPOTENCY_KEYS,
        v::object([
            ("key", v::string()),
            ("scope", v::string()),
            ("result", opt(v::any())),
            ("createdAt", ms()),
            ("expiresAt", ms()),
        ]),
    )
    .index("by_key_scope", &["key", "scope"])
    .index("by_expiry", &["expiresAt"])
}

/// Added `shard`: a user's concurrent calls spread their increments over several counter
/// documents per window bucket, so they do not all write (and conflict on) one document. The
/// seed's index gains `shard` as a last field; prefix reads over a window work as before.
fn rate_limits() -> TableDefinition {
    TableDefinition::new(
        RATE_LIMITS,
        v::object([
            ("userId", v::id(USERS)),
            ("action", v::string()),
            ("windowStartMs", ms()),
            ("shard", v::int64()),
            ("count", v::int64()),
            ("createdAt", ms()),
            ("updatedAt", ms()),
        ]),
    )
    .index(
        "by_user_action_window",
        &["userId", "action", "windowStartMs", "shard"],
    )
    // Added: old buckets are purged by window start.
    .index("by_window", &["windowStartMs"])
}

/// Added (not in the seed): one running aggregate per (user, action) of the `rateLimits`
/// buckets that have ended, so a check reads one document instead of summing every counter
/// document of the window. `counts[k]` is the calls counted in the bucket that started
/// `(k + 1) × bucketMs` before `throughMs`; buckets starting at or after `throughMs` are not
/// folded in yet. `windowMs`/`bucketMs` say which limit it was built for (a change rebuilds it).
fn rate_limit_windows() -> TableDefinition {
    TableDefinition::new(
        RATE_LIMIT_WINDOWS,
        v::object([
            ("userId", v::id(USERS)),
            ("action", v::string()),
            ("windowMs", ms()),
            ("bucketMs", ms()),
            ("throughMs", ms()),
            ("counts", v::array(v::int64())),
            // Calls counted in this document for the bucket starting at `throughMs`.
            ("currentCount", v::optional(v::int64())),
            ("createdAt", ms()),
        ]),
    )
    // Not purged: one document per (user, limited action), rebuilt when stale.
    .index("by_user_action", &["userId", "action"])
}

/// Added `orgId` (the actor's organisation) with `by_org_time`, so an organisation admin reads
/// the organisation's log as one range; the other indexes gain `timestamp` as a last field so
/// a time range within an actor, resource or action is one range too.
fn audit_logs() -> TableDefinition {
    TableDefinition::new(
        AUDIT_LOGS,
        v::object([
            ("actorUserId", opt(v::id(USERS))),
            ("orgId", opt(v::string())),
            ("resourceType", v::string()),
            ("resourceId", v::string()),
            ("action", v::string()),
            ("metadata", v::any()),
            ("ipAddress", opt(v::string())),
            ("userAgent", opt(v::string())),
            ("timestamp", ms()),
        ]),
    )
    .index("by_actor", &["actorUserId", "timestamp"])
    .index("by_resource", &["resourceType", "resourceId", "timestamp"])
    .index("by_timestamp", &["timestamp"])
    .index("by_action", &["action", "timestamp"])
    .index("by_org_time", &["orgId", "timestamp"])
}

/// Added `scope`: `"global"` for the platform default, or `"org:<orgId>"` for one
/// organisation's override. An organisation admin may change only their own organisation's
/// flags; in the seed any admin's change would have reached every tenant.
fn feature_flags() -> TableDefinition {
    TableDefinition::new(
        FEATURE_FLAGS,
        v::object([
            ("key", v::string()),
            ("value", v::any()),
            ("environment", v::string()),
            ("scope", v::string()),
            ("rolloutPercentage", v::float64()),
            ("updatedBy", v::id(USERS)),
            ("reason", opt(v::string())),
            ("createdAt", ms()),
            ("updatedAt", ms()),
        ]),
    )
    .index("by_key", &["key"])
    .index("by_environment", &["environment"])
    .index("by_key_env", &["key", "environment"])
    .index("by_key_env_scope", &["key", "environment", "scope"])
}

/// Added (seed §20: "upon request, personal data"): one document per user who asked for their
/// personal data to be erased, and the state of the paged job that erases it (`phase` and the
/// cursors say where the next page starts; `run` is the number the next page must carry, so a
/// repeated page does nothing). Kept as the record that the erasure happened: it holds ids,
/// timestamps and counts, no personal data.
fn erasure_requests() -> TableDefinition {
    TableDefinition::new(
        ERASURE_REQUESTS,
        v::object([
            ("userId", v::id(USERS)),
            // The organisation the account was in, so its admins see the erasure in their log.
            ("orgId", opt(v::string())),
            ("source", literals(&["user", "operator"])),
            ("status", literals(&["pending", "running", "done"])),
            ("phase", v::string()),
            ("cursor", opt(v::string())),
            ("meetingId", opt(v::id(MEETINGS))),
            ("meetingPhase", opt(v::string())),
            ("meetingCursor", opt(v::string())),
            ("run", v::int64()),
            ("steps", v::int64()),
            // Documents deleted or redacted, by table.
            ("counts", v::any()),
            ("requestedAt", ms()),
            ("updatedAt", ms()),
            ("completedAt", opt(ms())),
        ]),
    )
    .index("by_user", &["userId"])
    // Requests still in progress by their last progress, so a stalled one is found and resumed.
    .index("by_status_updated", &["status", "updatedAt"])
}

/// Added (seed §24, do-not-match lists): one document per (blocker, blocked) pair; a block
/// keeps the two apart both ways (connection requests, matching). `reason` is the blocker's
/// private note. Each side's index ends with `createdAt`, so "whom I block, newest first" and
/// "who blocks me" are one range each; `by_pair` is the point lookup of one direction.
fn user_blocks() -> TableDefinition {
    TableDefinition::new(
        USER_BLOCKS,
        v::object([
            ("blockerId", v::id(USERS)),
            ("blockedId", v::id(USERS)),
            ("reason", opt(v::string())),
            ("createdAt", ms()),
        ]),
    )
    .index("by_blocker", &["blockerId", "createdAt"])
    .index("by_blocked", &["blockedId", "createdAt"])
    .index("by_pair", &["blockerId", "blockedId"])
}

/// Added (seed §20, erasure on request): one document per removal of a user from a meeting.
/// Removing a participant deletes its `meetingParticipants` record, and with it the only
/// link from the user to the meeting's transcript they spoke; erasure reads these to find
/// those meetings too. Kept as long as the longest-kept transcript data (segments, a year),
/// then purged by retention.
fn former_participants() -> TableDefinition {
    TableDefinition::new(
        FORMER_PARTICIPANTS,
        v::object([
            ("meetingId", v::id(MEETINGS)),
            ("userId", v::id(USERS)),
            ("role", literals(&PARTICIPANT_ROLES)),
            ("removedBy", v::id(USERS)),
            ("removedAt", ms()),
        ]),
    )
    .index("by_user", &["userId", "meetingId"])
}

/// The complete LinkedUp schema.
pub fn schema() -> SchemaDefinition {
    SchemaDefinition::new()
        .table(users())
        .table(profiles())
        .table(interests())
        .table(user_interests())
        .table(connections())
        .table(meetings())
        .table(meeting_participants())
        .table(meeting_state())
        .table(meeting_notes())
        .table(note_ops())
        .table(transcripts())
        .table(transcript_segments())
        .table(prompts())
        .table(insights())
        .table(matching_queue())
        .table(matching_analytics())
        .table(embeddings())
        .table(vector_index_meta())
        .table(messages())
        .table(idempotency_keys())
        .table(rate_limits())
        .table(rate_limit_windows())
        .table(audit_logs())
        .table(feature_flags())
        .table(erasure_requests())
        .table(user_blocks())
        .table(former_participants())
        .table(insight_runs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_accepted_by_the_engine_checks() {
        let s = schema();
        s.check().unwrap();
        assert_eq!(s.tables.len(), 28);
    }

    #[test]
    fn ot_operations_fit_the_note_ops_validator() {
        use crate::ot::TextOperation;
        use query_engine::json::to_value;
        let op = TextOperation::new()
            .retain(3)
            .insert("hé")
            .delete(2)
            .retain(1);
        let value = to_value(&op).unwrap();
        ot_operation()
            .validate(&value, &std::collections::BTreeMap::new())
            .unwrap();
    }
}
