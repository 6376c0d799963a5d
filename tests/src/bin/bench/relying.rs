//! Figure 7: how long a task credential stays usable after its task ended, per kind of
//! relying party. Each sample begins a task on a just-in-time entry (with a declared JWT
//! audience), takes its X.509-SVID and JWT-SVID, ends the task, and then polls every kind
//! of relying party at once until each refuses the credential:
//! - a workload on the agent's open FetchX509SVID stream (the SVID leaves the stream);
//! - a relying party that asks an agent (`ValidateJWTSVID` refuses the token);
//! - a TLS peer with CRL checking (the CRL at the certificate's distribution point lists
//!   its serial);
//! - an offline JWT validator that checks the token status list (the task's bit is set).
//!
//! Relying parties that check neither accept the credential until it expires: those rows
//! are the remaining lifetime at the end (`exp`, `notAfter`), measured on the same tokens.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use common::proto::tessera::{EndTaskRequest, TaskSpec};
use common::proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use tokio::time::Instant;
use x509_parser::prelude::{FromDer as _, X509Certificate};

use crate::Config;
use crate::procs::{entry_spec, with_header, workload_client};
use crate::stats::{Figure, Unit, percentile};
use crate::workload::{Cluster, NODE_ID, ms};

/// The audience every sample's task declares.
const AUDIENCE: &str = "tools.bench.example.org";
/// Between two polls of one relying party.
const POLL: Duration = Duration::from_millis(2);
/// The longest a relying party may keep accepting a credential before the sample fails.
const GIVE_UP: Duration = Duration::from_secs(30);

/// The payload of a compact JWT.
fn claims(token: &str) -> anyhow::Result<Value> {
    let part = token.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// Where the task credentials point relying parties, and what they carry.
struct Credentials {
    task_id: String,
    token: String,
    serial: String,
    crl_path: String,
    status_path: String,
    status_idx: usize,
    jwt_exp: i64,
    x509_not_after: i64,
}

fn path_of(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("https://").context("not an https URL")?;
    Ok(rest.find('/').map_or("/".into(), |i| rest[i..].to_owned()))
}

/// Begins a task on `jit` and waits for its SVIDs on `stream`.
async fn begin(
    cluster: &Cluster,
    jit_entry: &str,
    jit_id: &str,
    stream: &mut tonic::Streaming<common::proto::workload::X509svidResponse>,
) -> anyhow::Result<Credentials> {
    let task = cluster
        .server
        .admin()
        .await?
        .create_task(TaskSpec {
            entry_id: jit_entry.into(),
            reason: "bench".into(),
            ttl_seconds: 600,
            audiences: vec![AUDIENCE.into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let leaf = loop {
        let m = tokio::time::timeout(GIVE_UP, stream.message())
            .await
            .context("no stream message")??
            .context("stream ended")?;
        if let Some(s) = m.svids.iter().find(|s| s.spiffe_id == jit_id) {
            // The chain is DER certificates back to back: the leaf is the first.
            let (rest, _) = X509Certificate::from_der(&s.x509_svid)?;
            break s.x509_svid[..s.x509_svid.len() - rest.len()].to_vec();
        }
    };
    let mut client = workload_client(&cluster.agent.socket).await?;
    let deadline = Instant::now() + GIVE_UP;
    let token = loop {
        match client
            .fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: vec![AUDIENCE.into()],
                spiffe_id: jit_id.into(),
            }))
            .await
        {
            Ok(r) => {
                break r
                    .into_inner()
                    .svids
                    .first()
                    .context("no JWT-SVID")?
                    .svid
                    .clone();
            }
            Err(e) if Instant::now() > deadline => bail!("no task JWT-SVID: {e}"),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    };
    let c = claims(&token)?;
    ensure!(
        c["task_id"] == task.id.as_str(),
        "not the task's token: {c}"
    );
    let status = &c["status"]["status_list"];
    let crl_url = ::tests::web::crl_urls(&leaf)?
        .into_iter()
        .next()
        .context("the task X.509-SVID names no CRL distribution point")?;
    let (_, cert) = X509Certificate::from_der(&leaf)?;
    Ok(Credentials {
        task_id: task.id,
        serial: ::tests::web::serial_of(&leaf)?,
        crl_path: path_of(&crl_url)?,
        status_path: path_of(status["uri"].as_str().context("no status claim")?)?,
        status_idx: usize::try_from(status["idx"].as_u64().context("no status idx")?)?,
        jwt_exp: c["exp"].as_i64().context("no exp")?,
        x509_not_after: cert.validity().not_after.timestamp(),
        token,
    })
}

/// Polls `refused` until it says the relying party refuses; the time from `t0`, negative
/// when the very first poll refused (the end was visible before the first answer: the
/// figure is then the length of one request, not a delay).
async fn until<F, Fut>(t0: Instant, mut refused: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let mut first = true;
    loop {
        if refused().await? {
            let t = ms(t0.elapsed());
            return Ok(if first { -t } else { t });
        }
        first = false;
        ensure!(t0.elapsed() < GIVE_UP, "still accepted after {GIVE_UP:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// One sample: milliseconds until each polled kind refuses, and seconds the unchecked
/// kinds keep accepting; and how many polled kinds refused at their first poll.
async fn sample(
    cluster: &Cluster,
    jit_entry: &str,
    jit_id: &str,
    rp: (SocketAddr, &CertificateDer<'static>),
) -> anyhow::Result<([f64; 7], usize)> {
    let mut client = workload_client(&cluster.agent.socket).await?;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    let cred = begin(cluster, jit_entry, jit_id, &mut stream).await?;
    let (addr, ca) = rp;
    let t_call = Instant::now();
    cluster
        .server
        .admin()
        .await?
        .end_task(EndTaskRequest {
            id: cred.task_id.clone(),
            outcome: "revoked".into(),
            reason: "bench".into(),
        })
        .await?;
    let t0 = Instant::now();
    let ended_at = ::tests::unix_now();
    // The stream is not polled: the agent sends each change.
    let on_stream = async {
        loop {
            let m = tokio::time::timeout(GIVE_UP, stream.message())
                .await
                .context("no stream message")??
                .context("stream ended")?;
            if !m.svids.iter().any(|s| s.spiffe_id == jit_id) {
                return Ok::<_, anyhow::Error>(ms(t0.elapsed()));
            }
        }
    };
    let validate = until(t0, || {
        let mut client = client.clone();
        let token = cred.token.clone();
        async move {
            let r = client
                .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                    audience: AUDIENCE.into(),
                    svid: token,
                }))
                .await;
            Ok(r.is_err())
        }
    });
    let crl = until(t0, || async {
        let r = ::tests::web::https(addr, ca, "GET", &cred.crl_path, "").await?;
        ensure!(r.status == 200, "CRL: HTTP {}", r.status);
        Ok(::tests::web::crl_serials(&r.body)?.contains(&cred.serial))
    });
    let status = until(t0, || async {
        let r = ::tests::web::https(addr, ca, "GET", &cred.status_path, "").await?;
        ensure!(r.status == 200, "status list: HTTP {}", r.status);
        ::tests::web::status_bit(std::str::from_utf8(&r.body)?.trim(), cred.status_idx)
    });
    let (on_stream, validate, crl, status) = tokio::try_join!(on_stream, validate, crl, status)?;
    let first_polls = [validate, crl, status].iter().filter(|t| **t < 0.0).count();
    let (validate, crl, status) = (validate.abs(), crl.abs(), status.abs());
    // Relying parties that check neither: until the credential expires.
    let secs = |until: i64| (until - ended_at) as f64;
    Ok((
        [
            ms(t0 - t_call),
            on_stream,
            validate,
            crl,
            status,
            secs(cred.jwt_exp),
            secs(cred.x509_not_after),
        ],
        first_polls,
    ))
}

/// Figure 7, `cfg.reps` repeats of `cfg.propagation_entries / 4` (at least 3) tasks.
pub(crate) async fn usable_after_end(
    cfg: &Config,
    cluster: &Cluster,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let rp = cluster
        .server
        .relying_party
        .as_ref()
        .context("the bench server serves no relying parties")?;
    let tasks = (cfg.propagation_entries / 4).max(3);
    let mut per_kind: Vec<Vec<Vec<f64>>> = vec![Vec::new(); 7];
    // Polled answers that refused at the first poll (see `until`).
    let mut first = 0;
    for rep in 0..cfg.reps {
        eprintln!(
            "  usable after end repeat {}/{} ({tasks} tasks)",
            rep + 1,
            cfg.reps
        );
        let jit_id = format!("spiffe://example.org/bench/relying/r{rep}");
        let mut spec = entry_spec(NODE_ID, &jit_id);
        spec.jit = true;
        spec.x509_svid_ttl_seconds = 3600;
        let admin = cluster.server.admin().await?;
        let jit = crate::procs::create_entry(&admin, spec).await?;
        let mut rows: Vec<Vec<f64>> = vec![Vec::new(); 7];
        for _ in 0..tasks {
            let (s, first_polls) =
                sample(cluster, &jit.id, &jit_id, (rp.addr, &rp.pki.ca_der)).await?;
            first += first_polls;
            for (row, v) in rows.iter_mut().zip(s) {
                row.push(v);
            }
        }
        for (kind, row) in per_kind.iter_mut().zip(rows) {
            kind.push(row);
        }
    }
    let p50 = |k: usize| {
        per_kind[k]
            .iter()
            .map(|s| percentile(s, 0.5))
            .collect::<Vec<_>>()
    };
    let p99 = |k: usize| {
        per_kind[k]
            .iter()
            .map(|s| percentile(s, 0.99))
            .collect::<Vec<_>>()
    };
    let call = p50(0);
    let polled = [
        (
            1,
            "stream",
            "workload on the agent's open stream (SVID gone)",
        ),
        (2, "validate", "asks an agent: ValidateJWTSVID refuses"),
        (
            3,
            "crl",
            "TLS peer with CRL checking: CRL at the distribution point lists it",
        ),
        (
            4,
            "status_list",
            "offline JWT validator checking the status list: bit set",
        ),
    ];
    let polls = 3 * tasks * cfg.reps;
    let note = format!(
        "{first} of {polls} polled answers (agent, CRL, status list) refused at the first poll \
         after EndTask returned: such a figure is one request's length, not a delay"
    );
    let mut figures = Vec::new();
    for (k, id, what) in polled {
        figures.push(
            Figure::new(
                &format!("usable_after_end.{id}.p50"),
                &format!("7. usable after task end, p50: {what}"),
                Unit::Ms,
                &p50(k),
            )
            .baseline("EndTask call itself, p50", Unit::Ms, &call),
        );
        figures.push(
            Figure::new(
                &format!("usable_after_end.{id}.p99"),
                &format!("7. usable after task end, p99: {what}"),
                Unit::Ms,
                &p99(k),
            )
            .baseline("EndTask call itself, p50", Unit::Ms, &call),
        );
    }
    // The stream is pushed, not polled: the note is for the polled kinds.
    for f in figures.iter_mut().skip(2) {
        f.note = Some(note.clone());
    }
    figures.push(
        Figure::new(
            "usable_after_end.jwt_unchecked",
            "7. usable after task end: offline JWT validator without status check (until exp)",
            Unit::Secs,
            &p50(5),
        )
        .note("the task's JWT-SVID lifetime left at the end"),
    );
    figures.push(
        Figure::new(
            "usable_after_end.x509_unchecked",
            "7. usable after task end: TLS peer without CRL checking (until notAfter)",
            Unit::Secs,
            &p50(6),
        )
        .note("the task's X.509-SVID lifetime left at the end"),
    );
    let names = [
        "end_task_call_ms",
        "stream_ms",
        "validate_ms",
        "crl_ms",
        "status_list_ms",
        "jwt_unchecked_s",
        "x509_unchecked_s",
    ];
    let raw = names
        .iter()
        .zip(&per_kind)
        .map(|(n, v)| ((*n).to_owned(), json!(v)))
        .collect::<serde_json::Map<_, _>>();
    Ok((
        figures,
        json!({"tasks_per_rep": tasks, "refused_at_first_poll": first, "polled_answers": polls, "samples_per_rep": raw}),
    ))
}
