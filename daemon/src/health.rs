//! HTTP health endpoints for probes and load balancers: `GET /live` answers 200 while the
//! process runs; `GET /ready` answers 200 only when the component reports it can actually
//! serve, else 503 with the reason; `GET /metrics` answers the component's metrics registry
//! as OpenMetrics text to a client that accepts it (Prometheus asks for it), else in the
//! Prometheus text format 0.0.4 (curl, older tools such as `promtool check metrics`). Bound
//! to a configured (normally loopback) address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
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

/// The content type of OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders `registry` as OpenMetrics text (ends with `# EOF`).
pub fn render_metrics(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// The content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text (as [`render_metrics`] makes it) in the Prometheus text format 0.0.4:
/// a counter's family takes the name of its samples (`…_total`), and the `# UNIT` and
/// `# EOF` lines, which that format does not have, are left out.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn metrics_reply(registry: &Registry, openmetrics: bool) -> Response<Full<Bytes>> {
    match render_metrics(registry) {
        Ok(text) => {
            let (text, content_type) = if openmetrics {
                (text, OPENMETRICS_CONTENT_TYPE)
            } else {
                (
                    openmetrics_to_prometheus_text(&text),
                    PROMETHEUS_TEXT_CONTENT_TYPE,
                )
            };
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(content_type),
            );
            resp
        }
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"error": "metrics encoding failed"}),
        ),
    }
}

fn route(
    req: &Request<hyper::body::Incoming>,
    health: &Health,
    metrics: &Registry,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "only GET"}),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let openmetrics = req
                .headers()
                .get_all(hyper::header::ACCEPT)
                .iter()
                .any(|v| {
                    v.to_str()
                        .is_ok_and(|v| v.contains("application/openmetrics-text"))
                });
            metrics_reply(metrics, openmetrics)
        }
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

/// Serves `/live`, `/ready` and `/metrics` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    metrics: Arc<Registry>,
    shutdown: CancellationToken,
) {
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
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let resp = route(&req, &health, &metrics);
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
        get_with(addr, path, "").await
    }

    async fn get_with(addr: SocketAddr, path: &str, headers: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n")
                .as_bytes(),
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
        let mut registry = Registry::default();
        let hits = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("example_hits", "Example counter", hits.clone());
        hits.inc();
        tokio::spawn(serve(
            listener,
            health.clone(),
            Arc::new(registry),
            stop.clone(),
        ));
        assert!(get(addr, "/live").await.starts_with("HTTP/1.1 200"));
        let r = get(addr, "/ready").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("starting"),
            "{r}"
        );
        health.set_ready();
        assert!(get(addr, "/ready").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        let accept = "Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n";
        let m = get_with(addr, "/metrics", accept).await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains(OPENMETRICS_CONTENT_TYPE), "{m}");
        assert!(m.contains("# TYPE example_hits counter\n"), "{m}");
        assert!(m.contains("example_hits_total 1\n"), "{m}");
        assert!(m.trim_end().ends_with("# EOF"), "{m}");
        let t = get(addr, "/metrics").await;
        assert!(t.starts_with("HTTP/1.1 200"), "{t}");
        assert!(t.contains(PROMETHEUS_TEXT_CONTENT_TYPE), "{t}");
        assert!(t.contains("# TYPE example_hits_total counter\n"), "{t}");
        assert!(
            t.contains("# HELP example_hits_total Example counter.\n"),
            "{t}"
        );
        assert!(t.contains("example_hits_total 1\n"), "{t}");
        assert!(!t.contains("# EOF"), "{t}");
        stop.cancel();
    }
}
