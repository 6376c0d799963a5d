//! The trust bundle: the one writer that composes it and the schedule that changes it.
//!
//! `BundlePublisher` composes the bundle from the CA set, the JWT keys and what the other
//! servers on the datastore published (`shared`), and publishes every change to the TLS
//! verifiers, the admin API, the relying-party JWKS and every agent's sync stream; it is
//! the only writer of the bundle, so its sequence number grows by one per change.
//! `rotate_keys` advances the CA and JWT key schedules and publishes each change before
//! the server presents a certificate from a newly active CA; `share_bundle` re-reads the
//! shared material every `shared::REFRESH_INTERVAL`.

pub(crate) mod shared;

use std::sync::Arc;
use std::time::Duration;

use common::BundleCell;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditEvent, AuditKind};
use crate::ca::rotation::CaSet;
use crate::clock::now_unix;
use crate::datastore::{Datastore, DatastoreError, PublishedAuthority};
use crate::events::{ChangeEvent, Events};
use crate::jwt_keys::JwtKeyManager;
use crate::server_identity::ServerIdentity;

/// What the publisher remembers between compositions.
#[derive(Debug)]
struct Composed {
    sequence: u64,
    /// The other servers' published material, as last read from the datastore.
    others: Vec<PublishedAuthority>,
}

/// Composes the trust bundle from the CA set, the JWT keys and the other servers'
/// published material, and publishes every change to the TLS verifiers, the admin API and
/// every agent's sync stream. The only writer of the bundle, so its sequence number
/// increases by one per change.
#[derive(Debug)]
pub(crate) struct BundlePublisher {
    pub(crate) ca: Arc<CaSet>,
    pub(crate) jwt: Arc<JwtKeyManager>,
    pub(crate) cell: BundleCell,
    pub(crate) events: Events,
    /// This server's instance id in the shared bundle's table.
    server_id: String,
    state: std::sync::Mutex<Composed>,
}

impl BundlePublisher {
    /// A publisher of this server's own material only, until [`Self::refresh_shared`]
    /// reads the other servers'; `server_id` names this server's rows.
    pub(crate) fn new(
        ca: Arc<CaSet>,
        jwt: Arc<JwtKeyManager>,
        events: Events,
        server_id: String,
    ) -> Self {
        let cell = BundleCell::new(ca.bundle(1).with_jwt_authorities(jwt.public_keys()));
        Self {
            ca,
            jwt,
            cell,
            events,
            server_id,
            state: std::sync::Mutex::new(Composed {
                sequence: 1,
                others: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Composed> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The bundle's authorities now: this server's own (as `CaSet::bundle` and the JWT
    /// keys hold them) first, then the other servers' unexpired material, each once.
    fn compose(&self, others: &[PublishedAuthority]) -> shared::Authorities {
        let now = now_unix();
        let own = shared::own_rows(&self.server_id, &self.ca, &self.jwt, now);
        shared::compose(own.iter().chain(others), now)
    }

    /// Sets the bundle to `authorities` with the next sequence number and pushes it
    /// everywhere. The caller holds the lock.
    fn set(&self, state: &mut Composed, authorities: shared::Authorities) {
        state.sequence += 1;
        let base = self.cell.get();
        self.cell.set(
            common::Bundle::new(
                base.trust_domain().clone(),
                authorities.x509,
                state.sequence,
                base.refresh_hint_seconds(),
            )
            .with_jwt_authorities(authorities.jwt),
        );
        self.events.publish(ChangeEvent::BundleChanged);
        tracing::info!(sequence = state.sequence, "trust bundle updated");
    }

    /// Rebuilds the bundle and pushes it everywhere.
    pub(crate) fn publish(&self) {
        let mut state = self.lock();
        let authorities = self.compose(&state.others);
        self.set(&mut state, authorities);
    }

    /// Shares the bundle with the other servers on the datastore: writes this server's
    /// material that the datastore does not hold as it is (a prepared CA or key, a phase
    /// change; audited), reads every other server's unexpired material, and publishes the
    /// bundle when the union changed. Run every [`shared::REFRESH_INTERVAL`] by
    /// [`share_bundle`], after every change of this server's keys, and at start; a change
    /// feed may call it whenever another server's change is announced.
    pub(crate) async fn refresh_shared(&self, ds: &dyn Datastore) -> Result<(), DatastoreError> {
        let now = now_unix();
        let stored = ds.list_authorities(now).await?;
        let (mine, others): (Vec<PublishedAuthority>, Vec<PublishedAuthority>) = stored
            .into_iter()
            .partition(|a| a.server_id == self.server_id);
        let own = shared::own_rows(&self.server_id, &self.ca, &self.jwt, now);
        let changed = shared::unpublished(&own, &mine);
        if !changed.is_empty() {
            let audit: Vec<AuditEvent> = changed
                .iter()
                .map(|a| {
                    AuditEvent::new(
                        AuditKind::BundlePublished,
                        &a.key_id,
                        serde_json::json!({
                            "server": a.server_id,
                            "kind": a.kind.as_str(),
                            "state": a.state,
                            "not_after": a.not_after,
                        }),
                    )
                    .by(crate::audit::SERVER_ACTOR)
                })
                .collect();
            ds.publish_authorities(&changed, &audit).await?;
            tracing::info!(
                published = changed.len(),
                "published CA certificates and JWT keys to the shared bundle"
            );
        }
        let mut state = self.lock();
        let authorities = self.compose(&others);
        state.others = others;
        let current = self.cell.get();
        if authorities.x509 != current.x509_authorities()
            || authorities.jwt != current.jwt_authorities()
        {
            self.set(&mut state, authorities);
        }
        Ok(())
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
        // The other servers trust the new CA at their next refresh after this one.
        if let Err(e) = self.refresh_shared(ds).await {
            tracing::warn!(error = %e, "cannot share the new CA yet; retrying");
        }
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
    Datastore(#[from] DatastoreError),
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
        // A prepared CA or key reaches the other servers (and their agents) now rather
        // than at the next periodic refresh.
        if let Err(e) = publisher.refresh_shared(&*ds).await {
            tracing::warn!(error = %e, "cannot share the trust bundle; retrying");
        }
    }
}

/// Re-reads the shared bundle every [`shared::REFRESH_INTERVAL`] (publishing this
/// server's own material again if a write was missed) and prunes expired rows now and
/// then.
pub(crate) async fn share_bundle(
    ds: Arc<dyn Datastore>,
    publisher: Arc<BundlePublisher>,
    changed_elsewhere: Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(shared::REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refreshes: u32 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            // The change feed announced another server's change to the table.
            () = changed_elsewhere.notified() => {}
        }
        if let Err(e) = publisher.refresh_shared(&*ds).await {
            tracing::warn!(error = %e, "cannot read the shared trust bundle; retrying");
        }
        refreshes = refreshes.wrapping_add(1);
        if refreshes.is_multiple_of(shared::PRUNE_EVERY) {
            match ds.prune_authorities(now_unix()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "expired trust material pruned"),
                Err(e) => tracing::warn!(error = %e, "cannot prune expired trust material"),
            }
        }
    }
}
