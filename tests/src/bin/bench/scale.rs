//! Figure 4: agent memory per cached SVID and the time to sync N entries to a newly
//! attested agent, at each size, and how both grow with N.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use common::proto::workload::X509svidRequest;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::Config;
use crate::procs::{
    Agent, Server, cpu_secs, create_entries, entry_spec, hwm_bytes, rss_bytes, with_header,
    workload_client,
};
use crate::stats::{Figure, Summary, Target, Unit};

/// Reads an agent's JSON log as it grows.
struct LogWatcher {
    path: PathBuf,
    offset: u64,
    partial: String,
    /// Sum of `count` over "X.509-SVIDs updated".
    issued: u64,
    snapshot_seen: bool,
    warnings: Vec<String>,
}

impl LogWatcher {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
            partial: String::new(),
            issued: 0,
            snapshot_seen: false,
            warnings: Vec::new(),
        }
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        let mut f = std::fs::File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = String::new();
        let n = f.read_to_string(&mut buf)?;
        self.offset += n as u64;
        self.partial.push_str(&buf);
        while let Some(pos) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=pos).collect();
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let msg = v["fields"]["message"].as_str().unwrap_or("");
            match msg {
                "X.509-SVIDs updated" => self.issued += v["fields"]["count"].as_u64().unwrap_or(0),
                "entry snapshot received" => self.snapshot_seen = true,
                _ => {}
            }
            if matches!(v["level"].as_str(), Some("WARN" | "ERROR")) && self.warnings.len() < 20 {
                self.warnings.push(line.trim().to_owned());
            }
        }
        Ok(())
    }
}

/// The entry count whose sync time is held to a target (1 s).
const SYNC_TARGET_ENTRIES: usize = 10_000;

/// Raw 4 KiB overwrite + `fdatasync` per second in `dir` (a preallocated file, as SQLite
/// reuses its WAL): what one commit with `synchronous=FULL` costs at least.
fn fsync_rate(dir: &Path, dur: Duration) -> anyhow::Result<f64> {
    use std::os::unix::fs::FileExt as _;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = vec![0x5a_u8; 4096];
    let blocks = 256_u64;
    for _ in 0..blocks {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    let t0 = Instant::now();
    let mut n = 0_u64;
    while t0.elapsed() < dur {
        f.write_all_at(&block, (n % blocks) * 4096)?;
        f.sync_data()?;
        n += 1;
    }
    let r = n as f64 / t0.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(r)
}

/// Hidden subcommand: decode an agent cache file in a fresh process and report the RSS it
/// adds, i.e. what the agent's in-memory cache structures cost without allocator history.
pub(crate) const FOOTPRINT_COMMAND: &str = "__cache-footprint";

pub(crate) fn cache_footprint(path: &Path) -> anyhow::Result<Value> {
    let me = i32::try_from(std::process::id())?;
    let bytes = std::fs::read(path)?;
    let decode = || agent::cache::CacheSnapshot::decode(&bytes).map_err(anyhow::Error::msg);
    // The first decode also pages in code and sets up the allocator; the second, kept
    // alongside it so that it cannot reuse freed memory, is what one more cache costs.
    let start = rss_bytes(me)?;
    let warm = decode()?;
    let before = rss_bytes(me)?;
    let snap = decode()?;
    let after = rss_bytes(me)?;
    let svids = snap.entries.values().filter(|c| c.svid.is_some()).count();
    let out = json!({
        "file_bytes": bytes.len(),
        "entries": snap.entries.len(),
        "svids": svids,
        "rss_start_bytes": start,
        "rss_before_bytes": before,
        "rss_after_bytes": after,
        "bytes_per_entry": per_svid_bytes(after, before, snap.entries.len().max(1) as f64),
    });
    drop((warm, snap));
    Ok(out)
}

/// Runs [`cache_footprint`] in a child process.
fn footprint_in_child(path: &Path) -> anyhow::Result<Value> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg(FOOTPRINT_COMMAND)
        .arg(path)
        .output()?;
    ensure!(
        out.status.success(),
        "{FOOTPRINT_COMMAND} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

struct Rep {
    rss_before: u64,
    rss_issued: u64,
    rss_settled: u64,
    rss_served: u64,
    hwm: u64,
    issued_secs: f64,
    served_secs: f64,
    snapshot_secs: f64,
    fetch_secs: f64,
    agent_cpu: f64,
    server_cpu: f64,
    material_bytes: f64,
    message_bytes: usize,
    warnings: Vec<String>,
    /// The decoded cache file in a fresh process.
    footprint: Value,
}

async fn one_rep(
    cfg: &Config,
    bin_dir: &Path,
    root: &Path,
    server: &Server,
    n: usize,
    rep: usize,
) -> anyhow::Result<Rep> {
    let node = format!("spiffe://example.org/node/scale-{n}");
    // Before: the same agent configuration with nothing to cache.
    let empty = format!("spiffe://example.org/node/empty-{n}-{rep}");
    let mut a0 = Agent::start(
        bin_dir,
        &root.join(format!("empty-{n}-{rep}")),
        server,
        &empty,
        &cfg.agent_env,
    )
    .await?;
    let mut w0 = LogWatcher::new(&a0.proc.log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w0.snapshot_seen {
        ensure!(
            Instant::now() < deadline,
            "empty agent never synced:\n{}",
            a0.proc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        w0.poll()?;
    }
    // Measured like the sized agent below: synced, settled, no Workload API call yet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_before = rss_bytes(a0.proc.pid)?;
    a0.proc.stop();

    let server_cpu0 = cpu_secs(server.proc.pid);
    let agent = Agent::start(
        bin_dir,
        &root.join(format!("agent-{n}-{rep}")),
        server,
        &node,
        &cfg.agent_env,
    )
    .await?;
    let t0 = agent.started;
    let mut w = LogWatcher::new(&agent.proc.log);
    let mut snapshot_secs = f64::NAN;
    let deadline = Instant::now() + cfg.scale_timeout;
    loop {
        w.poll()?;
        if w.snapshot_seen && snapshot_secs.is_nan() {
            snapshot_secs = t0.elapsed().as_secs_f64();
        }
        if w.issued >= n as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "agent issued {} of {n} SVIDs in {:?}:\n{}",
                w.issued,
                cfg.scale_timeout,
                agent.proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let issued_secs = t0.elapsed().as_secs_f64();
    let rss_issued = rss_bytes(agent.proc.pid)?;
    let agent_cpu = cpu_secs(agent.proc.pid);
    let server_cpu = cpu_secs(server.proc.pid) - server_cpu0;
    // Let the agent's cache persistence (every 500 ms after a change) finish.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_settled = rss_bytes(agent.proc.pid)?;

    let f0 = Instant::now();
    let mut client = workload_client(&agent.socket).await?;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await?
        .into_inner();
    let m = stream.message().await?.context("stream ended")?;
    let fetch_secs = f0.elapsed().as_secs_f64();
    // All N were in the cache at `issued_secs`; serving them takes one fetch. (The fetch is
    // made after the memory reading so that the message buffers do not count as cache.)
    let served_secs = issued_secs + fetch_secs;
    ensure!(
        m.svids.len() == n,
        "served {} SVIDs, expected {n}",
        m.svids.len()
    );
    let material: usize = m
        .svids
        .iter()
        .map(|s| s.x509_svid.len() + s.x509_svid_key.len())
        .sum();
    let message_bytes = prost_len(&m);
    let rss_served = rss_bytes(agent.proc.pid)?;
    let hwm = hwm_bytes(agent.proc.pid)?;
    drop(stream);
    drop(client);
    w.poll()?;
    let cache_file = root
        .join(format!("agent-{n}-{rep}"))
        .join("agent")
        .join(agent::cache::CACHE_FILE);
    // The agent writes its cache file once more on SIGTERM.
    drop(agent);
    let footprint = footprint_in_child(&cache_file)?;
    Ok(Rep {
        footprint,
        rss_before,
        rss_issued,
        rss_settled,
        rss_served,
        hwm,
        issued_secs,
        served_secs,
        snapshot_secs,
        fetch_secs,
        agent_cpu,
        server_cpu,
        material_bytes: material as f64 / n as f64,
        message_bytes,
        warnings: w.warnings,
    })
}

/// RSS added per SVID; signed, so that allocator noise larger than the cache shows as a
/// negative value instead of a plausible zero.
fn per_svid_bytes(rss: u64, rss_before: u64, n: f64) -> f64 {
    (rss as f64 - rss_before as f64) / n
}

fn prost_len(m: &common::proto::workload::X509svidResponse) -> usize {
    m.svids
        .iter()
        .map(|s| s.spiffe_id.len() + s.x509_svid.len() + s.x509_svid_key.len() + s.bundle.len())
        .sum()
}

/// Figure 4. `work_rate` is the in-process rate of key generation + CSR + `sign_svid` on
/// one thread (the baseline of the sync time).
pub(crate) async fn scale(
    cfg: &Config,
    bin_dir: &Path,
    work_rate: f64,
) -> anyhow::Result<(Vec<Figure>, Value)> {
    let dir = cfg.workdir("scale")?;
    let server = Server::start(bin_dir, dir.path()).await?;
    let mut figures = Vec::new();
    let mut raw_sizes = Vec::new();
    // (entries, RSS per SVID, sync seconds, settled RSS) per size, per repeat.
    type PerSize = (usize, Vec<f64>, Vec<f64>, Vec<f64>);
    let mut per_size: Vec<PerSize> = Vec::new();
    for &n in &cfg.scale_sizes {
        let node = format!("spiffe://example.org/node/scale-{n}");
        eprintln!("  scale: creating {n} entries");
        let fsync = fsync_rate(dir.path(), cfg.io_duration)?;
        let (_, took) = create_entries(&server, n, cfg.create_concurrency, move |i| {
            entry_spec(&node, &format!("spiffe://example.org/scale/{n}/e{i}"))
        })
        .await?;
        let create_rate = n as f64 / took.as_secs_f64();
        let mut reps = Vec::new();
        for rep in 0..cfg.scale_reps {
            eprintln!("  scale {n}: repeat {}/{}", rep + 1, cfg.scale_reps);
            reps.push(one_rep(cfg, bin_dir, dir.path(), &server, n, rep).await?);
        }
        let nf = n as f64;
        let per_svid: Vec<f64> = reps
            .iter()
            .map(|r| per_svid_bytes(r.rss_settled, r.rss_before, nf))
            .collect();
        let material: Vec<f64> = reps.iter().map(|r| r.material_bytes).collect();
        let issued: Vec<f64> = reps.iter().map(|r| r.issued_secs).collect();
        let fetch: Vec<f64> = reps.iter().map(|r| r.fetch_secs).collect();
        let decoded: Vec<f64> = reps
            .iter()
            .map(|r| r.footprint["bytes_per_entry"].as_f64().unwrap_or(f64::NAN))
            .collect();
        let ideal = vec![nf / work_rate; reps.len()];
        figures.push(
            Figure::new(
                &format!("scale.agent_rss_per_svid.{n}"),
                &format!("4. agent RSS per cached SVID, {n} entries"),
                Unit::Bytes,
                &per_svid,
            )
            .baseline("SVID cert + key DER bytes", Unit::Bytes, &material)
            .target(Target::ValueAtMost(1500.0))
            .anchor("SPIRE agent: about 3 KB per cached SVID"),
        );
        figures.push(
            Figure::new(
                &format!("scale.decoded_cache_per_svid.{n}"),
                &format!("4. decoded cache per SVID in a fresh process, {n} entries"),
                Unit::Bytes,
                &decoded,
            )
            .baseline("SVID cert + key DER bytes", Unit::Bytes, &material)
            .note(
                "the agent's cache structures alone (CacheSnapshot::decode), no allocator history",
            ),
        );
        let sync = Figure::new(
            &format!("scale.sync_time.{n}"),
            &format!("4. sync {n} entries to a new agent (spawn -> all SVIDs cached)"),
            Unit::Secs,
            &issued,
        )
        .baseline(
            &format!("in-process keygen+CSR+sign_svid x{n}, 1 thread"),
            Unit::Secs,
            &ideal,
        )
        .anchor("SPIRE: agent sync interval 5 s");
        figures.push(if n == SYNC_TARGET_ENTRIES {
            sync.target(Target::ValueAtMost(1.0))
        } else {
            sync
        });
        figures.push(
            Figure::new(
                &format!("scale.fetch_all.{n}"),
                &format!("4. then FetchX509SVID first message with all {n} SVIDs"),
                Unit::Secs,
                &fetch,
            )
            .note("new connection; includes the new agent's first attestation of this process (executable hash)"),
        );
        figures.push(
            Figure::new(
                &format!("scale.entry_create_rate.{n}"),
                &format!(
                    "4. CreateEntry rate, {n} entries, {} callers",
                    cfg.create_concurrency
                ),
                Unit::PerSec,
                &[create_rate],
            )
            .baseline(
                "raw 4 KiB overwrite+fdatasync, 1 thread",
                Unit::PerSec,
                &[fsync],
            )
            .note("one measurement per size (not repeated)"),
        );
        raw_sizes.push(json!({
            "entries": n,
            "create_seconds": took.as_secs_f64(),
            "create_per_s": create_rate,
            "create_callers": cfg.create_concurrency,
            "raw_fdatasync_per_s": fsync,
            "reps": reps.iter().map(|r| json!({
                "rss_before_bytes": r.rss_before,
                "rss_all_issued_bytes": r.rss_issued,
                "rss_settled_bytes": r.rss_settled,
                "rss_after_serving_bytes": r.rss_served,
                "vm_hwm_bytes": r.hwm,
                "rss_per_svid_bytes": per_svid_bytes(r.rss_settled, r.rss_before, nf),
                "rss_per_svid_after_serving_bytes": per_svid_bytes(r.rss_served, r.rss_before, nf),
                "svid_material_bytes_per_svid": r.material_bytes,
                "workload_message_bytes": r.message_bytes,
                "seconds_to_snapshot": r.snapshot_secs,
                "seconds_to_all_issued": r.issued_secs,
                "seconds_to_all_served": r.served_secs,
                "seconds_fetch_all": r.fetch_secs,
                "agent_cpu_seconds": r.agent_cpu,
                "server_cpu_seconds": r.server_cpu,
                "warnings": r.warnings,
                "decoded_cache_in_fresh_process": r.footprint,
            })).collect::<Vec<_>>(),
            "per_svid_bytes": Summary::of(&per_svid).json(),
            "sync_seconds": Summary::of(&issued).json(),
        }));
        let settled: Vec<f64> = reps.iter().map(|r| r.rss_settled as f64).collect();
        per_size.push((n, per_svid, issued, settled));
    }
    if let (Some((n1, mem1, t1, rss1)), Some((n2, mem2, t2, rss2))) =
        (per_size.first(), per_size.last())
        && n2 > n1
    {
        let scale = *n2 as f64 / *n1 as f64;
        let marginal: Vec<f64> = rss2
            .iter()
            .zip(rss1)
            .map(|(b, a)| (b - a) / (*n2 - *n1) as f64)
            .collect();
        figures.push(
            Figure::new(
                "scale.agent_rss_per_svid.marginal",
                &format!("4. agent RSS per extra SVID between {n1} and {n2} entries"),
                Unit::Bytes,
                &marginal,
            )
            .target(Target::ValueAtMost(1500.0))
            .anchor("SPIRE agent: about 3 KB per cached SVID")
            .note("difference of the two agents' RSS divided by the difference in entries; no fixed overhead"),
        );
        let mem_growth: Vec<f64> = mem2.iter().zip(mem1).map(|(b, a)| b / a).collect();
        let time_growth: Vec<f64> = t2.iter().zip(t1).map(|(b, a)| b / a).collect();
        figures.push(
            Figure::new(
                "scale.growth.rss_per_svid",
                &format!("4. growth {n1} -> {n2}: RSS per SVID (1.0 = constant)"),
                Unit::Factor,
                &mem_growth,
            )
            .note("ratio of per-SVID memory at the two sizes"),
        );
        figures.push(
            Figure::new(
                "scale.growth.sync_time",
                &format!("4. growth {n1} -> {n2}: sync time ({scale:.0}x = linear)"),
                Unit::Factor,
                &time_growth,
            )
            .note("ratio of sync times at the two sizes"),
        );
    }
    drop(server);
    Ok((
        figures,
        json!({"sizes": raw_sizes, "baseline_keygen_csr_sign_per_s": work_rate}),
    ))
}
