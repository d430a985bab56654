//! Files and directories the server makes for itself: the data directory, which only its own
//! user may enter (0700 on unix: it holds the database and, in development, keys anyone could
//! mint tokens with), and files in it (the development certificate and issuer key), each
//! written whole under a temporary name and hard-linked into place, so no reader sees half a
//! file, and when several starts race the first one's file wins.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Makes temporary names unique among the threads of one process (the pid tells processes
/// apart).
static TEMPORARY_NAMES: AtomicU64 = AtomicU64::new(0);

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
