//! The trust bundle: the one writer that composes it and the schedule that changes it.
//!
//! [`BundlePublisher`] composes the bundle from the CA set and the JWT keys and publishes
//! every change to the TLS verifiers, the admin API and every agent's sync stream; it is
//! the only writer of the bundle, so its sequence number grows by one per change.
//! [`rotate_keys`] advances the CA and JWT key schedules and publishes each change before
//! the server presents a certificate from a newly active CA.

use std::sync::Arc;
use std::time::Duration;

use common::BundleCell;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, AuditKind};
use crate::ca::rotation::CaSet;
use crate::clock::now_unix;
use crate::datastore::Datastore;
use crate::events::{ChangeEvent, Events};
use crate::jwt_keys::JwtKeyManager;
use crate::server_identity::ServerIdentity;

/// Composes the trust bundle from the CA set and the JWT keys and publishes every change
/// to the TLS verifiers, the admin API and every agent's sync stream. The only writer of
/// the bundle, so its sequence number increases by one per change.
#[derive(Debug)]
pub(crate) struct BundlePublisher {
    pub(crate) ca: Arc<CaSet>,
    pub(crate) jwt: Arc<JwtKeyManager>,
    pub(crate) cell: BundleCell,
    pub(crate) events: Events,
    sequence: std::sync::Mutex<u64>,
}

impl BundlePublisher {
    pub(crate) fn new(ca: Arc<CaSet>, jwt: Arc<JwtKeyManager>, events: Events) -> Self {
        let cell = BundleCell::new(ca.bundle(1).with_jwt_authorities(jwt.public_keys()));
        Self {
            ca,
            jwt,
            cell,
            events,
            sequence: std::sync::Mutex::new(1),
        }
    }

    /// Rebuilds the bundle and pushes it everywhere.
    pub(crate) fn publish(&self) {
        let mut seq = self
            .sequence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *seq += 1;
        self.cell.set(
            self.ca
                .bundle(*seq)
                .with_jwt_authorities(self.jwt.public_keys()),
        );
        self.events.publish(ChangeEvent::BundleChanged);
        tracing::info!(sequence = *seq, "trust bundle updated");
    }
}

impl BundlePublisher {
    /// After a new CA became active: publish it to every agent first, then present a
    /// server certificate it signed (an agent that has not seen the new CA yet would
    /// refuse that certificate).
    fn new_ca_active(&self, identity: &ServerIdentity) {
        self.publish();
        if let Err(e) = identity.renew() {
            tracing::error!(error = %e, "cannot re-issue the server certificate");
        }
    }

    /// An operator's forced rotation: the next CA becomes active now, audited before it
    /// is published.
    pub(crate) async fn rotate_ca_now(
        &self,
        ds: &dyn Datastore,
        identity: &ServerIdentity,
        by: &str,
    ) -> Result<(), RotateError> {
        self.ca
            .rotate_now()
            .map_err(|e| RotateError::Ca(e.to_string()))?;
        ds.append_audit(&[AuditEvent::new(
            AuditKind::CaRotated,
            self.ca.active().serial_hex(),
            serde_json::json!({ "reason": "operator" }),
        )
        .by(by)])
            .await?;
        self.new_ca_active(identity);
        Ok(())
    }
}

/// Why a forced CA rotation failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The CA set could not rotate (key generation or storage).
    #[error("CA rotation failed: {0}")]
    Ca(String),
    /// The rotation happened but could not be audited.
    #[error(transparent)]
    Datastore(#[from] crate::datastore::DatastoreError),
}

/// Advances the CA and JWT key schedules, publishing every change of the bundle.
pub(crate) async fn rotate_keys(
    ds: Arc<dyn Datastore>,
    publisher: Arc<BundlePublisher>,
    identity: Arc<ServerIdentity>,
    shutdown: CancellationToken,
) {
    loop {
        let jwt_next =
            u64::try_from(publisher.jwt.next_event().saturating_sub(now_unix())).unwrap_or(0);
        let ca_next = publisher
            .ca
            .next_event()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let wait = Duration::from_secs(jwt_next)
            .min(ca_next)
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let mut changed = false;
        match publisher.jwt.tick(now_unix()) {
            Ok(c) => changed |= c,
            Err(e) => tracing::error!(error = %e, "JWT key rotation failed; retrying"),
        }
        match publisher.ca.tick(std::time::SystemTime::now()) {
            Ok(c) => {
                changed |= c.bundle_changed;
                if c.activated {
                    let event = AuditEvent::new(
                        AuditKind::CaActivated,
                        publisher.ca.active().serial_hex(),
                        serde_json::json!({ "reason": "scheduled" }),
                    )
                    .by(crate::audit::SERVER_ACTOR);
                    if let Err(e) = ds.append_audit(&[event]).await {
                        tracing::error!(error = %e, "cannot audit the CA activation");
                    }
                    publisher.new_ca_active(&identity);
                    changed = false;
                }
            }
            Err(e) => tracing::error!(error = %e, "CA rotation failed; retrying"),
        }
        if changed {
            publisher.publish();
        }
    }
}
