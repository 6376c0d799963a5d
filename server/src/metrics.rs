//! The server's Prometheus metrics: one registry and the handles the instrumented modules
//! hold, served as OpenMetrics text on `GET /metrics` of the health listener.
//!
//! Every handle is an atomic counter, gauge or histogram (no lock on the paths that update
//! them); what is cheaper to read at scrape time than to track (the active CA's and JWT
//! key's expiry, the active tasks, the audit chain head) is read by [`StateCollector`]
//! when scraped. No label takes an unbounded value: kinds, states and results are small
//! fixed sets, never SPIFFE IDs, entry or task ids.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use common::task::TaskState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ca::rotation::{CaPhase, CaSet};
use crate::datastore::{AuditAppended, Datastore};

mod metered;
use crate::jwt_keys::JwtKeyManager;
pub use metered::Metered;

/// The kind of SVID issued.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `x509` or `jwt`.
    pub kind: &'static str,
}

/// The state a task entered.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// [`TaskState::as_str`].
    pub state: &'static str,
}

/// The kind of an audit record appended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditKindLabel {
    /// [`crate::audit::AuditKind::as_str`] (`other` for a kind the server does not name).
    pub kind: &'static str,
}

impl AuditKindLabel {
    /// The label of a stored kind name.
    pub fn of(kind: &str) -> Self {
        Self {
            kind: kind
                .parse::<crate::audit::AuditKind>()
                .map_or("other", crate::audit::AuditKind::as_str),
        }
    }
}

/// A datastore call that failed.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatastoreErrorLabels {
    /// `read`, `write` or `probe`.
    pub op: &'static str,
    /// `unavailable`, `backend` or `corrupt`.
    pub error: &'static str,
}

/// SVID kind `x509`.
pub const X509: KindLabel = KindLabel { kind: "x509" };
/// SVID kind `jwt`.
pub const JWT: KindLabel = KindLabel { kind: "jwt" };

/// The server's metric handles (cheap to share: every handle is an `Arc` inside).
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    /// SVIDs signed, by kind.
    pub svids_issued: Family<KindLabel, Counter>,
    /// SVIDs refused for one request (not entitled, limits, bad CSR), by kind.
    pub svids_refused: Family<KindLabel, Counter>,
    /// Seconds one node API issuance call took (a batch of CSRs, or one JWT), by kind.
    pub issuance_seconds: Family<KindLabel, Histogram>,
    /// Task state transitions, by the state entered.
    pub task_transitions: Family<StateLabel, Counter>,
    /// Tasks ended early whose credentials were revoked (listed in CRLs and status lists).
    pub revocations: Counter,
    /// Agents' open sync streams on this server.
    pub sync_streams: Gauge,
    /// Readiness probes of the datastore that failed.
    pub datastore_probe_failures: Counter,
    /// 1 while the datastore answers the readiness probe, else 0.
    pub datastore_up: Gauge,
    /// Audit records appended (committed), by kind.
    pub audit_appends: Family<AuditKindLabel, Counter>,
    /// Datastore calls that failed (unreachable, backend error, corrupt data), by
    /// operation class and error.
    pub datastore_errors: Family<DatastoreErrorLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for ServerMetrics {
    /// Handles registered nowhere (what a component built without [`ServerMetrics::register`]
    /// updates harmlessly, e.g. in unit tests).
    fn default() -> Self {
        Self {
            svids_issued: Family::default(),
            svids_refused: Family::default(),
            issuance_seconds: Family::new_with_constructor(latency_histogram),
            task_transitions: Family::default(),
            revocations: Counter::default(),
            sync_streams: Gauge::default(),
            datastore_probe_failures: Counter::default(),
            datastore_up: Gauge::default(),
            audit_appends: Family::default(),
            datastore_errors: Family::default(),
        }
    }
}

impl ServerMetrics {
    /// New handles, registered in `registry` under `tessera_server_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("tessera_server");
        r.register(
            "svids_issued",
            "SVIDs signed for agents, by kind (x509, jwt)",
            m.svids_issued.clone(),
        );
        r.register(
            "svids_refused",
            "SVID requests refused one by one (not entitled, mint limit, bad CSR), by kind",
            m.svids_refused.clone(),
        );
        r.register_with_unit(
            "issuance_duration",
            "Time one node API issuance call took (a batch of CSRs or one JWT-SVID), by kind",
            prometheus_client::registry::Unit::Seconds,
            m.issuance_seconds.clone(),
        );
        r.register(
            "task_transitions",
            "Task state transitions on this server, by the state entered",
            m.task_transitions.clone(),
        );
        r.register(
            "revocations",
            "Tasks ended early whose credentials were revoked (CRLs, token status lists)",
            m.revocations.clone(),
        );
        r.register(
            "sync_streams",
            "Agents' open sync streams on this server (agents connected)",
            m.sync_streams.clone(),
        );
        r.register(
            "datastore_probe_failures",
            "Readiness probes of the datastore that failed or timed out",
            m.datastore_probe_failures.clone(),
        );
        r.register(
            "datastore_up",
            "1 while the datastore answers the readiness probe, else 0",
            m.datastore_up.clone(),
        );
        r.register(
            "audit_appends",
            "Audit records appended to the chain (committed), by kind",
            m.audit_appends.clone(),
        );
        // Every label set from the start, at 0: a failure shows as a rise, not a new series.
        for op in ["read", "write", "probe"] {
            for error in ["unavailable", "backend", "corrupt"] {
                let _ = m
                    .datastore_errors
                    .get_or_create(&DatastoreErrorLabels { op, error });
            }
        }
        r.register(
            "datastore_errors",
            "Datastore calls that failed (unavailable, backend error, corrupt data; not conflicts or missing rows), by operation class (read, write, probe) and error",
            m.datastore_errors.clone(),
        );
        Arc::new(m)
    }

    /// Counts a datastore call of class `op` that failed with `e` (conflicts and missing
    /// rows are answers, not failures: not counted).
    pub fn datastore_failed(&self, op: &'static str, e: &crate::datastore::DatastoreError) {
        use crate::datastore::DatastoreError as E;
        let error = match e {
            E::Unavailable(_) => "unavailable",
            E::Backend(_) => "backend",
            E::Corrupt(_) => "corrupt",
            E::Conflict(_) | E::NotFound(_) => return,
        };
        self.datastore_errors
            .get_or_create(&DatastoreErrorLabels { op, error })
            .inc();
    }

    /// What the datastore is handed to count its committed audit records here.
    pub fn audit_appended(&self) -> AuditAppended {
        let family = self.audit_appends.clone();
        Arc::new(move |kind: &str, n: u64| {
            family.get_or_create(&AuditKindLabel::of(kind)).inc_by(n);
        })
    }

    /// Counts a task entering `state`.
    pub fn task_entered(&self, state: TaskState) {
        self.task_transitions
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .inc();
    }

    /// Records one issuance call of `kind`: its duration, signed and refused counts.
    pub fn issuance(&self, kind: KindLabel, took: Duration, signed: u64, refused: u64) {
        self.issuance_seconds
            .get_or_create(&kind)
            .observe(took.as_secs_f64());
        if signed > 0 {
            self.svids_issued.get_or_create(&kind).inc_by(signed);
        }
        if refused > 0 {
            self.svids_refused.get_or_create(&kind).inc_by(refused);
        }
    }
}

/// Decrements [`ServerMetrics::sync_streams`] when dropped (the stream's task ended).
#[derive(Debug)]
pub struct StreamGuard(Gauge);

impl StreamGuard {
    /// Counts one more open stream in `gauge`.
    pub fn open(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What [`StateCollector`] reads of the task service (`crate::tasks::Tasks`; a trait so
/// that this module does not import the task service, which holds its handles).
pub trait ActiveTasks: std::fmt::Debug + Send + Sync {
    /// How many tasks are active now.
    fn active_count(&self) -> usize;
}

/// What is read at scrape time: key expiry, active tasks, the audit chain head.
#[derive(Debug)]
pub struct StateCollector {
    /// The CAs.
    pub ca: Arc<CaSet>,
    /// The JWT keys.
    pub jwt: Arc<JwtKeyManager>,
    /// The tasks.
    pub tasks: Arc<dyn ActiveTasks>,
    /// The datastore (its audit chain head, in memory).
    pub ds: Arc<dyn Datastore>,
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(ca) = self
            .ca
            .list()
            .into_iter()
            .find(|c| c.phase == CaPhase::Active)
        {
            let at = ca
                .not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            gauge(
                &mut encoder,
                "tessera_server_ca_expiry_timestamp_seconds",
                "When the CA that signs SVIDs now expires (Unix seconds)",
                at,
            )?;
        }
        if let Some((key, _)) = self
            .jwt
            .published_keys()
            .into_iter()
            .find(|(_, phase)| *phase == CaPhase::Active)
        {
            gauge(
                &mut encoder,
                "tessera_server_jwt_key_expiry_timestamp_seconds",
                "When the JWT key that signs JWT-SVIDs now leaves the bundle (Unix seconds)",
                key.expires_at,
            )?;
        }
        gauge(
            &mut encoder,
            "tessera_server_tasks_active",
            "Tasks active now (credentials may be issued under them)",
            i64::try_from(self.tasks.active_count()).unwrap_or(i64::MAX),
        )?;
        if let Some(head) = self.ds.audit_heads().borrow().as_ref() {
            gauge(
                &mut encoder,
                "tessera_server_audit_head_sequence",
                "Sequence number of the last audit record this server appended (or anchored to)",
                head.seq,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_issuance_and_tasks_as_openmetrics() {
        let mut registry = Registry::default();
        let m = ServerMetrics::register(&mut registry);
        m.issuance(X509, Duration::from_millis(3), 2, 1);
        m.issuance(JWT, Duration::from_millis(1), 1, 0);
        m.task_entered(TaskState::Active);
        m.revocations.inc();
        {
            let _s = StreamGuard::open(&m.sync_streams);
            assert_eq!(m.sync_streams.get(), 1);
        }
        assert_eq!(m.sync_streams.get(), 0);
        let text = daemon::health::render_metrics(&registry).unwrap();
        for line in [
            "# TYPE tessera_server_svids_issued counter",
            "tessera_server_svids_issued_total{kind=\"x509\"} 2",
            "tessera_server_svids_issued_total{kind=\"jwt\"} 1",
            "tessera_server_svids_refused_total{kind=\"x509\"} 1",
            "# TYPE tessera_server_issuance_duration_seconds histogram",
            "# UNIT tessera_server_issuance_duration_seconds seconds",
            "tessera_server_issuance_duration_seconds_count{kind=\"x509\"} 1",
            "tessera_server_issuance_duration_seconds_bucket{le=\"0.004\",kind=\"x509\"} 1",
            "tessera_server_task_transitions_total{state=\"active\"} 1",
            "tessera_server_revocations_total 1",
            "tessera_server_sync_streams 0",
            "tessera_server_datastore_up 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
