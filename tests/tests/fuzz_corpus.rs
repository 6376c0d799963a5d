//! The seed corpora of the fuzz targets (`fuzz/corpus/<target>/seed-*`, see fuzz/README.md).
//!
//! The seeds are made here from the real types (a real CA and CSRs, a signed JWT-SVID,
//! protobuf sync messages, HTTP/2 frames as py-spiffe's transport sends them), and this
//! test checks that every committed seed is still what its target needs to start deep in
//! the code: a token that parses up to the bundle lookup, a CSR the CA signs, sync messages
//! whose entries convert, header blocks the `:authority` repair rewrites. Run with
//! `TESSERA_WRITE_FUZZ_SEEDS=1` to replace the committed seeds with fresh ones.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::jwt::{JwtError, JwtSigner, validate};
use common::proto::tessera::{self, SyncSnapshot, SyncUpdate, sync_update};
use common::svid::{csr_for, generate_key};
use common::{Bundle, RegistrationEntry, Selector, SpiffeId, TrustDomain};
use server::ca::{Ca, Revoked};

const TARGETS: [&str; 7] = [
    "spiffe_id",
    "jwt",
    "jwt_structured",
    "csr",
    "authority",
    "sync_update",
    "proc_cgroup",
];
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn spiffe_id_seeds() -> Vec<Vec<u8>> {
    let sha = "0123456789abcdef".repeat(4);
    [
        "spiffe://example.org/tessera/server\nexample.org\nspiffe://example.org".to_owned(),
        format!("unix:uid:1000\nunix:gid:0\nunix:supplementary_gid:27\nunix:user:www-data\nunix:group:staff\nunix:path:/usr/bin/python3\nunix:sha256:{sha}"),
        "spiffe://a-b_c.example.org/ns/prod/sa/web-1.x_y\nspiffe://example.org/a/b/c".to_owned(),
    ]
    .map(String::into_bytes)
    .to_vec()
}

fn jwt_seeds() -> Vec<Vec<u8>> {
    let signer = JwtSigner::from_pkcs8("k1", &JwtSigner::generate_pkcs8().unwrap()).unwrap();
    let id = SpiffeId::new("spiffe://example.org/workload").unwrap();
    let now = 1_800_000_000;
    let mut extra = serde_json::Map::new();
    extra.insert("task_id".into(), serde_json::json!("t1"));
    let tokens = [
        signer
            .sign(&id, &["fuzz".to_owned()], now - 10, now + 300, &extra)
            .unwrap(),
        signer
            .sign(
                &id,
                &["fuzz".to_owned(), "b".to_owned()],
                now,
                now + 60,
                &serde_json::Map::new(),
            )
            .unwrap(),
    ];
    tokens
        .iter()
        .map(|t| [&[0u8][..], t.as_bytes()].concat())
        .collect()
}

fn jwt_structured_seeds() -> Vec<Vec<u8>> {
    // Arbitrary-driven: the empty input is the original token with its own signature.
    vec![
        Vec::new(),
        vec![1, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
    ]
}

fn csr_seeds() -> Vec<Vec<u8>> {
    let key = generate_key().unwrap();
    let plain = csr_for(&key).unwrap();
    // A CSR that asks for another identity, a CA certificate and a DNS name.
    let mut p = rcgen::CertificateParams::new(vec!["evil.example.org".to_owned()]).unwrap();
    p.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://example.org/admin".try_into().unwrap(),
    ));
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "spiffe://example.org/admin");
    let greedy = p.serialize_request(&key).unwrap().der().to_vec();
    vec![
        [&[0u8][..], &plain].concat(),
        [&[2u8][..], &greedy].concat(),
        // Structured: a request rcgen builds from the fuzzer's choices.
        vec![1, 2, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1],
    ]
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// An HPACK literal (`first` = 0x40: with incremental indexing; 0x00: without), names and
/// values under 127 bytes.
fn literal(out: &mut Vec<u8>, first: u8, name: &[u8], value: &[u8]) {
    out.push(first);
    out.push(u8::try_from(name.len()).unwrap());
    out.extend_from_slice(name);
    out.push(u8::try_from(value.len()).unwrap());
    out.extend_from_slice(value);
}

fn authority_seeds() -> Vec<Vec<u8>> {
    let request = |first: u8, authority: &[u8]| {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
        literal(
            &mut block,
            first,
            b":path",
            b"/SpiffeWorkloadAPI/FetchX509SVID",
        );
        literal(&mut block, first, b":authority", authority);
        literal(&mut block, first, b"workload.spiffe.io", b"true");
        literal(&mut block, first, b"content-type", b"application/grpc");
        block
    };
    let socket = b"%2Ftmp%2Fagent%2Fapi.sock";
    // Input::Bytes (discriminant 0), reads of 8192 bytes, then the client's bytes.
    let seed = |stream: &[u8]| [&[0, 0, 0, 0, 0, 0x20][..], stream].concat();
    let mut grpcio = PREFACE.to_vec();
    frame(&mut grpcio, 0x4, 0, 0, &[]);
    frame(&mut grpcio, 0x1, 0x4, 1, &request(0x40, socket));
    frame(&mut grpcio, 0x0, 0x1, 1, &[0, 0, 0, 0, 0]);
    // The second request names the first one's fields by dynamic-table index.
    frame(
        &mut grpcio,
        0x1,
        0x4,
        3,
        &[0x83, 0x86, 0xbf, 0xbe, 0xbd, 0xbc],
    );
    let mut split = PREFACE.to_vec();
    let block = request(0x00, socket);
    let (a, b) = block.split_at(block.len() / 2);
    frame(
        &mut split,
        0x1,
        0x20 | 0x1,
        1,
        &[&[0, 0, 0, 0, 16][..], a].concat(),
    );
    frame(&mut split, 0x9, 0x4, 1, b);
    let mut valid = PREFACE.to_vec();
    frame(&mut valid, 0x1, 0x4, 1, &request(0x40, b"localhost"));
    vec![seed(&grpcio), seed(&split), seed(&valid)]
}

fn wire_entry(id: &str, path: &str, jit: bool) -> tessera::Entry {
    tessera::Entry {
        id: id.into(),
        spiffe_id: format!("spiffe://example.org/{path}"),
        parent_id: "spiffe://example.org/agent/node1".into(),
        selectors: vec!["unix:uid:1000".into(), "unix:path:/usr/bin/python3".into()],
        x509_svid_ttl_seconds: 3600,
        jwt_svid_ttl_seconds: 300,
        dns_names: vec![format!("{path}.example.org")],
        jit,
        hint: path.into(),
        created_at: 1_800_000_000,
        revision: 1,
        task: jit.then(|| tessera::TaskGrant {
            task_id: "0190b1c4-0000-7000-8000-000000000001".into(),
            deadline: 1_800_000_600,
            audiences: vec!["https://tools.example".into()],
            binding: None,
        }),
        ..tessera::Entry::default()
    }
}

fn sync_update_seeds() -> Vec<Vec<u8>> {
    let ca = Ca::generate(&td(), Duration::from_secs(86_400), None).unwrap();
    let signer = JwtSigner::from_pkcs8("k1", &JwtSigner::generate_pkcs8().unwrap()).unwrap();
    let bundle = tessera::Bundle {
        trust_domain: "example.org".into(),
        x509_authorities: vec![ca.certificate().to_vec()],
        sequence: 3,
        refresh_hint_seconds: 300,
        jwt_authorities: vec![tessera::JwtKey {
            kid: signer.kid().into(),
            public_key: signer.public_key(),
            expires_at: 1_800_086_400,
        }],
    };
    let issued = ca
        .sign_svid(
            &csr_for(&generate_key().unwrap()).unwrap(),
            &SpiffeId::new("spiffe://example.org/job").unwrap(),
            Duration::from_secs(600),
            &[],
        )
        .unwrap();
    let crl = ca
        .sign_crl(
            &[Revoked {
                serial_hex: issued.serial_hex,
                at: SystemTime::now(),
            }],
            1,
            SystemTime::now() + Duration::from_secs(3600),
        )
        .unwrap();
    let revocations = tessera::Revocations {
        crls: vec![crl],
        ended_tasks: vec![tessera::EndedTask {
            task_id: "0190b1c4-0000-7000-8000-000000000002".into(),
            until: 1_800_000_600,
            state: "revoked".into(),
            ended_at: 0,
        }],
    };
    let msg = |u: sync_update::Update| SyncUpdate {
        cursor: String::new(),
        update: Some(u),
    };
    let stream = |updates: Vec<SyncUpdate>| agent::fuzzing::encode_sync_messages(&updates);
    let snapshot = msg(sync_update::Update::Snapshot(SyncSnapshot {
        entries: vec![
            wire_entry("e1", "web", false),
            wire_entry("e2", "job", true),
        ],
        bundle: Some(bundle.clone()),
        revocations: Some(revocations.clone()),
        templates: Vec::new(),
        more: false,
    }));
    vec![
        stream(vec![snapshot.clone()]),
        stream(vec![
            snapshot,
            msg(sync_update::Update::EntryUpserted(wire_entry(
                "e3", "db", false,
            ))),
            msg(sync_update::Update::EntryUpserted(wire_entry(
                "e2", "job", false,
            ))),
            msg(sync_update::Update::EntryDeleted("e1".into())),
            msg(sync_update::Update::Bundle(bundle)),
            msg(sync_update::Update::Revocations(revocations.clone())),
        ]),
        // A resumed stream: what changed since the cursor, then a cursor alone.
        stream(vec![
            SyncUpdate {
                cursor: "feed/7".into(),
                update: Some(sync_update::Update::Resumed(tessera::SyncDelta {
                    entries_upserted: vec![wire_entry("e4", "api", true)],
                    entries_deleted: vec!["e1".into()],
                    bundle: None,
                    revocations: Some(revocations),
                    templates_upserted: Vec::new(),
                    templates_deleted: Vec::new(),
                })),
            },
            SyncUpdate {
                cursor: "feed/9".into(),
                update: None,
            },
        ]),
    ]
}

/// `/proc/<pid>/cgroup` files as docker, the kubelet (both drivers), podman and systemd
/// lay them out, on v2 and on a hybrid host.
fn proc_cgroup_seeds() -> Vec<Vec<u8>> {
    let id = "7e3c2f1a9b8d4c6e5f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a";
    let pod = "0f1e2d3c_4b5a_6978_8a9b_0c1d2e3f4a5b";
    [
        format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod}.slice/\
             cri-containerd-{id}.scope\n"
        ),
        format!(
            "12:pids:/kubepods/besteffort/pod{}/{id}\n4:memory:/kubepods/besteffort/pod{}/{id}\n\
             1:name=systemd:/kubepods/besteffort/pod{}/{id}\n0::/\n",
            pod.replace('_', "-"),
            pod.replace('_', "-"),
            pod.replace('_', "-")
        ),
        format!(
            "4:memory:/docker/{id}\n1:name=systemd:/docker/{id}\n\
             0::/system.slice/containerd.service\n"
        ),
        format!("0::/machine.slice/libpod-{id}.scope/container\n"),
        "0::/system.slice/system-getty.slice/getty@tty1.service\n".to_owned(),
    ]
    .map(String::into_bytes)
    .to_vec()
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "spiffe_id" => spiffe_id_seeds(),
        "jwt" => jwt_seeds(),
        "jwt_structured" => jwt_structured_seeds(),
        "csr" => csr_seeds(),
        "authority" => authority_seeds(),
        "sync_update" => sync_update_seeds(),
        "proc_cgroup" => proc_cgroup_seeds(),
        _ => unreachable!("{target}"),
    }
}

/// Whether `seed` reaches deep into `target`'s code (see the module doc).
fn check(target: &str, seed: &[u8]) {
    match target {
        "spiffe_id" => {
            for line in std::str::from_utf8(seed).unwrap().split('\n') {
                assert!(
                    SpiffeId::new(line).is_ok()
                        || TrustDomain::new(line).is_ok()
                        || line.parse::<Selector>().is_ok(),
                    "{line:?} parses as nothing"
                );
            }
        }
        "jwt" => {
            let token = std::str::from_utf8(&seed[1..]).unwrap();
            // Header, algorithm and claims pass; only the bundle is missing.
            assert_eq!(
                validate(token, "fuzz", &BTreeMap::new(), 1_800_000_000),
                Err(JwtError::UntrustedTrustDomain("example.org".into()))
            );
        }
        "jwt_structured" => {}
        "csr" if seed.first().is_some_and(|m| m & 1 == 0) => {
            let ca = Ca::generate(&td(), Duration::from_secs(3600), None).unwrap();
            let id = SpiffeId::new("spiffe://example.org/entry").unwrap();
            ca.sign_svid(&seed[1..], &id, Duration::from_secs(60), &[])
                .expect("the CA signs a seed CSR");
        }
        "csr" => {}
        "authority" => {
            let stream = &seed[6..];
            let mut rw = agent::fuzzing::AuthorityRewriter::default();
            let mut out = Vec::new();
            rw.feed(stream, &mut out);
            assert_eq!(rw.buffered(), 0, "every frame is complete");
            let repaired = out != stream;
            let needs_repair = stream.windows(3).any(|w| w == b"%2F");
            assert_eq!(repaired, needs_repair);
        }
        "sync_update" => {
            let updates = agent::fuzzing::decode_sync_messages(seed);
            assert_eq!(agent::fuzzing::encode_sync_messages(&updates), seed);
            let n = updates.len();
            for update in updates {
                let entries = match update.update {
                    Some(sync_update::Update::Snapshot(s)) => {
                        Bundle::try_from(s.bundle.unwrap()).unwrap();
                        s.entries
                    }
                    Some(sync_update::Update::EntryUpserted(e)) => vec![e],
                    Some(sync_update::Update::Resumed(d)) => d.entries_upserted,
                    Some(sync_update::Update::Bundle(b)) => {
                        Bundle::try_from(b).unwrap();
                        vec![]
                    }
                    _ => vec![],
                };
                for e in entries {
                    RegistrationEntry::try_from(e).unwrap();
                }
            }
            assert!(n > 0);
        }
        "proc_cgroup" => {
            // Every seed is a file the attestor accepts and recognises something in.
            let text = std::str::from_utf8(seed).unwrap();
            let selectors = agent::fuzzing::cgroup_selectors(text).expect("accepted");
            assert!(
                selectors
                    .iter()
                    .any(|s| s.starts_with("container:") || s.starts_with("systemd:")),
                "{text}: {selectors:?}"
            );
        }
        _ => unreachable!("{target}"),
    }
}

#[test]
fn committed_seeds_reach_into_each_fuzz_target() {
    let write = std::env::var_os("TESSERA_WRITE_FUZZ_SEEDS").is_some();
    for target in TARGETS {
        let dir = corpus_dir(target);
        let fresh = seeds(target);
        for seed in &fresh {
            check(target, seed);
        }
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            for f in std::fs::read_dir(&dir).unwrap() {
                let path = f.unwrap().path();
                if path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("seed-")
                {
                    std::fs::remove_file(path).unwrap();
                }
            }
            for (i, seed) in fresh.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
            }
        }
        let mut committed = 0;
        for f in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = f.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                check(target, &std::fs::read(&path).unwrap());
                committed += 1;
            }
        }
        assert!(committed > 0, "no seed for {target} in {}", dir.display());
    }
}
