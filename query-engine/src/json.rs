//! Lossless conversions of `Value`: serde (`Serialize`/`Deserialize`, used with MessagePack on
//! the wire and on disk), the JSON form used by import/export and HTTP, and typed Rust values
//! (`to_value` / `from_value`). Each preserves the int64/float64 distinction exactly.
//!
//! JSON form. Int64 is a JSON integer; Float64 is a JSON number that always reads back as a
//! float (`1.0`, `1e21`, `-0.0`), or `{"$float": "NaN" | "Infinity" | "-Infinity"}` when not
//! finite; bytes are `{"$bytes": "<standard base64>"}`; an object having any key that starts
//! with `$` is written `{"$object": {...}}`. So object keys starting with `$` are reserved:
//! `from_json` rejects them anywhere except as one of these three escapes.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::value::{Object, Value};
use crate::value_serde::{ValueDeserializer, ValueSerializer};

const FLOAT_KEY: &str = "$float";
const BYTES_KEY: &str = "$bytes";
const OBJECT_KEY: &str = "$object";
const NAN: &str = "NaN";
const INFINITY: &str = "Infinity";
const NEG_INFINITY: &str = "-Infinity";

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Int64(i) => s.serialize_i64(*i),
            Value::Float64(f) => s.serialize_f64(*f),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::String(st) => s.serialize_str(st),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields.iter() {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value (null, int64, float64, bool, string, bytes, array or object)")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int64(i))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        i64::try_from(u)
            .map(Value::Int64)
            .map_err(|_| E::custom(format!("integer {u} does not fit in int64")))
    }
    fn visit_i128<E: de::Error>(self, i: i128) -> Result<Value, E> {
        i64::try_from(i)
            .map(Value::Int64)
            .map_err(|_| E::custom(format!("integer {i} does not fit in int64")))
    }
    fn visit_u128<E: de::Error>(self, u: u128) -> Result<Value, E> {
        i64::try_from(u)
            .map(Value::Int64)
            .map_err(|_| E::custom(format!("integer {u} does not fit in int64")))
    }
    fn visit_f32<E: de::Error>(self, f: f32) -> Result<Value, E> {
        Ok(Value::Float64(f64::from(f)))
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float64(f))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(b.to_vec()))
    }
    fn visit_byte_buf<E: de::Error>(self, b: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(b))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // The size hint comes from the input: cap the preallocation, not the length.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Object::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            if fields.insert(k, v).is_some() {
                return Err(de::Error::custom("duplicate object key"));
            }
        }
        Ok(Value::from(fields))
    }
}

/// Why a JSON document is not a valid `Value`. `path` locates the offending part
/// (`profile.tags[2]`; empty at the root).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("{}integer {text} does not fit in int64", at(.path))]
    IntegerOutOfRange { path: String, text: String },
    #[error("{}object key {key:?} is reserved (keys starting with '$' are escapes)", at(.path))]
    ReservedKey { path: String, key: String },
    #[error("{}invalid {key} escape: {reason}", at(.path))]
    BadEscape {
        path: String,
        key: &'static str,
        reason: String,
    },
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// Why a Rust value could not be converted to or from a `Value` (see `value_serde` for the
/// rules). A decode error's `path` locates the offending part (`profile.tags[2]`; empty at the
/// root, and inside parts serde buffers itself, such as internally tagged enums).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot convert to a value: {0}")]
    Encode(String),
    #[error("cannot convert from a value: {}{message}", at(.path))]
    Decode { path: String, message: String },
}

/// The JSON form of a value (see the module comment).
pub fn to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Int64(i) => J::from(*i),
        Value::Float64(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => J::Number(n),
            None => {
                let name = if f.is_nan() {
                    NAN
                } else if *f > 0.0 {
                    INFINITY
                } else {
                    NEG_INFINITY
                };
                escape(FLOAT_KEY, J::from(name))
            }
        },
        Value::Bool(b) => J::Bool(*b),
        Value::String(s) => J::String(s.clone()),
        Value::Bytes(b) => escape(
            BYTES_KEY,
            J::String(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
        Value::Array(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Object(fields) => {
            let map: serde_json::Map<String, J> = fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect();
            if fields.keys().any(|k| k.starts_with('$')) {
                escape(OBJECT_KEY, J::Object(map))
            } else {
                J::Object(map)
            }
        }
    }
}

fn escape(key: &str, payload: serde_json::Value) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert(key.to_owned(), payload);
    serde_json::Value::Object(m)
}

/// Reads the JSON form of a value (see the module comment). Integer literals outside int64
/// are errors, except that serde_json itself reads integer literals beyond the u64 range as
/// floats before this function sees them.
pub fn from_json(j: &serde_json::Value) -> Result<Value, JsonError> {
    let mut path = String::new();
    from_json_at(j, &mut path)
}

fn from_json_at(j: &serde_json::Value, path: &mut String) -> Result<Value, JsonError> {
    use serde_json::Value as J;
    Ok(match j {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int64(i)
            } else if n.is_u64() {
                return Err(JsonError::IntegerOutOfRange {
                    path: path.clone(),
                    text: n.to_string(),
                });
            } else {
                // Neither i64 nor u64: serde_json holds it as f64 (without arbitrary_precision).
                Value::Float64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::String(s.clone()),
        J::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                out.push(from_json_at(item, path)?);
                path.truncate(len);
            }
            Value::Array(out)
        }
        J::Object(map) => {
            if let Some((key, payload)) = single_entry(map) {
                if key.starts_with('$') {
                    return from_escape(key, payload, path);
                }
            }
            object_fields(map, path, false)?
        }
    })
}

fn single_entry(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Option<(&str, &serde_json::Value)> {
    let mut it = map.iter();
    match (it.next(), it.next()) {
        (Some((k, v)), None) => Some((k.as_str(), v)),
        _ => None,
    }
}

fn from_escape(
    key: &str,
    payload: &serde_json::Value,
    path: &mut String,
) -> Result<Value, JsonError> {
    let bad = |key: &'static str, reason: &str| JsonError::BadEscape {
        path: path.clone(),
        key,
        reason: reason.to_owned(),
    };
    match key {
        FLOAT_KEY => match payload.as_str() {
            Some(NAN) => Ok(Value::Float64(f64::NAN)),
            Some(INFINITY) => Ok(Value::Float64(f64::INFINITY)),
            Some(NEG_INFINITY) => Ok(Value::Float64(f64::NEG_INFINITY)),
            _ => Err(bad(
                FLOAT_KEY,
                "expected \"NaN\", \"Infinity\" or \"-Infinity\"",
            )),
        },
        BYTES_KEY => {
            let text = payload
                .as_str()
                .ok_or_else(|| bad(BYTES_KEY, "expected a base64 string"))?;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Value::Bytes)
                .map_err(|e| bad(BYTES_KEY, &e.to_string()))
        }
        OBJECT_KEY => match payload {
            serde_json::Value::Object(map) => object_fields(map, path, true),
            _ => Err(bad(OBJECT_KEY, "expected an object")),
        },
        _ => Err(JsonError::ReservedKey {
            path: path.clone(),
            key: key.to_owned(),
        }),
    }
}

/// Converts an object's fields; `allow_dollar` is set inside an explicit `$object` escape.
fn object_fields(
    map: &serde_json::Map<String, serde_json::Value>,
    path: &mut String,
    allow_dollar: bool,
) -> Result<Value, JsonError> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        if !allow_dollar && k.starts_with('$') {
            return Err(JsonError::ReservedKey {
                path: path.clone(),
                key: k.clone(),
            });
        }
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(k);
        out.insert(k.clone(), from_json_at(v, path)?);
        path.truncate(len);
    }
    Ok(Value::from(out))
}

/// Converts any serialisable Rust value to a `Value` (structs become objects keyed by field
/// name, `None` becomes null), keeping the int/float distinction. Built directly, with the
/// same result the MessagePack round trip it replaced gave (`value_serde`).
pub fn to_value<T: Serialize + ?Sized>(t: &T) -> Result<Value, ConvertError> {
    t.serialize(ValueSerializer::new())
}

/// Converts a `Value` to any deserialisable Rust type; the inverse of `to_value`. Read
/// directly, with the same result the MessagePack round trip it replaced gave (`value_serde`).
pub fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, ConvertError> {
    T::deserialize(ValueDeserializer::new(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::tests::{arb_value, identical};
    use crate::obj;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn msgpack_round_trip_is_exact(v in arb_value()) {
            let bytes = rmp_serde::to_vec_named(&v).unwrap();
            let back: Value = rmp_serde::from_slice(&bytes).unwrap();
            prop_assert!(identical(&back, &v), "{:?} != {:?}", back, v);
        }

        #[test]
        fn json_round_trip_is_exact(v in arb_value()) {
            let back = from_json(&to_json(&v)).unwrap();
            prop_assert!(identical(&back, &v), "{:?} != {:?}", back, v);
            let text = serde_json::to_string(&to_json(&v)).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            let back = from_json(&parsed).unwrap();
            prop_assert!(identical(&back, &v), "{} -> {:?} != {:?}", text, back, v);
        }

        #[test]
        fn to_value_round_trips_values(v in arb_value()) {
            let back: Value = from_value(&to_value(&v).unwrap()).unwrap();
            prop_assert!(identical(&back, &v));
        }
    }

    #[test]
    fn msgpack_keeps_floats_wide_and_ints_exact() {
        let bytes = rmp_serde::to_vec_named(&Value::Float64(1.0)).unwrap();
        assert_eq!(bytes[0], 0xcb, "float64 marker");
        let back: Value = rmp_serde::from_slice(&bytes).unwrap();
        assert!(matches!(back, Value::Float64(f) if f == 1.0));

        let f32_bytes = rmp_serde::to_vec(&1.5f32).unwrap();
        assert!(
            matches!(rmp_serde::from_slice::<Value>(&f32_bytes).unwrap(), Value::Float64(f) if f == 1.5)
        );

        let big = rmp_serde::to_vec(&u64::MAX).unwrap();
        assert!(rmp_serde::from_slice::<Value>(&big).is_err());
        let max = rmp_serde::to_vec(&(i64::MAX as u64)).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<Value>(&max).unwrap(),
            Value::Int64(i64::MAX)
        );
    }

    #[test]
    fn json_number_forms() {
        let parse = |s: &str| from_json(&serde_json::from_str(s).unwrap());
        assert_eq!(parse("1").unwrap(), Value::Int64(1));
        assert!(matches!(parse("1.0").unwrap(), Value::Float64(f) if f == 1.0));
        assert!(matches!(parse("1e3").unwrap(), Value::Float64(f) if f == 1000.0));
        assert!(
            matches!(parse("-0.0").unwrap(), Value::Float64(f) if f.to_bits() == (-0.0f64).to_bits())
        );
        assert_eq!(
            parse("-9223372036854775808").unwrap(),
            Value::Int64(i64::MIN)
        );
        assert_eq!(
            parse("{\"a\": [1, 18446744073709551615]}")
                .unwrap_err()
                .to_string(),
            "a[1]: integer 18446744073709551615 does not fit in int64"
        );
        assert_eq!(
            serde_json::to_string(&to_json(&Value::Float64(1.0))).unwrap(),
            "1.0"
        );
        assert_eq!(
            serde_json::to_string(&to_json(&Value::Float64(-0.0))).unwrap(),
            "-0.0"
        );
        assert_eq!(
            serde_json::to_string(&to_json(&Value::Float64(f64::NEG_INFINITY))).unwrap(),
            "{\"$float\":\"-Infinity\"}"
        );
    }

    #[test]
    fn json_escapes_and_reserved_keys() {
        let parse = |s: &str| from_json(&serde_json::from_str(s).unwrap());
        assert_eq!(
            parse("{\"$bytes\": \"AAH/\"}").unwrap(),
            Value::Bytes(vec![0, 1, 0xFF])
        );
        assert_eq!(
            parse("{\"$object\": {\"$x\": 1}}").unwrap(),
            obj! { "$x" => 1i64 }
        );
        assert_eq!(
            parse("{\"meta\": {\"$x\": 1, \"y\": 2}}")
                .unwrap_err()
                .to_string(),
            "meta: object key \"$x\" is reserved (keys starting with '$' are escapes)"
        );
        assert!(parse("{\"$x\": 1}").is_err());
        assert!(parse("{\"$float\": \"nan\"}").is_err());
        assert!(parse("{\"$bytes\": \"not base64!\"}").is_err());
        assert!(parse("{\"$bytes\": 3}").is_err());
        assert!(parse("{\"$object\": []}").is_err());
    }

    #[test]
    fn typed_values_convert() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Profile {
            name: String,
            age: Option<u32>,
            score: f64,
            tags: Vec<String>,
            kind: Kind,
        }
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        enum Kind {
            Person,
        }
        let p = Profile {
            name: "Ada".into(),
            age: None,
            score: 2.0,
            tags: vec!["x".into()],
            kind: Kind::Person,
        };
        let v = to_value(&p).unwrap();
        assert_eq!(
            v,
            obj! {
                "name" => "Ada",
                "age" => Value::Null,
                "score" => 2.0,
                "tags" => vec![Value::from("x")],
                "kind" => "Person",
            }
        );
        assert_eq!(from_value::<Profile>(&v).unwrap(), p);
        assert!(from_value::<Profile>(&Value::Int64(3)).is_err());
    }
}
