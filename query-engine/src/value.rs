//! The engine's value model: what a document field can hold, and the one total order over it.
//! Index keys are built from these values (see `encoding`), so `Ord` here and the byte order
//! there must agree; a property test holds them together.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A document field value. Integers and floats are distinct types: `Int64(1) != Float64(1.0)`,
/// and every int64 sorts before every float64 (the order Convex uses).
///
/// Objects are shared (`Arc`): a document read from a snapshot, returned in a query result and
/// kept as a subscription's last result is one allocation, so cloning one is a reference
/// count and comparing a document with itself is a pointer check. `as_object_mut` copies on
/// write.
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Int64(i64),
    Float64(f64),
    Bool(bool),
    String(String),
    Bytes(Vec<u8>),
    Array(Vec<Value>),
    Object(Arc<Object>),
}

/// An object value: field name to value, kept sorted so that equal objects compare and
/// encode equally.
pub type Object = BTreeMap<String, Value>;

impl Value {
    /// The type's name as it appears in validation errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int64(_) => "int64",
            Value::Float64(_) => "float64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Position of the type in the total order.
    pub(crate) fn type_rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Int64(_) => 1,
            Value::Float64(_) => 2,
            Value::Bool(_) => 3,
            Value::String(_) => 4,
            Value::Bytes(_) => 5,
            Value::Array(_) => 6,
            Value::Object(_) => 7,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int64(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float64(f) => Some(*f),
            Value::Int64(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The object's fields, to change (copied first if the object is shared).
    pub fn as_object_mut(&mut self) -> Option<&mut Object> {
        match self {
            Value::Object(o) => Some(Arc::make_mut(o)),
            _ => None,
        }
    }

    /// The object's fields, owned (copied only if the object is shared).
    pub fn into_object(self) -> Option<Object> {
        match self {
            Value::Object(o) => Some(Arc::unwrap_or_clone(o)),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Follows a dotted field path (`profile.displayName`) through nested objects.
    /// `None` when a step is missing or not an object.
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        let mut cur = self;
        for part in path.split('.') {
            cur = cur.as_object()?.get(part)?;
        }
        Some(cur)
    }

    /// Approximate in-memory/encoded size in bytes, used for per-call byte limits.
    pub fn size_bytes(&self) -> usize {
        let mut budget = usize::MAX;
        self.charge(&mut budget);
        usize::MAX - budget
    }

    /// Whether `size_bytes()` is above `limit`, walking only as far as it takes to tell (a
    /// large value is usually decided within its first elements).
    pub fn size_exceeds(&self, limit: usize) -> bool {
        self.size_within(limit).is_none()
    }

    /// `size_bytes()` if it is at most `limit`, in one walk that stops once it is not.
    pub fn size_within(&self, limit: usize) -> Option<usize> {
        let mut budget = limit;
        (!self.charge(&mut budget)).then(|| limit - budget)
    }

    /// Takes this value's size from `budget`, part by part; true (and the walk stops) when a
    /// part does not fit. The one place the size rules are written.
    fn charge(&self, budget: &mut usize) -> bool {
        fn take(budget: &mut usize, n: usize) -> bool {
            match budget.checked_sub(n) {
                Some(left) => {
                    *budget = left;
                    false
                }
                None => true,
            }
        }
        match self {
            Value::Null | Value::Bool(_) => take(budget, 1),
            Value::Int64(_) | Value::Float64(_) => take(budget, 9),
            Value::String(s) => take(budget, s.len() + 2),
            Value::Bytes(b) => take(budget, b.len() + 2),
            Value::Array(a) => take(budget, 2) || a.iter().any(|x| x.charge(budget)),
            Value::Object(o) => {
                take(budget, 2)
                    || o.iter()
                        .any(|(k, x)| take(budget, k.len() + 2) || x.charge(budget))
            }
        }
    }
}

/// Floats compare with IEEE `totalOrder` (−0.0 < +0.0; every NaN is canonicalised to one
/// positive quiet NaN, which sorts above +∞), so `Value` has a true total order.
pub(crate) fn canonical_f64(f: f64) -> f64 {
    if f.is_nan() {
        f64::NAN
    } else {
        f
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Int64(a), Value::Int64(b)) => a.cmp(b),
            (Value::Float64(a), Value::Float64(b)) => {
                canonical_f64(*a).total_cmp(&canonical_f64(*b))
            }
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::String(a), Value::String(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Array(a), Value::Array(b)) => a.cmp(b),
            (Value::Object(a), Value::Object(b)) if Arc::ptr_eq(a, b) => Ordering::Equal,
            (Value::Object(a), Value::Object(b)) => a.iter().cmp(b.iter()),
            _ => self.type_rank().cmp(&other.type_rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int64(i)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float64(f)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<Object> for Value {
    fn from(o: Object) -> Self {
        Value::Object(Arc::new(o))
    }
}
impl From<Vec<Value>> for Value {
    fn from(a: Vec<Value>) -> Self {
        Value::Array(a)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map(Into::into).unwrap_or(Value::Null)
    }
}

/// Builds an object value: `obj! { "a" => 1i64, "b" => "x" }`.
#[macro_export]
macro_rules! obj {
    ($($k:expr => $v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut m = $crate::value::Object::new();
        $( m.insert($k.to_string(), $crate::value::Value::from($v)); )*
        $crate::value::Value::from(m)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rules() {
        // 2 (object) + "a": 1+2 + 9 (int) + "bb": 2+2 + 3+2 (string) + "c": 1+2 + 2+1+1 (array).
        let v = obj! {"a" => 1i64, "bb" => "xyz", "c" => Value::Array(vec![Value::Null, Value::Bool(true)])};
        assert_eq!(v.size_bytes(), 30);
        assert!(v.size_exceeds(29));
        assert!(!v.size_exceeds(30));
        assert_eq!(Value::Bytes(vec![0; 5]).size_bytes(), 7);
        assert_eq!(Value::Float64(1.5).size_bytes(), 9);
    }
}
