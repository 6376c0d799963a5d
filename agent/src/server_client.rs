//! gRPC client for the server's node API over TLS.
//!
//! The server is authenticated by its SVID (`spiffe://<td>/tessera/server`) against our
//! current bundle; the agent authenticates with its own SVID once it has one. The channel
//! connects lazily and reconnects by itself, so a server outage shows up as failing calls,
//! not as a broken client. Given several server addresses, each (re)connection dials them
//! in turn, starting with the one that last worked (see [`dial_order`]), so an agent whose
//! server went away is on another one at its next call.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::proto::tessera::node_client::NodeClient;
use common::{BundleCell, SpiffeId, TrustDomain, X509Svid};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tonic::transport::{Channel, Endpoint};

use crate::node_api::NodeApi;

/// The server's SPIFFE ID path (must match the server's own).
const SERVER_ID_PATH: &str = "/tessera/server";

/// Time one server address (DNS lookup, TCP connect, TLS handshake) has before the next
/// one is tried, so a dead host does not stall failover.
const PER_ADDRESS_TIMEOUT: Duration = Duration::from_secs(1);

/// The largest message the agent takes from the server, and the most a snapshot sent in
/// parts may add up to (see [`crate::node_api::whole_snapshots`]).
pub(crate) const MAX_SERVER_MESSAGE: usize = 64 * 1024 * 1024;

/// The index of the server address that last worked, shared by every session the agent
/// opens (`0`: none yet, else index + 1).
#[derive(Debug, Clone, Default)]
pub struct PreferredServer(Arc<AtomicUsize>);

/// The order in which to dial `len` addresses: `start` (the one that last worked) first,
/// then the following ones, wrapping around.
pub fn dial_order(len: usize, start: usize) -> impl Iterator<Item = usize> {
    let start = if len == 0 { 0 } else { start % len };
    (start..len).chain(0..start)
}

/// Why a client could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// TLS configuration failed (e.g. unusable key).
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Builds a node API client for the servers at `addresses` (tried in [`dial_order`] from
/// the one `preferred` names), presenting `svid` if given.
pub fn connect(
    addresses: &[String],
    preferred: &PreferredServer,
    td: &TrustDomain,
    bundle: BundleCell,
    svid: Option<&X509Svid>,
) -> Result<NodeClient<Channel>, ClientError> {
    let server_id =
        SpiffeId::from_parts(td, SERVER_ID_PATH).map_err(|e| ClientError::Tls(e.to_string()))?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| ClientError::Tls(e.to_string()))?
    .dangerous()
    .with_custom_certificate_verifier(common::tls::SpiffeServerVerifier::new(bundle, server_id));
    let mut tls = match svid {
        Some(s) => builder
            .with_client_auth_cert(
                s.chain().to_vec(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(s.key_pkcs8().to_vec())),
            )
            .map_err(|e| ClientError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let addresses: Arc<[String]> = addresses.into();
    let preferred = preferred.clone();
    // The URI is a placeholder; the connector dials the addresses and runs TLS itself. The
    // server name is irrelevant: the verifier checks the SPIFFE ID, not a host name.
    let channel = Endpoint::from_static("http://tessera-server")
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let connector = connector.clone();
            let addresses = Arc::clone(&addresses);
            let preferred = preferred.clone();
            async move {
                let last = preferred.0.load(Ordering::Relaxed);
                let mut error = std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "no server address configured",
                );
                for i in dial_order(addresses.len(), last.saturating_sub(1)) {
                    let address = &addresses[i];
                    match tokio::time::timeout(
                        PER_ADDRESS_TIMEOUT,
                        dial(&connector, address),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => {
                            if preferred.0.swap(i + 1, Ordering::Relaxed) != i + 1 {
                                tracing::info!(server_address = %address, "connected to server");
                            }
                            return Ok(hyper_util::rt::TokioIo::new(tls));
                        }
                        Ok(Err(e)) => error = e,
                        Err(_) => {
                            error = std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("{address}: no answer within {PER_ADDRESS_TIMEOUT:?}"),
                            );
                        }
                    }
                    tracing::debug!(server_address = %address, error = %error, "cannot reach server");
                }
                Err(error)
            }
        }));
    Ok(NodeClient::new(channel).max_decoding_message_size(MAX_SERVER_MESSAGE))
}

/// Dials every record `address` resolves to, in order, and runs TLS on the first that
/// answers.
async fn dial(
    connector: &tokio_rustls::TlsConnector,
    address: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut error = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{address} resolves to no address"),
    );
    for addr in tokio::net::lookup_host(address).await? {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => {
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("tessera-server")
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                return connector.connect(name, tcp).await;
            }
            Err(e) => error = std::io::Error::new(e.kind(), format!("{addr}: {e}")),
        }
    }
    Err(error)
}

/// The node API session currently in use, shared by the rotation worker (which replaces it
/// whenever the agent SVID changes) and the Workload API (which mints JWT-SVIDs and starts
/// tasks with it).
#[derive(Debug, Clone, Default)]
pub struct ServerLink(Arc<std::sync::RwLock<Option<Arc<dyn NodeApi>>>>);

impl ServerLink {
    /// Replaces the session.
    pub fn set(&self, node: Arc<dyn NodeApi>) {
        if let Ok(mut g) = self.0.write() {
            *g = Some(node);
        }
    }

    /// The current session, if the agent has attested.
    pub fn get(&self) -> Option<Arc<dyn NodeApi>> {
        self.0.read().ok().and_then(|g| g.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::dial_order;

    #[test]
    fn addresses_are_dialled_from_the_last_that_worked_and_wrap_around() {
        let order = |len, start| dial_order(len, start).collect::<Vec<_>>();
        assert_eq!(order(3, 0), [0, 1, 2]);
        assert_eq!(order(3, 1), [1, 2, 0]);
        assert_eq!(order(3, 2), [2, 0, 1]);
        assert_eq!(order(1, 0), [0]);
        // A stale index (fewer addresses than before) still tries every address once.
        assert_eq!(order(2, 5), [1, 0]);
        assert_eq!(order(0, 0), Vec::<usize>::new());
    }
}
