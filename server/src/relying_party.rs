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
//! - `GET /statuslists/<n>`: token status list `n` (IETF OAuth Token Status List,
//!   `statuslist+jwt` signed with the active JWT-SVID key; `bits` 1, 2^16 entries, see
//!   `status_list.rs`), shared by many tasks, each holding a random entry: an entry is
//!   set (INVALID) once its task ended before its deadline (a token of a task past its
//!   deadline has expired anyway). Task JWT-SVIDs name their list and index in their
//!   `status` claim; fetching a list does not tell the server which task a relying party
//!   checks. The lists are built in memory by the revocation refresh, so every server
//!   answers the same within a refresh; a list number past the newest the server knows
//!   is served (all VALID) only if it is the next one, which another server may just have
//!   started, and is 404 otherwise.
//! - `GET /statuslists/<task id>`: the list of one entry (index 0) that JWT-SVIDs of
//!   tasks recorded before schema version 13 name, set once the task ended early.
//!
//!   A status list token cannot pass for a JWT-SVID: its `sub` is an https URL, not a
//!   SPIFFE ID, and it has no `aud`.
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

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
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
    /// Status lists as last signed, by name: reused within the second they were signed
    /// in, so a flood of requests costs a signature per list per second, not one each.
    signed: Mutex<HashMap<String, SignedList>>,
}

/// A signed status list (see [`RelyingParty::status_list`]).
#[derive(Debug)]
struct SignedList {
    /// The list it carries.
    lst: Arc<str>,
    /// The unix second it was signed in (its `iat`).
    at: i64,
    token: String,
}

/// Most signed lists kept; past this the memory is cleared (names of old per-task lists
/// are as many as such tasks).
const SIGNED_KEPT: usize = 1024;

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
            signed: Mutex::default(),
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

    /// The signed status list named `name` in its path (see the module documentation):
    /// a list number (decimal, no leading zero) or, for tasks recorded before schema
    /// version 13, a task id. `None` if there is no such list.
    pub fn status_list(&self, name: &str) -> Option<String> {
        let revocations = (self.revocations)();
        let lst = match parse_list_name(name)? {
            ListName::Shared(number) => revocations.status_lists.lst(number)?,
            ListName::Task(id) => {
                let invalid = revocations.ended_tasks.iter().any(|t| t.task_id == id);
                crate::status_list::of_one_task(invalid)
            }
        };
        let now = crate::clock::now_unix();
        let mut signed = self.signed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = signed.get(name)
            && s.at == now
            && *s.lst == *lst
        {
            return Some(s.token.clone());
        }
        let uri = format!("{}/statuslists/{name}", self.url);
        match self.jwt.sign_status_list(&uri, &lst, STATUS_LIST_TTL, now) {
            Ok(token) => {
                if signed.len() >= SIGNED_KEPT {
                    signed.clear();
                }
                signed.insert(
                    name.to_owned(),
                    SignedList {
                        lst,
                        at: now,
                        token: token.clone(),
                    },
                );
                Some(token)
            }
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

/// What a `/statuslists/<name>` path names.
#[derive(Debug, PartialEq, Eq)]
enum ListName {
    /// A shared list, by number.
    Shared(i64),
    /// The list of one entry of a task recorded before schema version 13.
    Task(common::TaskId),
}

/// The list `name` names: a list number in canonical decimal (so each list has one URI,
/// its `sub`), or a task id as every release generated them (a hyphenated lowercase
/// UUID).
fn parse_list_name(name: &str) -> Option<ListName> {
    if !name.is_empty() && name.len() <= 18 && name.bytes().all(|b| b.is_ascii_digit()) {
        if name.starts_with('0') {
            return None;
        }
        return name.parse().ok().map(ListName::Shared);
    }
    let uuid = uuid::Uuid::try_parse(name).ok()?;
    if uuid.hyphenated().to_string() != name {
        return None;
    }
    common::TaskId::parse(name).ok().map(ListName::Task)
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
    use crate::datastore::StatusEntry;
    use std::collections::BTreeMap;

    fn rp(crls: BTreeMap<String, Vec<u8>>) -> (RelyingParty, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let jwt =
            JwtKeyManager::load_or_create(dir.path(), Duration::from_secs(3600), 1_000).unwrap();
        let ended = |id: &str, status: Option<StatusEntry>| crate::tasks::EndedTask {
            task_id: common::TaskId::parse(id).unwrap(),
            until: i64::MAX,
            state: common::task::TaskState::Revoked,
            status,
            ended_at_ms: 0,
        };
        let ended_tasks = vec![
            ended(ENDED, None),
            ended("t-a", Some(StatusEntry { list: 2, idx: 9 })),
            ended(
                "t-b",
                Some(StatusEntry {
                    list: 2,
                    idx: 60_001,
                }),
            ),
            ended("t-c", Some(StatusEntry { list: 1, idx: 0 })),
        ];
        let (status_lists, _) = crate::status_list::StatusLists::build(
            ended_tasks.iter().filter_map(|t| t.status),
            Some(3),
            &Default::default(),
        );
        let set = Arc::new(RevocationSet {
            published_crls: crls,
            ended_tasks,
            status_lists,
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

    /// The claims of the status list at `path`, and its set entries.
    fn fetch_list(rp: &RelyingParty, path: &str) -> (Value, Vec<u32>) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let r = rp.respond(&Method::GET, path);
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/statuslist+jwt");
        assert_eq!(r.headers()[CACHE_CONTROL], STATUS_LIST_CACHE);
        let token = String::from_utf8(body(&r)).unwrap();
        let header: Value =
            serde_json::from_slice(&b64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["typ"], "statuslist+jwt");
        let claims: Value =
            serde_json::from_slice(&b64.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(claims["status_list"]["bits"], 1);
        assert_eq!(claims["ttl"], STATUS_LIST_TTL);
        let z = b64
            .decode(claims["status_list"]["lst"].as_str().unwrap())
            .unwrap();
        let bits = miniz_oxide::inflate::decompress_to_vec_zlib(&z).unwrap();
        // Every list has all its entries: a relying party can read any index it is given.
        assert_eq!(bits.len(), 8192, "{path}");
        let set = (0..bits.len() * 8)
            .filter(|i| bits[i / 8] >> (i % 8) & 1 == 1)
            .map(|i| u32::try_from(i).unwrap())
            .collect();
        (claims, set)
    }

    #[test]
    fn shared_status_lists_set_the_entries_of_ended_tasks() {
        let (rp, _dir) = rp(BTreeMap::new());
        for (n, want) in [(1, &[0][..]), (2, &[9, 60_001]), (3, &[]), (4, &[])] {
            let (claims, set) = fetch_list(&rp, &format!("/statuslists/{n}"));
            assert_eq!(
                claims["sub"],
                format!("https://rp.example.org/t/statuslists/{n}").as_str()
            );
            assert_eq!(set, want, "list {n}");
        }
    }

    #[test]
    fn task_lists_of_earlier_tasks_say_whether_the_task_ended() {
        let (rp, _dir) = rp(BTreeMap::new());
        for (id, want) in [
            (ENDED, &[0][..]),
            ("01a23aa8-d90e-7482-b8f1-000000000000", &[]),
        ] {
            let (claims, set) = fetch_list(&rp, &format!("/statuslists/{id}"));
            assert_eq!(
                claims["sub"],
                format!("https://rp.example.org/t/statuslists/{id}").as_str()
            );
            assert_eq!(set, want, "{id}");
        }
    }

    #[test]
    fn status_list_paths_name_a_list_number_or_a_task() {
        assert_eq!(parse_list_name("1"), Some(ListName::Shared(1)));
        assert_eq!(
            parse_list_name("123456789012345678"),
            Some(ListName::Shared(123_456_789_012_345_678))
        );
        assert_eq!(
            parse_list_name(ENDED),
            Some(ListName::Task(common::TaskId::parse(ENDED).unwrap()))
        );
        for bad in [
            "",
            "0",
            "01",
            "1234567890123456789",
            "x%2F..",
            "a/b",
            "1 ",
            "-1",
            "+1",
            "t1",
            "01A23AA8-D90E-7482-B8F1-9DEF42C334B6",
            "01a23aa8d90e7482b8f19def42c334b6",
        ] {
            assert_eq!(parse_list_name(bad), None, "{bad:?}");
        }
        let (rp, _dir) = rp(BTreeMap::new());
        for path in [
            "/statuslists/",
            "/statuslists/0",
            "/statuslists/01",
            "/statuslists/5",
            "/statuslists/-1",
            "/statuslists/99999999999999999999",
            "/statuslists/x%2F..",
            "/statuslists/a/b",
            "/statuslists/1/",
            "/statuslists/../keys",
        ] {
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

    /// A status list is signed once per list per second however often it is asked for,
    /// and signed again at once when the list changed.
    #[test]
    fn a_status_list_is_signed_once_a_second_and_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let jwt =
            JwtKeyManager::load_or_create(dir.path(), Duration::from_secs(3600), 1_000).unwrap();
        let set_with = |ended: &[u32]| {
            let (status_lists, _) = crate::status_list::StatusLists::build(
                ended.iter().map(|idx| StatusEntry { list: 1, idx: *idx }),
                Some(1),
                &Default::default(),
            );
            Arc::new(RevocationSet {
                status_lists,
                ..Default::default()
            })
        };
        let current = Arc::new(Mutex::new(set_with(&[5])));
        let source = Arc::clone(&current);
        let rp = RelyingParty::new(
            "https://rp.example.org/t".into(),
            "https://rp.example.org/t".into(),
            Arc::new(jwt),
            Box::new(move || Arc::clone(&source.lock().unwrap())),
        );
        // Within one second (retried if the second turned between the two).
        let (first, again) = loop {
            let at = crate::clock::now_unix();
            let first = rp.status_list("1").unwrap();
            let again = rp.status_list("1").unwrap();
            if crate::clock::now_unix() == at {
                break (first, again);
            }
        };
        assert_eq!(first, again, "signed once within the second");
        assert_eq!(rp.signed.lock().unwrap().len(), 1);
        // The list changed: a new token at once, carrying the change.
        *current.lock().unwrap() = set_with(&[5, 6]);
        let changed = rp.status_list("1").unwrap();
        assert_ne!(changed, first);
        let (_, set) = fetch_list(&rp, "/statuslists/1");
        assert_eq!(set, [5, 6]);
        // A later second: signed again (a fresh `iat`).
        std::thread::sleep(Duration::from_millis(1100));
        assert_ne!(rp.status_list("1").unwrap(), changed);
    }
}
