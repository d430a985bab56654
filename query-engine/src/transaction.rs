//! A transaction: reads through layers (own writes, then the committer's batch overlay, then
//! the storage snapshot), recording every read as an index range, and buffers writes with the
//! index changes they imply. Limits on reads, writes, sizes and run time are enforced here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::catalog::{Catalog, IndexInfo, TableInfo, READINESS_KEY};
use crate::doc_cache::SizedDoc;
use crate::encoding::{encode_missing, encode_value, prefix_successor};
use crate::error::{FunctionError, FunctionResult};
use crate::id::{DocumentId, ID_BYTES, MAX_INTERNAL_ID};
use crate::key_merge::MergedKeys;
use crate::reads::{KeyRange, ReadSet};
use crate::schema::{user_fields, CREATION_TIME_FIELD, ID_FIELD, SYSTEM_FIELDS};
use crate::storage::{Snapshot, StorageError};
use crate::value::{Object, Value};
use crate::writes::{storage_key, WriteSet};

/// Per-call limits. Overruns fail the call with `VALIDATION_ERROR` naming the limit, and
/// nothing is written.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_documents_read: usize,
    pub max_bytes_read: usize,
    pub max_documents_written: usize,
    pub max_bytes_written: usize,
    pub max_document_bytes: usize,
    pub max_result_bytes: usize,
    pub max_run_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_documents_read: 16_384,
            max_bytes_read: 16 << 20,
            max_documents_written: 8_192,
            max_bytes_written: 8 << 20,
            max_document_bytes: 1 << 20,
            max_result_bytes: 8 << 20,
            max_run_time: Duration::from_secs(1),
        }
    }
}

pub(crate) fn limit_error(limit: &str, max: usize) -> FunctionError {
    FunctionError::validation(format!("limit exceeded: {limit} (max {max})"))
        .with_data(crate::obj! { "limit" => limit, "max" => max as i64 })
}

impl From<StorageError> for FunctionError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = %e, "storage error");
        FunctionError::internal("storage error")
    }
}

/// Scan direction of an index range read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// One document returned by a range read, with its index key (for cursors).
pub struct RangeRow {
    pub key: Vec<u8>,
    pub doc: Arc<Value>,
}

pub struct Transaction<'s> {
    snapshot: &'s Snapshot,
    base: Option<&'s WriteSet>,
    catalog: &'s Catalog,
    ids: &'s AtomicU64,
    limits: &'s Limits,
    pub(crate) reads: ReadSet,
    pub(crate) writes: WriteSet,
    docs_read: usize,
    bytes_read: usize,
    started: Instant,
    now_ms: i64,
    read_only: bool,
    rng: StdRng,
}

impl<'s> Transaction<'s> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        snapshot: &'s Snapshot,
        base: Option<&'s WriteSet>,
        catalog: &'s Catalog,
        ids: &'s AtomicU64,
        limits: &'s Limits,
        now_ms: i64,
        read_only: bool,
        seed: u64,
    ) -> Self {
        Transaction {
            snapshot,
            base,
            catalog,
            ids,
            limits,
            reads: ReadSet::default(),
            writes: WriteSet::default(),
            docs_read: 0,
            bytes_read: 0,
            started: Instant::now(),
            now_ms,
            read_only,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn snapshot_ts(&self) -> u64 {
        self.snapshot.ts
    }

    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    pub fn catalog(&self) -> &Catalog {
        self.catalog
    }

    pub fn limits(&self) -> &Limits {
        self.limits
    }

    pub(crate) fn into_parts(self) -> (ReadSet, WriteSet) {
        (self.reads, self.writes)
    }

    pub fn table(&self, name: &str) -> FunctionResult<&'s TableInfo> {
        self.catalog
            .table(name)
            .ok_or_else(|| FunctionError::internal(format!("no table named {name:?}")))
    }

    /// Parses a client-supplied id string as an id of `table`.
    pub fn parse_id(&self, table: &str, id: &str) -> FunctionResult<DocumentId> {
        let t = self.table(table)?;
        let parsed = DocumentId::parse(id)
            .map_err(|_| FunctionError::validation(format!("not a valid id: {id:?}")))?;
        if parsed.table != t.number {
            return Err(FunctionError::validation(format!(
                "expected an id of table {table:?}, got an id of another table"
            )));
        }
        Ok(parsed)
    }

    fn check_time(&self) -> FunctionResult<()> {
        if self.started.elapsed() > self.limits.max_run_time {
            return Err(limit_error(
                "runTimeMs",
                self.limits.max_run_time.as_millis() as usize,
            ));
        }
        Ok(())
    }

    /// Counts one document read, of `bytes` stored bytes, against the read limits.
    fn count_read(&mut self, bytes: usize) -> FunctionResult<()> {
        self.docs_read += 1;
        self.bytes_read += bytes;
        if self.docs_read > self.limits.max_documents_read {
            return Err(limit_error("documentsRead", self.limits.max_documents_read));
        }
        if self.bytes_read > self.limits.max_bytes_read {
            return Err(limit_error("bytesRead", self.limits.max_bytes_read));
        }
        Ok(())
    }

    /// The document's current state as this transaction sees it, with its stored length,
    /// without recording a read.
    fn lookup(&self, id: &DocumentId) -> FunctionResult<Option<SizedDoc>> {
        if let Some(d) = self.writes.doc(id) {
            return Ok(d);
        }
        if let Some(d) = self.base.and_then(|b| b.doc(id)) {
            return Ok(d);
        }
        Ok(self.snapshot.get_sized(id)?)
    }

    /// Point read by id; records the `by_id` point range.
    pub fn get(&mut self, id: DocumentId) -> FunctionResult<Option<Arc<Value>>> {
        self.check_time()?;
        let table = self
            .catalog
            .table_by_number(id.table)
            .ok_or_else(|| FunctionError::validation("id of an unknown table"))?;
        self.reads
            .record(table.by_id().id, KeyRange::point(&id.to_bytes()));
        let Some((doc, bytes)) = self.lookup(&id)? else {
            return Ok(None);
        };
        self.count_read(bytes)?;
        Ok(Some(doc))
    }

    /// Reads up to `limit` documents of `index` with keys in `[start, end)` (keys without the
    /// index prefix), recording exactly the range examined: up to the last row returned when
    /// the limit stopped the scan, the whole range when it ran out.
    pub fn range(
        &mut self,
        table: &TableInfo,
        index: &IndexInfo,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        order: Order,
        limit: usize,
    ) -> FunctionResult<Vec<RangeRow>> {
        self.check_time()?;
        if !index.readable_at(self.snapshot.ts) {
            // Recorded so the commit that makes the index ready invalidates this reader, even
            // one that went on without the index.
            self.reads.record(index.id, KeyRange::point(READINESS_KEY));
            return Err(FunctionError::validation(format!(
                "index {}.{} is still backfilling and cannot be read yet",
                table.name, index.name
            )));
        }
        if end.as_ref().is_some_and(|e| *e <= start) {
            // Bounds that cross (`gt(5).lt(3)`) select nothing, and nothing can change that.
            return Ok(Vec::new());
        }
        let desc = order == Order::Desc;
        let is_by_id = index.fields.is_empty();
        let keys = if is_by_id {
            self.merged_doc_keys(&start, end.as_deref(), desc, limit)?
        } else {
            let s = storage_key(index.id, &start);
            let e = match &end {
                Some(e) => storage_key(index.id, e),
                None => {
                    prefix_successor(&index.id.0.to_be_bytes()).unwrap_or_else(|| vec![0xff; 5])
                }
            };
            // Strip the 4-byte index id in place rather than copying each key.
            let mut keys = self.merged_index_keys(&s, Some(&e), desc, limit)?;
            for k in &mut keys {
                k.drain(..4);
            }
            keys
        };
        let examined = match (keys.len() >= limit, keys.last()) {
            (true, Some(last)) if desc => KeyRange {
                start: last.clone(),
                end: end.clone(),
            },
            (true, Some(last)) => KeyRange {
                start: start.clone(),
                end: Some(KeyRange::point(last).end.unwrap_or_default()),
            },
            _ => KeyRange {
                start: start.clone(),
                end: end.clone(),
            },
        };
        self.reads.record(index.id, examined);
        let mut rows = Vec::with_capacity(keys.len());
        for key in keys {
            let id = id_of_key(&key)?;
            let Some((doc, bytes)) = self.lookup(&id)? else {
                return Err(FunctionError::internal("index entry without document"));
            };
            self.count_read(bytes)?;
            rows.push(RangeRow { key, doc });
        }
        Ok(rows)
    }

    /// Storage keys of index entries (index number first) in `[start, end)` visible to this
    /// transaction, merged from storage and the write overlays (own writes over the batch
    /// overlay).
    pub(crate) fn merged_index_keys(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
        limit: usize,
    ) -> FunctionResult<Vec<Vec<u8>>> {
        let overlay = self.overlay(|ws, out| {
            for (k, present) in ws.entries_in(start, end) {
                out.insert(k.clone(), present);
            }
        });
        merge(
            self.snapshot.index_keys(start, end, desc)?,
            overlay,
            desc,
            limit,
        )
    }

    /// Document ids (as 12-byte keys) visible to this transaction in `[start, end)`.
    fn merged_doc_keys(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        desc: bool,
        limit: usize,
    ) -> FunctionResult<Vec<Vec<u8>>> {
        let overlay = self.overlay(|ws, out| {
            for (id, doc) in &ws.docs {
                let k = id.to_bytes().to_vec();
                if k.as_slice() >= start && end.is_none_or(|e| k.as_slice() < e) {
                    out.insert(k, doc.is_some());
                }
            }
        });
        merge(
            self.snapshot.doc_keys(start, end, desc)?,
            overlay,
            desc,
            limit,
        )
    }

    /// Collects overlay keys (present or removed) from the batch overlay, then this
    /// transaction's own writes, so later layers win.
    fn overlay(
        &self,
        collect: impl Fn(&WriteSet, &mut BTreeMap<Vec<u8>, bool>),
    ) -> BTreeMap<Vec<u8>, bool> {
        let mut out = BTreeMap::new();
        for ws in self.base.into_iter().chain(std::iter::once(&self.writes)) {
            collect(ws, &mut out);
        }
        out
    }

    // ----- writes -----

    fn check_writable(&self) -> FunctionResult<()> {
        if self.read_only {
            return Err(FunctionError::internal("queries cannot write"));
        }
        self.check_time()
    }

    pub fn insert(&mut self, table: &str, fields: Value) -> FunctionResult<DocumentId> {
        self.check_writable()?;
        let t = self.table(table)?;
        let Some(obj) = fields.into_object() else {
            return Err(FunctionError::validation("a document must be an object"));
        };
        check_user_fields(&obj)?;
        // Validated as a value and taken back: the object is not shared, so neither step
        // copies it.
        let user = Value::from(obj);
        self.validate(t, &user)?;
        let mut obj = user.into_object().unwrap_or_default();
        let internal = self.ids.fetch_add(1, Ordering::Relaxed);
        if internal > MAX_INTERNAL_ID {
            return Err(FunctionError::internal(format!(
                "document ids are exhausted: the next would be {internal}, above {MAX_INTERNAL_ID}"
            )));
        }
        let id = DocumentId::new(t.number, internal);
        obj.insert(ID_FIELD.into(), Value::String(id.to_string()));
        obj.insert(CREATION_TIME_FIELD.into(), Value::Int64(self.now_ms));
        self.write_doc(t, id, None, Some(Value::from(obj)))?;
        Ok(id)
    }

    /// Sets the given fields (shallow merge) on an existing document.
    pub fn patch(&mut self, id: DocumentId, changes: Object) -> FunctionResult<()> {
        self.check_writable()?;
        let old = self.existing(id)?;
        check_user_fields(&changes)?;
        let mut obj = old.as_object().cloned().unwrap_or_default();
        obj.extend(changes);
        self.store_existing(id, old, obj)
    }

    /// Replaces all user fields of an existing document (system fields are kept).
    pub fn replace(&mut self, id: DocumentId, fields: Value) -> FunctionResult<()> {
        self.check_writable()?;
        let Some(mut obj) = fields.into_object() else {
            return Err(FunctionError::validation("a document must be an object"));
        };
        check_user_fields(&obj)?;
        let old = self.existing(id)?;
        for sys in SYSTEM_FIELDS {
            if let Some(v) = old.get_path(sys) {
                obj.insert(sys.to_string(), v.clone());
            }
        }
        self.store_existing(id, old, obj)
    }

    pub fn delete(&mut self, id: DocumentId) -> FunctionResult<()> {
        self.check_writable()?;
        let old = self.existing(id)?;
        let t = self.table_of(id)?;
        self.write_doc(t, id, Some(old), None)
    }

    fn table_of(&self, id: DocumentId) -> FunctionResult<&'s TableInfo> {
        self.catalog
            .table_by_number(id.table)
            .ok_or_else(|| FunctionError::validation("id of an unknown table"))
    }

    fn existing(&mut self, id: DocumentId) -> FunctionResult<Arc<Value>> {
        self.get(id)?
            .ok_or_else(|| FunctionError::not_found(format!("document {id} does not exist")))
    }

    fn store_existing(
        &mut self,
        id: DocumentId,
        old: Arc<Value>,
        obj: Object,
    ) -> FunctionResult<()> {
        let t = self.table_of(id)?;
        self.validate(t, &Value::from(user_fields(&obj)))?;
        self.write_doc(t, id, Some(old), Some(Value::from(obj)))
    }

    fn validate(&self, t: &TableInfo, v: &Value) -> FunctionResult<()> {
        check_document(t, self.catalog, self.limits, v)
    }

    fn write_doc(
        &mut self,
        t: &TableInfo,
        id: DocumentId,
        old: Option<Arc<Value>>,
        new: Option<Value>,
    ) -> FunctionResult<()> {
        let id_bytes = id.to_bytes();
        self.writes.touched.insert(t.by_id().id, id_bytes.to_vec());
        for index in t.stored_indexes() {
            let old_key = old.as_deref().map(|d| index_key(index, d, &id_bytes));
            let new_key = new.as_ref().map(|d| index_key(index, d, &id_bytes));
            if old_key != new_key {
                // Index keys go into the log record too: counted, so a transaction within
                // `max_bytes_written` stays far below the record cap whatever its indexes.
                for (k, present) in [(&old_key, false), (&new_key, true)] {
                    if let Some(k) = k {
                        let key = storage_key(index.id, k);
                        self.writes.bytes_written += key.len();
                        self.writes.index_entries.insert(key, present);
                    }
                }
            }
            for k in old_key.into_iter().chain(new_key) {
                self.writes.touched.insert(index.id, k);
            }
        }
        match &new {
            Some(n) => {
                self.writes.bytes_written += n.size_bytes();
                let bytes = rmp_serde::to_vec_named(n)
                    .map_err(|e| FunctionError::internal(format!("cannot encode document: {e}")))?;
                self.writes.encoded.insert(id, bytes);
            }
            None => {
                self.writes.encoded.remove(&id);
            }
        }
        self.writes.docs.insert(id, new.map(Arc::new));
        if self.writes.docs.len() > self.limits.max_documents_written {
            return Err(limit_error(
                "documentsWritten",
                self.limits.max_documents_written,
            ));
        }
        if self.writes.bytes_written > self.limits.max_bytes_written {
            return Err(limit_error("bytesWritten", self.limits.max_bytes_written));
        }
        Ok(())
    }
}

/// Refuses fields that name a system field (`_id`, `_creationTime` or any other `_` name):
/// only the engine sets those.
pub(crate) fn check_user_fields(fields: &Object) -> FunctionResult<()> {
    match fields.keys().find(|k| k.starts_with('_')) {
        Some(k) => Err(FunctionError::validation(format!(
            "{k}: system fields cannot be set"
        ))),
        None => Ok(()),
    }
}

/// Checks a document's user fields (an object value) against the table's validator and the
/// document size limit.
pub(crate) fn check_document(
    t: &TableInfo,
    catalog: &Catalog,
    limits: &Limits,
    v: &Value,
) -> FunctionResult<()> {
    t.validator.validate(v, catalog).map_err(|e| {
        FunctionError::validation(e.to_string())
            .with_data(crate::obj! { "path" => e.path.clone(), "table" => t.name.clone() })
    })?;
    if v.size_bytes() > limits.max_document_bytes {
        return Err(limit_error("documentBytes", limits.max_document_bytes));
    }
    Ok(())
}

/// The index key of `doc` under `index`: each field's encoding (or the missing marker), then
/// the id bytes, so keys are unique and ties sort by id.
pub(crate) fn index_key(index: &IndexInfo, doc: &Value, id_bytes: &[u8; ID_BYTES]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    for field in &index.fields {
        match doc.get_path(field) {
            Some(v) => encode_value(v, &mut out),
            None => encode_missing(&mut out),
        }
    }
    out.extend_from_slice(id_bytes);
    out
}

fn id_of_key(key: &[u8]) -> FunctionResult<DocumentId> {
    key.len()
        .checked_sub(ID_BYTES)
        .and_then(|at| DocumentId::from_bytes(&key[at..]))
        .ok_or_else(|| FunctionError::internal("malformed index key"))
}

/// Merges storage keys (all present) with overlay entries (present or removed), in scan
/// order, stopping after `limit` visible keys.
fn merge(
    base: crate::storage::KeyIter<'_>,
    overlay: BTreeMap<Vec<u8>, bool>,
    desc: bool,
    limit: usize,
) -> FunctionResult<Vec<Vec<u8>>> {
    Ok(MergedKeys::with_map(base, overlay, desc)
        .take(limit)
        .collect::<Result<Vec<_>, _>>()?)
}
