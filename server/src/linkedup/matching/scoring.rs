//! How well two parties fit, as pure functions: the signals (`features`: shared interests,
//! complementary roles, shared languages, embedding similarity), each in [0, 1], and their
//! weighted mean (`score`). Every signal is symmetric, so the score is too.
//!
//! A signal that is absent for a pair (a side lists no languages, a side has no embedding or
//! the two embeddings come from different models or dimensions) is left out of the mean
//! rather than counted as 0: a missing profile field says nothing about the fit. Interests and
//! roles are always present (no shared interest is a 0).

use std::collections::BTreeSet;

use linkedup_schema::api::matching::{MatchFeatures, MatchWeights};

use super::parties::{Embedding, Party};

/// Which roles complement which (symmetric): a mentor meets a mentee, a founder an investor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleComplements {
    pairs: BTreeSet<(String, String)>,
}

impl RoleComplements {
    /// The relation of `pairs`, each taken both ways (`("peer", "peer")` makes a role its own
    /// complement).
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut set = BTreeSet::new();
        for (x, y) in pairs {
            set.insert((x.to_string(), y.to_string()));
            set.insert((y.to_string(), x.to_string()));
        }
        RoleComplements { pairs: set }
    }

    /// Whether `role` appears in the relation: the roles `matching.enterQueue` accepts.
    pub fn knows(&self, role: &str) -> bool {
        self.pairs.iter().any(|(x, _)| x == role)
    }

    /// Every known role, sorted.
    pub fn roles(&self) -> BTreeSet<&str> {
        self.pairs.iter().map(|(x, _)| x.as_str()).collect()
    }

    fn complements(&self, x: &str, y: &str) -> bool {
        self.pairs.contains(&(x.to_string(), y.to_string()))
    }
}

impl Default for RoleComplements {
    fn default() -> Self {
        RoleComplements::new([
            ("mentor", "mentee"),
            ("founder", "investor"),
            ("recruiter", "candidate"),
            ("expert", "learner"),
            ("peer", "peer"),
        ])
    }
}

/// The signals of a pair.
pub fn features(a: &Party, b: &Party, roles: &RoleComplements) -> MatchFeatures {
    MatchFeatures {
        interests: jaccard(&a.interests, &b.interests),
        roles: complementary(&a.roles, &b.roles, roles),
        languages: overlap(&a.languages, &b.languages),
        vector: match (&a.embedding, &b.embedding) {
            (Some(x), Some(y)) => cosine(x, y),
            _ => None,
        },
    }
}

/// The weighted mean of the signals present, in [0, 1]; 0 when no weighted signal is present.
pub fn score(f: &MatchFeatures, w: &MatchWeights) -> f64 {
    let terms = [
        (Some(f.interests), w.interests),
        (Some(f.roles), w.roles),
        (f.languages, w.languages),
        (f.vector, w.vector),
    ];
    let (mut sum, mut total) = (0.0f64, 0.0f64);
    for (value, weight) in terms {
        if let Some(x) = value {
            sum += weight * x.clamp(0.0, 1.0);
            total += weight;
        }
    }
    if total > 0.0 {
        (sum / total).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Checks weights: finite, non-negative, not all zero.
pub fn check_weights(w: &MatchWeights) -> Result<(), String> {
    let all = [w.interests, w.roles, w.languages, w.vector];
    if all.iter().any(|x| !x.is_finite() || *x < 0.0) {
        return Err("weights must be finite and non-negative".into());
    }
    if all.iter().sum::<f64>() <= 0.0 {
        return Err("at least one weight must be positive".into());
    }
    Ok(())
}

/// Parses `interests=W,roles=W,languages=W,vector=W` (every signal named once, in any
/// order) and checks the weights.
pub fn parse_weights(s: &str) -> Result<MatchWeights, String> {
    let mut slots: [(&str, Option<f64>); 4] = [
        ("interests", None),
        ("roles", None),
        ("languages", None),
        ("vector", None),
    ];
    for part in s.split(',') {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not name=weight"))?;
        let slot = slots
            .iter_mut()
            .find(|(n, _)| *n == name.trim())
            .ok_or_else(|| format!("unknown signal {:?}", name.trim()))?;
        if slot.1.is_some() {
            return Err(format!("{} given twice", slot.0));
        }
        let w = value
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("{:?} is not a number", value.trim()))?;
        slot.1 = Some(w);
    }
    let [interests, roles, languages, vector] =
        slots.map(|(name, w)| w.ok_or_else(|| format!("{name} missing")));
    let w = MatchWeights {
        interests: interests?,
        roles: roles?,
        languages: languages?,
        vector: vector?,
    };
    check_weights(&w)?;
    Ok(w)
}

/// |a ∩ b| / |a ∪ b|; 0 for two empty sets.
pub fn jaccard(a: &BTreeSet<String>, b: &BTreeSet<String>) -> f64 {
    let shared = a.intersection(b).count();
    let union = a.len() + b.len() - shared;
    if union == 0 {
        0.0
    } else {
        shared as f64 / union as f64
    }
}

/// |a ∩ b| / min(|a|, |b|): 1 when the smaller side's languages are all spoken by the other.
/// `None` when a side lists none.
fn overlap(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Option<f64> {
    let smaller = a.len().min(b.len());
    (smaller > 0).then(|| a.intersection(b).count() as f64 / smaller as f64)
}

/// The share of both sides' roles that have a complement among the other side's roles.
fn complementary(a: &BTreeSet<String>, b: &BTreeSet<String>, roles: &RoleComplements) -> f64 {
    let total = a.len() + b.len();
    if total == 0 {
        return 0.0;
    }
    let served = |mine: &BTreeSet<String>, theirs: &BTreeSet<String>| {
        mine.iter()
            .filter(|r| theirs.iter().any(|t| roles.complements(r, t)))
            .count()
    };
    (served(a, b) + served(b, a)) as f64 / total as f64
}

/// Cosine similarity clamped to [0, 1] (opposed vectors are as unrelated as orthogonal ones),
/// or `None` when the two are not comparable: different models or dimensions, a length
/// that is not the stated dimension, or a zero vector. Norms are computed rather than assumed
/// to be 1.
pub fn cosine(x: &Embedding, y: &Embedding) -> Option<f64> {
    let comparable = x.model == y.model
        && x.dimensions == y.dimensions
        && usize::try_from(x.dimensions).is_ok_and(|d| d == x.vector.len() && d == y.vector.len());
    if !comparable {
        return None;
    }
    let (mut dot, mut nx, mut ny) = (0.0, 0.0, 0.0);
    for (a, b) in x.vector.iter().zip(&y.vector) {
        dot += a * b;
        nx += a * a;
        ny += b * b;
    }
    let norms = nx.sqrt() * ny.sqrt();
    if !(norms.is_finite() && norms > 0.0) {
        return None;
    }
    let c = dot / norms;
    c.is_finite().then(|| c.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WEIGHTS: MatchWeights = MatchWeights {
        interests: 0.4,
        roles: 0.2,
        languages: 0.1,
        vector: 0.3,
    };

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn emb(model: &str, vector: &[f64]) -> Embedding {
        Embedding {
            model: model.into(),
            dimensions: vector.len() as i64,
            vector: vector.to_vec(),
        }
    }

    #[test]
    fn signals_on_small_examples() {
        assert_eq!(jaccard(&set(&["a", "b"]), &set(&["b", "c"])), 1.0 / 3.0);
        assert_eq!(jaccard(&set(&[]), &set(&[])), 0.0);
        assert_eq!(overlap(&set(&["en"]), &set(&["en", "de"])), Some(1.0));
        assert_eq!(overlap(&set(&[]), &set(&["en"])), None);
        let roles = RoleComplements::default();
        assert_eq!(
            complementary(&set(&["mentor"]), &set(&["mentee"]), &roles),
            1.0
        );
        assert_eq!(
            complementary(&set(&["mentor"]), &set(&["mentor"]), &roles),
            0.0
        );
        assert_eq!(complementary(&set(&["peer"]), &set(&["peer"]), &roles), 1.0);
        assert_eq!(
            complementary(&set(&["mentor", "founder"]), &set(&["mentee"]), &roles),
            2.0 / 3.0
        );
        assert!(roles.knows("investor") && !roles.knows("wizard"));
    }

    #[test]
    fn vectors_of_other_models_or_sizes_give_no_signal() {
        let a = emb("m1", &[1.0, 0.0]);
        assert_eq!(cosine(&a, &emb("m1", &[1.0, 0.0])), Some(1.0));
        assert_eq!(cosine(&a, &emb("m1", &[0.0, 2.0])), Some(0.0));
        assert_eq!(cosine(&a, &emb("m1", &[-1.0, 0.0])), Some(0.0));
        assert_eq!(cosine(&a, &emb("m2", &[1.0, 0.0])), None);
        assert_eq!(cosine(&a, &emb("m1", &[1.0, 0.0, 0.0])), None);
        assert_eq!(cosine(&a, &emb("m1", &[0.0, 0.0])), None);
        let mut lying = emb("m1", &[1.0, 0.0]);
        lying.dimensions = 3;
        assert_eq!(cosine(&lying, &lying.clone()), None);
    }

    #[test]
    fn absent_signals_are_left_out_of_the_mean() {
        let f = MatchFeatures {
            interests: 1.0,
            roles: 1.0,
            languages: None,
            vector: None,
        };
        assert_eq!(score(&f, &WEIGHTS), 1.0);
        let with_vector = MatchFeatures {
            vector: Some(0.0),
            ..f.clone()
        };
        assert!((score(&with_vector, &WEIGHTS) - 0.6 / 0.9).abs() < 1e-12);
        let zero = MatchWeights {
            interests: 0.0,
            roles: 0.0,
            languages: 0.0,
            vector: 1.0,
        };
        assert_eq!(score(&f, &zero), 0.0);
        assert!(check_weights(&WEIGHTS).is_ok());
        assert!(check_weights(&MatchWeights {
            vector: -1.0,
            ..zero
        })
        .is_err());
        assert!(check_weights(&MatchWeights {
            vector: 0.0,
            ..zero
        })
        .is_err());
    }

    #[test]
    fn weights_parse_from_configuration() {
        let w = parse_weights("vector=0.3, interests=0.4,roles=0.2,languages=0.1").unwrap();
        assert_eq!(w, WEIGHTS);
        for bad in [
            "interests=0.4,roles=0.2,languages=0.1",
            "interests=0.4,roles=0.2,languages=0.1,vector=x",
            "interests=0.4,roles=0.2,languages=0.1,vector=0.3,vector=0.3",
            "interests=0.4,roles=0.2,languages=0.1,colour=0.3",
            "interests=0,roles=0,languages=0,vector=0",
            "interests=-1,roles=0,languages=0,vector=1",
            "nonsense",
        ] {
            assert!(parse_weights(bad).is_err(), "{bad}");
        }
    }

    fn party() -> impl Strategy<Value = Party> {
        let keys = || prop::collection::btree_set("[a-f]", 0..6);
        let roles = prop::collection::btree_set(
            prop::sample::select(vec!["mentor", "mentee", "founder", "investor", "peer"])
                .prop_map(String::from),
            0..3,
        );
        let vector = prop::option::of((
            prop::sample::select(vec!["m1", "m2"]),
            prop::collection::vec(-1.0f64..1.0, 3),
        ));
        (keys(), roles, keys(), vector).prop_map(|(interests, roles, languages, vector)| Party {
            interests,
            roles,
            languages,
            embedding: vector.map(|(m, v)| emb(m, &v)),
            ..Party::default()
        })
    }

    fn weights() -> impl Strategy<Value = MatchWeights> {
        (0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0, 0.01f64..1.0).prop_map(
            |(interests, roles, languages, vector)| MatchWeights {
                interests,
                roles,
                languages,
                vector,
            },
        )
    }

    proptest! {
        #[test]
        fn scores_are_symmetric_and_bounded(a in party(), b in party(), w in weights()) {
            let roles = RoleComplements::default();
            let ab = features(&a, &b, &roles);
            let ba = features(&b, &a, &roles);
            prop_assert_eq!(&ab, &ba);
            for x in [Some(ab.interests), Some(ab.roles), ab.languages, ab.vector].into_iter().flatten() {
                prop_assert!((0.0..=1.0).contains(&x), "{:?}", ab);
            }
            let s = score(&ab, &w);
            prop_assert!((0.0..=1.0).contains(&s));
            prop_assert_eq!(s, score(&ba, &w));
        }

        #[test]
        fn more_shared_interests_never_lower_the_score(
            a in party(),
            b in party(),
            w in weights(),
            key in "[a-h]",
        ) {
            let roles = RoleComplements::default();
            let before = score(&features(&a, &b, &roles), &w);
            let (mut a2, mut b2) = (a.clone(), b.clone());
            a2.interests.insert(key.clone());
            b2.interests.insert(key);
            let after = score(&features(&a2, &b2, &roles), &w);
            prop_assert!(after >= before, "{} < {}", after, before);
        }
    }
}
