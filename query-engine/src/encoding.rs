//! The order-preserving byte encoding of index keys: comparing two encodings byte by byte
//! gives the same answer as comparing the values with `Value::cmp`, so storage can keep index
//! entries in a plain ordered byte map and answer range reads with byte ranges.
//!
//! Scheme. Every value starts with one tag byte, tags in the order of `Value`'s type rank;
//! `0x00` is never a tag, so it can end variable-length parts:
//!
//! | tag    | part     | payload                                                              |
//! |--------|----------|----------------------------------------------------------------------|
//! | `0x01` | missing  | none — a field absent from the document (`KeyPart::Missing`)          |
//! | `0x02` | null     | none                                                                 |
//! | `0x03` | int64    | 8 bytes big-endian, sign bit flipped                                 |
//! | `0x04` | float64  | 8 bytes: IEEE bits, all flipped if negative, else sign bit flipped   |
//! | `0x05` | bool     | `0x00` false, `0x01` true                                            |
//! | `0x06` | string   | UTF-8 bytes, `0x00` escaped as `0x00 0xFF`, ended by `0x00 0x01`      |
//! | `0x07` | bytes    | as string                                                            |
//! | `0x08` | array    | element encodings, then `0x00`                                       |
//! | `0x09` | object   | (key as a tagged string, value encoding)* in key order, then `0x00`  |
//!
//! Consequences worth knowing: a missing field sorts below null; every int64 sorts below every
//! float64 and there is no mixed numeric comparison (`Int64(2) < Float64(1.0)`), matching
//! `Value`'s order; every NaN is canonicalised to one positive quiet NaN, which sorts above
//! +∞; −0.0 and +0.0 are distinct (−0.0 first), as in IEEE `totalOrder`. Each encoding is
//! self-delimiting and no encoding is a prefix of another, so a compound key is just the
//! concatenation of its parts and compares as the tuple does, and the encoding of a key prefix
//! is a byte prefix of the encoding of every key extending it.
//!
//! Decoding accepts only canonical encodings (the exact bytes `encode_key_parts` would write),
//! so `encode(decode(b)) == b` whenever decoding succeeds, and it refuses nesting deeper than
//! `MAX_DECODE_DEPTH` so that hostile bytes cannot exhaust the stack.

use crate::value::{canonical_f64, Object, Value};

const TAG_END: u8 = 0x00;
const TAG_MISSING: u8 = 0x01;
const TAG_NULL: u8 = 0x02;
const TAG_INT64: u8 = 0x03;
const TAG_FLOAT64: u8 = 0x04;
const TAG_BOOL: u8 = 0x05;
const TAG_STRING: u8 = 0x06;
const TAG_BYTES: u8 = 0x07;
const TAG_ARRAY: u8 = 0x08;
const TAG_OBJECT: u8 = 0x09;

/// Inside a string or bytes payload, `0x00` is followed by one of these.
const ESCAPED_ZERO: u8 = 0xFF;
const STRING_END: u8 = 0x01;

const SIGN_BIT: u64 = 1 << 63;

/// Deepest array/object nesting `decode_key` accepts (the root value is depth 0).
pub const MAX_DECODE_DEPTH: usize = 64;

/// One component of an index key: a value, or the marker for a field the document lacks.
/// The derived order (`Missing` first) is the order of the encodings.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyPart {
    Missing,
    Value(Value),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("index key truncated at byte {offset}")]
    Truncated { offset: usize },
    #[error("unknown type tag {tag:#04x} at byte {offset}")]
    UnknownTag { tag: u8, offset: usize },
    #[error("invalid escape 0x00 {byte:#04x} in string at byte {offset}")]
    InvalidEscape { byte: u8, offset: usize },
    #[error("string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: usize },
    #[error("invalid bool byte {byte:#04x} at byte {offset}")]
    InvalidBool { byte: u8, offset: usize },
    #[error("non-canonical NaN at byte {offset}")]
    NonCanonicalNan { offset: usize },
    #[error("object keys not strictly ascending at byte {offset}")]
    UnsortedKeys { offset: usize },
    #[error("object key at byte {offset} is not a string")]
    NonStringKey { offset: usize },
    #[error("missing-field marker inside a value at byte {offset}")]
    NestedMissing { offset: usize },
    #[error("nesting deeper than {MAX_DECODE_DEPTH} at byte {offset}")]
    TooDeep { offset: usize },
}

/// Appends the encoding of one value.
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(TAG_NULL),
        Value::Int64(i) => {
            out.push(TAG_INT64);
            out.extend_from_slice(&((*i as u64) ^ SIGN_BIT).to_be_bytes());
        }
        Value::Float64(f) => {
            out.push(TAG_FLOAT64);
            out.extend_from_slice(&float_to_ordered(*f).to_be_bytes());
        }
        Value::Bool(b) => {
            out.push(TAG_BOOL);
            out.push(u8::from(*b));
        }
        Value::String(s) => encode_escaped(TAG_STRING, s.as_bytes(), out),
        Value::Bytes(b) => encode_escaped(TAG_BYTES, b, out),
        Value::Array(items) => {
            out.push(TAG_ARRAY);
            for item in items {
                encode_value(item, out);
            }
            out.push(TAG_END);
        }
        Value::Object(fields) => {
            out.push(TAG_OBJECT);
            for (k, item) in fields.iter() {
                encode_escaped(TAG_STRING, k.as_bytes(), out);
                encode_value(item, out);
            }
            out.push(TAG_END);
        }
    }
}

/// Appends the marker for a field absent from the document; it sorts below every value.
pub fn encode_missing(out: &mut Vec<u8>) {
    out.push(TAG_MISSING);
}

/// Appends the encoding of one key part.
pub fn encode_part(part: &KeyPart, out: &mut Vec<u8>) {
    match part {
        KeyPart::Missing => encode_missing(out),
        KeyPart::Value(v) => encode_value(v, out),
    }
}

/// Encodes a compound key of values.
pub fn encode_key(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        encode_value(v, &mut out);
    }
    out
}

/// Encodes a compound key whose parts may be missing fields.
pub fn encode_key_parts(parts: &[KeyPart]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        encode_part(p, &mut out);
    }
    out
}

/// Decodes a compound key. Missing fields come back as `KeyPart::Missing`; only canonical
/// encodings are accepted.
pub fn decode_key(bytes: &[u8]) -> Result<Vec<KeyPart>, DecodeError> {
    let mut r = Reader { bytes, pos: 0 };
    let mut parts = Vec::new();
    while r.pos < bytes.len() {
        if bytes[r.pos] == TAG_MISSING {
            r.pos += 1;
            parts.push(KeyPart::Missing);
        } else {
            parts.push(KeyPart::Value(r.value(0)?));
        }
    }
    Ok(parts)
}

/// The smallest byte string greater than every string that starts with `bytes`, for turning
/// a prefix into an exclusive upper bound. `None` when no such string exists (the prefix is
/// empty or all `0xFF`), meaning the range is unbounded above.
pub fn prefix_successor(bytes: &[u8]) -> Option<Vec<u8>> {
    let last = bytes.iter().rposition(|&b| b != 0xFF)?;
    let mut out = bytes[..=last].to_vec();
    out[last] += 1;
    Some(out)
}

/// Maps float bits to an unsigned integer whose order is `f64::total_cmp`'s.
fn float_to_ordered(f: f64) -> u64 {
    let bits = canonical_f64(f).to_bits();
    if bits & SIGN_BIT != 0 {
        !bits
    } else {
        bits ^ SIGN_BIT
    }
}

fn ordered_to_float(u: u64) -> f64 {
    let bits = if u & SIGN_BIT != 0 { u ^ SIGN_BIT } else { !u };
    f64::from_bits(bits)
}

fn encode_escaped(tag: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 3);
    out.push(tag);
    for &b in payload {
        out.push(b);
        if b == 0x00 {
            out.push(ESCAPED_ZERO);
        }
    }
    out.push(0x00);
    out.push(STRING_END);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or(DecodeError::Truncated { offset: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let end = self.pos + 8;
        let chunk = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated {
                offset: self.bytes.len(),
            })?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(chunk);
        self.pos = end;
        Ok(u64::from_be_bytes(buf))
    }

    /// Reads an escaped payload after its tag, through its `0x00 0x01` terminator.
    fn escaped(&mut self) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        loop {
            let b = self.byte()?;
            if b != 0x00 {
                out.push(b);
                continue;
            }
            let at = self.pos;
            match self.byte()? {
                ESCAPED_ZERO => out.push(0x00),
                STRING_END => return Ok(out),
                other => {
                    return Err(DecodeError::InvalidEscape {
                        byte: other,
                        offset: at,
                    })
                }
            }
        }
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        String::from_utf8(self.escaped()?).map_err(|_| DecodeError::InvalidUtf8 { offset: start })
    }

    /// True (and consumes it) if the next byte ends an array or object.
    fn at_end_marker(&mut self) -> Result<bool, DecodeError> {
        match self.bytes.get(self.pos) {
            None => Err(DecodeError::Truncated { offset: self.pos }),
            Some(&TAG_END) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let offset = self.pos;
        let tag = self.byte()?;
        Ok(match tag {
            TAG_NULL => Value::Null,
            TAG_INT64 => Value::Int64((self.u64()? ^ SIGN_BIT) as i64),
            TAG_FLOAT64 => {
                let f = ordered_to_float(self.u64()?);
                if f.is_nan() && f.to_bits() != f64::NAN.to_bits() {
                    return Err(DecodeError::NonCanonicalNan { offset });
                }
                Value::Float64(f)
            }
            TAG_BOOL => match self.byte()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                byte => {
                    return Err(DecodeError::InvalidBool {
                        byte,
                        offset: offset + 1,
                    })
                }
            },
            TAG_STRING => Value::String(self.string()?),
            TAG_BYTES => Value::Bytes(self.escaped()?),
            TAG_ARRAY => {
                if depth >= MAX_DECODE_DEPTH {
                    return Err(DecodeError::TooDeep { offset });
                }
                let mut items = Vec::new();
                while !self.at_end_marker()? {
                    items.push(self.value(depth + 1)?);
                }
                Value::Array(items)
            }
            TAG_OBJECT => {
                if depth >= MAX_DECODE_DEPTH {
                    return Err(DecodeError::TooDeep { offset });
                }
                let mut fields = Object::new();
                while !self.at_end_marker()? {
                    let key_offset = self.pos;
                    if self.byte()? != TAG_STRING {
                        return Err(DecodeError::NonStringKey { offset: key_offset });
                    }
                    let key = self.string()?;
                    if fields
                        .last_key_value()
                        .is_some_and(|(last, _)| last.as_bytes() >= key.as_bytes())
                    {
                        return Err(DecodeError::UnsortedKeys { offset: key_offset });
                    }
                    let item = self.value(depth + 1)?;
                    fields.insert(key, item);
                }
                Value::from(fields)
            }
            TAG_MISSING => return Err(DecodeError::NestedMissing { offset }),
            tag => return Err(DecodeError::UnknownTag { tag, offset }),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(-f64::NAN),
            Just(f64::from_bits(0x7ff0_0000_0000_0001)),
            Just(0.0),
            Just(-0.0),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MIN_POSITIVE),
            Just(1.0),
            Just(-1.0),
        ]
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-c\\x00\\x01]{0,4}",
            "\\$[a-z]{0,2}",
            any::<String>(),
            "\\PC{0,6}",
        ]
    }

    /// Arbitrary nested values, leaning towards small alphabets so that equal and
    /// prefix-sharing values come up often.
    pub(crate) fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Int64),
            (-2i64..3).prop_map(Value::Int64),
            arb_f64().prop_map(Value::Float64),
            any::<bool>().prop_map(Value::Bool),
            arb_string().prop_map(Value::String),
            prop::collection::vec(prop_oneof![Just(0u8), Just(0xFF), any::<u8>()], 0..5)
                .prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(arb_string(), inner, 0..4).prop_map(Value::from),
            ]
        })
    }

    fn arb_part() -> impl Strategy<Value = KeyPart> {
        prop_oneof![
            1 => Just(KeyPart::Missing),
            6 => arb_value().prop_map(KeyPart::Value),
        ]
    }

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(v, &mut out);
        out
    }

    /// Bitwise equality, with NaNs compared after canonicalisation (so `0.0` and `-0.0`
    /// differ, which `==` would not tell). Shared by the encoding round-trip tests.
    pub(crate) fn identical(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float64(x), Value::Float64(y)) => {
                canonical_f64(*x).to_bits() == canonical_f64(*y).to_bits()
            }
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| identical(p, q))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y.iter())
                        .all(|((kp, p), (kq, q))| kp == kq && identical(p, q))
            }
            _ => a == b,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn byte_order_is_value_order(a in arb_value(), b in arb_value()) {
            prop_assert_eq!(enc(&a).cmp(&enc(&b)), a.cmp(&b));
        }

        #[test]
        fn round_trip_is_exact(v in arb_value()) {
            let bytes = enc(&v);
            let parts = decode_key(&bytes).unwrap();
            prop_assert_eq!(parts.len(), 1);
            match &parts[0] {
                KeyPart::Value(d) => prop_assert!(identical(d, &v), "{:?} != {:?}", d, v),
                KeyPart::Missing => prop_assert!(false, "decoded as missing"),
            }
        }

        #[test]
        fn compound_keys_order_as_tuples(a in prop::collection::vec(arb_part(), 0..4),
                                         b in prop::collection::vec(arb_part(), 0..4)) {
            let (ea, eb) = (encode_key_parts(&a), encode_key_parts(&b));
            prop_assert_eq!(ea.cmp(&eb), a.cmp(&b));
            prop_assert_eq!(decode_key(&ea).unwrap(), a);
        }

        #[test]
        fn two_part_keys_order_lexicographically(a1 in arb_value(), a2 in arb_value(),
                                                 b1 in arb_value(), b2 in arb_value()) {
            let ea = encode_key(&[a1.clone(), a2.clone()]);
            let eb = encode_key(&[b1.clone(), b2.clone()]);
            prop_assert_eq!(ea.cmp(&eb), (a1, a2).cmp(&(b1, b2)));
        }

        #[test]
        fn prefix_encodes_as_byte_prefix(prefix in prop::collection::vec(arb_value(), 0..3),
                                         more in prop::collection::vec(arb_value(), 0..3)) {
            let p = encode_key(&prefix);
            let full: Vec<Value> = prefix.iter().chain(&more).cloned().collect();
            let f = encode_key(&full);
            prop_assert!(f.starts_with(&p));
            if let Some(succ) = prefix_successor(&p) {
                prop_assert!(f < succ);
            }
        }

        #[test]
        fn successor_bounds_every_extension(prefix in prop::collection::vec(any::<u8>(), 0..6),
                                            tail in prop::collection::vec(any::<u8>(), 0..6)) {
            let mut ext = prefix.clone();
            ext.extend_from_slice(&tail);
            match prefix_successor(&prefix) {
                Some(s) => {
                    prop_assert!(s > ext);
                    prop_assert!(s > prefix);
                }
                None => prop_assert!(prefix.iter().all(|&b| b == 0xFF)),
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(parts) = decode_key(&bytes) {
                prop_assert_eq!(encode_key_parts(&parts), bytes);
            }
        }

        #[test]
        fn truncation_is_an_error(v in arb_value(), cut in any::<prop::sample::Index>()) {
            let bytes = enc(&v);
            // Any proper prefix of a single value's encoding is incomplete.
            let at = cut.index(bytes.len());
            prop_assert!(decode_key(&bytes[..at]).is_err() || at == 0);
        }
    }

    #[test]
    fn fixed_points_of_the_order() {
        let ordered = [
            KeyPart::Missing,
            KeyPart::Value(Value::Null),
            KeyPart::Value(Value::Int64(i64::MIN)),
            KeyPart::Value(Value::Int64(-1)),
            KeyPart::Value(Value::Int64(0)),
            KeyPart::Value(Value::Int64(i64::MAX)),
            KeyPart::Value(Value::Float64(f64::NEG_INFINITY)),
            KeyPart::Value(Value::Float64(-1.0)),
            KeyPart::Value(Value::Float64(-0.0)),
            KeyPart::Value(Value::Float64(0.0)),
            KeyPart::Value(Value::Float64(f64::INFINITY)),
            KeyPart::Value(Value::Float64(f64::NAN)),
            KeyPart::Value(Value::Bool(false)),
            KeyPart::Value(Value::Bool(true)),
            KeyPart::Value(Value::from("")),
            KeyPart::Value(Value::from("\0")),
            KeyPart::Value(Value::from("\0\0")),
            KeyPart::Value(Value::from("\u{1}")),
            KeyPart::Value(Value::from("a")),
            KeyPart::Value(Value::from("é")),
            KeyPart::Value(Value::Bytes(vec![])),
            KeyPart::Value(Value::Bytes(vec![0xFF])),
            KeyPart::Value(Value::Array(vec![])),
            KeyPart::Value(Value::Array(vec![Value::Null])),
            KeyPart::Value(Value::from(Object::new())),
        ];
        for w in ordered.windows(2) {
            let (a, b) = (encode_key_parts(&w[..1]), encode_key_parts(&w[1..]));
            assert!(a < b, "{:?} !< {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn rejects_non_canonical_and_hostile_bytes() {
        // A signalling NaN's bits, mapped by hand (float_to_ordered would canonicalise them).
        let mut nan = vec![TAG_FLOAT64];
        nan.extend_from_slice(&(0x7ff0_0000_0000_0001u64 ^ SIGN_BIT).to_be_bytes());
        assert!(matches!(
            decode_key(&nan),
            Err(DecodeError::NonCanonicalNan { .. })
        ));

        let unsorted = [
            &[TAG_OBJECT][..],
            &enc(&Value::from("b")),
            &[TAG_NULL],
            &enc(&Value::from("a")),
            &[TAG_NULL, TAG_END],
        ]
        .concat();
        assert!(matches!(
            decode_key(&unsorted),
            Err(DecodeError::UnsortedKeys { .. })
        ));

        let deep = vec![TAG_ARRAY; 100_000];
        assert!(matches!(
            decode_key(&deep),
            Err(DecodeError::TooDeep { .. })
        ));

        assert!(matches!(
            decode_key(&[TAG_ARRAY, TAG_MISSING, TAG_END]),
            Err(DecodeError::NestedMissing { .. })
        ));
        assert!(matches!(
            decode_key(&[TAG_STRING, 0x00, 0x05]),
            Err(DecodeError::InvalidEscape { .. })
        ));
        assert!(matches!(
            decode_key(&[TAG_STRING, 0xC3, 0x00, 0x01]),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
        assert!(matches!(
            decode_key(&[0x0A]),
            Err(DecodeError::UnknownTag { .. })
        ));
        assert!(matches!(
            decode_key(&[TAG_END]),
            Err(DecodeError::UnknownTag { .. })
        ));
        assert_eq!(decode_key(&[]).unwrap(), vec![]);
    }

    #[test]
    fn successor_examples() {
        assert_eq!(prefix_successor(&[1, 2, 3]), Some(vec![1, 2, 4]));
        assert_eq!(prefix_successor(&[1, 0xFF, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_successor(&[]), None);
    }
}
