//! Schema definitions: tables (a document validator plus named indexes over field paths) and
//! the schema that holds them, with the checks that make a schema acceptable. Definitions are
//! serde-serialisable so that the active schema can be stored in the database itself.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::validator::{TableResolver, ValidationError, Validator};
use crate::value::{Object, Value};

/// The built-in index over `_id`, present on every table.
pub const BY_ID: &str = "by_id";
/// The built-in index over `_creationTime`, present on every table.
pub const BY_CREATION_TIME: &str = "by_creation_time";
/// The system field holding the document's id (a string id of its own table).
pub const ID_FIELD: &str = "_id";
/// The system field holding the document's creation time (int64, milliseconds since epoch).
pub const CREATION_TIME_FIELD: &str = "_creationTime";
/// The fields the engine sets on every stored document.
pub const SYSTEM_FIELDS: [&str; 2] = [ID_FIELD, CREATION_TIME_FIELD];

/// A stored document's user fields: a copy of `doc` without `SYSTEM_FIELDS` (what a table's
/// document validator checks).
pub fn user_fields(doc: &Object) -> Object {
    let mut user = doc.clone();
    for f in SYSTEM_FIELDS {
        user.remove(f);
    }
    user
}

/// Most fields one index may have.
pub const MAX_INDEX_FIELDS: usize = 16;

/// A named index over dotted field paths (`["meetingId", "author.role"]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexDefinition {
    pub name: String,
    pub fields: Vec<String>,
}

/// A table: the validator its documents must pass (an object; the system fields `_id` and
/// `_creationTime` are added by the engine and are not declared) and its indexes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableDefinition {
    pub name: String,
    pub document: Validator,
    pub indexes: Vec<IndexDefinition>,
}

impl TableDefinition {
    pub fn new(name: impl Into<String>, document: Validator) -> Self {
        TableDefinition {
            name: name.into(),
            document,
            indexes: Vec::new(),
        }
    }

    /// Adds an index; `SchemaDefinition::check` validates it.
    pub fn index(mut self, name: impl Into<String>, fields: &[&str]) -> Self {
        self.indexes.push(IndexDefinition {
            name: name.into(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        });
        self
    }

    pub fn get_index(&self, name: &str) -> Option<&IndexDefinition> {
        self.indexes.iter().find(|i| i.name == name)
    }

    /// The validator of a document of this table as stored: `document` with the system fields
    /// `_id` (an id of this table) and `_creationTime` (int64) added. A function that returns
    /// stored documents unchanged declares its result with it. A `document` that is not an
    /// object validator is returned as it is.
    pub fn stored_document(&self) -> Validator {
        let mut stored = self.document.clone();
        if let Validator::Object(fields) = &mut stored {
            for (name, validator) in self.system_fields() {
                fields.insert(name.to_owned(), validator);
            }
        }
        stored
    }

    /// The fields the engine adds to every document of this table, with their validators.
    fn system_fields(&self) -> [(&'static str, Validator); 2] {
        [
            (ID_FIELD, Validator::Id(self.name.clone())),
            (CREATION_TIME_FIELD, Validator::Int64),
        ]
    }

    /// Validates a document of this table. The system fields may be present (a stored
    /// document) or absent (one about to be inserted); when present, `_id` must be an id of
    /// this table and `_creationTime` an int64. Everything else must pass `document`.
    pub fn validate_document(
        &self,
        doc: &Value,
        tables: &dyn TableResolver,
    ) -> Result<(), ValidationError> {
        let Value::Object(fields) = doc else {
            return self.document.validate(doc, tables);
        };
        if !fields.contains_key(ID_FIELD) && !fields.contains_key(CREATION_TIME_FIELD) {
            return self.document.validate(doc, tables);
        }
        let mut user_fields = Object::clone(fields);
        for (name, validator) in self.system_fields() {
            if let Some(x) = user_fields.remove(name) {
                validator
                    .validate(&x, tables)
                    .map_err(|e| ValidationError {
                        path: name.to_owned(),
                        message: e.message,
                    })?;
            }
        }
        self.document.validate(&Value::from(user_fields), tables)
    }
}

/// The whole schema: tables by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SchemaDefinition {
    pub tables: BTreeMap<String, TableDefinition>,
}

/// Why a schema is not acceptable. `path` fields are dotted paths inside a table's document.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("table name {table:?} is invalid: use [A-Za-z][A-Za-z0-9_]* (names starting with '_' are reserved for system tables)")]
    InvalidTableName { table: String },
    #[error("table {name:?} is stored under the key {key:?}")]
    TableKeyMismatch { key: String, name: String },
    #[error("table {table:?}: the document validator must be an object, not {found}")]
    DocumentNotObject { table: String, found: String },
    #[error("table {table:?}: field {path:?} is reserved (top-level fields starting with '_' are system fields; names starting with '$' are JSON escapes)")]
    ReservedField { table: String, path: String },
    #[error("table {table:?}: empty field name in {path:?}")]
    EmptyFieldName { table: String, path: String },
    #[error("table {table:?}: {path:?} is optional outside an object field")]
    MisplacedOptional { table: String, path: String },
    #[error("table {table:?}: {path:?} is a union with no members")]
    EmptyUnion { table: String, path: String },
    #[error("table {table:?}: record {path:?} has key validator {found}; keys must be strings, ids or string literals")]
    InvalidRecordKey {
        table: String,
        path: String,
        found: String,
    },
    #[error("table {table:?}: {path:?} refers to table {target:?}, which is not in the schema")]
    UnknownIdTable {
        table: String,
        path: String,
        target: String,
    },
    #[error("table {table:?}: index name {index:?} is invalid: use [A-Za-z][A-Za-z0-9_]*")]
    InvalidIndexName { table: String, index: String },
    #[error("table {table:?}: index name {index:?} is reserved for a built-in index")]
    ReservedIndexName { table: String, index: String },
    #[error("table {table:?}: index {index:?} is defined twice")]
    DuplicateIndex { table: String, index: String },
    #[error("table {table:?}: index {index:?} has no fields")]
    EmptyIndex { table: String, index: String },
    #[error("table {table:?}: index {index:?} has {count} fields; at most {MAX_INDEX_FIELDS} are allowed")]
    TooManyIndexFields {
        table: String,
        index: String,
        count: usize,
    },
    #[error("table {table:?}: index {index:?} names field {field:?}, which the document validator does not declare")]
    UnknownIndexField {
        table: String,
        index: String,
        field: String,
    },
    #[error("table {table:?}: index {index:?} names field {field:?} twice")]
    DuplicateIndexField {
        table: String,
        index: String,
        field: String,
    },
}

impl SchemaDefinition {
    pub fn new() -> Self {
        SchemaDefinition::default()
    }

    /// Adds a table.
    ///
    /// # Panics
    /// If a table of that name was already added: a schema is written in code, and silently
    /// dropping one of two definitions would hide the mistake.
    pub fn table(mut self, table: TableDefinition) -> Self {
        let name = table.name.clone();
        let previous = self.tables.insert(name.clone(), table);
        assert!(previous.is_none(), "table {name:?} is defined twice");
        self
    }

    pub fn get_table(&self, name: &str) -> Option<&TableDefinition> {
        self.tables.get(name)
    }

    /// Checks table and index names, index fields, field names, and that every `id(table)`
    /// names a table of this schema. Returns the first problem found.
    pub fn check(&self) -> Result<(), SchemaError> {
        for (key, table) in &self.tables {
            if *key != table.name {
                return Err(SchemaError::TableKeyMismatch {
                    key: key.clone(),
                    name: table.name.clone(),
                });
            }
            self.check_table(table)?;
        }
        Ok(())
    }

    fn check_table(&self, table: &TableDefinition) -> Result<(), SchemaError> {
        let t = || table.name.clone();
        if !is_identifier(&table.name) {
            return Err(SchemaError::InvalidTableName { table: t() });
        }
        let Validator::Object(fields) = &table.document else {
            return Err(SchemaError::DocumentNotObject {
                table: t(),
                found: table.document.to_string(),
            });
        };
        if let Some(name) = fields.keys().find(|k| k.starts_with('_')) {
            return Err(SchemaError::ReservedField {
                table: t(),
                path: name.clone(),
            });
        }
        self.check_validator(&table.name, &table.document, "", false)?;

        let mut seen = BTreeSet::new();
        for index in &table.indexes {
            let i = || index.name.clone();
            if index.name == BY_ID || index.name == BY_CREATION_TIME {
                return Err(SchemaError::ReservedIndexName {
                    table: t(),
                    index: i(),
                });
            }
            if !is_identifier(&index.name) {
                return Err(SchemaError::InvalidIndexName {
                    table: t(),
                    index: i(),
                });
            }
            if !seen.insert(index.name.as_str()) {
                return Err(SchemaError::DuplicateIndex {
                    table: t(),
                    index: i(),
                });
            }
            if index.fields.is_empty() {
                return Err(SchemaError::EmptyIndex {
                    table: t(),
                    index: i(),
                });
            }
            if index.fields.len() > MAX_INDEX_FIELDS {
                return Err(SchemaError::TooManyIndexFields {
                    table: t(),
                    index: i(),
                    count: index.fields.len(),
                });
            }
            let mut fields_seen = BTreeSet::new();
            for field in &index.fields {
                let is_system = field == ID_FIELD || field == CREATION_TIME_FIELD;
                let steps: Vec<&str> = field.split('.').collect();
                if !is_system && !has_path(&table.document, &steps) {
                    return Err(SchemaError::UnknownIndexField {
                        table: t(),
                        index: i(),
                        field: field.clone(),
                    });
                }
                if !fields_seen.insert(field.as_str()) {
                    return Err(SchemaError::DuplicateIndexField {
                        table: t(),
                        index: i(),
                        field: field.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Walks a validator: field names, optional placement, unions, record keys, id targets.
    /// `as_field` is true when `v` is directly an object field's validator.
    fn check_validator(
        &self,
        table: &str,
        v: &Validator,
        path: &str,
        as_field: bool,
    ) -> Result<(), SchemaError> {
        let t = || table.to_owned();
        let p = || path.to_owned();
        match v {
            Validator::Any
            | Validator::Null
            | Validator::String
            | Validator::Float64
            | Validator::Int64
            | Validator::Bool
            | Validator::Bytes
            | Validator::Literal(_) => Ok(()),
            Validator::Id(target) => {
                if self.tables.contains_key(target) {
                    Ok(())
                } else {
                    Err(SchemaError::UnknownIdTable {
                        table: t(),
                        path: p(),
                        target: target.clone(),
                    })
                }
            }
            Validator::Union(members) => {
                if members.is_empty() {
                    return Err(SchemaError::EmptyUnion {
                        table: t(),
                        path: p(),
                    });
                }
                members
                    .iter()
                    .try_for_each(|m| self.check_validator(table, m, path, false))
            }
            Validator::Optional(inner) => {
                if !as_field {
                    return Err(SchemaError::MisplacedOptional {
                        table: t(),
                        path: p(),
                    });
                }
                self.check_validator(table, inner, path, false)
            }
            Validator::Array(item) => {
                self.check_validator(table, item, &format!("{path}[]"), false)
            }
            Validator::Object(fields) => {
                for (name, field) in fields {
                    let field_path = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    if name.is_empty() {
                        return Err(SchemaError::EmptyFieldName {
                            table: t(),
                            path: field_path,
                        });
                    }
                    if name.starts_with('$') {
                        return Err(SchemaError::ReservedField {
                            table: t(),
                            path: field_path,
                        });
                    }
                    self.check_validator(table, field, &field_path, true)?;
                }
                Ok(())
            }
            Validator::Record(key, value) => {
                if !is_string_like(key) {
                    return Err(SchemaError::InvalidRecordKey {
                        table: t(),
                        path: p(),
                        found: key.to_string(),
                    });
                }
                self.check_validator(table, key, path, false)?;
                self.check_validator(table, value, &format!("{path}.*"), false)
            }
        }
    }
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_string_like(v: &Validator) -> bool {
    match v {
        Validator::String | Validator::Id(_) | Validator::Literal(Value::String(_)) => true,
        Validator::Union(members) => !members.is_empty() && members.iter().all(is_string_like),
        _ => false,
    }
}

/// Whether a dotted path can exist in documents of this validator: every step is a declared
/// field (through optionals, and through any member of a union); `any` and records allow any
/// further steps.
fn has_path(v: &Validator, steps: &[&str]) -> bool {
    let Some((first, rest)) = steps.split_first() else {
        return true;
    };
    match v {
        Validator::Any => true,
        Validator::Optional(inner) => has_path(inner, steps),
        Validator::Union(members) => members.iter().any(|m| has_path(m, steps)),
        Validator::Object(fields) => fields.get(*first).is_some_and(|f| has_path(f, rest)),
        Validator::Record(_, value) => !first.is_empty() && has_path(value, rest),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::v;

    fn users() -> TableDefinition {
        TableDefinition::new(
            "users",
            v::object([
                ("name", v::string()),
                (
                    "profile",
                    v::optional(v::object([
                        ("city", v::optional(v::string())),
                        ("extra", v::any()),
                    ])),
                ),
                (
                    "prefs",
                    v::record(v::string(), v::object([("on", v::boolean())])),
                ),
            ]),
        )
    }

    fn meetings() -> TableDefinition {
        TableDefinition::new(
            "meetings",
            v::object([
                ("hostId", v::id("users")),
                (
                    "status",
                    v::union([v::literal("scheduled"), v::literal("active")]),
                ),
            ]),
        )
        .index("by_host", &["hostId", "status"])
    }

    fn check_one(t: TableDefinition) -> Result<(), SchemaError> {
        SchemaDefinition::new().table(users()).table(t).check()
    }

    #[test]
    fn a_good_schema_passes_and_round_trips() {
        let schema = SchemaDefinition::new()
            .table(
                users()
                    .index("by_city", &["profile.city", "name"])
                    .index("by_extra", &["profile.extra.deep"])
                    .index("by_pref", &["prefs.theme.on"])
                    .index("by_name_time", &["name", CREATION_TIME_FIELD]),
            )
            .table(meetings());
        schema.check().unwrap();
        assert_eq!(
            schema
                .get_table("meetings")
                .and_then(|t| t.get_index("by_host")),
            Some(&IndexDefinition {
                name: "by_host".into(),
                fields: vec!["hostId".into(), "status".into()],
            })
        );
        let stored = crate::json::to_value(&schema).unwrap();
        let back: SchemaDefinition = crate::json::from_value(&stored).unwrap();
        assert_eq!(back, schema);
    }

    #[test]
    fn table_names() {
        for bad in ["_system", "9lives", "", "has-dash", "ünï"] {
            let err = check_one(TableDefinition::new(bad, v::object([]))).unwrap_err();
            assert_eq!(err, SchemaError::InvalidTableName { table: bad.into() });
        }
        let err = check_one(TableDefinition::new("t", v::string())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "table \"t\": the document validator must be an object, not string"
        );
        let mut schema = SchemaDefinition::new().table(users());
        if let Some(t) = schema.tables.get_mut("users") {
            t.name = "people".into();
        }
        assert!(matches!(
            schema.check(),
            Err(SchemaError::TableKeyMismatch { .. })
        ));
    }

    #[test]
    #[should_panic(expected = "defined twice")]
    fn duplicate_tables_panic() {
        let _ = SchemaDefinition::new().table(users()).table(users());
    }

    #[test]
    fn field_names() {
        let err = check_one(TableDefinition::new("t", v::object([("_id", v::string())])));
        assert_eq!(
            err,
            Err(SchemaError::ReservedField {
                table: "t".into(),
                path: "_id".into()
            })
        );
        let nested = v::object([("a", v::array(v::object([("$b", v::null())])))]);
        assert_eq!(
            check_one(TableDefinition::new("t", nested)),
            Err(SchemaError::ReservedField {
                table: "t".into(),
                path: "a[].$b".into()
            })
        );
        // Underscores are reserved only at the top level.
        check_one(TableDefinition::new(
            "t",
            v::object([("a", v::object([("_b", v::null())]))]),
        ))
        .unwrap();
        assert!(matches!(
            check_one(TableDefinition::new("t", v::object([("", v::null())]))),
            Err(SchemaError::EmptyFieldName { .. })
        ));
    }

    #[test]
    fn validator_shapes() {
        let misplaced = v::object([("a", v::array(v::optional(v::string())))]);
        assert_eq!(
            check_one(TableDefinition::new("t", misplaced)),
            Err(SchemaError::MisplacedOptional {
                table: "t".into(),
                path: "a[]".into()
            })
        );
        assert!(matches!(
            check_one(TableDefinition::new("t", v::object([("a", v::union([]))]))),
            Err(SchemaError::EmptyUnion { .. })
        ));
        let bad_key = v::object([("a", v::record(v::int64(), v::null()))]);
        assert_eq!(
            check_one(TableDefinition::new("t", bad_key)).unwrap_err().to_string(),
            "table \"t\": record \"a\" has key validator int64; keys must be strings, ids or string literals"
        );
        let good_key = v::record(v::union([v::literal("x"), v::id("users")]), v::null());
        check_one(TableDefinition::new("t", v::object([("a", good_key)]))).unwrap();
        let dangling = v::object([("m", v::optional(v::id("meetings")))]);
        assert_eq!(
            check_one(TableDefinition::new("t", dangling)),
            Err(SchemaError::UnknownIdTable {
                table: "t".into(),
                path: "m".into(),
                target: "meetings".into()
            })
        );
    }

    #[test]
    fn index_rules() {
        let t = |idx: TableDefinition| check_one(idx);
        let base = || TableDefinition::new("t", v::object([("a", v::string()), ("b", v::int64())]));
        assert!(matches!(
            t(base().index(BY_ID, &["a"])),
            Err(SchemaError::ReservedIndexName { .. })
        ));
        assert!(matches!(
            t(base().index(BY_CREATION_TIME, &["a"])),
            Err(SchemaError::ReservedIndexName { .. })
        ));
        assert!(matches!(
            t(base().index("_mine", &["a"])),
            Err(SchemaError::InvalidIndexName { .. })
        ));
        assert!(matches!(
            t(base().index("by_a", &["a"]).index("by_a", &["b"])),
            Err(SchemaError::DuplicateIndex { .. })
        ));
        assert!(matches!(
            t(base().index("none", &[])),
            Err(SchemaError::EmptyIndex { .. })
        ));
        let many: Vec<&str> = ["a"; MAX_INDEX_FIELDS + 1].to_vec();
        assert!(matches!(
            t(base().index("many", &many)),
            Err(SchemaError::TooManyIndexFields { count: 17, .. })
        ));
        assert_eq!(
            t(base().index("by_c", &["a", "c"])).unwrap_err().to_string(),
            "table \"t\": index \"by_c\" names field \"c\", which the document validator does not declare"
        );
        assert!(matches!(
            t(base().index("by_deep", &["a.x"])),
            Err(SchemaError::UnknownIndexField { .. })
        ));
        assert!(matches!(
            t(base().index("by_empty_step", &["a."])),
            Err(SchemaError::UnknownIndexField { .. })
        ));
        assert!(matches!(
            t(base().index("by_aa", &["a", "b", "a"])),
            Err(SchemaError::DuplicateIndexField { .. })
        ));
        t(base().index("by_id_too", &["b", ID_FIELD])).unwrap();
    }

    #[test]
    fn documents_may_carry_system_fields() {
        use crate::id::{DocumentId, TableNumber};
        use crate::obj;
        let tables: BTreeMap<String, TableNumber> = [
            ("users".to_owned(), TableNumber(1)),
            ("meetings".to_owned(), TableNumber(2)),
        ]
        .into_iter()
        .collect();
        let host = DocumentId::new(TableNumber(1), 1).to_string();
        let own = DocumentId::new(TableNumber(2), 5).to_string();
        let m = meetings();
        let doc = obj! { "hostId" => host.as_str(), "status" => "active" };
        m.validate_document(&doc, &tables).unwrap();
        let stored = obj! {
            "_id" => own.as_str(), "_creationTime" => 1_700_000_000_000i64,
            "hostId" => host.as_str(), "status" => "active",
        };
        m.validate_document(&stored, &tables).unwrap();
        let wrong_id =
            obj! { "_id" => host.as_str(), "hostId" => host.as_str(), "status" => "active" };
        assert_eq!(
            m.validate_document(&wrong_id, &tables)
                .unwrap_err()
                .to_string(),
            "_id: expected id of table \"meetings\", got id of another table"
        );
        let float_time =
            obj! { "_creationTime" => 1.5, "hostId" => host.as_str(), "status" => "active" };
        assert_eq!(
            m.validate_document(&float_time, &tables)
                .unwrap_err()
                .to_string(),
            "_creationTime: expected int64, got float64"
        );
        let extra = obj! { "_id" => own.as_str(), "hostId" => host.as_str(), "status" => "active", "x" => 1i64 };
        assert_eq!(
            m.validate_document(&extra, &tables)
                .unwrap_err()
                .to_string(),
            "x: unknown field"
        );
        // As stored, the system fields are required and checked like the rest.
        let stored_validator = m.stored_document();
        stored_validator.validate(&stored, &tables).unwrap();
        assert!(stored_validator.validate(&doc, &tables).is_err());
        assert!(stored_validator.validate(&wrong_id, &tables).is_err());
        assert!(stored_validator.validate(&extra, &tables).is_err());
    }
}
