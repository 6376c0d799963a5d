//! Crash-safe state files: write to a temporary file in the same directory, fsync, set
//! the mode, rename over the target, fsync the directory. A crash leaves either the old
//! or the new file, never a torn one.

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Atomically replaces `path` with `contents`, with permission bits `mode` (e.g. 0o600).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    write_atomic_with(path, mode, |w| w.write_all(contents))
}

/// Atomically replaces `path` with what `write` writes (buffered), with permission bits
/// `mode`: for contents too large to build in memory first. `write` returns before the
/// file is flushed to disk, so whatever it borrows or owns is released before the fsync.
/// On error the temporary file is removed and `path` is left as it was.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it explicitly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        let mut w = std::io::BufWriter::new(f);
        write(&mut w)?;
        let f = w
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn streamed_writes_keep_mode_and_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cache.pb");
        write_atomic_with(&p, 0o600, |w| {
            for chunk in [&b"one "[..], b"two"] {
                w.write_all(chunk)?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A writer that fails half-way leaves the old file and no temporary file.
        let failed = write_atomic_with(&p, 0o600, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("encoder failed"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"one two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
