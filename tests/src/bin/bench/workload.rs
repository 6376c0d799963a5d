//! Figures measured against a running cluster: Workload API latency (2), propagation (3),
//! JWT-SVIDs over the socket (5) and X.509 signing through the node API (1, end to end).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use common::proto::tessera::{
    CsrForEntry, EndTaskRequest, EntryIdRequest, SignX509SvidsRequest, TaskSpec,
};
use common::proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use common::proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};
use common::{BundleCell, SpiffeId};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::Config;
use crate::procs::{Agent, Server, entry_spec, retry_internal, with_header, workload_client};
use crate::stats::{self, Figure, Target, Unit, percentile, percentile_pair, pooled};
use crate::stub::GrpcStub;

/// SPIFFE ID of the benchmark cluster's agent.
pub(crate) const NODE_ID: &str = "spiffe://example.org/node/bench";
/// The identity the benchmark process holds in the cluster.
pub(crate) const WORKLOAD_ID: &str = "spiffe://example.org/bench/workload";

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A server, an agent enrolled as [`NODE_ID`] and one entry for this process's uid.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) agent: Agent,
    pub(crate) server: Server,
    pub(crate) dir: tempfile::TempDir,
}

impl Cluster {
    pub(crate) async fn start(cfg: &Config, bin_dir: &Path) -> anyhow::Result<Self> {
        let dir = cfg.workdir("cluster")?;
        let server = Server::start(bin_dir, dir.path()).await?;
        server
            .admin()
            .await?
            .create_entry(entry_spec(NODE_ID, WORKLOAD_ID))
            .await
            .context("creating the workload entry")?;
        let agent = Agent::start(
            bin_dir,
            &dir.path().join("agent"),
            &server,
            NODE_ID,
            &cfg.agent_env,
        )
        .await?;
        crate::procs::wait_svids(&agent.socket, 1, Duration::from_secs(30)).await?;
        Ok(Self { agent, server, dir })
    }
}

// ------------------------------------------------------------------ raw Unix socket echo

/// A Unix-socket echo server on its own OS thread and single-threaded runtime (so it does
/// not share the client's runtime, as the agent does not).
struct Echo {
    path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start(path: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(path);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let p = path.to_owned();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::UnixListener::bind(&p) {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        conn = listener.accept() => {
                            let Ok((mut s, _)) = conn else { continue };
                            tokio::spawn(async move {
                                let mut buf = [0_u8; 256];
                                loop {
                                    match s.read(&mut buf).await {
                                        Ok(0) | Err(_) => return,
                                        Ok(n) => {
                                            if s.write_all(&buf[..n]).await.is_err() {
                                                return;
                                            }
                                        }
                                    }
                                }
                            });
                        }
                    }
                }
            });
        });
        ready_rx.recv().context("echo server thread")??;
        Ok(Self {
            path: path.to_owned(),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn ping(s: &mut UnixStream) -> anyhow::Result<()> {
    s.write_all(&[0x2a]).await?;
    let mut b = [0_u8; 1];
    s.read_exact(&mut b).await?;
    Ok(())
}

/// Raw: connect + 1-byte round trip.
async fn raw_connect_rt(path: PathBuf) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut s = UnixStream::connect(&path).await?;
    ping(&mut s).await?;
    Ok(ms(t0.elapsed()))
}

// --------------------------------------------------------------- Workload API first message

/// Tessera: connect + FetchX509SVID (attestation included) + first message.
async fn fetch_new_conn(socket: PathBuf) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut c = workload_client(&socket).await?;
    let d = fetch_on(&mut c).await?;
    let total = ms(t0.elapsed());
    debug_assert!(d <= total);
    Ok(total)
}

/// Tessera: FetchX509SVID + first message on an existing connection.
async fn fetch_on(c: &mut SpiffeWorkloadApiClient<Channel>) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut s = c
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    let m = s.message().await?.context("stream ended")?;
    let d = ms(t0.elapsed());
    ensure!(!m.svids.is_empty(), "no SVID in the first message");
    Ok(d)
}

/// Runs `n` copies of `f` released together by a barrier; returns their latencies.
async fn concurrent<F, Fut>(n: usize, f: F) -> anyhow::Result<Vec<f64>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<f64>> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let b = Arc::clone(&barrier);
        let fut = f();
        set.spawn(async move {
            b.wait().await;
            fut.await
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r??);
    }
    Ok(out)
}

#[derive(Default)]
struct LatencySamples {
    by_kind: std::collections::BTreeMap<&'static str, Vec<Vec<f64>>>,
}

impl LatencySamples {
    fn push(&mut self, kind: &'static str, rep_samples: Vec<f64>) {
        self.by_kind.entry(kind).or_default().push(rep_samples);
    }

    /// Per-repeat percentile `q` of `kind`.
    fn per_rep(&self, kind: &str, q: f64) -> Vec<f64> {
        self.by_kind
            .get(kind)
            .map(|reps| stats::per_rep(reps, q))
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (k, reps) in &self.by_kind {
            out.insert(
                (*k).to_owned(),
                json!({
                    "unit": "milliseconds",
                    "p50_per_rep": stats::per_rep(reps, 0.5),
                    "p99_per_rep": stats::per_rep(reps, 0.99),
                    "pooled": pooled(reps),
                    "samples_per_rep": reps,
                }),
            );
        }
        Value::Object(out)
    }
}

/// Figure 2: FetchX509SVID first-message latency against a raw Unix-socket round trip.
pub(crate) async fn latency(
    cfg: &Config,
    cluster: &Cluster,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let socket = cluster.agent.socket.clone();
    let echo_path = cluster.dir.path().join("echo.sock");
    let _echo = Echo::start(&echo_path)?;
    // The stub answers with the very message the agent serves this process.
    let message = workload_client(&socket)
        .await?
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner()
        .message()
        .await?
        .context("stream ended")?;
    let stub = GrpcStub::start(&cluster.dir.path().join("stub.sock"), message)?;
    let stub_path = stub.path.clone();
    let n = cfg.latency_samples;
    let conc = cfg.concurrency;
    let rounds = cfg.concurrent_rounds;
    // Warm-up: the first attestation of this executable hashes it.
    for _ in 0..5 {
        fetch_new_conn(socket.clone()).await?;
        fetch_new_conn(stub_path.clone()).await?;
        raw_connect_rt(echo_path.clone()).await?;
    }
    let mut s = LatencySamples::default();
    for rep in 0..cfg.reps {
        eprintln!("  latency repeat {}/{}", rep + 1, cfg.reps);
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(raw_connect_rt(echo_path.clone()).await?);
        }
        s.push("raw_connect_rt_1", v);
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(fetch_new_conn(stub_path.clone()).await?);
        }
        s.push("stub_new_conn_1", v);
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(fetch_new_conn(socket.clone()).await?);
        }
        s.push("fetch_new_conn_1", v);

        let mut raw_stream = UnixStream::connect(&echo_path).await?;
        ping(&mut raw_stream).await?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let t0 = Instant::now();
            ping(&mut raw_stream).await?;
            v.push(ms(t0.elapsed()));
        }
        s.push("raw_rt_open_conn_1", v);
        let mut client = workload_client(&stub_path).await?;
        fetch_on(&mut client).await?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(fetch_on(&mut client).await?);
        }
        s.push("stub_open_conn_1", v);
        let mut client = workload_client(&socket).await?;
        fetch_on(&mut client).await?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(fetch_on(&mut client).await?);
        }
        s.push("fetch_open_conn_1", v);
        drop(client);

        let (mut raw_c, mut stub_c, mut tes_c) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            raw_c.extend(concurrent(conc, || raw_connect_rt(echo_path.clone())).await?);
            stub_c.extend(concurrent(conc, || fetch_new_conn(stub_path.clone())).await?);
            tes_c.extend(concurrent(conc, || fetch_new_conn(socket.clone())).await?);
        }
        s.push("raw_connect_rt_concurrent", raw_c);
        s.push("stub_new_conn_concurrent", stub_c);
        s.push("fetch_new_conn_concurrent", tes_c);
    }
    let lat = |id: &str, name: &str, kind: &str, q: f64, base: &str, base_label: &str| {
        Figure::new(id, name, Unit::Ms, &s.per_rep(kind, q)).baseline(
            base_label,
            Unit::Ms,
            &s.per_rep(base, q),
        )
    };
    let raw_conn = "raw UDS connect + 1-byte round trip";
    let figures = vec![
        lat(
            "workload.x509.first_message.1_client.new_connection.p50",
            "2. FetchX509SVID first message p50, 1 client, new connection",
            "fetch_new_conn_1",
            0.5,
            "raw_connect_rt_1",
            &format!("{raw_conn}, p50"),
        )
        .target(Target::RatioAtMost(5.0)),
        lat(
            "workload.x509.first_message.1_client.new_connection.p99",
            "2. FetchX509SVID first message p99, 1 client, new connection",
            "fetch_new_conn_1",
            0.99,
            "raw_connect_rt_1",
            &format!("{raw_conn}, p99"),
        ),
        lat(
            "workload.x509.first_message.1_client.open_connection.p50",
            "2. FetchX509SVID first message p50, 1 client, open connection",
            "fetch_open_conn_1",
            0.5,
            "raw_rt_open_conn_1",
            "raw UDS 1-byte round trip, open connection, p50",
        )
        .target(Target::RatioAtMost(5.0)),
        lat(
            "workload.x509.first_message.1_client.open_connection.p99",
            "2. FetchX509SVID first message p99, 1 client, open connection",
            "fetch_open_conn_1",
            0.99,
            "raw_rt_open_conn_1",
            "raw UDS 1-byte round trip, open connection, p99",
        ),
        lat(
            &format!("workload.x509.first_message.{conc}_clients.new_connection.p50"),
            &format!("2. FetchX509SVID first message p50, {conc} concurrent clients"),
            "fetch_new_conn_concurrent",
            0.5,
            "raw_connect_rt_concurrent",
            &format!("{raw_conn}, {conc} concurrent, p50"),
        )
        .target(Target::RatioAtMost(5.0)),
        lat(
            &format!("workload.x509.first_message.{conc}_clients.new_connection.p99"),
            &format!("2. FetchX509SVID first message p99, {conc} concurrent clients"),
            "fetch_new_conn_concurrent",
            0.99,
            "raw_connect_rt_concurrent",
            &format!("{raw_conn}, {conc} concurrent, p99"),
        ),
        lat(
            "workload.x509.grpc_stub.1_client.new_connection.p50",
            "2. gRPC stub, same message, no attestation: p50, 1 client, new connection",
            "stub_new_conn_1",
            0.5,
            "raw_connect_rt_1",
            &format!("{raw_conn}, p50"),
        )
        .note("what the transport alone costs: tonic/HTTP/2 over the same kind of socket"),
        lat(
            "workload.x509.grpc_stub.1_client.open_connection.p50",
            "2. gRPC stub, same message, no attestation: p50, 1 client, open connection",
            "stub_open_conn_1",
            0.5,
            "raw_rt_open_conn_1",
            "raw UDS 1-byte round trip, open connection, p50",
        ),
        lat(
            &format!("workload.x509.grpc_stub.{conc}_clients.new_connection.p50"),
            &format!("2. gRPC stub, same message, no attestation: p50, {conc} concurrent clients"),
            "stub_new_conn_concurrent",
            0.5,
            "raw_connect_rt_concurrent",
            &format!("{raw_conn}, {conc} concurrent, p50"),
        ),
        // Against the stub: what Tessera adds to the transport (attestation, the cache
        // lookup, the `:authority` repair), the figures the latency work is held to.
        lat(
            "workload.x509.first_message.1_client.new_connection.p50.vs_stub",
            "2. FetchX509SVID first message p50 ÷ gRPC stub p50, 1 client, new connection",
            "fetch_new_conn_1",
            0.5,
            "stub_new_conn_1",
            "gRPC stub, same message, new connection, p50",
        )
        .target(Target::RatioAtMost(1.5)),
        lat(
            "workload.x509.first_message.1_client.open_connection.p50.vs_stub",
            "2. FetchX509SVID first message p50 ÷ gRPC stub p50, 1 client, open connection",
            "fetch_open_conn_1",
            0.5,
            "stub_open_conn_1",
            "gRPC stub, same message, open connection, p50",
        )
        .target(Target::RatioAtMost(1.5)),
        lat(
            &format!("workload.x509.first_message.{conc}_clients.new_connection.p50.vs_stub"),
            &format!(
                "2. FetchX509SVID first message p50 ÷ gRPC stub p50, {conc} concurrent clients"
            ),
            "fetch_new_conn_concurrent",
            0.5,
            "stub_new_conn_concurrent",
            &format!("gRPC stub, same message, {conc} concurrent, p50"),
        )
        .target(Target::RatioAtMost(2.0)),
    ];
    let raw = json!({
        "samples_per_rep_sequential": n,
        "concurrency": conc,
        "concurrent_rounds_per_rep": rounds,
        "latencies": s.json(),
    });
    Ok((figures, raw))
}

/// Reads stream messages until one's SPIFFE IDs satisfy `want`.
pub(crate) async fn next_matching(
    stream: &mut tonic::Streaming<common::proto::workload::X509svidResponse>,
    want: impl Fn(&[String]) -> bool,
) -> anyhow::Result<()> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .context("no stream message within 30 s")??
            .context("stream ended")?;
        let ids: Vec<String> = m.svids.into_iter().map(|s| s.spiffe_id).collect();
        if want(&ids) {
            return Ok(());
        }
    }
}

/// Figure 3: entry creation (and deletion) reaching an open FetchX509SVID stream.
pub(crate) async fn propagation(
    cfg: &Config,
    cluster: &Cluster,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let admin = cluster.server.admin().await?;
    let mut client = workload_client(&cluster.agent.socket).await?;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    let first = stream.message().await?.context("stream ended")?;
    ensure!(!first.svids.is_empty());
    let (mut create_call, mut create_prop, mut delete_call, mut delete_prop) =
        (vec![], vec![], vec![], vec![]);
    let (mut revoke_call, mut revoke_prop) = (vec![], vec![]);
    for rep in 0..cfg.reps {
        eprintln!(
            "  propagation repeat {}/{} ({} entries)",
            rep + 1,
            cfg.reps,
            cfg.propagation_entries
        );
        let (mut cc, mut cp, mut dc, mut dp) = (vec![], vec![], vec![], vec![]);
        let mut created = Vec::new();
        for i in 0..cfg.propagation_entries {
            let id = format!("spiffe://example.org/bench/propagation/r{rep}/e{i}");
            let t_call = Instant::now();
            let e = crate::procs::create_entry(&admin, entry_spec(NODE_ID, &id)).await?;
            let t0 = Instant::now();
            next_matching(&mut stream, |ids| ids.iter().any(|s| s == &id)).await?;
            cp.push(ms(t0.elapsed()));
            cc.push(ms(t0 - t_call));
            created.push((e.id, id));
        }
        for (entry_id, id) in created {
            let t_call = Instant::now();
            retry_internal("DeleteEntry", || {
                let mut admin = admin.clone();
                let id = entry_id.clone();
                async move { admin.delete_entry(EntryIdRequest { id }).await }
            })
            .await?;
            let t0 = Instant::now();
            next_matching(&mut stream, |ids| !ids.iter().any(|s| s == &id)).await?;
            dp.push(ms(t0.elapsed()));
            dc.push(ms(t0 - t_call));
        }
        create_call.push(cc);
        create_prop.push(cp);
        delete_call.push(dc);
        delete_prop.push(dp);
        // Task revocation: a just-in-time entry, activated by a task and revoked, again
        // and again; timed from the EndTask call returning to the stream update without it.
        let id = format!("spiffe://example.org/bench/propagation/r{rep}/jit");
        let mut spec = entry_spec(NODE_ID, &id);
        spec.jit = true;
        let jit = crate::procs::create_entry(&admin, spec).await?;
        let (mut rc, mut rp) = (vec![], vec![]);
        for _ in 0..cfg.propagation_entries {
            let task = admin
                .clone()
                .create_task(TaskSpec {
                    entry_id: jit.id.clone(),
                    reason: "bench".into(),
                    ttl_seconds: 600,
                    ..Default::default()
                })
                .await?
                .into_inner();
            next_matching(&mut stream, |ids| ids.iter().any(|s| s == &id)).await?;
            let t_call = Instant::now();
            admin
                .clone()
                .end_task(EndTaskRequest {
                    id: task.id,
                    outcome: "revoked".into(),
                    reason: "bench".into(),
                })
                .await?;
            let t0 = Instant::now();
            next_matching(&mut stream, |ids| !ids.iter().any(|s| s == &id)).await?;
            rp.push(ms(t0.elapsed()));
            rc.push(ms(t0 - t_call));
        }
        revoke_call.push(rc);
        revoke_prop.push(rp);
    }
    let anchor = "SPIRE: about 10 s by design (5 s agent sync interval)";
    let n = cfg.propagation_entries;
    let mut figures = Vec::new();
    figures.extend(
        percentile_pair(
            "propagation.entry_create",
            &format!("3. entry create -> SVID on open stream ({n} entries)"),
            &create_prop,
            "CreateEntry call itself",
            &create_call,
            Some(Target::ValueBelow(100.0)),
        )
        .map(|f| f.anchor(anchor)),
    );
    figures.extend(
        percentile_pair(
            "propagation.entry_delete",
            &format!("3. entry delete -> SVID gone from stream ({n} entries)"),
            &delete_prop,
            "DeleteEntry call itself",
            &delete_call,
            None,
        )
        .map(|f| f.note("entry deletion, not task revocation")),
    );
    figures.extend(
        percentile_pair(
            "propagation.task_revocation",
            &format!("3. task revocation -> SVID gone from stream ({n} tasks)"),
            &revoke_prop,
            "EndTask call itself",
            &revoke_call,
            Some(Target::ValueBelow(100.0)),
        )
        .map(|f| f.anchor(anchor)),
    );
    let raw = json!({
        "entries_per_rep": n,
        "unit": "milliseconds",
        "create_propagation": {"pooled": pooled(&create_prop), "samples_per_rep": create_prop},
        "create_call": {"pooled": pooled(&create_call), "samples_per_rep": create_call},
        "delete_propagation": {"pooled": pooled(&delete_prop), "samples_per_rep": delete_prop},
        "delete_call": {"pooled": pooled(&delete_call), "samples_per_rep": delete_call},
        "task_revocation_propagation": {"pooled": pooled(&revoke_prop), "samples_per_rep": revoke_prop},
        "task_revocation_call": {"pooled": pooled(&revoke_call), "samples_per_rep": revoke_call},
    });
    Ok((figures, raw))
}

/// Runs `op(i)` from `callers` concurrent tasks for `dur`; returns operations per second.
async fn rate_async<F, Fut>(callers: usize, dur: Duration, op: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send,
{
    let op = Arc::new(op);
    let counter = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let op = Arc::clone(&op);
        let counter = Arc::clone(&counter);
        let done = Arc::clone(&done);
        set.spawn(async move {
            while t0.elapsed() < dur {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let n = op(i).await?;
                done.fetch_add(n, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
}

/// Node of the agent that keeps no verified JWT-SVID (`--jwt-verified-max-entries 0`).
const VERIFY_EVERY_CALL_NODE_ID: &str = "spiffe://example.org/node/bench-verify-every-call";

/// Figure 5 over the socket: FetchJWTSVID (minting: a new audience every call; cached:
/// one audience) and ValidateJWTSVID, from concurrent callers on one connection.
/// ValidateJWTSVID is measured twice with the same token: on the cluster's agent, which
/// verifies its signature once and keeps it, and on a second agent that keeps none and
/// verifies every call (what a token presented once costs).
pub(crate) async fn jwt_socket(
    cfg: &Config,
    cluster: &Cluster,
    bin_dir: &Path,
    base: &crate::crypto::JwtBaselines,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let client = workload_client(&cluster.agent.socket).await?;
    let every_agent = Agent::start_with(
        bin_dir,
        &cluster.dir.path().join("agent-verify-every-call"),
        &cluster.server,
        VERIFY_EVERY_CALL_NODE_ID,
        &cfg.agent_env,
        &["--jwt-verified-max-entries", "0"],
    )
    .await?;
    let every_client = workload_client(&every_agent.socket).await?;
    let callers = cfg.jwt_callers;
    let dur = cfg.io_duration;
    let token = {
        let mut c = client.clone();
        let r = c
            .fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: vec!["bench-cached".into()],
                spiffe_id: WORKLOAD_ID.into(),
            }))
            .await?
            .into_inner();
        r.svids.first().context("no JWT-SVID")?.svid.clone()
    };
    // The second agent answers once it has the trust bundle.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = every_client
            .clone()
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: "bench-cached".into(),
                svid: token.clone(),
            }))
            .await;
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                bail!("the verify-every-call agent does not validate: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let run = std::process::id();
    let (mut mint, mut cached, mut validate, mut validate_every) = (vec![], vec![], vec![], vec![]);
    for rep in 0..cfg.reps {
        eprintln!("  JWT socket repeat {}/{}", rep + 1, cfg.reps);
        let c = client.clone();
        mint.push(
            rate_async(callers, dur, move |i| {
                let mut c = c.clone();
                async move {
                    let r = c
                        .fetch_jwtsvid(with_header(JwtsvidRequest {
                            audience: vec![format!("bench-{run}-{rep}-{i}")],
                            spiffe_id: WORKLOAD_ID.into(),
                        }))
                        .await?;
                    ensure!(!r.get_ref().svids.is_empty());
                    Ok(1)
                }
            })
            .await?,
        );
        let c = client.clone();
        cached.push(
            rate_async(callers, dur, move |_| {
                let mut c = c.clone();
                async move {
                    c.fetch_jwtsvid(with_header(JwtsvidRequest {
                        audience: vec!["bench-cached".into()],
                        spiffe_id: WORKLOAD_ID.into(),
                    }))
                    .await?;
                    Ok(1)
                }
            })
            .await?,
        );
        for (socket_client, out) in [
            (&client, &mut validate),
            (&every_client, &mut validate_every),
        ] {
            let c = socket_client.clone();
            let t = token.clone();
            out.push(
                rate_async(callers, dur, move |_| {
                    let mut c = c.clone();
                    let t = t.clone();
                    async move {
                        let r = c
                            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                                audience: "bench-cached".into(),
                                svid: t,
                            }))
                            .await?;
                        ensure!(r.get_ref().spiffe_id == WORKLOAD_ID);
                        Ok(1)
                    }
                })
                .await?,
            );
        }
    }
    let threads = cfg.threads;
    let figures = vec![
        Figure::new(
            "jwt.mint.workload_api",
            &format!("5. FetchJWTSVID, new audience each call (mint), {callers} callers"),
            Unit::PerSec,
            &mint,
        )
        .baseline(
            &format!("raw ring ES256 signs, {threads} threads"),
            Unit::PerSec,
            &base.sign_n,
        )
        .note("socket + attestation + node API round trip + sign"),
        Figure::new(
            "jwt.validate.workload_api",
            &format!("5. ValidateJWTSVID over the socket, {callers} callers"),
            Unit::PerSec,
            &validate,
        )
        .baseline(
            &format!("raw ring ES256 verifies, {threads} threads"),
            Unit::PerSec,
            &base.verify_n,
        )
        .target(Target::RatioAtLeast(0.6))
        .note("the same token every call: its verified signature is kept (jwt_verified_max_entries)"),
        Figure::new(
            "jwt.validate.workload_api.verify_every_call",
            &format!(
                "5. ValidateJWTSVID over the socket, signature verified every call, {callers} callers"
            ),
            Unit::PerSec,
            &validate_every,
        )
        .baseline(
            &format!("raw ring ES256 verifies, {threads} threads"),
            Unit::PerSec,
            &base.verify_n,
        )
        .note("an agent with jwt_verified_max_entries = 0: what a token seen once costs"),
        Figure::new(
            "jwt.fetch_cached.workload_api",
            &format!("5. FetchJWTSVID, cached audience, {callers} callers"),
            Unit::PerSec,
            &cached,
        ),
    ];
    let raw = json!({
        "callers": callers,
        "duration_ms_per_measurement": dur.as_millis() as u64,
        "fetch_jwtsvid_new_audience_per_s": mint,
        "fetch_jwtsvid_cached_audience_per_s": cached,
        "validate_jwtsvid_per_s": validate,
        "validate_jwtsvid_verify_every_call_per_s": validate_every,
        "note": "one HTTP/2 connection shared by all callers; every FetchJWTSVID call attests the caller",
    });
    Ok((figures, raw))
}

/// SPIFFE ID of the in-process agent used to call the node API directly.
const SIGNER_NODE_ID: &str = "spiffe://example.org/node/bench-signer";

/// Figure 1, end to end: SignX509Svids over mutual TLS from an in-process "agent" that sends
/// pre-generated CSRs in batches (so agent-side key generation is excluded).
pub(crate) async fn node_api_signing(
    cfg: &Config,
    cluster: &Cluster,
    raw1: &[f64],
    rawn: &[f64],
    sign_svid_rate: f64,
    sign_svid_n: &[f64],
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let server = &cluster.server;
    let td = crate::procs::trust_domain()?;
    let bundle = BundleCell::new(server.bundle().await?);
    let token = server.token(SIGNER_NODE_ID).await?;
    let (svid, _) =
        agent::node_identity::attest_with_token(&server.address, &td, &bundle, &token).await?;
    ensure!(svid.spiffe_id() == &SpiffeId::new(SIGNER_NODE_ID)?);
    let client = agent::server_client::connect(
        std::slice::from_ref(&server.address),
        &Default::default(),
        &td,
        bundle,
        Some(&svid),
    )?;
    let entries = cfg.signer_entries;
    let (ids, _) = crate::procs::create_entries(server, entries, 4, |i| {
        entry_spec(
            SIGNER_NODE_ID,
            &format!("spiffe://example.org/bench/signer/e{i}"),
        )
    })
    .await?;
    let batch = cfg.sign_batch;
    let csrs = tokio::task::spawn_blocking(move || {
        (0..batch)
            .map(|_| common::svid::csr_for(&common::svid::generate_key()?))
            .collect::<Result<Vec<_>, _>>()
    })
    .await??;
    let request = Arc::new(SignX509SvidsRequest {
        csrs: csrs
            .into_iter()
            .enumerate()
            .map(|(i, csr)| CsrForEntry {
                entry_id: ids[i % ids.len()].clone(),
                csr,
                task_id: String::new(),
            })
            .collect(),
    });
    let call = {
        let client = client.clone();
        let request = Arc::clone(&request);
        move |_i: u64| {
            let c = client.clone();
            let req = (*request).clone();
            async move {
                let r = retry_internal("SignX509Svids", || {
                    let mut c = c.clone();
                    let req = req.clone();
                    async move { c.sign_x509_svids(req).await }
                })
                .await?
                .into_inner();
                let ok = r.svids.iter().filter(|s| s.error.is_empty()).count();
                if ok != r.svids.len() {
                    bail!("server refused {} CSRs", r.svids.len() - ok);
                }
                Ok(ok as u64)
            }
        }
    };
    // Warm-up (connection, TLS).
    call(0).await?;
    let threads = cfg.threads;
    let dur = cfg.io_duration.max(Duration::from_millis(500));
    let single = SignX509SvidsRequest {
        csrs: request.csrs.iter().take(1).cloned().collect(),
    };
    let rt_samples = if cfg.quick { 5 } else { 20 };
    let (mut one, mut all, mut rt) = (vec![], vec![], vec![]);
    for rep in 0..cfg.reps {
        eprintln!("  node API signing repeat {}/{}", rep + 1, cfg.reps);
        one.push(rate_async(1, dur, call.clone()).await?);
        all.push(rate_async(threads, dur, call.clone()).await?);
        let mut v = Vec::with_capacity(rt_samples);
        for _ in 0..rt_samples {
            let t0 = Instant::now();
            let r = retry_internal("SignX509Svids", || {
                let mut c = client.clone();
                let req = single.clone();
                async move { c.sign_x509_svids(req).await }
            })
            .await?
            .into_inner();
            v.push(ms(t0.elapsed()));
            ensure!(r.svids.iter().all(|s| s.error.is_empty()));
        }
        rt.push(v);
    }
    let rt_p50: Vec<f64> = rt.iter().map(|v| percentile(v, 0.5)).collect();
    let sign_ms: Vec<f64> = raw1.iter().map(|_| 1000.0 / sign_svid_rate).collect();
    let figures = vec![
        Figure::new(
            "issuance.x509.node_api.1_caller",
            &format!("1. X.509-SVIDs via node API SignX509Svids, 1 caller, batches of {batch}"),
            Unit::PerSec,
            &one,
        )
        .baseline("raw ring ECDSA P-256 signs, 1 thread", Unit::PerSec, raw1)
        .anchor("SPIRE rate-limits callers to 500 signing requests/s")
        .note("end to end: TLS, entry lookup, signing, logging; optional figure"),
        Figure::new(
            "issuance.x509.node_api.all_callers",
            &format!(
                "1. X.509-SVIDs via node API SignX509Svids, {threads} callers, batches of {batch}"
            ),
            Unit::PerSec,
            &all,
        )
        .baseline(
            &format!("raw ring ECDSA P-256 signs, {threads} threads"),
            Unit::PerSec,
            rawn,
        )
        .anchor("SPIRE rate-limits callers to 500 signing requests/s"),
        Figure::new(
            "issuance.x509.node_api.all_callers.vs_sign_svid",
            &format!(
                "1. node API SignX509Svids ÷ in-process Ca::sign_svid, {threads} callers, batches of {batch}"
            ),
            Unit::PerSec,
            &all,
        )
        .baseline(
            &format!("in-process Ca::sign_svid, {threads} threads"),
            Unit::PerSec,
            sign_svid_n,
        )
        .target(Target::RatioAtLeast(0.7))
        .note("what the node API adds to the signing itself: TLS, entry lookup, audit"),
        Figure::new(
            "issuance.x509.node_api.round_trip_1_csr.p50",
            "1. node API SignX509Svids round trip with 1 CSR, p50",
            Unit::Ms,
            &rt_p50,
        )
        .baseline("in-process Ca::sign_svid, one call", Unit::Ms, &sign_ms)
        .note(
            "what one new entry costs the agent: TLS over loopback TCP, entry lookup, audit append",
        ),
    ];
    let raw = json!({
        "round_trip_1_csr_ms_per_rep": rt,
        "batch": batch,
        "entries": entries,
        "duration_ms_per_measurement": dur.as_millis() as u64,
        "svids_per_s_1_caller": one,
        "svids_per_s_all_callers": all,
        "callers_all": threads,
        "note": "client and server share the machine's cores",
    });
    Ok((figures, raw))
}

/// SPIFFE ID of the agent that runs the Unix attestor alone (attestation figure).
const UNIX_ONLY_NODE_ID: &str = "spiffe://example.org/node/bench-unix-only";

/// What cgroup attestation costs per Workload API call: FetchX509SVID first-message latency
/// from an agent running the Unix and cgroup attestors (the cluster's, the default) against
/// one running the Unix attestor alone (`--workload-attestor unix`), started beside it on
/// the same server. Calls to the two agents alternate (which goes first too), so load
/// changes during the run fall on both alike.
pub(crate) async fn attestation_cost(
    cfg: &Config,
    cluster: &Cluster,
    bin_dir: &Path,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    cluster
        .server
        .admin()
        .await?
        .create_entry(entry_spec(UNIX_ONLY_NODE_ID, WORKLOAD_ID))
        .await
        .context("creating the workload entry of the unix-only agent")?;
    let unix_agent = Agent::start_with(
        bin_dir,
        &cluster.dir.path().join("agent-unix-only"),
        &cluster.server,
        UNIX_ONLY_NODE_ID,
        &cfg.agent_env,
        &["--workload-attestor", "unix"],
    )
    .await?;
    crate::procs::wait_svids(&unix_agent.socket, 1, Duration::from_secs(30)).await?;
    let unix = unix_agent.socket.clone();
    let both = cluster.agent.socket.clone();
    let n = cfg.latency_samples;
    for _ in 0..5 {
        fetch_new_conn(unix.clone()).await?;
        fetch_new_conn(both.clone()).await?;
    }
    let mut s = LatencySamples::default();
    for rep in 0..cfg.reps {
        eprintln!("  attestation repeat {}/{}", rep + 1, cfg.reps);
        let (mut u, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            if i % 2 == 0 {
                u.push(fetch_new_conn(unix.clone()).await?);
                b.push(fetch_new_conn(both.clone()).await?);
            } else {
                b.push(fetch_new_conn(both.clone()).await?);
                u.push(fetch_new_conn(unix.clone()).await?);
            }
        }
        s.push("unix_only_new_conn", u);
        s.push("unix_cgroup_new_conn", b);
        let mut uc = workload_client(&unix).await?;
        let mut bc = workload_client(&both).await?;
        fetch_on(&mut uc).await?;
        fetch_on(&mut bc).await?;
        let (mut u, mut b) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            if i % 2 == 0 {
                u.push(fetch_on(&mut uc).await?);
                b.push(fetch_on(&mut bc).await?);
            } else {
                b.push(fetch_on(&mut bc).await?);
                u.push(fetch_on(&mut uc).await?);
            }
        }
        s.push("unix_only_open_conn", u);
        s.push("unix_cgroup_open_conn", b);
    }
    let ratio = |id: &str, name: &str, kind: &str, q: f64, base: &str, base_label: &str| {
        Figure::new(id, name, Unit::Ms, &s.per_rep(kind, q)).baseline(
            base_label,
            Unit::Ms,
            &s.per_rep(base, q),
        )
    };
    // Per repeat: p50 with both attestors less p50 with the Unix attestor alone.
    let cost: Vec<f64> = s
        .per_rep("unix_cgroup_open_conn", 0.5)
        .iter()
        .zip(s.per_rep("unix_only_open_conn", 0.5))
        .map(|(b, u)| b - u)
        .collect();
    let mut figures = vec![
        ratio(
            "workload.x509.attestors.unix_cgroup.new_connection.p50",
            "2. FetchX509SVID first message p50, unix+cgroup attestors, new connection",
            "unix_cgroup_new_conn",
            0.5,
            "unix_only_new_conn",
            "the same, unix attestor only, p50",
        )
        .note("ratio: unix+cgroup ÷ unix-only, two agents on one server, calls alternated"),
        ratio(
            "workload.x509.attestors.unix_cgroup.new_connection.p99",
            "2. FetchX509SVID first message p99, unix+cgroup attestors, new connection",
            "unix_cgroup_new_conn",
            0.99,
            "unix_only_new_conn",
            "the same, unix attestor only, p99",
        ),
        ratio(
            "workload.x509.attestors.unix_cgroup.open_connection.p50",
            "2. FetchX509SVID first message p50, unix+cgroup attestors, open connection",
            "unix_cgroup_open_conn",
            0.5,
            "unix_only_open_conn",
            "the same, unix attestor only, p50",
        ),
        ratio(
            "workload.x509.attestors.unix_cgroup.open_connection.p99",
            "2. FetchX509SVID first message p99, unix+cgroup attestors, open connection",
            "unix_cgroup_open_conn",
            0.99,
            "unix_only_open_conn",
            "the same, unix attestor only, p99",
        ),
        Figure::new(
            "workload.x509.attestors.cgroup_cost.open_connection.p50_difference",
            "2. cgroup attestation cost per call (p50 difference, open connection)",
            Unit::Ms,
            &cost,
        )
        .note("p50 unix+cgroup less p50 unix-only, per repeat; within noise when near 0"),
    ];
    drop(unix_agent);
    let runs = n * 5;
    let reps = cfg.reps;
    let (in_unix, in_both) =
        tokio::task::spawn_blocking(move || attest_in_process(runs, reps)).await??;
    let in_cost: Vec<f64> = in_both.iter().zip(&in_unix).map(|(b, u)| b - u).collect();
    figures.push(
        Figure::new(
            "attestation.in_process.unix_cgroup.median",
            "2. attestation of a child process in-process, unix+cgroup, median",
            Unit::Ms,
            &in_both,
        )
        .baseline("the same, unix attestor only, median", Unit::Ms, &in_unix)
        .note("the agent's attestation pipeline called directly on a child `sleep`, no socket"),
    );
    figures.push(
        Figure::new(
            "attestation.in_process.cgroup_cost.median_difference",
            "2. cgroup attestor cost per attestation, in-process (median difference)",
            Unit::Ms,
            &in_cost,
        )
        .note("median unix+cgroup less median unix-only, per repeat"),
    );
    let raw = json!({
        "samples_per_rep": n,
        "in_process_runs_per_rep": runs,
        "in_process_unix_only_median_ms_per_rep": in_unix,
        "in_process_unix_cgroup_median_ms_per_rep": in_both,
        "unix_only_agent_flags": ["--workload-attestor", "unix"],
        "unix_cgroup_agent_flags": [],
        "cgroup_cost_p50_difference_ms_per_rep": cost,
        "latencies": s.json(),
    });
    Ok((figures, raw))
}

/// A child process, killed and reaped on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent's attestation pipeline called in this process on a child (`sleep`, running as
/// this process's user): `runs` attestations per repeat with the Unix attestor alone and
/// as many with both, alternated. Returns the median of each, per repeat, in ms.
fn attest_in_process(runs: usize, reps: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    use agent::config::WorkloadAttestorKind;
    let child = Child(
        std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .context("starting sleep")?,
    );
    let pid = i32::try_from(child.0.id())?;
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let unix = agent::ProcessAttestor::new(&[WorkloadAttestorKind::Unix]);
    let both = agent::ProcessAttestor::new(&WorkloadAttestorKind::ALL);
    // Until the child has exec'd `sleep` (attestation refuses an exec under way), then
    // warm the executable-hash caches.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = both.attest(pid, uid, gid) {
        ensure!(Instant::now() < deadline, "attesting sleep: {e}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (nu, nb) = (
        unix.attest(pid, uid, gid).map_err(anyhow::Error::msg)?,
        both.attest(pid, uid, gid).map_err(anyhow::Error::msg)?,
    );
    ensure!(nb > nu, "unix+cgroup gave {nb} selectors, unix alone {nu}");
    let time = |a: &agent::ProcessAttestor| -> anyhow::Result<f64> {
        let t0 = Instant::now();
        a.attest(pid, uid, gid).map_err(anyhow::Error::msg)?;
        Ok(ms(t0.elapsed()))
    };
    let (mut per_unix, mut per_both) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for _ in 0..reps {
        let (mut u, mut b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for i in 0..runs {
            if i % 2 == 0 {
                u.push(time(&unix)?);
                b.push(time(&both)?);
            } else {
                b.push(time(&both)?);
                u.push(time(&unix)?);
            }
        }
        per_unix.push(percentile(&u, 0.5));
        per_both.push(percentile(&b, 0.5));
    }
    Ok((per_unix, per_both))
}
