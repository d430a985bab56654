//! The API a query or mutation handler sees: `ctx.auth()`, `ctx.now_ms()`, document reads and
//! writes by table, index range queries with pagination, and the scheduler. All of it goes
//! through the transaction, so every read lands in the read set and every write is buffered.

use std::sync::Arc;

use crate::catalog::{IndexInfo, TableInfo};
use crate::encoding::{encode_value, prefix_successor};
use crate::error::{FunctionError, FunctionResult};
use crate::functions::{FunctionKind, Functions};
use crate::id::DocumentId;
use crate::identity::Identity;
use crate::scheduler::{self, SCHEDULED_JOBS};
use crate::transaction::{limit_error, Order, RangeRow, Transaction};
use crate::value::{Object, Value};

/// Largest `take`/page size a single index query may ask for.
pub const MAX_TAKE: usize = 8_192;

pub struct Ctx<'t, 's> {
    pub(crate) txn: &'t mut Transaction<'s>,
    auth: Option<&'t Identity>,
    functions: &'t Functions,
    kind: FunctionKind,
}

/// One page of a paginated index query. `continue_cursor` resumes after the last row.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub page: Vec<Value>,
    pub continue_cursor: Option<String>,
    pub is_done: bool,
}

impl<'t, 's> Ctx<'t, 's> {
    pub(crate) fn new(
        txn: &'t mut Transaction<'s>,
        auth: Option<&'t Identity>,
        functions: &'t Functions,
        kind: FunctionKind,
    ) -> Self {
        Ctx {
            txn,
            auth,
            functions,
            kind,
        }
    }

    /// The verified identity of the caller, if any.
    pub fn auth(&self) -> Option<&Identity> {
        self.auth
    }

    /// Deterministic "now" in ms: the snapshot time for queries (so a query's result depends
    /// only on the data), the transaction's start time for mutations.
    pub fn now_ms(&self) -> i64 {
        self.txn.now_ms()
    }

    /// A generator seeded per transaction: the only randomness a function may use.
    pub fn rng(&mut self) -> &mut rand::rngs::StdRng {
        self.txn.rng()
    }

    pub fn kind(&self) -> FunctionKind {
        self.kind
    }

    pub fn parse_id(&self, table: &str, id: &str) -> FunctionResult<DocumentId> {
        self.txn.parse_id(table, id)
    }

    /// Reads a document of `table` by its id string; an id of another table is an error.
    pub fn get(&mut self, table: &str, id: &str) -> FunctionResult<Option<Value>> {
        let id = self.txn.parse_id(table, id)?;
        Ok(self.txn.get(id)?.map(|d| (*d).clone()))
    }

    pub fn get_by_id(&mut self, id: DocumentId) -> FunctionResult<Option<Arc<Value>>> {
        self.txn.get(id)
    }

    /// Starts an index range query on `table.index` (`by_id`, `by_creation_time` or a
    /// schema index).
    pub fn query<'c>(&'c mut self, table: &str, index: &str) -> IndexQuery<'c, 't, 's> {
        let resolved = self.txn.table(table).and_then(|t| {
            t.index(index)
                .map(|i| (t, i))
                .ok_or_else(|| FunctionError::internal(format!("no index {table}.{index}")))
        });
        match resolved {
            Ok((t, i)) => IndexQuery {
                ctx: self,
                target: Ok((t, i)),
                // `by_id` keys are ids, which begin with the table number.
                prefix: if i.fields.is_empty() {
                    t.number.0.to_be_bytes().to_vec()
                } else {
                    Vec::new()
                },
                eq_count: 0,
                lower: None,
                upper: None,
                order: Order::Asc,
            },
            Err(e) => IndexQuery {
                ctx: self,
                target: Err(e),
                prefix: Vec::new(),
                eq_count: 0,
                lower: None,
                upper: None,
                order: Order::Asc,
            },
        }
    }

    /// An explicitly marked full-table scan in id order, bounded by `max` documents: more
    /// than `max` is an error rather than a silently truncated answer.
    pub fn full_table_scan(&mut self, table: &str, max: usize) -> FunctionResult<Vec<Value>> {
        self.query(table, crate::schema::BY_ID).collect(max)
    }

    pub fn insert(&mut self, table: &str, fields: Value) -> FunctionResult<String> {
        Ok(self.txn.insert(table, fields)?.to_string())
    }

    pub fn patch(&mut self, table: &str, id: &str, changes: Object) -> FunctionResult<()> {
        let id = self.txn.parse_id(table, id)?;
        self.txn.patch(id, changes)
    }

    pub fn replace(&mut self, table: &str, id: &str, fields: Value) -> FunctionResult<()> {
        let id = self.txn.parse_id(table, id)?;
        self.txn.replace(id, fields)
    }

    pub fn delete(&mut self, table: &str, id: &str) -> FunctionResult<()> {
        let id = self.txn.parse_id(table, id)?;
        self.txn.delete(id)
    }

    /// Schedules `function` to run `delay_ms` from now; takes effect only if this mutation
    /// commits. Returns the job id.
    pub fn schedule_after(
        &mut self,
        delay_ms: i64,
        function: &str,
        args: Value,
    ) -> FunctionResult<String> {
        let at = self.now_ms().saturating_add(delay_ms.max(0));
        self.schedule_at(at, function, args)
    }

    /// Schedules `function` at `at_ms` (ms since the epoch); see `schedule_after`.
    pub fn schedule_at(
        &mut self,
        at_ms: i64,
        function: &str,
        args: Value,
    ) -> FunctionResult<String> {
        if self.kind != FunctionKind::Mutation {
            return Err(FunctionError::internal(
                "only mutations can schedule functions",
            ));
        }
        let def = self
            .functions
            .get(function)
            .ok_or_else(|| FunctionError::internal(format!("no function named {function:?}")))?;
        if def.kind == FunctionKind::Query {
            return Err(FunctionError::internal("queries cannot be scheduled"));
        }
        let job = scheduler::new_job(function, def.kind, args, at_ms, self.now_ms());
        self.insert(SCHEDULED_JOBS, job)
    }
}

/// A range query on one index: `eq` on a prefix of its fields, then at most one range on the
/// next field, a direction, and a bounded terminal (`take`, `first`, `unique`, `collect`,
/// `paginate`). Errors in the builder surface at the terminal.
pub struct IndexQuery<'c, 't, 's> {
    ctx: &'c mut Ctx<'t, 's>,
    target: FunctionResult<(&'s TableInfo, &'s IndexInfo)>,
    prefix: Vec<u8>,
    eq_count: usize,
    lower: Option<(Vec<u8>, bool)>,
    upper: Option<(Vec<u8>, bool)>,
    order: Order,
}

impl IndexQuery<'_, '_, '_> {
    fn expect_field(&mut self, field: &str, what: &str) -> bool {
        let Ok((t, i)) = &self.target else {
            return false;
        };
        let expected = i.fields.get(self.eq_count);
        let ok = expected.is_some_and(|f| f == field)
            && !(what == "eq" && (self.lower.is_some() || self.upper.is_some()));
        if !ok {
            self.target = Err(FunctionError::internal(format!(
                "{what}({field:?}) does not fit index {}.{} {:?} at position {}",
                t.name, i.name, i.fields, self.eq_count
            )));
        }
        ok
    }

    pub fn eq(mut self, field: &str, value: impl Into<Value>) -> Self {
        if self.expect_field(field, "eq") {
            encode_value(&value.into(), &mut self.prefix);
            self.eq_count += 1;
        }
        self
    }

    fn bound(&self, value: Value) -> Vec<u8> {
        let mut k = self.prefix.clone();
        encode_value(&value, &mut k);
        k
    }

    pub fn gt(mut self, field: &str, value: impl Into<Value>) -> Self {
        if self.expect_field(field, "gt") {
            self.lower = Some((self.bound(value.into()), false));
        }
        self
    }

    pub fn gte(mut self, field: &str, value: impl Into<Value>) -> Self {
        if self.expect_field(field, "gte") {
            self.lower = Some((self.bound(value.into()), true));
        }
        self
    }

    pub fn lt(mut self, field: &str, value: impl Into<Value>) -> Self {
        if self.expect_field(field, "lt") {
            self.upper = Some((self.bound(value.into()), false));
        }
        self
    }

    pub fn lte(mut self, field: &str, value: impl Into<Value>) -> Self {
        if self.expect_field(field, "lte") {
            self.upper = Some((self.bound(value.into()), true));
        }
        self
    }

    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    pub fn desc(self) -> Self {
        self.order(Order::Desc)
    }

    /// The key range `[start, end)` this query covers.
    fn key_range(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let start = match &self.lower {
            Some((k, true)) => k.clone(),
            // Keys equal to k continue with the id bytes, so skip all of k's extensions.
            Some((k, false)) => prefix_successor(k).unwrap_or_else(|| k.clone()),
            None => self.prefix.clone(),
        };
        let end = match &self.upper {
            Some((k, false)) => Some(k.clone()),
            Some((k, true)) => prefix_successor(k),
            None if self.prefix.is_empty() => None,
            None => prefix_successor(&self.prefix),
        };
        (start, end)
    }

    fn run(
        &mut self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> FunctionResult<Vec<RangeRow>> {
        let (t, i) = self.target.clone()?;
        if limit > MAX_TAKE + 1 {
            return Err(limit_error("take", MAX_TAKE));
        }
        self.ctx.txn.range(t, i, start, end, self.order, limit)
    }

    pub fn take(mut self, n: usize) -> FunctionResult<Vec<Value>> {
        let (s, e) = self.key_range();
        Ok(self
            .run(s, e, n)?
            .into_iter()
            .map(|r| owned(r.doc))
            .collect())
    }

    pub fn first(self) -> FunctionResult<Option<Value>> {
        Ok(self.take(1)?.into_iter().next())
    }

    /// The single matching document, `None` if there is none, an error if there are several.
    pub fn unique(self) -> FunctionResult<Option<Value>> {
        let mut rows = self.take(2)?;
        if rows.len() > 1 {
            return Err(FunctionError::internal(
                "unique() matched more than one document",
            ));
        }
        Ok(rows.pop())
    }

    /// All matching documents, or an error if there are more than `max`.
    pub fn collect(self, max: usize) -> FunctionResult<Vec<Value>> {
        let mut rows = self.take(max.saturating_add(1))?;
        if rows.len() > max {
            rows.clear();
            return Err(limit_error("collect", max));
        }
        Ok(rows)
    }

    /// One page of `page_size` rows after `cursor` (from a previous page's
    /// `continue_cursor`). Cursors are stable: rows inserted before the cursor position do not
    /// shift later pages. A cursor from another query is a `VALIDATION_ERROR`.
    pub fn paginate(mut self, cursor: Option<&str>, page_size: usize) -> FunctionResult<Page> {
        if page_size == 0 {
            return Err(FunctionError::validation("page size must be at least 1"));
        }
        let (mut start, mut end) = self.key_range();
        let index_id = self.target.as_ref().map(|(_, i)| i.id.0).unwrap_or(0);
        if let Some(c) = cursor {
            // A cursor holds an index key, which is at most the encoding of one document's
            // fields (escaping at most doubles them) and the id.
            let max_key_bytes = 2 * self.ctx.txn.limits().max_document_bytes + 64;
            let key = decode_cursor(c, index_id, max_key_bytes)
                .filter(|k| *k >= start && end.as_ref().is_none_or(|e| k < e))
                .ok_or_else(|| FunctionError::validation("invalid pagination cursor"))?;
            match self.order {
                Order::Asc => {
                    let mut s = key;
                    s.push(0);
                    start = s;
                }
                Order::Desc => end = Some(key),
            }
        }
        let rows = self.run(start, end, page_size)?;
        let is_done = rows.len() < page_size;
        let continue_cursor = rows.last().map(|r| encode_cursor(index_id, &r.key));
        Ok(Page {
            page: rows.into_iter().map(|r| owned(r.doc)).collect(),
            continue_cursor: continue_cursor.or_else(|| cursor.map(str::to_string)),
            is_done,
        })
    }
}

/// The document itself when this read holds the only reference (decoded from storage for
/// it), else a clone, which shares the object (memtable or cache) rather than copying it.
fn owned(doc: Arc<Value>) -> Value {
    Arc::try_unwrap(doc).unwrap_or_else(|shared| (*shared).clone())
}

fn encode_cursor(index: u32, key: &[u8]) -> String {
    let mut s = format!("{index:08x}");
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn decode_cursor(c: &str, index: u32, max_key_bytes: usize) -> Option<Vec<u8>> {
    if c.len() < 8 || !c.len().is_multiple_of(2) || c.len() > 8 + 2 * max_key_bytes {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..c.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(c.get(i..i + 2)?, 16).ok())
        .collect();
    let bytes = bytes?;
    let (head, key) = bytes.split_at(4);
    (u32::from_be_bytes(head.try_into().ok()?) == index).then(|| key.to_vec())
}
