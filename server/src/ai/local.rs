//! The local provider: deterministic heuristics over the request itself, needing no network
//! and no configuration. It is the default provider and the fallback when the configured one
//! fails. Pre-call ideas come from the participants' shared and complementary interests,
//! goals and the meeting's title; in-call prompts from the current topics, the last open
//! question and lulls; a post-call insight from an extractive summary (the most central
//! sentences), sentences that commit to something, and the other participants' interests;
//! embeddings from feature hashing (`text::hashed_embedding`). Equal input, equal output.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::{self, BoxFuture, FutureExt};
use linkedup_schema::api::ai::Recommendation;
use tokio::time::Instant;

use super::text::{self, content_words, keywords, truncate};
use super::{
    AiError, AiProvider, Idea, InCallRequest, InsightDraft, ParticipantProfile, PostCallRequest,
    PreCallRequest, MAX_ITEM_CHARS, MAX_SUMMARY_CHARS, MAX_TAGS, MAX_TAG_CHARS,
};

/// The name the heuristics go by in provenance.
pub const LOCAL_MODEL: &str = "local-heuristics-v1";
/// The local embedding model: feature hashing into `LOCAL_DIMENSIONS` dimensions.
pub const LOCAL_EMBEDDING_MODEL: &str = "local-hash-256";
/// Bumped whenever the hashing changes, so old vectors can be told apart.
pub const LOCAL_EMBEDDING_VERSION: &str = "fnv1a-words-bigrams-v1";
pub const LOCAL_DIMENSIONS: usize = 256;

const PRE_CALL_IDEAS: usize = 6;
const IN_CALL_PROMPTS: usize = 4;
const SUMMARY_SENTENCES: usize = 3;
const ACTION_ITEMS: usize = 8;
const CONNECTIONS: usize = 3;
const TOPIC_FOLLOW_UPS: usize = 2;
/// Most sentences an insight considers (bounds the work on long meetings).
const MAX_SENTENCES: usize = 3_000;

/// Words and word pairs that mark a sentence as a commitment (an action item).
const COMMITMENT_WORDS: [&str; 9] = [
    "will", "todo", "send", "share", "schedule", "deadline", "deliver", "assign", "followup",
];
const COMMITMENT_PAIRS: [(&str, &str); 7] = [
    ("follow", "up"),
    ("next", "step"),
    ("next", "steps"),
    ("to", "do"),
    ("action", "item"),
    ("need", "to"),
    ("going", "to"),
];

#[derive(Clone, Copy, Debug, Default)]
pub struct LocalProvider;

impl AiProvider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn chat_model(&self) -> &str {
        LOCAL_MODEL
    }

    fn embedding_model(&self) -> &str {
        LOCAL_EMBEDDING_MODEL
    }

    fn embedding_version(&self) -> &str {
        LOCAL_EMBEDDING_VERSION
    }

    fn generation_params(&self) -> Option<(f64, i64)> {
        None
    }

    fn pre_call_ideas<'a>(
        &'a self,
        r: &'a PreCallRequest,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<Idea>, AiError>> {
        future::ready(Ok(self.ideas_before(r))).boxed()
    }

    fn in_call_prompts<'a>(
        &'a self,
        r: &'a InCallRequest,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<Idea>, AiError>> {
        future::ready(Ok(self.prompts_during(r))).boxed()
    }

    fn post_call_insight<'a>(
        &'a self,
        r: &'a PostCallRequest,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<InsightDraft, AiError>> {
        future::ready(Ok(self.insight_after(r))).boxed()
    }

    fn embed<'a>(
        &'a self,
        model: &'a str,
        texts: &'a [String],
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<Vec<Vec<f64>>, AiError>> {
        future::ready(self.embed_texts(model, texts)).boxed()
    }
}

impl LocalProvider {
    /// Conversation ideas before a meeting.
    pub fn ideas_before(&self, r: &PreCallRequest) -> Vec<Idea> {
        let n = r.participants.len();
        let description = r.description.as_deref().unwrap_or("");
        let agenda = keywords([r.title.as_str(), description], 3);
        let mut ideas = vec![agenda_idea(&r.title, &agenda)];
        for (label, names) in interest_holders(&r.participants).values() {
            if names.len() >= 2 {
                let share = names.len() as f64 / n.max(1) as f64;
                let who = if names.len() == 2 { "both" } else { "all" };
                ideas.push(idea(
                    format!(
                        "Compare notes on {label}: {} {who} list it as an interest.",
                        list(names)
                    ),
                    &["shared-interest", label],
                    0.55 + 0.35 * share,
                ));
            } else if n >= 2 {
                ideas.push(idea(
                    format!(
                        "Ask {} about {label}: it is one of their interests and new to the others.",
                        names[0]
                    ),
                    &["complementary", label],
                    0.5,
                ));
            }
        }
        let subject = agenda
            .first()
            .cloned()
            .unwrap_or_else(|| format!("“{}”", truncate(&r.title, 80)));
        for p in &r.participants {
            if let Some(goal) = non_blank(&p.goals) {
                ideas.push(idea(
                    format!(
                        "Ask {} about their goal: “{}”.",
                        p.name,
                        truncate(goal, 160)
                    ),
                    &["goal"],
                    0.7,
                ));
            } else if let Some(experience) = non_blank(&p.experience) {
                ideas.push(idea(
                    format!(
                        "Ask {} how their experience ({}) bears on {subject}.",
                        p.name,
                        truncate(experience, 100)
                    ),
                    &["experience"],
                    0.45,
                ));
            }
        }
        finish(ideas, PRE_CALL_IDEAS)
    }

    /// Prompts for a running meeting: after a lull, ways back into the conversation; on a
    /// topic shift, ways deeper into it.
    pub fn prompts_during(&self, r: &InCallRequest) -> Vec<Idea> {
        let lull = r.lull_detected;
        let trigger = if lull { "lull" } else { "topicShift" };
        let mut seen = BTreeSet::new();
        let mut topics: Vec<String> = r
            .current_topics
            .iter()
            .map(|t| truncate(t.trim(), 60))
            .filter(|t| !t.is_empty() && seen.insert(t.to_lowercase()))
            .collect();
        let spoken = keywords([r.recent_transcript.as_str()], 5);
        if topics.is_empty() {
            topics = spoken.iter().take(3).cloned().collect();
        }
        let mut ideas = Vec::new();
        let last = text::sentences(&r.recent_transcript).pop();
        if let Some(q) = last.filter(|s| s.ends_with('?') && content_words(s).len() >= 2) {
            ideas.push(idea(
                format!(
                    "Make sure this question gets an answer: “{}”",
                    truncate(&q, 200)
                ),
                &[trigger, "open-question"],
                0.85,
            ));
        }
        for (i, topic) in topics.iter().take(2).enumerate() {
            let content = if lull {
                format!("Pick {topic} back up: what is the next concrete step on it?")
            } else {
                format!("Dig deeper into {topic}: what is the biggest open question about it?")
            };
            ideas.push(idea(content, &[trigger, topic], 0.8 - 0.05 * i as f64));
        }
        for topic in topics.iter().take(3) {
            let words: BTreeSet<String> = content_words(topic).into_iter().collect();
            let bridge = r.participants.iter().find_map(|p| {
                p.interests
                    .iter()
                    .find(|i| content_words(i).iter().any(|w| words.contains(w)))
                    .map(|i| (p, i))
            });
            if let Some((p, interest)) = bridge {
                ideas.push(idea(
                    format!(
                        "Ask {} how {topic} connects with their interest in {interest}.",
                        p.name
                    ),
                    &[trigger, "bridge"],
                    0.7,
                ));
            }
        }
        if lull {
            if let Some((label, names)) = interest_holders(&r.participants)
                .into_values()
                .find(|(_, names)| names.len() >= 2)
            {
                ideas.push(idea(
                    format!("Switch to {label}, which {} share.", list(&names)),
                    &[trigger, "shared-interest"],
                    0.6,
                ));
            }
            ideas.push(idea(
                format!(
                    "Go round the room: what does each of you want to leave “{}” with?",
                    truncate(&r.title, 80)
                ),
                &[trigger],
                0.4,
            ));
        } else {
            let covered: BTreeSet<String> = topics.iter().flat_map(|t| content_words(t)).collect();
            if let Some(kw) = spoken.iter().find(|k| !covered.contains(*k)) {
                ideas.push(idea(
                    format!("“{kw}” keeps coming up: is it worth its own discussion?"),
                    &[trigger, kw],
                    0.55,
                ));
            }
            ideas.push(idea(
                format!(
                    "Check in: is “{}” still on track for what you wanted to decide?",
                    truncate(&r.title, 80)
                ),
                &[trigger],
                0.35,
            ));
        }
        finish(ideas, IN_CALL_PROMPTS)
    }

    /// A participant's insight: an extractive summary, the meeting's commitments (theirs
    /// first), and connections and follow-ups from the interests they share with the others.
    pub fn insight_after(&self, r: &PostCallRequest) -> InsightDraft {
        let me = r.participants.iter().find(|p| p.user_id == r.for_user);
        let sentences = sentences_of(r);
        InsightDraft {
            summary: summary(r, &sentences),
            action_items: action_items(&sentences, me),
            recommendations: recommendations(r, me, &sentences),
        }
    }

    fn embed_texts(&self, model: &str, texts: &[String]) -> Result<Vec<Vec<f64>>, AiError> {
        if model != LOCAL_EMBEDDING_MODEL {
            return Err(AiError::UnsupportedModel {
                model: model.to_string(),
                available: LOCAL_EMBEDDING_MODEL.to_string(),
            });
        }
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                text::hashed_embedding(t, LOCAL_DIMENSIONS)
                    .ok_or_else(|| AiError::Invalid(format!("text {i} has no words to embed")))
            })
            .collect()
    }
}

fn non_blank(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// "A", "A and B", "A, B and C", "A, B, C and 2 others".
fn list(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [a] => a.clone(),
        [init @ .., last] if names.len() <= 3 => format!("{} and {last}", init.join(", ")),
        _ => format!("{} and {} others", names[..3].join(", "), names.len() - 3),
    }
}

/// Relevances and confidences are rounded to hundredths: stable to compare and to read.
fn round2(x: f64) -> f64 {
    (x.clamp(0.0, 1.0) * 100.0).round() / 100.0
}

fn idea(content: String, tags: &[&str], relevance: f64) -> Idea {
    let mut seen = BTreeSet::new();
    let tags = tags
        .iter()
        .map(|t| truncate(t.trim(), MAX_TAG_CHARS))
        .filter(|t| !t.is_empty() && seen.insert(t.to_lowercase()))
        .take(MAX_TAGS)
        .collect();
    Idea {
        content: truncate(&content, MAX_ITEM_CHARS),
        tags,
        relevance: round2(relevance),
    }
}

/// The best `max` ideas: by relevance, then by text; duplicates dropped.
fn finish(mut ideas: Vec<Idea>, max: usize) -> Vec<Idea> {
    ideas.sort_by(|a, b| {
        b.relevance
            .total_cmp(&a.relevance)
            .then_with(|| a.content.cmp(&b.content))
    });
    let mut seen = BTreeSet::new();
    ideas.retain(|i| seen.insert(i.content.to_lowercase()));
    ideas.truncate(max);
    ideas
}

fn agenda_idea(title: &str, agenda: &[String]) -> Idea {
    let title = truncate(title, 120);
    if agenda.is_empty() {
        return idea(
            format!("Open by agreeing on what “{title}” should achieve."),
            &["agenda"],
            0.6,
        );
    }
    let mut tags = vec!["agenda"];
    tags.extend(agenda.iter().map(String::as_str));
    idea(
        format!(
            "Agree on what “{title}” should settle about {}.",
            list(agenda)
        ),
        &tags,
        0.8,
    )
}

/// Interests by lower-cased label: the label as first written and who holds it, in
/// participant order.
fn interest_holders(
    participants: &[ParticipantProfile],
) -> BTreeMap<String, (String, Vec<String>)> {
    let mut holders: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for p in participants {
        let mut own = BTreeSet::new();
        for i in &p.interests {
            let key = i.trim().to_lowercase();
            if key.is_empty() || !own.insert(key.clone()) {
                continue;
            }
            holders
                .entry(key)
                .or_insert_with(|| (i.trim().to_string(), Vec::new()))
                .1
                .push(p.name.clone());
        }
    }
    holders
}

/// A sentence of the transcript or the notes.
struct Sentence {
    text: String,
    speaker: Option<String>,
    words: Vec<String>,
}

fn sentences_of(r: &PostCallRequest) -> Vec<Sentence> {
    let notes = r.notes.iter().flat_map(|n| n.lines()).map(|line| {
        let line = line
            .trim()
            .trim_start_matches(['-', '*', '•'])
            .trim_start()
            .trim_start_matches("[ ]")
            .trim_start_matches("[x]")
            .trim_start();
        (None, line.to_string())
    });
    r.transcript
        .iter()
        .map(|p| (p.speaker.clone(), p.text.clone()))
        .chain(notes)
        .flat_map(|(speaker, body)| {
            text::sentences(&body)
                .into_iter()
                .map(move |s| (speaker.clone(), s))
        })
        .take(MAX_SENTENCES)
        .map(|(speaker, text)| Sentence {
            words: content_words(&text),
            text,
            speaker,
        })
        .collect()
}

/// The most central sentences (whose words the meeting uses most, the first three weighted
/// up as openings usually set the subject), in their original order.
fn summary(r: &PostCallRequest, sentences: &[Sentence]) -> String {
    let mut frequency: BTreeMap<&str, usize> = BTreeMap::new();
    for s in sentences {
        for w in &s.words {
            *frequency.entry(w.as_str()).or_default() += 1;
        }
    }
    let mut scored: Vec<(f64, usize)> = sentences
        .iter()
        .enumerate()
        .filter(|(_, s)| s.words.len() >= 3)
        .map(|(i, s)| {
            let unique: BTreeSet<&str> = s.words.iter().map(String::as_str).collect();
            let weight: usize = unique.iter().map(|w| frequency[w]).sum();
            let lead = if i < 3 { 1.2 } else { 1.0 };
            (lead * weight as f64 / (unique.len() as f64 + 1.0).sqrt(), i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<usize> = scored
        .iter()
        .take(SUMMARY_SENTENCES)
        .map(|(_, i)| *i)
        .collect();
    if chosen.is_empty() {
        chosen = (0..sentences.len().min(SUMMARY_SENTENCES)).collect();
    }
    chosen.sort_unstable();
    let text = chosen
        .iter()
        .map(|&i| sentences[i].text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        format!(
            "No transcript or notes were captured for “{}”.",
            truncate(&r.title, 200)
        )
    } else {
        truncate(&text, MAX_SUMMARY_CHARS / 2)
    }
}

fn is_commitment(sentence: &str) -> bool {
    if sentence.trim_end().ends_with('?') {
        return false;
    }
    let lower = sentence.to_lowercase();
    if lower.contains("'ll ") || lower.contains("’ll ") {
        return true;
    }
    let words = text::words(&lower);
    words.iter().any(|w| COMMITMENT_WORDS.contains(&w.as_str()))
        || words
            .windows(2)
            .any(|p| COMMITMENT_PAIRS.contains(&(p[0].as_str(), p[1].as_str())))
}

fn spoken_by(s: &Sentence, p: &ParticipantProfile) -> bool {
    s.speaker
        .as_deref()
        .is_some_and(|sp| sp == p.user_id || sp.eq_ignore_ascii_case(&p.name))
}

/// Sentences committing to something, the participant's own first.
fn action_items(sentences: &[Sentence], me: Option<&ParticipantProfile>) -> Vec<String> {
    let commitments: Vec<&Sentence> = sentences
        .iter()
        .filter(|s| is_commitment(&s.text))
        .collect();
    let (mine, others): (Vec<&Sentence>, Vec<&Sentence>) = commitments
        .into_iter()
        .partition(|s| me.is_some_and(|p| spoken_by(s, p)));
    let mut seen = BTreeSet::new();
    mine.into_iter()
        .chain(others)
        .map(|s| truncate(&s.text, 300))
        .filter(|t| seen.insert(t.to_lowercase()))
        .take(ACTION_ITEMS)
        .collect()
}

fn lower_set(labels: &[String]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|l| (l.trim().to_lowercase(), l.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// Connections (the other participants, by the interests they share with this one) and
/// follow-ups (the meeting's most discussed subjects, preferring this one's interests).
fn recommendations(
    r: &PostCallRequest,
    me: Option<&ParticipantProfile>,
    sentences: &[Sentence],
) -> Vec<Recommendation> {
    let mut recs = Vec::new();
    if let Some(me) = me {
        let mine = lower_set(&me.interests);
        let mut connections: Vec<Recommendation> = r
            .participants
            .iter()
            .filter(|p| p.user_id != me.user_id)
            .filter_map(|p| {
                let theirs = lower_set(&p.interests);
                let shared: Vec<String> = theirs
                    .iter()
                    .filter(|(k, _)| mine.contains_key(*k))
                    .map(|(_, label)| label.clone())
                    .collect();
                if !shared.is_empty() {
                    let union = mine.len() + theirs.len() - shared.len();
                    let top: Vec<String> = shared.iter().take(3).cloned().collect();
                    return Some(Recommendation {
                        kind: "connection".into(),
                        content: format!(
                            "Connect with {}: you share an interest in {}.",
                            p.name,
                            list(&top)
                        ),
                        confidence: round2(0.5 + 0.4 * shared.len() as f64 / union as f64),
                        user_id: Some(p.user_id.clone()),
                    });
                }
                (!theirs.is_empty() && !mine.is_empty()).then(|| {
                    let top: Vec<String> = theirs.values().take(2).cloned().collect();
                    Recommendation {
                        kind: "connection".into(),
                        content: format!("Connect with {} to learn about {}.", p.name, list(&top)),
                        confidence: 0.35,
                        user_id: Some(p.user_id.clone()),
                    }
                })
            })
            .collect();
        connections.sort_by(|a, b| {
            b.confidence
                .total_cmp(&a.confidence)
                .then_with(|| a.content.cmp(&b.content))
        });
        recs.extend(connections.into_iter().take(CONNECTIONS));
    }
    let discussed = keywords(sentences.iter().map(|s| s.text.as_str()), 8);
    let interests: Vec<(String, Vec<String>)> = me
        .map(|p| {
            p.interests
                .iter()
                .map(|i| (i.trim().to_string(), content_words(i)))
                .collect()
        })
        .unwrap_or_default();
    let topics: Vec<Recommendation> = discussed
        .iter()
        .filter_map(|kw| {
            interests
                .iter()
                .find(|(_, words)| words.contains(kw))
                .map(|(label, _)| Recommendation {
                    kind: "topic".into(),
                    content: format!(
                        "Follow up on {kw}: it came up in the meeting and matches your interest in {label}."
                    ),
                    confidence: 0.6,
                    user_id: None,
                })
        })
        .take(TOPIC_FOLLOW_UPS)
        .collect();
    if topics.is_empty() {
        if let Some(kw) = discussed.first() {
            recs.push(Recommendation {
                kind: "followUp".into(),
                content: format!(
                    "Review what was said about {kw}, the most discussed subject of “{}”.",
                    truncate(&r.title, 120)
                ),
                confidence: 0.4,
                user_id: None,
            });
        }
    }
    recs.extend(topics);
    for rec in &mut recs {
        rec.content = truncate(&rec.content, MAX_ITEM_CHARS);
    }
    recs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::{valid_ideas, valid_insight, TranscriptPiece};

    fn person(id: &str, name: &str, interests: &[&str], goals: Option<&str>) -> ParticipantProfile {
        ParticipantProfile {
            user_id: id.into(),
            name: name.into(),
            bio: None,
            goals: goals.map(String::from),
            experience: None,
            interests: interests.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn cast() -> Vec<ParticipantProfile> {
        vec![
            person(
                "u1",
                "Alice",
                &["Rust", "Databases"],
                Some("hire two engineers"),
            ),
            person("u2", "Bob", &["Rust", "Gardening"], None),
            person("u3", "Carol", &["Databases", "Rust"], None),
        ]
    }

    #[test]
    fn pre_call_ideas_come_from_shared_interests_goals_and_the_title() {
        let r = PreCallRequest {
            title: "Storage engine roadmap".into(),
            description: Some("Decide the storage engine milestones".into()),
            participants: cast(),
        };
        let ideas = LocalProvider.ideas_before(&r);
        valid_ideas(ideas.clone()).unwrap();
        let texts: Vec<&str> = ideas.iter().map(|i| i.content.as_str()).collect();
        // Rust is held by all three: the most relevant shared interest.
        assert!(
            texts.contains(
                &"Compare notes on Rust: Alice, Bob and Carol all list it as an interest."
            ),
            "{texts:#?}"
        );
        assert!(texts
            .iter()
            .any(|t| t.contains("Databases") && t.contains("Alice and Carol both")));
        assert!(texts.iter().any(|t| t.contains("hire two engineers")));
        assert!(texts
            .iter()
            .any(|t| t.contains("storage") && t.contains("engine")));
        // Sorted by relevance, and equal input gives equal output.
        assert!(ideas.windows(2).all(|w| w[0].relevance >= w[1].relevance));
        assert_eq!(ideas, LocalProvider.ideas_before(&r));
        // Another meeting, other ideas.
        let other = PreCallRequest {
            title: "Garden club".into(),
            description: None,
            participants: vec![cast().remove(1)],
        };
        assert_ne!(LocalProvider.ideas_before(&other), ideas);
    }

    #[test]
    fn in_call_prompts_follow_topics_questions_and_lulls() {
        let mut r = InCallRequest {
            title: "Roadmap".into(),
            recent_transcript: "We talked about compaction. How do we test compaction under load?"
                .into(),
            current_topics: vec!["compaction".into()],
            lull_detected: false,
            participants: cast(),
        };
        let prompts = LocalProvider.prompts_during(&r);
        valid_ideas(prompts.clone()).unwrap();
        assert!(prompts[0]
            .content
            .contains("How do we test compaction under load?"));
        assert!(prompts.iter().all(|p| p.tags[0] == "topicShift"));
        assert!(prompts
            .iter()
            .any(|p| p.content.starts_with("Dig deeper into compaction")));
        r.lull_detected = true;
        r.recent_transcript = "Rust is great.".into();
        r.current_topics = vec!["rust tooling".into()];
        let lull = LocalProvider.prompts_during(&r);
        assert!(lull.iter().all(|p| p.tags[0] == "lull"));
        assert!(lull.iter().any(
            |p| p.content == "Pick rust tooling back up: what is the next concrete step on it?"
        ));
        assert!(lull
            .iter()
            .any(|p| p.content.contains("Alice") && p.content.contains("interest in Rust")));
        assert_eq!(lull, LocalProvider.prompts_during(&r));
    }

    #[test]
    fn insights_summarise_extract_commitments_and_recommend_connections() {
        let r = PostCallRequest {
            title: "Roadmap".into(),
            description: None,
            transcript: vec![
                TranscriptPiece {
                    speaker: Some("u2".into()),
                    text: "The storage engine needs faster compaction. Compaction stalls writes today."
                        .into(),
                },
                TranscriptPiece {
                    speaker: Some("u1".into()),
                    text: "I'll send the compaction benchmark results by Friday. Nice weather today."
                        .into(),
                },
                TranscriptPiece {
                    speaker: Some("u3".into()),
                    text: "Next step: Carol profiles the storage engine writes. Should we?".into(),
                },
            ],
            notes: Some("- TODO: book the follow-up meeting".into()),
            participants: cast(),
            for_user: "u1".into(),
        };
        let insight = LocalProvider.insight_after(&r);
        valid_insight(insight.clone()).unwrap();
        assert!(
            insight.summary.contains("compaction"),
            "{}",
            insight.summary
        );
        assert_eq!(
            insight.action_items,
            [
                "I'll send the compaction benchmark results by Friday.",
                "Next step: Carol profiles the storage engine writes.",
                "TODO: book the follow-up meeting",
            ]
        );
        // Carol shares two interests with Alice, Bob one.
        let connections: Vec<&str> = insight
            .recommendations
            .iter()
            .filter(|r| r.kind == "connection")
            .map(|r| r.content.as_str())
            .collect();
        assert_eq!(
            connections,
            [
                "Connect with Carol: you share an interest in Databases and Rust.",
                "Connect with Bob: you share an interest in Rust.",
            ]
        );
        assert_eq!(insight, LocalProvider.insight_after(&r));
        // For Bob, his own commitments come first (he has none) and Alice is a connection.
        let bobs = LocalProvider.insight_after(&PostCallRequest {
            for_user: "u2".into(),
            ..r.clone()
        });
        assert!(bobs
            .recommendations
            .iter()
            .any(|r| r.content.starts_with("Connect with Alice")));
        let empty = LocalProvider.insight_after(&PostCallRequest {
            transcript: Vec::new(),
            notes: None,
            ..r
        });
        assert_eq!(
            empty.summary,
            "No transcript or notes were captured for “Roadmap”."
        );
        assert!(empty.action_items.is_empty());
    }

    #[test]
    fn local_embeddings_refuse_other_models_and_wordless_text() {
        let v = LocalProvider
            .embed_texts(LOCAL_EMBEDDING_MODEL, &["rust databases".into()])
            .unwrap();
        assert_eq!(v[0].len(), LOCAL_DIMENSIONS);
        assert!(matches!(
            LocalProvider.embed_texts("text-embedding-3-small", &["x".into()]),
            Err(AiError::UnsupportedModel { .. })
        ));
        assert!(LocalProvider
            .embed_texts(LOCAL_EMBEDDING_MODEL, &["the of".into()])
            .is_err());
    }

    #[test]
    fn lists_read_naturally() {
        let names = |n: usize| (0..n).map(|i| format!("P{i}")).collect::<Vec<_>>();
        assert_eq!(list(&names(1)), "P0");
        assert_eq!(list(&names(2)), "P0 and P1");
        assert_eq!(list(&names(3)), "P0, P1 and P2");
        assert_eq!(list(&names(5)), "P0, P1, P2 and 2 others");
    }
}
