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

use std::str;

use crate::value::{Object, Value};

/// The nesting `rmp_serde::from_slice` allows: 1023 arrays, objects or extensions.
pub const DOCUMENT_MAX_DEPTH: usize = 1023;

/// Arrays preallocate at most this many elements (a length is input, checked only against the
/// bytes left); longer ones grow as they are read. The serde path used the same cap.
const MAX_PREALLOCATED: usize = 1024;

/// The direct reader stopped: the input is malformed or in a form it leaves to the serde path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unread;

pub(crate) type Read<T> = Result<T, Unread>;

/// A value as `rmp_serde::from_slice::<Value>` decodes it (bytes after the value are not
/// looked at), read directly when it can be and through serde otherwise.
pub fn value_from_slice(bytes: &[u8]) -> Result<Value, rmp_serde::decode::Error> {
    match Reader::new(bytes, DOCUMENT_MAX_DEPTH).value(0) {
        Ok(v) => Ok(v),
        Err(Unread) => rmp_serde::from_slice(bytes),
    }
}

/// A cursor over MessagePack bytes. `max_depth` is how many arrays/objects/extensions may nest.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    max_depth: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], max_depth: usize) -> Self {
        Reader {
            rest: bytes,
            max_depth,
        }
    }

    /// Whether every byte has been read.
    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
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

    /// Opens an array, object or extension inside `depth` others.
    fn enter(&self, depth: usize) -> Read<()> {
        if depth < self.max_depth {
            Ok(())
        } else {
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

    /// A map's header inside `depth` containers: its entry count.
    pub(crate) fn map_header(&mut self, depth: usize) -> Read<usize> {
        let n = match self.byte()? {
            m @ 0x80..=0x8f => usize::from(m & 0x0f),
            0xde => self.len16()?,
            0xdf => self.len32()?,
            _ => return Err(Unread),
        };
        self.enter(depth)?;
        self.fits(n, 2)?;
        Ok(n)
    }

    /// An array's header inside `depth` containers: its length.
    pub(crate) fn array_header(&mut self, depth: usize) -> Read<usize> {
        let n = match self.byte()? {
            m @ 0x90..=0x9f => usize::from(m & 0x0f),
            0xdc => self.len16()?,
            0xdd => self.len32()?,
            _ => return Err(Unread),
        };
        self.enter(depth)?;
        self.fits(n, 1)?;
        Ok(n)
    }

    /// The bytes of a str (any str format), not yet checked as UTF-8.
    fn str_bytes(&mut self, marker: u8) -> Read<&'a [u8]> {
        let n = match marker {
            0xa0..=0xbf => usize::from(marker & 0x1f),
            0xd9 => self.len8()?,
            0xda => self.len16()?,
            0xdb => self.len32()?,
            _ => return Err(Unread),
        };
        self.take(n)
    }

    /// A str holding UTF-8 (a message's field names and text fields).
    pub(crate) fn str(&mut self) -> Read<&'a str> {
        let marker = self.byte()?;
        str::from_utf8(self.str_bytes(marker)?).map_err(|_| Unread)
    }

    /// A non-negative integer in any integer format.
    pub(crate) fn uint(&mut self) -> Read<u64> {
        match self.int()? {
            Value::Int64(i) => u64::try_from(i).map_err(|_| Unread),
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

    /// Any integer format; a u64 above `i64::MAX` does not read.
    fn int(&mut self) -> Read<Value> {
        let marker = self.byte()?;
        self.scalar(marker)
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
            0xcf => Value::Int64(
                i64::try_from(u64::from_be_bytes(self.fixed()?)).map_err(|_| Unread)?,
            ),
            0xd0 => Value::Int64(i64::from(i8::from_be_bytes(self.fixed()?))),
            0xd1 => Value::Int64(i64::from(i16::from_be_bytes(self.fixed()?))),
            0xd2 => Value::Int64(i64::from(i32::from_be_bytes(self.fixed()?))),
            0xd3 => Value::Int64(i64::from_be_bytes(self.fixed()?)),
            _ => return Err(Unread),
        })
    }

    /// Any value, inside `depth` containers.
    pub(crate) fn value(&mut self, depth: usize) -> Read<Value> {
        let marker = self.byte()?;
        match marker {
            0x80..=0x8f => self.object(usize::from(marker & 0x0f), depth),
            0xde => {
                let n = self.len16()?;
                self.object(n, depth)
            }
            0xdf => {
                let n = self.len32()?;
                self.object(n, depth)
            }
            0x90..=0x9f => self.array(usize::from(marker & 0x0f), depth),
            0xdc => {
                let n = self.len16()?;
                self.array(n, depth)
            }
            0xdd => {
                let n = self.len32()?;
                self.array(n, depth)
            }
            0xa0..=0xbf | 0xd9..=0xdb => {
                let bytes = self.str_bytes(marker)?;
                Ok(match str::from_utf8(bytes) {
                    Ok(s) => Value::String(s.to_owned()),
                    Err(_) => Value::Bytes(bytes.to_vec()),
                })
            }
            0xc4..=0xc6 => Ok(Value::Bytes(self.bin_bytes(marker)?.to_vec())),
            0xc7 => {
                let n = self.len8()?;
                self.ext(n, depth)
            }
            0xc8 => {
                let n = self.len16()?;
                self.ext(n, depth)
            }
            0xc9 => {
                let n = self.len32()?;
                self.ext(n, depth)
            }
            0xd4..=0xd8 => self.ext(1 << (marker - 0xd4), depth),
            _ => self.scalar(marker),
        }
    }

    fn bin_bytes(&mut self, marker: u8) -> Read<&'a [u8]> {
        let n = match marker {
            0xc4 => self.len8()?,
            0xc5 => self.len16()?,
            0xc6 => self.len32()?,
            _ => return Err(Unread),
        };
        self.take(n)
    }

    fn array(&mut self, n: usize, depth: usize) -> Read<Value> {
        self.enter(depth)?;
        self.fits(n, 1)?;
        let mut items = Vec::with_capacity(n.min(MAX_PREALLOCATED));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn object(&mut self, n: usize, depth: usize) -> Read<Value> {
        self.enter(depth)?;
        self.fits(n, 2)?;
        let mut fields = Object::new();
        for _ in 0..n {
            let key = self.key()?;
            let value = self.value(depth + 1)?;
            if fields.insert(key, value).is_some() {
                return Err(Unread);
            }
        }
        Ok(Value::from(fields))
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

    /// An extension of `n` data bytes: `[tag, data]`.
    fn ext(&mut self, n: usize, depth: usize) -> Read<Value> {
        self.enter(depth)?;
        let tag = i8::from_be_bytes(self.fixed()?);
        let data = self.take(n)?;
        Ok(Value::Array(vec![
            Value::Int64(i64::from(tag)),
            Value::Bytes(data.to_vec()),
        ]))
    }
}
