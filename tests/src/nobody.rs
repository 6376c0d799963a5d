//! Running a workspace binary as `nobody` (uid and gid 65534), the "other user" of the
//! suites that check what a second local user may and may not do.
//!
//! `nobody` needs search permission on every directory above a binary to run it. A checkout
//! under a private directory (say a clone under `mktemp -d`, mode 0700) does not give it,
//! and the child would fail with EACCES before doing anything, which a test expecting a
//! refusal could even mistake for one. [`bin_for_nobody`] therefore checks the path first
//! and, where `nobody` cannot reach the binary, runs a hard link or copy of it placed in a
//! world-searchable temp directory (one per source binary, refreshed when it is rebuilt).
//! [`assert_nobody_can_reach`] says clearly when a socket is out of `nobody`'s reach.

use std::collections::BTreeMap;
use std::hash::{Hash as _, Hasher as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::bin;

/// Uid and gid of `nobody` (and of its group `nogroup`).
pub const NOBODY: u32 = 65534;

const SEARCH: u32 = 0o1;

/// Whether `nobody` (uid and gid [`NOBODY`], no other groups) has `bits` (rwx as 0o4/0o2/0o1)
/// on a file with this owner and mode.
fn nobody_may(meta: &std::fs::Metadata, bits: u32) -> bool {
    let mode = meta.mode();
    let granted = if meta.uid() == NOBODY {
        mode >> 6
    } else if meta.gid() == NOBODY {
        mode >> 3
    } else {
        mode
    };
    granted & bits == bits
}

/// The first directory (from `/` down) above `path` that `nobody` cannot search, if any.
pub fn first_unreachable_dir(path: &Path) -> Option<PathBuf> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let parent = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_owned());
    let mut dirs: Vec<&Path> = parent.ancestors().collect();
    dirs.reverse();
    dirs.into_iter()
        .find(|d| std::fs::metadata(d).map_or(true, |m| !nobody_may(&m, SEARCH)))
        .map(Path::to_owned)
}

/// Fails the test, saying why, unless `nobody` can reach `path` (search permission on every
/// directory above it). Whether it may then open `path` is for the test to find out.
pub fn assert_nobody_can_reach(path: &Path) {
    if let Some(dir) = first_unreachable_dir(path) {
        panic!(
            "user nobody (uid {NOBODY}) cannot reach {}: {} is not searchable by it (mode {:o}). \
             This test needs a world-searchable temp directory: set TMPDIR to one (e.g. /tmp).",
            path.display(),
            dir.display(),
            std::fs::metadata(&dir).map_or(0, |m| m.mode() & 0o7777),
        );
    }
}

/// The path to run workspace binary `name` from as `nobody`: [`bin`]`(name)` itself when
/// `nobody` can reach and execute it, otherwise a hard link or copy of it in a
/// world-searchable temp directory.
pub fn bin_for_nobody(name: &str) -> PathBuf {
    static PLACED: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let src = bin(name);
    let src_meta = std::fs::metadata(&src).expect("stat binary");
    if first_unreachable_dir(&src).is_none() && nobody_may(&src_meta, SEARCH) {
        return src;
    }
    let mut placed = PLACED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = placed.get(name) {
        return p.clone();
    }
    let dest = place_for_nobody(&src, &src_meta, name);
    placed.insert(name.to_owned(), dest.clone());
    dest
}

/// Puts a copy of `src` where `nobody` can run it; see [`bin_for_nobody`].
fn place_for_nobody(src: &Path, src_meta: &std::fs::Metadata, name: &str) -> PathBuf {
    let candidates = [std::env::temp_dir(), PathBuf::from("/tmp")];
    let Some(tmp) = candidates
        .iter()
        .find(|d| d.is_dir() && first_unreachable_dir(&d.join("x")).is_none())
    else {
        panic!(
            "user nobody (uid {NOBODY}) cannot run {}: {} is not searchable by it, and \
             neither {} nor /tmp is a world-searchable directory to copy the binary to. \
             Make the checkout's parent directories searchable (chmod o+x) or point TMPDIR \
             at a world-searchable directory.",
            src.display(),
            first_unreachable_dir(src)
                .unwrap_or_else(|| src.to_owned())
                .display(),
            candidates[0].display(),
        );
    };
    // One directory per source binary, so runs from several checkouts do not collide and
    // repeated runs reuse (and refresh) the same copy.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    src.hash(&mut h);
    let me = nix::unistd::geteuid().as_raw();
    let dir = tmp.join(format!("tessera-e2e-bin-{me}-{:016x}", h.finish()));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("create {}: {e}", dir.display()),
    }
    let dir_meta = std::fs::symlink_metadata(&dir).expect("stat copy directory");
    assert!(
        dir_meta.is_dir() && dir_meta.uid() == me,
        "{} exists and is not a directory of ours: refusing to run a binary from it",
        dir.display()
    );
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .expect("chmod copy directory");

    let dest = dir.join(name);
    let same = |m: &std::fs::Metadata| {
        m.len() == src_meta.len()
            && m.modified().ok() == src_meta.modified().ok()
            && nobody_may(m, SEARCH)
    };
    if std::fs::metadata(&dest).is_ok_and(|m| same(&m)) {
        return dest;
    }
    // Build the new file beside the old one and rename it over: a run in progress keeps
    // the inode it started.
    let staging = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let linked = nobody_may(src_meta, SEARCH) && std::fs::hard_link(src, &staging).is_ok();
    if !linked {
        std::fs::copy(src, &staging)
            .unwrap_or_else(|e| panic!("copy {} for nobody: {e}", src.display()));
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))
            .expect("chmod copy");
        let modified = src_meta.modified().expect("binary mtime");
        std::fs::File::options()
            .write(true)
            .open(&staging)
            .and_then(|f| f.set_modified(modified))
            .expect("set copy mtime");
    }
    std::fs::rename(&staging, &dest).unwrap_or_else(|e| panic!("rename {}: {e}", dest.display()));
    eprintln!(
        "{} is out of reach of user nobody; running it from {} ({})",
        src.display(),
        dest.display(),
        if linked { "hard link" } else { "copy" }
    );
    dest
}

/// A command running workspace binary `name` as uid and gid `nobody`, from `/`.
pub fn command_as_nobody(name: &str) -> Command {
    let mut cmd = Command::new(bin_for_nobody(name));
    cmd.uid(NOBODY).gid(NOBODY).current_dir("/");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_is_out_of_reach() {
        let outer = tempfile::tempdir().unwrap();
        let inner = outer.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        let file = inner.join("file");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Whatever is out of reach above the temp dir stays so (TMPDIR may be private).
        let above = first_unreachable_dir(outer.path());

        std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let outer_canon = std::fs::canonicalize(outer.path()).unwrap();
        assert_eq!(
            first_unreachable_dir(&file),
            above.clone().or(Some(outer_canon))
        );

        std::fs::set_permissions(outer.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(first_unreachable_dir(&file), above);
    }
}
