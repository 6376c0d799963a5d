//! Wiring: opens the datastore, loads the CA, starts the node API (TLS) and the admin API
//! (Unix socket), and shuts everything down within a deadline when asked.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use common::proto::tessera::admin_server::AdminServer;
use common::proto::tessera::node_server::NodeServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;

use crate::api::admin::AdminService;
use crate::api::node::NodeService;
use crate::audit::anchor::{AnchorFiles, CheckpointLog, CheckpointSigner, Checkpointer};
use crate::bundle::{BundlePublisher, rotate_keys};
use crate::ca::UpstreamAuthority;
use crate::ca::rotation::CaSet;
use crate::clock::now_unix;
use crate::config::{DatastoreUrl, ServerConfig};
use crate::datastore::Datastore;
use crate::datastore::postgres::PostgresDatastore;
use crate::datastore::sqlite::SqliteDatastore;
use crate::events::Events;
use crate::issuance::Issuer;
use crate::jwt_keys::JwtKeyManager;
use crate::node_attestation::NodeAttestor;
use crate::readiness::Readiness;
use crate::registration::Registrar;
use crate::server_identity::ServerIdentity;
use daemon::state_file;
use daemon::supervisor::Supervisor;

/// How long in-flight work may take to finish after shutdown is requested.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the server until `shutdown` fires.
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(
        trust_domain = %config.trust_domain,
        data_dir = %config.data_dir.display(),
        bind_address = %config.bind_address,
        admin_socket = %config.admin_socket.display(),
        ca_ttl_secs = config.ca_ttl.as_secs(),
        default_x509_svid_ttl_secs = config.default_x509_svid_ttl.as_secs(),
        agent_svid_ttl_secs = config.agent_svid_ttl.as_secs(),
        "starting tessera-server"
    );
    state_file::ensure_private_dir(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // With PostgreSQL, the change feed's pool and where it stood before anything was read.
    let mut feed_from = None;
    let ds: Arc<dyn Datastore> = match &config.datastore {
        DatastoreUrl::Sqlite(path) => Arc::new(
            SqliteDatastore::open(path)
                .await
                .with_context(|| format!("opening datastore {}", path.display()))?,
        ),
        // The error names the URL without its password.
        DatastoreUrl::Postgres(url) => {
            let pg = PostgresDatastore::open_with(url, &config.datastore_access)
                .await
                .context("opening the PostgreSQL datastore")?;
            let pool = pg.feed_pool();
            let head = crate::feed::head(&pool)
                .await
                .context("reading the change feed")?;
            feed_from = Some((pool, head));
            Arc::new(pg)
        }
    };
    // Metrics: handles for the instrumented components, state read when scraped. The
    // datastore's failures and audit appends are counted from here on.
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = crate::metrics::ServerMetrics::register(&mut registry);
    let ds: Arc<dyn Datastore> = Arc::new(crate::metrics::Metered::new(ds, Arc::clone(&metrics)));
    tracing::info!(datastore = %config.datastore.describe(), "datastore open");
    let checkpointer = anchor_audit(&config, &*ds).await?;
    let upstream = match &config.upstream {
        Some(u) => Some(Arc::new(
            UpstreamAuthority::load(&u.cert_file, &u.key_file, u.bundle_file.as_deref())
                .context("loading the upstream authority")?,
        )),
        None => None,
    };
    let ca = Arc::new(
        CaSet::load_or_create(
            &config.data_dir,
            &config.trust_domain,
            config.ca_ttl,
            upstream,
            std::time::SystemTime::now(),
        )
        .context("loading the CA")?
        // Task SVIDs name the CRL the relying-party listener serves.
        .with_crl_base_url(config.relying_party.as_ref().map(|rp| rp.url.clone())),
    );
    for (key, ttl) in [
        ("default_x509_svid_ttl", config.default_x509_svid_ttl),
        ("agent_svid_ttl", config.agent_svid_ttl),
    ] {
        if ttl > config.ca_ttl / 6 {
            tracing::warn!(
                key,
                ttl_secs = ttl.as_secs(),
                ca_ttl_secs = config.ca_ttl.as_secs(),
                "SVID lifetime is longer than a sixth of ca_ttl: SVIDs signed shortly before a CA rotation will be cut short to the CA's expiry; raise ca_ttl to at least six times the SVID lifetime"
            );
        }
    }
    let jwt = Arc::new(
        JwtKeyManager::load_or_create(&config.data_dir, config.jwt_key_ttl, now_unix())
            .context("loading the JWT signing keys")?
            .with_issuer(config.jwt_issuer.clone())
            // Task tokens name their status list on the relying-party listener.
            .with_status_lists(config.relying_party.as_ref().map(|rp| rp.url.clone())),
    );
    let events = Events::default();
    let instance_id = crate::bundle::shared::load_or_create_instance_id(&config.data_dir)
        .context("loading the server's instance id")?;
    let publisher = Arc::new(BundlePublisher::new(
        Arc::clone(&ca),
        Arc::clone(&jwt),
        events.clone(),
        instance_id.clone(),
    ));
    // Every server on the datastore serves the union of what all of them published: this
    // server's CAs and keys are shared, and the others' trusted, before anything serves.
    match publisher.refresh_shared(&*ds).await {
        Ok(()) => tracing::info!(
            instance_id = %instance_id,
            x509_authorities = publisher.cell.get().x509_authorities().len(),
            jwt_authorities = publisher.cell.get().jwt_authorities().len(),
            "trust bundle shared through the datastore"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot share the trust bundle through the datastore yet; retrying in the background"
        ),
    }
    crate::bundle::shared::warn_if_rotation_outpaces_sharing(config.ca_ttl, config.jwt_key_ttl);
    let bundle = publisher.cell.clone();
    let registrar = Registrar::new(
        Arc::clone(&ds),
        events.clone(),
        config.trust_domain.clone(),
        config.default_x509_svid_ttl,
        config.default_jwt_svid_ttl,
    );
    let attestor = NodeAttestor::new(
        Arc::clone(&ds),
        Arc::clone(&ca),
        events.clone(),
        config.trust_domain.clone(),
        config.agent_svid_ttl,
    )
    .with_x509pop(match &config.x509pop_ca_file {
        Some(file) => {
            let pop = crate::x509pop::X509Pop::from_pem_file(
                file,
                config.x509pop_agent_id_template.as_deref(),
                config.trust_domain.clone(),
            )
            .map_err(|e| anyhow::anyhow!("x509pop_ca_file: {e}"))?;
            tracing::info!(ca_file = %file.display(), "x509pop node attestation enabled");
            Some(Arc::new(pop))
        }
        None => None,
    });
    let identity =
        ServerIdentity::new(Arc::clone(&ca), &config.trust_domain, config.agent_svid_ttl)
            .context("issuing the server certificate")?;
    let policy = match &config.policy_dir {
        Some(dir) => crate::policy::PolicyEngine::load_dir(dir)
            .with_context(|| format!("loading the task policies in {}", dir.display()))?,
        None => crate::policy::PolicyEngine::builtin(),
    };
    tracing::info!(policy = %policy.describe(), "task policy loaded");
    let task_service = Arc::new(
        crate::tasks::Tasks::new(
            Arc::clone(&ds),
            registrar.clone(),
            Arc::new(policy),
            events.clone(),
            Arc::clone(&ca),
            Arc::new(crate::clock::SystemClock),
            config.max_task_ttl,
        )
        .with_max_parallel_per_entry(config.max_parallel_tasks_per_entry)
        .with_break_glass_max_ttl(config.break_glass_max_ttl)
        .with_metrics(Arc::clone(&metrics)),
    );
    registry.register_collector(Box::new(crate::metrics::StateCollector {
        ca: Arc::clone(&ca),
        jwt: Arc::clone(&jwt),
        tasks: Arc::clone(&task_service) as Arc<dyn crate::metrics::ActiveTasks>,
        ds: Arc::clone(&ds),
    }));
    let registry = Arc::new(registry);
    task_service
        .load()
        .await
        .context("loading tasks from the datastore")?;

    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .context("TLS configuration")?
    .with_client_cert_verifier(common::tls::SpiffeClientVerifier::new(bundle.clone()))
    .with_cert_resolver(Arc::clone(&identity) as Arc<dyn rustls::server::ResolvesServerCert>);
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let tcp = TcpListener::bind(config.bind_address)
        .await
        .with_context(|| format!("binding node API on {}", config.bind_address))?;
    // 0700 directory when we create it; the socket itself 0600 (plus the uid check).
    let health = daemon::health::Health::default();
    let readiness = Arc::new(
        Readiness::new(Arc::clone(&ds), config.datastore.clone(), health.clone())
            .with_metrics(Arc::clone(&metrics)),
    );
    let health_listener = match config.health_address {
        Some(addr) => Some(
            daemon::health::bind(addr)
                .await
                .with_context(|| format!("binding health endpoints on {addr}"))?,
        ),
        None => None,
    };
    // The relying-party listener: its certificate and key are checked, and its port
    // bound, before anything serves.
    let relying_party = match &config.relying_party {
        Some(rp) => {
            let tls = crate::relying_party::tls_config(&rp.cert_file, &rp.key_file)
                .context("loading the relying-party listener's certificate")?;
            let tcp = TcpListener::bind(rp.listen)
                .await
                .with_context(|| format!("binding the relying-party listener on {}", rp.listen))?;
            let issuer = config.jwt_issuer.clone().unwrap_or_else(|| rp.url.clone());
            if issuer != rp.url {
                tracing::warn!(
                    jwt_issuer = %issuer,
                    relying_party_url = %rp.url,
                    "jwt_issuer differs from relying_party_url: relying parties find the discovery document under the issuer, so it must lead to this listener"
                );
            }
            let tasks = Arc::clone(&task_service);
            let published = crate::relying_party::RelyingParty::new(
                rp.url.clone(),
                issuer,
                Arc::clone(&jwt),
                Box::new(move || tasks.revocations()),
            )
            // The JWKS holds every server's keys, as the agents' bundles do.
            .with_bundle(bundle.clone());
            Some((Arc::new(published), tcp, Arc::new(tls)))
        }
        None => None,
    };
    // The change feed tells SET push of tasks other servers changed (their audit records
    // are committed with them).
    let (tasks_changed, tasks_changed_rx) = tokio::sync::watch::channel(0u64);
    // SET push: the receivers' roots and the cursors are read before anything serves.
    let set_pusher = match &config.set_push {
        Some(push) => Some(Arc::new(
            crate::set_push::SetPusher::new(
                push.clone(),
                &config.data_dir,
                Arc::clone(&ds),
                Arc::clone(&jwt),
                instance_id.clone(),
            )
            .context("setting up Security Event Token push")?
            .woken_by(tasks_changed_rx),
        )),
        None => None,
    };
    let admin = match config.admin_socket_gid {
        None => daemon::socket::bind_unix(&config.admin_socket, 0o700, 0o600)?,
        Some(gid) => {
            // The directory (when we create it) may be traversed; the socket itself is
            // for its owner and the admin socket's group only (platform operators of the
            // admin group, tenant admins); every call still checks who is calling.
            let l = daemon::socket::bind_unix(&config.admin_socket, 0o711, 0o660)?;
            nix::unistd::chown(
                &config.admin_socket,
                None,
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .with_context(|| {
                format!(
                    "giving {} to the admin socket's group",
                    config.admin_socket.display()
                )
            })?;
            l
        }
    };

    let templates = crate::templates::Templates::new(Arc::clone(&ds), registrar.clone());
    let node = NodeService {
        templates: templates.clone(),
        attestor: attestor.clone(),
        ds: Arc::clone(&ds),
        issuer: Issuer::new(
            Arc::clone(&ds),
            Arc::clone(&ca),
            Arc::clone(&jwt),
            Arc::clone(&task_service),
            Arc::new(crate::rate_limit::MintLimiter::new(
                config.jwt_mint_limits,
                Arc::new(crate::clock::SystemClock),
            )),
        )
        .with_task_x509_svid_ttl(config.task_x509_svid_ttl),
        events,
        bundle: bundle.clone(),
        tasks: Arc::clone(&task_service),
        feed: feed_from
            .as_ref()
            .map(|(pool, head)| crate::feed::Cursor::new(pool.clone(), *head)),
        shutdown: shutdown.clone(),
        metrics: Arc::clone(&metrics),
    };
    let resolver = crate::domains::DnsResolver::new(config.dns_resolver)
        .context("setting up the DNS resolver that verifies tenants' domains")?;
    let domains = Arc::new(crate::tenants::domains::TenantDomains::new(
        Arc::clone(&ds),
        registrar.tenants().clone(),
        resolver,
    ));
    let admin_svc = AdminService {
        templates: templates.clone(),
        domains: Arc::clone(&domains),
        registrar: registrar.clone(),
        attestor,
        bundle: bundle.clone(),
        publisher: Arc::clone(&publisher),
        identity: Arc::clone(&identity),
        ds: Arc::clone(&ds),
        tasks: Arc::clone(&task_service),
        readiness: Arc::clone(&readiness),
        admin_gid: config.admin_gid,
        audit_anchor: AnchorFiles::in_dir(&config.data_dir),
    };

    let mut tasks = Supervisor::new(shutdown.clone(), SHUTDOWN_DEADLINE);
    // The change feed tells the bundle's sharing loop of other servers' trust material.
    let bundle_changed = Arc::new(tokio::sync::Notify::new());
    if let Some(cursor) = &node.feed {
        let feed = crate::feed::Feed::new(
            Arc::clone(&ds),
            Arc::clone(&task_service),
            node.events.clone(),
            Arc::clone(&bundle_changed),
            tasks_changed,
            Arc::clone(cursor),
        );
        tasks.spawn_service("change feed", feed.run(shutdown.clone()));
    }
    tasks.spawn_service("tasks", Arc::clone(&task_service).run(shutdown.clone()));
    // Sets readiness: ready once (and while) the datastore answers.
    tasks.spawn_service("readiness", readiness.run(shutdown.clone()));
    tasks.spawn_service(
        "template instance collection",
        collect_instances(templates, shutdown.clone()),
    );
    tasks.spawn_service(
        "entry expiry and review",
        disable_lapsed_entries(registrar, shutdown.clone()),
    );
    tasks.spawn_service(
        "domain re-checks",
        recheck_domains(domains, config.domain_recheck_interval, shutdown.clone()),
    );
    tasks.spawn_service(
        "audit checkpoints",
        Arc::clone(&checkpointer).run(ds.audit_heads(), shutdown.clone()),
    );
    if let Some(pusher) = set_pusher {
        tasks.spawn_service("SET push", pusher.run(shutdown.clone()));
    }
    tasks.spawn_service(
        "server identity",
        Arc::clone(&identity).run(shutdown.clone()),
    );
    tasks.spawn_service(
        "shared trust bundle",
        crate::bundle::share_bundle(
            Arc::clone(&ds),
            Arc::clone(&publisher),
            Arc::clone(&bundle_changed),
            shutdown.clone(),
        ),
    );
    tasks.spawn_service(
        "key rotation",
        rotate_keys(
            Arc::clone(&ds),
            Arc::clone(&publisher),
            Arc::clone(&identity),
            shutdown.clone(),
        ),
    );

    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(128);
    let accept_shutdown = shutdown.clone();
    let handshakes = tasks.spawner();
    tasks.spawn_service("node API accept", async move {
        loop {
            let (sock, peer) = tokio::select! {
                () = accept_shutdown.cancelled() => return,
                r = tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            // Without TCP_NODELAY, Nagle's algorithm holds the small TLS records of a gRPC
            // response (headers, data, trailers) until the client's delayed ACK, ~40 ms.
            if let Err(e) = sock.set_nodelay(true) {
                tracing::debug!(peer = %peer, error = %e, "TCP_NODELAY not set");
            }
            let acceptor = acceptor.clone();
            let tx = conn_tx.clone();
            handshakes.spawn("TLS handshake", async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                }
            });
        }
    });

    let node_shutdown = shutdown.clone();
    tasks.spawn_service("node API", async move {
        tonic::transport::Server::builder()
            .add_service(NodeServer::new(node))
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), node_shutdown.cancelled())
            .await
    });
    let admin_shutdown = shutdown.clone();
    tasks.spawn_service("admin API", async move {
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(admin_svc))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(admin),
                admin_shutdown.cancelled(),
            )
            .await
    });
    if let Some((published, tcp, tls)) = relying_party {
        tasks.spawn_service(
            "relying-party listener",
            crate::relying_party::serve(published, tcp, tls, tasks.spawner(), shutdown.clone()),
        );
    }
    if let Some(listener) = health_listener {
        tasks.spawn_service(
            "health endpoints",
            daemon::health::serve(listener, health.clone(), registry, shutdown.clone()),
        );
    }
    // Datastore open, CA and keys loaded, both APIs listening: the server can serve once
    // the readiness probe sees the datastore answer (it sets `health`).
    tracing::info!(
        bind_address = %config.bind_address,
        admin_socket = %config.admin_socket.display(),
        health_address = ?config.health_address,
        relying_party_listen = ?config.relying_party.as_ref().map(|rp| rp.listen),
        relying_party_url = ?config.relying_party.as_ref().map(|rp| &rp.url),
        jwt_issuer = ?config.jwt_issuer,
        jwt_mint_limit_per_workload = %config.jwt_mint_limits.per_workload,
        jwt_mint_limit_per_agent = %config.jwt_mint_limits.per_agent,
        "tessera-server ready"
    );

    // A component that stops (or fails) before shutdown was requested is fatal; at
    // shutdown every component gets SHUTDOWN_DEADLINE to drain, then is aborted.
    let result = tasks.run().await;
    // Nothing appends any more: anchor the final head.
    let last = ds.audit_heads().borrow().clone();
    if let Some(head) = last {
        checkpointer.write(head).await;
    }
    let _ = std::fs::remove_file(&config.admin_socket);
    tracing::info!("stopped");
    result.context("a server component stopped unexpectedly")
}

/// How often entries past their expiry or review deadline are looked for: an entry stops
/// being served within this of its deadline (plus the push to agents).
const LAPSE_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How often instances of identity templates are checked against their grace.
const INSTANCE_COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// Deletes instances of identity templates whose workload has been gone for the grace.
async fn collect_instances(templates: crate::templates::Templates, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INSTANCE_COLLECT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match templates.collect(now_unix()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "template instances deprovisioned"),
            Err(e) => tracing::error!(error = %e, "cannot collect template instances; will retry"),
        }
    }
}

/// Disables entries at their expiry or when their review lapses, on every agent.
async fn disable_lapsed_entries(registrar: Registrar, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(LAPSE_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = registrar.disable_lapsed(now_unix()).await {
            tracing::error!(error = %e, "cannot disable lapsed entries; will retry");
        }
    }
}

/// Re-checks verified domains every `interval`.
async fn recheck_domains(
    domains: Arc<crate::tenants::domains::TenantDomains>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match domains.recheck().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                failing = n,
                "verified domains no longer verify; their names are not issued"
            ),
            Err(e) => tracing::error!(error = %e, "cannot re-check domains; will retry"),
        }
    }
}

/// Loads the audit checkpoint key and file, makes the datastore append after the last
/// signed checkpoint, and reports loudly when the stored log lost or changed the record it
/// covers (the server still starts: issuance goes on, the new records take new numbers,
/// and `audit verify` keeps reporting the damage).
async fn anchor_audit(
    config: &ServerConfig,
    ds: &dyn Datastore,
) -> anyhow::Result<Arc<Checkpointer>> {
    let server = crate::server_identity::server_id(&config.trust_domain)
        .context("the server's SPIFFE ID")?;
    let signer = CheckpointSigner::load_or_create(&config.data_dir, server.as_str())
        .context("loading the audit checkpoint key")?;
    let (log, last) = CheckpointLog::open(&config.data_dir, signer.public_key())
        .context("opening the audit checkpoint file")?;
    if let Some(cp) = &last {
        ds.anchor_audit(cp.head());
        let stored = ds
            .audit_record(cp.seq)
            .await
            .context("reading the checkpointed audit record")?;
        match stored {
            Some(r) if r.hash == cp.hash => {}
            Some(_) => tracing::error!(
                checkpointed = cp.seq,
                "AUDIT LOG TAMPERED: record {} no longer has the hash its signed checkpoint holds (rewritten); run `tessera-server audit verify`",
                cp.seq
            ),
            None => {
                let head = ds
                    .audit_head()
                    .await
                    .context("reading the audit chain head")?
                    .map_or(0, |h| h.seq);
                tracing::error!(
                    stored_head = head,
                    checkpointed = cp.seq,
                    "AUDIT LOG TAMPERED: record {} is covered by a signed checkpoint but the datastore does not hold it (truncated or deleted); new records follow record {} so no sequence number is used twice; run `tessera-server audit verify`",
                    cp.seq,
                    cp.seq
                );
            }
        }
    }
    tracing::info!(
        checkpoints = %AnchorFiles::in_dir(&config.data_dir).checkpoints.display(),
        key_id = %signer.public_key().key_id(),
        last_checkpointed = last.as_ref().map_or(0, |c| c.seq),
        "audit chain anchored"
    );
    Ok(Arc::new(Checkpointer::new(
        signer,
        log,
        last.map(|c| c.head()),
        config.audit_checkpoint_interval,
        config.audit_checkpoint_records,
    )))
}
