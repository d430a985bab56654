//! The write-ahead log. A durable batch is acknowledged once its record is appended here and
//! fsynced — a small sequential write — while redb applies the batch without an fsync of its
//! own; a periodic checkpoint (a durable redb commit) makes redb's state durable and empties
//! the log. On open, records newer than redb's durable state are replayed, so nothing
//! acknowledged is lost. A torn record at the tail (a crash mid-append) was never acknowledged
//! and is ignored.
//!
//! Record: `u32 length | u32 crc32(body) | body`, body: `u64 ts`, then meta entries, documents
//! (12-byte id, present flag, encoded document) and index entries (key, present flag), each
//! list prefixed by its u32 count and each byte string by its u32 length.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Largest record accepted on replay (a batch is bounded well below this).
const MAX_RECORD_BYTES: usize = 1 << 30;

/// One batch as logged.
#[derive(Debug, Default, PartialEq)]
pub struct Record {
    pub ts: u64,
    pub meta: Vec<(String, Vec<u8>)>,
    pub docs: Vec<([u8; 12], Option<Vec<u8>>)>,
    pub index: Vec<(Vec<u8>, bool)>,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64 + self.docs.len() * 128);
        body.extend_from_slice(&self.ts.to_le_bytes());
        body.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
        for (k, v) in &self.meta {
            put_bytes(&mut body, k.as_bytes());
            put_bytes(&mut body, v);
        }
        body.extend_from_slice(&(self.docs.len() as u32).to_le_bytes());
        for (id, doc) in &self.docs {
            body.extend_from_slice(id);
            match doc {
                Some(d) => {
                    body.push(1);
                    put_bytes(&mut body, d);
                }
                None => body.push(0),
            }
        }
        body.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        for (k, present) in &self.index {
            put_bytes(&mut body, k);
            body.push(u8::from(*present));
        }
        let mut out = Vec::with_capacity(body.len() + 8);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn decode(body: &[u8]) -> Option<Record> {
        let mut r = Reader(body);
        let ts = r.u64()?;
        let mut rec = Record {
            ts,
            ..Default::default()
        };
        for _ in 0..r.u32()? {
            let k = String::from_utf8(r.bytes()?.to_vec()).ok()?;
            rec.meta.push((k, r.bytes()?.to_vec()));
        }
        for _ in 0..r.u32()? {
            let id: [u8; 12] = r.take(12)?.try_into().ok()?;
            let doc = match r.u8()? {
                1 => Some(r.bytes()?.to_vec()),
                0 => None,
                _ => return None,
            };
            rec.docs.push((id, doc));
        }
        for _ in 0..r.u32()? {
            let k = r.bytes()?.to_vec();
            let present = match r.u8()? {
                1 => true,
                0 => false,
                _ => return None,
            };
            rec.index.push((k, present));
        }
        r.0.is_empty().then_some(rec)
    }
}

pub struct Wal {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Wal {
    /// Opens (creating) the log at `path`, returning it with every intact record in order.
    pub fn open(path: &Path) -> std::io::Result<(Wal, Vec<Record>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
        let mut records = Vec::new();
        let mut at = 0usize;
        while bytes.len() - at >= 8 {
            let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                as usize;
            let crc =
                u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
            if len > MAX_RECORD_BYTES || bytes.len() - at - 8 < len {
                break;
            }
            let body = &bytes[at + 8..at + 8 + len];
            if crc32fast::hash(body) != crc {
                break;
            }
            match Record::decode(body) {
                Some(r) => records.push(r),
                None => break,
            }
            at += 8 + len;
        }
        if at as u64 != bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - at,
                "ignoring a torn record at the end of the write-ahead log"
            );
        }
        let wal = Wal {
            file,
            path: path.to_path_buf(),
            len: bytes.len() as u64,
        };
        Ok((wal, records))
    }

    /// Appends a record and waits until it is on disk.
    pub fn append_durable(&mut self, record: &[u8]) -> std::io::Result<()> {
        self.file.write_all(record)?;
        self.file.sync_data()?;
        self.len += record.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the log (after a checkpoint made its records redundant).
    pub fn truncate(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.len = 0;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts: u64) -> Record {
        Record {
            ts,
            meta: vec![("last_ts".into(), ts.to_be_bytes().to_vec())],
            docs: vec![([1; 12], Some(vec![1, 2, 3])), ([2; 12], None)],
            index: vec![(vec![0, 0, 0, 5, 9], true), (vec![0, 0, 0, 5, 8], false)],
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.wal");
        {
            let (mut w, recs) = Wal::open(&path).unwrap();
            assert!(recs.is_empty());
            w.append_durable(&sample(1).encode()).unwrap();
            w.append_durable(&sample(2).encode()).unwrap();
            // A crash mid-append: half a record.
            let third = sample(3).encode();
            w.append_durable(&third[..third.len() / 2]).unwrap();
        }
        let (mut w, recs) = Wal::open(&path).unwrap();
        assert_eq!(recs, vec![sample(1), sample(2)]);
        w.truncate().unwrap();
        assert!(Wal::open(&path).unwrap().1.is_empty());
    }

    #[test]
    fn a_corrupted_record_stops_replay_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.wal");
        {
            let (mut w, _) = Wal::open(&path).unwrap();
            w.append_durable(&sample(1).encode()).unwrap();
            let mut bad = sample(2).encode();
            let n = bad.len();
            bad[n - 1] ^= 0xff;
            w.append_durable(&bad).unwrap();
        }
        assert_eq!(Wal::open(&path).unwrap().1, vec![sample(1)]);
    }
}
