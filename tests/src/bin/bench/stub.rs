//! A Workload API server that does nothing but answer `FetchX509SVID` with a fixed message:
//! the same tonic/HTTP/2 stack and message size as the agent, without attestation or a
//! cache. Its latency, between the raw Unix-socket round trip and the agent's, shows how
//! much of the agent's latency is the gRPC transport the SPIFFE Workload API prescribes.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use anyhow::Context as _;
use common::proto::workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use common::proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest, X509svidResponse,
};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers `FetchX509SVID` with `message`, then keeps the stream open like the agent does.
#[derive(Debug)]
struct FixedAnswer {
    message: X509svidResponse,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for FixedAnswer {
    type FetchX509SVIDStream = Boxed<X509svidResponse>;
    type FetchX509BundlesStream = Boxed<X509BundlesResponse>;
    type FetchJWTBundlesStream = Boxed<JwtBundlesResponse>;
    type FetchWITSVIDStream = Boxed<WitsvidResponse>;
    type FetchWITBundlesStream = Boxed<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let first = tokio_stream::once(Ok(self.message.clone()));
        Ok(Response::new(Box::pin(
            first.chain(tokio_stream::pending()),
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        _request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn fetch_jwtsvid(
        &self,
        _request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn fetch_jwt_bundles(
        &self,
        _request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn validate_jwtsvid(
        &self,
        _request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn fetch_witsvid(
        &self,
        _request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("stub"))
    }

    async fn fetch_wit_bundles(
        &self,
        _request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("stub"))
    }
}

/// The stub serving on a Unix socket from its own OS thread and multi-thread runtime (the
/// agent's runtime shape), so it does not share the client's runtime.
#[derive(Debug)]
pub(crate) struct GrpcStub {
    pub(crate) path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GrpcStub {
    pub(crate) fn start(path: &Path, message: X509svidResponse) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(path);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let p = path.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::UnixListener::bind(&p) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let serve = tonic::transport::Server::builder()
                    .add_service(SpiffeWorkloadApiServer::new(FixedAnswer { message }))
                    .serve_with_incoming(UnixListenerStream::new(listener));
                // Not a graceful shutdown: the open streams never end by themselves.
                tokio::select! {
                    _ = stop_rx => {}
                    _ = serve => {}
                }
            });
            rt.shutdown_background();
        });
        ready_rx.recv().context("gRPC stub thread")??;
        Ok(Self {
            path: path.to_owned(),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for GrpcStub {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
