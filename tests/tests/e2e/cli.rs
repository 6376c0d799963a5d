//! The command line: bad input gets a clear error and changes nothing; `--output json`
//! prints the documented shapes.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tests::{AGENT_ID, Cluster, ServerProc, bin, free_port, wait_for};

/// BSD `EX_USAGE`.
const EX_USAGE: i32 = 64;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn entries_json(server: &ServerProc) -> Value {
    server.cli_json(&["entry", "show"])
}

fn entry_count(server: &ServerProc) -> usize {
    entries_json(server)["entries"].as_array().unwrap().len()
}

/// Runs `cmd` until it exits by itself (failing if it still runs after 15 s); returns
/// the exit code and stderr.
fn run_to_exit(mut cmd: Command) -> (i32, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(15), || child.try_wait().ok().flatten());
    let mut err = String::new();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("{cmd:?} kept running instead of refusing its configuration:\n{err}");
    };
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), err)
}

/// Decodes standard or URL-safe base64 (padding optional).
fn base64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => panic!("not base64: {c:?} in {s:?}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn entry_create_rejects_bad_input_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    let existing = "spiffe://example.org/existing";
    server.create_entry(existing, &["unix:uid:1000", "unix:gid:1000"], &[]);
    let before = entries_json(&server);
    assert_eq!(entry_count(&server), 1);

    let good_id = "spiffe://example.org/web";
    // (spiffe id, selectors, extra flags, expected stderr substring)
    let cases: &[(&str, &[&str], &[&str], &str)] = &[
        (
            "spiffe://example.org/web/",
            &["unix:uid:1000"],
            &[],
            "invalid spiffe_id: spiffe id path must not end with \"/\"",
        ),
        (
            "spiffe://EXAMPLE.org/web",
            &["unix:uid:1000"],
            &[],
            "invalid spiffe_id: trust domain contains uppercase letter 'E'",
        ),
        (
            "http://example.org/web",
            &["unix:uid:1000"],
            &[],
            "invalid spiffe_id: spiffe id must start with \"spiffe://\"",
        ),
        (
            "spiffe://other.org/x",
            &["unix:uid:1000"],
            &[],
            "spiffe_id spiffe://other.org/x is not in trust domain example.org",
        ),
        (
            "spiffe://example.org",
            &["unix:uid:1000"],
            &[],
            "spiffe_id spiffe://example.org is reserved or has no path",
        ),
        (
            good_id,
            &["uid:1000"],
            &[],
            "invalid selector \"uid:1000\": unknown selector kind \"uid\"",
        ),
        (
            good_id,
            &["unix:uid:abc"],
            &[],
            "invalid selector \"unix:uid:abc\": unix:uid value must be a decimal u32",
        ),
        (
            good_id,
            &["k8s:ns:default"],
            &[],
            "invalid selector \"k8s:ns:default\": unknown k8s selector key \"ns\"; \
             supported keys: pod-uid, container-id",
        ),
        (
            good_id,
            &["container:id:4c01db0b"],
            &[],
            "invalid selector \"container:id:4c01db0b\": container:id value must be exactly \
             64 lowercase hex characters",
        ),
        (
            good_id,
            &["unix:uid:1000", "unix:uid:abc"],
            &[],
            "invalid selector \"unix:uid:abc\"",
        ),
        (
            good_id,
            &["unix:uid:1000"],
            &["--x509-svid-ttl", "31d"],
            "invalid x509_svid_ttl: must be between 1 second",
        ),
        (
            good_id,
            &["unix:uid:1000"],
            &["--jwt-svid-ttl", "31d"],
            "invalid jwt_svid_ttl: must be between 1 second",
        ),
        (
            good_id,
            &["unix:uid:1000"],
            &["--dns-name", "Bad_Name"],
            "invalid DNS name \"Bad_Name\"",
        ),
        (
            good_id,
            &["unix:uid:1000"],
            &["--dns-name", "ok.example.org", "--dns-name", "a..b"],
            "invalid DNS name \"a..b\"",
        ),
        // Same SPIFFE ID, parent and selectors (in another order) as the existing entry.
        (
            existing,
            &["unix:gid:1000", "unix:uid:1000"],
            &[],
            "already exists",
        ),
        (
            existing,
            &["unix:uid:1000", "unix:gid:1000"],
            &[],
            "already exists",
        ),
    ];
    for (spiffe_id, selectors, extra, want) in cases {
        let mut args = vec![
            "entry",
            "create",
            "--parent-id",
            AGENT_ID,
            "--spiffe-id",
            spiffe_id,
        ];
        for s in *selectors {
            args.extend(["--selector", s]);
        }
        args.extend(*extra);
        let out = server.cli(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains(want),
            "{args:?}: stderr {err:?} lacks {want:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
        assert_eq!(
            entries_json(&server),
            before,
            "{args:?} changed the entries"
        );
    }

    // A malformed parent ID too.
    let out = server.cli(&[
        "entry",
        "create",
        "--parent-id",
        "spiffe://example.org/node/",
        "--spiffe-id",
        good_id,
        "--selector",
        "unix:uid:1000",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid parent_id"),
        "{}",
        stderr(&out)
    );
    assert_eq!(entries_json(&server), before);
}

#[test]
fn entry_update_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    let id = server.create_entry("spiffe://example.org/web", &["unix:uid:1000"], &[]);
    let created = server.cli_json(&["entry", "show", "--entry-id", &id]);
    assert_eq!(created["revision"], 1);
    let fields = [
        "--parent-id",
        AGENT_ID,
        "--spiffe-id",
        "spiffe://example.org/web2",
        "--selector",
        "unix:uid:1001",
        "--selector",
        "unix:gid:50",
        "--x509-svid-ttl",
        "120",
        "--jwt-svid-ttl",
        "60",
        "--dns-name",
        "web.example.org",
        "--hint",
        "frontend",
    ];

    for cmd in [&["update"][..], &["delete"][..]] {
        let mut args = vec!["entry"];
        args.extend(cmd);
        args.extend(["--entry-id", "00000000-0000-0000-0000-000000000000"]);
        if cmd == ["update"] {
            args.extend(fields);
        }
        let out = server.cli(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr(&out).contains("no entry with id 00000000-0000-0000-0000-000000000000"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = server.cli(&["entry", "show", "--entry-id", "nope"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no entry with id nope"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        server.cli_json(&["entry", "show", "--entry-id", &id]),
        created,
        "unchanged"
    );

    // An invalid update of an existing entry changes nothing.
    let out = server.cli(&[
        "entry",
        "update",
        "--entry-id",
        &id,
        "--parent-id",
        AGENT_ID,
        "--spiffe-id",
        "spiffe://example.org/web",
        "--selector",
        "unix:uid:-1",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("invalid selector"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        server.cli_json(&["entry", "show", "--entry-id", &id]),
        created
    );

    // A valid update replaces the fields and bumps the revision.
    let mut args = vec!["entry", "update", "--entry-id", &id];
    args.extend(fields);
    let updated = server.cli_json(&args);
    assert_eq!(updated["id"], id.as_str());
    assert_eq!(updated["revision"], 2);
    assert_eq!(updated["spiffe_id"], "spiffe://example.org/web2");
    assert_eq!(updated["parent_id"], AGENT_ID);
    let mut sel: Vec<&str> = updated["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    sel.sort_unstable();
    assert_eq!(sel, ["unix:gid:50", "unix:uid:1001"]);
    assert_eq!(updated["x509_svid_ttl"], 120);
    assert_eq!(updated["jwt_svid_ttl"], 60);
    assert_eq!(updated["dns_names"], serde_json::json!(["web.example.org"]));
    assert_eq!(updated["hint"], "frontend");
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_eq!(
        server.cli_json(&["entry", "show", "--entry-id", &id]),
        updated,
        "the update is stored"
    );
    let again = server.cli_json(&args);
    assert_eq!(again["revision"], 3);

    // Delete, then it is gone.
    let deleted = server.cli_json(&["entry", "delete", "--entry-id", &id]);
    assert_eq!(deleted["id"], id.as_str());
    assert_eq!(entry_count(&server), 0);
    let out = server.cli(&["entry", "delete", "--entry-id", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&format!("no entry with id {id}")));
}

#[test]
fn token_generate_rejects_bad_spiffe_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    for (args, want) in [
        (
            &["--spiffe-id", "spiffe://example.org"][..],
            "invalid agent SPIFFE ID: spiffe://example.org is reserved",
        ),
        (
            &["--spiffe-id", "spiffe://other.org/x"][..],
            "spiffe://other.org/x is not in trust domain example.org",
        ),
        (
            &["--spiffe-id", "spiffe://example.org/node/"][..],
            "invalid agent SPIFFE ID",
        ),
        (
            &["--spiffe-id", AGENT_ID, "--ttl", "8d"][..],
            "token TTL must be between 1 and",
        ),
    ] {
        let mut all = vec!["token", "generate"];
        all.extend(args);
        let out = server.cli(&all);
        assert!(!out.status.success(), "{all:?} succeeded");
        assert!(out.stdout.is_empty(), "{all:?} printed a token");
        assert!(stderr(&out).contains(want), "{all:?}: {}", stderr(&out));
    }
    // A good one still works.
    let t = server.cli_json(&["token", "generate", "--spiffe-id", AGENT_ID]);
    assert_eq!(t["spiffe_id"], AGENT_ID);
}

fn assert_usage_error(cmd: Command, want: &str, untouched: &[&Path]) {
    let desc = format!("{cmd:?}");
    let (code, err) = run_to_exit(cmd);
    assert_eq!(code, EX_USAGE, "{desc}: stderr {err}");
    assert!(err.contains(want), "{desc}: stderr {err:?} lacks {want:?}");
    for p in untouched {
        assert!(!p.exists(), "{desc} created {}", p.display());
    }
}

#[test]
fn server_run_rejects_bad_configuration_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let socket = dir.path().join("admin.sock");
    let bind = format!("127.0.0.1:{}", free_port());
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "trust_domain = \"example.org\"\nbogus_key = 1\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--trust-domain", "EXAMPLE.org"],
            "invalid trust_domain: trust domain contains uppercase letter",
        ),
        (
            &["--trust-domain", "example.org", "--bind", "nonsense"],
            "invalid bind_address: \"nonsense\" is not IP:PORT",
        ),
        (
            &[
                "--trust-domain",
                "example.org",
                "--default-x509-svid-ttl",
                "48h",
            ],
            "invalid default_x509_svid_ttl: 172800s is longer than ca_ttl (86400s)",
        ),
        (
            &["--config", bad_toml.to_str().unwrap()],
            "unknown field `bogus_key`",
        ),
        (&[], "missing trust_domain"),
    ];
    for (args, want) in cases {
        let mut cmd = Command::new(bin("tessera-server"));
        cmd.arg("run").args(*args).arg("--data-dir").arg(&data);
        cmd.arg("--admin-socket").arg(&socket);
        if !args.contains(&"--bind") {
            cmd.args(["--bind", &bind]);
        }
        assert_usage_error(cmd, want, &[&data, &socket]);
    }
}

#[test]
fn agent_run_rejects_bad_configuration_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("agent");
    let socket = dir.path().join("public/api.sock");
    let addr = format!("127.0.0.1:{}", free_port());
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--trust-domain",
                "example.org",
                "--server-address",
                &addr,
                "--socket-path",
                "relative/path",
            ],
            "invalid socket_path: must be an absolute path",
        ),
        (
            &["--trust-domain", "example.org", "--server-address", "nope"],
            "invalid server_address: \"nope\" is not HOST:PORT",
        ),
        (&["--server-address", &addr], "missing trust_domain"),
        (
            &[
                "--trust-domain",
                "example.org",
                "--server-address",
                &addr,
                "--workload-attestor",
                "cgroup",
            ],
            "invalid workload_attestors: must include \"unix\"",
        ),
        (
            &[
                "--trust-domain",
                "example.org",
                "--server-address",
                &addr,
                "--workload-attestor",
                "unix",
                "--workload-attestor",
                "k8s",
            ],
            "invalid workload_attestors: \"k8s\" is not a workload attestor",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = Command::new(bin("tessera-agent"));
        cmd.arg("run").args(*args).arg("--data-dir").arg(&data);
        if !args.contains(&"--socket-path") {
            cmd.arg("--socket-path").arg(&socket);
        }
        assert_usage_error(cmd, want, &[&data, &socket, Path::new("relative")]);
    }
}

#[test]
fn json_output_for_show_list_token_and_bundle() {
    let c = Cluster::start(&[]);
    let created = c.server.cli_json(&[
        "entry",
        "create",
        "--parent-id",
        AGENT_ID,
        "--spiffe-id",
        "spiffe://example.org/web",
        "--selector",
        "unix:uid:0",
        "--dns-name",
        "web.example.org",
    ]);

    // entry show: the list, and one entry, with every documented field.
    let list = c.server.cli_json(&["entry", "show"]);
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    let e = &entries[0];
    assert_eq!(e, &created);
    let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "certified_at",
            "created_at",
            "disabled_at",
            "disabled_reason",
            "dns_names",
            "expires_at",
            "hint",
            "id",
            "jit",
            "jwt_svid_ttl",
            "node",
            "owner",
            "parent_id",
            "review_every",
            "revision",
            "selectors",
            "spiffe_id",
            "template_id",
            "tenant",
            "x509_svid_ttl"
        ]
    );
    assert_eq!(e["template_id"], Value::Null, "made by an operator");
    assert_eq!(
        e["tenant"], "default",
        "everything outside a tenant's prefixes"
    );
    assert_eq!(e["owner"], "user:root", "the creating operator");
    assert!(
        e["expires_at"].is_null() && e["disabled_at"].is_null(),
        "{e}"
    );
    assert_eq!(e["spiffe_id"], "spiffe://example.org/web");
    assert_eq!(e["parent_id"], AGENT_ID);
    assert_eq!(e["selectors"], serde_json::json!(["unix:uid:0"]));
    assert_eq!(e["dns_names"], serde_json::json!(["web.example.org"]));
    assert_eq!(e["x509_svid_ttl"], 3600, "server default");
    assert_eq!(e["revision"], 1);
    assert_eq!(e["jit"], false);
    assert_eq!(e["node"], false);
    let id = e["id"].as_str().unwrap();
    assert_eq!(&c.server.cli_json(&["entry", "show", "--entry-id", id]), e);
    let filtered =
        c.server
            .cli_json(&["entry", "show", "--spiffe-id", "spiffe://example.org/other"]);
    assert_eq!(filtered, serde_json::json!({"entries": []}));

    // agent list.
    let agents = c.server.cli_json(&["agent", "list"]);
    let agents = agents["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1);
    let a = &agents[0];
    assert_eq!(a["spiffe_id"], AGENT_ID);
    assert_eq!(a["banned"], false);
    assert_eq!(a["attestation_type"], "join_token");
    assert_eq!(a["selectors"], serde_json::json!([]), "no node selectors");
    let serial = a["serial"].as_str().unwrap();
    assert!(
        !serial.is_empty() && serial.bytes().all(|b| b.is_ascii_hexdigit()),
        "{serial}"
    );
    let (attested, expires) = (
        a["attested_at"].as_i64().unwrap(),
        a["expires_at"].as_i64().unwrap(),
    );
    assert!(expires > attested, "{a}");

    // token generate.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = c.server.cli_json(&[
        "token",
        "generate",
        "--spiffe-id",
        "spiffe://example.org/node/json",
        "--ttl",
        "120",
    ]);
    assert_eq!(t["spiffe_id"], "spiffe://example.org/node/json");
    let token = t["token"].as_str().unwrap();
    assert_eq!(token.len(), 36, "{token}");
    let expires_at = t["expires_at"].as_i64().unwrap();
    assert!(
        (now + 115..=now + 125).contains(&expires_at),
        "expires_at {expires_at}, now {now}"
    );
    // Without --output json the token is printed alone.
    let out = c
        .server
        .cli(&["token", "generate", "--spiffe-id", AGENT_ID]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().len(), 36, "{text:?}");
    assert_eq!(text.lines().count(), 1, "{text:?}");

    // bundle show --format spiffe.
    let b = c.server.cli_json(&["bundle", "show", "--format", "spiffe"]);
    let keys = b["keys"].as_array().unwrap();
    let x509: Vec<&Value> = keys.iter().filter(|k| k["use"] == "x509-svid").collect();
    assert_eq!(x509.len(), 1, "one X.509 authority: {b}");
    // Any other key is a JWT authority, which per the SPIFFE bundle format has a kid
    // and no x5c.
    for k in keys.iter().filter(|k| k["use"] != "x509-svid") {
        assert_eq!(k["use"], "jwt-svid", "{k}");
        assert!(k["kid"].as_str().is_some_and(|s| !s.is_empty()), "{k}");
        assert!(k.get("x5c").is_none(), "{k}");
    }
    let k = x509[0];
    assert_eq!(k["use"], "x509-svid");
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    assert!(k.get("kid").is_none(), "x509-svid keys carry no kid: {k}");
    let x5c = k["x5c"].as_array().unwrap();
    assert_eq!(x5c.len(), 1, "a single x5c: {k}");
    assert!(b["spiffe_sequence"].as_u64().is_some(), "{b}");
    assert!(b["spiffe_refresh_hint"].as_u64().is_some(), "{b}");
    // x5c is the CA certificate of the PEM bundle; x and y are its public key.
    let der = base64_decode(x5c[0].as_str().unwrap());
    let pem_out = c.server.cli(&["bundle", "show"]);
    let pem_text = String::from_utf8(pem_out.stdout).unwrap();
    let body: String = pem_text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert_eq!(der, base64_decode(&body), "x5c matches the PEM bundle");
    use x509_parser::prelude::FromDer as _;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    let point = cert.public_key().subject_public_key.data.to_vec();
    let mut want = vec![0x04];
    want.extend(base64_decode(k["x"].as_str().unwrap()));
    want.extend(base64_decode(k["y"].as_str().unwrap()));
    assert_eq!(point, want, "x and y are the certificate's key");
}

/// Runs `cmd` (which must not wait on stdin) and returns its output.
fn run(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// `YYYY-MM-DDTHH:MM:SS[.mmm]Z`.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        r.into_iter()
            .all(|i| b.get(i).is_some_and(u8::is_ascii_digit))
    };
    let base = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    base && (&s[19..] == "Z" || (s.len() == 24 && b[19] == b'.' && digits(20..23) && b[23] == b'Z'))
}

/// The value after `label` (`Label : value`) on each line of `text` that has it.
fn field<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(label))
        .filter_map(|l| l.split_once(": ").map(|(_, v)| v.trim()))
        .collect()
}

#[test]
fn bad_flags_exit_64_in_both_binaries_and_help_exits_0() {
    // Parse errors happen before anything is contacted: no daemon needed.
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "tessera-server",
            &["entry", "create", "--bogus"],
            "unexpected argument '--bogus'",
        ),
        (
            "tessera-server",
            &[
                "entry",
                "create",
                "--parent-id",
                AGENT_ID,
                "--spiffe-id",
                "spiffe://example.org/a",
                "--selector",
                "unix:uid:1",
                "--x509-svid-ttl",
                "soon",
            ],
            "\"soon\" is not a duration",
        ),
        (
            "tessera-server",
            &["token", "generate", "--ttl", "1y"],
            "\"1y\" has an unknown unit",
        ),
        (
            "tessera-server",
            &["run", "--no-such-flag"],
            "unexpected argument",
        ),
        ("tessera-server", &[], "Usage"),
        (
            "tessera-agent",
            &["api", "fetch", "x509", "--bogus"],
            "unexpected argument '--bogus'",
        ),
        (
            "tessera-agent",
            &["api", "fetch", "x509", "--timeout", "1y"],
            "unknown unit",
        ),
        (
            "tessera-agent",
            &["task", "begin", "--ttl", "0"],
            "greater than zero",
        ),
        (
            "tessera-agent",
            &["api", "fetch", "x509", "--socket-path", "relative.sock"],
            "must be absolute",
        ),
    ];
    for (binary, args, want) in cases {
        let mut cmd = Command::new(bin(binary));
        cmd.args(*args).env_remove("SPIFFE_ENDPOINT_SOCKET");
        let out = run(cmd);
        assert_eq!(
            out.status.code(),
            Some(EX_USAGE),
            "{binary} {args:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(want),
            "{binary} {args:?}: {:?} lacks {want:?}",
            stderr(&out)
        );
        assert!(out.stdout.is_empty(), "{binary} {args:?} printed to stdout");
        // With --output json the error is one JSON object on stderr.
        if !args.is_empty() {
            let mut cmd = Command::new(bin(binary));
            cmd.args(*args)
                .args(["--output", "json"])
                .env_remove("SPIFFE_ENDPOINT_SOCKET");
            let out = run(cmd);
            assert_eq!(out.status.code(), Some(EX_USAGE), "{binary} {args:?} json");
            let v: Value = serde_json::from_slice(&out.stderr)
                .unwrap_or_else(|e| panic!("{binary} {args:?}: {e}: {}", stderr(&out)));
            assert_eq!(v["error"]["exit_code"], EX_USAGE, "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{v}"
            );
        }
    }
    for binary in ["tessera-server", "tessera-agent"] {
        for flag in ["--help", "--version"] {
            let out = run({
                let mut c = Command::new(bin(binary));
                c.arg(flag);
                c
            });
            assert_eq!(out.status.code(), Some(0), "{binary} {flag}");
            assert!(!out.stdout.is_empty(), "{binary} {flag}");
        }
    }
    // No optional flag shows an empty default in --help.
    for (binary, args) in [
        ("tessera-server", &["entry", "create", "--help"][..]),
        ("tessera-server", &["entry", "show", "--help"][..]),
        ("tessera-server", &["task", "create", "--help"][..]),
        ("tessera-server", &["task", "list", "--help"][..]),
        ("tessera-server", &["audit", "show", "--help"][..]),
        ("tessera-server", &["token", "generate", "--help"][..]),
        ("tessera-server", &["run", "--help"][..]),
        ("tessera-agent", &["task", "begin", "--help"][..]),
        ("tessera-agent", &["api", "fetch", "jwt", "--help"][..]),
        ("tessera-agent", &["run", "--help"][..]),
    ] {
        let mut cmd = Command::new(bin(binary));
        cmd.args(args);
        let out = run(cmd);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{binary} {args:?}");
        assert!(!help.contains("[default: ]"), "{binary} {args:?}:\n{help}");
    }
    // The default task lifetime is documented where the flag is.
    let mut cmd = Command::new(bin("tessera-server"));
    cmd.args(["task", "create", "--help"]);
    let help = String::from_utf8(run(cmd).stdout).unwrap();
    assert!(help.contains("max_task_ttl (24h"), "{help}");
}

#[test]
fn socket_errors_name_the_variable_and_print_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let mut server = Command::new(bin("tessera-server"));
    server
        .args(["entry", "show", "--admin-socket"])
        .arg(&missing);
    let mut agent = Command::new(bin("tessera-agent"));
    agent
        .args(["api", "fetch", "x509", "--socket-path"])
        .arg(&missing)
        .env_remove("SPIFFE_ENDPOINT_SOCKET");
    for (cmd, var) in [
        (server, "TESSERA_ADMIN_SOCKET"),
        (agent, "SPIFFE_ENDPOINT_SOCKET"),
    ] {
        let desc = format!("{cmd:?}");
        let out = run(cmd);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{desc}: {err}");
        assert!(err.starts_with("error: cannot reach"), "{desc}: {err}");
        assert!(err.contains(var), "{desc}: {err}");
        assert!(
            err.contains(&missing.display().to_string()),
            "{desc}: {err}"
        );
        assert_eq!(
            err.matches("No such file or directory").count(),
            1,
            "{desc}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{desc}: {err}");
    }
}

#[test]
fn text_prints_rfc3339_json_keeps_numbers_and_durations_share_one_syntax() {
    let c = Cluster::start(&[]);
    // `--x509-svid-ttl 15m` as `task create --ttl 15m` always was.
    let e = c.server.cli_json(&[
        "entry",
        "create",
        "--parent-id",
        AGENT_ID,
        "--spiffe-id",
        "spiffe://example.org/times",
        "--selector",
        "unix:uid:0",
        "--x509-svid-ttl",
        "15m",
        "--jwt-svid-ttl",
        "2m",
    ]);
    assert_eq!(e["x509_svid_ttl"], 900, "{e}");
    assert_eq!(e["jwt_svid_ttl"], 120, "{e}");
    let id = e["id"].as_str().unwrap();
    assert!(e["created_at"].is_i64(), "{e}");

    let out = c.server.cli(&["entry", "show", "--entry-id", id]);
    let text = String::from_utf8(out.stdout).unwrap();
    let created = field(&text, "Created at");
    assert!(created.len() == 1 && is_rfc3339(created[0]), "{text}");
    assert_eq!(field(&text, "X509-SVID TTL"), ["900s"], "{text}");

    // ca show.
    let cas = c.server.cli_json(&["ca", "show"]);
    assert!(cas["cas"][0]["not_after"].is_i64(), "{cas}");
    let text = String::from_utf8(c.server.cli(&["ca", "show"]).stdout).unwrap();
    for label in ["Not before", "Not after"] {
        let v = field(&text, label);
        assert!(
            !v.is_empty() && v.iter().all(|t| is_rfc3339(t)),
            "{label}: {text}"
        );
    }

    // audit show: milliseconds in JSON, RFC 3339 with milliseconds in text.
    let out = c.server.cli(&["audit", "show", "--output", "json"]);
    let first: Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert!(
        first["at_ms"].as_i64().unwrap() > 1_000_000_000_000,
        "{first}"
    );
    let text = String::from_utf8(c.server.cli(&["audit", "show"]).stdout).unwrap();
    let line = text.lines().next().unwrap();
    let at = line.split_whitespace().nth(1).unwrap();
    assert!(is_rfc3339(at) && at.len() == 24, "{line}");

    // The SVID itself, through the agent.
    let got = wait_for(Duration::from_secs(20), || {
        let out = c.agent.cli(&["api", "fetch", "x509", "--timeout", "5s"]);
        out.status
            .success()
            .then(|| String::from_utf8(out.stdout).unwrap())
    })
    .unwrap_or_else(|| panic!("no SVID; agent log:\n{}", c.agent.log_tail()));
    assert!(got.starts_with("Received 1 svid(s)\n"), "{got}");
    for label in ["SVID Valid After", "SVID Valid Until"] {
        let v = field(&got, label);
        assert!(v.len() == 1 && is_rfc3339(v[0]), "{label}: {got}");
    }
    let v = c.fetch_json();
    let v: Value = serde_json::from_slice(&v.stdout).unwrap();
    let (nb, na) = (
        v["svids"][0]["not_before"].as_i64().unwrap(),
        v["svids"][0]["not_after"].as_i64().unwrap(),
    );
    // 15 minutes, backdated by at most a tenth of that.
    assert!((900..=990).contains(&(na - nb)), "{v}");

    // A task's times.
    let jit = c.server.create_entry(
        "spiffe://example.org/jit-times",
        &["unix:uid:0"],
        &["--jit"],
    );
    let out = c
        .server
        .cli(&["task", "create", "--entry-id", &jit, "--ttl", "15m"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    for label in ["Created at", "Deadline"] {
        let v = field(&text, label);
        assert!(v.len() == 1 && is_rfc3339(v[0]), "{label}: {text}");
    }
}

#[test]
fn fetch_write_names_the_files_it_wrote_and_refusals_say_why() {
    let c = Cluster::start(&[]);
    // Nothing registered for this process yet: the agent's reason, not a timeout.
    let out = c.agent.cli(&["api", "fetch", "x509", "--timeout", "20s"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the agent refused this process: no identity issued"),
        "{err}"
    );
    assert!(!err.contains("within"), "{err}");

    for name in ["a", "b"] {
        c.server.create_entry(
            &format!("spiffe://example.org/{name}"),
            &["unix:uid:0"],
            &[],
        );
    }
    let dir = c.dir.path().join("out");
    let got = wait_for(Duration::from_secs(20), || {
        let out = c.agent.cli(&["api", "fetch", "x509", "--timeout", "5s"]);
        let text = String::from_utf8(out.stdout).unwrap();
        text.starts_with("Received 2 svid(s)").then_some(())
    });
    assert!(got.is_some(), "agent log:\n{}", c.agent.log_tail());
    let out = c
        .agent
        .cli(&["api", "fetch", "x509", "--write", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "Wrote svid.pem, svid.key, bundle.pem, svid.1.pem, svid.1.key, bundle.1.pem to {}",
        dir.display()
    );
    assert!(text.contains(&want), "{text}");
    for f in [
        "svid.pem",
        "svid.key",
        "bundle.pem",
        "svid.1.pem",
        "svid.1.key",
        "bundle.1.pem",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let out = c.agent.cli(&[
        "api",
        "fetch",
        "x509",
        "--output",
        "json",
        "--write",
        dir.to_str().unwrap(),
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["written"].as_array().unwrap().len(), 6, "{v}");
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let c = Cluster::start(&[]);
    // Something at warn level or above (the coloured levels) in the server log too.
    let _ = c
        .server
        .cli(&["token", "generate", "--spiffe-id", AGENT_ID]);
    let server_log = std::fs::read_to_string(&c.server.log).unwrap();
    let agent_log = c.agent.log_text();
    assert!(server_log.contains("INFO"), "{server_log}");
    assert!(agent_log.contains("INFO"), "{agent_log}");
    for (name, log) in [("server", &server_log), ("agent", &agent_log)] {
        assert!(
            !log.contains('\u{1b}'),
            "{name} log has ANSI escapes:\n{log}"
        );
    }
}

#[test]
fn quickstart_takes_another_port_when_8081_is_busy() {
    // Hold 8081 (if something else already holds it, it is busy all the same).
    let _held = std::net::TcpListener::bind("127.0.0.1:8081");
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/quickstart.sh");
    let bin_dir = bin("tessera-server").parent().unwrap().to_owned();
    let quickstart = |arg: Option<&str>| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .args(arg)
            .env("TESSERA_QUICKSTART_DIR", dir.path())
            .env("TESSERA_QUICKSTART_BIN", &bin_dir)
            .env_remove("TESSERA_SERVER_ARGS");
        run(cmd)
    };
    let out = quickstart(None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stop = quickstart(Some("stop"));
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(stop.status.success());
    assert!(text.contains("Port 8081 is busy"), "{text}");
    assert!(!text.contains("127.0.0.1:8081."), "{text}");
    for want in [
        format!(
            "export TESSERA_ADMIN_SOCKET={}/admin.sock",
            dir.path().display()
        ),
        format!(
            "export SPIFFE_ENDPOINT_SOCKET=unix://{}/public/api.sock",
            dir.path().display()
        ),
        format!(
            "export PATH=\"{}:$PATH\"",
            bin_dir.canonicalize().unwrap().display()
        ),
    ] {
        assert!(text.contains(&want), "{text} lacks {want}");
    }
}

#[test]
fn a_task_begin_denial_points_to_requester() {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(
        policies.path().join("tasks.cedar"),
        r#"
@id("ci-only")
@max_ttl("10m")
permit (principal is Tessera::Workload, action == Tessera::Action::"begin_task", resource)
when { principal.path == "/ci" };

@id("issue-svid")
permit (principal, action == Tessera::Action::"issue_svid", resource);
"#,
    )
    .unwrap();
    let c = Cluster::start(&["--policy-dir", policies.path().to_str().unwrap()]);
    // Two standing identities for this process; the older one may not begin tasks.
    c.server
        .create_entry("spiffe://example.org/app", &["unix:uid:0"], &[]);
    c.server
        .create_entry("spiffe://example.org/ci", &["unix:uid:0"], &[]);
    c.server
        .create_entry("spiffe://example.org/jit", &["unix:uid:0"], &["--jit"]);
    let served = wait_for(Duration::from_secs(20), || {
        let out = c.agent.cli(&["api", "fetch", "x509", "--timeout", "5s"]);
        String::from_utf8_lossy(&out.stdout)
            .starts_with("Received 2 svid(s)")
            .then_some(())
    });
    assert!(served.is_some(), "agent log:\n{}", c.agent.log_tail());

    let begin = [
        "task",
        "begin",
        "--spiffe-id",
        "spiffe://example.org/jit",
        "--reason",
        "e2e",
    ];
    let out = c.agent.cli(&begin);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the task was refused"), "{err}");
    assert!(err.contains("--requester"), "{err}");
    let mut named = begin.to_vec();
    named.extend(["--requester", "spiffe://example.org/ci", "--output", "json"]);
    let out = c.agent.cli(&named);
    assert!(out.status.success(), "{}", stderr(&out));
    let task: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(task["state"], "active", "{task}");
}
