//! The agent's Prometheus metrics: one registry and the handles the instrumented modules
//! hold, served as OpenMetrics text on `GET /metrics` of the health listener.
//!
//! Workload API requests are counted by [`WorkloadMetricsLayer`], a tower layer around
//! the Workload API services (method and gRPC code of the response headers, time to them,
//! requests whose response is still open); attestation failures by the Workload API's
//! attestation step; the sync stream by the rotation worker; cached SVIDs are read from the
//! cache when scraped ([`CacheCollector`]). Every handle is atomic; no label takes an
//! unbounded value (methods are the fixed set the services implement, anything else is
//! `other`; no pids, no SPIFFE IDs).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::attestation::AttestationError;
use crate::cache::{Cache, CacheSnapshot};
use crate::workload_api::connection::GuardedBody;

/// Method and result of a Workload API request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// The gRPC method name (`FetchX509SVID` …), `other` for an unknown path.
    pub(crate) method: &'static str,
    /// The gRPC code name of the response headers (`OK` for a stream that opened).
    pub(crate) result: &'static str,
}

/// The method of a Workload API request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabel {
    /// As [`RequestLabels::method`].
    pub(crate) method: &'static str,
}

/// Method and gRPC code of a Workload API stream that ended with an error.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StreamErrorLabels {
    /// As [`RequestLabels::method`].
    pub(crate) method: &'static str,
    /// The gRPC code name of the error that ended it ([`code_name`]).
    pub(crate) code: &'static str,
}

/// Why attestation of a caller failed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    /// One of [`attestation_reason`]'s values, `timeout` or `internal`.
    pub(crate) reason: &'static str,
}

/// The agent's metric handles.
#[derive(Debug, Clone)]
pub(crate) struct AgentMetrics {
    /// Workload API requests answered, by method and result.
    pub(crate) requests: Family<RequestLabels, Counter>,
    /// Time from a request's arrival to its response headers, by method.
    pub(crate) request_seconds: Family<MethodLabel, Histogram>,
    /// Workload API requests whose response is still open (streams, calls in progress).
    pub(crate) open_requests: Gauge,
    /// Callers whose attestation failed, by reason.
    pub(crate) attestation_failures: Family<ReasonLabel, Counter>,
    /// Workload API streams that ended with an error after they opened, by method and code.
    pub(crate) stream_errors: Family<StreamErrorLabels, Counter>,
    /// 1 while the sync stream with the server is open, else 0.
    pub(crate) sync_connected: Gauge,
    /// When the last sync message from the server was applied (Unix seconds; 0: never).
    pub(crate) last_sync: Gauge,
    /// Sync messages applied.
    pub(crate) sync_updates: Counter,
    /// From a task's end on the server to its revocation reaching this agent's cache.
    pub(crate) revocation_seconds: Histogram,
}

fn latency_histogram() -> Histogram {
    // 0.1 ms … ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

impl Default for AgentMetrics {
    /// Handles registered nowhere (updated harmlessly where nothing scrapes them).
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            open_requests: Gauge::default(),
            attestation_failures: Family::default(),
            stream_errors: Family::default(),
            sync_connected: Gauge::default(),
            last_sync: Gauge::default(),
            sync_updates: Counter::default(),
            // 1 ms … ~33 s.
            revocation_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl AgentMetrics {
    /// New handles, registered in `registry` under `tessera_agent_`.
    pub(crate) fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("tessera_agent");
        r.register(
            "workload_api_requests",
            "Workload API requests answered, by method and gRPC result of the response headers",
            m.requests.clone(),
        );
        r.register_with_unit(
            "workload_api_request_duration",
            "Time from a Workload API request's arrival to its response headers (first message of a stream), by method",
            prometheus_client::registry::Unit::Seconds,
            m.request_seconds.clone(),
        );
        r.register(
            "workload_api_open_requests",
            "Workload API requests whose response is still open (streams, calls in progress)",
            m.open_requests.clone(),
        );
        r.register(
            "attestation_failures",
            "Workload API callers whose attestation failed, by reason",
            m.attestation_failures.clone(),
        );
        r.register(
            "workload_api_stream_errors",
            "Workload API streams that ended with an error after they opened (re-attestation refused, identity gone), by method and gRPC code",
            m.stream_errors.clone(),
        );
        r.register(
            "sync_connected",
            "1 while the sync stream with the server is open, else 0",
            m.sync_connected.clone(),
        );
        r.register(
            "last_sync_timestamp_seconds",
            "When the last sync message from the server was applied (Unix seconds; 0: never)",
            m.last_sync.clone(),
        );
        r.register(
            "sync_updates",
            "Sync messages from the server applied",
            m.sync_updates.clone(),
        );
        r.register_with_unit(
            "revocation_propagation",
            "Time from a task's end on the server to its revocation reaching the agent's cache",
            prometheus_client::registry::Unit::Seconds,
            m.revocation_seconds.clone(),
        );
        Arc::new(m)
    }

    /// Observes the propagation latency of each task end in `after` that `before` did not
    /// hold, at `now` (Unix milliseconds). Nothing is observed when `before` was not a
    /// synchronised cache: the first snapshot of a new agent lists ends it never missed.
    pub(crate) fn revocations_arrived(
        &self,
        before: &CacheSnapshot,
        after: &CacheSnapshot,
        now_ms: i64,
    ) {
        if !before.synced || Arc::ptr_eq(&before.revocations, &after.revocations) {
            return;
        }
        for t in &after.revocations.ended_tasks {
            if t.ended_at <= 0
                || before
                    .revocations
                    .ended_tasks
                    .iter()
                    .any(|b| b.task_id == t.task_id)
            {
                continue;
            }
            // A clock behind the server's counts as no delay, never as negative.
            let ms = u64::try_from(now_ms.saturating_sub(t.ended_at)).unwrap_or(0);
            self.revocation_seconds
                .observe(std::time::Duration::from_millis(ms).as_secs_f64());
        }
    }

    /// Counts a failed attestation.
    pub(crate) fn attestation_failed(&self, reason: &'static str) {
        self.attestation_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a stream of `method` that ended with `code` after it opened.
    pub(crate) fn stream_failed(&self, method: &'static str, code: tonic::Code) {
        self.stream_errors
            .get_or_create(&StreamErrorLabels {
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// Records that a sync message was applied at `now`.
    pub(crate) fn synced(&self, now: SystemTime) {
        let at = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.last_sync.set(at);
        self.sync_updates.inc();
    }
}

/// The `reason` label of a failed attestation.
pub(crate) fn attestation_reason(e: &AttestationError) -> &'static str {
    match e {
        AttestationError::NoPid => "no_pid",
        AttestationError::ProcessExited { .. } => "process_exited",
        AttestationError::PidReused { .. } => "pid_reused",
        AttestationError::ExecutedSinceConnect { .. } => "executed_since_connect",
        AttestationError::NotPinnedAtAccept { .. } => "not_pinned_at_accept",
        AttestationError::ExecutableChanged { .. } => "executable_changed",
        AttestationError::UidMismatch { .. } => "uid_mismatch",
        AttestationError::GidMismatch { .. } => "gid_mismatch",
        AttestationError::Proc { .. } => "proc_read",
        AttestationError::Malformed { .. } => "malformed",
        AttestationError::NameLookup { .. } => "name_lookup",
        AttestationError::Selector { .. } => "selector",
    }
}

/// Sets a 0/1 gauge to 1 until dropped.
#[derive(Debug)]
pub(crate) struct UpGuard(Gauge);

impl UpGuard {
    /// Sets `gauge` to 1.
    pub(crate) fn up(gauge: &Gauge) -> Self {
        gauge.set(1);
        Self(gauge.clone())
    }
}

impl Drop for UpGuard {
    fn drop(&mut self) {
        self.0.set(0);
    }
}

/// The methods the Workload API services implement (the only values of `method`).
const METHODS: [&str; 9] = [
    "FetchX509SVID",
    "FetchX509Bundles",
    "FetchJWTSVID",
    "FetchJWTBundles",
    "ValidateJWTSVID",
    "FetchWITSVID",
    "FetchWITBundles",
    "BeginTask",
    "EndTask",
];

/// The `method` label of a request path (`/SpiffeWorkloadAPI/FetchX509SVID`).
pub(crate) fn method_label(path: &str) -> &'static str {
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    if service != "SpiffeWorkloadAPI" && service != "tessera.v1.WorkloadTasks" {
        return "other";
    }
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// The gRPC code name of a `grpc-status` header value (absent: `OK`).
pub(crate) fn result_label(grpc_status: Option<&[u8]>) -> &'static str {
    let Some(raw) = grpc_status else {
        return "OK";
    };
    let code = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .unwrap_or(2);
    code_name(tonic::Code::from_i32(code))
}

/// The name of a gRPC code, as in the gRPC specification (`PermissionDenied` …).
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Cancelled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

/// Counts and times every Workload API request (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct WorkloadMetricsLayer(pub Arc<AgentMetrics>);

impl<S> tower::Layer<S> for WorkloadMetricsLayer {
    type Service = WorkloadMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WorkloadMetrics {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

/// See [`WorkloadMetricsLayer`].
#[derive(Debug, Clone)]
pub(crate) struct WorkloadMetrics<S> {
    inner: S,
    metrics: Arc<AgentMetrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Holds [`AgentMetrics::open_requests`] up until the response is dropped.
#[derive(Debug)]
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<S, B> tower::Service<http::Request<B>> for WorkloadMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = tokio::time::Instant::now();
        self.metrics.open_requests.inc();
        let open = OpenGuard(self.metrics.open_requests.clone());
        let metrics = Arc::clone(&self.metrics);
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            metrics
                .request_seconds
                .get_or_create(&MethodLabel { method })
                .observe(started.elapsed().as_secs_f64());
            let result = result_label(
                response
                    .headers()
                    .get("grpc-status")
                    .map(http::HeaderValue::as_bytes),
            );
            metrics
                .requests
                .get_or_create(&RequestLabels { method, result })
                .inc();
            Ok(response.map(|body| tonic::body::Body::new(GuardedBody::new(body, open))))
        })
    }
}

/// Reads the cache when scraped: SVIDs held and whether the cache is synced.
#[derive(Debug)]
pub(crate) struct CacheCollector(pub Cache);

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snap = self.0.current();
        let svids = snap.entries.values().filter(|e| e.svid.is_some()).count();
        let entries = snap.entries.len();
        for (name, help, value) in [
            (
                "tessera_agent_cached_svids",
                "X.509-SVIDs held in the cache",
                svids,
            ),
            (
                "tessera_agent_cached_entries",
                "Registration entries held in the cache",
                entries,
            ),
        ] {
            let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
            g.encode(m)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_a_fixed_set() {
        assert_eq!(
            method_label("/SpiffeWorkloadAPI/FetchX509SVID"),
            "FetchX509SVID"
        );
        assert_eq!(method_label("/tessera.v1.WorkloadTasks/EndTask"), "EndTask");
        assert_eq!(method_label("/SpiffeWorkloadAPI/Whatever123"), "other");
        assert_eq!(method_label("/evil.Service/FetchX509SVID"), "other");
        assert_eq!(method_label("nonsense"), "other");
        assert_eq!(result_label(None), "OK");
        assert_eq!(result_label(Some(b"7")), "PermissionDenied");
        assert_eq!(result_label(Some(b"junk")), "Unknown");
        assert_eq!(result_label(Some(b"99")), "Unknown");
    }

    #[test]
    fn revocation_latency_is_observed_once_per_end_learnt_while_synchronised() {
        use common::proto::tessera::{EndedTask, Revocations};
        let snap = |synced: bool, ends: &[(&str, i64)]| CacheSnapshot {
            synced,
            revocations: Arc::new(Revocations {
                crls: vec![],
                ended_tasks: ends
                    .iter()
                    .map(|(id, at)| EndedTask {
                        task_id: (*id).into(),
                        until: i64::MAX,
                        state: "revoked".into(),
                        ended_at: *at,
                    })
                    .collect(),
            }),
            ..CacheSnapshot::default()
        };
        let m = AgentMetrics::default();
        let count = |m: &AgentMetrics| {
            let mut registry = Registry::default();
            registry.register("r", "r", m.revocation_seconds.clone());
            let text = daemon::health::render_metrics(&registry).unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("r_count "))
                .map(|v| v.trim().parse::<u64>().unwrap())
                .unwrap()
        };
        // A new agent's first snapshot lists ends it never missed.
        m.revocations_arrived(&snap(false, &[]), &snap(true, &[("t1", 1_000)]), 9_000);
        assert_eq!(count(&m), 0);
        // A new end (and an old server's, without a time) while synchronised: one each.
        let known = snap(true, &[("t1", 1_000)]);
        m.revocations_arrived(
            &known,
            &snap(true, &[("t1", 1_000), ("t2", 5_000), ("t3", 0)]),
            5_250,
        );
        assert_eq!(count(&m), 1);
        // The same list again: nothing new.
        m.revocations_arrived(&known, &known, 6_000);
        assert_eq!(count(&m), 1);
    }

    #[test]
    fn renders_workload_api_and_sync_as_openmetrics() {
        let mut registry = Registry::default();
        let m = AgentMetrics::register(&mut registry);
        registry.register_collector(Box::new(CacheCollector(Cache::default())));
        m.requests
            .get_or_create(&RequestLabels {
                method: "FetchX509SVID",
                result: "OK",
            })
            .inc();
        m.request_seconds
            .get_or_create(&MethodLabel {
                method: "FetchX509SVID",
            })
            .observe(0.002);
        m.attestation_failed("uid_mismatch");
        m.stream_failed("FetchX509SVID", tonic::Code::PermissionDenied);
        {
            let _up = UpGuard::up(&m.sync_connected);
            assert_eq!(m.sync_connected.get(), 1);
        }
        m.synced(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
        let text = daemon::health::render_metrics(&registry).unwrap();
        for line in [
            "tessera_agent_workload_api_requests_total{method=\"FetchX509SVID\",result=\"OK\"} 1",
            "# TYPE tessera_agent_workload_api_request_duration_seconds histogram",
            "tessera_agent_workload_api_request_duration_seconds_count{method=\"FetchX509SVID\"} 1",
            "tessera_agent_attestation_failures_total{reason=\"uid_mismatch\"} 1",
            "tessera_agent_workload_api_stream_errors_total{method=\"FetchX509SVID\",code=\"PermissionDenied\"} 1",
            "tessera_agent_sync_connected 0",
            "tessera_agent_last_sync_timestamp_seconds 1700000000",
            "tessera_agent_sync_updates_total 1",
            "tessera_agent_workload_api_open_requests 0",
            "tessera_agent_cached_svids 0",
            "tessera_agent_cached_entries 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
