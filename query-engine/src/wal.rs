//! The write-ahead log. A durable batch is acknowledged once its record is appended here and
//! fsynced — a small sequential write — while redb applies the batch without an fsync of its
//! own (later, off the critical path: see `storage`); a checkpoint (a durable redb commit)
//! makes redb's state durable and deletes the log segments it covers. On open, records newer than redb's durable state are replayed, so nothing
//! acknowledged is lost. A torn record at the tail (a crash mid-append) was never acknowledged
//! and is ignored.
//!
//! Record: `u32 length | u32 crc32(body) | body`, body: `u64 ts`, then meta entries, documents
//! (12-byte id, present flag, encoded document) and index entries (key, present flag), each
//! list prefixed by its u32 count and each byte string by its u32 length.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
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
        encode_record(
            self.ts,
            self.meta.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
            self.docs.iter().map(|(id, d)| (*id, d.as_deref())),
            self.index.iter().map(|(k, p)| (k.as_slice(), *p)),
        )
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

/// Encodes one batch as a record (length, checksum, body) straight from its parts.
pub fn encode_record<'a>(
    ts: u64,
    meta: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
    docs: impl ExactSizeIterator<Item = ([u8; 12], Option<&'a [u8]>)>,
    index: impl ExactSizeIterator<Item = (&'a [u8], bool)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + docs.len() * 128 + index.len() * 48);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    for (k, v) in meta {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v);
    }
    out.extend_from_slice(&(docs.len() as u32).to_le_bytes());
    for (id, doc) in docs {
        out.extend_from_slice(&id);
        match doc {
            Some(d) => {
                out.push(1);
                put_bytes(&mut out, d);
            }
            None => out.push(0),
        }
    }
    out.extend_from_slice(&(index.len() as u32).to_le_bytes());
    for (k, present) in index {
        put_bytes(&mut out, k);
        out.push(u8::from(present));
    }
    let body_len = (out.len() - 8) as u32;
    let crc = crc32fast::hash(&out[8..]);
    out[..4].copy_from_slice(&body_len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The log is a sequence of segment files `<base>.wal.<n>` (n increasing); records are only
/// appended to the newest. Once everything in the older segments is durable in redb (a
/// checkpoint), they are deleted whole, so the log never needs rewriting in place.
pub struct Wal {
    base: PathBuf,
    file: File,
    /// Number of the segment being appended to.
    current: u64,
    /// Older segments still on disk, oldest first.
    older: Vec<PathBuf>,
    /// Bytes in the current segment.
    len: u64,
}

/// Path of segment `n` of the log at `base`.
fn segment_path(base: &Path, n: u64) -> PathBuf {
    let mut p = base.as_os_str().to_owned();
    p.push(format!(".wal.{n}"));
    PathBuf::from(p)
}

fn dir_of(base: &Path) -> PathBuf {
    match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The segments on disk, oldest first, with the number of the newest. A log written before
/// segments existed (`<base>.wal`) comes first.
fn segments_on_disk(base: &Path) -> std::io::Result<(Vec<PathBuf>, u64)> {
    let Some(name) = base.file_name().and_then(|n| n.to_str()) else {
        return Ok((Vec::new(), 0));
    };
    let legacy = format!("{name}.wal");
    let prefix = format!("{name}.wal.");
    let mut numbered = Vec::new();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir_of(base))? {
        let entry = entry?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if file == legacy {
            out.push(entry.path());
        } else if let Some(n) = file
            .strip_prefix(&prefix)
            .and_then(|n| n.parse::<u64>().ok())
        {
            numbered.push((n, entry.path()));
        }
    }
    numbered.sort();
    let newest = numbered.last().map(|(n, _)| *n).unwrap_or(0);
    out.extend(numbered.into_iter().map(|(_, p)| p));
    Ok((out, newest))
}

/// Reads every intact record of one segment file, in order.
fn read_segment(path: &Path, records: &mut Vec<Record>) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut at = 0usize;
    while bytes.len() - at >= 8 {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
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
    if at != bytes.len() {
        tracing::warn!(
            path = %path.display(),
            dropped_bytes = bytes.len() - at,
            "ignoring a torn record at the end of a write-ahead log segment"
        );
    }
    Ok(())
}

/// Makes a created or removed directory entry durable.
fn sync_dir(base: &Path) -> std::io::Result<()> {
    File::open(dir_of(base))?.sync_all()
}

impl Wal {
    /// Opens the log of the database at `base`, returning it with every intact record of every
    /// segment, oldest first. New records go to a fresh segment after them.
    pub fn open(base: &Path) -> std::io::Result<(Wal, Vec<Record>)> {
        let (older, newest) = segments_on_disk(base)?;
        let mut records = Vec::new();
        for path in &older {
            read_segment(path, &mut records)?;
        }
        let current = newest + 1;
        let wal = Wal {
            base: base.to_path_buf(),
            file: create_segment(base, current)?,
            current,
            older,
            len: 0,
        };
        Ok((wal, records))
    }

    /// Appends a record and waits until it is on disk.
    ///
    /// A failed write is cut off again, so the next record does not land behind a torn one
    /// (replay would stop there and lose it). A failed fsync leaves the file's state unknown —
    /// the kernel may have dropped the dirty pages — so the process stops rather than go on
    /// acknowledging writes on top of it (the lesson of PostgreSQL's "fsyncgate").
    pub fn append_durable(&mut self, record: &[u8]) -> std::io::Result<()> {
        if let Err(e) = self.file.write_all(record) {
            if let Err(cut) = self.file.set_len(self.len) {
                tracing::error!(error = %cut, "cannot cut a failed append off the write-ahead log");
                std::process::abort();
            }
            return Err(e);
        }
        if let Err(e) = self.file.sync_data() {
            tracing::error!(error = %e, "fsync of the write-ahead log failed; stopping");
            std::process::abort();
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Bytes in the segment being appended to.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts a new segment; returns every older one, which may be deleted once a checkpoint
    /// has made all records appended so far durable in redb.
    pub fn rotate(&mut self) -> std::io::Result<Sealed> {
        let next = self.current + 1;
        self.file = create_segment(&self.base, next)?;
        let mut paths = std::mem::take(&mut self.older);
        paths.push(segment_path(&self.base, self.current));
        self.current = next;
        self.len = 0;
        Ok(Sealed {
            base: self.base.clone(),
            paths,
        })
    }

    /// Deletes the segments found at open (after their records were made durable in redb by
    /// replay and a durable commit); the segment `open` started for new records stays.
    pub fn discard_replayed(&mut self) -> std::io::Result<()> {
        Sealed {
            base: self.base.clone(),
            paths: std::mem::take(&mut self.older),
        }
        .remove()
    }
}

fn create_segment(base: &Path, n: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(segment_path(base, n))?;
    sync_dir(base)?;
    Ok(file)
}

/// Segments no longer appended to, waiting for a checkpoint to make them redundant.
#[derive(Debug)]
pub struct Sealed {
    base: PathBuf,
    paths: Vec<PathBuf>,
}

impl Sealed {
    /// Deletes the sealed segments. Only call once redb durably holds all their records.
    pub fn remove(self) -> std::io::Result<()> {
        for path in &self.paths {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        sync_dir(&self.base)
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
        let base = dir.path().join("w.redb");
        {
            let (mut w, recs) = Wal::open(&base).unwrap();
            assert!(recs.is_empty());
            w.append_durable(&sample(1).encode()).unwrap();
            w.append_durable(&sample(2).encode()).unwrap();
            // A crash mid-append: half a record.
            let third = sample(3).encode();
            w.append_durable(&third[..third.len() / 2]).unwrap();
        }
        let (mut w, recs) = Wal::open(&base).unwrap();
        assert_eq!(recs, vec![sample(1), sample(2)]);
        w.discard_replayed().unwrap();
        assert!(Wal::open(&base).unwrap().1.is_empty());
    }

    #[test]
    fn a_corrupted_record_stops_replay_of_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        {
            let (mut w, _) = Wal::open(&base).unwrap();
            w.append_durable(&sample(1).encode()).unwrap();
            let mut bad = sample(2).encode();
            let n = bad.len();
            bad[n - 1] ^= 0xff;
            w.append_durable(&bad).unwrap();
        }
        assert_eq!(Wal::open(&base).unwrap().1, vec![sample(1)]);
    }

    #[test]
    fn segments_replay_in_order_and_sealed_ones_are_removed_by_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        // A log from before segments existed comes first.
        let mut legacy = base.as_os_str().to_owned();
        legacy.push(".wal");
        std::fs::write(PathBuf::from(&legacy), sample(1).encode()).unwrap();
        let sealed = {
            let (mut w, recs) = Wal::open(&base).unwrap();
            assert_eq!(recs, vec![sample(1)]);
            w.append_durable(&sample(2).encode()).unwrap();
            let sealed = w.rotate().unwrap();
            w.append_durable(&sample(3).encode()).unwrap();
            assert_eq!(w.len(), sample(3).encode().len() as u64);
            sealed
        };
        // Reopened before the checkpoint: everything is still there, in order.
        let (_, recs) = Wal::open(&base).unwrap();
        assert_eq!(recs, vec![sample(1), sample(2), sample(3)]);
        sealed.remove().unwrap();
        let (_, recs) = Wal::open(&base).unwrap();
        assert_eq!(recs, vec![sample(3)]);
        assert!(!PathBuf::from(&legacy).exists());
    }
}
