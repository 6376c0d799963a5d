//! Wiring: opens the datastore, loads the CA, starts the node API (TLS) and the admin API
//! (Unix socket), and shuts everything down within a deadline when asked.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use common::BundleCell;
use common::proto::tessera::admin_server::AdminServer;
use common::proto::tessera::node_server::NodeServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;

use crate::api::admin::AdminService;
use crate::api::node::NodeService;
use crate::ca::Ca;
use crate::config::{DatastoreUrl, ServerConfig};
use crate::datastore::Datastore;
use crate::datastore::sqlite::SqliteDatastore;
use crate::events::Events;
use crate::jwt_keys::JwtKeyManager;
use crate::node_attestation::NodeAttestor;
use crate::registration::Registrar;
use crate::registration::now_unix;
use crate::server_identity::ServerIdentity;
use crate::state_file;

/// How long in-flight work may take to finish after shutdown is requested.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the admin socket: removes a stale file left by a crash, creates the directory
/// (0700 when we create it), and restricts the socket to its owner (0600).
fn bind_admin_socket(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another server is already serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Advances the JWT key schedule and publishes every change of the key set in the bundle
/// (and so to every agent's sync stream).
async fn rotate_jwt_keys(
    jwt: Arc<JwtKeyManager>,
    ca: Arc<Ca>,
    bundle: BundleCell,
    events: Events,
    shutdown: CancellationToken,
) {
    loop {
        let wait = u64::try_from(jwt.next_event().saturating_sub(now_unix())).unwrap_or(0);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(wait.clamp(1, 3600))) => {}
        }
        match jwt.tick(now_unix()) {
            Ok(true) => {
                let sequence = bundle.get().sequence() + 1;
                bundle.set(ca.bundle(sequence).with_jwt_authorities(jwt.public_keys()));
                events.publish(crate::events::ChangeEvent::BundleChanged);
                tracing::info!(sequence, "trust bundle updated (JWT keys)");
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "JWT key rotation failed; retrying"),
        }
    }
}

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
    let ds: Arc<dyn Datastore> = match &config.datastore {
        DatastoreUrl::Sqlite(path) => Arc::new(
            SqliteDatastore::open(path)
                .await
                .with_context(|| format!("opening datastore {}", path.display()))?,
        ),
    };
    let ca = Arc::new(
        Ca::load_or_create(&config.data_dir, &config.trust_domain, config.ca_ttl)
            .context("loading the CA")?,
    );
    let jwt = Arc::new(
        JwtKeyManager::load_or_create(&config.data_dir, config.jwt_key_ttl, now_unix())
            .context("loading the JWT signing keys")?,
    );
    let bundle = BundleCell::new(ca.bundle(1).with_jwt_authorities(jwt.public_keys()));
    let events = Events::default();
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
    );
    let identity =
        ServerIdentity::new(Arc::clone(&ca), &config.trust_domain, config.agent_svid_ttl)
            .context("issuing the server certificate")?;

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
    let admin = bind_admin_socket(&config.admin_socket)?;

    let node = NodeService {
        attestor: attestor.clone(),
        ds: Arc::clone(&ds),
        ca: Arc::clone(&ca),
        events,
        bundle: bundle.clone(),
        jwt: Arc::clone(&jwt),
        shutdown: shutdown.clone(),
    };
    let admin_svc = AdminService {
        registrar,
        attestor,
        bundle: bundle.clone(),
    };

    let mut tasks = JoinSet::new();
    tasks.spawn(Arc::clone(&identity).run(shutdown.clone()));
    tasks.spawn(rotate_jwt_keys(
        jwt,
        Arc::clone(&ca),
        bundle,
        node.events.clone(),
        shutdown.clone(),
    ));

    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel(128);
    let accept_shutdown = shutdown.clone();
    tasks.spawn(async move {
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
            let acceptor = acceptor.clone();
            let tx = conn_tx.clone();
            tokio::spawn(async move {
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
    tasks.spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(NodeServer::new(node))
            .serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), node_shutdown.cancelled())
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "node API server failed");
        }
    });
    let admin_shutdown = shutdown.clone();
    tasks.spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(AdminServer::new(admin_svc))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(admin),
                admin_shutdown.cancelled(),
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "admin API server failed");
        }
    });
    tracing::info!(
        bind_address = %config.bind_address,
        admin_socket = %config.admin_socket.display(),
        "tessera-server ready"
    );

    // A component that stops before shutdown was requested is a fatal error.
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = tasks.join_next() => {
            shutdown.cancel();
            let _ = std::fs::remove_file(&config.admin_socket);
            anyhow::bail!("a server component stopped unexpectedly");
        }
    }
    tracing::info!("shutting down");
    let drained = tokio::time::timeout(SHUTDOWN_DEADLINE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            still_running = tasks.len(),
            "shutdown deadline passed; aborting"
        );
        tasks.abort_all();
    }
    let _ = std::fs::remove_file(&config.admin_socket);
    tracing::info!("stopped");
    Ok(())
}
