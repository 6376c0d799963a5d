//! `bench`: Tessera's benchmark command.
//!
//! Every figure is printed next to a baseline measured in the same run on the same machine
//! (raw `ring` ECDSA, a raw Unix-socket round trip, raw `fdatasync`, ...). Each measurement
//! is repeated; the table shows the median with min and max, and the ratio to the baseline
//! is computed per repeat. The JSON written to `--json` holds every raw number. See
//! BENCHMARKS.md for the method and a recorded run.
//!
//! ```text
//! cargo build --release --bins -p server -p agent -p tests
//! target/release/bench                          # full run, JSON to target/bench.json
//! target/debug/bench --quick --json PATH        # tiny sizes (CI)
//! ```
//!
//! The server and agent binaries are taken from the directory of this executable (the same
//! target profile); under `cargo run` they are built first. Benchmarks are not tests: a
//! missed target is reported, not a failure. The exit status is non-zero only when a
//! measurement could not be made.

mod cross_server;
mod crypto;
mod procs;
mod relying;
mod scale;
mod stats;
mod stub;
mod workload;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::stats::Figure;

/// The sections of the report, in the issue's order of figures.
const SECTIONS: [&str; 8] = [
    "issuance",
    "latency",
    "attestation",
    "propagation",
    "cross_server",
    "scale",
    "jwt",
    "revocation",
];

const USAGE: &str = "\
usage: bench [--quick] [--json PATH] [--only SECTIONS] [--reps N] [--scale-sizes N,N]
             [--scale-reps N] [--bin-dir DIR] [--no-build] [--agent-env K=V] [--keep-dirs]
             [--postgres URL]

  --quick          tiny sizes and short measurements (CI smoke run)
  --json PATH      where to write the JSON report (default: target/bench.json, or
                   target/bench-quick.json with --quick)
  --only LIST      comma-separated subset of: issuance,latency,attestation,propagation,
                   cross_server,scale,jwt,revocation
  --reps N         repeats of each measurement (default 5; quick 1)
  --scale-sizes    entry counts for the scale figures (default 1000,10000; quick 10,50)
  --scale-reps N   repeats of each scale size (default 5; quick 1)
  --bin-dir DIR    where tessera-server and tessera-agent are (default: beside bench)
  --no-build       under `cargo run`, do not build the server and agent binaries first
  --agent-env K=V  extra environment for the agent processes (diagnostics)
  --keep-dirs      keep the server and agent directories (logs, datastores)
  --postgres URL   PostgreSQL for cross_server (two servers on one database); default
                   TESSERA_TEST_POSTGRES_URL; neither: the section is skipped
";

/// Sizes and durations of one run.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) quick: bool,
    /// Repeats of every measurement; each figure is the median over them.
    pub(crate) reps: usize,
    /// Threads for the "all cores" figures (the machine's available parallelism).
    pub(crate) threads: usize,
    /// Length of one in-process CPU rate measurement.
    pub(crate) cpu_duration: Duration,
    /// Length of one rate measurement over a socket.
    pub(crate) io_duration: Duration,
    /// Sequential Workload API fetches (and raw round trips) per repeat.
    pub(crate) latency_samples: usize,
    /// Clients released together for the concurrent latency figure.
    pub(crate) concurrency: usize,
    /// Rounds of `concurrency` clients per repeat.
    pub(crate) concurrent_rounds: usize,
    /// Entries created (and deleted) one by one per propagation repeat.
    pub(crate) propagation_entries: usize,
    /// Concurrent callers of the JWT Workload API calls.
    pub(crate) jwt_callers: usize,
    /// Entries the in-process node-API caller signs for.
    pub(crate) signer_entries: usize,
    /// CSRs per SignX509Svids call.
    pub(crate) sign_batch: usize,
    /// Entry counts of the scale figures.
    pub(crate) scale_sizes: Vec<usize>,
    /// Repeats of each scale size.
    pub(crate) scale_reps: usize,
    /// How long one agent may take to sync a scale size.
    pub(crate) scale_timeout: Duration,
    /// Concurrent CreateEntry callers when filling the datastore for the scale figures.
    pub(crate) create_concurrency: usize,
    /// Extra environment for agent processes (diagnostics, e.g. MALLOC_ARENA_MAX=1).
    pub(crate) agent_env: Vec<(String, String)>,
    /// Keep the server and agent directories (logs, datastore) after the run.
    pub(crate) keep_dirs: bool,
}

impl Config {
    fn new(quick: bool) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let full = Self {
            quick,
            reps: 5,
            threads,
            cpu_duration: Duration::from_millis(1000),
            io_duration: Duration::from_millis(1500),
            latency_samples: 200,
            concurrency: 100,
            concurrent_rounds: 5,
            propagation_entries: 100,
            jwt_callers: 16,
            signer_entries: 50,
            sign_batch: 500,
            scale_sizes: vec![1000, 10_000],
            scale_reps: 5,
            scale_timeout: Duration::from_secs(600),
            create_concurrency: 8,
            agent_env: Vec::new(),
            keep_dirs: false,
        };
        if quick {
            Self {
                reps: 1,
                cpu_duration: Duration::from_millis(100),
                io_duration: Duration::from_millis(200),
                latency_samples: 20,
                concurrency: 10,
                concurrent_rounds: 1,
                propagation_entries: 10,
                jwt_callers: 4,
                signer_entries: 10,
                sign_batch: 50,
                scale_sizes: vec![10, 50],
                scale_reps: 1,
                scale_timeout: Duration::from_secs(120),
                ..full
            }
        } else {
            full
        }
    }

    /// A directory for one cluster's files, removed on drop unless `--keep-dirs`.
    pub(crate) fn workdir(&self, name: &str) -> anyhow::Result<tempfile::TempDir> {
        let mut dir = tempfile::Builder::new()
            .prefix(&format!("tessera-bench-{name}-"))
            .tempdir()?;
        if self.keep_dirs {
            dir.disable_cleanup(true);
            eprintln!("  keeping {}", dir.path().display());
        }
        Ok(dir)
    }

    fn json(&self) -> Value {
        json!({
            "quick": self.quick,
            "reps": self.reps,
            "threads": self.threads,
            "cpu_measurement_ms": self.cpu_duration.as_millis() as u64,
            "io_measurement_ms": self.io_duration.as_millis() as u64,
            "latency_samples_per_rep": self.latency_samples,
            "concurrency": self.concurrency,
            "concurrent_rounds_per_rep": self.concurrent_rounds,
            "propagation_entries_per_rep": self.propagation_entries,
            "jwt_callers": self.jwt_callers,
            "signer_entries": self.signer_entries,
            "sign_batch": self.sign_batch,
            "scale_sizes": self.scale_sizes,
            "scale_reps": self.scale_reps,
            "create_concurrency": self.create_concurrency,
            "agent_env": self.agent_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        })
    }
}

/// The parsed command line.
#[derive(Debug)]
struct Args {
    cfg: Config,
    json: Option<PathBuf>,
    only: BTreeSet<String>,
    bin_dir: Option<PathBuf>,
    build: bool,
    /// PostgreSQL for the cross-server figure (a role that may create databases).
    postgres: Option<String>,
}

/// Parses `argv` (without the program name); `None` for `--help`.
fn parse_args(argv: Vec<String>) -> anyhow::Result<Option<Args>> {
    let quick = argv.iter().any(|a| a == "--quick");
    let mut a = Args {
        cfg: Config::new(quick),
        json: None,
        only: SECTIONS.iter().map(|s| (*s).to_owned()).collect(),
        bin_dir: None,
        build: true,
        postgres: std::env::var(cross_server::POSTGRES_ENV)
            .ok()
            .filter(|u| !u.is_empty()),
    };
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        let count = |v: String, name: &str| -> anyhow::Result<usize> {
            let n = v
                .parse::<usize>()
                .with_context(|| format!("{name}: {v:?} is not a count"))?;
            if n == 0 {
                bail!("{name} must be at least 1");
            }
            Ok(n)
        };
        match arg.as_str() {
            "--quick" => {}
            "-h" | "--help" => return Ok(None),
            "--json" => a.json = Some(value("--json")?.into()),
            "--bin-dir" => a.bin_dir = Some(value("--bin-dir")?.into()),
            "--no-build" => a.build = false,
            "--postgres" => a.postgres = Some(value("--postgres")?),
            "--keep-dirs" => a.cfg.keep_dirs = true,
            "--agent-env" => {
                let kv = value("--agent-env")?;
                let (k, v) = kv.split_once('=').context("--agent-env takes KEY=VALUE")?;
                a.cfg.agent_env.push((k.to_owned(), v.to_owned()));
            }
            "--reps" => a.cfg.reps = count(value("--reps")?, "--reps")?,
            "--scale-reps" => a.cfg.scale_reps = count(value("--scale-reps")?, "--scale-reps")?,
            "--scale-sizes" => {
                a.cfg.scale_sizes = value("--scale-sizes")?
                    .split(',')
                    .map(|s| count(s.trim().to_owned(), "--scale-sizes"))
                    .collect::<anyhow::Result<_>>()?;
            }
            "--only" => {
                a.only = value("--only")?
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect();
                if let Some(bad) = a.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
                    bail!("unknown section {bad:?}; sections: {}", SECTIONS.join(","));
                }
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(Some(a))
}

/// Builds the server and agent binaries when run by `cargo run` (which sets `CARGO`), in
/// the same profile as this executable, then checks that both are in `bin_dir`.
fn ensure_binaries(bin_dir: &Path, build: bool) -> anyhow::Result<()> {
    if build && let Ok(cargo) = std::env::var("CARGO") {
        let profile = bin_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "server", "-p", "agent", "--bins"]);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        eprintln!("building tessera-server and tessera-agent ({profile})");
        let status = cmd.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build of the server and agent failed");
        }
    }
    for name in ["tessera-server", "tessera-agent"] {
        let path = bin_dir.join(name);
        if !path.exists() {
            bail!(
                "{} not found: build the binaries first (cargo build --bins -p server -p agent \
                 -p tests, with --release for a full run) or pass --bin-dir",
                path.display()
            );
        }
    }
    Ok(())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn loadavg() -> String {
    read("/proc/loadavg").trim().to_owned()
}

/// The first line of `git <args>` in the current directory, if git answers.
fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// What the run ran on, for the JSON report.
fn machine() -> Value {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let modified = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| s.lines().filter(|l| !l.is_empty()).count());
    json!({
        "nproc": std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        "cpu_model": model,
        "mem_total_bytes": mem_kb * 1024,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "git_commit": git(&["rev-parse", "HEAD"]),
        "git_modified_files": modified,
    })
}

/// Current UTC time as RFC 3339 (seconds).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    common::duration::rfc3339(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// What a run has collected so far.
#[derive(Debug, Default)]
struct Report {
    figures: Vec<Figure>,
    raw: serde_json::Map<String, Value>,
    load: Vec<Value>,
    errors: Vec<String>,
}

impl Report {
    /// Marks the start of a section (stderr, and the load average in the JSON).
    fn section(&mut self, name: &str) {
        let load = loadavg();
        eprintln!("== {name} (load {load})");
        self.load
            .push(json!({"section": name, "loadavg": load, "at": utc_now()}));
    }

    /// Keeps a section's figures and raw numbers, or its error.
    fn record(&mut self, name: &str, r: anyhow::Result<(Vec<Figure>, Value)>) {
        match r {
            Ok((f, raw)) => {
                self.figures.extend(f);
                self.raw.insert(name.to_owned(), raw);
            }
            Err(e) => self.error(name, &e),
        }
    }

    fn error(&mut self, name: &str, e: &anyhow::Error) {
        eprintln!("!! {name} failed: {e:#}");
        self.errors.push(format!("{name}: {e:#}"));
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // Hidden subcommand run by the scale figure in a child process.
    if let [cmd, path] = argv.as_slice()
        && cmd == scale::FOOTPRINT_COMMAND
    {
        return match scale::cache_footprint(Path::new(path)) {
            Ok(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args(argv) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e:#}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the selected sections, prints the table and writes the JSON. `Ok(false)` when a
/// section failed (the others are still reported).
fn run(args: &Args) -> anyhow::Result<bool> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("executable directory")?
            .to_owned(),
    };
    ensure_binaries(&bin_dir, args.build)?;
    let out = args.json.clone().unwrap_or_else(|| {
        // target/<profile>/bench -> target/bench.json
        bin_dir
            .parent()
            .unwrap_or(&bin_dir)
            .join(if args.cfg.quick {
                "bench-quick.json"
            } else {
                "bench.json"
            })
    });
    let cfg = &args.cfg;
    let want = |s: &str| args.only.contains(s);
    let started = utc_now();
    let t0 = tokio::time::Instant::now();
    let mut report = Report::default();
    eprintln!(
        "tessera bench ({}), {} threads, {} repeats, binaries in {}",
        if cfg.quick { "quick" } else { "full" },
        cfg.threads,
        cfg.reps,
        bin_dir.display()
    );

    // In-process CPU figures first, while no server or agent is running. The issuance
    // rates are also the baselines of the node-API and sync-time figures.
    let mut issuance = None;
    if want("issuance") || want("scale") {
        report.section("issuance (in-process)");
        match crypto::issuance(cfg) {
            Ok(i) => {
                if want("issuance") {
                    report.figures.extend(i.figures.iter().cloned());
                }
                report.raw.insert("issuance".into(), i.raw.clone());
                issuance = Some(i);
            }
            Err(e) => report.error("issuance", &e),
        }
    }
    let mut jwt_base = None;
    if want("jwt") {
        report.section("jwt (in-process)");
        match crypto::jwt(cfg) {
            Ok((figures, raw, base)) => {
                report.figures.extend(figures);
                report.raw.insert("jwt".into(), raw);
                jwt_base = Some(base);
            }
            Err(e) => report.error("jwt", &e),
        }
    }

    wait_until_settled(&std::env::current_exe()?)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if want("latency")
            || want("attestation")
            || want("propagation")
            || want("jwt")
            || want("issuance")
            || want("revocation")
        {
            report.section("cluster start");
            match workload::Cluster::start(cfg, &bin_dir).await {
                Ok(cluster) => {
                    if want("latency") {
                        report.section("latency");
                        let r = workload::latency(cfg, &cluster).await;
                        report.record("latency", r);
                    }
                    if want("attestation") {
                        report.section("attestation: unix+cgroup vs unix-only");
                        let r = workload::attestation_cost(cfg, &cluster, &bin_dir).await;
                        report.record("attestation", r);
                    }
                    if want("propagation") {
                        report.section("propagation");
                        let r = workload::propagation(cfg, &cluster).await;
                        report.record("propagation", r);
                    }
                    if want("revocation") {
                        report.section("usable after task end");
                        let r = relying::usable_after_end(cfg, &cluster).await;
                        report.record("usable_after_end", r);
                    }
                    if let (true, Some(base)) = (want("jwt"), &jwt_base) {
                        report.section("jwt (Workload API)");
                        let r = workload::jwt_socket(cfg, &cluster, &bin_dir, base).await;
                        report.record("jwt_workload_api", r);
                    }
                    if let (true, Some(i)) = (want("issuance"), &issuance) {
                        report.section("issuance (node API)");
                        let r = workload::node_api_signing(
                            cfg,
                            &cluster,
                            &i.raw_sign_1,
                            &i.raw_sign_n,
                            i.sign_svid_rate,
                            &i.sign_svid_n,
                        )
                        .await;
                        report.record("issuance_node_api", r);
                    }
                }
                Err(e) => report.error("cluster start", &e),
            }
        }
        if want("cross_server") {
            report.section("cross-server propagation (PostgreSQL)");
            if let Some(r) =
                cross_server::cross_server(cfg, &bin_dir, args.postgres.as_deref()).await
            {
                report.record("cross_server", r);
            }
        }
        if want("scale") {
            report.section("scale");
            let rate = issuance
                .as_ref()
                .map_or(f64::NAN, |i| i.keygen_csr_sign_rate);
            let r = scale::scale(cfg, &bin_dir, rate).await;
            report.record("scale", r);
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    report.section("end");

    // The issue's order of figures (the name starts with its number); stable within one.
    report.figures.sort_by_key(|f| {
        f.name
            .split_once('.')
            .and_then(|(n, _)| n.parse::<u32>().ok())
            .unwrap_or(99)
    });
    print_report(cfg, &report);

    let retried = procs::retried();
    let json = json!({
        "tool": "tessera bench",
        "mode": if cfg.quick { "quick" } else { "full" },
        "started_at": started,
        "finished_at": utc_now(),
        "wall_seconds": t0.elapsed().as_secs_f64(),
        "machine": machine(),
        "config": cfg.json(),
        "load": report.load,
        "figures": report.figures.iter().map(Figure::json).collect::<Vec<_>>(),
        "raw": Value::Object(report.raw),
        "errors": report.errors,
        "server_internal_errors_retried": retried,
    });
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\nJSON written to {}", out.display());
    Ok(report.errors.is_empty())
}

/// Sleeps until `path` was last changed at least 3 s ago. The agent caches executable
/// hashes only for files whose ctime is more than 2 s old (a file changed within the
/// timestamp granularity could keep its cache key), so right after a build every
/// attestation of this process would hash the whole binary again.
fn wait_until_settled(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
    let ctime = std::time::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(meta.ctime()).unwrap_or(0))
        + Duration::from_nanos(u64::try_from(meta.ctime_nsec()).unwrap_or(0));
    let settled = ctime + Duration::from_secs(3);
    if let Ok(wait) = settled.duration_since(std::time::SystemTime::now()) {
        eprintln!(
            "waiting {:.1} s until this executable is old enough for the agent's hash cache",
            wait.as_secs_f64()
        );
        std::thread::sleep(wait);
    }
    Ok(())
}

/// The table, then anchors, notes, retries and errors, on stdout.
fn print_report(cfg: &Config, report: &Report) {
    println!();
    println!(
        "Tessera benchmark ({} run, {} threads, median of {} repeats; scale: {} repeats)",
        if cfg.quick { "quick" } else { "full" },
        cfg.threads,
        cfg.reps,
        cfg.scale_reps
    );
    if cfg.quick {
        println!(
            "(quick: tiny sizes and short measurements; the figures are not meaningful, so no \
             row passes or fails its target: `info`)"
        );
    }
    stats::print_table(&report.figures, cfg.quick);
    println!();
    for f in &report.figures {
        if let Some(a) = &f.anchor {
            println!("  anchor  {}: {a}", f.id);
        }
    }
    for f in &report.figures {
        if let (Some(n), true) = (&f.note, f.value.is_some()) {
            println!("  note    {}: {n}", f.id);
        }
    }
    let retried = procs::retried();
    if let Some(first) = retried.first() {
        println!(
            "  WARNING the server answered Internal {} times; the calls were retried (first: {first})",
            retried.len(),
        );
    }
    for e in &report.errors {
        println!("  ERROR   {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> anyhow::Result<Option<Args>> {
        parse_args(a.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn quick_and_overrides() {
        let a = args(&["--json", "out.json", "--quick", "--scale-sizes", "5, 7"])
            .unwrap()
            .unwrap();
        assert!(a.cfg.quick);
        assert_eq!(a.cfg.reps, 1);
        assert_eq!(a.cfg.scale_sizes, vec![5, 7]);
        assert_eq!(a.json, Some(PathBuf::from("out.json")));
        let full = args(&["--only", "jwt,scale"]).unwrap().unwrap();
        assert_eq!(full.cfg.reps, 5);
        assert_eq!(full.cfg.scale_sizes, vec![1000, 10_000]);
        assert_eq!(full.only.len(), 2);
        let pg = args(&["--postgres", "postgres://u@h/db", "--only", "cross_server"])
            .unwrap()
            .unwrap();
        assert_eq!(pg.postgres.as_deref(), Some("postgres://u@h/db"));
        assert!(pg.only.contains("cross_server"));
        assert!(args(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn bad_arguments_are_refused() {
        for bad in [
            &["--reps", "0"][..],
            &["--reps"],
            &["--only", "nope"],
            &["--scale-sizes", "10,x"],
            &["--agent-env", "NOEQUALS"],
            &["--postgres"],
            &["--frobnicate"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
    }
}
