//! Figure 3, across servers: two servers (A and B) on one PostgreSQL database, an agent
//! enrolled with A. An entry created on B reaches an open FetchX509SVID stream on A's
//! agent through the change feed (LISTEN/NOTIFY, then A's sync stream); the same-server
//! baseline, an entry created on A, is measured in the same run on the same cluster,
//! interleaved with it (B, A, B, A, ...), so both see the same database and load.
//!
//! Needs PostgreSQL: `--postgres URL` or `TESSERA_TEST_POSTGRES_URL` (a role that may
//! create databases); without either the section is skipped, saying so. Each run creates
//! a database of its own and drops it afterwards.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail, ensure};
use common::proto::tessera::EntryIdRequest;
use common::proto::workload::X509svidRequest;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::Config;
use crate::procs::{Agent, Server, entry_spec, retry_internal, with_header, workload_client};
use crate::stats::{Figure, Target, percentile_pair, pooled};
use crate::workload::{NODE_ID, WORKLOAD_ID, ms, next_matching};

/// The environment variable naming the PostgreSQL server (as for the tests).
pub(crate) const POSTGRES_ENV: &str = "TESSERA_TEST_POSTGRES_URL";

/// A database of its own on the PostgreSQL server, dropped (connections and all) on drop.
struct Database {
    admin_url: String,
    name: String,
    url: String,
}

fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .context("running psql (the PostgreSQL client)")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Database {
    fn create(admin_url: &str) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("tessera_bench_{}_{nanos}", std::process::id());
        psql(admin_url, &format!("CREATE DATABASE {name}"))
            .with_context(|| format!("creating a database at {}", redact(admin_url)))?;
        // Same server and role, other database (a query string is kept).
        let (before, query) = admin_url
            .split_once('?')
            .map_or((admin_url, None), |(b, q)| (b, Some(q)));
        let authority_end = before
            .find("://")
            .map(|i| i + 3)
            .and_then(|start| before[start..].find('/').map(|j| start + j))
            .unwrap_or(before.len());
        let mut url = format!("{}/{name}", &before[..authority_end]);
        if let Some(q) = query {
            url = format!("{url}?{q}");
        }
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Err(e) = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("  could not drop the bench database {}: {e:#}", self.name);
        }
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The figure, or `None` (skipped, with a message) when no PostgreSQL is configured.
pub(crate) async fn cross_server(
    cfg: &Config,
    bin_dir: &Path,
    postgres: Option<&str>,
) -> Option<anyhow::Result<(Vec<Figure>, Value)>> {
    let Some(url) = postgres else {
        eprintln!(
            "  skipped: no PostgreSQL configured (pass --postgres URL or set {POSTGRES_ENV}); \
             several servers share a datastore only on PostgreSQL"
        );
        return None;
    };
    Some(measure(cfg, bin_dir, url).await)
}

async fn measure(
    cfg: &Config,
    bin_dir: &Path,
    admin_url: &str,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let db = Database::create(admin_url)?;
    let dir = cfg.workdir("cross-server")?;
    let args = ["--datastore", db.url.as_str()];
    let a = Server::start_with(bin_dir, &dir.path().join("a"), &args).await?;
    let admin_a = a.admin().await?;
    crate::procs::create_entry(&admin_a, entry_spec(NODE_ID, WORKLOAD_ID)).await?;
    let b = Server::start_with(bin_dir, &dir.path().join("b"), &args).await?;
    let admin_b = b.admin().await?;
    let agent = Agent::start(
        bin_dir,
        &dir.path().join("agent"),
        &a,
        NODE_ID,
        &cfg.agent_env,
    )
    .await?;
    crate::procs::wait_svids(&agent.socket, 1, std::time::Duration::from_secs(30)).await?;
    let mut client = workload_client(&agent.socket).await?;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    let first = stream.message().await?.context("stream ended")?;
    ensure!(!first.svids.is_empty());

    let n = cfg.propagation_entries;
    let (mut cross, mut same, mut cross_call, mut same_call) = (vec![], vec![], vec![], vec![]);
    for rep in 0..cfg.reps {
        eprintln!(
            "  cross-server repeat {}/{} ({n} entries on each server)",
            rep + 1,
            cfg.reps
        );
        let (mut x, mut s, mut xc, mut sc) = (vec![], vec![], vec![], vec![]);
        let mut created = Vec::new();
        for i in 0..n {
            for (on_b, admin) in [(true, &admin_b), (false, &admin_a)] {
                let server = if on_b { "b" } else { "a" };
                let id = format!("spiffe://example.org/bench/cross/r{rep}/{server}{i}");
                let t_call = Instant::now();
                let e = crate::procs::create_entry(admin, entry_spec(NODE_ID, &id)).await?;
                let t0 = Instant::now();
                next_matching(&mut stream, |ids| ids.iter().any(|s| s == &id)).await?;
                let (prop, call) = if on_b {
                    (&mut x, &mut xc)
                } else {
                    (&mut s, &mut sc)
                };
                prop.push(ms(t0.elapsed()));
                call.push(ms(t0 - t_call));
                created.push((admin.clone(), e.id, id));
            }
        }
        // Deleted (untimed) so every repeat starts from the same agent.
        for (admin, entry_id, id) in created {
            retry_internal("DeleteEntry", || {
                let mut admin = admin.clone();
                let id = entry_id.clone();
                async move { admin.delete_entry(EntryIdRequest { id }).await }
            })
            .await?;
            next_matching(&mut stream, |ids| !ids.iter().any(|s| s == &id)).await?;
        }
        cross.push(x);
        same.push(s);
        cross_call.push(xc);
        same_call.push(sc);
    }
    drop(stream);
    drop(agent);
    drop(b);
    drop(a);

    let note = "PostgreSQL datastore shared by servers A and B, agent on A; baseline: the \
                same change made on A, interleaved in the same run";
    let figures = percentile_pair(
        "propagation.cross_server",
        &format!("3. entry create on B -> SVID on A's agent stream ({n} entries)"),
        &cross,
        "same change on A (same server)",
        &same,
        Some(Target::ValueBelow(50.0)),
    )
    .map(|f| f.note(note))
    .to_vec();
    let raw = json!({
        "entries_per_rep_per_server": n,
        "unit": "milliseconds",
        "datastore": "postgresql",
        "cross_server_propagation": {"pooled": pooled(&cross), "samples_per_rep": cross},
        "same_server_propagation": {"pooled": pooled(&same), "samples_per_rep": same},
        "create_call_on_b": {"pooled": pooled(&cross_call), "samples_per_rep": cross_call},
        "create_call_on_a": {"pooled": pooled(&same_call), "samples_per_rep": same_call},
    });
    Ok((figures, raw))
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            super::redact("postgres://root@127.0.0.1/test"),
            "postgres://root@127.0.0.1/test"
        );
    }
}
