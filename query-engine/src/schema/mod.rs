//! The schema: validators for values (`validator`, with the `v` DSL) and the definitions of
//! tables and their indexes (`definition`). The engine checks every write against it and
//! builds index keys from the fields it names.

pub mod definition;
pub mod validator;

pub use definition::{
    user_fields, IndexDefinition, SchemaDefinition, SchemaError, TableDefinition, BY_CREATION_TIME,
    BY_ID, CREATION_TIME_FIELD, ID_FIELD, MAX_INDEX_FIELDS, SYSTEM_FIELDS,
};
pub use validator::{v, TableResolver, ValidationError, Validator};
