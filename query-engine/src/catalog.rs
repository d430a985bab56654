//! The catalog: which tables and indexes exist, their stable numbers, and whether each index
//! is ready to serve reads. Built from the registered schema plus the numbering persisted in
//! the database, so numbers never change across restarts or schema pushes.
//!
//! An index number names one definition (its fields) for good: an index that leaves the
//! schema, or whose fields change, gives up its number and its entries are purged in the
//! background (`index_maintenance.rs`); the index under the new definition gets a new number and
//! backfills. Reusing the number would serve entries nobody kept up to date (written while the
//! index was absent, or under the old fields) as if they were ready.
//!
//! Readiness is part of the committed state: a backfilled index becomes ready by a commit
//! (`CatalogChange`), and a reader uses it only if its snapshot is at or after that commit, so
//! a snapshot from before the last backfill chunk never meets a ready index.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::id::TableNumber;
use crate::schema::{
    SchemaDefinition, TableDefinition, TableResolver, Validator, BY_CREATION_TIME, BY_ID,
};

/// A stable index number: the first four bytes of every index entry key in storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IndexId(pub u32);

/// Whether an index can serve reads. A new index on existing data backfills first; reading it
/// before then is an error, never a silently incomplete answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexState {
    Ready,
    Backfilling,
}

#[derive(Clone, Debug)]
pub struct IndexInfo {
    pub id: IndexId,
    pub name: String,
    /// Dotted field paths; empty for `by_id`, whose key is the document id alone.
    pub fields: Vec<String>,
    pub state: IndexState,
    /// For a `Ready` index, the first snapshot timestamp that may read it: the commit that
    /// made it ready, or 0 for an index ready when the engine opened.
    pub ready_ts: u64,
}

/// The key under an index's number that stands for the index's readiness. A read refused
/// because the index is not ready at the reader's snapshot records it, and the commit that
/// makes the index ready touches it, so that reader is invalidated (a subscription re-runs, a
/// mutation conflicts). No entry has this key: every entry ends with a document id.
pub const READINESS_KEY: &[u8] = &[];

impl IndexInfo {
    /// Whether a reader at snapshot `ts` may read this index.
    pub fn readable_at(&self, ts: u64) -> bool {
        self.state == IndexState::Ready && ts >= self.ready_ts
    }
}

/// A change to the catalog that a commit makes: it holds for snapshots at or after that
/// commit's timestamp (see `committer.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatalogChange {
    /// A backfilled index starts serving reads.
    IndexReady(IndexId),
}

impl CatalogChange {
    /// The key the change's commit touches, invalidating whoever read the state it changes.
    pub fn touched_key(&self) -> (IndexId, Vec<u8>) {
        match self {
            CatalogChange::IndexReady(id) => (*id, READINESS_KEY.to_vec()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TableInfo {
    pub name: String,
    pub number: TableNumber,
    pub validator: Validator,
    /// `by_id` first, then `by_creation_time`, then the user's indexes in schema order.
    pub indexes: Vec<IndexInfo>,
}

impl TableInfo {
    pub fn index(&self, name: &str) -> Option<&IndexInfo> {
        self.indexes.iter().find(|i| i.name == name)
    }

    pub fn by_id(&self) -> &IndexInfo {
        &self.indexes[0]
    }

    /// Indexes that hold stored entries (everything except the virtual `by_id`).
    pub fn stored_indexes(&self) -> impl Iterator<Item = &IndexInfo> {
        self.indexes.iter().skip(1)
    }
}

/// The numbering persisted in the database: names to numbers, and index readiness.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Numbering {
    pub tables: BTreeMap<String, TableNumber>,
    /// Key: `table.index`.
    pub indexes: BTreeMap<String, IndexId>,
    pub index_states: BTreeMap<String, IndexState>,
    /// Key: `table.index`; the fields the index's entries are keyed by. Databases written
    /// before this was recorded take the fields of the first schema opened on them.
    #[serde(default)]
    pub index_fields: BTreeMap<String, Vec<String>>,
    /// Numbers of indexes no longer in the schema whose entries are still being purged.
    #[serde(default)]
    pub dropped_indexes: Vec<IndexId>,
    pub next_table: u32,
    pub next_index: u32,
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    tables: HashMap<String, TableInfo>,
    by_number: HashMap<TableNumber, String>,
    index_owner: HashMap<IndexId, (String, usize)>,
}

impl Catalog {
    /// Builds the catalog for `schema`, assigning numbers to new tables and indexes in
    /// `numbering` (which the caller persists). Indexes new to an existing table start as
    /// `Backfilling` when `table_has_data` says the table may hold documents. Indexes of the
    /// numbering that the schema no longer has, or has with other fields, move to
    /// `numbering.dropped_indexes`.
    pub fn build(
        schema: &SchemaDefinition,
        numbering: &mut Numbering,
        table_has_data: &dyn Fn(&str) -> bool,
    ) -> Catalog {
        let mut catalog = Catalog::default();
        let mut kept = std::collections::HashSet::new();
        for table in schema.tables.values() {
            let is_new_table = !numbering.tables.contains_key(&table.name);
            let number = *numbering
                .tables
                .entry(table.name.clone())
                .or_insert_with(|| {
                    numbering.next_table += 1;
                    TableNumber(numbering.next_table)
                });
            let mut indexes = Vec::new();
            let builtin = [
                (BY_ID, vec![]),
                (BY_CREATION_TIME, vec!["_creationTime".to_string()]),
            ];
            let user = table
                .indexes
                .iter()
                .map(|i| (i.name.as_str(), i.fields.clone()));
            for (name, fields) in builtin.into_iter().chain(user) {
                let key = format!("{}.{}", table.name, name);
                let recorded = numbering
                    .index_fields
                    .entry(key.clone())
                    .or_insert_with(|| fields.clone());
                if *recorded != fields {
                    *recorded = fields.clone();
                    if let Some(old) = numbering.indexes.remove(&key) {
                        numbering.dropped_indexes.push(old);
                    }
                }
                kept.insert(key.clone());
                let id = match numbering.indexes.get(&key) {
                    Some(id) => *id,
                    None => {
                        numbering.next_index += 1;
                        let id = IndexId(numbering.next_index);
                        numbering.indexes.insert(key.clone(), id);
                        let state = if !is_new_table && table_has_data(&table.name) {
                            IndexState::Backfilling
                        } else {
                            IndexState::Ready
                        };
                        numbering.index_states.insert(key.clone(), state);
                        id
                    }
                };
                let state = numbering
                    .index_states
                    .get(&key)
                    .copied()
                    .unwrap_or(IndexState::Ready);
                catalog
                    .index_owner
                    .insert(id, (table.name.clone(), indexes.len()));
                indexes.push(IndexInfo {
                    id,
                    name: name.to_string(),
                    fields,
                    state,
                    ready_ts: 0,
                });
            }
            catalog.by_number.insert(number, table.name.clone());
            catalog.tables.insert(
                table.name.clone(),
                TableInfo {
                    name: table.name.clone(),
                    number,
                    validator: table.document.clone(),
                    indexes,
                },
            );
        }
        let gone: Vec<String> = numbering
            .indexes
            .keys()
            .filter(|k| !kept.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(id) = numbering.indexes.remove(&key) {
                numbering.dropped_indexes.push(id);
            }
            numbering.index_states.remove(&key);
            numbering.index_fields.remove(&key);
        }
        catalog
    }

    pub fn table(&self, name: &str) -> Option<&TableInfo> {
        self.tables.get(name)
    }

    pub fn table_by_number(&self, number: TableNumber) -> Option<&TableInfo> {
        self.by_number.get(&number).and_then(|n| self.tables.get(n))
    }

    pub fn tables(&self) -> impl Iterator<Item = &TableInfo> {
        self.tables.values()
    }

    pub fn index_by_id(&self, id: IndexId) -> Option<(&TableInfo, &IndexInfo)> {
        let (table, pos) = self.index_owner.get(&id)?;
        let t = self.tables.get(table)?;
        Some((t, &t.indexes[*pos]))
    }

    /// Applies `change`, made by the commit at `ts`.
    pub fn apply(&mut self, change: CatalogChange, ts: u64) {
        match change {
            CatalogChange::IndexReady(id) => {
                let Some((table, pos)) = self.index_owner.get(&id) else {
                    return;
                };
                if let Some(i) = self.tables.get_mut(table).map(|t| &mut t.indexes[*pos]) {
                    i.state = IndexState::Ready;
                    i.ready_ts = ts;
                }
            }
        }
    }
}

impl TableResolver for Catalog {
    fn table_number(&self, name: &str) -> Option<TableNumber> {
        self.tables.get(name).map(|t| t.number)
    }
}

/// A table definition for an engine-owned system table (name starts with `_`).
pub fn system_table(name: &str, document: Validator) -> TableDefinition {
    TableDefinition {
        name: name.to_string(),
        document,
        indexes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::v;

    fn schema(fields: &[&str]) -> SchemaDefinition {
        SchemaDefinition::new()
            .table(TableDefinition::new("t", v::object([("a", v::int64())])).index("by_a", fields))
    }

    #[test]
    fn numbers_of_unchanged_indexes_survive_and_changed_ones_are_retired() {
        let mut n = Numbering::default();
        Catalog::build(&schema(&["a"]), &mut n, &|_| true);
        let first = n.indexes["t.by_a"];
        Catalog::build(&schema(&["a"]), &mut n, &|_| true);
        assert_eq!(n.indexes["t.by_a"], first);
        assert!(n.dropped_indexes.is_empty());

        Catalog::build(&schema(&["a", "_creationTime"]), &mut n, &|_| true);
        let second = n.indexes["t.by_a"];
        assert_ne!(second, first);
        assert_eq!(n.dropped_indexes, vec![first]);
        assert_eq!(n.index_states["t.by_a"], IndexState::Backfilling);

        let no_index = SchemaDefinition::new()
            .table(TableDefinition::new("t", v::object([("a", v::int64())])));
        Catalog::build(&no_index, &mut n, &|_| true);
        assert!(!n.indexes.contains_key("t.by_a"));
        assert!(!n.index_states.contains_key("t.by_a"));
        assert_eq!(n.dropped_indexes, vec![first, second]);
    }

    #[test]
    fn a_numbering_without_recorded_fields_takes_the_schema_s() {
        let mut n = Numbering::default();
        Catalog::build(&schema(&["a"]), &mut n, &|_| true);
        let id = n.indexes["t.by_a"];
        // The numbering as written before fields and retired numbers were recorded.
        #[derive(Serialize)]
        struct Before<'a> {
            tables: &'a BTreeMap<String, TableNumber>,
            indexes: &'a BTreeMap<String, IndexId>,
            index_states: &'a BTreeMap<String, IndexState>,
            next_table: u32,
            next_index: u32,
        }
        let bytes = rmp_serde::to_vec_named(&Before {
            tables: &n.tables,
            indexes: &n.indexes,
            index_states: &n.index_states,
            next_table: n.next_table,
            next_index: n.next_index,
        })
        .unwrap();
        let mut n: Numbering = rmp_serde::from_slice(&bytes).unwrap();
        assert!(n.index_fields.is_empty());
        Catalog::build(&schema(&["a"]), &mut n, &|_| true);
        assert_eq!(n.indexes["t.by_a"], id);
        assert_eq!(n.index_fields["t.by_a"], vec!["a".to_string()]);
        assert!(n.dropped_indexes.is_empty());
    }
}
