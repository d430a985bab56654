//! redb's file, written back at a pace. The applier commits to redb without an fsync (the
//! log holds the batches); redb keeps those pages in its write buffer, and a checkpoint's
//! durable commit writes them all to the file and fsyncs. Left to the fsync, that is hundreds
//! of megabytes after heavy writes in one burst, and on a disk with one queue the log's small
//! fsyncs wait behind all of it: every checkpoint stalled commits for ~600 ms. So this
//! backend remembers which pages redb wrote since the last sync, and before syncing asks the
//! kernel to write them back one step at a time, waiting for each step before the next: the
//! disk queue never holds more than a step ahead of a log fsync, and the fsync itself has
//! little left to do. (PostgreSQL's `checkpoint_flush_after` does the same for its data
//! files.) Only the applier's thread waits for the steps.

use std::fs::File;
use std::io;
use std::ops::Bound;
use std::path::Path;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use roaring::RoaringTreemap;

/// Unit of the dirty-page record.
const PAGE: u64 = 4096;
/// Bytes handed to the kernel's writeback at a time: ~1.5 ms of sequential writes on the disk
/// measured here (386 MB/s), the longest a log fsync waits behind a step.
pub(crate) const STEP: u64 = 512 << 10;

#[derive(Debug)]
pub(super) struct PacedFile {
    inner: FileBackend,
    /// A second handle on the same file, for ranged writeback (the backend keeps its own).
    file: File,
    /// Pages (`PAGE` units) written since the last sync.
    dirty: parking_lot::Mutex<RoaringTreemap>,
}

impl PacedFile {
    pub fn open(path: &Path) -> io::Result<PacedFile> {
        let file = super::private_file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(PacedFile {
            inner: FileBackend::new(file).map_err(io::Error::other)?,
            file: File::open(path)?,
            dirty: parking_lot::Mutex::new(RoaringTreemap::new()),
        })
    }

    /// Writes back the pages written since the last sync, a step at a time.
    fn write_back_dirty(&self) -> io::Result<()> {
        let dirty = std::mem::take(&mut *self.dirty.lock());
        for (offset, n) in steps(dirty.iter()) {
            write_back(&self.file, offset, n)?;
        }
        Ok(())
    }
}

/// Groups dirty pages (ascending) into ranges of at most `STEP` bytes, in file order, each
/// starting and ending at a dirty page.
fn steps(pages: impl Iterator<Item = u64>) -> impl Iterator<Item = (u64, u64)> {
    let mut pages = pages.peekable();
    std::iter::from_fn(move || {
        let first = pages.next()?;
        let mut last = first;
        while let Some(&p) = pages.peek() {
            if (p + 1 - first) * PAGE > STEP {
                break;
            }
            last = p;
            pages.next();
        }
        Some((first * PAGE, (last + 1 - first) * PAGE))
    })
}

impl StorageBackend for PacedFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if let Err(e) = self.write_back_dirty() {
            // Only the pacing is lost: the fsync below still writes everything.
            tracing::warn!(error = %e, "cannot write redb's file back ahead of its fsync");
        }
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)?;
        let end = offset + data.len() as u64;
        self.dirty
            .lock()
            .insert_range(offset / PAGE..end.div_ceil(PAGE));
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// Starts writeback of the dirty pages in `[offset, offset + n)` and waits until it is done
/// (not a durability barrier: the fsync after it is).
#[cfg(target_os = "linux")]
pub(crate) fn write_back(file: &File, offset: u64, n: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (Ok(offset), Ok(n)) = (i64::try_from(offset), i64::try_from(n)) else {
        return Err(io::Error::other("file range beyond i64"));
    };
    // SAFETY: the descriptor is open for as long as `file` is borrowed, and
    // `sync_file_range` reads no memory of ours.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset, n, flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere there is no ranged writeback; the fsync writes everything at once.
#[cfg(not(target_os = "linux"))]
pub(crate) fn write_back(_file: &File, _offset: u64, _n: u64) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Every dirty page is in exactly one step, steps are in file order, no longer than
        /// `STEP`, and start and end at dirty pages.
        #[test]
        fn steps_cover_every_dirty_page_once(pages in proptest::collection::btree_set(0u64..4096, 0..300)) {
            let mut covered = Vec::new();
            let mut previous_end = 0;
            for (offset, n) in steps(pages.iter().copied()) {
                proptest::prop_assert!(n > 0 && n <= STEP && offset >= previous_end);
                proptest::prop_assert!(pages.contains(&(offset / PAGE)));
                proptest::prop_assert!(pages.contains(&((offset + n) / PAGE - 1)));
                covered.extend(pages.range(offset / PAGE..(offset + n) / PAGE).copied());
                previous_end = offset + n;
            }
            proptest::prop_assert_eq!(covered, pages.iter().copied().collect::<Vec<_>>());
        }
    }

    #[test]
    fn writes_are_remembered_until_the_sync_writes_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = PacedFile::open(&dir.path().join("f")).unwrap();
        f.set_len(10 * PAGE).unwrap();
        f.write(PAGE + 100, &[1; 5000]).unwrap();
        f.write(7 * PAGE, &[2; 10]).unwrap();
        let dirty: Vec<u64> = f.dirty.lock().iter().collect();
        assert_eq!(dirty, vec![1, 2, 7]);
        f.sync_data().unwrap();
        assert!(f.dirty.lock().is_empty());
        let mut out = [0u8; 10];
        f.read(7 * PAGE, &mut out).unwrap();
        assert_eq!(out, [2; 10]);
    }
}
