//! Which pairs one shard's cycle proposes, as a pure function of the waiting parties it read
//! (`plan`). No O(N²) comparison:
//!
//! - Sharding picks the *initiators*: the parties whose user hashes to this shard. Candidates
//!   come from every waiting party, so pairs across shards are found (by either side's
//!   shard); two shards proposing overlapping pairs is resolved by the commit, which matches
//!   an entry only while it is still `waiting`.
//! - Blocking (sorted neighbourhood): every list is in urgency order (earliest window end
//!   first). An initiator is compared with its neighbours in the lists of its interest keys
//!   (rarest key first) and, to fill up to the cap, its neighbours in the whole queue, so a
//!   fit on roles, languages or embedding alone is still found. At most
//!   `max_candidates_per_user` comparisons per initiator.
//! - Greedy: the compatible pairs scoring at least `min_score` are taken best first, each
//!   party at most once.

use std::collections::{BTreeMap, HashSet};

use linkedup_schema::api::matching::MatchFeatures;

use super::eligibility;
use super::parties::Party;
use super::scoring::{features, score};
use super::MatchingConfig;
use crate::linkedup::stable_hash;

/// The shard a user initiates in, of `shards` (a stable hash, so a user stays in one shard
/// while the count holds).
pub fn shard_of(user_id: &str, shards: u32) -> u32 {
    (stable_hash(&[user_id.as_bytes()]) % u64::from(shards.max(1))) as u32
}

/// A pair to match, by index into the parties planned over.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    pub a: usize,
    pub b: usize,
    pub features: MatchFeatures,
    pub score: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Best first; no party twice.
    pub proposals: Vec<Proposal>,
    /// Pairs compared that passed the hard constraints (and were scored).
    pub candidates: usize,
}

/// The pairs shard `shard` of `shards` proposes among `parties` (in urgency order: earliest
/// window end first) at `now_ms`.
pub fn plan(
    parties: &[Party],
    (shard, shards): (u32, u32),
    now_ms: i64,
    config: &MatchingConfig,
) -> Plan {
    let rules = config.rules();
    let cap = config.max_candidates_per_user.max(1);
    let usable: Vec<bool> = parties
        .iter()
        .map(|p| p.can_match && eligibility::can_still_meet(p, now_ms, &rules))
        .collect();
    let mut postings: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in parties.iter().enumerate().filter(|(i, _)| usable[*i]) {
        for key in &p.interests {
            postings.entry(key.as_str()).or_default().push(i);
        }
    }
    let queue: Vec<usize> = (0..parties.len()).filter(|&i| usable[i]).collect();

    let mut scored = HashSet::new();
    let mut edges = Vec::new();
    let mut candidates = 0;
    for (i, p) in parties.iter().enumerate() {
        if !usable[i] || shard_of(&p.user_id, shards) != shard {
            continue;
        }
        for j in candidates_of(i, p, &postings, &queue, cap) {
            let key = (i.min(j), i.max(j));
            if !scored.insert(key) {
                continue;
            }
            let q = &parties[j];
            if eligibility::check(p, q, now_ms, &rules).is_err() {
                continue;
            }
            candidates += 1;
            let f = features(p, q, &config.roles);
            let s = score(&f, &config.weights);
            if s >= config.min_score {
                edges.push(Proposal {
                    a: key.0,
                    b: key.1,
                    features: f,
                    score: s,
                });
            }
        }
    }
    Plan {
        proposals: greedy(edges, parties.len()),
        candidates,
    }
}

/// Up to `cap` parties to compare initiator `i` with, nearest first: its neighbours in the
/// lists of its interest keys (rarest key first), then its neighbours in the whole queue.
/// Neighbours rather than the head of each list, so that under a popular key every initiator
/// meets different candidates instead of all competing for the same few.
fn candidates_of(
    i: usize,
    p: &Party,
    postings: &BTreeMap<&str, Vec<usize>>,
    queue: &[usize],
    cap: usize,
) -> Vec<usize> {
    let mut lists: Vec<&[usize]> = p
        .interests
        .iter()
        .filter_map(|k| postings.get(k.as_str()).map(Vec::as_slice))
        .collect();
    lists.sort_by_key(|list| list.len());
    lists.push(queue);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for list in lists {
        for j in nearest(list, i).take(cap + 1) {
            if out.len() >= cap {
                return out;
            }
            if j != i && seen.insert(j) {
                out.push(j);
            }
        }
    }
    out
}

/// The entries of the ascending `list` by distance from where `i` is (or would be) in it:
/// the next, the previous, the one after next, and so on.
fn nearest(list: &[usize], i: usize) -> impl Iterator<Item = usize> + '_ {
    let at = list.binary_search(&i).unwrap_or_else(|insert_at| insert_at);
    let (before, after) = list.split_at(at);
    let mut before = before.iter().rev();
    let mut after = after.iter().skip_while(move |&&j| j == i);
    let mut take_after = true;
    std::iter::from_fn(move || {
        let first = if take_after {
            after.next()
        } else {
            before.next()
        };
        take_after = !take_after;
        first.or_else(|| {
            if take_after {
                after.next()
            } else {
                before.next()
            }
        })
    })
    .copied()
}

/// Best score first (ties: the more urgent pair), each party at most once.
fn greedy(mut edges: Vec<Proposal>, parties: usize) -> Vec<Proposal> {
    edges.sort_by(|x, y| {
        y.score
            .total_cmp(&x.score)
            .then(x.a.cmp(&y.a))
            .then(x.b.cmp(&y.b))
    });
    let mut taken = vec![false; parties];
    let mut out = Vec::new();
    for e in edges {
        if !taken[e.a] && !taken[e.b] {
            taken[e.a] = true;
            taken[e.b] = true;
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn party(user: &str, interests: &[&str]) -> Party {
        Party {
            entry_id: format!("e-{user}"),
            user_id: user.into(),
            can_match: true,
            available_from: 0,
            available_to: 2 * HOUR,
            interests: interests.iter().map(|s| s.to_string()).collect(),
            ..Party::default()
        }
    }

    fn config() -> MatchingConfig {
        MatchingConfig {
            min_score: 0.1,
            ..MatchingConfig::default()
        }
    }

    fn users(plan: &Plan, parties: &[Party]) -> Vec<(String, String)> {
        plan.proposals
            .iter()
            .map(|p| (parties[p.a].user_id.clone(), parties[p.b].user_id.clone()))
            .collect()
    }

    #[test]
    fn the_best_pairs_are_taken_first_and_nobody_twice() {
        let parties = vec![
            party("a", &["rust", "ai"]),
            party("b", &["rust", "ai"]),
            party("c", &["rust"]),
            party("d", &["cooking"]),
        ];
        let plan = plan(&parties, (0, 1), 0, &config());
        assert_eq!(users(&plan, &parties), vec![("a".into(), "b".into())]);
        // c and d share nothing (score 0, below the threshold); all six pairs were compared.
        assert_eq!(plan.candidates, 6);
    }

    #[test]
    fn every_pair_is_found_by_some_shard_whichever_shard_its_users_are_in() {
        let parties: Vec<Party> = (0..40)
            .map(|i| party(&format!("user{i}"), &[&format!("k{}", i / 2)]))
            .collect();
        let shards = 3;
        let mut found = HashSet::new();
        for shard in 0..shards {
            for (a, b) in users(&plan(&parties, (shard, shards), 0, &config()), &parties) {
                found.insert((a, b));
            }
        }
        for i in (0..40).step_by(2) {
            let pair = (format!("user{i}"), format!("user{}", i + 1));
            let cross = shard_of(&pair.0, shards) != shard_of(&pair.1, shards);
            assert!(found.contains(&pair), "{pair:?} (cross-shard: {cross})");
        }
    }

    #[test]
    fn comparisons_are_capped_per_initiator() {
        let parties: Vec<Party> = (0..200)
            .map(|i| party(&format!("u{i}"), &["everyone"]))
            .collect();
        let config = MatchingConfig {
            max_candidates_per_user: 8,
            ..config()
        };
        let plan = plan(&parties, (0, 1), 0, &config);
        assert!(plan.candidates <= 200 * 8, "{}", plan.candidates);
        assert_eq!(plan.proposals.len(), 100);
    }

    #[test]
    fn unusable_and_expired_parties_are_not_proposed() {
        let mut off = party("off", &["rust"]);
        off.can_match = false;
        let mut ended = party("ended", &["rust"]);
        ended.available_to = HOUR;
        let parties = vec![party("a", &["rust"]), off, ended];
        let plan = plan(&parties, (0, 1), HOUR - 1, &config());
        assert!(plan.proposals.is_empty());
        assert_eq!(plan.candidates, 0);
    }
}
