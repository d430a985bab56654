//! Validators: the type of a value (document, function argument, return value) and the check
//! that a value has it, with errors that name the offending field path. The `v` module is the
//! DSL for writing them (`v::object([("title", v::string())])`).
//!
//! Types are strict: `Float64` accepts only float64 and `Int64` only int64. Every int64 sorts
//! below every float64 in index keys (see `encoding`), so a field holding 2 in one document and
//! 2.5 in another would sort by type first and make range reads over it meaningless.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{DocumentId, TableNumber};
use crate::json::to_json;
use crate::value::Value;

/// The type a value must have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Validator {
    Any,
    Null,
    String,
    Float64,
    Int64,
    Bool,
    Bytes,
    /// A string that parses as a document id of the named table.
    Id(String),
    /// Exactly this value.
    Literal(Value),
    /// Any one of these.
    Union(Vec<Validator>),
    /// As an object field: the field may be absent. A present `Null` is not absent; it passes
    /// only if the inner validator accepts null. Elsewhere it means the inner validator.
    Optional(Box<Validator>),
    Array(Box<Validator>),
    /// A closed object: exactly these fields (optional ones may be absent), no others.
    Object(BTreeMap<String, Validator>),
    /// An object used as a map: every key passes the key validator (string-like: string, id,
    /// string literal, or a union of those) and every value the value validator.
    Record(Box<Validator>, Box<Validator>),
}

/// Maps table names to numbers, so that `Id(table)` can check an id's table.
pub trait TableResolver {
    fn table_number(&self, name: &str) -> Option<TableNumber>;
}

impl TableResolver for BTreeMap<String, TableNumber> {
    fn table_number(&self, name: &str) -> Option<TableNumber> {
        self.get(name).copied()
    }
}

impl TableResolver for HashMap<String, TableNumber> {
    fn table_number(&self, name: &str) -> Option<TableNumber> {
        self.get(name).copied()
    }
}

/// A value failed validation. `path` is where (`profile.interests[2]`, empty at the root);
/// displays as `path: message`, or just the message at the root.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", at(.path))]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// Longest string excerpt quoted in an error message, in characters.
const MAX_QUOTED_CHARS: usize = 40;

impl Validator {
    /// Checks `v` against this validator; the error names the first offending path.
    pub fn validate(&self, v: &Value, tables: &dyn TableResolver) -> Result<(), ValidationError> {
        let mut path = String::new();
        self.check(v, tables, &mut path, &mut 0)
    }

    /// True when this is `Optional`, i.e. as an object field it may be absent.
    pub fn is_optional(&self) -> bool {
        matches!(self, Validator::Optional(_))
    }

    /// `progress` counts the leaf checks passed so far: a union uses it to report the member
    /// that got furthest.
    fn check(
        &self,
        v: &Value,
        tables: &dyn TableResolver,
        path: &mut String,
        progress: &mut usize,
    ) -> Result<(), ValidationError> {
        let fail = |path: &str, message: String| {
            Err(ValidationError {
                path: path.to_owned(),
                message,
            })
        };
        let mismatch = |path: &str| fail(path, format!("expected {self}, got {}", v.type_name()));
        match (self, v) {
            (Validator::Any, _)
            | (Validator::Null, Value::Null)
            | (Validator::String, Value::String(_))
            | (Validator::Float64, Value::Float64(_))
            | (Validator::Int64, Value::Int64(_))
            | (Validator::Bool, Value::Bool(_))
            | (Validator::Bytes, Value::Bytes(_)) => {
                *progress += 1;
                Ok(())
            }
            (Validator::Id(table), Value::String(s)) => {
                let Ok(id) = DocumentId::parse(s) else {
                    return fail(path, "not a valid id".to_owned());
                };
                match tables.table_number(table) {
                    Some(n) if n == id.table => {
                        *progress += 1;
                        Ok(())
                    }
                    Some(_) => fail(
                        path,
                        format!("expected id of table {table:?}, got id of another table"),
                    ),
                    None => fail(path, format!("table {table:?} does not exist")),
                }
            }
            (Validator::Literal(want), _) => {
                if want == v {
                    *progress += 1;
                    Ok(())
                } else {
                    fail(path, format!("expected {self}, got {}", describe(v)))
                }
            }
            (Validator::Union(members), _) => self.check_union(members, v, tables, path, progress),
            (Validator::Optional(inner), _) => inner.check(v, tables, path, progress),
            (Validator::Array(item), Value::Array(items)) => {
                for (i, x) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    item.check(x, tables, path, progress)?;
                    path.truncate(len);
                }
                Ok(())
            }
            (Validator::Object(fields), Value::Object(obj)) => {
                if let Some(unknown) = obj.keys().find(|k| !fields.contains_key(*k)) {
                    return fail(&join(path, unknown), "unknown field".to_owned());
                }
                for (name, field) in fields {
                    let len = path.len();
                    push_field(path, name);
                    match obj.get(name) {
                        Some(x) => field.check(x, tables, path, progress)?,
                        None if field.is_optional() => {}
                        None => return fail(path, "missing required field".to_owned()),
                    }
                    path.truncate(len);
                }
                Ok(())
            }
            (Validator::Record(key, value), Value::Object(obj)) => {
                for (k, x) in obj.iter() {
                    let len = path.len();
                    push_field(path, k);
                    if let Err(e) = key.validate(&Value::String(k.clone()), tables) {
                        return fail(path, format!("invalid key: {}", e.message));
                    }
                    *progress += 1;
                    value.check(x, tables, path, progress)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => mismatch(path),
        }
    }

    /// A value passes a union if it passes any member. On failure, the useful error is the one
    /// from the member that got furthest (most leaf checks passed, as in a discriminated union
    /// whose `kind` matched), or else from the first member that got past the top level; if
    /// none did, list what was expected.
    fn check_union(
        &self,
        members: &[Validator],
        v: &Value,
        tables: &dyn TableResolver,
        path: &mut String,
        progress: &mut usize,
    ) -> Result<(), ValidationError> {
        let mut best: Option<((usize, bool), ValidationError)> = None;
        let len = path.len();
        for m in members {
            let mut member_progress = 0;
            let result = m.check(v, tables, path, &mut member_progress);
            // A failed check returns early, leaving the path extended.
            path.truncate(len);
            match result {
                Ok(()) => {
                    *progress += member_progress;
                    return Ok(());
                }
                Err(e) => {
                    let rank = (member_progress, e.path.len() > len);
                    if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                        best = Some((rank, e));
                    }
                }
            }
        }
        let useful = best.and_then(|((n, deeper), e)| (n > 0 || deeper).then_some(e));
        Err(useful.unwrap_or_else(|| ValidationError {
            path: path.clone(),
            message: format!("expected {self}, got {}", describe(v)),
        }))
    }
}

fn push_field(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(name);
}

fn join(path: &str, name: &str) -> String {
    let mut p = path.to_owned();
    push_field(&mut p, name);
    p
}

/// A value as an error message shows it: the type, plus the value itself when short.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Int64(i) => format!("int64 {i}"),
        Value::Float64(_) => format!("float64 {}", to_json(v)),
        Value::Bool(b) => format!("bool {b}"),
        Value::String(s) => {
            let excerpt: String = s.chars().take(MAX_QUOTED_CHARS).collect();
            if excerpt.len() < s.len() {
                format!("string {excerpt:?}…")
            } else {
                format!("string {excerpt:?}")
            }
        }
        other => other.type_name().to_owned(),
    }
}

/// The validator as error messages name it: `string`, `array<int64>`, `"active"`,
/// `one of "a" | "b"`, `id of table "users"`.
impl fmt::Display for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Validator::Any => f.write_str("any"),
            Validator::Null => f.write_str("null"),
            Validator::String => f.write_str("string"),
            Validator::Float64 => f.write_str("float64"),
            Validator::Int64 => f.write_str("int64"),
            Validator::Bool => f.write_str("bool"),
            Validator::Bytes => f.write_str("bytes"),
            Validator::Id(t) => write!(f, "id of table {t:?}"),
            Validator::Literal(v) => write!(f, "{}", to_json(v)),
            Validator::Union(members) => {
                f.write_str("one of ")?;
                for (i, m) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    match m {
                        // Nested unions print flat; `one of` is said once.
                        Validator::Union(_) => write!(f, "({m})")?,
                        _ => write!(f, "{m}")?,
                    }
                }
                Ok(())
            }
            Validator::Optional(inner) => write!(f, "optional {inner}"),
            Validator::Array(item) => write!(f, "array<{item}>"),
            Validator::Object(_) => f.write_str("object"),
            Validator::Record(k, v) => write!(f, "record<{k}, {v}>"),
        }
    }
}

/// The validator DSL: `v::object([("title", v::string()), ("tags", v::array(v::string()))])`.
pub mod v {
    use super::Validator;
    use crate::value::Value;

    pub fn any() -> Validator {
        Validator::Any
    }
    pub fn null() -> Validator {
        Validator::Null
    }
    pub fn string() -> Validator {
        Validator::String
    }
    pub fn float64() -> Validator {
        Validator::Float64
    }
    pub fn int64() -> Validator {
        Validator::Int64
    }
    pub fn boolean() -> Validator {
        Validator::Bool
    }
    pub fn bytes() -> Validator {
        Validator::Bytes
    }
    pub fn id(table: &str) -> Validator {
        Validator::Id(table.to_owned())
    }
    pub fn literal(value: impl Into<Value>) -> Validator {
        Validator::Literal(value.into())
    }
    pub fn union(members: impl IntoIterator<Item = Validator>) -> Validator {
        Validator::Union(members.into_iter().collect())
    }
    pub fn optional(inner: Validator) -> Validator {
        Validator::Optional(Box::new(inner))
    }
    pub fn array(item: Validator) -> Validator {
        Validator::Array(Box::new(item))
    }
    pub fn object<'a>(fields: impl IntoIterator<Item = (&'a str, Validator)>) -> Validator {
        Validator::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }
    pub fn record(key: Validator, value: Validator) -> Validator {
        Validator::Record(Box::new(key), Box::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obj;

    fn tables() -> BTreeMap<String, TableNumber> {
        [
            ("users".to_owned(), TableNumber(1)),
            ("meetings".to_owned(), TableNumber(2)),
        ]
        .into_iter()
        .collect()
    }

    fn err(validator: &Validator, value: Value) -> String {
        validator
            .validate(&value, &tables())
            .expect_err("should fail")
            .to_string()
    }

    fn ok(validator: &Validator, value: Value) {
        validator
            .validate(&value, &tables())
            .unwrap_or_else(|e| panic!("{value:?} should pass {validator}: {e}"));
    }

    #[test]
    fn scalars_are_strict() {
        ok(&v::any(), obj! { "x" => 1i64 });
        ok(&v::null(), Value::Null);
        ok(&v::string(), Value::from("s"));
        ok(&v::float64(), Value::Float64(f64::NAN));
        ok(&v::int64(), Value::Int64(-3));
        ok(&v::boolean(), Value::Bool(false));
        ok(&v::bytes(), Value::Bytes(vec![0]));
        assert_eq!(
            err(&v::float64(), Value::Int64(1)),
            "expected float64, got int64"
        );
        assert_eq!(
            err(&v::int64(), Value::Float64(1.0)),
            "expected int64, got float64"
        );
        assert_eq!(err(&v::string(), Value::Null), "expected string, got null");
        assert_eq!(
            err(&v::null(), Value::Bool(true)),
            "expected null, got bool"
        );
        assert_eq!(
            err(&v::bytes(), Value::from("b")),
            "expected bytes, got string"
        );
        assert_eq!(
            err(&v::boolean(), Value::Int64(0)),
            "expected bool, got int64"
        );
    }

    #[test]
    fn nested_paths_name_the_field() {
        let profile = v::object([("profile", v::object([("interests", v::array(v::string()))]))]);
        let doc = obj! { "profile" => obj! { "interests" => vec![
            Value::from("a"), Value::from("b"), Value::Int64(3),
        ] } };
        assert_eq!(
            err(&profile, doc),
            "profile.interests[2]: expected string, got int64"
        );
        assert_eq!(
            err(
                &v::array(v::array(v::int64())),
                Value::Array(vec![Value::Array(vec![Value::Null])])
            ),
            "[0][0]: expected int64, got null"
        );
        assert_eq!(
            err(&v::array(v::string()), Value::from("x")),
            "expected array<string>, got string"
        );
    }

    #[test]
    fn objects_are_closed_and_optional_means_absent() {
        let note = v::object([
            ("title", v::string()),
            ("meta", v::object([("size", v::optional(v::int64()))])),
        ]);
        ok(&note, obj! { "title" => "t", "meta" => obj! {} });
        ok(
            &note,
            obj! { "title" => "t", "meta" => obj! { "size" => 3i64 } },
        );
        assert_eq!(
            err(
                &note,
                obj! { "title" => "t", "meta" => obj! { "color" => "red" } }
            ),
            "meta.color: unknown field"
        );
        assert_eq!(
            err(&note, obj! { "meta" => obj! {} }),
            "title: missing required field"
        );
        assert_eq!(
            err(
                &note,
                obj! { "title" => "t", "meta" => obj! { "size" => Value::Null } }
            ),
            "meta.size: expected int64, got null"
        );
        ok(
            &v::object([("x", v::optional(v::union([v::int64(), v::null()])))]),
            obj! { "x" => Value::Null },
        );
        assert_eq!(
            err(&note, Value::Array(vec![])),
            "expected object, got array"
        );
    }

    #[test]
    fn literals_and_unions() {
        let status = v::union([v::literal("scheduled"), v::literal("active")]);
        ok(&status, Value::from("active"));
        assert_eq!(
            err(&status, Value::from("bogus")),
            "expected one of \"scheduled\" | \"active\", got string \"bogus\""
        );
        assert_eq!(
            err(&v::literal(3i64), Value::Float64(3.0)),
            "expected 3, got float64 3.0"
        );
        assert_eq!(
            err(&v::union([v::string(), v::int64()]), Value::Null),
            "expected one of string | int64, got null"
        );
        let long = "x".repeat(100);
        assert!(err(&status, Value::from(long.as_str())).ends_with("…"));

        // A discriminated union reports the member that got furthest.
        let event = v::union([
            v::object([("kind", v::literal("a")), ("n", v::int64())]),
            v::object([("kind", v::literal("b")), ("s", v::string())]),
        ]);
        ok(&event, obj! { "kind" => "b", "s" => "x" });
        assert_eq!(
            err(&event, obj! { "kind" => "a", "n" => "x" }),
            "n: expected int64, got string"
        );
        assert_eq!(
            err(&v::union([]), Value::Null),
            "expected one of , got null"
        );

        // A member that fails deep inside must not leave its path behind for the next one.
        let nested = v::object([(
            "a",
            v::union([
                v::object([("b", v::array(v::int64()))]),
                v::object([("b", v::array(v::string()))]),
            ]),
        )]);
        ok(
            &nested,
            obj! { "a" => obj! { "b" => vec![Value::from("x")] } },
        );
        assert_eq!(
            err(&nested, obj! { "a" => obj! { "b" => vec![Value::Null] } }),
            "a.b[0]: expected int64, got null"
        );
    }

    #[test]
    fn ids_are_checked_against_their_table() {
        let meeting = DocumentId::new(TableNumber(2), 7).to_string();
        let user = DocumentId::new(TableNumber(1), 7).to_string();
        let field = v::object([("meetingId", v::id("meetings"))]);
        ok(&field, obj! { "meetingId" => meeting.as_str() });
        assert_eq!(
            err(&field, obj! { "meetingId" => user.as_str() }),
            "meetingId: expected id of table \"meetings\", got id of another table"
        );
        assert_eq!(
            err(&field, obj! { "meetingId" => "nope" }),
            "meetingId: not a valid id"
        );
        assert_eq!(
            err(&field, obj! { "meetingId" => 3i64 }),
            "meetingId: expected id of table \"meetings\", got int64"
        );
        assert_eq!(
            err(&v::id("ghosts"), Value::from(meeting.as_str())),
            "table \"ghosts\" does not exist"
        );
    }

    #[test]
    fn records_check_keys_and_values() {
        let scores = v::record(v::string(), v::int64());
        ok(&scores, obj! { "a" => 1i64, "b" => 2i64 });
        ok(&scores, obj! {});
        assert_eq!(
            err(&scores, obj! { "a" => 1.5 }),
            "a: expected int64, got float64"
        );
        let by_user = v::record(v::id("users"), v::boolean());
        assert_eq!(
            err(&by_user, obj! { "x" => true }),
            "x: invalid key: not a valid id"
        );
        assert_eq!(
            err(&scores, Value::Null),
            "expected record<string, int64>, got null"
        );
    }

    #[test]
    fn validators_serialise_losslessly() {
        let v = v::object([
            (
                "a",
                v::optional(v::union([v::literal(1.5), v::literal("x"), v::null()])),
            ),
            ("b", v::record(v::string(), v::array(v::id("users")))),
            ("c", v::literal(Value::Bytes(vec![1, 2]))),
        ]);
        let stored = crate::json::to_value(&v).unwrap();
        let back: Validator = crate::json::from_value(&stored).unwrap();
        assert_eq!(back, v);
    }
}
