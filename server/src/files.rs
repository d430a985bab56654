//! Files and directories the server makes for itself: the data directory, which only its own
//! user may enter (0700 on unix: it holds the database and, in development, keys anyone could
//! mint tokens with), and files in it (the development certificate and issuer key), each
//! written whole under a temporary name and hard-linked into place, so no reader sees half a
//! file, and when several starts race the first one's file wins. Also the bounded read of
//! the files an operator hands it (configuration, certificates, secrets).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes temporary names unique among the threads of one process (the pid tells processes
/// apart).
static TEMPORARY_NAMES: AtomicU64 = AtomicU64::new(0);

/// The contents of the file at `path` if it holds at most `max_bytes`, `Ok(None)` if more. At
/// most `max_bytes + 1` bytes are read, so a file that grows meanwhile cannot make it read
/// more.
pub(crate) fn read_at_most(path: &Path, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max_bytes).then_some(bytes))
}

/// `read_at_most` for a text file: one that is not UTF-8 is an `InvalidData` error, as
/// `fs::read_to_string` gives.
pub(crate) fn read_text_at_most(path: &Path, max_bytes: u64) -> io::Result<Option<String>> {
    read_at_most(path, max_bytes)?
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        })
        .transpose()
}

/// Writes `contents` to `path` unless something is there already; returns whether this call
/// made it. `private` files are readable by their owner only (0600 on unix).
pub(crate) fn create_once(path: &Path, contents: &[u8], private: bool) -> io::Result<bool> {
    let tmp = temporary_name(path)?;
    let written = write_new(&tmp, contents, private);
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    // The temporary name is only a staging area; failing to remove it loses nothing.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `path` and its missing parents, private to this user (0700 on unix). One that
/// exists already is left as it is.
pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

fn temporary_name(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a file path must end in a name",
        )
    })?;
    let n = TEMPORARY_NAMES.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(
        ".{}.{}.{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn write_new(path: &Path, contents: &[u8], private: bool) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_writer_wins_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.pem");
        assert!(create_once(&path, b"first", true).unwrap());
        assert!(!create_once(&path, b"second", true).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
