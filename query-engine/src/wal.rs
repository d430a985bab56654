//! The write-ahead log. A durable batch is acknowledged once its record is appended here and
//! fsynced — a small sequential write — while redb applies the batch without an fsync of its
//! own (later, off the critical path: see `storage`); a checkpoint (a durable redb commit)
//! makes redb's state durable and deletes the log segments it covers. On open, every record
//! still in the log is replayed, in order (`Replay`), so nothing acknowledged is lost. A torn
//! record at the tail (a crash mid-append) was never acknowledged and is ignored.
//!
//! Segments are zero-filled ahead of use by a background thread, so appending a record
//! overwrites blocks the file already has: its `fdatasync` then writes data only, where an
//! append that grows the file also waits for a filesystem journal commit (on this machine's
//! ext4, 0.19 ms against 0.31 ms per 4 KiB write with fsync, and the journal commit also waits
//! for other files' newly allocated blocks). A zero record header marks the end of the
//! records. The first segment after open is zero-filled before `open` returns, but short
//! (`FIRST_SEGMENT_BYTES`), so opening stays quick; it gives way to a full-size one as soon as
//! that is ready. (The log fsyncs of 4–7 ms seen in the first second after an open came from
//! zero-filling that full-size segment in 512 KiB steps beside them, not from the growing
//! first segment; the background zero-fill is now paced, see `create_zero_filled`.)
//!
//! Record: `u32 length | u32 checksum | body`, body: `u64 ts`, then meta entries, documents
//! (12-byte id, present flag, encoded document) and index entries (key, present flag), each
//! list prefixed by its u32 count and each byte string by its u32 length. The checksum is the
//! CRC-32 of the segment's number and the record's offset (each `u64` little-endian) followed
//! by the body, so a record is intact only where it was appended: a copy of one inside a
//! document (clients choose documents' bytes) does not pass for a record when a crash tears
//! the record holding it and the rest of the segment is searched for intact records. Segments
//! written before the position was included hold `crc32(body)`; a segment whose first record
//! checks that way is read that way throughout.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::storage::{private_file_options, write_back, WRITEBACK_STEP};

/// Largest record body: appends over it are refused (`RecordTooLarge`), so replay, which takes
/// a longer length for a torn or damaged record, never meets an acknowledged one (a batch is
/// bounded well below this).
pub const MAX_RECORD_BYTES: usize = 1 << 30;
/// Bytes of a record besides its entries: header (length, checksum), timestamp, and the
/// three entry counts.
pub const RECORD_FIXED_BYTES: usize = 8 + 8 + 3 * 4;

/// Bytes a document entry takes in a record (id, present flag, length-prefixed encoding).
pub const fn doc_entry_bytes(encoded_len: Option<usize>) -> usize {
    match encoded_len {
        Some(n) => 12 + 1 + 4 + n,
        None => 12 + 1,
    }
}

/// Bytes an index entry takes in a record (length-prefixed key, present flag).
pub const fn index_entry_bytes(key_len: usize) -> usize {
    4 + key_len + 1
}

/// Bytes a metadata entry takes in a record (length-prefixed key and value).
pub const fn meta_entry_bytes(key_len: usize, value_len: usize) -> usize {
    4 + key_len + 4 + value_len
}

/// A batch whose record would be over the cap: refused before anything is written, so
/// nothing is acknowledged that replay could not read back.
#[derive(Debug, thiserror::Error)]
#[error("a write-ahead log record of {bytes} bytes is over the cap of {max_bytes}")]
pub struct RecordTooLarge {
    pub bytes: usize,
    pub max_bytes: usize,
}

/// Why the log cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A record that cannot be read back where a torn append cannot be: records follow it, or
    /// its checksum holds and it still does not decode. What follows it was acknowledged, so
    /// the open stops and every log file is kept for inspection.
    #[error(
        "segment {} is damaged at byte {offset} ({reason}), not torn by a crash mid-append; \
         the open stops and every log file is kept",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: &'static str,
    },
}

/// One batch as logged.
#[derive(Debug, Default, PartialEq)]
pub struct Record {
    pub ts: u64,
    pub meta: Vec<(String, Vec<u8>)>,
    pub docs: Vec<([u8; 12], Option<Vec<u8>>)>,
    pub index: Vec<(Vec<u8>, bool)>,
}

/// Appends `n` as a record's u32 length or count. A length that does not fit cannot be in a
/// record under the cap either.
fn put_len(out: &mut Vec<u8>, n: usize, max_bytes: usize) -> Result<(), RecordTooLarge> {
    let n = u32::try_from(n).map_err(|_| RecordTooLarge {
        bytes: n,
        max_bytes,
    })?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8], max_bytes: usize) -> Result<(), RecordTooLarge> {
    put_len(out, b.len(), max_bytes)?;
    out.extend_from_slice(b);
    Ok(())
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
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        encode_record(
            MAX_RECORD_BYTES,
            self.ts,
            self.meta.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
            self.docs.iter().map(|(id, d)| (*id, d.as_deref())),
            self.index.iter().map(|(k, p)| (k.as_slice(), *p)),
        )
        .unwrap()
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

/// Encodes one batch as a record (length, checksum, body) straight from its parts; refuses
/// one whose body would be over `max_bytes` (at most `MAX_RECORD_BYTES`).
pub fn encode_record<'a>(
    max_bytes: usize,
    ts: u64,
    meta: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
    docs: impl ExactSizeIterator<Item = ([u8; 12], Option<&'a [u8]>)>,
    index: impl ExactSizeIterator<Item = (&'a [u8], bool)>,
) -> Result<Vec<u8>, RecordTooLarge> {
    let max_bytes = max_bytes.min(MAX_RECORD_BYTES);
    let mut out = Vec::with_capacity(64 + docs.len() * 128 + index.len() * 48);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&ts.to_le_bytes());
    put_len(&mut out, meta.len(), max_bytes)?;
    for (k, v) in meta {
        put_bytes(&mut out, k.as_bytes(), max_bytes)?;
        put_bytes(&mut out, v, max_bytes)?;
    }
    put_len(&mut out, docs.len(), max_bytes)?;
    for (id, doc) in docs {
        out.extend_from_slice(&id);
        match doc {
            Some(d) => {
                out.push(1);
                put_bytes(&mut out, d, max_bytes)?;
            }
            None => out.push(0),
        }
    }
    put_len(&mut out, index.len(), max_bytes)?;
    for (k, present) in index {
        put_bytes(&mut out, k, max_bytes)?;
        out.push(u8::from(present));
    }
    let body = out.len() - 8;
    let too_large = RecordTooLarge {
        bytes: body,
        max_bytes,
    };
    if body > max_bytes {
        return Err(too_large);
    }
    let body_len = u32::try_from(body).map_err(|_| too_large)?;
    // The body's checksum, extended by the record's position when it is appended (`seal`).
    let crc = crc32fast::hash(&out[8..]);
    out[..4].copy_from_slice(&body_len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
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
    /// Bytes of records in the current segment.
    len: u64,
    /// Bytes a segment is zero-filled to ahead of use.
    segment_bytes: u64,
    /// The next segment, being zero-filled (or done) under a temporary name.
    next: Option<Filling>,
    /// Bytes of the current segment that were zero-filled ahead: `segment_bytes` normally,
    /// less for the first segment after open, 0 when zero-filling failed.
    filled: u64,
}

/// Bytes appended to a short segment before its full-size successor is prepared.
const SHORT_SEGMENT_START_NEXT: u64 = 1 << 20;
/// Size of the first segment after open, zero-filled by `open` itself (~10 ms here).
const FIRST_SEGMENT_BYTES: u64 = 4 << 20;

/// Temporary names of zero-filled segments start `<base>.wal.next`.
const FILLING_SUFFIX: &str = ".wal.next";

/// Where the next segment is zero-filled before it gets its number: a name no other fill of
/// this process uses, so a fill left from a log closed meanwhile can never write into a file
/// that a later log renamed into a live segment.
fn next_segment_path(base: &Path) -> PathBuf {
    static FILLS: AtomicU64 = AtomicU64::new(0);
    let n = FILLS.fetch_add(1, Ordering::Relaxed);
    log_path(
        base,
        &format!("{FILLING_SUFFIX}.{}.{n}", std::process::id()),
    )
}

/// A segment being zero-filled by a background thread under its temporary name.
struct Filling {
    path: PathBuf,
    /// Asks the thread to stop between two steps.
    stop: Arc<AtomicBool>,
    thread: JoinHandle<std::io::Result<File>>,
}

impl Filling {
    fn start(base: &Path, bytes: u64) -> std::io::Result<Filling> {
        let path = next_segment_path(base);
        let stop = Arc::new(AtomicBool::new(false));
        let (to, stopped) = (path.clone(), stop.clone());
        let thread = crate::background::spawn("wal-zero-fill", move || {
            create_zero_filled(&to, bytes, Some(&stopped))
        })?;
        Ok(Filling { path, stop, thread })
    }

    fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the thread; the zero-filled file, still under its temporary name.
    fn join(self) -> std::io::Result<(File, PathBuf)> {
        let file = self
            .thread
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("zero-filling panicked")));
        match file {
            Ok(file) => Ok((file, self.path)),
            Err(e) => {
                discard_fill(&self.path);
                Err(e)
            }
        }
    }

    /// Stops the thread (at once if it is resting, else after its current step), waits for it
    /// and deletes its file.
    fn cancel(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.thread().unpark();
        if self.thread.join().is_err() {
            tracing::warn!("zero-filling a log segment panicked");
        }
        discard_fill(&self.path);
    }
}

/// Deletes a zero-filled segment that will not be used (a leftover is deleted at open).
fn discard_fill(path: &Path) {
    if let Err(e) = remove_if_present(path) {
        tracing::warn!(error = %e, path = %path.display(), "cannot delete a zero-filled log segment");
    }
}

/// `base` with `suffix` appended to its file name.
fn log_path(base: &Path, suffix: &str) -> PathBuf {
    let mut p = base.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Deletes `path`; a file already gone is fine.
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Path of segment `n` of the log at `base`.
fn segment_path(base: &Path, n: u64) -> PathBuf {
    log_path(base, &format!(".wal.{n}"))
}

fn dir_of(base: &Path) -> PathBuf {
    match base.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Suffix of a segment being deleted: its records are durable in redb.
const DELETING_SUFFIX: &str = ".deleting";

/// What the log's directory holds for the database at `base`.
#[derive(Default)]
struct OnDisk {
    /// The segments with their numbers, oldest first. A log written before segments existed
    /// (`<base>.wal`, numbered 0) comes first.
    segments: Vec<(u64, PathBuf)>,
    /// Number of the newest segment (0 if none).
    newest: u64,
    /// Segments a checkpoint was deleting, and zero-filled ones never used: deleted unread.
    leftovers: Vec<PathBuf>,
}

fn segments_on_disk(base: &Path) -> std::io::Result<OnDisk> {
    let Some(name) = base.file_name().and_then(|n| n.to_str()) else {
        return Ok(OnDisk::default());
    };
    let legacy = format!("{name}.wal");
    let mut found = OnDisk::default();
    let mut numbered = Vec::new();
    for entry in std::fs::read_dir(dir_of(base))? {
        let entry = entry?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        // `<name>.wal`, or `<name>.wal.` followed by the rest.
        let Some(rest) = file.strip_prefix(&legacy) else {
            continue;
        };
        if rest.is_empty() {
            found.segments.push((0, entry.path()));
        } else if (rest.starts_with('.') && rest.ends_with(DELETING_SUFFIX))
            || file.starts_with(&format!("{name}{FILLING_SUFFIX}"))
        {
            found.leftovers.push(entry.path());
        } else if let Some(n) = rest.strip_prefix('.').and_then(|n| n.parse::<u64>().ok()) {
            numbered.push((n, entry.path()));
        }
    }
    numbered.sort();
    found.newest = numbered.last().map(|(n, _)| *n).unwrap_or(0);
    found.segments.extend(numbered);
    Ok(found)
}

/// Reads the records of one segment file in order, one at a time, so replay holds at most one
/// record in memory whatever the log's size.
struct SegmentReader {
    file: BufReader<File>,
    len: u64,
    /// Offset of the next record.
    at: u64,
    /// The segment's number (0 for a log from before segments).
    segment: u64,
    /// How the segment's records are checksummed, once its first record has told.
    checksum: Option<Checksum>,
}

/// What the next position of a segment holds.
enum Next {
    Record(Record),
    /// A zero header, or the end of the file: no more records.
    End,
    /// A record that cannot be read back: a torn append, or damage.
    Bad {
        offset: u64,
        reason: &'static str,
    },
    /// A record whose checksum holds but whose body does not decode: never a torn append.
    Undecodable {
        offset: u64,
    },
}

impl SegmentReader {
    fn open(path: &Path, segment: u64) -> std::io::Result<SegmentReader> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(SegmentReader {
            file: BufReader::with_capacity(READ_BUFFER_BYTES, file),
            len,
            at: 0,
            segment,
            checksum: None,
        })
    }

    /// Whether `crc` holds for `body` at `offset`, learning the segment's checksum from its
    /// first record.
    fn checks(&mut self, offset: u64, body: &[u8], crc: u32) -> bool {
        let positioned = || positioned_crc(self.segment, offset, body) == crc;
        let body_only = || crc32fast::hash(body) == crc;
        match self.checksum {
            Some(Checksum::Positioned) => positioned(),
            Some(Checksum::BodyOnly) => body_only(),
            None => {
                let found = if positioned() {
                    Some(Checksum::Positioned)
                } else if body_only() {
                    Some(Checksum::BodyOnly)
                } else {
                    None
                };
                self.checksum = found;
                found.is_some()
            }
        }
    }

    fn next(&mut self) -> std::io::Result<Next> {
        let offset = self.at;
        let left = self.len - offset;
        let mut header = [0u8; 8];
        // Fewer than 8 bytes left: the end of the file, or a header cut short.
        self.file.read_exact(&mut header[..left.min(8) as usize])?;
        if header == [0; 8] {
            return Ok(Next::End);
        }
        if left < 8 {
            return Ok(Next::Bad {
                offset,
                reason: "a partial record header",
            });
        }
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let len = u64::from(u32::from_le_bytes([l0, l1, l2, l3]));
        let crc = u32::from_le_bytes([c0, c1, c2, c3]);
        if len > MAX_RECORD_BYTES as u64 {
            return Ok(Next::Bad {
                offset,
                reason: "a record length over the cap",
            });
        }
        if left - 8 < len {
            return Ok(Next::Bad {
                offset,
                reason: "a record running past the end of the segment",
            });
        }
        // At most `MAX_RECORD_BYTES`, checked above.
        let mut body = vec![0u8; len as usize];
        self.file.read_exact(&mut body)?;
        self.at += 8 + len;
        if !self.checks(offset, &body, crc) {
            return Ok(Next::Bad {
                offset,
                reason: "a checksum mismatch",
            });
        }
        match Record::decode(&body) {
            Some(record) => Ok(Next::Record(record)),
            None => Ok(Next::Undecodable { offset }),
        }
    }
}

/// How a segment's records are checksummed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Checksum {
    /// Over the segment number, the record's offset and the body.
    Positioned,
    /// Over the body alone (segments written by earlier builds).
    BodyOnly,
}

/// The checksum of `body` as a record at `offset` of segment `segment`.
fn positioned_crc(segment: u64, offset: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&segment.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Rewrites an encoded record's checksum (that of its body, as `encode_record` leaves it)
/// into its checksum as a record at `offset` of segment `segment`, without reading the body
/// again.
fn seal(record: &mut [u8], segment: u64, offset: u64) {
    let Some((header, _)) = record.split_first_chunk_mut::<8>() else {
        return;
    };
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let body_len = u32::from_le_bytes([l0, l1, l2, l3]);
    let body = crc32fast::Hasher::new_with_initial_len(
        u32::from_le_bytes([c0, c1, c2, c3]),
        u64::from(body_len),
    );
    let mut h = crc32fast::Hasher::new();
    h.update(&segment.to_le_bytes());
    h.update(&offset.to_le_bytes());
    h.combine(&body);
    header[4..].copy_from_slice(&h.finalize().to_le_bytes());
}

/// Read buffer of replay.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// Where a segment's records ended.
enum SegmentEnd {
    /// At a zero header or the end of the file.
    Clean,
    /// At a record that cannot be read back, with nothing readable after it in the segment:
    /// a torn append if no later segment holds records.
    Torn { offset: u64, reason: &'static str },
}

/// Calls `apply` with every intact record of one segment file, in order; adds to `n` how many.
fn replay_segment<E: From<WalError>>(
    path: &Path,
    segment: u64,
    apply: &mut impl FnMut(Record) -> Result<(), E>,
    n: &mut usize,
) -> Result<SegmentEnd, E> {
    let corrupt = |offset, reason| WalError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let mut reader = SegmentReader::open(path, segment).map_err(WalError::Io)?;
    loop {
        let at = reader.at;
        match reader.next().map_err(WalError::Io)? {
            Next::Record(r) => {
                apply(r)?;
                *n += 1;
            }
            // Appends fill a segment front to back, so past its last record it holds nothing
            // readable: an intact record further on means this header was zeroed by damage.
            Next::End => {
                if intact_record_after(path, &reader, at + 1).map_err(WalError::Io)? {
                    return Err(corrupt(at, "a zeroed record header with records after it").into());
                }
                return Ok(SegmentEnd::Clean);
            }
            Next::Undecodable { offset } => {
                return Err(corrupt(
                    offset,
                    "a record with a valid checksum that does not decode",
                )
                .into())
            }
            Next::Bad { offset, reason, .. } => {
                // An append is the last write to its segment (a failed one is cut off again),
                // so an intact record anywhere after a bad one means damage, not a torn
                // append — however many records the damage spans, and even when it hit the
                // bad record's length.
                if intact_record_after(path, &reader, offset + 1).map_err(WalError::Io)? {
                    return Err(corrupt(offset, reason).into());
                }
                return Ok(SegmentEnd::Torn { offset, reason });
            }
        }
    }
}

/// Whether an intact record (a header whose length fits and whose checksum holds over its
/// body at that offset, checksummed as the segment's records are — positioned when no record
/// told) starts anywhere at or after `from` in the segment. Read once per segment at the end
/// of its records at open, where the rest is normally the zero fill.
fn intact_record_after(path: &Path, reader: &SegmentReader, from: u64) -> std::io::Result<bool> {
    let checksum = reader.checksum.unwrap_or(Checksum::Positioned);
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if from >= len {
        return Ok(false);
    }
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(from))?;
    let mut rest = Vec::new();
    file.read_to_end(&mut rest)?;
    let mut i = 0;
    while i + 8 <= rest.len() {
        // Skip zero runs at memchr speed: a header must hold a non-zero byte.
        match rest[i..].iter().position(|&b| b != 0) {
            None => break,
            Some(p) if p >= 8 => {
                i += p - 7;
                continue;
            }
            Some(_) => {}
        }
        let header = &rest[i..i + 8];
        if header != [0; 8] {
            let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            let body_len = body_len as usize;
            if body_len <= MAX_RECORD_BYTES && body_len <= rest.len() - i - 8 {
                let body = &rest[i + 8..i + 8 + body_len];
                let holds = match checksum {
                    Checksum::Positioned => {
                        positioned_crc(reader.segment, from + i as u64, body) == crc
                    }
                    Checksum::BodyOnly => crc32fast::hash(body) == crc,
                };
                if holds {
                    return Ok(true);
                }
            }
        }
        i += 1;
    }
    Ok(false)
}

/// Whether a segment holds anything where its first record would be.
fn holds_records(path: &Path, segment: u64) -> std::io::Result<bool> {
    Ok(!matches!(
        SegmentReader::open(path, segment)?.next()?,
        Next::End
    ))
}

/// Makes a created or removed directory entry durable.
fn sync_dir(base: &Path) -> std::io::Result<()> {
    File::open(dir_of(base))?.sync_all()
}

/// The log as found on disk at open, before new records go to it: its records are replayed
/// (`records`), then `start` begins a fresh segment after them. Nothing is created or deleted
/// until `start`, so a replay that fails leaves the log exactly as it was.
pub struct Replay {
    base: PathBuf,
    /// The segments found with their numbers, oldest first.
    segments: Vec<(u64, PathBuf)>,
    /// Number of the newest segment found (0 if none).
    newest: u64,
}

impl Replay {
    /// Finds the log of the database at `base`.
    pub fn open(base: &Path) -> std::io::Result<Replay> {
        let found = segments_on_disk(base)?;
        for path in &found.leftovers {
            remove_gradually(path)?;
        }
        Ok(Replay {
            base: base.to_path_buf(),
            segments: found.segments,
            newest: found.newest,
        })
    }

    /// Calls `apply` with every intact record of every segment, oldest first, one record in
    /// memory at a time; returns how many. Every record is passed, whatever redb holds: a
    /// record is the after-image of the keys it wrote, so applying one redb already has changes
    /// nothing, and redb's own idea of how far it got cannot be trusted (after a failed fsync
    /// the kernel may serve pages that never reached the disk).
    ///
    /// A record that cannot be read back is accepted only as the torn tail of the log: the
    /// last thing in its segment, with no records in any later segment. Anywhere else, or a
    /// record whose checksum holds but which does not decode, is damage: `WalError::Corrupt`
    /// names the segment and offset, and nothing has been deleted.
    pub fn records<E: From<WalError>>(
        &self,
        mut apply: impl FnMut(Record) -> Result<(), E>,
    ) -> Result<usize, E> {
        let mut n = 0;
        let mut torn: Option<(&PathBuf, u64, &'static str)> = None;
        for (segment, path) in &self.segments {
            if let Some((torn_path, offset, reason)) = torn {
                // A torn append ends the log: records after it mean the bad record is damage,
                // and everything after it was acknowledged.
                if holds_records(path, *segment).map_err(WalError::Io)? {
                    return Err(WalError::Corrupt {
                        path: torn_path.clone(),
                        offset,
                        reason,
                    }
                    .into());
                }
                continue;
            }
            if let SegmentEnd::Torn { offset, reason } =
                replay_segment(path, *segment, &mut apply, &mut n)?
            {
                torn = Some((path, offset, reason));
            }
        }
        if let Some((path, offset, reason)) = torn {
            tracing::warn!(
                path = %path.display(),
                offset,
                reason,
                "ignoring a torn record at the end of the write-ahead log (a crash mid-append; never acknowledged)"
            );
        }
        Ok(n)
    }

    /// Starts a fresh segment after the ones found; those stay on disk until
    /// `Wal::discard_replayed`. Later segments are zero-filled to `segment_bytes` ahead of use.
    pub fn start(self, segment_bytes: u64) -> std::io::Result<Wal> {
        self.start_sized(segment_bytes, FIRST_SEGMENT_BYTES)
    }

    fn start_sized(self, segment_bytes: u64, first_bytes: u64) -> std::io::Result<Wal> {
        let base = self.base;
        let current = self.newest + 1;
        let first = first_bytes.min(segment_bytes);
        let (file, filled) = match create_zero_filled(&segment_path(&base, current), first, None) {
            Ok(file) => {
                sync_dir(&base)?;
                (file, first)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not zero-fill the first log segment; appending instead");
                (create_segment(&base, current)?, 0)
            }
        };
        Ok(Wal {
            base,
            file,
            current,
            older: self.segments.into_iter().map(|(_, path)| path).collect(),
            len: 0,
            segment_bytes,
            next: None,
            filled,
        })
    }
}

impl Wal {
    /// Appends a record and waits until it is on disk.
    ///
    /// A failed write is cut off again, so the next record does not land behind a torn one
    /// (replay would stop there and lose it). A failed fsync leaves the file's state unknown —
    /// the kernel may have dropped the dirty pages — so the process stops rather than go on
    /// acknowledging writes on top of it (the lesson of PostgreSQL's "fsyncgate").
    /// `record` is as `encode_record` made it; its checksum is completed here with where it
    /// goes (see the module's comment).
    pub fn append_durable(&mut self, record: &mut [u8]) -> std::io::Result<()> {
        seal(record, self.current, self.len);
        if let Err(e) = self.file.write_all_at(record, self.len) {
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
        // A short segment (the first after open, or one that could not be zero-filled) has
        // its successor prepared after its first MiB, and gives way to it as soon as it is
        // ready (`wants_rotation`).
        let start_at = if self.is_short() {
            (self.segment_bytes / 2).min(SHORT_SEGMENT_START_NEXT)
        } else {
            self.segment_bytes / 2
        };
        if self.next.is_none() && self.len >= start_at {
            match Filling::start(&self.base, self.segment_bytes) {
                Ok(filling) => self.next = Some(filling),
                // The next segment then grows as it is appended to; tried again next append.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start zero-filling the next log segment")
                }
            }
        }
        Ok(())
    }

    /// Bytes in the segment being appended to.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the current segment was zero-filled to less than the full size.
    fn is_short(&self) -> bool {
        self.filled < self.segment_bytes
    }

    /// Whether the current segment is short while a full-size zero-filled one is ready.
    pub fn wants_rotation(&self) -> bool {
        self.is_short() && self.next.as_ref().is_some_and(Filling::is_finished)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts a new segment; returns every older one, which may be deleted once a checkpoint
    /// has made all records appended so far durable in redb.
    pub fn rotate(&mut self) -> std::io::Result<Sealed> {
        let next = self.current + 1;
        let prepared = self.next.take_if(|f| f.is_finished()).map(Filling::join);
        let (file, filled) = match prepared {
            Some(Ok((file, path))) => {
                if let Err(e) = std::fs::rename(&path, segment_path(&self.base, next)) {
                    discard_fill(&path);
                    return Err(e);
                }
                sync_dir(&self.base)?;
                (file, self.segment_bytes)
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "could not zero-fill the next log segment; appending instead");
                (create_segment(&self.base, next)?, 0)
            }
            // Not ready (or never started): this segment grows as it is appended to.
            None => (create_segment(&self.base, next)?, 0),
        };
        self.file = file;
        self.filled = filled;
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
        let mut replayed = Sealed {
            base: self.base.clone(),
            paths: std::mem::take(&mut self.older),
        };
        let removed = replayed.remove();
        // Kept for the first rotation, which hands them on ahead of the newer segments.
        self.older = replayed.paths;
        removed
    }
}

impl Drop for Wal {
    /// A fill still running would go on writing after the log is gone (and, under the old
    /// shared name, could write into a segment a reopened log had renamed it to).
    fn drop(&mut self) {
        if let Some(filling) = self.next.take() {
            filling.cancel();
        }
    }
}

fn create_segment(base: &Path, n: u64) -> std::io::Result<File> {
    let file = private_file_options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(segment_path(base, n))?;
    sync_dir(base)?;
    Ok(file)
}

/// Creates `path` holding `bytes` zeros, durably. The zeros go to disk a step at a time, each
/// waited for, so they never queue up ahead of the log's fsyncs. A fill in the background
/// (given `stop`: a segment prepared while commits are being logged) takes small steps and
/// rests as long as each took: a log fsync then waits behind at most one 128 KiB write.
/// Unpaced 512 KiB steps, measured here, raised the log's fsync p50 from 0.1 to 2 ms for the
/// ~230 ms a 72 MiB segment took; paced, 0.7 ms for ~430 ms. It gives up between steps once
/// `stop` is set.
fn create_zero_filled(path: &Path, bytes: u64, stop: Option<&AtomicBool>) -> std::io::Result<File> {
    let stopped = || stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let file = private_file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let step = if stop.is_some() {
        PACED_STEP
    } else {
        WRITEBACK_STEP
    };
    let zeros = vec![0u8; step as usize];
    let mut at = 0;
    while at < bytes && !stopped() {
        let started = Instant::now();
        let n = step.min(bytes - at);
        file.write_all_at(&zeros[..n as usize], at)?;
        write_back(&file, at, n)?;
        at += n;
        if stop.is_some() {
            // A rest `Filling::cancel` cuts short (it unparks this thread).
            let rest_until = Instant::now() + started.elapsed();
            while !stopped() {
                let Some(left) = rest_until.checked_duration_since(Instant::now()) else {
                    break;
                };
                std::thread::park_timeout(left);
            }
        }
    }
    if stopped() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "zero-filling stopped: the log was closed",
        ));
    }
    file.sync_all()?;
    Ok(file)
}

/// Zero-fill step of a segment prepared in the background.
const PACED_STEP: u64 = 128 << 10;
/// A sealed segment is cut down by this much at a time before it is unlinked.
const REMOVE_STEP: u64 = 2 << 20;
/// Shortest rest between two cuts.
const REMOVE_REST: Duration = Duration::from_millis(2);

/// Deletes a segment file a few MiB at a time. On a filesystem mounted with `discard` (this
/// machine's is), unlinking a 72 MiB segment discards all its blocks at once, and every log
/// fsync meanwhile waited ~44 ms; cut by 2 MiB with rests, the longest wait was ~2–4 ms (the
/// whole removal takes ~130 ms, on the applier's thread after its checkpoint, or in `open`
/// for segments replayed there).
fn remove_gradually(path: &Path) -> std::io::Result<()> {
    let file = match OpenOptions::new().write(true).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    let mut len = file.metadata()?.len();
    while len > REMOVE_STEP {
        let started = Instant::now();
        len -= REMOVE_STEP;
        file.set_len(len)?;
        std::thread::sleep(started.elapsed().max(REMOVE_REST));
    }
    drop(file);
    remove_if_present(path)
}

/// Segments no longer appended to, waiting for a checkpoint to make them redundant.
#[derive(Debug)]
pub struct Sealed {
    base: PathBuf,
    paths: Vec<PathBuf>,
}

impl Sealed {
    /// Deletes the sealed segments, oldest first. Only call once redb durably holds all their
    /// records. Each is first renamed out of the log (durably) and only then cut down: a crash
    /// midway leaves a segment whole, or one that `Replay::open` deletes unread — never a
    /// segment cut short among the live ones, which would look like damage.
    ///
    /// On an error the segments not yet durably out of the log stay in `self`, to be removed
    /// (by calling this again) before any newer segment: replay applies every record whatever
    /// redb holds, so an older segment left behind while newer ones are deleted would be
    /// replayed over their writes on the next open, undoing acknowledged commits.
    pub fn remove(&mut self) -> std::io::Result<()> {
        let mut doomed = Vec::with_capacity(self.paths.len());
        let mut renamed = 0;
        let mut failed = None;
        for path in &self.paths {
            let to = log_path(path, DELETING_SUFFIX);
            match std::fs::rename(path, &to) {
                Ok(()) => doomed.push(to),
                // Renamed by an earlier call whose directory sync failed, or gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if to.exists() {
                        doomed.push(to);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            renamed += 1;
        }
        // Until the directory is synced a crash can bring a renamed segment back, so nothing
        // counts as out of the log before this succeeds.
        sync_dir(&self.base)?;
        self.paths.drain(..renamed);
        if let Some(e) = failed {
            return Err(e);
        }
        // Out of the log now: one left behind is deleted unread by the next open.
        for path in &doomed {
            if let Err(e) = remove_gradually(path) {
                tracing::warn!(error = %e, path = %path.display(), "cannot delete a checkpointed log segment; the next open will");
            }
        }
        sync_dir(&self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the log at `base` as `Storage` does: every record, then a fresh segment.
    fn open(base: &Path, segment_bytes: u64) -> (Wal, Vec<Record>) {
        let replay = Replay::open(base).unwrap();
        let mut records = Vec::new();
        replay
            .records(|r| {
                records.push(r);
                Ok::<_, WalError>(())
            })
            .unwrap();
        (replay.start(segment_bytes).unwrap(), records)
    }

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
            let (mut w, recs) = open(&base, 1 << 20);
            assert!(recs.is_empty());
            w.append_durable(&mut sample(1).encode()).unwrap();
            w.append_durable(&mut sample(2).encode()).unwrap();
            // A crash mid-append: half a record.
            let mut third = sample(3).encode();
            let half = third.len() / 2;
            w.append_durable(&mut third[..half]).unwrap();
        }
        let (mut w, recs) = open(&base, 1 << 20);
        assert_eq!(recs, vec![sample(1), sample(2)]);
        w.discard_replayed().unwrap();
        assert!(open(&base, 1 << 20).1.is_empty());
    }

    #[test]
    fn the_next_segment_is_zero_filled_ahead_and_replays_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        let record = sample(1).encode().len() as u64;
        let segment_bytes = 8 * record;
        // Leftovers from a crash while zero-filling (under today's names and the old shared
        // one) are removed at open.
        let leftovers = [next_segment_path(&base), log_path(&base, FILLING_SUFFIX)];
        for path in &leftovers {
            std::fs::write(path, b"junk").unwrap();
        }
        let mut w = Replay::open(&base)
            .unwrap()
            .start_sized(segment_bytes, 5 * record)
            .unwrap();
        assert!(leftovers.iter().all(|p| !p.exists()));
        // The first segment is zero-filled, short, before anything is appended.
        let first = segment_path(&base, w.current);
        assert_eq!(std::fs::metadata(&first).unwrap().len(), 5 * record);
        for ts in 1..=4 {
            w.append_durable(&mut sample(ts).encode()).unwrap();
        }
        // The records overwrote the zeros: the file did not grow.
        assert_eq!(std::fs::metadata(&first).unwrap().len(), 5 * record);
        // Half full: the next segment is being prepared.
        let prepared = w.next.as_ref().expect("zero-filling started");
        while !prepared.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The first segment is short, so it gives way to the ready full-size one.
        assert!(w.wants_rotation());
        w.rotate().unwrap();
        assert!(!w.wants_rotation());
        let current = segment_path(&base, w.current);
        assert_eq!(std::fs::metadata(&current).unwrap().len(), segment_bytes);
        w.append_durable(&mut sample(5).encode()).unwrap();
        w.append_durable(&mut sample(6).encode()).unwrap();
        // The records overwrote the zeros: the file did not grow.
        assert_eq!(std::fs::metadata(&current).unwrap().len(), segment_bytes);
        drop(w);
        let (_, recs) = open(&base, segment_bytes);
        assert_eq!(recs, (1..=6).map(sample).collect::<Vec<_>>());
    }

    /// Replays the log at `base` without starting a segment.
    fn replay(base: &Path) -> Result<Vec<Record>, WalError> {
        let mut records = Vec::new();
        Replay::open(base)?.records(|r| {
            records.push(r);
            Ok::<_, WalError>(())
        })?;
        Ok(records)
    }

    /// The log's files and their lengths.
    fn files(dir: &Path) -> Vec<(String, u64)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, e.metadata().unwrap().len())
            })
            .collect();
        out.sort();
        out
    }

    /// `sample(ts)` with its body damaged (checksum no longer matches).
    fn damaged(ts: u64) -> Vec<u8> {
        let mut bad = sample(ts).encode();
        let middle = 8 + (bad.len() - 8) / 2;
        bad[middle] ^= 0xff;
        bad
    }

    #[test]
    fn a_bad_record_is_dropped_only_as_the_torn_tail_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        let (mut w, _) = open(&base, 1 << 20);
        w.append_durable(&mut sample(1).encode()).unwrap();
        w.append_durable(&mut damaged(2)).unwrap();
        // The last thing in the log: a torn append, never acknowledged.
        assert_eq!(replay(&base).unwrap(), vec![sample(1)]);
        // A record after it: the bad one is damage, and the open stops there.
        w.append_durable(&mut sample(3).encode()).unwrap();
        drop(w);
        match replay(&base) {
            Err(WalError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, segment_path(&base, 1));
                assert_eq!(offset, sample(1).encode().len() as u64);
            }
            other => panic!("damage was not reported: {other:?}"),
        }
    }

    /// Records 1–3 in a segment, record 2 damaged, record 4 in the next segment: opening
    /// fails naming the segment and offset, and every file stays, however often it is tried.
    #[test]
    fn a_bad_record_before_later_records_fails_the_open_and_keeps_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        let (mut w, _) = open(&base, 1 << 20);
        w.append_durable(&mut sample(1).encode()).unwrap();
        w.append_durable(&mut damaged(2)).unwrap();
        w.append_durable(&mut sample(3).encode()).unwrap();
        drop(w.rotate().unwrap());
        w.append_durable(&mut sample(4).encode()).unwrap();
        drop(w);
        let before = files(dir.path());
        for _ in 0..2 {
            match crate::storage::Storage::open(&base) {
                Err(crate::storage::StorageError::Wal(WalError::Corrupt {
                    path, offset, ..
                })) => {
                    assert_eq!(path, segment_path(&base, 1));
                    assert_eq!(offset, sample(1).encode().len() as u64);
                }
                Err(e) => panic!("unexpected error: {e}"),
                Ok(_) => panic!("a damaged log was opened"),
            }
            let after: Vec<_> = files(dir.path())
                .into_iter()
                .filter(|(name, _)| name != "w.redb")
                .collect();
            assert_eq!(after, before);
        }
        // The same with the damaged record last in its segment: records in a later segment
        // mean it is not a torn append either.
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        let (mut w, _) = open(&base, 1 << 20);
        w.append_durable(&mut sample(1).encode()).unwrap();
        w.append_durable(&mut damaged(2)).unwrap();
        drop(w.rotate().unwrap());
        w.append_durable(&mut sample(3).encode()).unwrap();
        drop(w);
        let before = files(dir.path());
        assert!(matches!(
            replay(&base),
            Err(WalError::Corrupt { path, .. }) if path == segment_path(&base, 1)
        ));
        assert_eq!(files(dir.path()), before);
    }

    /// Damage the old reader took for the end of the log: a zeroed header in the middle of a
    /// segment, and two bad records in a row (or one whose length was hit), each with an
    /// intact record after them. The open fails and keeps the files.
    #[test]
    fn a_zeroed_header_or_a_run_of_bad_records_before_intact_ones_fails_the_open() {
        type Damage = fn(&mut Vec<u8>, usize);
        let zero_header: Damage = |seg, at| seg[at..at + 8].fill(0);
        let two_bad: Damage = |seg, at| {
            let first = sample(2).encode().len();
            seg[at + 8] ^= 0xff;
            seg[at + first + 8] ^= 0xff;
        };
        let bad_length: Damage = |seg, at| seg[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        for (what, damage) in [
            ("zeroed header", zero_header),
            ("two bad records", two_bad),
            ("bad length", bad_length),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().join("w.redb");
            let (mut w, _) = open(&base, 1 << 20);
            for seq in 1..=4 {
                w.append_durable(&mut sample(seq).encode()).unwrap();
            }
            drop(w);
            let path = segment_path(&base, 1);
            let mut seg = std::fs::read(&path).unwrap();
            damage(&mut seg, sample(1).encode().len());
            std::fs::write(&path, &seg).unwrap();
            let before = files(dir.path());
            assert!(
                matches!(replay(&base), Err(WalError::Corrupt { offset, .. }) if offset == sample(1).encode().len() as u64),
                "{what}"
            );
            assert_eq!(files(dir.path()), before, "{what}");
        }
    }

    /// Records copied into a document (a client's bytes) do not pass for intact records when a
    /// crash tears the record holding them: the torn tail is dropped, the open goes on. (The
    /// copy checksummed over its body alone, as every record was, made the open fail.)
    #[test]
    fn a_record_inside_a_torn_record_is_not_taken_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        let (mut w, _) = open(&base, 1 << 20);
        w.append_durable(&mut sample(1).encode()).unwrap();
        // A copy checksummed over its body alone, and one as a record where the holding
        // record starts.
        let mut fake = sample(9).encode();
        let mut positioned = sample(9).encode();
        seal(&mut positioned, w.current, w.len());
        fake.extend_from_slice(&positioned);
        fake.extend_from_slice(&[0xaa; 400]);
        let mut holder = Record {
            ts: 2,
            meta: vec![],
            docs: vec![([3; 12], Some(fake))],
            index: vec![],
        }
        .encode();
        let cut = holder.len() * 3 / 4;
        w.append_durable(&mut holder[..cut]).unwrap();
        drop(w);
        assert_eq!(replay(&base).unwrap(), vec![sample(1)]);
    }

    /// A segment written before records' checksums covered their position is still read,
    /// damage in it still found.
    #[test]
    fn a_segment_of_body_only_checksums_is_read_and_checked_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        let path = segment_path(&base, 1);
        let mut seg = sample(1).encode();
        seg.extend_from_slice(&sample(2).encode());
        std::fs::write(&path, &seg).unwrap();
        assert_eq!(replay(&base).unwrap(), vec![sample(1), sample(2)]);
        let mut damaged_seg = sample(1).encode();
        damaged_seg.extend_from_slice(&damaged(2));
        damaged_seg.extend_from_slice(&sample(3).encode());
        std::fs::write(&path, &damaged_seg).unwrap();
        assert!(matches!(replay(&base), Err(WalError::Corrupt { .. })));
    }

    /// A checksum that holds over a body that does not decode is damage even at the tail.
    #[test]
    fn a_record_with_a_valid_checksum_that_does_not_decode_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        let (mut w, _) = open(&base, 1 << 20);
        w.append_durable(&mut sample(1).encode()).unwrap();
        let body = [7u8; 5];
        let mut record = (body.len() as u32).to_le_bytes().to_vec();
        record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        record.extend_from_slice(&body);
        w.append_durable(&mut record).unwrap();
        drop(w);
        assert!(matches!(replay(&base), Err(WalError::Corrupt { .. })));
    }

    /// A checkpoint renames a segment out of the log before cutting it down, so a crash midway
    /// leaves nothing that looks like damage: the cut segment is deleted unread.
    #[test]
    fn a_crash_while_a_checkpoint_deletes_segments_leaves_a_readable_log() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        let (mut w, _) = open(&base, 1 << 20);
        w.append_durable(&mut sample(1).encode()).unwrap();
        w.append_durable(&mut sample(2).encode()).unwrap();
        let mut sealed = w.rotate().unwrap();
        w.append_durable(&mut sample(3).encode()).unwrap();
        drop(w);
        // What `Sealed::remove` leaves when the process dies after its first cut.
        let first = sealed.paths[0].clone();
        let doomed = log_path(&first, DELETING_SUFFIX);
        std::fs::rename(&first, &doomed).unwrap();
        let cut = sample(1).encode().len() as u64 + 3;
        OpenOptions::new()
            .write(true)
            .open(&doomed)
            .unwrap()
            .set_len(cut)
            .unwrap();
        // Left under its live name, as builds before the rename did, the cut would be taken
        // for damage (the open fails, the operator looks).
        std::fs::copy(&doomed, &first).unwrap();
        assert!(matches!(replay(&base), Err(WalError::Corrupt { .. })));
        std::fs::remove_file(&first).unwrap();
        assert_eq!(replay(&base).unwrap(), vec![sample(3)]);
        assert!(!doomed.exists());
        // And the removal itself leaves no segment behind.
        sealed.remove().unwrap();
        assert_eq!(replay(&base).unwrap(), vec![sample(3)]);
    }

    #[test]
    fn segments_replay_in_order_and_sealed_ones_are_removed_by_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        // A log from before segments existed comes first.
        let mut legacy = base.as_os_str().to_owned();
        legacy.push(".wal");
        std::fs::write(PathBuf::from(&legacy), sample(1).encode()).unwrap();
        let mut sealed = {
            let (mut w, recs) = open(&base, 1 << 20);
            assert_eq!(recs, vec![sample(1)]);
            w.append_durable(&mut sample(2).encode()).unwrap();
            let sealed = w.rotate().unwrap();
            w.append_durable(&mut sample(3).encode()).unwrap();
            assert_eq!(w.len(), sample(3).encode().len() as u64);
            sealed
        };
        // Reopened before the checkpoint: everything is still there, in order.
        let (_, recs) = open(&base, 1 << 20);
        assert_eq!(recs, vec![sample(1), sample(2), sample(3)]);
        sealed.remove().unwrap();
        let (_, recs) = open(&base, 1 << 20);
        assert_eq!(recs, vec![sample(3)]);
        assert!(!PathBuf::from(&legacy).exists());
    }

    /// Closing the log stops its background zero-fill and deletes the file, so nothing goes on
    /// writing after a close; a reopened log's fills use names of their own.
    #[test]
    fn dropping_the_log_stops_its_zero_fill() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        let (mut w, _) = open(&base, 1 << 20);
        // Large enough that the paced fill is still running when the log is dropped.
        let filling = Filling::start(&base, 256 << 20).unwrap();
        let (path, stop) = (filling.path.clone(), filling.stop.clone());
        w.next = Some(filling);
        while !path.exists() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(w);
        // The thread has ended (it held the other reference) and its file is gone.
        assert_eq!(Arc::strong_count(&stop), 1);
        assert!(!path.exists());
        let (mut w, _) = open(&base, 1 << 20);
        let filling = Filling::start(&base, 4096).unwrap();
        assert_ne!(filling.path, path);
        w.next = Some(filling);
    }

    /// redb's file, log segments (zero-filled or not) and zero-fills in progress are created
    /// readable by their owner only, whatever the umask lets through.
    #[test]
    fn files_are_created_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: umask takes no pointers. 022, the usual default, lets group and others read.
        let previous = unsafe { libc::umask(0o022) };
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        // redb's file and a zero-filled first segment.
        drop(crate::storage::Storage::open(&base).unwrap());
        let (mut w, _) = open(&base, 1 << 20);
        // A zero-fill, left under its temporary name.
        let (_file, filling) = Filling::start(&base, 4096).unwrap().join().unwrap();
        // No fill prepared: the next segment is created empty.
        drop(w.rotate().unwrap());
        drop(w);
        // SAFETY: as above.
        unsafe { libc::umask(previous) };
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert!(files.len() >= 4, "{files:?}");
        assert!(filling.exists());
        for entry in files {
            let mode = entry.metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{:?} has mode {mode:o}", entry.path());
        }
    }

    #[test]
    fn a_large_sealed_segment_is_removed_in_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("w.redb");
        let path = segment_path(&base, 7);
        let file = File::create(&path).unwrap();
        file.set_len(2 * REMOVE_STEP + 1).unwrap();
        drop(file);
        Sealed {
            base: base.clone(),
            paths: vec![path.clone(), segment_path(&base, 8)],
        }
        .remove()
        .unwrap();
        assert!(!path.exists());
    }
}
