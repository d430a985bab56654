//! Plain-text operational transformation for collaborative meeting notes: the operation type,
//! apply / compose / invert / transform, and validation of operations that arrive from clients.
//! Pure and I/O-free so the server, the client SDK and the benches share one implementation.
//!
//! An operation walks the whole document from left to right: `Retain(n)` keeps `n` characters,
//! `Insert(s)` inserts `s`, `Delete(n)` removes `n` characters. Every length counts Unicode
//! scalar values (Rust `char`s): "👍🏽" is 2, "e\u{301}" is 2, "会议" is 2. A client that counts
//! UTF-16 code units or bytes must convert before building an operation.
//!
//! Wire form (serde): the normalised component list, each component a one-key map,
//! `[{"retain":5},{"insert":"hi"},{"delete":2}]`. Deserialising re-validates, recomputes both
//! lengths and normalises exactly as [`TextOperation::from_components`] does.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One step of a [`TextOperation`]; counts are in chars.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Component {
    /// Keep the next `n` chars of the document.
    Retain(u64),
    /// Insert this text at the current position.
    Insert(String),
    /// Remove the next `n` chars of the document.
    Delete(u64),
}

/// Why an operation could not be built, applied, composed, inverted or transformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtError {
    /// The operation was built for a document of a different length (in chars); the caller
    /// holds a stale document or a stale operation and must resynchronise.
    #[error("operation expects a document of {expected} chars but the document has {actual}")]
    BaseLengthMismatch { expected: u64, actual: u64 },
    /// `a.compose(b)` requires `b` to start where `a` ends.
    #[error("cannot compose: first operation produces {first_target_len} chars, second expects {second_base_len}")]
    ComposeLengthMismatch {
        first_target_len: u64,
        second_base_len: u64,
    },
    /// Concurrent operations must start from the same document.
    #[error(
        "cannot transform: operations start from documents of {a_base_len} and {b_base_len} chars"
    )]
    TransformLengthMismatch { a_base_len: u64, b_base_len: u64 },
    /// The component lengths add up to more than `u64::MAX`; the operation is bogus.
    #[error("operation lengths overflow u64")]
    LengthOverflow,
    /// Rejected by [`TextOperation::check_limits`]: too many components.
    #[error("operation has {count} components, the limit is {max}")]
    TooManyComponents { count: usize, max: usize },
    /// Rejected by [`TextOperation::check_limits`]: too much inserted text.
    #[error("operation inserts {chars} chars, the limit is {max}")]
    InsertTooLong { chars: u64, max: u64 },
}

/// Bounds for operations from untrusted clients (see [`TextOperation::check_limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpLimits {
    /// Most components one operation may have after normalisation.
    pub max_components: usize,
    /// Most chars one operation may insert, summed over its inserts.
    pub max_insert_chars: u64,
}

impl OpLimits {
    /// Generous for a human typing or pasting into meeting notes, far below anything abusive.
    pub const DEFAULT: OpLimits = OpLimits {
        max_components: 1_000,
        max_insert_chars: 100_000,
    };
}

impl Default for OpLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A normalised text operation: no zero-length components, no two adjacent components of the
/// same kind, and an insert always precedes a delete at the same position. Normalisation makes
/// `==` a semantic comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextOperation {
    ops: Vec<Component>,
    /// Chars the document must have before the operation.
    base_len: u64,
    /// Chars the document has after the operation.
    target_len: u64,
}

fn char_len(s: &str) -> u64 {
    s.chars().count() as u64
}

/// Byte offset just after the first `n` chars of `s`, or `None` if `s` is shorter.
fn byte_offset_of_char(s: &str, n: u64) -> Option<usize> {
    let n = usize::try_from(n).ok()?;
    s.char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(s.len()))
        .nth(n)
}

/// Splits `s` after `n` chars; `n` must be at most the char length of `s`.
fn split_at_char(s: &str, n: u64) -> (&str, &str) {
    match byte_offset_of_char(s, n) {
        Some(at) => s.split_at(at),
        None => (s, ""),
    }
}

fn checked(sum: Option<u64>) -> Result<u64, OtError> {
    sum.ok_or(OtError::LengthOverflow)
}

impl TextOperation {
    /// The empty operation on the empty document.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an operation from untrusted components: recomputes lengths, drops zero-length
    /// components, merges neighbours and puts inserts before deletes. Pair with
    /// [`check_limits`](Self::check_limits) before doing work proportional to the input.
    pub fn from_components(components: Vec<Component>) -> Result<Self, OtError> {
        let mut op = Self::new();
        for component in &components {
            op.push(component)?;
        }
        Ok(op)
    }

    /// Splits the operation in two applied one after the other (`first.compose(&second)` is
    /// `self`): `first` takes the first `n` components and retains the rest of the document,
    /// `second` retains what `first` produced and takes the other components. Each has at
    /// most one component more than it took, so an operation over
    /// [`OpLimits::max_components`] can be sent in pieces within it.
    pub fn split_at(&self, n: usize) -> Result<(Self, Self), OtError> {
        let (head, tail) = self.ops.split_at(n.min(self.ops.len()));
        let mut first = Self::new();
        for component in head {
            first.push(component)?;
        }
        let mut second = Self::new();
        second.push_retain(first.target_len)?;
        first.push_retain(self.base_len.saturating_sub(first.base_len))?;
        for component in tail {
            second.push(component)?;
        }
        Ok((first, second))
    }

    /// Rejects operations larger than `limits` allow.
    pub fn check_limits(&self, limits: &OpLimits) -> Result<(), OtError> {
        if self.ops.len() > limits.max_components {
            return Err(OtError::TooManyComponents {
                count: self.ops.len(),
                max: limits.max_components,
            });
        }
        let inserted: u64 = self
            .ops
            .iter()
            .map(|c| match c {
                Component::Insert(s) => char_len(s),
                _ => 0,
            })
            .sum();
        if inserted > limits.max_insert_chars {
            return Err(OtError::InsertTooLong {
                chars: inserted,
                max: limits.max_insert_chars,
            });
        }
        Ok(())
    }

    /// Keeps the next `n` chars.
    ///
    /// # Panics
    /// If the operation's lengths would exceed `u64::MAX`; use
    /// [`from_components`](Self::from_components) for counts a client sent.
    pub fn retain(mut self, n: u64) -> Self {
        if let Err(e) = self.push_retain(n) {
            panic!("TextOperation::retain({n}): {e}");
        }
        self
    }

    /// Inserts `s` at the current position.
    ///
    /// # Panics
    /// If the operation's lengths would exceed `u64::MAX`.
    pub fn insert(mut self, s: &str) -> Self {
        if let Err(e) = self.push_insert(s) {
            panic!("TextOperation::insert: {e}");
        }
        self
    }

    /// Deletes the next `n` chars.
    ///
    /// # Panics
    /// If the operation's lengths would exceed `u64::MAX`; use
    /// [`from_components`](Self::from_components) for counts a client sent.
    pub fn delete(mut self, n: u64) -> Self {
        if let Err(e) = self.push_delete(n) {
            panic!("TextOperation::delete({n}): {e}");
        }
        self
    }

    /// Chars the document must have for this operation to apply.
    pub fn base_len(&self) -> u64 {
        self.base_len
    }

    /// Chars the document has after this operation.
    pub fn target_len(&self) -> u64 {
        self.target_len
    }

    /// True when applying the operation changes nothing.
    pub fn is_noop(&self) -> bool {
        self.ops.iter().all(|c| matches!(c, Component::Retain(_)))
    }

    /// The normalised components.
    pub fn components(&self) -> &[Component] {
        &self.ops
    }

    fn push(&mut self, component: &Component) -> Result<(), OtError> {
        match component {
            Component::Retain(n) => self.push_retain(*n),
            Component::Insert(s) => self.push_insert(s),
            Component::Delete(n) => self.push_delete(*n),
        }
    }

    fn push_retain(&mut self, n: u64) -> Result<(), OtError> {
        if n == 0 {
            return Ok(());
        }
        let base_len = checked(self.base_len.checked_add(n))?;
        let target_len = checked(self.target_len.checked_add(n))?;
        (self.base_len, self.target_len) = (base_len, target_len);
        match self.ops.last_mut() {
            Some(Component::Retain(m)) => *m += n,
            _ => self.ops.push(Component::Retain(n)),
        }
        Ok(())
    }

    fn push_delete(&mut self, n: u64) -> Result<(), OtError> {
        if n == 0 {
            return Ok(());
        }
        self.base_len = checked(self.base_len.checked_add(n))?;
        match self.ops.last_mut() {
            Some(Component::Delete(m)) => *m += n,
            _ => self.ops.push(Component::Delete(n)),
        }
        Ok(())
    }

    fn push_insert(&mut self, s: &str) -> Result<(), OtError> {
        if s.is_empty() {
            return Ok(());
        }
        self.target_len = checked(self.target_len.checked_add(char_len(s)))?;
        let len = self.ops.len();
        match self.ops.as_mut_slice() {
            [.., Component::Insert(t)] | [.., Component::Insert(t), Component::Delete(_)] => {
                t.push_str(s)
            }
            [.., Component::Delete(_)] => self.ops.insert(len - 1, Component::Insert(s.into())),
            _ => self.ops.push(Component::Insert(s.into())),
        }
        Ok(())
    }

    /// Applies the operation to `doc`, whose char length must equal [`base_len`](Self::base_len).
    pub fn apply(&self, doc: &str) -> Result<String, OtError> {
        let actual = char_len(doc);
        if actual != self.base_len {
            return Err(OtError::BaseLengthMismatch {
                expected: self.base_len,
                actual,
            });
        }
        let mismatch = OtError::BaseLengthMismatch {
            expected: self.base_len,
            actual,
        };
        let mut out = String::with_capacity(doc.len());
        let mut rest = doc;
        for c in &self.ops {
            match c {
                Component::Retain(n) => {
                    let at = byte_offset_of_char(rest, *n).ok_or_else(|| mismatch.clone())?;
                    out.push_str(&rest[..at]);
                    rest = &rest[at..];
                }
                Component::Insert(s) => out.push_str(s),
                Component::Delete(n) => {
                    let at = byte_offset_of_char(rest, *n).ok_or_else(|| mismatch.clone())?;
                    rest = &rest[at..];
                }
            }
        }
        Ok(out)
    }

    /// The operation that undoes `self` when applied to `self.apply(doc)`; `doc` is the
    /// document `self` applies to (needed to restore deleted text).
    pub fn invert(&self, doc: &str) -> Result<Self, OtError> {
        let actual = char_len(doc);
        let mismatch = OtError::BaseLengthMismatch {
            expected: self.base_len,
            actual,
        };
        if actual != self.base_len {
            return Err(mismatch);
        }
        let mut inverse = Self::new();
        let mut rest = doc;
        for c in &self.ops {
            match c {
                Component::Retain(n) => {
                    let at = byte_offset_of_char(rest, *n).ok_or_else(|| mismatch.clone())?;
                    inverse.push_retain(*n)?;
                    rest = &rest[at..];
                }
                Component::Insert(s) => inverse.push_delete(char_len(s))?,
                Component::Delete(n) => {
                    let at = byte_offset_of_char(rest, *n).ok_or_else(|| mismatch.clone())?;
                    inverse.push_insert(&rest[..at])?;
                    rest = &rest[at..];
                }
            }
        }
        Ok(inverse)
    }

    /// One operation with the effect of `self` followed by `next`.
    pub fn compose(&self, next: &Self) -> Result<Self, OtError> {
        let mismatch = OtError::ComposeLengthMismatch {
            first_target_len: self.target_len,
            second_base_len: next.base_len,
        };
        if self.target_len != next.base_len {
            return Err(mismatch);
        }
        let mut out = Self::new();
        let mut it1 = self.ops.iter().cloned();
        let mut it2 = next.ops.iter().cloned();
        let mut op1 = it1.next();
        let mut op2 = it2.next();
        loop {
            match (op1.take(), op2.take()) {
                (None, None) => return Ok(out),
                // Deletes in `self` touch text `next` never sees.
                (Some(Component::Delete(n)), o2) => {
                    out.push_delete(n)?;
                    (op1, op2) = (it1.next(), o2);
                }
                // Inserts in `next` touch text `self` never produced.
                (o1, Some(Component::Insert(s))) => {
                    out.push_insert(&s)?;
                    (op1, op2) = (o1, it2.next());
                }
                (None, Some(_)) | (Some(_), None) => return Err(mismatch),
                (Some(Component::Retain(n1)), Some(Component::Retain(n2))) => {
                    out.push_retain(n1.min(n2))?;
                    (op1, op2) = remainders(n1, n2, &mut it1, &mut it2, Component::Retain);
                }
                (Some(Component::Retain(n1)), Some(Component::Delete(n2))) => {
                    out.push_delete(n1.min(n2))?;
                    (op1, op2) = remainders_mixed(
                        n1,
                        n2,
                        &mut it1,
                        &mut it2,
                        Component::Retain,
                        Component::Delete,
                    );
                }
                (Some(Component::Insert(s)), Some(Component::Retain(n2))) => {
                    let n1 = char_len(&s);
                    let (head, tail) = split_at_char(&s, n2);
                    out.push_insert(head)?;
                    op1 = if n1 > n2 {
                        Some(Component::Insert(tail.to_owned()))
                    } else {
                        it1.next()
                    };
                    op2 = if n2 > n1 {
                        Some(Component::Retain(n2 - n1))
                    } else {
                        it2.next()
                    };
                }
                // Text inserted by `self` and deleted by `next` vanishes.
                (Some(Component::Insert(s)), Some(Component::Delete(n2))) => {
                    let n1 = char_len(&s);
                    op1 = if n1 > n2 {
                        Some(Component::Insert(split_at_char(&s, n2).1.to_owned()))
                    } else {
                        it1.next()
                    };
                    op2 = if n2 > n1 {
                        Some(Component::Delete(n2 - n1))
                    } else {
                        it2.next()
                    };
                }
            }
        }
    }

    /// Transforms concurrent operations `a` and `b` (same base document) into `(a', b')` with
    /// `b'.apply(a.apply(d)) == a'.apply(b.apply(d))`.
    ///
    /// Tie-break: when both insert at the same position, `a`'s text ends up left of `b`'s. The
    /// server calls `transform(committed, incoming)`, so the op committed first keeps the left.
    pub fn transform(a: &Self, b: &Self) -> Result<(Self, Self), OtError> {
        let mismatch = OtError::TransformLengthMismatch {
            a_base_len: a.base_len,
            b_base_len: b.base_len,
        };
        if a.base_len != b.base_len {
            return Err(mismatch);
        }
        let mut a_prime = Self::new();
        let mut b_prime = Self::new();
        let mut it1 = a.ops.iter().cloned();
        let mut it2 = b.ops.iter().cloned();
        let mut op1 = it1.next();
        let mut op2 = it2.next();
        loop {
            match (op1.take(), op2.take()) {
                (None, None) => return Ok((a_prime, b_prime)),
                // `a`'s insert is handled first: this is the tie-break.
                (Some(Component::Insert(s)), o2) => {
                    b_prime.push_retain(char_len(&s))?;
                    a_prime.push_insert(&s)?;
                    (op1, op2) = (it1.next(), o2);
                }
                (o1, Some(Component::Insert(s))) => {
                    a_prime.push_retain(char_len(&s))?;
                    b_prime.push_insert(&s)?;
                    (op1, op2) = (o1, it2.next());
                }
                (None, Some(_)) | (Some(_), None) => return Err(mismatch),
                (Some(Component::Retain(n1)), Some(Component::Retain(n2))) => {
                    let n = n1.min(n2);
                    a_prime.push_retain(n)?;
                    b_prime.push_retain(n)?;
                    (op1, op2) = remainders(n1, n2, &mut it1, &mut it2, Component::Retain);
                }
                // Both deleted the same text: neither transformed op deletes it again.
                (Some(Component::Delete(n1)), Some(Component::Delete(n2))) => {
                    (op1, op2) = remainders(n1, n2, &mut it1, &mut it2, Component::Delete);
                }
                (Some(Component::Delete(n1)), Some(Component::Retain(n2))) => {
                    a_prime.push_delete(n1.min(n2))?;
                    (op1, op2) = remainders_mixed(
                        n1,
                        n2,
                        &mut it1,
                        &mut it2,
                        Component::Delete,
                        Component::Retain,
                    );
                }
                (Some(Component::Retain(n1)), Some(Component::Delete(n2))) => {
                    b_prime.push_delete(n1.min(n2))?;
                    (op1, op2) = remainders_mixed(
                        n1,
                        n2,
                        &mut it1,
                        &mut it2,
                        Component::Retain,
                        Component::Delete,
                    );
                }
            }
        }
    }
}

/// After consuming `min(n1, n2)` from two same-kind components, the leftover of the longer one
/// and the next component of the other.
fn remainders<I: Iterator<Item = Component>>(
    n1: u64,
    n2: u64,
    it1: &mut I,
    it2: &mut I,
    kind: fn(u64) -> Component,
) -> (Option<Component>, Option<Component>) {
    remainders_mixed(n1, n2, it1, it2, kind, kind)
}

fn remainders_mixed<I: Iterator<Item = Component>>(
    n1: u64,
    n2: u64,
    it1: &mut I,
    it2: &mut I,
    kind1: fn(u64) -> Component,
    kind2: fn(u64) -> Component,
) -> (Option<Component>, Option<Component>) {
    let op1 = if n1 > n2 {
        Some(kind1(n1 - n2))
    } else {
        it1.next()
    };
    let op2 = if n2 > n1 {
        Some(kind2(n2 - n1))
    } else {
        it2.next()
    };
    (op1, op2)
}

impl Serialize for TextOperation {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.ops.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TextOperation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let components = Vec::<Component>::deserialize(deserializer)?;
        Self::from_components(components).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<Vec<Component>> for TextOperation {
    type Error = OtError;

    fn try_from(components: Vec<Component>) -> Result<Self, OtError> {
        Self::from_components(components)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Chars that stress char counting: ASCII, a skin-tone emoji pair, a combining accent,
    /// CJK, a 4-byte ideograph and a newline.
    const ALPHABET: &[char] = &[
        'a',
        'b',
        'z',
        ' ',
        '\n',
        '👍',
        '\u{1F3FD}',
        'e',
        '\u{301}',
        '会',
        '議',
        '𠀋',
        'é',
    ];

    fn text(max_chars: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(ALPHABET), 0..=max_chars)
            .prop_map(|chars| chars.into_iter().collect())
    }

    /// One builder step; counts are clamped to what is left of the document.
    #[derive(Clone, Debug)]
    enum Step {
        Retain(u64),
        Insert(String),
        Delete(u64),
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            (0u64..6).prop_map(Step::Retain),
            text(4).prop_map(Step::Insert),
            (0u64..6).prop_map(Step::Delete),
        ];
        proptest::collection::vec(step, 0..8)
    }

    /// An operation applicable to a document of `base_len` chars.
    fn build(base_len: u64, steps: &[Step]) -> TextOperation {
        let mut left = base_len;
        let mut op = TextOperation::new();
        for step in steps {
            op = match step {
                Step::Retain(n) => {
                    let n = (*n).min(left);
                    left -= n;
                    op.retain(n)
                }
                Step::Insert(s) => op.insert(s),
                Step::Delete(n) => {
                    let n = (*n).min(left);
                    left -= n;
                    op.delete(n)
                }
            };
        }
        op.retain(left)
    }

    fn is_normalised(op: &TextOperation) -> bool {
        let zero_free = op.ops.iter().all(|c| match c {
            Component::Retain(n) | Component::Delete(n) => *n > 0,
            Component::Insert(s) => !s.is_empty(),
        });
        let neighbours_ok = op.ops.windows(2).all(|w| {
            std::mem::discriminant(&w[0]) != std::mem::discriminant(&w[1])
                && !matches!(w, [Component::Delete(_), Component::Insert(_)])
        });
        zero_free && neighbours_ok
    }

    proptest! {
        #[test]
        fn ot_apply_lengths_match(doc in text(40), s in steps()) {
            let op = build(char_len(&doc), &s);
            let after = op.apply(&doc).unwrap();
            prop_assert_eq!(char_len(&after), op.target_len());
            prop_assert!(is_normalised(&op));
        }

        #[test]
        fn ot_transform_converges_tp1(doc in text(40), sa in steps(), sb in steps()) {
            let n = char_len(&doc);
            let (a, b) = (build(n, &sa), build(n, &sb));
            let (a2, b2) = TextOperation::transform(&a, &b).unwrap();
            prop_assert!(is_normalised(&a2) && is_normalised(&b2));
            let via_a = b2.apply(&a.apply(&doc).unwrap()).unwrap();
            let via_b = a2.apply(&b.apply(&doc).unwrap()).unwrap();
            prop_assert_eq!(via_a, via_b);
        }

        #[test]
        fn ot_compose_equals_sequential_apply(doc in text(40), sa in steps(), sb in steps()) {
            let a = build(char_len(&doc), &sa);
            let b = build(a.target_len(), &sb);
            let ab = a.compose(&b).unwrap();
            prop_assert!(is_normalised(&ab));
            prop_assert_eq!(ab.base_len(), a.base_len());
            prop_assert_eq!(ab.target_len(), b.target_len());
            prop_assert_eq!(ab.apply(&doc).unwrap(), b.apply(&a.apply(&doc).unwrap()).unwrap());
        }

        #[test]
        fn ot_split_pieces_compose_to_the_operation(doc in text(40), s in steps(), n in 0usize..10) {
            let op = build(char_len(&doc), &s);
            let (first, second) = op.split_at(n).unwrap();
            prop_assert!(is_normalised(&first) && is_normalised(&second));
            let taken = n.min(op.components().len());
            prop_assert!(first.components().len() <= taken + 1);
            prop_assert!(second.components().len() <= op.components().len() - taken + 1);
            prop_assert_eq!(first.compose(&second).unwrap(), op.clone());
            prop_assert_eq!(second.apply(&first.apply(&doc).unwrap()).unwrap(), op.apply(&doc).unwrap());
        }

        #[test]
        fn ot_invert_restores_document(doc in text(40), s in steps()) {
            let op = build(char_len(&doc), &s);
            let inverse = op.invert(&doc).unwrap();
            prop_assert!(is_normalised(&inverse));
            prop_assert_eq!(inverse.apply(&op.apply(&doc).unwrap()).unwrap(), doc);
        }

        #[test]
        fn ot_serde_round_trip(doc in text(40), s in steps()) {
            let op = build(char_len(&doc), &s);
            let json = serde_json::to_string(&op).unwrap();
            let back: TextOperation = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &op);
            prop_assert_eq!(back.base_len(), op.base_len());
            prop_assert_eq!(back.target_len(), op.target_len());
        }

        /// Unnormalised client input normalises to an op with the same effect.
        #[test]
        fn ot_from_components_normalises(
            doc in text(40),
            raw in proptest::collection::vec(prop_oneof![
                (0u64..4).prop_map(Component::Retain),
                text(3).prop_map(Component::Insert),
                (0u64..4).prop_map(Component::Delete),
            ], 0..12),
        ) {
            let op = TextOperation::from_components(raw.clone()).unwrap();
            prop_assert!(is_normalised(&op));
            let consumed: u64 = raw.iter().map(|c| match c {
                Component::Retain(n) | Component::Delete(n) => *n,
                Component::Insert(_) => 0,
            }).sum();
            prop_assert_eq!(op.base_len(), consumed);
            if consumed <= char_len(&doc) {
                let padded = op.clone().retain(char_len(&doc) - consumed);
                prop_assert!(padded.apply(&doc).is_ok());
            }
        }
    }

    #[test]
    fn ot_counts_chars_not_bytes() {
        let doc = "👍🏽e\u{301}会議";
        assert_eq!(char_len(doc), 6);
        let op = TextOperation::new()
            .retain(2)
            .delete(2)
            .insert("x")
            .retain(2);
        assert_eq!(op.apply(doc).unwrap(), "👍🏽x会議");
    }

    #[test]
    fn ot_concurrent_inserts_first_argument_goes_left() {
        let a = TextOperation::new().retain(1).insert("A");
        let b = TextOperation::new().retain(1).insert("B");
        let (a2, b2) = TextOperation::transform(&a, &b).unwrap();
        assert_eq!(b2.apply(&a.apply("x").unwrap()).unwrap(), "xAB");
        assert_eq!(a2.apply(&b.apply("x").unwrap()).unwrap(), "xAB");
    }

    #[test]
    fn ot_insert_goes_before_delete() {
        let op = TextOperation::new().delete(2).insert("ab").delete(1);
        assert_eq!(
            op.components(),
            &[Component::Insert("ab".into()), Component::Delete(3)]
        );
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(json, r#"[{"insert":"ab"},{"delete":3}]"#);
    }

    #[test]
    fn ot_rejects_bad_input() {
        let op = TextOperation::new().retain(3);
        assert_eq!(
            op.apply("ab"),
            Err(OtError::BaseLengthMismatch {
                expected: 3,
                actual: 2
            })
        );
        assert!(matches!(
            op.compose(&TextOperation::new().retain(2)),
            Err(OtError::ComposeLengthMismatch { .. })
        ));
        assert!(matches!(
            TextOperation::transform(&op, &TextOperation::new()),
            Err(OtError::TransformLengthMismatch { .. })
        ));
        assert_eq!(
            TextOperation::from_components(vec![Component::Retain(u64::MAX), Component::Delete(1)]),
            Err(OtError::LengthOverflow)
        );
        assert!(serde_json::from_str::<TextOperation>(r#"[{"retain":-1}]"#).is_err());
        assert!(serde_json::from_str::<TextOperation>(r#"[{"move":1}]"#).is_err());
    }

    #[test]
    fn ot_limits() {
        let limits = OpLimits {
            max_components: 2,
            max_insert_chars: 3,
        };
        let ok = TextOperation::new().retain(1).insert("👍🏽x");
        assert_eq!(ok.check_limits(&limits), Ok(()));
        let long = TextOperation::new().insert("abcd");
        assert_eq!(
            long.check_limits(&limits),
            Err(OtError::InsertTooLong { chars: 4, max: 3 })
        );
        let many = TextOperation::new()
            .retain(1)
            .insert("a")
            .delete(1)
            .retain(1);
        assert_eq!(
            many.check_limits(&limits),
            Err(OtError::TooManyComponents { count: 4, max: 2 })
        );
    }
}
