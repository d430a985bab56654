//! Match ids: `<smaller user id>:<larger user id>:<matchedAt ms, zero-padded>`. Both entries
//! of a match carry the same id, it names the pair whichever side reads it, and a pair's
//! matches share the prefix `<a>:<b>:` and sort by time, so "has this pair declined each
//! other lately" is one range of `matchingAnalytics.by_match`.

use std::fmt;

/// Width of the zero-padded time, so ids of one pair sort by time as strings.
const TIME_DIGITS: usize = 15;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatchId {
    low: String,
    high: String,
    matched_at_ms: i64,
}

impl MatchId {
    pub fn new(x: &str, y: &str, matched_at_ms: i64) -> Self {
        let (low, high) = if x <= y { (x, y) } else { (y, x) };
        MatchId {
            low: low.to_string(),
            high: high.to_string(),
            matched_at_ms,
        }
    }

    /// Parses a match id; `None` for anything `new` cannot have made.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split(':');
        let (low, high, at) = (parts.next()?, parts.next()?, parts.next()?);
        let valid_time = at.len() == TIME_DIGITS && at.bytes().all(|b| b.is_ascii_digit());
        if parts.next().is_some() || low.is_empty() || low >= high || !valid_time {
            return None;
        }
        Some(MatchId::new(low, high, at.parse().ok()?))
    }

    /// Whether `user_id` is one side of the pair.
    pub fn involves(&self, user_id: &str) -> bool {
        self.low == user_id || self.high == user_id
    }

    /// The other side of the pair from `user_id`'s point of view.
    pub fn partner_of(&self, user_id: &str) -> Option<&str> {
        if self.low == user_id {
            Some(&self.high)
        } else if self.high == user_id {
            Some(&self.low)
        } else {
            None
        }
    }

    /// The `[start, end)` string range holding every match id of the pair of `x` and `y`.
    pub fn pair_range(x: &str, y: &str) -> (String, String) {
        let (low, high) = if x <= y { (x, y) } else { (y, x) };
        // ';' is the character after ':'.
        (format!("{low}:{high}:"), format!("{low}:{high};"))
    }
}

impl fmt::Display for MatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{:0width$}",
            self.low,
            self.high,
            self.matched_at_ms.max(0),
            width = TIME_DIGITS
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_the_pair_from_either_side_and_round_trip() {
        let id = MatchId::new("u2", "u1", 1_700_000_000_000);
        assert_eq!(id, MatchId::new("u1", "u2", 1_700_000_000_000));
        let s = id.to_string();
        assert_eq!(s, "u1:u2:001700000000000");
        assert_eq!(MatchId::parse(&s), Some(id.clone()));
        assert_eq!(id.partner_of("u1"), Some("u2"));
        assert_eq!(id.partner_of("u2"), Some("u1"));
        assert_eq!(id.partner_of("u3"), None);
        assert!(id.involves("u2") && !id.involves("u3"));
        let (start, end) = MatchId::pair_range("u2", "u1");
        assert!(start <= s && s < end);
        for other in [MatchId::new("u1", "u20", 5), MatchId::new("u1", "u3", 5)] {
            let other = other.to_string();
            assert!(other < start || other >= end, "{other}");
        }
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "u1",
            "u1:u2",
            "u2:u1:001700000000000",
            "u1:u1:001700000000000",
            "u1:u2:17",
            "u1:u2:00170000000000x",
            "u1:u2:001700000000000:x",
            ":u2:001700000000000",
        ] {
            assert_eq!(MatchId::parse(bad), None, "{bad}");
        }
    }
}
