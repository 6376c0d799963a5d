//! The server's own TLS identity: an X.509-SVID for `spiffe://<td>/tessera/server`, signed
//! by our CA, renewed at half-life, and handed to rustls through a resolver so renewal
//! needs no listener restart. Agents authenticate the server by exactly this SPIFFE ID.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use common::{SpiffeId, TrustDomain};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

use crate::ca::CaError;
use crate::ca::rotation::CaSet;

/// The path of the server's SPIFFE ID within the trust domain.
pub const SERVER_ID_PATH: &str = "/tessera/server";

/// Retry delay when renewal fails.
const RETRY: Duration = Duration::from_secs(5);

/// The server's current certificate and key.
pub(crate) struct ServerIdentity {
    ca: Arc<CaSet>,
    id: SpiffeId,
    ttl: Duration,
    current: RwLock<Arc<CertifiedKey>>,
    refresh_at: RwLock<SystemTime>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("id", &self.id.as_str())
            .finish_non_exhaustive()
    }
}

/// The server's SPIFFE ID in `td`.
pub fn server_id(td: &TrustDomain) -> Result<SpiffeId, common::SpiffeIdError> {
    SpiffeId::from_parts(td, SERVER_ID_PATH)
}

fn issue(
    ca: &CaSet,
    id: &SpiffeId,
    ttl: Duration,
) -> Result<(Arc<CertifiedKey>, SystemTime), CaError> {
    let key = common::svid::generate_key().map_err(|e| CaError::Signing(e.to_string()))?;
    let csr = common::svid::csr_for(&key).map_err(|e| CaError::Signing(e.to_string()))?;
    let issued = ca.sign_svid(&csr, id, ttl, &["localhost".to_owned()])?;
    let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::sign::any_ecdsa_type(&pkcs8)
        .map_err(|e| CaError::Signing(e.to_string()))?;
    let leaf =
        common::svid::parse_leaf(issued.chain.first().map(|c| c.as_ref()).unwrap_or_default())
            .map_err(|e| CaError::Signing(e.to_string()))?;
    let refresh = common::svid::refresh_at(&leaf);
    Ok((Arc::new(CertifiedKey::new(issued.chain, signing)), refresh))
}

impl ServerIdentity {
    /// Issues the first certificate.
    pub(crate) fn new(
        ca: Arc<CaSet>,
        td: &TrustDomain,
        ttl: Duration,
    ) -> Result<Arc<Self>, CaError> {
        let id = server_id(td).map_err(|e| CaError::BadName(e.to_string()))?;
        let (ck, refresh) = issue(&ca, &id, ttl)?;
        Ok(Arc::new(Self {
            ca,
            id,
            ttl,
            current: RwLock::new(ck),
            refresh_at: RwLock::new(refresh),
        }))
    }

    pub(crate) fn renew(&self) -> Result<(), CaError> {
        let (ck, refresh) = issue(&self.ca, &self.id, self.ttl)?;
        if let Ok(mut g) = self.current.write() {
            *g = ck;
        }
        if let Ok(mut g) = self.refresh_at.write() {
            *g = refresh;
        }
        tracing::info!(spiffe_id = %self.id, "server certificate renewed");
        Ok(())
    }

    /// Renews the certificate at half-life until shutdown.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let at = self
                .refresh_at
                .read()
                .map(|g| *g)
                .unwrap_or_else(|_| SystemTime::now());
            let wait = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if let Err(e) = self.renew() {
                tracing::error!(error = %e, "server certificate renewal failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|g| Arc::clone(&g))
    }
}
