//! gRPC client for the server's node API over TLS.
//!
//! The server is authenticated by its SVID (`spiffe://<td>/tessera/server`) against our
//! current bundle; the agent authenticates with its own SVID once it has one. The channel
//! connects lazily and reconnects by itself, so a server outage shows up as failing calls,
//! not as a broken client.

use std::sync::Arc;

use common::proto::tessera::node_client::NodeClient;
use common::{BundleCell, SpiffeId, TrustDomain, X509Svid};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tonic::transport::{Channel, Endpoint};

use crate::node_api::NodeApi;

/// The server's SPIFFE ID path (must match the server's own).
const SERVER_ID_PATH: &str = "/tessera/server";

/// Why a client could not be built.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// TLS configuration failed (e.g. unusable key).
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Builds a node API client for `address`, presenting `svid` if given.
pub fn connect(
    address: &str,
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
    let address = address.to_owned();
    // The URI is a placeholder; the connector dials `address` and runs TLS itself. The
    // server name is irrelevant: the verifier checks the SPIFFE ID, not a host name.
    let channel = Endpoint::from_static("http://tessera-server")
        .connect_timeout(std::time::Duration::from_secs(10))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let connector = connector.clone();
            let address = address.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from("tessera-server")
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }));
    Ok(NodeClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
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
