//! Unix socket binding with the same rules for every daemon socket: the parent directory
//! is created with the given mode when missing, a stale socket file left by a crash is
//! replaced (a live one — something answers on it — is refused), and the socket's own mode
//! is set explicitly rather than left to the umask.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why a socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process is serving this socket.
    #[error("another process is already serving {0}")]
    InUse(PathBuf),
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
pub fn bind_unix(
    path: &Path,
    dir_mode: u32,
    socket_mode: u32,
) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))
            .map_err(io("setting the mode of", dir))?;
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

/// A gRPC channel to the server listening on the Unix socket at `path` (the admin API,
/// the Workload API). Fails at once when nothing answers there.
pub async fn connect_unix(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is a placeholder: the connector always dials the Unix socket.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
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
}
