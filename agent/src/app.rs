//! Wiring: loads or bootstraps the agent identity, binds the Workload API socket, starts
//! the rotation worker and the Workload API, and shuts down within a deadline.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use common::proto::tessera::workload_tasks_server::WorkloadTasksServer;
use common::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use common::{Bundle, BundleCell, X509Svid};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;

use crate::attestation::Attestor;
use crate::cache::{Cache, CacheSnapshot};
use crate::config::AgentConfig;
use crate::node_identity::{self, NodeIdentityError};
use crate::rotation::{Backoff, Rotation};
use crate::server_client::ServerLink;
use crate::workload_api::WorkloadApi;
use crate::workload_api::authority::RepairedStream;
use daemon::state_file;
use tokio_stream::StreamExt as _;

/// How long in-flight work may take after shutdown is requested.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

fn initial_bundle(config: &AgentConfig) -> anyhow::Result<Bundle> {
    if let Some(b) = node_identity::load_bundle(&config.data_dir, &config.trust_domain)? {
        return Ok(b);
    }
    let path = config
        .trust_bundle_path
        .as_ref()
        .ok_or(NodeIdentityError::NoBundle)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading trust bundle {}", path.display()))?;
    Bundle::from_pem(config.trust_domain.clone(), &text)
        .with_context(|| format!("trust bundle {}", path.display()))
}

/// The persisted SVID if still valid, else a fresh one from the join token (retrying
/// while the server is unreachable).
async fn agent_identity(
    config: &AgentConfig,
    bundle: &BundleCell,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<X509Svid>> {
    let persisted = node_identity::load_svid(&config.data_dir)?;
    if let Some(svid) = persisted {
        if !svid.is_expired_at(SystemTime::now()) {
            tracing::info!(spiffe_id = %svid.spiffe_id(), "using the persisted agent SVID");
            return Ok(Some(svid));
        }
        if config.join_token.is_none() {
            return Err(NodeIdentityError::Expired(svid.not_after()).into());
        }
    }
    let token = config
        .join_token
        .as_deref()
        .ok_or_else(|| NodeIdentityError::NeedToken(config.data_dir.display().to_string()))?;
    let mut backoff = Backoff::new();
    loop {
        match node_identity::attest_with_token(
            &config.server_address,
            &config.trust_domain,
            bundle,
            token,
        )
        .await
        {
            Ok((svid, new_bundle)) => {
                node_identity::save_svid(&config.data_dir, &svid)?;
                node_identity::save_bundle(&config.data_dir, &new_bundle)?;
                bundle.set(new_bundle);
                tracing::info!(spiffe_id = %svid.spiffe_id(), "node attested with join token");
                return Ok(Some(svid));
            }
            Err(e @ NodeIdentityError::Refused(_)) => return Err(e.into()),
            Err(e) => {
                let wait = backoff.step();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "node attestation failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Runs the agent until `shutdown` fires or the server refuses it.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(
        trust_domain = %config.trust_domain,
        server_address = %config.server_address,
        data_dir = %config.data_dir.display(),
        socket_path = %config.socket_path.display(),
        "starting tessera-agent"
    );
    state_file::ensure_private_dir(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let bundle = BundleCell::new(initial_bundle(&config)?);
    let cache = Cache::default();
    // Serve what was persisted before the restart (still-valid SVIDs only) until the
    // server answers: a restart during a server outage is not a workload outage.
    match CacheSnapshot::load(&config.data_dir) {
        Ok(Some(saved)) => {
            let (entries, svids) = (
                saved.entries.len(),
                saved.entries.values().filter(|c| c.svid.is_some()).count(),
            );
            if let Some(b) = &saved.bundle {
                bundle.set((**b).clone());
            }
            cache.update(|s| *s = saved);
            tracing::info!(
                entries,
                svids,
                "serving the persisted cache until the server answers"
            );
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "ignoring an unreadable persisted cache"),
    }
    let persist = tokio::spawn(crate::cache::persist(
        cache.clone(),
        config.data_dir.clone(),
        shutdown.clone(),
    ));
    let link = ServerLink::default();

    // Bind first: clients may connect (and get Unavailable) while we attest.
    let health = daemon::health::Health::default();
    if let Some(addr) = config.health_address {
        let listener = daemon::health::bind(addr)
            .await
            .with_context(|| format!("binding health endpoints on {addr}"))?;
        tokio::spawn(daemon::health::serve(
            listener,
            health.clone(),
            shutdown.clone(),
        ));
    }
    // Ready once the agent can serve: after the first sync from the server (from then on it
    // answers from its cache even if the server goes away), or earlier when the persisted
    // cache holds still-valid SVIDs.
    {
        let mut rx = cache.subscribe();
        let health = health.clone();
        let shutdown = shutdown.clone();
        health.set_not_ready("waiting for the first sync with the server");
        tokio::spawn(async move {
            loop {
                if rx.borrow_and_update().can_serve(SystemTime::now()) {
                    health.set_ready();
                    return;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
            }
        });
    }
    // Any local process may connect: authorization is by attestation, not by file mode.
    let listener = daemon::socket::bind_unix(&config.socket_path, 0o755, 0o777)?;
    let api = WorkloadApi {
        cache: cache.clone(),
        attestor: Arc::new(Attestor::new()),
        link: link.clone(),
        jwt_cache: Arc::default(),
        shutdown: shutdown.clone(),
    };
    let api_shutdown = shutdown.clone();
    let mut server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(api.clone()))
            .add_service(WorkloadTasksServer::new(api))
            .serve_with_incoming_shutdown(
                // Every connection goes through the `:authority` repair (see authority.rs).
                UnixListenerStream::new(listener).map(|c| c.map(RepairedStream::new)),
                api_shutdown.cancelled(),
            )
            .await
    });
    tracing::info!(socket_path = %config.socket_path.display(), "Workload API listening");

    // A finished JoinHandle must not be polled again at shutdown.
    let mut server_done = false;
    let result = async {
        let Some(agent_svid) = agent_identity(&config, &bundle, &shutdown).await? else {
            return Ok(());
        };
        // Keep a persisted bundle (it carries the JWT keys); the first sync replaces it.
        cache.update(|s| {
            if s.bundle.is_none() {
                s.bundle = Some(bundle.get());
            }
        });
        let rotation = Rotation {
            server_address: config.server_address.clone(),
            trust_domain: config.trust_domain.clone(),
            data_dir: config.data_dir.clone(),
            cache: cache.clone(),
            bundle: bundle.clone(),
            agent_svid,
            retry_at: None,
            sign_backoff: Backoff::new(),
            link: link.clone(),
        };
        tokio::select! {
            r = rotation.run(shutdown.clone()) => r.map_err(anyhow::Error::from),
            r = &mut server => {
                server_done = true;
                match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("Workload API server failed")),
                Err(e) => Err(anyhow::Error::from(e).context("Workload API task failed")),
            }},
        }
    }
    .await;

    shutdown.cancel();
    if !server_done
        && tokio::time::timeout(SHUTDOWN_DEADLINE, &mut server)
            .await
            .is_err()
    {
        tracing::warn!("Workload API did not drain before the deadline; aborting");
        server.abort();
    }
    let _ = std::fs::remove_file(&config.socket_path);
    if tokio::time::timeout(Duration::from_secs(5), persist)
        .await
        .is_err()
    {
        tracing::warn!("the cache was not persisted before the deadline");
    }
    if !node_identity::has_svid(&config.data_dir) {
        // Refused by the server: a write racing the refusal must not leave identities behind.
        node_identity::forget_svid(&config.data_dir);
    }
    tracing::info!("stopped");
    result
}
