//! Typed Rust values to and from `Value` directly: a serde `Serializer` that builds a `Value`
//! and a `Deserializer` that reads one, behind `json::to_value` / `json::from_value`. They keep
//! the exact semantics of the MessagePack round trip they replace (see the notes below).
//!
//! Semantics (those of `rmp_serde::to_vec_named` followed by `rmp_serde::from_slice`, 1.3):
//! structs are objects keyed by field name; `None` and `()` are null; a unit struct is `[]`; a
//! newtype struct is its content; a unit variant is its name; any other variant is the
//! one-entry object `{name: content}`; `i128`/`u128` are 16 big-endian bytes; `u64` above
//! `i64::MAX` is an error; map keys must come out as strings; nesting is limited to 1023
//! arrays/objects. Reading gives visitors the narrowest integer call MessagePack's compact
//! encoding would (`visit_u8` for 0..=255, `visit_i8` for -128..0, ...), accepts integers where
//! floats are asked for (not the reverse), reads bytes as a sequence of `u8` when a sequence is
//! asked for, and rejects arrays and objects that the visitor did not read to the end.
//! Deliberate differences: MessagePack extension types (`rmp_serde::MSGPACK_EXT_STRUCT_NAME`)
//! are not supported (nothing here uses them), and decode errors say where in the value they
//! happened (`tags[0].zip: invalid type: ...`) and word some cases more plainly than
//! MessagePack's ("wrong msgpack marker").

use std::collections::btree_map;
use std::slice;

use serde::de::value::SeqDeserializer;
use serde::de::{self, DeserializeSeed, Unexpected, Visitor};
use serde::ser::{self, Impossible, Serialize};

use crate::json::ConvertError;
use crate::value::{Object, Value};

/// How many nested arrays/objects the MessagePack decoder allowed, plus one.
const DEPTH_BUDGET: u16 = 1024;

impl de::Error for ConvertError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ConvertError::Decode {
            path: String::new(),
            message: msg.to_string(),
        }
    }
}

impl ser::Error for ConvertError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ConvertError::Encode(msg.to_string())
    }
}

impl ConvertError {
    /// The error as seen from one level up: `segment` is `name` or `[i]`.
    fn within(self, segment: &str) -> Self {
        match self {
            ConvertError::Decode { path, message } => {
                let path = if path.is_empty() {
                    segment.to_owned()
                } else if path.starts_with('[') {
                    format!("{segment}{path}")
                } else {
                    format!("{segment}.{path}")
                };
                ConvertError::Decode { path, message }
            }
            other => other,
        }
    }
}

fn decode_error(message: String) -> ConvertError {
    de::Error::custom(message)
}

fn encode_error(message: String) -> ConvertError {
    ser::Error::custom(message)
}

fn depth_exceeded() -> ConvertError {
    de::Error::custom("nesting deeper than 1023 arrays/objects")
}

// ---------------------------------------------------------------------------------------------
// Deserializer
// ---------------------------------------------------------------------------------------------

/// One node being read: a `Value`, or an object key (which MessagePack encoded as a string).
#[derive(Clone, Copy)]
enum Node<'de> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'de str),
    Bytes(&'de [u8]),
    Array(&'de [Value]),
    Object(&'de Object),
}

impl<'de> From<&'de Value> for Node<'de> {
    fn from(v: &'de Value) -> Self {
        match v {
            Value::Null => Node::Null,
            Value::Int64(i) => Node::Int(*i),
            Value::Float64(f) => Node::Float(*f),
            Value::Bool(b) => Node::Bool(*b),
            Value::String(s) => Node::Str(s),
            Value::Bytes(b) => Node::Bytes(b),
            Value::Array(items) => Node::Array(items),
            Value::Object(fields) => Node::Object(fields),
        }
    }
}

impl Node<'_> {
    fn unexpected(&self) -> Unexpected<'_> {
        match *self {
            Node::Null => Unexpected::Unit,
            Node::Bool(b) => Unexpected::Bool(b),
            Node::Int(i) => Unexpected::Signed(i),
            Node::Float(f) => Unexpected::Float(f),
            Node::Str(s) => Unexpected::Str(s),
            Node::Bytes(b) => Unexpected::Bytes(b),
            Node::Array(_) => Unexpected::Seq,
            Node::Object(_) => Unexpected::Map,
        }
    }
}

/// Reads a `Value` (or an object key) for a `Deserialize` implementation. `depth` is the
/// nesting budget left: entering an array or object spends one, reaching 0 is an error.
pub(crate) struct ValueDeserializer<'de> {
    node: Node<'de>,
    depth: u16,
}

impl<'de> ValueDeserializer<'de> {
    pub(crate) fn new(v: &'de Value) -> Self {
        ValueDeserializer {
            node: Node::from(v),
            depth: DEPTH_BUDGET,
        }
    }

    fn child(node: Node<'de>, depth: u16) -> Self {
        ValueDeserializer { node, depth }
    }

    fn enter(&self) -> Result<u16, ConvertError> {
        match self.depth - 1 {
            0 => Err(depth_exceeded()),
            left => Ok(left),
        }
    }

    /// Null, booleans and numbers; anything else is a type error (MessagePack's `any_num`).
    fn scalar<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.node {
            Node::Null => visitor.visit_unit(),
            Node::Bool(b) => visitor.visit_bool(b),
            Node::Int(i) => visit_int(i, visitor),
            Node::Float(f) => visitor.visit_f64(f),
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    /// Any node; bytes are offered as bytes when `bytes_as_bytes`, else as a sequence of u8.
    fn any<V: Visitor<'de>>(
        self,
        visitor: V,
        bytes_as_bytes: bool,
    ) -> Result<V::Value, ConvertError> {
        match self.node {
            Node::Str(s) => visitor.visit_borrowed_str(s),
            Node::Bytes(b) if bytes_as_bytes => visitor.visit_borrowed_bytes(b),
            Node::Bytes(b) => visitor.visit_seq(SeqDeserializer::new(b.iter().copied())),
            Node::Array(items) => {
                let mut seq = SeqAccess {
                    items: items.iter(),
                    index: 0,
                    depth: self.enter()?,
                };
                let out = visitor.visit_seq(&mut seq)?;
                match seq.items.len() {
                    0 => Ok(out),
                    _ => Err(decode_error(format!(
                        "array has {} elements, {} were expected",
                        items.len(),
                        seq.index
                    ))),
                }
            }
            Node::Object(fields) => {
                let mut map = MapAccess {
                    entries: fields.iter(),
                    value: None,
                    read: 0,
                    depth: self.enter()?,
                };
                let out = visitor.visit_map(&mut map)?;
                match map.entries.len() {
                    0 => Ok(out),
                    _ => Err(decode_error(format!(
                        "object has {} fields, {} were read",
                        fields.len(),
                        map.read
                    ))),
                }
            }
            _ => self.scalar(visitor),
        }
    }

    /// A 128-bit integer: an int64 or 16 big-endian bytes.
    fn int128(&self) -> Result<i128, ConvertError> {
        match self.node {
            Node::Int(i) => Ok(i128::from(i)),
            // MessagePack's bin8 form only: 16 bytes, or an error about the length.
            Node::Bytes(b) if b.len() < 256 => <[u8; 16]>::try_from(b)
                .map(i128::from_be_bytes)
                .map_err(|_| {
                    decode_error(format!(
                        "a 128-bit integer needs 16 bytes, found {}",
                        b.len()
                    ))
                }),
            other => Err(decode_error(format!(
                "invalid type: {}, expected a 128-bit integer",
                other.unexpected()
            ))),
        }
    }
}

/// Calls the visitor method matching the MessagePack marker `write_sint` would pick for `i`.
fn visit_int<'de, V: Visitor<'de>>(i: i64, visitor: V) -> Result<V::Value, ConvertError> {
    if let Ok(u) = u8::try_from(i) {
        visitor.visit_u8(u)
    } else if let Ok(u) = u16::try_from(i) {
        visitor.visit_u16(u)
    } else if let Ok(u) = u32::try_from(i) {
        visitor.visit_u32(u)
    } else if i >= 0 {
        visitor.visit_u64(i.unsigned_abs())
    } else if let Ok(s) = i8::try_from(i) {
        visitor.visit_i8(s)
    } else if let Ok(s) = i16::try_from(i) {
        visitor.visit_i16(s)
    } else if let Ok(s) = i32::try_from(i) {
        visitor.visit_i32(s)
    } else {
        visitor.visit_i64(i)
    }
}

macro_rules! scalar_requests {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
                self.scalar(visitor)
            }
        )*
    };
}

macro_rules! any_requests {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
                self.any(visitor, true)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'de> {
    type Error = ConvertError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        self.any(visitor, true)
    }

    scalar_requests! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_f32 deserialize_f64
    }

    any_requests! {
        deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_unit deserialize_map deserialize_identifier
        deserialize_ignored_any
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        visitor.visit_i128(self.int128()?)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        // MessagePack reinterpreted the signed value: -1 reads as u128::MAX.
        visitor.visit_u128(self.int128()? as u128)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        match self.node {
            Node::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        match self.node {
            Node::Null => visitor.visit_unit(),
            Node::Array([]) => visitor.visit_unit(),
            _ => self.any(visitor, true),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ConvertError> {
        self.any(visitor, false)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        self.any(visitor, false)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        self.any(visitor, false)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        self.any(visitor, false)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        match self.node {
            Node::Object(fields) => {
                let mut entries = fields.iter();
                match (entries.next(), entries.next()) {
                    (Some((name, content)), None) => visitor.visit_enum(VariantAccess {
                        name,
                        content,
                        depth: self.depth,
                    }),
                    _ => Err(decode_error(format!(
                        "an enum must be a variant name or an object with exactly one field \
                         (the variant), found an object with {} fields",
                        fields.len()
                    ))),
                }
            }
            _ => visitor.visit_enum(UnitVariantAccess { de: self }),
        }
    }
}

struct SeqAccess<'de> {
    items: slice::Iter<'de, Value>,
    index: usize,
    depth: u16,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'de> {
    type Error = ConvertError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ConvertError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(ValueDeserializer::child(Node::from(item), self.depth))
            .map(Some)
            .map_err(|e| e.within(&format!("[{index}]")))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'de> {
    entries: btree_map::Iter<'de, String, Value>,
    /// The value of the key just read, with that key for error paths.
    value: Option<(&'de str, &'de Value)>,
    read: usize,
    depth: u16,
}

impl<'de> de::MapAccess<'de> for MapAccess<'de> {
    type Error = ConvertError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ConvertError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.read += 1;
        self.value = Some((key, value));
        seed.deserialize(ValueDeserializer::child(Node::Str(key), self.depth))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ConvertError> {
        let Some((key, value)) = self.value.take() else {
            return Err(decode_error(
                "a map value was read before its key".to_owned(),
            ));
        };
        seed.deserialize(ValueDeserializer::child(Node::from(value), self.depth))
            .map_err(|e| e.within(key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// A variant written `{name: content}`.
struct VariantAccess<'de> {
    name: &'de str,
    content: &'de Value,
    depth: u16,
}

impl<'de> de::EnumAccess<'de> for VariantAccess<'de> {
    type Error = ConvertError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), ConvertError> {
        let variant =
            seed.deserialize(ValueDeserializer::child(Node::Str(self.name), self.depth))?;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> {
    fn content(&self) -> ValueDeserializer<'de> {
        ValueDeserializer::child(Node::from(self.content), self.depth)
    }
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'de> {
    type Error = ConvertError;

    fn unit_variant(self) -> Result<(), ConvertError> {
        match self.content {
            Value::Null => Ok(()),
            other => Err(decode_error(format!(
                "unit variant {} must have null content, found {}",
                self.name,
                other.type_name()
            ))),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ConvertError> {
        seed.deserialize(self.content())
            .map_err(|e| e.within(self.name))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        self.content()
            .any(visitor, false)
            .map_err(|e| e.within(self.name))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ConvertError> {
        self.content()
            .any(visitor, false)
            .map_err(|e| e.within(self.name))
    }
}

/// A variant written as the node itself (normally its name): only a unit variant fits.
struct UnitVariantAccess<'de> {
    de: ValueDeserializer<'de>,
}

impl<'de> de::EnumAccess<'de> for UnitVariantAccess<'de> {
    type Error = ConvertError;
    type Variant = UnitOnly;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, UnitOnly), ConvertError> {
        Ok((seed.deserialize(self.de)?, UnitOnly))
    }
}

struct UnitOnly;

impl UnitOnly {
    fn not_unit(expected: &'static str) -> ConvertError {
        de::Error::invalid_type(Unexpected::UnitVariant, &expected)
    }
}

impl<'de> de::VariantAccess<'de> for UnitOnly {
    type Error = ConvertError;

    fn unit_variant(self) -> Result<(), ConvertError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        _seed: T,
    ) -> Result<T::Value, ConvertError> {
        Err(Self::not_unit("newtype variant"))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, ConvertError> {
        Err(Self::not_unit("tuple variant"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, ConvertError> {
        Err(Self::not_unit("struct variant"))
    }
}

// ---------------------------------------------------------------------------------------------
// Serializer
// ---------------------------------------------------------------------------------------------

/// Builds a `Value` from a `Serialize` implementation. `depth` is the nesting budget left, as
/// for `ValueDeserializer` (MessagePack's decoder applied it to the encoded bytes).
pub(crate) struct ValueSerializer {
    depth: u16,
}

impl ValueSerializer {
    pub(crate) fn new() -> Self {
        ValueSerializer {
            depth: DEPTH_BUDGET,
        }
    }

    /// The budget for the contents of a new array/object.
    fn enter(&self) -> Result<u16, ConvertError> {
        match self.depth - 1 {
            0 => Err(encode_error(
                "nesting deeper than 1023 arrays/objects".to_owned(),
            )),
            left => Ok(left),
        }
    }

    /// The budget for the contents of a tuple or struct variant: one level for the
    /// `{variant: …}` object around it, one for the contents.
    fn enter_variant(&self) -> Result<u16, ConvertError> {
        ValueSerializer {
            depth: self.enter()?,
        }
        .enter()
    }
}

fn int_from_u64(u: u64) -> Result<Value, ConvertError> {
    i64::try_from(u)
        .map(Value::Int64)
        .map_err(|_| encode_error(format!("integer {u} does not fit in int64")))
}

fn single(name: &str, content: Value) -> Value {
    let mut fields = Object::new();
    fields.insert(name.to_owned(), content);
    Value::from(fields)
}

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ConvertError;
    type SerializeSeq = ArrayBuilder;
    type SerializeTuple = ArrayBuilder;
    type SerializeTupleStruct = ArrayBuilder;
    type SerializeTupleVariant = ArrayBuilder;
    type SerializeMap = ObjectBuilder;
    type SerializeStruct = ObjectBuilder;
    type SerializeStructVariant = ObjectBuilder;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn serialize_bool(self, v: bool) -> Result<Value, ConvertError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ConvertError> {
        Ok(Value::Int64(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ConvertError> {
        Ok(Value::Int64(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ConvertError> {
        Ok(Value::Int64(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ConvertError> {
        Ok(Value::Int64(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, ConvertError> {
        Ok(Value::Bytes(v.to_be_bytes().to_vec()))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ConvertError> {
        Ok(Value::Int64(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ConvertError> {
        Ok(Value::Int64(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ConvertError> {
        Ok(Value::Int64(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ConvertError> {
        int_from_u64(v)
    }
    fn serialize_u128(self, v: u128) -> Result<Value, ConvertError> {
        Ok(Value::Bytes(v.to_be_bytes().to_vec()))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ConvertError> {
        Ok(Value::Float64(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ConvertError> {
        Ok(Value::Float64(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, ConvertError> {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ConvertError> {
        Ok(Value::String(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ConvertError> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn serialize_none(self) -> Result<Value, ConvertError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<Value, ConvertError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ConvertError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, ConvertError> {
        self.enter()?;
        Ok(Value::Array(Vec::new()))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, ConvertError> {
        Ok(Value::String(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        v: &T,
    ) -> Result<Value, ConvertError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Value, ConvertError> {
        let depth = self.enter()?;
        Ok(single(variant, v.serialize(ValueSerializer { depth })?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<ArrayBuilder, ConvertError> {
        Ok(ArrayBuilder::new(self.enter()?, len.unwrap_or(0), None))
    }
    fn serialize_tuple(self, len: usize) -> Result<ArrayBuilder, ConvertError> {
        Ok(ArrayBuilder::new(self.enter()?, len, None))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<ArrayBuilder, ConvertError> {
        Ok(ArrayBuilder::new(self.enter()?, len, None))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<ArrayBuilder, ConvertError> {
        Ok(ArrayBuilder::new(self.enter_variant()?, len, Some(variant)))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<ObjectBuilder, ConvertError> {
        Ok(ObjectBuilder::new(self.enter()?, len.unwrap_or(0), None))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<ObjectBuilder, ConvertError> {
        Ok(ObjectBuilder::new(self.enter()?, len, None))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<ObjectBuilder, ConvertError> {
        Ok(ObjectBuilder::new(
            self.enter_variant()?,
            len,
            Some(variant),
        ))
    }
}

/// An array being built; `variant` wraps it as `{variant: [...]}` at the end.
pub(crate) struct ArrayBuilder {
    items: Vec<Value>,
    depth: u16,
    variant: Option<&'static str>,
}

impl ArrayBuilder {
    fn new(depth: u16, len: usize, variant: Option<&'static str>) -> Self {
        ArrayBuilder {
            // The length comes from a Serialize impl: cap the preallocation, not the length.
            items: Vec::with_capacity(len.min(1024)),
            depth,
            variant,
        }
    }

    fn push<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), ConvertError> {
        self.items
            .push(v.serialize(ValueSerializer { depth: self.depth })?);
        Ok(())
    }

    fn finish(self) -> Result<Value, ConvertError> {
        let array = Value::Array(self.items);
        Ok(match self.variant {
            Some(name) => single(name, array),
            None => array,
        })
    }
}

/// serde's four sequence-like builders (sequence, tuple, tuple struct, tuple variant) all
/// append elements to an array.
macro_rules! array_builder {
    ($($trait:ident :: $method:ident),* $(,)?) => {$(
        impl ser::$trait for ArrayBuilder {
            type Ok = Value;
            type Error = ConvertError;
            fn $method<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), ConvertError> {
                self.push(v)
            }
            fn end(self) -> Result<Value, ConvertError> {
                self.finish()
            }
        }
    )*};
}

array_builder!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

/// An object being built; `variant` wraps it as `{variant: {...}}` at the end.
pub(crate) struct ObjectBuilder {
    /// Collected in write order and sorted once at the end: building the map in bulk is
    /// cheaper than inserting field by field.
    fields: Vec<(String, Value)>,
    key: Option<String>,
    depth: u16,
    variant: Option<&'static str>,
}

impl ObjectBuilder {
    fn new(depth: u16, len: usize, variant: Option<&'static str>) -> Self {
        ObjectBuilder {
            // The length comes from a Serialize impl: cap the preallocation, not the length.
            fields: Vec::with_capacity(len.min(1024)),
            key: None,
            depth,
            variant,
        }
    }

    fn insert<T: ?Sized + Serialize>(&mut self, key: String, v: &T) -> Result<(), ConvertError> {
        let value = v.serialize(ValueSerializer { depth: self.depth })?;
        self.fields.push((key, value));
        Ok(())
    }

    fn finish(mut self) -> Result<Value, ConvertError> {
        self.fields.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = self.fields.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(encode_error(format!(
                "duplicate object key {:?}",
                pair[0].0
            )));
        }
        let object = Value::from(self.fields.into_iter().collect::<Object>());
        Ok(match self.variant {
            Some(name) => single(name, object),
            None => object,
        })
    }
}

impl ser::SerializeMap for ObjectBuilder {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<(), ConvertError> {
        self.key = Some(key.serialize(KeySerializer)?);
        Ok(())
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), ConvertError> {
        let Some(key) = self.key.take() else {
            return Err(encode_error(
                "a map value was written before its key".to_owned(),
            ));
        };
        self.insert(key, v)
    }
    fn end(self) -> Result<Value, ConvertError> {
        self.finish()
    }
}

impl ser::SerializeStruct for ObjectBuilder {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        name: &'static str,
        v: &T,
    ) -> Result<(), ConvertError> {
        self.insert(name.to_owned(), v)
    }
    fn end(self) -> Result<Value, ConvertError> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for ObjectBuilder {
    type Ok = Value;
    type Error = ConvertError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        name: &'static str,
        v: &T,
    ) -> Result<(), ConvertError> {
        self.insert(name.to_owned(), v)
    }
    fn end(self) -> Result<Value, ConvertError> {
        self.finish()
    }
}

/// A map key: whatever would have read back as a string (strings, chars, unit variants, and
/// bytes that are UTF-8 — including a 128-bit integer's 16 bytes, as before).
struct KeySerializer;

fn bad_key(found: &str) -> ConvertError {
    encode_error(format!("object keys must be strings, found {found}"))
}

fn key_from_bytes(b: &[u8]) -> Result<String, ConvertError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad_key("bytes that are not UTF-8"))
}

macro_rules! reject_scalar_keys {
    ($($method:ident($ty:ty) $found:literal,)*) => {
        $(
            fn $method(self, _v: $ty) -> Result<String, ConvertError> {
                Err(bad_key($found))
            }
        )*
    };
}

impl ser::Serializer for KeySerializer {
    type Ok = String;
    type Error = ConvertError;
    type SerializeSeq = Impossible<String, ConvertError>;
    type SerializeTuple = Impossible<String, ConvertError>;
    type SerializeTupleStruct = Impossible<String, ConvertError>;
    type SerializeTupleVariant = Impossible<String, ConvertError>;
    type SerializeMap = Impossible<String, ConvertError>;
    type SerializeStruct = Impossible<String, ConvertError>;
    type SerializeStructVariant = Impossible<String, ConvertError>;

    fn is_human_readable(&self) -> bool {
        false
    }

    reject_scalar_keys! {
        serialize_bool(bool) "a bool",
        serialize_i8(i8) "an integer",
        serialize_i16(i16) "an integer",
        serialize_i32(i32) "an integer",
        serialize_i64(i64) "an integer",
        serialize_u8(u8) "an integer",
        serialize_u16(u16) "an integer",
        serialize_u32(u32) "an integer",
        serialize_u64(u64) "an integer",
        serialize_f32(f32) "a float",
        serialize_f64(f64) "a float",
    }

    fn serialize_i128(self, v: i128) -> Result<String, ConvertError> {
        key_from_bytes(&v.to_be_bytes())
    }
    fn serialize_u128(self, v: u128) -> Result<String, ConvertError> {
        key_from_bytes(&v.to_be_bytes())
    }
    fn serialize_char(self, v: char) -> Result<String, ConvertError> {
        Ok(v.to_string())
    }
    fn serialize_str(self, v: &str) -> Result<String, ConvertError> {
        Ok(v.to_owned())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<String, ConvertError> {
        key_from_bytes(v)
    }
    fn serialize_none(self) -> Result<String, ConvertError> {
        Err(bad_key("null"))
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<String, ConvertError> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<String, ConvertError> {
        Err(bad_key("null"))
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<String, ConvertError> {
        Err(bad_key("an array"))
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<String, ConvertError> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        v: &T,
    ) -> Result<String, ConvertError> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _v: &T,
    ) -> Result<String, ConvertError> {
        Err(bad_key("an object"))
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, ConvertError> {
        Err(bad_key("an array"))
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, ConvertError> {
        Err(bad_key("an array"))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleStruct, ConvertError> {
        Err(bad_key("an array"))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, ConvertError> {
        Err(bad_key("an object"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, ConvertError> {
        Err(bad_key("an object"))
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, ConvertError> {
        Err(bad_key("an object"))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, ConvertError> {
        Err(bad_key("an object"))
    }
}

/// For `#[serde(default, deserialize_with = "present")]` on an `Option<Value>` field: a field
/// that is there is `Some`, even when it is nil; only an absent one is `None`.
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    //! The acceptance test: the direct conversions agree with the MessagePack round trip they
    //! replaced (kept here only as the reference), on success values and on success-vs-error.

    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use crate::encoding::tests::arb_value;
    use crate::json::{from_value, to_value, ConvertError};
    use crate::obj;
    use crate::value::{Object, Value};

    /// The old `to_value`: `rmp_serde::to_vec_named` then `rmp_serde::from_slice`.
    fn old_to_value<T: Serialize + ?Sized>(t: &T) -> Result<Value, String> {
        let bytes = rmp_serde::to_vec_named(t).map_err(|e| e.to_string())?;
        rmp_serde::from_slice(&bytes).map_err(|e| e.to_string())
    }

    /// The old `from_value`, likewise.
    fn old_from_value<T: DeserializeOwned>(v: &Value) -> Result<T, String> {
        let bytes = rmp_serde::to_vec_named(v).map_err(|e| e.to_string())?;
        rmp_serde::from_slice(&bytes).map_err(|e| e.to_string())
    }

    /// Both succeed with the same value (compared through `Debug`, which tells -0.0 from 0.0
    /// and shows every NaN as NaN), or both fail.
    fn agree<T: std::fmt::Debug>(
        new: &Result<T, ConvertError>,
        old: &Result<T, String>,
    ) -> Result<(), String> {
        match (new, old) {
            (Ok(n), Ok(o)) if format!("{n:?}") == format!("{o:?}") => Ok(()),
            (Err(_), Err(_)) => Ok(()),
            _ => Err(format!("new {new:?} but old {old:?}")),
        }
    }

    fn check_from<T: DeserializeOwned + std::fmt::Debug>(v: &Value) -> Result<(), TestCaseError> {
        agree(&from_value::<T>(v), &old_from_value::<T>(v)).map_err(|e| {
            TestCaseError::fail(format!("{}: {e} for {v:?}", std::any::type_name::<T>()))
        })
    }

    fn check_to<T: Serialize + std::fmt::Debug>(t: &T) -> Result<(), TestCaseError> {
        agree(&to_value(t), &old_to_value(t))
            .map_err(|e| TestCaseError::fail(format!("{e} for {t:?}")))
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Profile {
        #[serde(rename = "_id")]
        id: String,
        display_name: String,
        age: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        headline: Option<String>,
        score: f64,
        ratio: f32,
        rank: i32,
        small: i8,
        big: u64,
        initial: char,
        tags: Vec<String>,
        #[serde(default)]
        counts: Vec<u16>,
        address: Option<Address>,
        role: Role,
        shapes: Vec<Shape>,
        event: Event,
        payload: Payload,
        pair: (i64, bool),
        marker: Marker,
        meters: Meters,
        by_role: BTreeMap<Role, u32>,
        blob: Value,
        wide: i128,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    struct Address {
        street_name: String,
        zip: u32,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    #[serde(rename_all = "lowercase")]
    enum Role {
        Host,
        Guest,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    enum Shape {
        Point,
        Circle(f64),
        Pair(i8, i8),
        Rect { w: u16, h: u16 },
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[serde(tag = "type", rename_all_fields = "camelCase")]
    enum Event {
        Joined {
            user_id: String,
        },
        Left {
            user_id: String,
            reason: Option<String>,
        },
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    #[serde(tag = "kind", content = "value", rename_all = "camelCase")]
    enum Payload {
        Text(String),
        Count(i64),
        Empty,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Marker;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Meters(f64);

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Flat {
        id: i64,
        #[serde(flatten)]
        rest: BTreeMap<String, Value>,
    }

    fn arb_small_string() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-c]{0,3}", any::<String>()]
    }

    fn arb_shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Point),
            any::<f64>().prop_map(Shape::Circle),
            (any::<i8>(), any::<i8>()).prop_map(|(a, b)| Shape::Pair(a, b)),
            (any::<u16>(), any::<u16>()).prop_map(|(w, h)| Shape::Rect { w, h }),
        ]
    }

    fn arb_role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Host), Just(Role::Guest)]
    }

    fn arb_profile() -> impl Strategy<Value = Profile> {
        let names = (
            arb_small_string(),
            arb_small_string(),
            any::<Option<u8>>(),
            proptest::option::of(arb_small_string()),
        );
        let numbers = (
            any::<f64>(),
            any::<f32>(),
            any::<i32>(),
            any::<i8>(),
            prop_oneof![
                8 => 0..=(i64::MAX as u64),
                1 => Just(i64::MAX as u64 + 1),
                1 => any::<u64>(),
            ],
            any::<char>(),
            any::<i128>(),
        );
        let lists = (
            prop::collection::vec(arb_small_string(), 0..3),
            prop::collection::vec(any::<u16>(), 0..3),
            proptest::option::of((arb_small_string(), any::<u32>())),
            arb_role(),
            prop::collection::vec(arb_shape(), 0..3),
        );
        let rest = (
            (
                arb_small_string(),
                proptest::option::of(arb_small_string()),
                any::<bool>(),
            ),
            prop_oneof![
                arb_small_string().prop_map(Payload::Text),
                any::<i64>().prop_map(Payload::Count),
                Just(Payload::Empty),
            ],
            (any::<i64>(), any::<bool>()),
            any::<f64>(),
            prop::collection::btree_map(arb_role(), any::<u32>(), 0..2),
            arb_value(),
        );
        (names, numbers, lists, rest).prop_map(
            |(
                (id, display_name, age, headline),
                (score, ratio, rank, small, big, initial, wide),
                (tags, counts, address, role, shapes),
                ((user_id, reason, left), payload, pair, meters, by_role, blob),
            )| Profile {
                id,
                display_name,
                age,
                headline,
                score,
                ratio,
                rank,
                small,
                big,
                initial,
                tags,
                counts,
                address: address.map(|(street_name, zip)| Address { street_name, zip }),
                role,
                shapes,
                event: if left {
                    Event::Left { user_id, reason }
                } else {
                    Event::Joined { user_id }
                },
                payload,
                pair,
                marker: Marker,
                meters: Meters(meters),
                by_role,
                blob,
                wide,
            },
        )
    }

    /// Values at the edges of what the typed fields accept.
    fn arb_tricky() -> impl Strategy<Value = Value> {
        let edges: Vec<Value> = [
            -129i64,
            -128,
            -33,
            -32,
            -1,
            0,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            i64::from(i32::MAX) + 1,
            i64::from(i32::MIN) - 1,
            i64::from(u32::MAX) + 1,
            i64::MIN,
            i64::MAX,
        ]
        .into_iter()
        .map(Value::Int64)
        .chain([
            Value::Float64(1.0),
            Value::Float64(0.5),
            Value::Float64(f64::NAN),
            Value::Float64(1e300),
            Value::Null,
            Value::Bool(true),
            Value::from("host"),
            Value::from("Point"),
            Value::from("Circle"),
            Value::from("x"),
            Value::from("Joined"),
            Value::Array(Vec::new()),
            Value::Array(vec![Value::Int64(1); 16]),
            Value::Array(vec![Value::Int64(1), Value::Int64(2), Value::Int64(3)]),
            Value::from(Object::new()),
            obj! { "Circle" => 1i64 },
            obj! { "Point" => Value::Null },
            obj! { "Point" => 1i64 },
            obj! { "Rect" => vec![Value::Int64(1), Value::Int64(2)] },
            Value::Bytes(vec![7; 16]),
            Value::Bytes(vec![b'a', b'b']),
        ])
        .collect();
        prop_oneof![3 => prop::sample::select(edges), 1 => arb_value()]
    }

    #[derive(Clone, Debug)]
    enum Mutation {
        Replace(Value),
        Remove,
        Insert(String, Value),
    }

    fn arb_mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            4 => arb_tricky().prop_map(Mutation::Replace),
            1 => Just(Mutation::Remove),
            1 => ("[a-z_]{1,8}", arb_tricky()).prop_map(|(k, v)| Mutation::Insert(k, v)),
        ]
    }

    fn count_nodes(v: &Value) -> usize {
        1 + match v {
            Value::Array(items) => items.iter().map(count_nodes).sum(),
            Value::Object(fields) => fields.values().map(count_nodes).sum(),
            _ => 0,
        }
    }

    /// Applies `m` at the `target`-th node in pre-order (removal takes an object's first key).
    fn mutate(v: &mut Value, target: &mut usize, m: &Mutation) -> bool {
        if *target == 0 {
            match (m, &mut *v) {
                (Mutation::Replace(new), _) => *v = new.clone(),
                (Mutation::Remove, Value::Object(_)) => {
                    if let Some(fields) = v.as_object_mut() {
                        fields.pop_first();
                    }
                }
                (Mutation::Insert(k, new), Value::Object(_)) => {
                    if let Some(fields) = v.as_object_mut() {
                        fields.insert(k.clone(), new.clone());
                    }
                }
                (_, Value::Array(items)) => {
                    items.pop();
                }
                _ => *v = Value::Null,
            }
            return true;
        }
        *target -= 1;
        match v {
            Value::Array(items) => items.iter_mut().any(|item| mutate(item, target, m)),
            Value::Object(_) => v
                .as_object_mut()
                .is_some_and(|fields| fields.values_mut().any(|item| mutate(item, target, m))),
            _ => false,
        }
    }

    /// A typed value's old encoding with a few random mutations.
    fn mutated(mut v: Value, mutations: &[(usize, Mutation)]) -> Value {
        for (pick, m) in mutations {
            let mut target = pick % count_nodes(&v);
            mutate(&mut v, &mut target, m);
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn value_identity_agrees(v in arb_value()) {
            check_from::<Value>(&v)?;
            check_to(&v)?;
            let back: Value = from_value(&v).unwrap();
            prop_assert_eq!(back, v);
        }

        #[test]
        fn typed_to_value_agrees(p in arb_profile()) {
            check_to(&p)?;
            check_to(&p.shapes)?;
            check_to(&(p.event.clone(), p.payload.clone(), p.wide as u128))?;
        }

        #[test]
        fn typed_from_value_agrees(
            p in arb_profile(),
            mutations in prop::collection::vec((any::<usize>(), arb_mutation()), 0..4),
        ) {
            let Ok(encoded) = old_to_value(&p) else {
                // u64 above int64: nothing to decode (to_value agreement is tested above).
                return Ok(());
            };
            let v = mutated(encoded, &mutations);
            check_from::<Profile>(&v)?;
            if let Some(fields) = v.as_object() {
                for field in fields.values() {
                    check_from::<Shape>(field)?;
                    check_from::<Vec<Shape>>(field)?;
                    check_from::<Event>(field)?;
                    check_from::<Payload>(field)?;
                    check_from::<Option<Address>>(field)?;
                    check_from::<BTreeMap<Role, u32>>(field)?;
                    check_from::<(i64, bool)>(field)?;
                    check_from::<Marker>(field)?;
                    check_from::<Meters>(field)?;
                    check_from::<i128>(field)?;
                    check_from::<u128>(field)?;
                    check_from::<char>(field)?;
                    check_from::<f32>(field)?;
                    check_from::<u8>(field)?;
                    check_from::<i16>(field)?;
                    check_from::<Vec<u8>>(field)?;
                    check_from::<Flat>(field)?;
                }
            }
        }

        #[test]
        fn arbitrary_values_into_types_agree(v in prop_oneof![arb_value(), arb_tricky()]) {
            check_from::<Profile>(&v)?;
            check_from::<Shape>(&v)?;
            check_from::<Role>(&v)?;
            check_from::<Event>(&v)?;
            check_from::<Payload>(&v)?;
            check_from::<Address>(&v)?;
            check_from::<Flat>(&v)?;
            check_from::<Option<Vec<i32>>>(&v)?;
            check_from::<BTreeMap<String, f64>>(&v)?;
            check_from::<(u8, u16)>(&v)?;
            check_from::<u64>(&v)?;
            check_from::<i8>(&v)?;
            check_from::<f64>(&v)?;
            check_from::<String>(&v)?;
            check_from::<bool>(&v)?;
            check_from::<()>(&v)?;
            check_from::<Marker>(&v)?;
            check_from::<i128>(&v)?;
            check_from::<serde::de::IgnoredAny>(&v)?;
        }

        #[test]
        fn maps_and_scalars_to_value_agree(
            ints in prop::collection::btree_map(any::<i32>(), any::<u64>(), 0..3),
            names in prop::collection::btree_map(arb_small_string(), any::<f32>(), 0..3),
            chars in prop::collection::btree_map(any::<char>(), any::<i128>(), 0..2),
            bytes in prop::collection::vec(any::<u8>(), 0..20),
            wide in any::<u128>(),
        ) {
            check_to(&ints)?;
            check_to(&names)?;
            check_to(&chars)?;
            check_to(&bytes)?;
            check_to(&(wide, Marker, (), None::<u8>, Some('x')))?;
            check_to(&BTreeMap::from([(wide, 1u8)]))?;
            check_to(&BTreeMap::from([(Role::Host, Shape::Point)]))?;
            check_to(&BTreeMap::from([(None, 1u8), (Some(wide.to_string()), 2)]))?;
            check_to(&BTreeMap::from([(Some(wide.to_string()), 2u8)]))?;
            check_to(&BTreeMap::from([((1u8, 2u8), 1u8)]))?;
            check_to(&BTreeMap::from([(bytes.clone(), 1u8)]))?;
            check_to(&BTreeMap::from([(false, 1u8)]))?;
        }
    }

    #[test]
    fn integer_edges() {
        // u64 above int64 is an encode error, as before.
        assert!(old_to_value(&(i64::MAX as u64 + 1)).is_err());
        assert_eq!(
            to_value(&u64::MAX).unwrap_err().to_string(),
            "cannot convert to a value: integer 18446744073709551615 does not fit in int64"
        );
        assert_eq!(
            to_value(&(i64::MAX as u64)).unwrap(),
            Value::Int64(i64::MAX)
        );
        // Out of range for the requested width is an error; an integer reads as a float, a
        // float never as an integer.
        assert!(from_value::<u8>(&Value::Int64(256)).is_err());
        assert!(from_value::<u8>(&Value::Int64(-1)).is_err());
        assert_eq!(from_value::<i8>(&Value::Int64(-128)).unwrap(), -128);
        assert_eq!(from_value::<f64>(&Value::Int64(3)).unwrap(), 3.0);
        assert!(from_value::<i64>(&Value::Float64(3.0)).is_err());
        assert!(old_from_value::<i64>(&Value::Float64(3.0)).is_err());
        // MessagePack reinterpreted a negative integer read as u128; so does this.
        assert_eq!(from_value::<u128>(&Value::Int64(-1)).unwrap(), u128::MAX);
        assert_eq!(
            old_from_value::<u128>(&Value::Int64(-1)).unwrap(),
            u128::MAX
        );
    }

    #[test]
    fn floats_and_empty_objects() {
        let nan = to_value(&f64::NAN).unwrap();
        assert!(matches!(nan, Value::Float64(f) if f.is_nan()));
        assert!(from_value::<f64>(&nan).unwrap().is_nan());
        assert!(matches!(to_value(&1.5f32).unwrap(), Value::Float64(f) if f == 1.5));
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Empty {}
        assert_eq!(to_value(&Empty {}).unwrap(), Value::from(Object::new()));
        assert_eq!(
            from_value::<Empty>(&Value::from(Object::new())).unwrap(),
            Empty {}
        );
        assert_eq!(to_value(&Marker).unwrap(), Value::Array(Vec::new()));
        assert_eq!(from_value::<Marker>(&Value::Null).unwrap(), Marker);
    }

    #[test]
    fn fields_unknown_missing_and_misplaced() {
        #[derive(Deserialize, Debug, PartialEq)]
        #[serde(rename_all = "camelCase")]
        struct Args {
            meeting_id: String,
            limit: Option<u32>,
            tags: Vec<Address>,
        }
        // Unknown fields are ignored (unless the type denies them).
        let ok = obj! { "meetingId" => "m1", "extra" => 1i64, "tags" => Vec::<Value>::new() };
        assert_eq!(
            from_value::<Args>(&ok).unwrap(),
            Args {
                meeting_id: "m1".into(),
                limit: None,
                tags: vec![]
            }
        );
        // A missing required field is an error naming it.
        let missing = obj! { "tags" => Vec::<Value>::new() };
        assert_eq!(
            from_value::<Args>(&missing).unwrap_err().to_string(),
            "cannot convert from a value: missing field `meetingId`"
        );
        assert!(old_from_value::<Args>(&missing).is_err());
        // A wrong type names where it is.
        let wrong = obj! {
            "meetingId" => "m1",
            "tags" => vec![obj! { "street-name" => "x", "zip" => "nine" }],
        };
        assert_eq!(
            from_value::<Args>(&wrong).unwrap_err().to_string(),
            "cannot convert from a value: tags[0].zip: invalid type: string \"nine\", expected u32"
        );
        let denied = obj! { "street-name" => "x", "zip" => 1i64, "floor" => 2i64 };
        assert!(from_value::<Address>(&denied).is_err());
        assert!(old_from_value::<Address>(&denied).is_err());
        // A tuple given too many elements is rejected, as MessagePack's reader did.
        let long = Value::Array(vec![Value::Int64(1), Value::Bool(true), Value::Null]);
        assert!(from_value::<(i64, bool)>(&long).is_err());
        assert!(old_from_value::<(i64, bool)>(&long).is_err());
    }

    #[test]
    fn enums_match_the_named_encoding() {
        assert_eq!(to_value(&Shape::Point).unwrap(), Value::from("Point"));
        assert_eq!(
            to_value(&Shape::Circle(2.0)).unwrap(),
            obj! { "Circle" => 2.0 }
        );
        assert_eq!(
            to_value(&Shape::Rect { w: 1, h: 2 }).unwrap(),
            obj! { "Rect" => obj! { "w" => 1i64, "h" => 2i64 } }
        );
        assert_eq!(
            to_value(&Shape::Pair(1, -1)).unwrap(),
            obj! { "Pair" => vec![Value::Int64(1), Value::Int64(-1)] }
        );
        // A variant may be named by its index, and a unit variant may be written {name: null}.
        assert_eq!(from_value::<Shape>(&Value::Int64(0)).unwrap(), Shape::Point);
        assert_eq!(
            from_value::<Shape>(&obj! { "Point" => Value::Null }).unwrap(),
            Shape::Point
        );
        assert!(from_value::<Shape>(&Value::from("Circle")).is_err());
        assert!(from_value::<Shape>(&Value::from(Object::new())).is_err());
    }

    #[test]
    fn map_keys_must_be_strings() {
        let err = to_value(&BTreeMap::from([(1, 2)])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot convert to a value: object keys must be strings, found an integer"
        );
        assert!(old_to_value(&BTreeMap::from([(1, 2)])).is_err());
        assert_eq!(
            to_value(&BTreeMap::from([(Role::Guest, 1)])).unwrap(),
            obj! { "guest" => 1i64 }
        );
        // Two keys that come out as the same string.
        struct Twice;
        impl Serialize for Twice {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry(&'a', &1)?;
                map.serialize_entry("a", &2)?;
                map.end()
            }
        }
        assert_eq!(
            to_value(&Twice).unwrap_err().to_string(),
            "cannot convert to a value: duplicate object key \"a\""
        );
        assert!(old_to_value(&Twice).is_err());
    }

    #[test]
    fn nesting_limit_matches() {
        // Debug builds recurse with large frames: give the walk room.
        let deep = std::thread::Builder::new().stack_size(512 << 20);
        deep.spawn(nesting_limit_body).unwrap().join().unwrap();
    }

    fn nesting_limit_body() {
        fn nested(depth: usize) -> Value {
            (0..depth).fold(Value::Null, |v, _| Value::Array(vec![v]))
        }
        for depth in [1022, 1023, 1024, 1025] {
            let v = nested(depth);
            assert_eq!(
                from_value::<Value>(&v).is_ok(),
                old_from_value::<Value>(&v).is_ok(),
                "from_value at depth {depth}"
            );
            assert_eq!(
                to_value(&v).is_ok(),
                old_to_value(&v).is_ok(),
                "to_value at depth {depth}"
            );
        }
        assert!(from_value::<Value>(&nested(1023)).is_ok());
        assert!(from_value::<Value>(&nested(1024)).is_err());
    }

    /// Release-mode timing of decoding and encoding a 10-field struct, new vs old; run by hand with
    /// `cargo test --release -p query-engine value_serde -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn conversion_timing() {
        #[derive(Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Ten {
            id: String,
            author_id: String,
            body: String,
            created_at: i64,
            edited: bool,
            likes: u32,
            score: f64,
            tags: Vec<String>,
            parent: Option<String>,
            role: Role,
        }
        let ten = Ten {
            id: "posts:0001".into(),
            author_id: "users:0042".into(),
            body: "hello world, a short post body".into(),
            created_at: 1_764_000_000_000,
            edited: false,
            likes: 17,
            score: 0.75,
            tags: vec!["rust".into(), "db".into()],
            parent: None,
            role: Role::Host,
        };
        let v = to_value(&ten).unwrap();
        let fields = |v: Value| v.as_object().map_or(0, |o| o.len() as u32);
        const N: u32 = 1_000_000;
        let time = |label: &str, f: &dyn Fn() -> u32| {
            let start = std::time::Instant::now();
            let mut likes = 0u64;
            for _ in 0..N {
                likes += u64::from(f());
            }
            let took = start.elapsed();
            println!(
                "{label}: {N} calls in {took:?} ({:.0} ns each; checksum {likes})",
                took.as_nanos() as f64 / f64::from(N)
            );
        };
        time("direct from_value", &|| {
            from_value::<Ten>(&v).unwrap().likes
        });
        time("MessagePack round trip", &|| {
            old_from_value::<Ten>(&v).unwrap().likes
        });
        time("direct to_value", &|| fields(to_value(&ten).unwrap()));
        time("MessagePack round trip (to_value)", &|| {
            fields(old_to_value(&ten).unwrap())
        });
    }
}
