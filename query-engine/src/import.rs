//! Offline bulk import: documents into one table of a database no server has open, all or
//! nothing. The database is first opened as the server would open it (the schema applied,
//! the write-ahead log replayed, stored documents checked against a changed schema) and
//! closed; then every document is checked — an object, its fields valid under the table's
//! validator, within the document size limit, `_id` (if given) an unused id of this table,
//! `_creationTime` (if given) a non-negative int64 — and only if all are valid are they
//! written, with their index entries and the id high-water mark, in one durable redb
//! transaction. A bad line, a crash or a full disk therefore leaves the database as it was.
//!
//! Given ids are kept, so tables exported together (documents that refer to each other by
//! id) import together; documents without one get new ids. It runs offline because one redb
//! transaction of any size is atomic, where the committer's batches are bounded (32 MiB, the
//! memtable's 500,000 entries) and would make a large import visible piece by piece.

use std::collections::HashSet;
use std::path::Path;

use crate::catalog::Catalog;
use crate::engine::{meta_u64, Engine, EngineConfig, OpenError};
use crate::functions::Functions;
use crate::id::{DocumentId, MAX_INTERNAL_ID};
use crate::schema::{SchemaDefinition, CREATION_TIME_FIELD, ID_FIELD};
use crate::storage::{Storage, StorageError, StorageOptions};
use crate::transaction::{check_document, check_user_fields, index_key, Limits};
use crate::value::Value;
use crate::writes::storage_key;

/// Most documents one import takes (they are held in memory until written).
pub const MAX_IMPORT_DOCUMENTS: usize = 5_000_000;
/// Most invalid documents an error lists.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// One document that cannot be imported: its line (or position) in the input, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Invalid documents as they are found: every one counted, the first `MAX_REPORTED_ERRORS`
/// kept.
#[derive(Debug, Default)]
pub struct LineErrors {
    count: usize,
    errors: Vec<LineError>,
}

impl LineErrors {
    pub fn push(&mut self, line: usize, message: String) {
        self.count += 1;
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(LineError { line, message });
        }
    }

    /// `value` if nothing was invalid, else the import refused whole.
    pub fn or<T>(self, value: T) -> Result<T, ImportError> {
        if self.count == 0 {
            Ok(value)
        } else {
            Err(ImportError::Invalid {
                count: self.count,
                errors: self.errors,
            })
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("table {0:?} is not a table of the schema that documents can be imported into")]
    UnknownTable(String),
    #[error("more than {MAX_IMPORT_DOCUMENTS} documents in one import")]
    TooMany,
    #[error("{count} documents are invalid and nothing was imported; first: {}", .errors[0])]
    Invalid {
        /// How many documents are invalid.
        count: usize,
        /// The first `MAX_REPORTED_ERRORS` of them.
        errors: Vec<LineError>,
    },
    #[error("the database was not closed within {0} s")]
    NotClosed(u64),
    #[error("the database's document ids are exhausted: its counter is at {0}")]
    IdsExhausted(u64),
}

/// What an import wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportReport {
    pub table: String,
    pub imported: usize,
}

/// Imports `docs` (each with its line number in the input) into `table` of the database at
/// `path`, opened with `schema`. See the module comment.
pub fn import(
    path: &Path,
    schema: SchemaDefinition,
    table: &str,
    docs: Vec<(usize, Value)>,
) -> Result<ImportReport, ImportError> {
    if docs.len() > MAX_IMPORT_DOCUMENTS {
        return Err(ImportError::TooMany);
    }
    let config = EngineConfig {
        run_scheduler: false,
        require_stored_schema: true,
        ..EngineConfig::default()
    };
    let engine = Engine::open(path, schema, Functions::new(), config)?;
    let catalog = engine.catalog();
    let limits = engine.limits().clone();
    const CLOSE_SECS: u64 = 60;
    if !engine.close(std::time::Duration::from_secs(CLOSE_SECS)) {
        return Err(ImportError::NotClosed(CLOSE_SECS));
    }

    let storage = Storage::open_with(path, StorageOptions::default())?;
    let result = write_all(&storage, &catalog, &limits, table, docs);
    storage.shut_down();
    result
}

/// Checks every document, then writes them all in one durable transaction.
fn write_all(
    storage: &Storage,
    catalog: &Catalog,
    limits: &Limits,
    table: &str,
    docs: Vec<(usize, Value)>,
) -> Result<ImportReport, ImportError> {
    let t = catalog
        .table(table)
        .filter(|t| !t.name.starts_with('_'))
        .ok_or_else(|| ImportError::UnknownTable(table.to_string()))?;
    let snapshot = storage.snapshot(0);
    let high_water = meta_u64(&snapshot, "id_high_water")?;
    let now_ms = crate::committer::now_millis();

    let mut errors = LineErrors::default();
    let mut given = HashSet::new();
    let mut checked = Vec::with_capacity(docs.len());
    for (line, doc) in docs {
        match check(t, catalog, limits, &snapshot, &mut given, now_ms, doc) {
            Ok(c) => checked.push(c),
            Err(message) => errors.push(line, message),
        }
    }
    let checked = errors.or(checked)?;

    // New ids go above every existing and given one.
    let mut next = checked
        .iter()
        .filter_map(|(id, _)| id.map(|id| id.internal))
        .fold(high_water, u64::max);
    if next > MAX_INTERNAL_ID - MAX_IMPORT_DOCUMENTS as u64 {
        return Err(ImportError::IdsExhausted(next));
    }
    let mut encoded = Vec::with_capacity(checked.len());
    let mut index = Vec::new();
    for (id, mut obj) in checked {
        let id = id.unwrap_or_else(|| {
            next += 1;
            DocumentId::new(t.number, next)
        });
        obj.insert(ID_FIELD.into(), Value::String(id.to_string()));
        let doc = Value::from(obj);
        let id_bytes = id.to_bytes();
        for i in t.stored_indexes() {
            index.push(storage_key(i.id, &index_key(i, &doc, &id_bytes)));
        }
        let bytes = rmp_serde::to_vec_named(&doc)
            .map_err(|e| StorageError::CorruptDocument(id.to_string(), e.to_string()))?;
        encoded.push((id_bytes, bytes));
    }
    let imported = encoded.len();
    storage.write_durable(
        encoded.iter().map(|(id, b)| (*id, Some(b.as_slice()))),
        index.iter().map(|k| (k.as_slice(), true)),
        &[("id_high_water", next.to_be_bytes().to_vec())],
    )?;
    Ok(ImportReport {
        table: t.name.clone(),
        imported,
    })
}

/// One document checked: its given id, if any, and its fields with `_creationTime` set.
fn check(
    t: &crate::catalog::TableInfo,
    catalog: &Catalog,
    limits: &Limits,
    snapshot: &crate::storage::Snapshot,
    given: &mut HashSet<DocumentId>,
    now_ms: i64,
    doc: Value,
) -> Result<(Option<DocumentId>, crate::value::Object), String> {
    let Some(mut obj) = doc.into_object() else {
        return Err("a document must be an object".into());
    };
    let id = match obj.remove(ID_FIELD) {
        None => None,
        Some(Value::String(s)) => {
            let id = DocumentId::parse(&s).map_err(|e| format!("_id: {e}"))?;
            if id.table != t.number {
                return Err(format!("_id: {s} is not an id of table {}", t.name));
            }
            if id.internal > MAX_INTERNAL_ID - MAX_IMPORT_DOCUMENTS as u64 {
                // Given ids raise the engine's counter; one this high could make it wrap and
                // hand out ids of live documents. No engine allocates it.
                return Err(format!(
                    "_id: {s} carries the internal id {}, above any this engine allocates",
                    id.internal
                ));
            }
            if !given.insert(id) {
                return Err(format!("_id: {s} appears twice in the import"));
            }
            if snapshot.get(&id).map_err(|e| e.to_string())?.is_some() {
                return Err(format!("_id: {s} already exists"));
            }
            Some(id)
        }
        Some(other) => return Err(format!("_id: must be a string, got {}", other.type_name())),
    };
    let created = match obj.remove(CREATION_TIME_FIELD) {
        None => now_ms,
        Some(Value::Int64(ms)) if ms >= 0 => ms,
        Some(other) => {
            return Err(format!(
                "{CREATION_TIME_FIELD}: must be a non-negative int64, got {other:?}"
            ))
        }
    };
    check_user_fields(&obj).map_err(|e| e.message)?;
    let user = Value::from(obj);
    check_document(t, catalog, limits, &user).map_err(|e| e.message)?;
    let mut obj = user.into_object().unwrap_or_default();
    obj.insert(CREATION_TIME_FIELD.into(), Value::Int64(created));
    Ok((id, obj))
}
