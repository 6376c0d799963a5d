//! In-process throughput: the server's own signing code (`Ca::sign_svid`,
//! `JwtKeyManager::sign`) and the agent's validator (`common::jwt::validate`) against raw
//! `ring` ECDSA P-256 on the same threads, interleaved repeat by repeat.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use common::SpiffeId;
use common::jwt::JwtBundle;
use common::svid::{csr_for, generate_key};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use server::ca::Ca;
use server::jwt_keys::JwtKeyManager;
use tokio::time::Instant;

use crate::Config;
use crate::stats::{Figure, Summary, Target, Unit};

/// Runs `op(thread, iteration)` on `threads` threads for about `dur`; returns the summed
/// rate of all threads in operations per second. The first error of any thread fails the
/// measurement.
pub(crate) fn rate(
    threads: usize,
    dur: Duration,
    op: impl Fn(usize, u64) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<f64> {
    let barrier = Barrier::new(threads);
    let op = &op;
    let barrier = &barrier;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let mut n: u64 = 0;
                    loop {
                        op(t, n)?;
                        n += 1;
                        if n.is_multiple_of(8) && start.elapsed() >= dur {
                            break;
                        }
                    }
                    Ok::<_, anyhow::Error>(n as f64 / start.elapsed().as_secs_f64())
                })
            })
            .collect();
        let mut sum = 0.0;
        for h in handles {
            sum += h
                .join()
                .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??;
        }
        Ok(sum)
    })
}

/// Raw ECDSA P-256 / SHA-256 signer with the same library the product uses.
struct RawSigner {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl RawSigner {
    fn new(alg: &'static signature::EcdsaSigningAlgorithm) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|_| anyhow!("generate key"))?;
        let pair =
            EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(|_| anyhow!("load key"))?;
        Ok(Self { pair, rng })
    }

    fn sign(&self, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(self
            .pair
            .sign(&self.rng, msg)
            .map_err(|_| anyhow!("ECDSA sign"))?
            .as_ref()
            .to_vec())
    }
}

/// What the issuance measurement hands to later figures.
#[derive(Debug)]
pub(crate) struct Issuance {
    pub(crate) figures: Vec<Figure>,
    pub(crate) raw: Value,
    /// Raw ring ECDSA P-256 signs per second, 1 thread, per repeat.
    pub(crate) raw_sign_1: Vec<f64>,
    /// Raw ring ECDSA P-256 signs per second, all threads, per repeat.
    pub(crate) raw_sign_n: Vec<f64>,
    /// Median `Ca::sign_svid` calls per second, 1 thread.
    pub(crate) sign_svid_rate: f64,
    /// `Ca::sign_svid` calls per second, all threads, per repeat: the baseline of the node
    /// API's rate with as many callers.
    pub(crate) sign_svid_n: Vec<f64>,
    /// Median rate of the whole work behind one agent-side SVID (key generation + CSR +
    /// `sign_svid`), 1 thread: the baseline of the sync time.
    pub(crate) keygen_csr_sign_rate: f64,
}

/// Issuance throughput (figure 1): the server's signing code against raw signatures.
pub(crate) fn issuance(cfg: &Config) -> anyhow::Result<Issuance> {
    let threads = cfg.threads;
    let dur = cfg.cpu_duration;
    let td = crate::procs::trust_domain()?;
    let ca = Ca::generate(&td, Duration::from_secs(86400), None)?;
    let pool = 64;
    let csrs = (0..pool)
        .map(|_| Ok(csr_for(&generate_key()?)?))
        .collect::<anyhow::Result<Vec<Vec<u8>>>>()?;
    let ids = (0..pool)
        .map(|i| SpiffeId::new(&format!("spiffe://example.org/bench/w{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let ttl = Duration::from_secs(3600);
    let sample = ca.sign_svid(&csrs[0], &ids[0], ttl, &[])?;
    let leaf = sample.chain.first().context("empty chain")?.clone();
    let leaf_len = leaf.len();
    // The signed part of a certificate is the DER minus the signature algorithm and value
    // (about 80 bytes); the exact length hardly matters for SHA-256 over ~400 bytes.
    let tbs = vec![0x5a_u8; leaf_len.saturating_sub(80)];
    let raw = RawSigner::new(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)?;

    let product = |_t: usize, n: u64| {
        let i = (n as usize) % pool;
        black_box(ca.sign_svid(&csrs[i], &ids[i], ttl, &[])?);
        Ok(())
    };
    let baseline = |_t: usize, _n: u64| {
        black_box(raw.sign(&tbs)?);
        Ok(())
    };
    // Where the time of one sign_svid goes (1 thread): the CSR check alone (parse + ECDSA
    // verify of its self-signature), a raw ECDSA verify, and re-parsing the issued leaf.
    let asn1_sig = raw.sign(&tbs)?;
    let raw_public = raw.pair.public_key().as_ref().to_vec();
    let asn1_verifier =
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, raw_public);
    let mut r: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for rep in 0..cfg.reps {
        eprintln!("  issuance repeat {}/{}", rep + 1, cfg.reps);
        let mut push = |k, v| r.entry(k).or_default().push(v);
        push("raw_sign_1", rate(1, dur, baseline)?);
        push("sign_svid_1", rate(1, dur, product)?);
        push("raw_sign_n", rate(threads, dur, baseline)?);
        push("sign_svid_n", rate(threads, dur, product)?);
        push(
            "keygen_csr_sign_svid_1",
            rate(1, dur, |_t, n| {
                let csr = csr_for(&generate_key()?)?;
                let i = (n as usize) % pool;
                black_box(ca.sign_svid(&csr, &ids[i], ttl, &[])?);
                Ok(())
            })?,
        );
        let half = dur / 2;
        push(
            "raw_verify_1",
            rate(1, half, |_t, _n| {
                asn1_verifier
                    .verify(&tbs, &asn1_sig)
                    .map_err(|_| anyhow!("raw signature does not verify"))
            })?,
        );
        push(
            "csr_parse_verify_1",
            rate(1, half, |_t, n| {
                let i = (n as usize) % pool;
                black_box(rcgen::CertificateSigningRequestParams::from_der(
                    &csrs[i].clone().into(),
                )?);
                Ok(())
            })?,
        );
        push(
            "leaf_parse_1",
            rate(1, half, |_t, _n| {
                black_box(common::svid::parse_leaf(&leaf)?);
                Ok(())
            })?,
        );
    }
    // Signing from a CSR must check the CSR's self-signature (proof of possession), so one
    // raw verify plus one raw sign is the physical limit of an SVID from a CSR.
    let bound: Vec<f64> = r["raw_sign_1"]
        .iter()
        .zip(&r["raw_verify_1"])
        .map(|(s, v)| 1.0 / (1.0 / s + 1.0 / v))
        .collect();
    let anchor = "SPIRE rate-limits callers to 500 signing requests/s";
    let figures = vec![
        Figure::new(
            "issuance.x509.one_core",
            "1. X.509-SVIDs signed from CSRs (Ca::sign_svid), 1 thread",
            Unit::PerSec,
            &r["sign_svid_1"],
        )
        .baseline(
            "raw ring ECDSA P-256 signs, 1 thread",
            Unit::PerSec,
            &r["raw_sign_1"],
        )
        .target(Target::RatioAtLeast(0.5))
        .anchor(anchor),
        Figure::new(
            "issuance.x509.all_cores",
            &format!("1. X.509-SVIDs signed from CSRs (Ca::sign_svid), {threads} threads"),
            Unit::PerSec,
            &r["sign_svid_n"],
        )
        .baseline(
            &format!("raw ring ECDSA P-256 signs, {threads} threads"),
            Unit::PerSec,
            &r["raw_sign_n"],
        )
        .target(Target::RatioAtLeast(0.5))
        .anchor(anchor),
        Figure::new(
            "issuance.x509.limit_with_csr_check",
            "1. limit: raw ring P-256 verify (CSR check) + sign, 1 thread",
            Unit::PerSec,
            &bound,
        )
        .baseline(
            "raw ring ECDSA P-256 signs, 1 thread",
            Unit::PerSec,
            &r["raw_sign_1"],
        )
        .note("the best ratio any CA that checks the CSR signature can reach with ring"),
        Figure::new(
            "issuance.x509.one_core_vs_limit",
            "1. X.509-SVIDs signed from CSRs (Ca::sign_svid) against that limit, 1 thread",
            Unit::PerSec,
            &r["sign_svid_1"],
        )
        .baseline(
            "raw ring P-256 verify + sign, 1 thread",
            Unit::PerSec,
            &bound,
        ),
    ];
    let mut raw_json = json!({
        "threads": threads,
        "duration_ms_per_measurement": dur.as_millis() as u64,
        "leaf_der_bytes": leaf_len,
        "raw_message_bytes": tbs.len(),
    });
    for (k, v) in &r {
        raw_json[format!("{k}_per_s")] = json!(v);
    }
    raw_json["raw_verify_plus_sign_1_per_s"] = json!(bound);
    Ok(Issuance {
        figures,
        raw: raw_json,
        raw_sign_1: r["raw_sign_1"].clone(),
        raw_sign_n: r["raw_sign_n"].clone(),
        sign_svid_rate: Summary::of(&r["sign_svid_1"]).median,
        sign_svid_n: r["sign_svid_n"].clone(),
        keygen_csr_sign_rate: Summary::of(&r["keygen_csr_sign_svid_1"]).median,
    })
}

/// JWT-SVID mint and validate in-process (figure 5, first half). Returns the figures, the
/// raw numbers and the raw ES256 sign and verify rates on all threads.
pub(crate) fn jwt(cfg: &Config) -> anyhow::Result<(Vec<Figure>, Value, JwtBaselines)> {
    let threads = cfg.threads;
    let dur = cfg.cpu_duration;
    let dir = tempfile::tempdir()?;
    let now = unix_now();
    let mgr = JwtKeyManager::load_or_create(dir.path(), Duration::from_secs(86400), now)?;
    let subject = SpiffeId::new("spiffe://example.org/bench/jwt")?;
    let audience = vec!["bench-audience".to_owned()];
    let extra = serde_json::Map::new();
    let ttl = Duration::from_secs(300);
    let (token, _) = mgr.sign(&subject, &audience, ttl, now, &extra)?;
    let td = crate::procs::trust_domain()?;
    let bundles = BTreeMap::from([(td, JwtBundle::new(mgr.public_keys()))]);
    common::jwt::validate(&token, "bench-audience", &bundles, now)?;

    let (signing_input, _) = token.rsplit_once('.').context("JWT without a signature")?;
    let input = signing_input.as_bytes().to_vec();
    let raw = RawSigner::new(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)?;
    let raw_sig = raw.sign(&input)?;
    let public = raw.pair.public_key().as_ref().to_vec();
    let verifier = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public);

    let mint = |_t: usize, _n: u64| {
        black_box(mgr.sign(&subject, &audience, ttl, now, &extra)?);
        Ok(())
    };
    let validate = |_t: usize, _n: u64| {
        black_box(common::jwt::validate(
            &token,
            "bench-audience",
            &bundles,
            now,
        )?);
        Ok(())
    };
    let raw_sign = |_t: usize, _n: u64| {
        black_box(raw.sign(&input)?);
        Ok(())
    };
    let raw_verify = |_t: usize, _n: u64| {
        verifier
            .verify(&input, &raw_sig)
            .map_err(|_| anyhow!("raw ES256 signature does not verify"))
    };
    let mut r: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for rep in 0..cfg.reps {
        eprintln!("  JWT in-process repeat {}/{}", rep + 1, cfg.reps);
        let mut push = |k, v| r.entry(k).or_default().push(v);
        push("raw_es256_sign_1", rate(1, dur, raw_sign)?);
        push("mint_1", rate(1, dur, mint)?);
        push("raw_es256_sign_n", rate(threads, dur, raw_sign)?);
        push("mint_n", rate(threads, dur, mint)?);
        push("raw_es256_verify_1", rate(1, dur, raw_verify)?);
        push("validate_1", rate(1, dur, validate)?);
        push("raw_es256_verify_n", rate(threads, dur, raw_verify)?);
        push("validate_n", rate(threads, dur, validate)?);
    }
    let row = |id: &str, name: &str, value: &str, base_label: &str, base: &str| {
        Figure::new(id, name, Unit::PerSec, &r[value]).baseline(base_label, Unit::PerSec, &r[base])
    };
    let figures = vec![
        row(
            "jwt.mint.one_core",
            "5. JWT-SVIDs minted (server JwtKeyManager::sign), 1 thread",
            "mint_1",
            "raw ring ES256 signs, 1 thread",
            "raw_es256_sign_1",
        ),
        row(
            "jwt.mint.all_cores",
            &format!("5. JWT-SVIDs minted (server JwtKeyManager::sign), {threads} threads"),
            "mint_n",
            &format!("raw ring ES256 signs, {threads} threads"),
            "raw_es256_sign_n",
        ),
        row(
            "jwt.validate.one_core",
            "5. JWT-SVIDs validated (common::jwt::validate), 1 thread",
            "validate_1",
            "raw ring ES256 verifies, 1 thread",
            "raw_es256_verify_1",
        ),
        row(
            "jwt.validate.all_cores",
            &format!("5. JWT-SVIDs validated (common::jwt::validate), {threads} threads"),
            "validate_n",
            &format!("raw ring ES256 verifies, {threads} threads"),
            "raw_es256_verify_n",
        ),
    ];
    let baselines = JwtBaselines {
        sign_n: r["raw_es256_sign_n"].clone(),
        verify_n: r["raw_es256_verify_n"].clone(),
    };
    let mut raw_json = json!({
        "threads": threads,
        "token_bytes": token.len(),
        "signing_input_bytes": input.len(),
    });
    for (k, v) in &r {
        raw_json[format!("{k}_per_s")] = json!(v);
    }
    Ok((figures, raw_json, baselines))
}

/// Raw ES256 rates on all threads, per repeat, reused as baselines of the socket figures.
#[derive(Debug, Clone)]
pub(crate) struct JwtBaselines {
    pub(crate) sign_n: Vec<f64>,
    pub(crate) verify_n: Vec<f64>,
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
