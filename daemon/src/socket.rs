//! Unix socket binding with the same rules for every daemon socket: the parent directory
//! is created with the given mode when missing and must otherwise be one only this
//! process's user (or root) can change, a stale socket file left by a crash is replaced (a
//! live one — something answers on it — is refused), and the socket's own mode is set
//! explicitly rather than left to the umask. Clients check who answers
//! ([`connect_unix_checked`]).

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The system runtime directory: where root daemons keep their sockets (not `/tmp`,
/// where any user may create the directory first).
pub const SYSTEM_RUNTIME_DIR: &str = "/run";

/// The default path of a daemon's socket `relative` (e.g. `tessera-server/admin.sock`)
/// for the daemon itself: under `/run` for root; under `$XDG_RUNTIME_DIR` (private to the
/// user) for anyone else when it is set to an absolute path, else under `/run` (where an
/// unprivileged daemon cannot create it and says so: give it a path).
pub fn default_daemon_socket(relative: &str) -> PathBuf {
    daemon_socket_in(
        relative,
        nix::unistd::geteuid().is_root(),
        user_runtime_dir(std::env::var_os("XDG_RUNTIME_DIR")),
    )
}

/// The default path of a daemon's socket `relative` for a client: the caller's own
/// runtime directory when a socket is there (a daemon run by the same unprivileged user),
/// else the system one.
pub fn default_client_socket(relative: &str) -> PathBuf {
    client_socket_in(
        relative,
        user_runtime_dir(std::env::var_os("XDG_RUNTIME_DIR")),
    )
}

fn daemon_socket_in(relative: &str, root: bool, user_dir: Option<PathBuf>) -> PathBuf {
    match user_dir {
        Some(dir) if !root => dir.join(relative),
        _ => Path::new(SYSTEM_RUNTIME_DIR).join(relative),
    }
}

fn client_socket_in(relative: &str, user_dir: Option<PathBuf>) -> PathBuf {
    user_dir
        .map(|d| d.join(relative))
        .filter(|p| p.exists())
        .unwrap_or_else(|| Path::new(SYSTEM_RUNTIME_DIR).join(relative))
}

/// `$XDG_RUNTIME_DIR` when it is an absolute path.
fn user_runtime_dir(var: Option<std::ffi::OsString>) -> Option<PathBuf> {
    var.map(PathBuf::from).filter(|d| d.is_absolute())
}

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process is serving this socket.
    #[error("another process is already serving {0}")]
    InUse(PathBuf),
    /// The socket's directory, or one above it, could be changed by another user, who could
    /// then move the socket aside and answer in its place.
    #[error(
        "{path} {why}: another user could replace the socket; fix its owner or mode, or \
         choose another socket path"
    )]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A filesystem step failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.to_owned();
    move |source| SocketError::Io { step, path, source }
}

/// Binds `path`, creating its directory with `dir_mode` if needed and setting the socket
/// to `socket_mode`. Must be called inside a tokio runtime.
///
/// Refuses ([`SocketError::UnsafeDirectory`]) a directory that another user could change:
/// the socket's directory must be owned by this process's effective user or root and not
/// writable by group or others; every directory above it must be owned by one of those
/// two and, if others may write to it, sticky (like `/tmp`), so nobody else can rename
/// anything on the way. A directory that another user created in advance (to squat the
/// socket) therefore stops the daemon instead of serving through it.
pub fn bind_unix(
    path: &Path,
    dir_mode: u32,
    socket_mode: u32,
) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))
                .map_err(io("setting the mode of", dir))?;
        }
        check_directories(dir, nix::unistd::geteuid().as_raw())?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io("removing stale socket", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io("binding", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))
        .map_err(io("setting the mode of", path))?;
    Ok(listener)
}

/// Checks that `dir` (the socket's directory) and every directory above it can be changed
/// only by `uid` or root (see [`bind_unix`]).
fn check_directories(dir: &Path, uid: u32) -> Result<(), SocketError> {
    let dir = std::fs::canonicalize(dir).map_err(io("resolving", dir))?;
    let unsafe_dir = |path: &Path, why: String| SocketError::UnsafeDirectory {
        path: path.to_owned(),
        why,
    };
    for (depth, d) in dir.ancestors().enumerate() {
        let meta = std::fs::metadata(d).map_err(io("inspecting", d))?;
        let (owner, mode) = (meta.uid(), meta.mode());
        if owner != uid && owner != 0 {
            return Err(unsafe_dir(
                d,
                format!("is owned by uid {owner}, not by this process's user (uid {uid}) or root"),
            ));
        }
        let writable_by_others = mode & 0o022 != 0;
        if depth == 0 && writable_by_others {
            return Err(unsafe_dir(
                d,
                format!("is writable by group or others (mode {:o})", mode & 0o7777),
            ));
        }
        if writable_by_others && mode & 0o1000 == 0 {
            return Err(unsafe_dir(
                d,
                format!(
                    "is writable by group or others and not sticky (mode {:o})",
                    mode & 0o7777
                ),
            ));
        }
    }
    Ok(())
}

/// `NAME (uid N)`.
fn describe(uid: u32) -> String {
    format!("{} (uid {uid})", crate::users::user_name(uid))
}

/// A gRPC channel to the server listening on the Unix socket at `path` (the admin API,
/// the Workload API). Fails at once when nothing answers there.
pub async fn connect_unix(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    connect_unix_checked(path, None).await
}

/// Like [`connect_unix`], but when `trusted_uids` is given, refuses (before sending
/// anything) a socket whose listening process does not run as one of those uids, by the
/// kernel's peer credentials: whoever squatted the path cannot answer in the daemon's
/// place.
pub async fn connect_unix_checked(
    path: &Path,
    trusted_uids: Option<&[u32]>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_owned();
    let trusted = trusted_uids.map(<[u32]>::to_vec);
    // The URI is a placeholder: the connector always dials the Unix socket.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            let trusted = trusted.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                if let Some(trusted) = &trusted {
                    let uid = stream.peer_cred()?.uid();
                    if !trusted.contains(&uid) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!(
                                "the process answering there runs as {}, not as a trusted \
                                 user ({}): refusing to talk to it",
                                describe(uid),
                                trusted
                                    .iter()
                                    .map(|u| describe(*u))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_replaced_live_socket_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api.sock");
        let first = bind_unix(&path, 0o700, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        assert!(matches!(
            bind_unix(&path, 0o700, 0o600),
            Err(SocketError::InUse(_))
        ));
        drop(first);
        // The file is still there (a crash leaves it): it is replaced.
        assert!(path.exists());
        bind_unix(&path, 0o700, 0o666).unwrap();
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn refused(path: &Path, want: &str) {
        match bind_unix(path, 0o700, 0o600) {
            Err(e @ SocketError::UnsafeDirectory { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(want), "{msg}");
            }
            other => panic!("{} was not refused: {other:?}", path.display()),
        }
        assert!(!path.exists(), "nothing bound at {}", path.display());
    }

    #[tokio::test]
    async fn a_directory_others_can_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        // The socket's own directory: writable by others, even when sticky.
        set_mode(&sub, 0o777);
        refused(
            &sub.join("a.sock"),
            "is writable by group or others (mode 777)",
        );
        set_mode(&sub, 0o1770);
        refused(
            &sub.join("a.sock"),
            "is writable by group or others (mode 1770)",
        );
        // A directory above it: writable by others without the sticky bit.
        set_mode(&sub, 0o757);
        std::fs::create_dir(sub.join("inner")).unwrap();
        refused(
            &sub.join("inner/a.sock"),
            "is writable by group or others and not sticky (mode 757)",
        );
        // Sticky above (like /tmp) and private below: accepted.
        set_mode(&sub, 0o1777);
        bind_unix(&sub.join("inner/a.sock"), 0o700, 0o600).unwrap();
    }

    #[tokio::test]
    async fn a_directory_owned_by_another_user_is_refused() {
        let me = nix::unistd::geteuid();
        let other = if me.is_root() { 65534 } else { 0 };
        let dir = tempfile::tempdir().unwrap();
        let squatted = dir.path().join("tessera-server");
        std::fs::create_dir(&squatted).unwrap();
        set_mode(&squatted, 0o755);
        if me.is_root() {
            nix::unistd::chown(&squatted, Some(nix::unistd::Uid::from_raw(other)), None).unwrap();
            refused(
                &squatted.join("admin.sock"),
                "is owned by uid 65534, not by this process's user (uid 0) or root",
            );
        }
        // Owned by root or by this user: accepted.
        nix::unistd::chown(&squatted, Some(me), None).unwrap();
        bind_unix(&squatted.join("admin.sock"), 0o700, 0o600).unwrap();
    }

    #[test]
    fn default_sockets_are_under_run_or_the_users_runtime_directory() {
        let rel = "tessera-server/admin.sock";
        let run = Path::new("/run/tessera-server/admin.sock");
        let user = tempfile::tempdir().unwrap();
        let mine = user.path().join(rel);
        // The daemon: root always under /run; another user under its runtime directory.
        assert_eq!(daemon_socket_in(rel, true, Some(user.path().into())), run);
        assert_eq!(daemon_socket_in(rel, false, Some(user.path().into())), mine);
        assert_eq!(daemon_socket_in(rel, false, None), run);
        // The client: its own runtime directory only when a socket is there.
        assert_eq!(client_socket_in(rel, Some(user.path().into())), run);
        std::fs::create_dir_all(mine.parent().unwrap()).unwrap();
        std::fs::write(&mine, b"").unwrap();
        assert_eq!(client_socket_in(rel, Some(user.path().into())), mine);
        assert_eq!(client_socket_in(rel, None), run);
        // Only an absolute $XDG_RUNTIME_DIR counts.
        assert_eq!(
            user_runtime_dir(Some("/run/user/1000".into())),
            Some(PathBuf::from("/run/user/1000"))
        );
        assert_eq!(user_runtime_dir(Some("relative".into())), None);
        assert_eq!(user_runtime_dir(None), None);
        assert!(default_daemon_socket(rel).ends_with(rel));
        assert!(default_client_socket(rel).ends_with(rel));
    }

    #[test]
    fn a_directory_owned_by_root_or_the_user_is_accepted_for_that_user() {
        let dir = tempfile::tempdir().unwrap();
        let owner = std::fs::metadata(dir.path()).unwrap().uid();
        // Owned by this process's user: accepted for it, and (unless that is root) refused
        // for a third user.
        check_directories(dir.path(), owner).unwrap();
        if owner == 0 {
            // Root-owned directories are accepted for any user.
            check_directories(dir.path(), 4242).unwrap();
            nix::unistd::chown(dir.path(), Some(nix::unistd::Uid::from_raw(4242)), None).unwrap();
            check_directories(dir.path(), 4242).unwrap();
            assert!(matches!(
                check_directories(dir.path(), 4343),
                Err(SocketError::UnsafeDirectory { .. })
            ));
        }
    }

    #[tokio::test]
    async fn clients_refuse_a_socket_served_by_an_untrusted_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/api.sock");
        let _listener = bind_unix(&path, 0o700, 0o600).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let other = me.wrapping_add(1);
        let err = connect_unix_checked(&path, Some(&[other]))
            .await
            .unwrap_err();
        let msg = format!("{:?}", anyhow_chain(&err));
        assert!(
            msg.contains(&format!(
                "runs as {} (uid {me})",
                crate::users::user_name(me)
            )) && msg.contains("refusing to talk to it"),
            "{msg}"
        );
        connect_unix_checked(&path, Some(&[other, me]))
            .await
            .unwrap();
        connect_unix_checked(&path, None).await.unwrap();
    }

    fn anyhow_chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut cur = e.source();
        while let Some(s) = cur {
            out.push(s.to_string());
            cur = s.source();
        }
        out
    }
}
