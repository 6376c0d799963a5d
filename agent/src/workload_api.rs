//! The SPIFFE Workload API (`SpiffeWorkloadAPI`) on the agent's Unix socket.
//!
//! Every call must carry exactly one `workload.spiffe.io: true` header (else
//! `InvalidArgument`). The caller is attested from the kernel's view of the connection
//! (SO_PEERCRED, then /proc pinned to the process instance), once per call, and a stream's
//! caller again before every message it sends and every 30 s (see `WorkloadApi::stream`).
//! Streams send their first message at once and a complete new message on every change
//! of what the caller is entitled to; a caller with no matching entry gets `PermissionDenied` with
//! "no identity issued" (the text real clients look for). Errors never echo selectors.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub(crate) mod authority;
pub(crate) mod connection;
pub(crate) mod jwt_cache;
pub(crate) mod listener;
pub(crate) mod tasks;
pub(crate) mod verified;

use common::SpiffeId;
use common::proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use common::proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use common::proto::tessera::TaskTokenUse;

use crate::attestation::{Accepted, AttestationError, Attested, Attestor, PeerCred};
use crate::cache::{Cache, CacheSnapshot};
use crate::server_client::ServerLink;
use crate::usage::UsageCounters;
use connection::ConnectionInfo;
use daemon::supervisor::Spawner;
use jwt_cache::{CachedJwt, JwtCache, JwtKey};

/// The security header every Workload API request must carry.
const SECURITY_HEADER: &str = "workload.spiffe.io";
/// Message real clients match on to recognise "not (yet) registered".
const NO_IDENTITY: &str = "no identity issued";
/// Longest time attestation of one caller may take.
const ATTESTATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stream waits for a matching entry's first SVID before giving up.
const PENDING_TIMEOUT: Duration = Duration::from_secs(30);

/// The Workload API service.
#[derive(Debug, Clone)]
pub(crate) struct WorkloadApi {
    pub(crate) cache: Cache,
    pub(crate) attestor: Arc<Attestor>,
    pub(crate) link: ServerLink,
    /// Minted JWT-SVIDs, bounded by count and bytes.
    pub(crate) jwt_cache: Arc<Mutex<JwtCache>>,
    pub(crate) shutdown: CancellationToken,
    /// Starts the background tasks (token use reports), owned by the agent's supervisor.
    pub(crate) tasks: Spawner,
    /// Per-entry deliveries and validations, reported to the server in batches.
    pub(crate) usage: UsageCounters,
    /// Watches the processes tasks are bound to, and ends a task when its process exits.
    pub(crate) holders: crate::holders::Holders,
    /// Attestation failures are counted here (requests by `WorkloadMetricsLayer`).
    pub(crate) metrics: Arc<crate::metrics::AgentMetrics>,
    /// `ProvisionEntry` calls in flight, by template and instance selectors: concurrent
    /// first calls of one workload make one request.
    pub(crate) provisioning: Arc<Mutex<std::collections::HashSet<(common::TemplateId, String)>>>,
    /// JWT-SVIDs whose signature `ValidateJWTSVID` verified (`verified.rs`).
    pub(crate) verified_tokens: Arc<verified::VerifiedTokens>,
}

/// Longest a `ProvisionEntry` call may take.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(10);

/// Most audiences accepted in one request.
const MAX_AUDIENCES: usize = common::task::MAX_AUDIENCES;
/// Longest audience value accepted (the server enforces the same bound).
const MAX_AUDIENCE_LENGTH: usize = common::task::MAX_AUDIENCE_LEN;

/// Metadata of the server's `ResourceExhausted`: milliseconds until a mint can succeed.
const RETRY_AFTER_MS: &str = "retry-after-ms";
/// How long a rate-limit refusal is held when the server does not say.
const DEFAULT_HOLD_OFF_MS: i64 = 1000;
/// Longest a rate-limit refusal is held, whatever the server says.
const MAX_HOLD_OFF_MS: i64 = 60_000;

/// Unix milliseconds now, by the system clock.
fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Unix seconds now, by the system clock.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The answer to a JWT-SVID that validation refused.
fn refused(e: common::jwt::JwtError) -> Status {
    tracing::info!(error = %e, "JWT-SVID validation failed");
    Status::invalid_argument(e.to_string())
}

/// A JSON value as a protobuf `Value`.
fn to_proto_value(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(to_proto_value).collect(),
        }),
        serde_json::Value::Object(m) => Kind::StructValue(to_proto_struct(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn to_proto_struct(m: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), to_proto_value(v)))
            .collect(),
    }
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    let mut values = req.metadata().get_all(SECURITY_HEADER).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if v.as_bytes() == b"true" => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

/// The kernel's credentials of the process at the other end of `req`'s connection, taken
/// when it connected (attestation checks the caller's /proc against them).
fn peer<T>(req: &Request<T>) -> Result<PeerCred, Status> {
    let cred = req
        .extensions()
        .get::<ConnectionInfo>()
        .and_then(|i| i.uds.peer_cred)
        .ok_or_else(|| Status::unavailable("workload attestation failed"))?;
    Ok(PeerCred {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What is needed to attest a Workload API caller again, any time while its request is
/// open: the peer credentials the kernel recorded at `connect()` and the process instance
/// (start time, executable) pinned when the agent accepted the connection. Both are
/// fixed for the life of the connection; only what `/proc` says of that instance now is
/// read again.
#[derive(Debug, Clone)]
struct CallerHandle {
    peer: PeerCred,
    at_accept: Option<Accepted>,
    attestor: Arc<Attestor>,
    metrics: Arc<crate::metrics::AgentMetrics>,
}

impl CallerHandle {
    /// Attests the caller, bounded by [`ATTESTATION_TIMEOUT`]. Every failure is
    /// `Unavailable` without detail.
    ///
    /// A caller attested in full a moment ago is checked against `/proc` alone, here on the
    /// runtime ([`Attestor::attest_known`]: a few small procfs reads, no hashing and no
    /// user database); otherwise it is attested in full off the runtime, since that may
    /// hash a binary and wait on the user database.
    async fn attest(&self) -> Result<Attested, Status> {
        let peer = self.peer;
        if let Some(known) = self.attestor.attest_known(peer, self.at_accept.as_ref()) {
            return Ok(known);
        }
        let attestor = Arc::clone(&self.attestor);
        let at_accept = self.at_accept.as_ref().map(|a| a.process);
        let job = tokio::task::spawn_blocking(move || match (at_accept, peer.pid) {
            (None, Some(pid)) if pid > 0 => Err(AttestationError::NotPinnedAtAccept { pid }),
            // Without a pid there is nothing to attest: refused as such.
            (at_accept, _) => attestor.attest_caller(peer, at_accept),
        });
        match tokio::time::timeout(ATTESTATION_TIMEOUT, job).await {
            Ok(Ok(Ok(attested))) => Ok(attested),
            Ok(Ok(Err(e))) => {
                tracing::warn!(pid = ?peer.pid, uid = peer.uid, error = %e, "workload attestation failed");
                self.metrics
                    .attestation_failed(crate::metrics::attestation_reason(&e));
                Err(Status::unavailable("workload attestation failed"))
            }
            Ok(Err(join)) => {
                tracing::error!(error = %join, "BUG: attestation task failed");
                self.metrics.attestation_failed("internal");
                Err(Status::unavailable("workload attestation failed"))
            }
            Err(_) => {
                tracing::warn!(pid = ?peer.pid, "workload attestation timed out");
                self.metrics.attestation_failed("timeout");
                Err(Status::unavailable("workload attestation failed"))
            }
        }
    }
}

/// Re-attestation of an open stream's caller: how often it is checked without a change.
const REATTEST_TICK: Duration = Duration::from_secs(30);

impl WorkloadApi {
    /// The handle that attests the caller of `req`, now and again later.
    fn caller<T>(&self, req: &Request<T>) -> Result<CallerHandle, Status> {
        Ok(CallerHandle {
            peer: peer(req)?,
            at_accept: req
                .extensions()
                .get::<ConnectionInfo>()
                .and_then(|i| i.at_accept.clone()),
            attestor: Arc::clone(&self.attestor),
            metrics: Arc::clone(&self.metrics),
        })
    }

    /// Asks the server for the entry of `template` for `caller` (whose instance selectors
    /// are `own`), unless the same request is in flight; the entry then arrives by sync.
    /// A refusal is `PermissionDenied` "no identity issued", as for any caller without an
    /// identity (the server's reason is logged, never shown to the workload).
    async fn provision(
        &self,
        template: &common::template::AgentTemplate,
        caller: &Attested,
        own: &common::SelectorSet,
    ) -> Result<(), Status> {
        let key = (
            template.id.clone(),
            own.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        );
        let first = self
            .provisioning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone());
        if !first {
            return Ok(());
        }
        let req = common::proto::tessera::ProvisionEntryRequest {
            template_id: template.id.to_string(),
            selectors: caller.selectors.iter().map(ToString::to_string).collect(),
        };
        let answer = match self.link.get() {
            Some(node) => tokio::time::timeout(PROVISION_TIMEOUT, node.provision_entry(req))
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time"))),
            None => Err(Status::unavailable("not connected to the server")),
        };
        self.provisioning
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        match answer {
            Ok(entry) => {
                tracing::info!(template_id = %template.id, entry_id = %entry.id, spiffe_id = %entry.spiffe_id, "entry provisioned from a template");
                Ok(())
            }
            Err(status) => {
                tracing::warn!(template_id = %template.id, code = ?status.code(), error = %status.message(), "provisioning refused");
                match status.code() {
                    tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::NotFound
                    | tonic::Code::AlreadyExists
                    | tonic::Code::ResourceExhausted => Err(Status::permission_denied(NO_IDENTITY)),
                    _ => Err(Status::unavailable("identity not yet available")),
                }
            }
        }
    }

    /// Attests the caller of `req` (off the async runtime: it reads /proc and may hash).
    async fn attest<T>(&self, req: &Request<T>) -> Result<Attested, Status> {
        self.caller(req)?.attest().await
    }

    /// Streams `render(snapshot)` to the caller: at once, then whenever it changes.
    ///
    /// `render` returns `Ok(None)` while a matching entry's SVID is still being issued.
    /// `sent` is called with the snapshot and selectors of each message as it is handed to
    /// the response: the first is rendered on the request's task and goes out with the
    /// response; the later ones are rendered when HTTP/2 polls the stream for more (see
    /// [`StreamRounds`]).
    ///
    /// **Re-attestation.** `caller` was attested when the request came. The stream attests
    /// it again through `handle` on every change of the cache, on every [`REATTEST_TICK`],
    /// and before any message it would send otherwise (the first one excepted: it follows
    /// the request's own attestation), and renders for the selectors found then. So a
    /// process moved to another cgroup (or otherwise changed) gets what it is entitled to
    /// now, and `PermissionDenied` if that is nothing; and a process that is gone, whose
    /// pid names another instance, or that ran `exec` (the connection inherited by another
    /// program) ends the stream with the `Unavailable` of a failed attestation, and nothing
    /// more is sent.
    ///
    /// Why this is as safe as the per-request check: it *is* the per-request check. The
    /// handle holds what a new request on this connection would be attested with (the
    /// kernel's peer credentials and the instance pinned at accept) and runs the same
    /// `attest_caller` (fresh pidfd and `/proc/<pid>` pins, start time and executable
    /// compared with those at accept, every uid and gid compared with the peer
    /// credentials), with the same timeout. Every message a stream sends is therefore one
    /// a fresh request made at that moment would have been given, and the only window is
    /// the one any unary call has, between its attestation and its answer. The cost stays
    /// bounded: one attestation per cache change and per tick per stream, never in a loop
    /// (a change that arrives during one waits for the next round).
    fn stream<T, F, S>(
        &self,
        method: &'static str,
        handle: CallerHandle,
        caller: Attested,
        render: F,
        sent: S,
    ) -> BoxStream<T>
    where
        T: Send + PartialEq + Clone + 'static,
        F: Fn(&CacheSnapshot, &Attested) -> Result<Option<T>, Status> + Send + 'static,
        S: Fn(&CacheSnapshot, &Attested) + Send + 'static,
    {
        let mut watch: watch::Receiver<Arc<CacheSnapshot>> = self.cache.subscribe();
        // The first message is rendered here, on the request's own task, and goes out with
        // the response: the caller's answer does not wait for the stream to be polled.
        // Pending or refused, the stream renders (and refuses) as usual when polled.
        let first = {
            let snap = Arc::clone(&watch.borrow_and_update());
            match snap.synced.then(|| render(&snap, &caller)) {
                Some(Ok(Some(msg))) => {
                    sent(&snap, &caller);
                    Some(msg)
                }
                _ => None,
            }
        };
        let rounds = StreamRounds {
            method,
            handle,
            caller,
            watch,
            // Whether the first round only waits: its message went with the response.
            waiting: first.is_some(),
            last: first.clone(),
            // The request's own attestation is fresh: the first round does not repeat it.
            fresh: true,
            started: tokio::time::Instant::now(),
            shutdown: self.shutdown.clone(),
            metrics: Arc::clone(&self.metrics),
            render,
            sent,
            ended: false,
        };
        let rest = futures::stream::unfold(rounds, |mut rounds| async move {
            let item = rounds.next().await?;
            Some((item, rounds))
        });
        Box::pin(futures::StreamExt::chain(
            futures::stream::iter(first.map(Ok)),
            rest,
        ))
    }
}

/// The state of one Workload API stream after its first message (see
/// [`WorkloadApi::stream`]).
///
/// The stream is driven by the response body it feeds: HTTP/2 polls it from the task it
/// already runs for the request when it can send, and drops it when the client goes away. There
/// is no task per stream and no channel between it and the response, so an answer costs
/// no task spawn or cross-thread wake-up, a client that leaves messages unread holds no
/// snapshot (the next round runs only when the previous message has been taken), and a
/// client that cancels ends it at once.
struct StreamRounds<T, F, S> {
    method: &'static str,
    handle: CallerHandle,
    caller: Attested,
    watch: watch::Receiver<Arc<CacheSnapshot>>,
    /// Whether the next round only waits for a reason to render (the last message went
    /// out and nothing changed since).
    waiting: bool,
    /// The last message sent, to send nothing twice.
    last: Option<T>,
    /// Whether the next render may go without attesting `caller` again: the first (the
    /// request's own attestation is fresh), and a pending tick with nothing to send.
    fresh: bool,
    started: tokio::time::Instant,
    shutdown: CancellationToken,
    metrics: Arc<crate::metrics::AgentMetrics>,
    render: F,
    sent: S,
    /// Set once an error went out: the stream ends after it.
    ended: bool,
}

impl<T, F, S> StreamRounds<T, F, S>
where
    T: Send + PartialEq + Clone + 'static,
    F: Fn(&CacheSnapshot, &Attested) -> Result<Option<T>, Status> + Send + 'static,
    S: Fn(&CacheSnapshot, &Attested) + Send + 'static,
{
    /// The next message of the stream, `None` once it ends.
    async fn next(&mut self) -> Option<Result<T, Status>> {
        if self.ended {
            return None;
        }
        loop {
            if !std::mem::take(&mut self.waiting) {
                if !self.fresh {
                    match self.handle.attest().await {
                        Ok(now) => self.caller = now,
                        Err(status) => {
                            tracing::info!(pid = ?self.handle.peer.pid, method = self.method, "stream ended: its caller no longer attests");
                            return Some(self.fail(status));
                        }
                    }
                }
                // The snapshot is dropped before anything is awaited.
                let step = {
                    let snap = Arc::clone(&self.watch.borrow_and_update());
                    let result = if snap.synced {
                        (self.render)(&snap, &self.caller)
                    } else {
                        Ok(None)
                    };
                    match result {
                        Ok(Some(msg)) if self.last.as_ref() != Some(&msg) => {
                            (self.sent)(&snap, &self.caller);
                            Some(Ok(msg))
                        }
                        Ok(Some(_)) => None,
                        Ok(None)
                            if self.last.is_none() && self.started.elapsed() >= PENDING_TIMEOUT =>
                        {
                            Some(Err(Status::unavailable("identity not yet available")))
                        }
                        Ok(None) => None,
                        Err(status) => Some(Err(status)),
                    }
                };
                match step {
                    Some(Ok(msg)) => {
                        self.last = Some(msg.clone());
                        // The next round starts by waiting, as after the first message.
                        self.waiting = true;
                        return Some(Ok(msg));
                    }
                    Some(Err(status)) => return Some(self.fail(status)),
                    None => {}
                }
            }
            let pending = self.last.is_none();
            self.fresh = false;
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                changed = self.watch.changed() => if changed.is_err() { return None },
                // Re-render now and then: an SVID may have expired without any change.
                // (While pending, the short wait re-renders only: the caller is attested
                // again only if there is something to send.)
                () = tokio::time::sleep(if pending { Duration::from_secs(1) } else { REATTEST_TICK }) => {
                    if pending {
                        let snap = Arc::clone(&self.watch.borrow());
                        let ready = snap.synced && !matches!((self.render)(&snap, &self.caller), Ok(None));
                        self.fresh = !ready;
                    }
                }
            }
        }
    }

    /// Ends the stream with `status` (counted by method and code).
    fn fail(&mut self, status: Status) -> Result<T, Status> {
        self.metrics.stream_failed(self.method, status.code());
        self.ended = true;
        Err(status)
    }
}

/// Whether `caller` holds any identity here (issued or not yet).
fn entitled(snap: &CacheSnapshot, caller: &Attested) -> bool {
    snap.identities(&caller.selectors, &caller.lineage, SystemTime::now())
        .matched
}

/// Whether `caller` may read the trust bundles: it matches a live entry, whatever process
/// a task on it is bound to (bundles carry nothing of a task).
fn entitled_to_bundles(snap: &CacheSnapshot, caller: &Attested) -> bool {
    snap.matches_any(&caller.selectors, SystemTime::now())
}

fn bundles_map(snap: &CacheSnapshot) -> HashMap<String, Vec<u8>> {
    snap.bundle
        .iter()
        .filter(|b| !b.x509_authorities().is_empty())
        .map(|b| (b.trust_domain().id_string(), b.der_concat()))
        .collect()
}

/// The X.509-SVID message for a caller, `None` while pending.
pub(crate) fn render_x509(
    snap: &CacheSnapshot,
    caller: &Attested,
) -> Result<Option<X509svidResponse>, Status> {
    let ids = snap.identities(&caller.selectors, &caller.lineage, SystemTime::now());
    if !ids.matched {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let Some(bundle) = snap
        .bundle
        .as_ref()
        .filter(|b| !b.x509_authorities().is_empty())
    else {
        return Ok(None);
    };
    if ids.svids.is_empty() {
        return Ok(None);
    }
    let bundle_der = bundle.der_concat();
    let svids = ids
        .svids
        .iter()
        .map(|(s, hint)| X509svid {
            spiffe_id: s.spiffe_id_str().to_owned(),
            x509_svid: s.chain_der().to_vec(),
            x509_svid_key: s.key_pkcs8().to_vec(),
            bundle: bundle_der.clone(),
            hint: hint.clone(),
        })
        .collect();
    Ok(Some(X509svidResponse {
        svids,
        crl: snap.revocations.crls.clone(),
        federated_bundles: Default::default(),
    }))
}

fn render_bundles(
    snap: &CacheSnapshot,
    caller: &Attested,
) -> Result<Option<X509BundlesResponse>, Status> {
    if !entitled_to_bundles(snap, caller) {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let bundles = bundles_map(snap);
    if bundles.is_empty() {
        return Ok(None);
    }
    Ok(Some(X509BundlesResponse {
        crl: snap.revocations.crls.clone(),
        bundles,
    }))
}

fn render_jwt_bundles(
    snap: &CacheSnapshot,
    caller: &Attested,
) -> Result<Option<JwtBundlesResponse>, Status> {
    if !entitled_to_bundles(snap, caller) {
        return Err(Status::permission_denied(NO_IDENTITY));
    }
    let Some(bundle) = snap.bundle.as_ref() else {
        return Ok(None);
    };
    let jwks = bundle.jwt_bundle().to_jwks().map_err(|e| {
        tracing::error!(error = %e, "cannot encode the JWT bundle");
        Status::unavailable("cannot encode the JWT bundle")
    })?;
    let mut bundles = HashMap::new();
    bundles.insert(
        bundle.trust_domain().id_string(),
        jwks.to_string().into_bytes(),
    );
    Ok(Some(JwtBundlesResponse { bundles }))
}

/// Keeps the entries that may have a JWT-SVID for `audience`. A task identity's JWT-SVIDs
/// name only the audiences its task declared (none declared: none at all). Asked for by
/// SPIFFE ID, or when it is the caller's only identity, it is refused naming the task
/// (`PermissionDenied`); asked for with the caller's other identities, it is left out. The
/// server checks the same before it mints.
fn within_task_audiences(
    entries: &mut Vec<&Arc<crate::cache::CachedEntry>>,
    audience: &[String],
) -> Result<(), Status> {
    let mut refused = None;
    entries.retain(|c| {
        let Some(why) = c.grant.as_ref().and_then(|g| g.audience_refusal(audience)) else {
            return true;
        };
        tracing::info!(entry_id = %c.entry.id, task_id = ?c.grant.as_ref().map(|g| &g.task_id), "JWT-SVID refused: audience not declared by the task");
        refused.get_or_insert(why);
        false
    });
    match refused {
        Some(why) if entries.is_empty() => Err(Status::permission_denied(why)),
        _ => Ok(()),
    }
}

impl WorkloadApi {
    /// Tells the server, in the background, that a task's token was validated here (for
    /// the audit log). Losing a report while the server is away is logged, never fatal.
    fn record_task_token_use(&self, usage: TaskTokenUse) {
        let Some(node) = self.link.get() else {
            tracing::warn!(task_id = %usage.task_id, "task token use not recorded: not attested yet");
            return;
        };
        self.tasks.spawn("task token use report", async move {
            if let Err(e) = node.record_task_token_use(usage).await {
                tracing::warn!(code = ?e.code(), error = %e.message(), "task token use not recorded");
            }
        });
    }

    /// A JWT-SVID for `entry` and `audience`: from the cache while it is fresh, else
    /// minted by the server.
    async fn jwt_for(
        &self,
        cached_entry: &crate::cache::CachedEntry,
        audience: &[String],
    ) -> Result<String, Status> {
        let entry = &cached_entry.entry;
        // A task's token is cached under its task: a new task never reuses the last one's.
        let id = match &cached_entry.grant {
            Some(g) => format!("{}#{}", entry.id, g.task_id),
            None => entry.id.to_string(),
        };
        let key = JwtKey::new(&id, entry.revision, audience);
        let now = unix_now();
        let cached = self
            .jwt_cache
            .lock()
            .ok()
            .and_then(|mut c| c.get(&key, now));
        if let Some(c) = &cached
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        // The server refused this identity by a rate limit a moment ago: answer the same
        // until it said asking again can succeed, without asking it.
        let now_ms = unix_now_ms();
        let held = self
            .jwt_cache
            .lock()
            .ok()
            .and_then(|mut c| c.held_off(&id, now_ms));
        if let Some(message) = held {
            return match cached {
                Some(c) if c.expires_at > now + 1 => Ok(c.token),
                _ => Err(Status::resource_exhausted(message)),
            };
        }
        let Some(node) = self.link.get() else {
            return Err(Status::unavailable("agent is not attested yet"));
        };
        let minted = node
            .mint_jwt_svid(common::proto::tessera::MintJwtSvidRequest {
                entry_id: entry.id.to_string(),
                audience: audience.to_vec(),
                // Under this caller's own task, when the entry has several.
                task_id: cached_entry
                    .grant
                    .as_ref()
                    .map(|g| g.task_id.to_string())
                    .unwrap_or_default(),
            })
            .await;
        match minted {
            Ok(resp) => {
                let lifetime = resp.expires_at.saturating_sub(now);
                let fresh = CachedJwt {
                    token: resp.token.clone(),
                    refresh_at: now.saturating_add(lifetime / 2),
                    expires_at: resp.expires_at,
                };
                if let Ok(mut c) = self.jwt_cache.lock() {
                    c.insert(key, fresh, now);
                }
                Ok(resp.token)
            }
            // The caller's fault (e.g. a malformed audience): say so, never "try again".
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                Err(Status::invalid_argument(s.message().to_owned()))
            }
            // Refused (e.g. the task just ended): never fall back to a cached token.
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                if let Ok(mut c) = self.jwt_cache.lock() {
                    c.remove(&key);
                }
                Err(Status::permission_denied(s.message().to_owned()))
            }
            // Rate-limited by the server: held until the server's retry-after (at most
            // MAX_HOLD_OFF_MS); meanwhile a cached token that is still valid keeps being
            // served, else the workload hears which limit, as ResourceExhausted (never "try
            // again" at once, and the agent does not retry on its behalf).
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                let retry_ms = s
                    .metadata()
                    .get(RETRY_AFTER_MS)
                    .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
                    .map_or(DEFAULT_HOLD_OFF_MS, |ms| ms.clamp(0, MAX_HOLD_OFF_MS));
                // From now, the answer's arrival: never before the server's bucket refills.
                let now_ms = unix_now_ms();
                if let Ok(mut c) = self.jwt_cache.lock() {
                    c.hold_off(
                        &id,
                        now_ms.saturating_add(retry_ms),
                        s.message().to_owned(),
                        now_ms,
                    );
                }
                match cached {
                    Some(c) if c.expires_at > now + 1 => Ok(c.token),
                    _ => {
                        tracing::info!(entry_id = %entry.id, retry_ms, error = %s.message(), "JWT-SVID minting refused by a rate limit");
                        Err(Status::resource_exhausted(s.message().to_owned()))
                    }
                }
            }
            // The server is away: a cached token that is still valid keeps being served.
            Err(s) => match cached {
                Some(c) if c.expires_at > now + 1 => {
                    tracing::warn!(code = ?s.code(), "JWT-SVID refresh failed; serving the cached token");
                    Ok(c.token)
                }
                _ => {
                    tracing::warn!(code = ?s.code(), error = %s.message(), "JWT-SVID minting failed");
                    Err(Status::unavailable(
                        "JWT-SVID could not be issued; try again",
                    ))
                }
            },
        }
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&req)?;
        let handle = self.caller(&req)?;
        let caller = handle.attest().await?;
        // Refuse an unregistered caller before opening a stream, unless an identity
        // template covers it: then its entry is made now and the stream waits for it.
        let snap = self.cache.current();
        if snap.synced && !entitled(&snap, &caller) {
            let Some((template, own)) = snap.template_for(&caller.selectors) else {
                return Err(Status::permission_denied(NO_IDENTITY));
            };
            self.provision(&template, &caller, &own).await?;
        }
        let usage = self.usage.clone();
        let hold = Mutex::new(usage.live().hold());
        let delivered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let delivered_in_sent = Arc::clone(&delivered);
        // One delivery of each entry whose SVID the message carries; the entries made from
        // templates among them are held live while the stream lasts.
        let sent = move |snap: &CacheSnapshot, caller: &Attested| {
            let now = SystemTime::now();
            let ids = snap.identities(&caller.selectors, &caller.lineage, now);
            usage.delivered(&ids.entry_ids, crate::cache::unix(now));
            delivered_in_sent.store(true, std::sync::atomic::Ordering::Relaxed);
            let instances = snap.instances_of(&caller.selectors);
            hold.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .set(
                    ids.entry_ids
                        .iter()
                        .filter(|id| instances.contains(id))
                        .cloned()
                        .collect(),
                );
        };
        // While its entry is on its way, a caller covered by a template waits (up to the
        // pending timeout) rather than being refused. Once it was served, losing the entry
        // ends the stream as for any caller (a new call provisions it again).
        let render = move |snap: &CacheSnapshot, caller: &Attested| match render_x509(snap, caller)
        {
            Err(s)
                if s.code() == tonic::Code::PermissionDenied
                    && !delivered.load(std::sync::atomic::Ordering::Relaxed)
                    && snap.template_for(&caller.selectors).is_some() =>
            {
                Ok(None)
            }
            other => other,
        };
        Ok(Response::new(self.stream(
            "FetchX509SVID",
            handle,
            caller,
            render,
            sent,
        )))
    }

    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        let handle = self.caller(&req)?;
        let caller = handle.attest().await?;
        let snap = self.cache.current();
        if snap.synced && !entitled_to_bundles(&snap, &caller) {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        Ok(Response::new(self.stream(
            "FetchX509Bundles",
            handle,
            caller,
            render_bundles,
            |_, _| {},
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&req)?;
        let wanted = match req.get_ref().spiffe_id.as_str() {
            "" => None,
            raw => Some(
                SpiffeId::new(raw)
                    .map_err(|e| Status::invalid_argument(format!("invalid spiffe_id: {e}")))?,
            ),
        };
        let audience = req.get_ref().audience.clone();
        if audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if audience.len() > MAX_AUDIENCES
            || audience
                .iter()
                .any(|a| a.is_empty() || a.len() > MAX_AUDIENCE_LENGTH)
        {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_AUDIENCES} non-empty audience values of at most {MAX_AUDIENCE_LENGTH} bytes"
            )));
        }
        let caller = self.attest(&req).await?;
        let mut snap = self.cache.current();
        if !snap.synced {
            return Err(Status::unavailable("agent is not synchronised yet"));
        }
        // A caller an identity template covers gets its entry made first, then waits for
        // it to arrive by sync (at most the pending timeout).
        if !snap.matches_any(&caller.selectors, SystemTime::now())
            && let Some((template, own)) = snap.template_for(&caller.selectors)
        {
            self.provision(&template, &caller, &own).await?;
            let mut watch = self.cache.subscribe();
            let arrived = tokio::time::timeout(
                PENDING_TIMEOUT,
                watch.wait_for(|s| s.matches_any(&caller.selectors, SystemTime::now())),
            )
            .await;
            snap = match arrived {
                Ok(Ok(s)) => Arc::clone(&s),
                _ => return Err(Status::unavailable("identity not yet available")),
            };
        }
        let now = unix_now();
        // A task bound to another process is left out, as if its entry were dormant.
        let mut entries: Vec<&Arc<crate::cache::CachedEntry>> = snap
            .entries
            .values()
            .filter(|c| {
                c.serves(&caller.lineage, now) && c.entry.selectors.entry_matches(&caller.selectors)
            })
            .filter(|c| wanted.as_ref().is_none_or(|w| &c.entry.spiffe_id == w))
            .collect();
        entries.sort_by(|a, b| {
            (a.entry.created_at, &a.entry.id).cmp(&(b.entry.created_at, &b.entry.id))
        });
        within_task_audiences(&mut entries, &audience)?;
        // One token per identity, even when several entries grant the same SPIFFE ID.
        let mut seen = std::collections::HashSet::new();
        entries.retain(|c| seen.insert(c.entry.spiffe_id.clone()));
        if entries.is_empty() {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        let mut svids = Vec::with_capacity(entries.len());
        let mut hints = std::collections::HashSet::new();
        let mut delivered = Vec::with_capacity(entries.len());
        for c in entries {
            let token = self.jwt_for(c, &audience).await?;
            let e = &c.entry;
            delivered.push(&e.id);
            let hint = if e.hint.is_empty() || !hints.insert(&*e.hint) {
                String::new()
            } else {
                e.hint.to_string()
            };
            svids.push(common::proto::workload::Jwtsvid {
                spiffe_id: e.spiffe_id.to_string(),
                svid: token,
                hint,
            });
        }
        self.usage.delivered(delivered, unix_now());
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        let handle = self.caller(&req)?;
        let caller = handle.attest().await?;
        let snap = self.cache.current();
        if snap.synced && !entitled_to_bundles(&snap, &caller) {
            return Err(Status::permission_denied(NO_IDENTITY));
        }
        Ok(Response::new(self.stream(
            "FetchJWTBundles",
            handle,
            caller,
            render_jwt_bundles,
            |_, _| {},
        )))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let r = req.get_ref();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let snap = self.cache.current();
        let Some(bundle) = snap.bundle.as_ref() else {
            return Err(Status::unavailable("agent has no trust bundle yet"));
        };
        let now = unix_now();
        let keys = bundle.jwt_authorities();
        let v = match self.verified_tokens.get(&r.svid, keys, now) {
            Some(v) => {
                v.jwt.check(&r.audience, now).map_err(refused)?;
                v
            }
            None => {
                let bundles = std::collections::BTreeMap::from([(
                    bundle.trust_domain().clone(),
                    bundle.jwt_bundle(),
                )]);
                let jwt = common::jwt::verify(&r.svid, &bundles).map_err(refused)?;
                // Kept only once the clock and audience checks pass too: a token refused
                // at its first call is never kept.
                jwt.check(&r.audience, now).map_err(refused)?;
                let response = ValidateJwtsvidResponse {
                    spiffe_id: jwt.spiffe_id().to_string(),
                    claims: Some(to_proto_struct(&jwt.clone().into_validated().claims)),
                };
                let v = Arc::new(verified::Verified::new(jwt, response));
                self.verified_tokens
                    .insert(&r.svid, keys, Arc::clone(&v), now);
                v
            }
        };
        // A use of every entry of this agent granting the token's identity (the token does
        // not say which entry it was minted for), once per entry whatever number of tasks
        // it has here.
        self.usage.validated(v.entries(&snap).iter(), now);
        // A token of a task that ended is refused even though it has not expired.
        let task = v
            .jwt
            .claims()
            .get(common::task::JWT_CLAIM)
            .and_then(|t| t.as_str());
        let ended = task.and_then(|id| snap.task_ended(id, now).map(|st| (id, st)));
        if let Some(task_id) = task {
            let reason = ended
                .map(|(_, st)| format!("task ended ({st})"))
                .unwrap_or_default();
            self.record_task_token_use(TaskTokenUse {
                task_id: task_id.to_owned(),
                spiffe_id: v.response.spiffe_id.clone(),
                audience: r.audience.clone(),
                accepted: ended.is_none(),
                reason,
                expires_at: v.jwt.expires_at(),
            });
        }
        if let Some((task_id, state)) = ended {
            tracing::info!(task_id, state, spiffe_id = %v.jwt.spiffe_id(), "JWT-SVID of an ended task refused");
            return Err(Status::invalid_argument(format!(
                "token belongs to task {task_id}, which has ended ({state})"
            )));
        }
        Ok(Response::new(v.response.clone()))
    }

    type FetchWITSVIDStream = BoxStream<WitsvidResponse>;

    async fn fetch_witsvid(
        &self,
        req: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported",
        ))
    }

    type FetchWITBundlesStream = BoxStream<WitBundlesResponse>;

    async fn fetch_wit_bundles(
        &self,
        req: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        check_header(&req)?;
        Err(Status::unimplemented(
            "the WIT-SVID profile is not supported",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(id: &str, grant: Option<(&str, &[&str])>) -> Arc<crate::cache::CachedEntry> {
        let wire = common::proto::tessera::Entry {
            id: id.into(),
            spiffe_id: format!("spiffe://example.org/{id}"),
            parent_id: "spiffe://example.org/agent".into(),
            selectors: vec!["unix:uid:0".into()],
            x509_svid_ttl_seconds: 3600,
            jwt_svid_ttl_seconds: 300,
            jit: grant.is_some(),
            ..Default::default()
        };
        Arc::new(crate::cache::CachedEntry {
            entry: Arc::new(crate::cache::AgentEntry::try_from(wire).unwrap()),
            grant: grant.map(|(task, audiences)| {
                Arc::new(common::task::TaskGrant {
                    task_id: common::TaskId::parse(task).unwrap(),
                    deadline: i64::MAX,
                    audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                    binding: common::task::TaskBinding::Selectors,
                })
            }),
            svid: None,
            svid_revision: 0,
        })
    }

    fn ids(entries: &[&Arc<crate::cache::CachedEntry>]) -> Vec<String> {
        entries.iter().map(|c| c.entry.id.to_string()).collect()
    }

    #[test]
    fn task_identities_get_jwt_svids_only_for_declared_audiences() {
        let standing = cached("web", None);
        let tool = cached("tool", Some(("t1", &["a", "b"])));
        let bare = cached("bare", Some(("t2", &[])));
        let aud = |v: &[&str]| -> Vec<String> { v.iter().map(|a| (*a).to_owned()).collect() };

        let mut all = vec![&standing, &tool, &bare];
        within_task_audiences(&mut all, &aud(&["a"])).unwrap();
        assert_eq!(
            ids(&all),
            ["web", "tool"],
            "the task without audiences is left out"
        );

        let mut all = vec![&standing, &tool];
        within_task_audiences(&mut all, &aud(&["a", "c"])).unwrap();
        assert_eq!(ids(&all), ["web"]);

        let mut only = vec![&tool];
        within_task_audiences(&mut only, &aud(&["b", "a"])).unwrap();
        assert_eq!(ids(&only), ["tool"]);
        let mut only = vec![&tool];
        let refused = within_task_audiences(&mut only, &aud(&["c"])).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("task t1") && refused.message().contains("\"c\""),
            "{refused:?}"
        );
        let mut only = vec![&bare];
        let refused = within_task_audiences(&mut only, &aud(&["a"])).unwrap_err();
        assert!(refused.message().contains("task t2"), "{refused:?}");
        let mut none: Vec<&Arc<crate::cache::CachedEntry>> = Vec::new();
        assert!(
            within_task_audiences(&mut none, &aud(&["a"])).is_ok(),
            "nothing to refuse"
        );
    }

    #[test]
    fn security_header_rules() {
        let mut ok = Request::new(());
        ok.metadata_mut()
            .insert(SECURITY_HEADER, "true".parse().unwrap());
        assert!(check_header(&ok).is_ok());
        for bad in [None, Some("TRUE"), Some("false"), Some("")] {
            let mut r = Request::new(());
            if let Some(v) = bad {
                r.metadata_mut().insert(SECURITY_HEADER, v.parse().unwrap());
            }
            assert_eq!(
                check_header(&r).unwrap_err().code(),
                tonic::Code::InvalidArgument
            );
        }
        let mut two = Request::new(());
        two.metadata_mut()
            .append(SECURITY_HEADER, "true".parse().unwrap());
        two.metadata_mut()
            .append(SECURITY_HEADER, "true".parse().unwrap());
        assert_eq!(
            check_header(&two).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
