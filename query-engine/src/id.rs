//! Document ids: opaque, table-scoped strings. An id is (table number, 64-bit id) plus a
//! checksum, written in an order-preserving base32; parsing checks the checksum, and callers
//! check the table, so a client string is never trusted as an id of the wrong table.

use std::fmt;

/// A table's stable number, assigned when the table is first created and never reused.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TableNumber(pub u32);

/// A document id. Orders by (table, internal), the same order as its string and byte forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocumentId {
    pub table: TableNumber,
    pub internal: u64,
}

/// Length of the raw byte form: 4 bytes of table number and 8 of internal id, big-endian.
pub const ID_BYTES: usize = 12;
const CHECKSUM_BYTES: usize = 2;
/// Length of the string form (base32 of 14 bytes).
pub const ID_STRING_LEN: usize = 23;
/// Highest internal id the engine allocates or an import may bring. The counter is
/// engine-wide and only grows; capping it at a quarter of its range means it can never wrap
/// (2^62 ids are 146,000 years of a million inserts a second) and a wrapped counter can never
/// hand out an id a live document has. An id string can name a higher one (its checksum is
/// no secret), so whatever takes ids from outside checks against this.
pub const MAX_INTERNAL_ID: u64 = 1 << 62;
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("not a document id: {0:?}")]
    Malformed(String),
}

impl DocumentId {
    pub fn new(table: TableNumber, internal: u64) -> Self {
        DocumentId { table, internal }
    }

    pub fn to_bytes(&self) -> [u8; ID_BYTES] {
        let mut out = [0u8; ID_BYTES];
        out[..4].copy_from_slice(&self.table.0.to_be_bytes());
        out[4..].copy_from_slice(&self.internal.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ID_BYTES {
            return None;
        }
        let table = u32::from_be_bytes(bytes[..4].try_into().ok()?);
        let internal = u64::from_be_bytes(bytes[4..].try_into().ok()?);
        Some(DocumentId::new(TableNumber(table), internal))
    }

    /// Parses the string form, checking length, alphabet and checksum. The table is not
    /// checked here: see `Transaction::parse_id` / the `id(table)` validator.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::Malformed(s.chars().take(64).collect());
        if s.len() != ID_STRING_LEN {
            return Err(bad());
        }
        let mut acc: u128 = 0;
        for c in s.bytes() {
            let d = ALPHABET.iter().position(|&a| a == c).ok_or_else(bad)? as u128;
            acc = (acc << 5) | d;
        }
        // 23 chars carry 115 bits; the 112 payload bits are left-aligned, 3 pad bits are 0.
        if acc & 0b111 != 0 {
            return Err(bad());
        }
        let payload = acc >> 3;
        let bytes = payload.to_be_bytes(); // 16 bytes, first 2 are zero
        if bytes[0] != 0 || bytes[1] != 0 {
            return Err(bad());
        }
        let raw = &bytes[2..2 + ID_BYTES];
        let sum = &bytes[2 + ID_BYTES..];
        if checksum(raw) != [sum[0], sum[1]] {
            return Err(bad());
        }
        DocumentId::from_bytes(raw).ok_or_else(bad)
    }
}

/// Fletcher-16 over the raw id: catches typos and truncation, not forgery (access is
/// decided by data, never by knowing an id).
fn checksum(raw: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let (mut a, mut b) = (0x5au16, 0xa5u16);
    for &x in raw {
        a = (a + x as u16) % 255;
        b = (b + a) % 255;
    }
    [a as u8, b as u8]
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.to_bytes();
        let mut bytes = [0u8; 16];
        bytes[2..2 + ID_BYTES].copy_from_slice(&raw);
        bytes[2 + ID_BYTES..].copy_from_slice(&checksum(&raw));
        let acc = u128::from_be_bytes(bytes) << 3;
        let mut out = [0u8; ID_STRING_LEN];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (ID_STRING_LEN - 1 - i);
            *slot = ALPHABET[((acc >> shift) & 31) as usize];
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn string_round_trip_and_order(t1 in any::<u32>(), i1 in any::<u64>(), t2 in any::<u32>(), i2 in any::<u64>()) {
            let a = DocumentId::new(TableNumber(t1), i1);
            let b = DocumentId::new(TableNumber(t2), i2);
            let (sa, sb) = (a.to_string(), b.to_string());
            prop_assert_eq!(DocumentId::parse(&sa).unwrap(), a);
            prop_assert_eq!(a.cmp(&b), sa.cmp(&sb));
        }
    }

    #[test]
    fn rejects_garbage_and_typos() {
        let id = DocumentId::new(TableNumber(7), 12345).to_string();
        assert!(DocumentId::parse("").is_err());
        assert!(DocumentId::parse("hello").is_err());
        let mut typo = id.clone().into_bytes();
        typo[10] = if typo[10] == b'0' { b'1' } else { b'0' };
        assert!(DocumentId::parse(std::str::from_utf8(&typo).unwrap()).is_err());
        assert!(DocumentId::parse(&id.to_uppercase()).is_err());
    }
}
