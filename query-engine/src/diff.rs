//! How a changed query result travels to a subscriber: either the whole new value, or — when
//! old and new are both lists and the part where they differ is documents keyed by a unique
//! string `_id` — the edits that turn the old list into the new one. Sliding windows and
//! appends, the common shapes, cost a few edits.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// The field that identifies a document inside a result list.
pub use crate::schema::ID_FIELD;

/// How a subscriber gets from its previous result to the new one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "camelCase")]
pub enum ResultDiff {
    /// The new result in full.
    Replace(Value),
    /// Edits applied in order to the previous array; each index refers to the array as it is
    /// after the edits before it.
    Array(Vec<ArrayEdit>),
}

/// One step of an array diff. `id` repeats the `_id` of the element being removed or changed so
/// that a client whose previous result has drifted detects it instead of corrupting its copy.
/// On the wire a map tagged by `op`; decoded through `EditFields` (see there).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum ArrayEdit {
    Remove {
        index: u32,
        id: String,
    },
    Insert {
        index: u32,
        value: Value,
    },
    Change {
        index: u32,
        id: String,
        value: Value,
    },
}

/// An `ArrayEdit`'s fields, decoded straight off the map. The derived decoder of an
/// internally tagged enum first buffers the whole map (documents included) to find the tag,
/// then decodes it again; clients decode every edit they receive, so this reads it once.
#[derive(Deserialize)]
struct EditFields {
    op: EditOp,
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, deserialize_with = "crate::value_serde::present")]
    value: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
enum EditOp {
    Remove,
    Insert,
    Change,
}

impl<'de> Deserialize<'de> for ArrayEdit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let f = EditFields::deserialize(d)?;
        let id = |id: Option<String>| id.ok_or_else(|| D::Error::missing_field("id"));
        let value = |v: Option<Value>| v.ok_or_else(|| D::Error::missing_field("value"));
        Ok(match f.op {
            EditOp::Remove => ArrayEdit::Remove {
                index: f.index,
                id: id(f.id)?,
            },
            EditOp::Insert => ArrayEdit::Insert {
                index: f.index,
                value: value(f.value)?,
            },
            EditOp::Change => ArrayEdit::Change {
                index: f.index,
                id: id(f.id)?,
                value: value(f.value)?,
            },
        })
    }
}

/// Why a diff could not be applied to the value a client holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("array diff applied to a {found} value")]
    NotAnArray { found: &'static str },
    #[error("edit index {index} out of range for an array of length {len}")]
    IndexOutOfRange { index: u32, len: usize },
    #[error("element at index {index} has id {found:?}, the edit expects {expected:?}")]
    IdMismatch {
        index: u32,
        expected: String,
        found: Option<String>,
    },
}

/// The diff that turns `old` into `new`, or `None` when they are equal.
///
/// Elements equal at the front and at the back of both lists (a re-run window shares its
/// unchanged documents with the previous result, so these compare by pointer) need no edits;
/// only the middle that differs is keyed by `_id` and diffed. A window that slid or grew thus
/// costs a pass of pointer comparisons, not a lookup of every document's id.
pub fn diff(old: &Value, new: &Value) -> Option<ResultDiff> {
    if old == new {
        return None;
    }
    let replace = || Some(ResultDiff::Replace(new.clone()));
    let (Value::Array(old_items), Value::Array(new_items)) = (old, new) else {
        return replace();
    };
    // u32 indices on the wire; a result this long is sent whole.
    if old_items.len() > u32::MAX as usize || new_items.len() > u32::MAX as usize {
        return replace();
    }
    let (prefix, suffix) = common_ends(old_items, new_items);
    let old_mid = &old_items[prefix..old_items.len() - suffix];
    let new_mid = &new_items[prefix..new_items.len() - suffix];
    // The new middle's ids are only checked for uniqueness; lookups go to the old one's.
    let (Some(old_ids), Some(_)) = (keyed_ids(old_mid), keyed_ids(new_mid)) else {
        return replace();
    };
    let edits = array_edits(old_mid, &old_ids, new_mid, prefix);
    let edits_bytes: usize = edits.iter().map(edit_size_bytes).sum();
    if !new.size_exceeds(edits_bytes) {
        return replace();
    }
    Some(ResultDiff::Array(edits))
}

/// How many elements the two lists have equal at their front, and then at their back (never
/// counting an element twice). Unchanged documents of a re-run are the same objects, so
/// they compare by pointer.
pub(crate) fn common_ends(old: &[Value], new: &[Value]) -> (usize, usize) {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..]
        .iter()
        .rev()
        .zip(new[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    (prefix, suffix)
}

/// Applies `diff` to the value the client holds, returning the new value.
pub fn apply(old: &Value, diff: &ResultDiff) -> Result<Value, DiffError> {
    if let ResultDiff::Replace(v) = diff {
        return Ok(v.clone());
    }
    let mut new = old.clone();
    apply_in_place(&mut new, diff)?;
    Ok(new)
}

/// Applies `diff` to `value` in place, without copying the array; on error `value` is left
/// exactly as it was (the edits made so far are undone).
pub fn apply_in_place(value: &mut Value, diff: &ResultDiff) -> Result<(), DiffError> {
    let edits = match diff {
        ResultDiff::Replace(v) => {
            *value = v.clone();
            return Ok(());
        }
        ResultDiff::Array(edits) => edits,
    };
    let Value::Array(items) = value else {
        return Err(DiffError::NotAnArray {
            found: value.type_name(),
        });
    };
    let mut undo: Vec<Undo> = Vec::with_capacity(edits.len());
    for edit in edits {
        match apply_edit(items, edit) {
            Ok(u) => undo.push(u),
            Err(e) => {
                for u in undo.into_iter().rev() {
                    match u {
                        Undo::Reinsert(i, v) => items.insert(i, v),
                        Undo::Restore(i, v) => items[i] = v,
                        Undo::Remove(i) => drop(items.remove(i)),
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// How to take back one applied edit: what it displaced, and where.
enum Undo {
    Reinsert(usize, Value),
    Restore(usize, Value),
    Remove(usize),
}

fn apply_edit(items: &mut Vec<Value>, edit: &ArrayEdit) -> Result<Undo, DiffError> {
    match edit {
        ArrayEdit::Remove { index, id } => {
            check_id(items, *index, id)?;
            let i = *index as usize;
            Ok(Undo::Reinsert(i, items.remove(i)))
        }
        ArrayEdit::Insert { index, value } => {
            let i = *index as usize;
            if i > items.len() {
                return Err(DiffError::IndexOutOfRange {
                    index: *index,
                    len: items.len(),
                });
            }
            items.insert(i, value.clone());
            Ok(Undo::Remove(i))
        }
        ArrayEdit::Change { index, id, value } => {
            check_id(items, *index, id)?;
            let i = *index as usize;
            Ok(Undo::Restore(
                i,
                std::mem::replace(&mut items[i], value.clone()),
            ))
        }
    }
}

fn check_id(items: &[Value], index: u32, expected: &str) -> Result<(), DiffError> {
    let Some(item) = items.get(index as usize) else {
        return Err(DiffError::IndexOutOfRange {
            index,
            len: items.len(),
        });
    };
    let found = doc_id(item);
    if found != Some(expected) {
        return Err(DiffError::IdMismatch {
            index,
            expected: expected.to_string(),
            found: found.map(str::to_string),
        });
    }
    Ok(())
}

fn doc_id(item: &Value) -> Option<&str> {
    item.as_object()?.get(ID_FIELD)?.as_str()
}

/// Results up to this length look ids up by scanning (no hashing, no allocation per id);
/// subscribed windows are mostly this small.
const SMALL_RESULT_LEN: usize = 32;

/// Each `_id`'s position in a result list.
enum Ids<'a> {
    /// Ids in list order, looked up by scanning.
    Small(Vec<&'a str>),
    Map(HashMap<&'a str, usize>),
}

impl Ids<'_> {
    fn get(&self, id: &str) -> Option<usize> {
        match self {
            Ids::Small(ids) => ids.iter().position(|i| *i == id),
            Ids::Map(m) => m.get(id).copied(),
        }
    }
}

/// Maps each `_id` to its position, or `None` unless every element is an object with a unique
/// string `_id` (only then is an element's identity well defined).
fn keyed_ids(items: &[Value]) -> Option<Ids<'_>> {
    if items.len() <= SMALL_RESULT_LEN {
        let mut ids: Vec<&str> = Vec::with_capacity(items.len());
        for item in items {
            let id = doc_id(item)?;
            if ids.contains(&id) {
                return None;
            }
            ids.push(id);
        }
        return Some(Ids::Small(ids));
    }
    let mut ids = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if ids.insert(doc_id(item)?, i).is_some() {
            return None;
        }
    }
    Some(Ids::Map(ids))
}

/// Removes (back to front, so each index is the element's old position), then walks the new
/// array front to back inserting or changing. The documents kept in place are the longest
/// run of common ids whose relative order did not change; every other common id moved and
/// is removed and re-inserted. `old_items` and `new_items` start at position `offset` of the
/// whole lists (after their common prefix); edit indices count from the lists' start.
fn array_edits(
    old_items: &[Value],
    old_ids: &Ids<'_>,
    new_items: &[Value],
    offset: usize,
) -> Vec<ArrayEdit> {
    // Old positions of the common documents, in new order.
    let common_old_positions: Vec<usize> = new_items
        .iter()
        .filter_map(|item| doc_id(item).and_then(|id| old_ids.get(id)))
        .collect();
    // kept[old position]: the document stays where it is relative to the other kept ones.
    let mut kept = vec![false; old_items.len()];
    for p in longest_increasing_subsequence(&common_old_positions) {
        kept[p] = true;
    }

    let mut edits = Vec::new();
    for (old_pos, item) in old_items.iter().enumerate().rev() {
        let id = doc_id(item).unwrap_or_default();
        // A kept position is by construction the position of a common id.
        if !kept[old_pos] {
            edits.push(ArrayEdit::Remove {
                index: (offset + old_pos) as u32,
                id: id.to_string(),
            });
        }
    }
    for (new_pos, item) in new_items.iter().enumerate() {
        let id = doc_id(item).unwrap_or_default();
        match old_ids.get(id) {
            Some(old_pos) if kept[old_pos] => {
                if old_items[old_pos] != *item {
                    edits.push(ArrayEdit::Change {
                        index: (offset + new_pos) as u32,
                        id: id.to_string(),
                        value: item.clone(),
                    });
                }
            }
            _ => edits.push(ArrayEdit::Insert {
                index: (offset + new_pos) as u32,
                value: item.clone(),
            }),
        }
    }
    edits
}

/// The values of one longest strictly increasing subsequence of `seq` (O(n log n), patience
/// sorting with back pointers).
fn longest_increasing_subsequence(seq: &[usize]) -> Vec<usize> {
    // tails[k] = index into seq of the smallest tail of an increasing run of length k + 1.
    let mut tails: Vec<usize> = Vec::new();
    let mut prev: Vec<Option<usize>> = vec![None; seq.len()];
    for (i, &x) in seq.iter().enumerate() {
        let k = tails.partition_point(|&t| seq[t] < x);
        prev[i] = k.checked_sub(1).map(|k| tails[k]);
        if k == tails.len() {
            tails.push(i);
        } else {
            tails[k] = i;
        }
    }
    let mut out = Vec::with_capacity(tails.len());
    let mut cur = tails.last().copied();
    while let Some(i) = cur {
        out.push(seq[i]);
        cur = prev[i];
    }
    out.reverse();
    out
}

fn edit_size_bytes(edit: &ArrayEdit) -> usize {
    // Tag, field names and index: a rough constant per edit.
    const EDIT_OVERHEAD_BYTES: usize = 16;
    EDIT_OVERHEAD_BYTES
        + match edit {
            ArrayEdit::Remove { id, .. } => id.len(),
            ArrayEdit::Insert { value, .. } => value.size_bytes(),
            ArrayEdit::Change { id, value, .. } => id.len() + value.size_bytes(),
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::obj;
    use proptest::prelude::*;

    fn doc(id: u32, n: i64) -> Value {
        obj! { "_id" => format!("d{id}"), "n" => n, "body" => "some text in the document" }
    }

    fn docs(range: std::ops::Range<u32>) -> Value {
        Value::Array(range.map(|i| doc(i, i as i64)).collect())
    }

    fn roundtrip(old: &Value, new: &Value) -> Option<ResultDiff> {
        let d = diff(old, new);
        let got = match &d {
            None => old.clone(),
            Some(d) => apply(old, d).expect("diff produced by diff() applies"),
        };
        assert_eq!(&got, new);
        d
    }

    fn array_edits_of(d: Option<ResultDiff>) -> Vec<ArrayEdit> {
        match d {
            Some(ResultDiff::Array(edits)) => edits,
            other => panic!("expected an array diff, got {other:?}"),
        }
    }

    #[test]
    fn equal_values_have_no_diff() {
        assert_eq!(diff(&docs(0..10), &docs(0..10)), None);
        assert_eq!(diff(&Value::Int64(3), &Value::Int64(3)), None);
    }

    #[test]
    fn sliding_window_is_one_remove_and_one_insert() {
        let edits = array_edits_of(roundtrip(&docs(0..50), &docs(1..51)));
        assert_eq!(edits.len(), 2, "{edits:?}");
        assert!(matches!(&edits[0], ArrayEdit::Remove { index: 0, id } if id == "d0"));
        assert!(matches!(&edits[1], ArrayEdit::Insert { index: 49, .. }));
    }

    #[test]
    fn append_is_one_insert() {
        let edits = array_edits_of(roundtrip(&docs(0..50), &docs(0..51)));
        assert_eq!(edits.len(), 1);
    }

    #[test]
    fn change_in_place() {
        let old = docs(0..20);
        let mut new_items = old.as_array().unwrap().to_vec();
        new_items[7] = doc(7, 700);
        let edits = array_edits_of(roundtrip(&old, &Value::Array(new_items)));
        assert_eq!(edits.len(), 1);
        assert!(matches!(&edits[0], ArrayEdit::Change { index: 7, id, .. } if id == "d7"));
    }

    #[test]
    fn move_is_remove_and_insert() {
        let old = docs(0..20);
        let mut new_items = old.as_array().unwrap().to_vec();
        let moved = new_items.remove(3);
        new_items.push(moved);
        let edits = array_edits_of(roundtrip(&old, &Value::Array(new_items)));
        assert_eq!(edits.len(), 2, "{edits:?}");
    }

    #[test]
    fn unrelated_arrays_are_replaced() {
        assert!(matches!(
            roundtrip(&docs(0..10), &docs(100..110)),
            Some(ResultDiff::Replace(_))
        ));
    }

    #[test]
    fn arrays_without_unique_ids_are_replaced() {
        let dup = Value::Array(vec![doc(1, 1), doc(1, 2)]);
        assert!(matches!(
            roundtrip(&docs(0..2), &dup),
            Some(ResultDiff::Replace(_))
        ));
        let plain = Value::Array(vec![Value::Int64(1), Value::Int64(2)]);
        assert!(matches!(
            roundtrip(&Value::Array(vec![Value::Int64(1)]), &plain),
            Some(ResultDiff::Replace(_))
        ));
    }

    /// Only the differing middle must be keyed: elements shared at both ends are left alone
    /// whatever they are, and edit indices count from the start of the whole list.
    #[test]
    fn common_ends_are_not_keyed() {
        let mut old_items = vec![Value::Int64(1), doc(1, 1), doc(1, 1)];
        old_items.extend(docs(5..8).as_array().unwrap_or_default().iter().cloned());
        old_items.push(Value::Null);
        let mut new_items = old_items.clone();
        new_items[4] = doc(6, 60);
        new_items.insert(5, doc(9, 9));
        let edits = array_edits_of(roundtrip(
            &Value::Array(old_items),
            &Value::Array(new_items),
        ));
        assert_eq!(edits.len(), 2, "{edits:?}");
        assert!(matches!(&edits[0], ArrayEdit::Change { index: 4, id, .. } if id == "d6"));
        assert!(matches!(&edits[1], ArrayEdit::Insert { index: 5, .. }));
    }

    #[test]
    fn apply_rejects_drifted_state() {
        let d = ResultDiff::Array(vec![ArrayEdit::Remove {
            index: 0,
            id: "d9".into(),
        }]);
        assert!(matches!(
            apply(&docs(0..3), &d),
            Err(DiffError::IdMismatch { index: 0, .. })
        ));
        let d = ResultDiff::Array(vec![ArrayEdit::Insert {
            index: 4,
            value: Value::Null,
        }]);
        assert_eq!(
            apply(&docs(0..3), &d),
            Err(DiffError::IndexOutOfRange { index: 4, len: 3 })
        );
        let d = ResultDiff::Array(vec![ArrayEdit::Change {
            index: 3,
            id: "d3".into(),
            value: Value::Null,
        }]);
        assert!(matches!(
            apply(&docs(0..3), &d),
            Err(DiffError::IndexOutOfRange { .. })
        ));
        assert_eq!(
            apply(&Value::Null, &d),
            Err(DiffError::NotAnArray { found: "null" })
        );
    }

    /// The worked example in docs/protocol.md §7.
    #[test]
    fn documented_example() {
        let text = "a paragraph long enough that edits beat resending the list";
        let d = |id: &str, n: i64| obj! { "_id" => id, "n" => n, "text" => text };
        let old = Value::Array(vec![d("a", 1), d("b", 2), d("c", 3)]);
        let new = Value::Array(vec![d("b", 2), d("c", 30), d("d", 4)]);
        let edits = array_edits_of(roundtrip(&old, &new));
        assert_eq!(
            edits,
            vec![
                ArrayEdit::Remove {
                    index: 0,
                    id: "a".into()
                },
                ArrayEdit::Change {
                    index: 1,
                    id: "c".into(),
                    value: d("c", 30)
                },
                ArrayEdit::Insert {
                    index: 2,
                    value: d("d", 4)
                },
            ]
        );
    }

    #[test]
    fn lis_finds_longest_run() {
        let lis = longest_increasing_subsequence(&[3, 1, 2, 8, 4, 5, 0]);
        assert_eq!(lis, vec![1, 2, 4, 5]);
        assert!(longest_increasing_subsequence(&[]).is_empty());
    }

    /// One step of a random mutation of a document list.
    #[derive(Clone, Debug)]
    enum Op {
        Remove(usize),
        Insert(usize),
        Change(usize, i64),
        Move(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<usize>().prop_map(Op::Remove),
            any::<usize>().prop_map(Op::Insert),
            (any::<usize>(), any::<i64>()).prop_map(|(i, n)| Op::Change(i, n)),
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Move(a, b)),
        ]
    }

    fn mutate(old: &[Value], ops: &[Op], mut next_id: u32) -> Vec<Value> {
        let mut items = old.to_vec();
        for op in ops {
            let len = items.len();
            match *op {
                Op::Remove(i) if len > 0 => {
                    items.remove(i % len);
                }
                Op::Insert(i) => {
                    items.insert(i % (len + 1), doc(next_id, 0));
                    next_id += 1;
                }
                Op::Change(i, n) if len > 0 => {
                    let id = doc_id(&items[i % len]).unwrap_or_default().to_string();
                    items[i % len] = obj! { "_id" => id, "n" => n };
                }
                Op::Move(a, b) if len > 0 => {
                    let item = items.remove(a % len);
                    items.insert(b % len, item);
                }
                _ => {}
            }
        }
        items
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Int64),
            any::<bool>().prop_map(Value::Bool),
            "[a-z]{0,8}".prop_map(Value::String),
            prop::collection::vec(any::<i64>().prop_map(Value::Int64), 0..5).prop_map(Value::Array),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn apply_of_diff_gives_new(len in 0u32..40, ops in prop::collection::vec(op(), 0..12)) {
            let old = docs(0..len);
            let new = Value::Array(mutate(old.as_array().unwrap_or_default(), &ops, 1000));
            roundtrip(&old, &new);
        }

        #[test]
        fn failed_apply_leaves_the_value_as_it_was(
            len in 0u32..40,
            ops in prop::collection::vec(op(), 1..12),
            bad in any::<prop::sample::Index>(),
        ) {
            let old = docs(0..len);
            let new = Value::Array(mutate(old.as_array().unwrap_or_default(), &ops, 1000));
            let Some(ResultDiff::Array(mut edits)) = diff(&old, &new) else {
                return Ok(());
            };
            // The edits before the spoilt one apply; then it fails and they are taken back.
            let k = bad.index(edits.len());
            edits[k] = ArrayEdit::Remove { index: u32::MAX, id: "nowhere".into() };
            let mut v = old.clone();
            prop_assert!(apply_in_place(&mut v, &ResultDiff::Array(edits)).is_err());
            prop_assert_eq!(v, old);
        }

        #[test]
        fn apply_of_diff_gives_new_for_any_shape(
            len in 0u32..10,
            old_scalar in scalar(),
            new_scalar in scalar(),
            pick in 0u8..4,
        ) {
            let (old, new) = match pick {
                0 => (old_scalar, new_scalar),
                1 => (docs(0..len), new_scalar),
                2 => (old_scalar, docs(0..len)),
                _ => (Value::Array(vec![old_scalar]), docs(0..len)),
            };
            roundtrip(&old, &new);
        }

        #[test]
        fn size_exceeds_agrees_with_size_bytes(v in crate::encoding::tests::arb_value(), slack in 0usize..64, under in any::<bool>()) {
            let size = v.size_bytes();
            let limit = if under { size.saturating_sub(slack) } else { size + slack };
            prop_assert_eq!(v.size_exceeds(limit), size > limit);
        }

        #[test]
        fn sliding_window_edits_stay_small(start in 0u32..100, width in 5u32..100, shift in 1u32..3) {
            let d = roundtrip(&docs(start..start + width), &docs(start + shift..start + width + shift));
            let edits = array_edits_of(d);
            prop_assert_eq!(edits.len(), 2 * shift as usize);
        }
    }
}
