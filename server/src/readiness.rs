//! Readiness: the server is ready only while its datastore answers. Every write an API
//! accepts goes to the datastore before the call returns, so a server whose database is
//! unreachable refuses all of them; it must not tell a load balancer or an operator that
//! it can serve.
//!
//! [`Readiness::run`] probes the datastore every [`PROBE_INTERVAL`] (each probe bounded by
//! [`PROBE_TIMEOUT`], waiting for a pooled connection included) and sets
//! [`daemon::health::Health`], which `/ready` reports. The admin `Health` call probes at
//! once through [`Readiness::check`] rather than reading the last result, so
//! `healthcheck` answers for now. The server is not ready until the first probe answered.
//!
//! The reason names the datastore as [`DatastoreUrl::describe`] does (a path, or the URL
//! without its password), and the driver's message is scrubbed of the password too.

use std::sync::Arc;
use std::time::Duration;

use daemon::health::Health;
use tokio_util::sync::CancellationToken;

use crate::config::DatastoreUrl;
use crate::datastore::postgres::scrub;
use crate::datastore::{Datastore, DatastoreError};

/// How often the datastore is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long one probe may take before the datastore counts as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Probes the datastore and publishes the result as the server's readiness.
#[derive(Debug)]
pub struct Readiness {
    ds: Arc<dyn Datastore>,
    datastore: DatastoreUrl,
    health: Health,
    metrics: Arc<crate::metrics::ServerMetrics>,
}

impl Readiness {
    /// Readiness of a server on `ds` (opened from `datastore`), published to `health`.
    pub fn new(ds: Arc<dyn Datastore>, datastore: DatastoreUrl, health: Health) -> Self {
        Self {
            ds,
            datastore,
            health,
            metrics: Arc::default(),
        }
    }

    /// Publishes probe failures and the datastore's state in `metrics` too.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::ServerMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Probes the datastore once and publishes the result: `Err` with the reason (naming
    /// the datastore, never its password) when it does not answer within
    /// [`PROBE_TIMEOUT`].
    pub async fn check(&self) -> Result<(), String> {
        let result = self
            .ds
            .ping(PROBE_TIMEOUT)
            .await
            .map_err(|e| reason(&self.datastore, &e));
        match &result {
            Ok(()) => {
                self.metrics.datastore_up.set(1);
                self.health.set_ready();
            }
            Err(reason) => {
                self.metrics.datastore_up.set(0);
                self.metrics.datastore_probe_failures.inc();
                self.health.set_not_ready(reason);
            }
        }
        result
    }

    /// Probes every [`PROBE_INTERVAL`] until `shutdown`, the first time at once; logs each
    /// change (the datastore lost, and back).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut answered = None;
        loop {
            // Dropping a probe half-way at shutdown is harmless: it only reads.
            let now = tokio::select! {
                () = shutdown.cancelled() => return,
                r = self.check() => r,
            };
            match (&now, answered) {
                (Err(reason), None | Some(true)) => {
                    tracing::warn!(reason = %reason, "not ready: the datastore does not answer");
                }
                (Ok(()), Some(false)) => tracing::info!("the datastore answers again; ready"),
                _ => {}
            }
            answered = Some(now.is_ok());
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
    }
}

/// Why the server is not ready: the datastore, as `describe` shows it, and the cause,
/// scrubbed of a password the driver might echo.
fn reason(datastore: &DatastoreUrl, e: &DatastoreError) -> String {
    let cause = match e {
        DatastoreError::Backend(cause) | DatastoreError::Unavailable(cause) => cause.clone(),
        other => other.to_string(),
    };
    let cause = match datastore {
        DatastoreUrl::Postgres(url) => scrub(&cause, url),
        DatastoreUrl::Sqlite(_) => cause,
    };
    format!(
        "datastore {} does not answer: {cause}",
        datastore.describe()
    )
}

#[cfg(test)]
mod tests {
    use sqlx::Connection as _;

    use super::*;
    use crate::datastore::sqlite::SqliteDatastore;

    #[tokio::test]
    async fn ready_only_while_the_datastore_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("datastore.sqlite3");
        let ds = Arc::new(SqliteDatastore::open(&path).await.unwrap());
        let health = Health::default();
        let readiness = Readiness::new(ds, DatastoreUrl::Sqlite(path.clone()), health.clone());
        assert!(health.state().is_err(), "ready before any probe");
        readiness.check().await.unwrap();
        assert_eq!(health.state(), Ok(()));

        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("ALTER TABLE tessera_schema RENAME TO away")
            .execute(&mut conn)
            .await
            .unwrap();
        let reason = readiness.check().await.unwrap_err();
        assert!(
            reason.starts_with(&format!("datastore {} does not answer: ", path.display()))
                && reason.contains("tessera_schema"),
            "{reason}"
        );
        assert_eq!(health.state(), Err(reason));

        sqlx::query("ALTER TABLE away RENAME TO tessera_schema")
            .execute(&mut conn)
            .await
            .unwrap();
        readiness.check().await.unwrap();
        assert_eq!(health.state(), Ok(()));
    }

    #[test]
    fn a_password_never_reaches_the_reason() {
        let url = "postgres://tessera:s3cret@db.example:5432/tessera";
        let reason = reason(
            &DatastoreUrl::Postgres(url.to_owned()),
            &DatastoreError::Backend("password authentication failed: s3cret".to_owned()),
        );
        assert!(!reason.contains("s3cret"), "{reason}");
        assert!(
            reason.starts_with("datastore postgres://tessera:***@db.example:5432/tessera "),
            "{reason}"
        );
    }
}
