//! Text primitives the local provider and the insight links share: normalised word tokens,
//! sentence splitting, keyword ranking and feature-hashed embeddings. Everything here is
//! deterministic (ordered maps, a fixed hash), so equal inputs give equal outputs on every
//! machine and every run.

use std::collections::BTreeMap;

/// Words too common to say anything about a text's subject.
const STOPWORDS: &[&str] = &[
    "a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are",
    "arent", "as", "at", "be", "because", "been", "before", "being", "but", "by", "can", "cant",
    "could", "d", "did", "didnt", "do", "does", "doesnt", "doing", "don", "done", "dont", "for",
    "from", "get", "go", "going", "gonna", "got", "had", "has", "have", "having", "he", "her",
    "here", "hers", "hes", "him", "his", "how", "i", "if", "ill", "im", "in", "into", "is", "isnt",
    "it", "its", "ive", "just", "know", "let", "lets", "like", "ll", "m", "make", "many", "maybe",
    "me", "mean", "more", "most", "much", "my", "need", "needs", "no", "not", "now", "of", "off",
    "ok", "okay", "on", "once", "one", "only", "or", "other", "our", "ours", "out", "over", "own",
    "re", "really", "right", "s", "said", "say", "says", "she", "shes", "should", "so", "some",
    "such", "t", "than", "that", "thats", "the", "their", "them", "then", "there", "theres",
    "these", "they", "theyll", "theyre", "thing", "things", "think", "this", "those", "through",
    "to", "too", "up", "us", "ve", "very", "want", "was", "way", "we", "well", "were", "weve",
    "what", "whats", "when", "where", "which", "while", "who", "why", "will", "with", "wont",
    "would", "yeah", "yes", "you", "youll", "your", "youre", "yours",
];

/// Whether `word` (already normalised) is a stopword.
pub fn is_stopword(word: &str) -> bool {
    STOPWORDS.binary_search(&word).is_ok()
}

/// Lower-cased alphanumeric runs of `text`; apostrophes inside a word are dropped
/// (`don't` → `dont`), everything else separates words.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        } else if (c == '\'' || c == '’')
            && !current.is_empty()
            && chars.peek().is_some_and(|n| n.is_alphanumeric())
        {
            continue;
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The words of `text` that carry meaning: no stopwords, no single characters, no numbers.
pub fn content_words(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| w.chars().count() > 1 && !is_stopword(w) && !w.chars().all(char::is_numeric))
        .collect()
}

/// Splits `text` into trimmed sentences at `.`, `!`, `?` and line breaks. A period between
/// two digits (`3.5`) does not end a sentence.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let decimal = c == '.'
            && i > 0
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c == '\n' || c == '\r' {
            push_sentence(&mut out, &mut current);
            continue;
        }
        current.push(c);
        if matches!(c, '.' | '!' | '?') && !decimal {
            push_sentence(&mut out, &mut current);
        }
    }
    push_sentence(&mut out, &mut current);
    out
}

fn push_sentence(out: &mut Vec<String>, current: &mut String) {
    let s = current.trim();
    if s.chars().any(char::is_alphanumeric) {
        out.push(s.to_string());
    }
    current.clear();
}

/// The `max` most frequent content words of `texts`, most frequent first, ties in
/// alphabetical order.
pub fn keywords<'a>(texts: impl IntoIterator<Item = &'a str>, max: usize) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in texts {
        for w in content_words(t) {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.into_iter().take(max).map(|(w, _)| w).collect()
}

/// Sentences put back together so that `sentences` splits the text into the same ones: after
/// a sentence ending in `.`, `!` or `?` a space, else a line break (for text rebuilt with one
/// sentence replaced, e.g. by a redaction mark).
pub fn join_sentences(parts: &[String]) -> String {
    let mut out = String::new();
    for (i, s) in parts.iter().enumerate() {
        if i > 0 {
            let ended = parts[i - 1].ends_with(['.', '!', '?']);
            out.push(if ended { ' ' } else { '\n' });
        }
        out.push_str(s);
    }
    out
}

/// `s` cut to at most `max_chars` chars, with `…` when cut.
pub fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max_chars.saturating_sub(1)).collect();
    out = out.trim_end().to_string();
    out.push('…');
    out
}

/// 64-bit FNV-1a: a fixed, platform-independent hash (std's hasher is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The feature-hashed embedding of `text` in `dimensions` dimensions: each content word adds
/// 1 and each pair of adjacent content words 0.5 to the component its hash picks, with a sign
/// from another bit of the hash (so unrelated features cancel rather than pile up), and the
/// result is scaled to unit length. Texts sharing words get a positive cosine similarity
/// growing with the overlap. `None` when the text has no content word.
pub fn hashed_embedding(text: &str, dimensions: usize) -> Option<Vec<f64>> {
    let dimensions = dimensions.max(1);
    let tokens = content_words(text);
    let mut v = vec![0.0f64; dimensions];
    let mut add = |feature: &str, weight: f64| {
        let h = fnv1a(feature.as_bytes());
        let index = (h % dimensions as u64) as usize;
        let sign = if (h >> 63) & 1 == 0 { 1.0 } else { -1.0 };
        v[index] += sign * weight;
    };
    for t in &tokens {
        add(t, 1.0);
    }
    for pair in tokens.windows(2) {
        add(&format!("{} {}", pair[0], pair[1]), 0.5);
    }
    normalise(v)
}

/// `v` scaled to unit length; `None` for a zero (or non-finite) vector.
pub fn normalise(mut v: Vec<f64>) -> Option<Vec<f64>> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return None;
    }
    for x in &mut v {
        *x /= norm;
    }
    Some(v)
}

/// Cosine similarity of two unit vectors of equal length (their dot product); 0 when the
/// lengths differ.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopwords_are_sorted_for_binary_search() {
        let mut sorted = STOPWORDS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, STOPWORDS);
    }

    #[test]
    fn words_are_normalised() {
        assert_eq!(
            words("Don't PANIC: Rust-lang, 3 times!"),
            ["dont", "panic", "rust", "lang", "3", "times"]
        );
        assert_eq!(
            content_words("We will ship the Rust SDK in 3 weeks"),
            ["ship", "rust", "sdk", "weeks"]
        );
    }

    proptest::proptest! {
        /// Sentences joined back, one of them perhaps replaced by a mark without an end, split
        /// into the same sentences: a redaction leaves the others where they were.
        #[test]
        fn joined_sentences_split_into_the_same_ones(
            text in "[a-z0-9 .!?\n]{0,80}",
            replace in proptest::option::of(0usize..20),
        ) {
            let mut parts = sentences(&text);
            if let Some(i) = replace.filter(|i| *i < parts.len()) {
                parts[i] = "[erased]".to_string();
            }
            proptest::prop_assert_eq!(sentences(&join_sentences(&parts)), parts);
        }
    }

    #[test]
    fn sentences_split_at_ends_and_lines_but_not_decimals() {
        assert_eq!(
            sentences("Version 3.5 is out. Will you test it?\nYes!  ..."),
            ["Version 3.5 is out.", "Will you test it?", "Yes!"]
        );
    }

    #[test]
    fn keywords_rank_by_frequency_then_name() {
        let k = keywords(["rust and python", "rust again", "python python"], 2);
        assert_eq!(k, ["python", "rust"]);
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a long sentence", 7), "a long…");
    }

    #[test]
    fn hashed_embeddings_are_unit_deterministic_and_reflect_overlap() {
        let a = hashed_embedding("distributed databases and rust", 256).unwrap();
        let again = hashed_embedding("distributed databases and rust", 256).unwrap();
        assert_eq!(a, again);
        let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-9);
        let close = hashed_embedding("rust databases", 256).unwrap();
        let far = hashed_embedding("gardening tomatoes", 256).unwrap();
        assert!(cosine(&a, &close) > 0.4, "{}", cosine(&a, &close));
        assert!(cosine(&a, &close) > cosine(&a, &far) + 0.3);
        assert!((cosine(&a, &a) - 1.0).abs() < 1e-9);
        assert_eq!(hashed_embedding("the and of", 256), None);
    }
}
