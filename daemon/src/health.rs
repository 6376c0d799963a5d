//! HTTP health endpoints for probes and load balancers: `GET /live` answers 200 while the
//! process runs; `GET /ready` answers 200 only when the component reports it can actually
//! serve, else 503 with the reason. Bound to a configured (normally loopback) address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Readiness as reported by the component; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Health(Arc<Mutex<Result<(), String>>>);

impl Default for Health {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Err("starting".to_owned()))))
    }
}

impl Health {
    /// Marks the component ready.
    pub fn set_ready(&self) {
        self.set(Ok(()));
    }

    /// Marks the component not ready, with a reason shown on `/ready`.
    pub fn set_not_ready(&self, reason: &str) {
        self.set(Err(reason.to_owned()));
    }

    fn set(&self, v: Result<(), String>) {
        let mut g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *g != v {
            match &v {
                Ok(()) => tracing::info!("ready"),
                Err(reason) => tracing::info!(reason = %reason, "not ready"),
            }
            *g = v;
        }
    }

    /// The current state.
    pub fn state(&self) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn route(req: &Request<hyper::body::Incoming>, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "only GET"}),
        );
    }
    match req.uri().path() {
        "/live" => reply(StatusCode::OK, serde_json::json!({"live": true})),
        "/ready" => match health.state() {
            Ok(()) => reply(StatusCode::OK, serde_json::json!({"ready": true})),
            Err(reason) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"ready": false, "reason": reason}),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
    }
}

/// Binds the health listener (so a bad address fails at start-up, before anything runs).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/live` and `/ready` until `shutdown`.
pub async fn serve(listener: TcpListener, health: Health, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "health accept failed");
                    continue;
                }
            },
        };
        let health = health.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let resp = route(&req, &health);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
        });
    }
}

/// The address the health listener is bound to, for logs.
pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn live_and_ready() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Health::default();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, health.clone(), stop.clone()));
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
        let r = get(addr, "/ready").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("starting"),
            "{r}"
        );
        health.set_ready();
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
    }
}
