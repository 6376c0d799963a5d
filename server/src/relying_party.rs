//! The relying-party surface: an HTTPS listener serving what parties that never talk to
//! Tessera need to validate its credentials offline and to see a task's end.
//!
//! - `GET /.well-known/openid-configuration`: an OpenID Connect discovery document
//!   (`issuer`, `jwks_uri`, ES256), so standard JWT libraries, cloud IAM and tool servers
//!   find the JWT-SVID keys from the token's `iss`.
//! - `GET /keys` (also `/jwks.json`): the JWK set of every published JWT signing key
//!   (prepared, active and retired, as in the SPIFFE bundle), `alg` ES256, `use` sig.
//! - `GET /crl/<CA serial>.crl`: the DER CRL of each CA whose key this server holds,
//!   listing the task X.509-SVIDs of tasks that ended early (the URL task SVIDs carry in
//!   their CRL Distribution Points). It changes in the same call that ends a task.
//! - `GET /statuslists/<task id>`: a token status list (IETF OAuth Token Status List,
//!   `statuslist+jwt` signed with the active JWT-SVID key) of one entry, set (invalid)
//!   once the task ended before its deadline: what task JWT-SVIDs name in their `status`
//!   claim. One list per task needs no index allocation and no stored state: the entry is
//!   a function of the current revocations (a token of a task past its deadline has
//!   expired anyway), at the price of telling the server which task a relying party
//!   checks. A status list token cannot pass for a JWT-SVID: its `sub` is an https URL,
//!   not a SPIFFE ID, and it has no `aud`.
//!
//! Everything else is 404, other methods than GET and HEAD 405. The listener serves
//! HTTP/1.1 only, behind TLS with a certificate the operator gives (relying parties trust
//! their web PKI, not the SPIFFE bundle). What a client can make it hold is bounded: the
//! TLS handshake and the request head must arrive within [`HANDSHAKE_TIMEOUT`] and
//! [`HEADER_TIMEOUT`], a head is at most [`MAX_HEAD_BYTES`], request bodies are never
//! read, a connection lives at most [`CONNECTION_LIFETIME`], and at most
//! [`MAX_CONNECTIONS`] are open at once (more are closed at accept).
//!
//! Responses are computed from in-memory state only (the key manager, the current
//! revocations): a request never touches the datastore or a signing key.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::jwt_keys::JwtKeyManager;
use crate::tasks::RevocationSet;
use daemon::supervisor::Spawner;

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request head may take to arrive (also between requests on a connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection is kept, however busy.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Connections open at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 512;
/// `Cache-Control` of the discovery document and the JWK set: keys are published long
/// before they sign (see `jwt_keys.rs`), so a minute of caching never hides a key in use.
const KEYS_CACHE: &str = "public, max-age=60";
/// `Cache-Control` of CRLs: short, because they change the moment a task ends.
const CRL_CACHE: &str = "public, max-age=5";
/// `Cache-Control` and `ttl` of status lists: short, as CRLs.
const STATUS_LIST_CACHE: &str = "public, max-age=5";
/// The status list token's `ttl` claim (seconds a relying party may cache it).
const STATUS_LIST_TTL: i64 = 5;
/// Longest CA serial accepted in a CRL path: 20 bytes (RFC 5280 §4.1.2.2), in hex.
const MAX_SERIAL_HEX: usize = 40;

/// Why the listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelyingPartyError {
    /// The certificate or key file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The key file may be read by other users.
    #[error(
        "{path}: the relying-party TLS key may be read by group or others (mode {mode:o}); chmod 600 it"
    )]
    KeyMode {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// rustls refused the certificate and key.
    #[error("relying-party TLS certificate and key: {0}")]
    Tls(String),
}

/// Where the current revocations come from ([`crate::tasks::Tasks::revocations`]).
pub type RevocationSource = Box<dyn Fn() -> Arc<RevocationSet> + Send + Sync>;

/// What the listener serves.
pub struct RelyingParty {
    url: String,
    issuer: String,
    jwt: Arc<JwtKeyManager>,
    revocations: RevocationSource,
    /// The trust bundle whose JWT keys the JWKS lists (every server's on a shared
    /// datastore); `None`: this server's own keys.
    bundle: Option<common::BundleCell>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("url", &self.url)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(
    status: StatusCode,
    content_type: &'static str,
    cache: &'static str,
    body: Bytes,
) -> Reply {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

fn json_reply(status: StatusCode, cache: &'static str, body: &Value) -> Reply {
    reply(
        status,
        "application/json",
        cache,
        Bytes::from(body.to_string()),
    )
}

fn error(status: StatusCode, message: &str) -> Reply {
    json_reply(status, "no-store", &json!({ "error": message }))
}

impl RelyingParty {
    /// Serves the keys of `jwt` and the CRLs of `revocations` as `url` (the public base
    /// URL, no trailing slash), naming `issuer` in the discovery document.
    pub fn new(
        url: String,
        issuer: String,
        jwt: Arc<JwtKeyManager>,
        revocations: RevocationSource,
    ) -> Self {
        Self {
            url,
            issuer,
            jwt,
            revocations,
            bundle: None,
        }
    }

    /// Serves as JWKS the JWT keys of `bundle` (the bundle every server on the datastore
    /// shares) rather than this server's own.
    #[must_use]
    pub(crate) fn with_bundle(mut self, bundle: common::BundleCell) -> Self {
        self.bundle = Some(bundle);
        self
    }

    /// The OpenID Connect discovery document (the fields SPIRE's OIDC discovery provider
    /// publishes, which cloud IAM and JWT libraries accept).
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/keys", self.url),
            "authorization_endpoint": "",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// The JWK set of every published JWT-SVID key.
    pub fn jwks(&self) -> Value {
        let published = match &self.bundle {
            Some(b) => b.get().jwt_authorities().to_vec(),
            None => self.jwt.public_keys(),
        };
        let keys: Vec<Value> = published
            .iter()
            .filter_map(|k| match k.to_jwk() {
                Ok(mut jwk) => {
                    jwk["alg"] = json!("ES256");
                    jwk["use"] = json!("sig");
                    Some(jwk)
                }
                Err(e) => {
                    tracing::error!(kid = %k.kid, error = %e, "BUG: a JWT key has no JWK form");
                    None
                }
            })
            .collect();
        json!({ "keys": keys })
    }

    /// The current DER CRL of the CA with serial `ca_serial` (hex, any case).
    pub fn crl(&self, ca_serial: &str) -> Option<Vec<u8>> {
        if ca_serial.is_empty()
            || ca_serial.len() > MAX_SERIAL_HEX
            || !ca_serial.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        (self.revocations)()
            .published_crls
            .get(&ca_serial.to_ascii_lowercase())
            .cloned()
    }

    /// The signed status list of task `task_id` (see the module documentation), if the
    /// id is well-formed.
    pub fn status_list(&self, task_id: &str) -> Option<String> {
        if !crate::jwt_keys::is_path_segment(task_id) {
            return None;
        }
        let id = common::TaskId::parse(task_id).ok()?;
        let invalid = (self.revocations)()
            .ended_tasks
            .iter()
            .any(|t| t.task_id == id);
        let uri = format!("{}/statuslists/{}", self.url, id.as_str());
        match self
            .jwt
            .sign_status_list(&uri, invalid, STATUS_LIST_TTL, crate::clock::now_unix())
        {
            Ok(token) => Some(token),
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a status list");
                None
            }
        }
    }

    /// The response to `method` on `path` (no I/O).
    pub fn respond(&self, method: &Method, path: &str) -> Reply {
        if method != Method::GET && method != Method::HEAD {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match path {
            "/.well-known/openid-configuration" => {
                json_reply(StatusCode::OK, KEYS_CACHE, &self.discovery())
            }
            "/keys" | "/jwks.json" => reply(
                StatusCode::OK,
                "application/jwk-set+json",
                KEYS_CACHE,
                Bytes::from(self.jwks().to_string()),
            ),
            _ if path.starts_with("/statuslists/") => {
                match path
                    .strip_prefix("/statuslists/")
                    .and_then(|id| self.status_list(id))
                {
                    Some(token) => reply(
                        StatusCode::OK,
                        "application/statuslist+jwt",
                        STATUS_LIST_CACHE,
                        Bytes::from(token),
                    ),
                    None => error(StatusCode::NOT_FOUND, "not found"),
                }
            }
            _ => match path
                .strip_prefix("/crl/")
                .and_then(|p| p.strip_suffix(".crl"))
                .and_then(|serial| self.crl(serial))
            {
                Some(der) => reply(
                    StatusCode::OK,
                    "application/pkix-crl",
                    CRL_CACHE,
                    Bytes::from(der),
                ),
                None => error(StatusCode::NOT_FOUND, "not found"),
            },
        }
    }
}

/// Reads the listener's certificate chain and key and builds its TLS configuration
/// (TLS 1.2 and 1.3, HTTP/1.1). Refuses a key file that group or others may read.
pub fn tls_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<rustls::ServerConfig, RelyingPartyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let file_error = |path: &Path, message: String| RelyingPartyError::File {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(key_file).map_err(|e| file_error(key_file, e.to_string()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(RelyingPartyError::KeyMode {
            path: key_file.display().to_string(),
            mode,
        });
    }
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file_error(cert_file, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert_file, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| file_error(key_file, format!("no usable private key: {e}")))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| RelyingPartyError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| RelyingPartyError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// Serves `rp` on `tcp` behind `tls` until `shutdown`; each connection runs as a child of
/// `spawner`'s supervisor.
pub async fn serve(
    rp: Arc<RelyingParty>,
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    spawner: Spawner,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (sock, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "relying-party accept failed");
                    // Out of descriptors, most likely: let some connections end.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(peer = %peer, "relying-party connection refused: too many open");
            continue;
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let rp = Arc::clone(&rp);
        let stop = shutdown.clone();
        spawner.spawn("relying-party connection", async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "relying-party TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %peer, "relying-party TLS handshake timed out");
                    return;
                }
            };
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let resp = rp.respond(req.method(), req.uri().path());
                    async move { Ok::<_, Infallible>(resp) }
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                () = stop.cancelled() => {}
                r = tokio::time::timeout(CONNECTION_LIFETIME, conn) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(peer = %peer, error = %e, "relying-party connection ended");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rp(crls: BTreeMap<String, Vec<u8>>) -> (RelyingParty, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let jwt =
            JwtKeyManager::load_or_create(dir.path(), Duration::from_secs(3600), 1_000).unwrap();
        let set = Arc::new(RevocationSet {
            published_crls: crls,
            ended_tasks: vec![crate::tasks::EndedTask {
                task_id: common::TaskId::parse(ENDED).unwrap(),
                until: i64::MAX,
                state: common::task::TaskState::Revoked,
            }],
            ..Default::default()
        });
        let rp = RelyingParty::new(
            "https://rp.example.org/t".into(),
            "https://rp.example.org/t".into(),
            Arc::new(jwt),
            Box::new(move || Arc::clone(&set)),
        );
        (rp, dir)
    }

    const ENDED: &str = "01a23aa8-d90e-7482-b8f1-9def42c334b6";

    #[test]
    fn status_lists_say_whether_a_task_ended() {
        use base64::Engine as _;
        let (rp, _dir) = rp(BTreeMap::new());
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for (id, want) in [
            (ENDED, 0x01),
            ("01a23aa8-d90e-7482-b8f1-000000000000", 0x00),
        ] {
            let r = rp.respond(&Method::GET, &format!("/statuslists/{id}"));
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[CONTENT_TYPE], "application/statuslist+jwt");
            let token = String::from_utf8(body(&r)).unwrap();
            let claims: Value =
                serde_json::from_slice(&b64.decode(token.split('.').nth(1).unwrap()).unwrap())
                    .unwrap();
            assert_eq!(
                claims["sub"],
                format!("https://rp.example.org/t/statuslists/{id}").as_str()
            );
            let lst = b64
                .decode(claims["status_list"]["lst"].as_str().unwrap())
                .unwrap();
            // zlib header, stored block of one byte: the byte is at offset 7.
            assert_eq!(lst[7], want, "{id}");
        }
        for path in ["/statuslists/", "/statuslists/x%2F..", "/statuslists/a/b"] {
            assert_eq!(
                rp.respond(&Method::GET, path).status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
    }

    fn body(r: &Reply) -> Vec<u8> {
        use http_body_util::BodyExt as _;
        futures::executor::block_on(r.body().clone().collect())
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[test]
    fn serves_discovery_keys_and_crls_and_nothing_else() {
        let (rp, _dir) = rp(BTreeMap::from([("0a1b".to_owned(), vec![0x30, 0x00])]));
        let r = rp.respond(&Method::GET, "/.well-known/openid-configuration");
        assert_eq!(r.status(), StatusCode::OK);
        let doc: Value = serde_json::from_slice(&body(&r)).unwrap();
        assert_eq!(doc["issuer"], "https://rp.example.org/t");
        assert_eq!(doc["jwks_uri"], "https://rp.example.org/t/keys");
        assert_eq!(
            doc["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );

        for path in ["/keys", "/jwks.json"] {
            let r = rp.respond(&Method::GET, path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()[CACHE_CONTROL], KEYS_CACHE);
            let jwks: Value = serde_json::from_slice(&body(&r)).unwrap();
            let keys = jwks["keys"].as_array().unwrap();
            assert_eq!(keys.len(), 1, "{jwks}");
            for field in ["kid", "kty", "crv", "x", "y"] {
                assert!(keys[0][field].is_string(), "{field} in {jwks}");
            }
            assert_eq!(keys[0]["alg"], "ES256");
            assert_eq!(keys[0]["use"], "sig");
        }

        for path in ["/crl/0a1b.crl", "/crl/0A1B.crl"] {
            let r = rp.respond(&Method::GET, path);
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(r.headers()[CONTENT_TYPE], "application/pkix-crl");
            assert_eq!(body(&r), vec![0x30, 0x00]);
        }
        assert_eq!(rp.respond(&Method::HEAD, "/keys").status(), StatusCode::OK);

        for path in [
            "/",
            "/crl/ffff.crl",
            "/crl/0a1b",
            "/crl/.crl",
            "/crl/0a1b.crl/x",
            "/crl/../keys",
            "/crl/zz.crl",
            "/keys/",
            "/.well-known/openid-configuration/x",
            &format!("/crl/{}.crl", "a".repeat(41)),
        ] {
            assert_eq!(
                rp.respond(&Method::GET, path).status(),
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let r = rp.respond(&m, "/keys");
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{m}");
            assert_eq!(r.headers()[ALLOW], "GET, HEAD");
        }
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["rp.example.org".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.path().join("rp.pem"), dir.path().join("rp.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = tls_config(&c, &k).unwrap_err();
        assert!(
            matches!(err, RelyingPartyError::KeyMode { mode: 0o640, .. }),
            "{err}"
        );
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        tls_config(&c, &k).unwrap();
        // A certificate file without certificates, a key file without a key.
        let err = tls_config(&k, &k).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
        std::fs::write(&k, "nothing").unwrap();
        let err = tls_config(&c, &k).unwrap_err();
        assert!(err.to_string().contains("no usable private key"), "{err}");
    }
}
