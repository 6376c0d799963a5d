//! Wiring: loads or bootstraps the agent identity, binds the Workload API socket, and runs
//! the rotation worker, the Workload API, cache persistence, usage reports, health
//! endpoints and the readiness watch under one `daemon::supervisor::Supervisor`, which drains them within a
//! deadline at shutdown (and shuts everything down when one of them fails).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use common::proto::tessera::workload_tasks_server::WorkloadTasksServer;
use common::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use common::{Bundle, BundleCell, X509Svid};
use tokio_util::sync::CancellationToken;

use crate::attestation::Attestor;
use crate::cache::{Cache, CacheSnapshot};
use crate::clock::SystemClock;
use crate::config::AgentConfig;
use crate::node_api::{GrpcConnector, NodeConnector};
use crate::node_identity::{self, NodeIdentityError};
use crate::rotation::{Backoff, Rotation};
use crate::server_client::ServerLink;
use crate::usage::UsageCounters;
use crate::workload_api::WorkloadApi;
use crate::workload_api::authority::{MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE};
use crate::workload_api::connection::StreamTrackingLayer;
use crate::workload_api::jwt_cache::JwtCache;
use crate::workload_api::verified::VerifiedTokens;
use daemon::state_file;
use daemon::supervisor::Supervisor;

/// How long in-flight work may take after shutdown is requested.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// How often expired JWT-SVIDs are dropped from the cache when no request does it.
const JWT_CACHE_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

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
    connector: &dyn NodeConnector,
    bundle: &BundleCell,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<X509Svid>> {
    let persisted = node_identity::load_svid(&config.data_dir)?;
    if let Some(svid) = persisted {
        if !svid.is_expired_at(SystemTime::now()) {
            tracing::info!(spiffe_id = %svid.spiffe_id(), "using the persisted agent SVID");
            return Ok(Some(svid));
        }
        if config.join_token.is_none() && config.x509pop.is_none() {
            return Err(NodeIdentityError::Expired(svid.not_after()).into());
        }
    }
    if config.join_token.is_none()
        && let Some((cert, key)) = &config.x509pop
    {
        let mut backoff = Backoff::default();
        loop {
            match node_identity::attest_x509pop(connector, &config.trust_domain, cert, key).await {
                Ok((svid, new_bundle)) => {
                    node_identity::save_svid(&config.data_dir, &svid)?;
                    node_identity::save_bundle(&config.data_dir, &new_bundle)?;
                    bundle.set(new_bundle);
                    tracing::info!(spiffe_id = %svid.spiffe_id(), "node attested with x509pop");
                    return Ok(Some(svid));
                }
                Err(e @ (NodeIdentityError::Refused(_) | NodeIdentityError::Storage { .. })) => {
                    return Err(e.into());
                }
                Err(e) => {
                    let wait = backoff.step();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "x509pop node attestation failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => return Ok(None),
                    }
                }
            }
        }
    }
    let token = config
        .join_token
        .as_deref()
        .ok_or_else(|| NodeIdentityError::NeedToken(config.data_dir.display().to_string()))?;
    let mut backoff = Backoff::default();
    loop {
        match node_identity::attest(connector, &config.trust_domain, token).await {
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
        server_address = %config.server_address.join(","),
        data_dir = %config.data_dir.display(),
        socket_path = %config.socket_path.display(),
        workload_api = ?config.workload_api,
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
    let mut supervisor = Supervisor::new(shutdown.clone(), SHUTDOWN_DEADLINE);
    supervisor.spawn_service(
        "cache persistence",
        crate::cache::persist(cache.clone(), config.data_dir.clone(), shutdown.clone()),
    );
    let link = ServerLink::default();

    // Metrics: handles for the Workload API and the rotation worker, the cache read when
    // scraped.
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = crate::metrics::AgentMetrics::register(&mut registry);
    registry.register_collector(Box::new(crate::metrics::CacheCollector(cache.clone())));
    let registry = Arc::new(registry);

    // Bind first: clients may connect (and get Unavailable) while we attest.
    let health = daemon::health::Health::default();
    if let Some(addr) = config.health_address {
        let listener = daemon::health::bind(addr)
            .await
            .with_context(|| format!("binding health endpoints on {addr}"))?;
        supervisor.spawn_service(
            "health endpoints",
            daemon::health::serve(listener, health.clone(), registry, shutdown.clone()),
        );
    }
    // Ready once the agent can serve: after the first sync from the server (from then on it
    // answers from its cache even if the server goes away), or earlier when the persisted
    // cache holds still-valid SVIDs.
    {
        let mut rx = cache.subscribe();
        let health = health.clone();
        let shutdown = shutdown.clone();
        health.set_not_ready("waiting for the first sync with the server");
        supervisor.spawn_job("readiness", async move {
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
    let jwt_cache = Arc::new(std::sync::Mutex::new(JwtCache::new(config.jwt_cache)));
    {
        // Lookups and inserts sweep too; this gives a burst's memory back when the
        // requests stop.
        let jwt_cache = Arc::clone(&jwt_cache);
        let shutdown = shutdown.clone();
        supervisor.spawn_job("JWT-SVID cache sweep", async move {
            let mut every = tokio::time::interval(JWT_CACHE_SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                if let Ok(mut c) = jwt_cache.lock() {
                    c.sweep(crate::workload_api::unix_now());
                    tracing::debug!(tokens = c.len(), bytes = c.bytes(), "JWT-SVID cache swept");
                }
            }
        });
    }
    // Per-entry usage: counted by the Workload API, reported in batches.
    let usage = UsageCounters::default();
    supervisor.spawn_job(
        "usage reports",
        crate::usage::run(
            usage.clone(),
            link.clone(),
            config.usage_report_interval,
            {
                let cache = cache.clone();
                move || cache.current().shortest_grace()
            },
            shutdown.clone(),
        ),
    );
    // Lifetime follows the requester: process-bound tasks end when their process exits,
    // re-checked for every grant in the cache (also the persisted one, after a restart).
    let holders = crate::holders::Holders::new(link.clone(), supervisor.spawner());
    supervisor.spawn_job(
        "task holders",
        holders.clone().follow(cache.clone(), shutdown.clone()),
    );
    let api = WorkloadApi {
        cache: cache.clone(),
        attestor: Arc::new(Attestor::configured(&config.workload_attestors)),
        link: link.clone(),
        jwt_cache,
        shutdown: shutdown.clone(),
        tasks: supervisor.spawner(),
        usage,
        holders,
        metrics: Arc::clone(&metrics),
        provisioning: Arc::default(),
        verified_tokens: Arc::new(VerifiedTokens::new(config.jwt_verified_max_entries)),
    };
    let api_shutdown = shutdown.clone();
    let limits = config.workload_api;
    let layer = crate::metrics::WorkloadMetricsLayer(Arc::clone(&metrics));
    let max_request = limits.max_request_bytes as usize;
    supervisor.spawn_service("Workload API", async move {
        tonic::transport::Server::builder()
            // The `:authority` repair bounds what it buffers by these same limits.
            .max_frame_size(MAX_FRAME_SIZE)
            .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_concurrent_streams(limits.max_concurrent_streams)
            // Tells each connection when its streams are open (its idle timeout).
            .layer(StreamTrackingLayer)
            .layer(layer)
            .add_service(
                SpiffeWorkloadApiServer::new(api.clone()).max_decoding_message_size(max_request),
            )
            .add_service(WorkloadTasksServer::new(api).max_decoding_message_size(max_request))
            .serve_with_incoming_shutdown(
                // Connection caps, timeouts and the `:authority` repair (see
                // workload_api/listener.rs, connection.rs and authority.rs).
                crate::workload_api::listener::incoming(listener, &limits),
                api_shutdown.cancelled(),
            )
            .await
    });
    tracing::info!(socket_path = %config.socket_path.display(), "Workload API listening");

    // The agent's identity (attesting with the join token if need be, for as long as the
    // server is unreachable), then the rotation worker for as long as the agent runs.
    let connector: Arc<dyn NodeConnector> = Arc::new(GrpcConnector {
        addresses: config.server_address.clone(),
        preferred: Default::default(),
        trust_domain: config.trust_domain.clone(),
        bundle: bundle.clone(),
    });
    let rotation_shutdown = shutdown.clone();
    let rotation_config = config.clone();
    let rotation_cache = cache.clone();
    let rotation_bundle = bundle.clone();
    supervisor.spawn_service("rotation", async move {
        let (config, cache, bundle, shutdown) = (
            rotation_config,
            rotation_cache,
            rotation_bundle,
            rotation_shutdown,
        );
        let Some(agent_svid) = agent_identity(&config, &*connector, &bundle, &shutdown).await?
        else {
            return Ok(());
        };
        // Keep a persisted bundle (it carries the JWT keys); the first sync replaces it.
        cache.update(|s| {
            if s.bundle.is_none() {
                s.bundle = Some(bundle.get());
            }
        });
        let rotation = Rotation {
            connector,
            clock: Arc::new(SystemClock),
            trust_domain: config.trust_domain.clone(),
            data_dir: config.data_dir.clone(),
            cache,
            bundle,
            agent_svid,
            link,
            retry: Default::default(),
            metrics,
        };
        rotation.run(shutdown).await.map_err(anyhow::Error::from)
    });

    let result = supervisor.run().await;
    let _ = std::fs::remove_file(&config.socket_path);
    if !node_identity::has_svid(&config.data_dir) {
        // Refused by the server: a write racing the refusal must not leave identities behind.
        node_identity::forget_svid(&config.data_dir);
    }
    tracing::info!("stopped");
    result.map_err(|e| anyhow::anyhow!(e))
}
