//! The SPIFFE Workload API (`SpiffeWorkloadAPI`) on the agent's Unix socket.
//!
//! Every call must carry exactly one `workload.spiffe.io: true` header (else
//! `InvalidArgument`). The caller is attested from the kernel's view of the connection
//! (SO_PEERCRED, then /proc pinned to the process instance), once per call. Streams send
//! their first message at once and a complete new message on every change of what the
//! caller is entitled to; a caller with no matching entry gets `PermissionDenied` with
//! "no identity issued" (the text real clients look for). Errors never echo selectors.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::SelectorSet;
use common::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use common::proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::attestation::{Attestor, PeerCred};
use crate::cache::{Cache, CacheSnapshot};

/// The security header every Workload API request must carry.
const SECURITY_HEADER: &str = "workload.spiffe.io";
/// Message real clients match on to recognise "not (yet) registered".
const NO_IDENTITY: &str = "no identity issued";
/// Longest time attestation of one caller may take.
const ATTESTATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stream waits for a matching entry's first SVID before giving up.
const PENDING_TIMEOUT: Duration = Duration::from_secs(30);

/// The Workload API service.
#[derive(Debug, Clone)]
pub(crate) struct WorkloadApi {
    pub(crate) cache: Cache,
    pub(crate) attestor: Arc<Attestor>,
    pub(crate) shutdown: CancellationToken,
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    let mut values = req.metadata().get_all(SECURITY_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl WorkloadApi {
    /// Attests the caller of `req` (off the async runtime: it reads /proc and may hash).
    async fn attest<T>(&self, req: &Request<T>) -> Result<SelectorSet, Status> {
        let cred = req
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .ok_or_else(|| Status::unavailable("workload attestation failed"))?;
        let peer = PeerCred {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let attestor = Arc::clone(&self.attestor);
        let job = tokio::task::spawn_blocking(move || attestor.attest(peer));
        match tokio::time::timeout(ATTESTATION_TIMEOUT, job).await {
            Ok(Ok(Ok(selectors))) => Ok(selectors),
            Ok(Ok(Err(e))) => {
                tracing::warn!(pid = ?peer.pid, uid = peer.uid, error = %e, "workload attestation failed");
                Err(Status::unavailable("workload attestation failed"))
            }
            Ok(Err(join)) => {
                tracing::error!(error = %join, "BUG: attestation task failed");
                Err(Status::unavailable("workload attestation failed"))
            }
            Err(_) => {
                tracing::warn!(pid = ?peer.pid, "workload attestation timed out");
                Err(Status::unavailable("workload attestation failed"))
            }
        }
    }

    /// Streams `render(snapshot)` to the caller: at once, then whenever it changes.
    ///
    /// `render` returns `Ok(None)` while a matching entry's SVID is still being issued.
    fn stream<T, F>(&self, selectors: SelectorSet, render: F) -> BoxStream<T>
    where
        T: Send + PartialEq + Clone + 'static,
        F: Fn(&CacheSnapshot, &SelectorSet) -> Result<Option<T>, Status> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(4);
        let mut watch: watch::Receiver<Arc<CacheSnapshot>> = self.cache.subscribe();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut last: Option<T> = None;
            let started = tokio::time::Instant::now();
            loop {
                let snap = Arc::clone(&watch.borrow_and_update());
                let result = if snap.synced {
                    render(&snap, &selectors)
                } else {
                    Ok(None)
                };
                match result {
                    Ok(Some(msg)) => {
                        if last.as_ref() != Some(&msg) {
                            last = Some(msg.clone());
                            if tx.send(Ok(msg)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) if last.is_none() && started.elapsed() >= PENDING_TIMEOUT => {
                        let _ = tx
                            .send(Err(Status::unavailable("identity not yet available")))
                            .await;
                        return;
                    }
                    Ok(None) => {}
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
                let pending = last.is_none();
                tokio::select! {
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => return,
                    changed = watch.changed() => if changed.is_err() { return },
                    // Re-render now and then: an SVID may have expired without any change.
                    () = tokio::time::sleep(if pending { Duration::from_secs(1) } else { Duration::from_secs(30) }) => {}
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

fn bundles_map(snap: &CacheSnapshot) -> std::collections::HashMap<String, Vec<u8>> {
    snap.bundle
        .iter()
        .filter(|b| !b.x509_authorities().is_empty())
        .map(|b| (b.trust_domain().id_string(), b.der_concat()))
        .collect()
}

/// The X.509-SVID message for a caller, `None` while pending.
pub(crate) fn render_x509(
    snap: &CacheSnapshot,
    selectors: &SelectorSet,
) -> Result<Option<X509svidResponse>, Status> {
    let ids = snap.identities(selectors, SystemTime::now());
    if !ids.matched {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let Some(bundle) = snap
        .bundle
        .as_ref()
        .filter(|b| !b.x509_authorities().is_empty())
    else {
        return Ok(None);
    };
    if ids.svids.is_empty() {
        return Ok(None);
    }
    let bundle_der = bundle.der_concat();
    let svids = ids
        .svids
        .iter()
        .map(|(s, hint)| X509svid {
            spiffe_id: s.spiffe_id().to_string(),
            x509_svid: s.chain_der_concat(),
            x509_svid_key: s.key_pkcs8().to_vec(),
            bundle: bundle_der.clone(),
            hint: hint.clone(),
        })
        .collect();
    Ok(Some(X509svidResponse {
        svids,
        crl: vec![],
        federated_bundles: Default::default(),
    }))
}

fn render_bundles(
    snap: &CacheSnapshot,
    selectors: &SelectorSet,
) -> Result<Option<X509BundlesResponse>, Status> {
    if !snap.identities(selectors, SystemTime::now()).matched {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let bundles = bundles_map(snap);
    if bundles.is_empty() {
        return Ok(None);
    }
    Ok(Some(X509BundlesResponse {
        crl: vec![],
        bundles,
    }))
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&req)?;
        let selectors = self.attest(&req).await?;
        // Refuse an unregistered caller before opening a stream.
        let snap = self.cache.current();
        if snap.synced && !snap.identities(&selectors, SystemTime::now()).matched {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        Ok(Response::new(self.stream(selectors, render_x509)))
    }

    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        let selectors = self.attest(&req).await?;
        let snap = self.cache.current();
        if snap.synced && !snap.identities(&selectors, SystemTime::now()).matched {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        Ok(Response::new(self.stream(selectors, render_bundles)))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented("JWT-SVIDs are not available yet"))
    }

    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented("JWT bundles are not available yet"))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "JWT-SVID validation is not available yet",
        ))
    }

    type FetchWITSVIDStream = BoxStream<WitsvidResponse>;

    async fn fetch_witsvid(
        &self,
        req: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported",
        ))
    }

    type FetchWITBundlesStream = BoxStream<WitBundlesResponse>;

    async fn fetch_wit_bundles(
        &self,
        req: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_header_rules() {
        let mut ok = Request::new(());
        ok.metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        assert!(check_header(&ok).is_ok());
        for bad in [None, Some("TRUE"), Some("false"), Some("")] {
            let mut r = Request::new(());
            if let Some(v) = bad {
                r.metadata_mut().insert(SECURITY_HEADER, v.parse().unwrap());
            }
            assert_eq!(
                check_header(&r).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
        let mut two = Request::new(());
        two.metadata_mut()
            .append(SECURITY_HEADER, "true".parse().unwrap());
        two.metadata_mut()
            .append(SECURITY_HEADER, "true".parse().unwrap());
        assert_eq!(
            check_header(&two).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
