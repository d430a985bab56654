//! MessagePack read straight into `Value`, without serde's generic machinery: stored documents
//! (`value_from_slice`) and the values inside the hot protocol messages (`protocol::direct`).
//! It builds exactly the `Value` that `rmp_serde` with `Value`'s `Deserialize` builds; where it
//! does not decode, it says only that (`Unread`) and the caller asks the serde path, which
//! decodes the unusual form or words the error exactly as before.
//!
//! The rules it shares with that path: every integer format reads as int64 (a u64 above
//! `i64::MAX` is an error); float32 widens to float64, bits kept (NaNs are not canonicalised
//! here); str that is not UTF-8 reads as bytes, except as an object key, which must be str or
//! bin holding UTF-8; a duplicate key is an error; an extension reads as `[tag, bytes]`; arrays,
//! objects and extensions count as one nesting level each.
//!
//! A reader may also be given a budget for what the values it reads take in memory once
//! decoded (`Reader::bounded`, for the messages a client sends): every value is charged an
//! estimate of it as its head is read, before anything of it is built, and the reader stops
//! (`Reader::exceeded`) once the estimate passes the budget. `Reader::skip` walks a value the
//! same way without building it, so that a message can be checked before serde decodes it.

use std::str;

use crate::value::{Object, Value};

/// The nesting `rmp_serde::from_slice` allows: 1023 arrays, objects or extensions.
const DOCUMENT_MAX_DEPTH: usize = 1023;

/// Lists preallocate at most this many elements; longer ones grow as they are read. A length
/// is input, checked against the bytes left, but nested lists can each claim those same
/// bytes: the cap keeps what a small hostile input makes us reserve small.
pub(crate) const MAX_PREALLOCATED: usize = 64;

/// Estimated memory of a decoded value, charged by a bounded reader. Every value has a slot
/// (`Value`: in its array's buffer, or its object's B-tree node with its key), charged by the
/// container when its length is read; a string, bytes or an extension adds its heap bytes; an
/// object its shared allocation and B-tree nodes. Allocator rounding and an array's spare
/// capacity as it grows are left out.
mod cost {
    use std::mem::size_of;

    use crate::value::{Object, Value};

    /// A value's slot.
    pub(super) const SLOT: usize = size_of::<Value>();
    /// What an object allocates before any entry: the `Arc`'s counts and the map's root.
    const OBJECT: usize = 2 * size_of::<usize>() + size_of::<Object>();
    /// One of std's B-tree nodes: up to 11 keys and values, and the parent link and lengths,
    /// allocated whole once an object has an entry.
    const NODE: usize = 16 + 11 * (size_of::<String>() + size_of::<Value>());
    /// An object entry: its key's and value's slots in a node, and its share of the nodes'
    /// headers and of the internal nodes' child links.
    const ENTRY: usize = size_of::<String>() + size_of::<Value>() + 8;

    /// An object of `n` entries, without its keys' text and its values' own heaps.
    pub(super) fn object(n: usize) -> usize {
        match n {
            0 => OBJECT,
            n => (OBJECT + NODE).saturating_add(n.saturating_mul(ENTRY)),
        }
    }

    /// The slots of an array of `n` elements.
    pub(super) fn array(n: usize) -> usize {
        n.saturating_mul(SLOT)
    }

    /// An extension of `n` data bytes, read as the array `[tag, bytes]`.
    pub(super) fn ext(n: usize) -> usize {
        (2 * SLOT).saturating_add(n)
    }
}

/// The direct reader stopped: the input is malformed, in a form it leaves to the serde path,
/// or over a limit (`Reader::exceeded`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unread;

pub(crate) type Read<T> = Result<T, Unread>;

/// A limit a reader stopped at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Limit {
    /// An array, object or extension nested deeper than the reader's `max_depth`.
    Depth,
    /// The values read would take more than the reader's budget decoded.
    DecodedBytes,
}

/// A value as `rmp_serde::from_slice::<Value>` decodes it (bytes after the value are not
/// looked at), read directly when it can be and through serde otherwise.
pub fn value_from_slice(bytes: &[u8]) -> Result<Value, rmp_serde::decode::Error> {
    match Reader::new(bytes, DOCUMENT_MAX_DEPTH).value(0) {
        Ok(v) => Ok(v),
        Err(Unread) => rmp_serde::from_slice(bytes),
    }
}

/// The head of one item: its marker and lengths read and checked against the bytes left and
/// the nesting, and its cost charged; what follows it (elements, entries) not yet read.
enum Head<'a> {
    /// nil, a boolean or a number, by its marker; its payload not yet read.
    Scalar(u8),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(usize),
    Map(usize),
    Ext(i8, &'a [u8]),
}

/// A cursor over MessagePack bytes. `max_depth` is how many arrays/objects/extensions may nest.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    max_depth: usize,
    /// What the values still to be read may cost decoded (`cost`).
    budget: usize,
    exceeded: Option<Limit>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], max_depth: usize) -> Self {
        Reader::bounded(bytes, max_depth, usize::MAX)
    }

    /// A reader that stops once the values it has read would take more than
    /// `max_decoded_bytes` decoded, by the estimate of `cost`.
    pub(crate) fn bounded(bytes: &'a [u8], max_depth: usize, max_decoded_bytes: usize) -> Self {
        Reader {
            rest: bytes,
            max_depth,
            budget: max_decoded_bytes,
            exceeded: None,
        }
    }

    /// The limit the reader stopped at, if that is why it stopped.
    pub(crate) fn exceeded(&self) -> Option<Limit> {
        self.exceeded
    }

    /// Whether every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Bytes not read yet.
    #[cfg(test)]
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        if n > self.rest.len() {
            return Err(Unread);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn fixed<const N: usize>(&mut self) -> Read<[u8; N]> {
        let head = self.take(N)?;
        head.try_into().map_err(|_| Unread)
    }

    fn byte(&mut self) -> Read<u8> {
        Ok(self.fixed::<1>()?[0])
    }

    fn len8(&mut self) -> Read<usize> {
        Ok(usize::from(self.byte()?))
    }

    fn len16(&mut self) -> Read<usize> {
        Ok(usize::from(u16::from_be_bytes(self.fixed()?)))
    }

    fn len32(&mut self) -> Read<usize> {
        usize::try_from(u32::from_be_bytes(self.fixed()?)).map_err(|_| Unread)
    }

    /// Takes `bytes` of decoded cost from the budget.
    fn charge(&mut self, bytes: usize) -> Read<()> {
        match self.budget.checked_sub(bytes) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => {
                self.exceeded = Some(Limit::DecodedBytes);
                Err(Unread)
            }
        }
    }

    /// Opens an array, object or extension inside `depth` others.
    fn enter(&mut self, depth: usize) -> Read<()> {
        if depth < self.max_depth {
            Ok(())
        } else {
            self.exceeded = Some(Limit::Depth);
            Err(Unread)
        }
    }

    /// Checks that `count` parts of at least `min_bytes` each can still follow, so that no
    /// length is trusted beyond the input that is there.
    fn fits(&self, count: usize, min_bytes: usize) -> Read<()> {
        if count <= self.rest.len() / min_bytes {
            Ok(())
        } else {
            Err(Unread)
        }
    }

    /// The entry count of a map whose `marker` was read.
    fn map_len(&mut self, marker: u8) -> Read<usize> {
        match marker {
            0x80..=0x8f => Ok(usize::from(marker & 0x0f)),
            0xde => self.len16(),
            0xdf => self.len32(),
            _ => Err(Unread),
        }
    }

    /// The length of an array whose `marker` was read.
    fn array_len(&mut self, marker: u8) -> Read<usize> {
        match marker {
            0x90..=0x9f => Ok(usize::from(marker & 0x0f)),
            0xdc => self.len16(),
            0xdd => self.len32(),
            _ => Err(Unread),
        }
    }

    /// The data length of an extension whose `marker` was read.
    fn ext_len(&mut self, marker: u8) -> Read<usize> {
        match marker {
            0xc7 => self.len8(),
            0xc8 => self.len16(),
            0xc9 => self.len32(),
            0xd4..=0xd8 => Ok(1 << (marker - 0xd4)),
            _ => Err(Unread),
        }
    }

    /// Opens a map of `n` entries inside `depth` containers: at least two bytes an entry must
    /// follow, and its cost is charged.
    fn open_map(&mut self, n: usize, depth: usize) -> Read<usize> {
        self.enter(depth)?;
        self.fits(n, 2)?;
        self.charge(cost::object(n))?;
        Ok(n)
    }

    /// Opens an array of `n` elements inside `depth` containers, as `open_map`.
    fn open_array(&mut self, n: usize, depth: usize) -> Read<usize> {
        self.enter(depth)?;
        self.fits(n, 1)?;
        self.charge(cost::array(n))?;
        Ok(n)
    }

    /// A map's header inside `depth` containers: its entry count.
    pub(crate) fn map_header(&mut self, depth: usize) -> Read<usize> {
        let marker = self.byte()?;
        let n = self.map_len(marker)?;
        self.open_map(n, depth)
    }

    /// An array's header inside `depth` containers: its length.
    pub(crate) fn array_header(&mut self, depth: usize) -> Read<usize> {
        let marker = self.byte()?;
        let n = self.array_len(marker)?;
        self.open_array(n, depth)
    }

    /// The bytes of a str (any str format), not yet checked as UTF-8; their cost is charged.
    fn str_bytes(&mut self, marker: u8) -> Read<&'a [u8]> {
        let n = match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => self.len8()?,
            0xda => self.len16()?,
            0xdb => self.len32()?,
            _ => return Err(Unread),
        };
        let bytes = self.take(n)?;
        self.charge(n)?;
        Ok(bytes)
    }

    /// The bytes of a bin (any bin format); their cost is charged.
    fn bin_bytes(&mut self, marker: u8) -> Read<&'a [u8]> {
        let n = match marker {
            0xc4 => self.len8()?,
            0xc5 => self.len16()?,
            0xc6 => self.len32()?,
            _ => return Err(Unread),
        };
        let bytes = self.take(n)?;
        self.charge(n)?;
        Ok(bytes)
    }

    /// A str holding UTF-8 (a message's field names and text fields).
    pub(crate) fn str(&mut self) -> Read<&'a str> {
        let marker = self.byte()?;
        str::from_utf8(self.str_bytes(marker)?).map_err(|_| Unread)
    }

    /// A non-negative integer in any integer format (u64 in full: a timestamp or request id,
    /// not a `Value`).
    pub(crate) fn uint(&mut self) -> Read<u64> {
        match self.byte()? {
            0xcf => Ok(u64::from_be_bytes(self.fixed()?)),
            marker => match self.scalar(marker)? {
                Value::Int64(i) => u64::try_from(i).map_err(|_| Unread),
                _ => Err(Unread),
            },
        }
    }

    /// A boolean.
    pub(crate) fn bool(&mut self) -> Read<bool> {
        match self.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => Err(Unread),
        }
    }

    /// Reads a nil if one is next; whether it did.
    pub(crate) fn nil(&mut self) -> bool {
        match self.rest.split_first() {
            Some((0xc0, tail)) => {
                self.rest = tail;
                true
            }
            _ => false,
        }
    }

    /// The value of a scalar `marker`: nil, booleans, integers and floats.
    fn scalar(&mut self, marker: u8) -> Read<Value> {
        Ok(match marker {
            0x00..=0x7f => Value::Int64(i64::from(marker)),
            0xe0..=0xff => Value::Int64(i64::from(marker as i8)),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xca => Value::Float64(f64::from(f32::from_be_bytes(self.fixed()?))),
            0xcb => Value::Float64(f64::from_be_bytes(self.fixed()?)),
            0xcc => Value::Int64(i64::from(self.byte()?)),
            0xcd => Value::Int64(i64::from(u16::from_be_bytes(self.fixed()?))),
            0xce => Value::Int64(i64::from(u32::from_be_bytes(self.fixed()?))),
            0xcf => {
                Value::Int64(i64::try_from(u64::from_be_bytes(self.fixed()?)).map_err(|_| Unread)?)
            }
            0xd0 => Value::Int64(i64::from(i8::from_be_bytes(self.fixed()?))),
            0xd1 => Value::Int64(i64::from(i16::from_be_bytes(self.fixed()?))),
            0xd2 => Value::Int64(i64::from(i32::from_be_bytes(self.fixed()?))),
            0xd3 => Value::Int64(i64::from_be_bytes(self.fixed()?)),
            _ => return Err(Unread),
        })
    }

    /// The payload length of a scalar `marker`, whatever its value.
    fn scalar_len(marker: u8) -> Read<usize> {
        match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Ok(0),
            0xcc | 0xd0 => Ok(1),
            0xcd | 0xd1 => Ok(2),
            0xca | 0xce | 0xd2 => Ok(4),
            0xcb | 0xcf | 0xd3 => Ok(8),
            // The reserved marker.
            _ => Err(Unread),
        }
    }

    /// The head of the next item, inside `depth` containers.
    fn head(&mut self, depth: usize) -> Read<Head<'a>> {
        let marker = self.byte()?;
        Ok(match marker {
            0x80..=0x8f | 0xde | 0xdf => {
                let n = self.map_len(marker)?;
                Head::Map(self.open_map(n, depth)?)
            }
            0x90..=0x9f | 0xdc | 0xdd => {
                let n = self.array_len(marker)?;
                Head::Array(self.open_array(n, depth)?)
            }
            0xa0..=0xbf | 0xd9..=0xdb => Head::Str(self.str_bytes(marker)?),
            0xc4..=0xc6 => Head::Bin(self.bin_bytes(marker)?),
            0xc7..=0xc9 | 0xd4..=0xd8 => {
                let n = self.ext_len(marker)?;
                self.enter(depth)?;
                let tag = i8::from_be_bytes(self.fixed()?);
                let data = self.take(n)?;
                self.charge(cost::ext(n))?;
                Head::Ext(tag, data)
            }
            _ => Head::Scalar(marker),
        })
    }

    /// Any value, inside `depth` containers.
    pub(crate) fn value(&mut self, depth: usize) -> Read<Value> {
        Ok(match self.head(depth)? {
            Head::Scalar(marker) => self.scalar(marker)?,
            Head::Str(bytes) => match str::from_utf8(bytes) {
                Ok(s) => Value::String(s.to_owned()),
                Err(_) => Value::Bytes(bytes.to_vec()),
            },
            Head::Bin(bytes) => Value::Bytes(bytes.to_vec()),
            Head::Array(n) => self.array(n, depth)?,
            Head::Map(n) => self.object(n, depth)?,
            Head::Ext(tag, data) => Value::Array(vec![
                Value::Int64(i64::from(tag)),
                Value::Bytes(data.to_vec()),
            ]),
        })
    }

    /// Walks over one value inside `depth` containers without building it, checking what
    /// `value` checks of its structure (every length against the bytes there, the nesting,
    /// the markers) and charging the same cost; not what only the built value could be refused
    /// for (UTF-8, key types and duplicates, integer ranges), which the serde path decides.
    /// Map keys may be any value.
    pub(crate) fn skip(&mut self, depth: usize) -> Read<()> {
        match self.head(depth)? {
            Head::Scalar(marker) => {
                self.take(Self::scalar_len(marker)?)?;
            }
            Head::Array(n) => {
                for _ in 0..n {
                    self.skip(depth + 1)?;
                }
            }
            Head::Map(n) => {
                for _ in 0..n {
                    self.skip(depth + 1)?;
                    self.skip(depth + 1)?;
                }
            }
            Head::Str(_) | Head::Bin(_) | Head::Ext(..) => {}
        }
        Ok(())
    }

    fn array(&mut self, n: usize, depth: usize) -> Read<Value> {
        let mut items = Vec::with_capacity(n.min(MAX_PREALLOCATED));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn object(&mut self, n: usize, depth: usize) -> Read<Value> {
        // Encoders write keys sorted (ours does): collected and checked in order, the map is
        // built in one pass instead of searched once per key.
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(n.min(MAX_PREALLOCATED));
        let mut sorted = true;
        for _ in 0..n {
            let key = self.key()?;
            let value = self.value(depth + 1)?;
            sorted = sorted && entries.last().is_none_or(|(last, _)| *last < key);
            entries.push((key, value));
        }
        if !sorted {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            if entries.windows(2).any(|pair| pair[0].0 == pair[1].0) {
                return Err(Unread);
            }
        }
        Ok(Value::from(entries.into_iter().collect::<Object>()))
    }

    /// An object key: str or bin, holding UTF-8.
    fn key(&mut self) -> Read<String> {
        let marker = self.byte()?;
        let bytes = match marker {
            0xc4..=0xc6 => self.bin_bytes(marker)?,
            _ => self.str_bytes(marker)?,
        };
        str::from_utf8(bytes).map(str::to_owned).map_err(|_| Unread)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The acceptance test: the direct reader and `rmp_serde::from_slice::<Value>` agree on
    //! every input — the same value bit for bit, or both refusing it.

    use proptest::prelude::*;

    use super::*;
    use crate::encoding::tests::arb_value;

    /// Bit-for-bit equality (NaN payloads and the sign of zero included): equal encodings.
    fn same_bits(a: &Value, b: &Value) -> bool {
        rmp_serde::to_vec_named(a).ok() == rmp_serde::to_vec_named(b).ok()
    }

    /// The direct reader alone, with no fallback.
    fn direct(bytes: &[u8]) -> Read<Value> {
        Reader::new(bytes, DOCUMENT_MAX_DEPTH).value(0)
    }

    /// Both readers accept `bytes` with the same value, or both refuse it; and
    /// `value_from_slice` gives what `rmp_serde` gives, errors worded alike.
    fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
        let serde = rmp_serde::from_slice::<Value>(bytes);
        match (direct(bytes), &serde) {
            (Ok(a), Ok(b)) => prop_assert!(same_bits(&a, b), "{:?} != {:?}", a, b),
            (Err(Unread), Err(_)) => {}
            (a, b) => prop_assert!(false, "{:02x?}: direct {:?}, serde {:?}", bytes, a, b),
        }
        let combined = value_from_slice(bytes).map_err(|e| e.to_string());
        match (combined, serde.map_err(|e| e.to_string())) {
            (Ok(a), Ok(b)) => prop_assert!(same_bits(&a, &b)),
            (a, b) => prop_assert_eq!(a.err(), b.err()),
        }
        Ok(())
    }

    /// A length header: the fix form when `form` is 0 and it fits, else the 16- or 32-bit one.
    fn header(out: &mut Vec<u8>, form: u8, n: usize, fix: (u8, usize), m16: u8, m32: u8) {
        match form {
            0 if n <= fix.1 => out.push(fix.0 | n as u8),
            0 | 1 => {
                out.push(m16);
                out.extend((n as u16).to_be_bytes());
            }
            _ => {
                out.push(m32);
                out.extend((n as u32).to_be_bytes());
            }
        }
    }

    fn str_item(form: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if form == 3 {
            out.extend([0xd9, bytes.len() as u8]);
        } else {
            header(&mut out, form, bytes.len(), (0xa0, 31), 0xda, 0xdb);
        }
        out.extend(bytes);
        out
    }

    fn bin_item(form: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = match form {
            0 => vec![0xc4, bytes.len() as u8],
            1 => vec![0xc5],
            _ => vec![0xc6],
        };
        match form {
            0 => {}
            1 => out.extend((bytes.len() as u16).to_be_bytes()),
            _ => out.extend((bytes.len() as u32).to_be_bytes()),
        }
        out.extend(bytes);
        out
    }

    fn arb_text() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            "[a-c]{0,2}".prop_map(String::into_bytes),
            "\\PC{0,4}".prop_map(String::into_bytes),
            // Often not UTF-8.
            prop::collection::vec(any::<u8>(), 0..6),
        ]
    }

    /// One MessagePack item in any of its formats, including those our encoder never writes
    /// (wide forms of small integers, float32, ext, str8 and bin keys, map16 of two entries)
    /// and invalid ones (the reserved marker, non-UTF-8 str, non-string and duplicate keys,
    /// u64 above int64).
    pub(crate) fn arb_msgpack() -> impl Strategy<Value = Vec<u8>> {
        let int = (
            prop::sample::select(vec![0xccu8, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3]),
            prop_oneof![
                any::<u64>(),
                Just(0),
                Just(u64::MAX),
                Just(i64::MAX as u64),
                Just(1 << 63)
            ],
        )
            .prop_map(|(marker, v)| {
                let width = 1usize << ((marker - 0xcc) % 4);
                let mut out = vec![marker];
                out.extend(&v.to_be_bytes()[8 - width..]);
                out
            });
        let float = prop_oneof![
            prop_oneof![
                any::<u32>(),
                Just(0x7fc0_0000),
                Just(0x7f80_0001),
                Just(0xffc0_0001),
                Just(0x8000_0000)
            ]
            .prop_map(|bits| [vec![0xca], bits.to_be_bytes().to_vec()].concat()),
            prop_oneof![
                any::<u64>(),
                Just(0x7ff0_0000_0000_0001),
                Just(0xfff8_0000_0000_0000)
            ]
            .prop_map(|bits| [vec![0xcb], bits.to_be_bytes().to_vec()].concat()),
        ];
        let ext = (
            0u8..8,
            any::<i8>(),
            prop::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(|(form, tag, mut data)| {
                let mut out = Vec::new();
                if form < 5 {
                    data.resize(1 << form, 0xee);
                    out.push(0xd4 + form);
                } else {
                    match form {
                        5 => out.extend([0xc7, data.len() as u8]),
                        6 => out.extend([0xc8, 0, data.len() as u8]),
                        _ => out.extend([0xc9, 0, 0, 0, data.len() as u8]),
                    }
                }
                out.push(tag as u8);
                out.extend(data);
                out
            });
        let leaf = prop_oneof![
            prop::sample::select(vec![0xc0u8, 0xc2, 0xc3, 0xc1, 0x00, 0x05, 0x7f, 0xe0, 0xff])
                .prop_map(|b| vec![b]),
            int,
            float,
            (0u8..4, arb_text()).prop_map(|(form, text)| str_item(form, &text)),
            (0u8..3, arb_text()).prop_map(|(form, bytes)| bin_item(form, &bytes)),
            ext,
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            let key = prop_oneof![
                // A small alphabet, so that keys repeat.
                4 => "[a-c]".prop_map(|k| str_item(0, k.as_bytes())),
                1 => (0u8..4, "[a-c]").prop_map(|(form, k)| str_item(form, k.as_bytes())),
                1 => (0u8..3, arb_text()).prop_map(|(form, k)| bin_item(form, &k)),
                1 => inner.clone(),
            ];
            prop_oneof![
                (0u8..3, prop::collection::vec(inner.clone(), 0..4)).prop_map(|(form, items)| {
                    let mut out = Vec::new();
                    header(&mut out, form, items.len(), (0x90, 15), 0xdc, 0xdd);
                    out.extend(items.concat());
                    out
                }),
                (0u8..3, prop::collection::vec((key, inner), 0..4)).prop_map(|(form, entries)| {
                    let mut out = Vec::new();
                    header(&mut out, form, entries.len(), (0x80, 15), 0xde, 0xdf);
                    for (k, v) in entries {
                        out.extend(k);
                        out.extend(v);
                    }
                    out
                }),
            ]
        })
    }

    /// `bytes` with a few bytes overwritten, then maybe cut short.
    pub(crate) fn damaged(
        mut bytes: Vec<u8>,
        flips: &[(usize, u8)],
        cut: Option<usize>,
    ) -> Vec<u8> {
        if !bytes.is_empty() {
            for (at, byte) in flips {
                let at = at % bytes.len();
                bytes[at] = *byte;
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % (bytes.len() + 1));
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn encoded_values_read_directly_and_exactly(v in arb_value()) {
            let bytes = rmp_serde::to_vec_named(&v).unwrap();
            let read = direct(&bytes);
            prop_assert!(matches!(&read, Ok(back) if same_bits(back, &v)), "{:?} != {:?}", read, v);
            check(&bytes)?;
        }

        #[test]
        fn every_format_agrees(bytes in arb_msgpack(), tail in prop::collection::vec(any::<u8>(), 0..3)) {
            check(&bytes)?;
            // Bytes after the value are not looked at, by either.
            check(&[bytes, tail].concat())?;
        }

        #[test]
        fn damaged_input_agrees(
            bytes in prop_oneof![arb_msgpack(), arb_value().prop_map(|v| rmp_serde::to_vec_named(&v).unwrap())],
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<Option<usize>>(),
        ) {
            check(&damaged(bytes, &flips, cut))?;
        }

        #[test]
        fn random_bytes_agree(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            check(&bytes)?;
        }
    }

    #[test]
    fn formats_read_as_serde_reads_them() {
        let read = |bytes: &[u8]| direct(bytes).ok();
        // Wide and signed forms of small integers, float32 widened with its bits, u64 edges.
        assert_eq!(read(&[0xd3, 0, 0, 0, 0, 0, 0, 0, 7]), Some(Value::Int64(7)));
        assert_eq!(read(&[0xd0, 0x80]), Some(Value::Int64(-128)));
        assert!(matches!(read(&[0xca, 0x3f, 0xc0, 0, 0]), Some(Value::Float64(f)) if f == 1.5));
        assert_eq!(
            read(&[0xcf, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Some(Value::Int64(i64::MAX))
        );
        assert_eq!(read(&[0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0]), None);
        // Non-UTF-8 str is bytes as a value, refused as a key; bin holding UTF-8 is a key.
        assert_eq!(read(&[0xa1, 0xff]), Some(Value::Bytes(vec![0xff])));
        assert_eq!(read(&[0x81, 0xa1, 0xff, 0xc0]), None);
        assert_eq!(
            read(&[0x81, 0xc4, 1, b'k', 0xc0]),
            Some(crate::obj! { "k" => Value::Null })
        );
        assert_eq!(read(&[0x81, 0x01, 0xc0]), None);
        // Duplicate keys, the reserved marker, an extension.
        assert_eq!(read(&[0x82, 0xa1, b'a', 1, 0xa1, b'a', 2]), None);
        assert_eq!(read(&[0xc1]), None);
        assert_eq!(
            read(&[0xd4, 0xfe, 9]),
            Some(Value::Array(vec![Value::Int64(-2), Value::Bytes(vec![9])]))
        );
        for bytes in [
            &[0xd3, 0, 0, 0, 0, 0, 0, 0, 7][..],
            &[0xca, 0x7f, 0x80, 0, 1],
            &[0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0],
            &[0x81, 0xa1, 0xff, 0xc0],
            &[0x82, 0xa1, b'a', 1, 0xa1, b'a', 2],
            &[0xd4, 0xfe, 9],
        ] {
            check(bytes).unwrap();
        }
    }

    #[test]
    fn huge_length_claims_fail_without_allocating() {
        // array32 / map32 / str32 / bin32 / ext32 claiming 4 G parts, with nothing after them.
        for marker in [0xdd, 0xdf, 0xdb, 0xc6, 0xc9] {
            assert_eq!(direct(&[marker, 0xff, 0xff, 0xff, 0xff]), Err(Unread));
            check(&[marker, 0xff, 0xff, 0xff, 0xff]).unwrap();
        }
        // A claim just past the bytes there: 3 elements, 2 bytes.
        assert_eq!(direct(&[0x93, 0xc0, 0xc0]), Err(Unread));
    }

    #[test]
    fn a_bounded_reader_stops_once_its_estimate_passes_the_budget() {
        // A million empty objects, a byte each.
        let n = 1_000_000;
        let mut bytes = vec![0xdd];
        bytes.extend(u32::try_from(n).unwrap().to_be_bytes());
        bytes.extend(vec![0x80; n]);
        // Room for the array's slots and a fifth of the objects.
        let budget = cost::array(n) + n / 5 * cost::object(0);
        let read = |walk: fn(&mut Reader<'_>) -> Read<()>| {
            let mut r = Reader::bounded(&bytes, DOCUMENT_MAX_DEPTH, budget);
            assert_eq!(walk(&mut r), Err(Unread));
            assert_eq!(r.exceeded(), Some(Limit::DecodedBytes));
            bytes.len() - r.remaining()
        };
        // Building or skipping, the reader stops at the first object past the budget.
        let header = 5;
        assert_eq!(read(|r| r.value(0).map(drop)), header + n / 5 + 1);
        assert_eq!(read(|r| r.skip(0)), header + n / 5 + 1);
        // With room for all of it, it reads all of it; an unbounded reader never stops.
        let all = cost::array(n) + n * cost::object(0);
        let mut r = Reader::bounded(&bytes, DOCUMENT_MAX_DEPTH, all);
        assert!(r.value(0).is_ok() && r.is_empty());
        assert!(direct(&bytes).is_ok());
        // A claim past the bytes there is malformed, not over the budget.
        let mut r = Reader::bounded(&[0xdd, 0xff, 0xff, 0xff, 0xff], DOCUMENT_MAX_DEPTH, 0);
        assert_eq!(r.skip(0), Err(Unread));
        assert_eq!(r.exceeded(), None);
    }

    #[test]
    fn nesting_limit_matches() {
        // Debug builds of the serde path recurse with large frames: give the walk room.
        let deep = std::thread::Builder::new().stack_size(256 << 20);
        deep.spawn(nesting_limit_body).unwrap().join().unwrap();
    }

    fn nesting_limit_body() {
        let nested = |levels: usize, innermost: &[u8]| {
            let mut bytes = vec![0x91; levels];
            bytes.extend(innermost);
            bytes
        };
        for levels in [1021, 1022, 1023, 1024] {
            // An extension counts as a level too.
            for innermost in [&[0xc0][..], &[0x90], &[0x80], &[0xd4, 1, 2]] {
                check(&nested(levels, innermost)).unwrap();
            }
        }
        assert!(direct(&nested(1023, &[0xc0])).is_ok());
        assert!(direct(&nested(1022, &[0xd4, 1, 2])).is_ok());
        assert!(direct(&nested(1023, &[0xd4, 1, 2])).is_err());
        // Hostile nesting stops at the limit, far from the end of the stack.
        assert!(direct(&vec![0x91; 1_000_000]).is_err());
    }
}
