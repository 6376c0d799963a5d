//! Everything under `deploy/` stays valid: the example configs parse and validate with the
//! same code the binaries use, and the systemd units name real flags and binaries.

use std::path::PathBuf;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn example_configs_validate() {
    let server = deploy_dir().join("config/server.toml");
    let raw = server::config::RawServerConfig::from_file(&server).unwrap();
    let cfg = server::config::ServerConfig::from_raw(raw).unwrap();
    assert_eq!(cfg.trust_domain.name(), "example.org");

    let agent = deploy_dir().join("config/agent.toml");
    let raw = agent::config::RawAgentConfig::from_file(&agent).unwrap();
    let cfg = agent::config::AgentConfig::from_raw(raw).unwrap();
    assert_eq!(cfg.trust_domain.name(), "example.org");
}

#[test]
fn example_configs_are_accepted_by_the_binaries() {
    // `run --help` proves the flags named in the units exist; config validation of the
    // example files is covered above with the binaries' own code.
    for (unit, bin) in [
        ("systemd/tessera-server.service", "tessera-server"),
        ("systemd/tessera-agent.service", "tessera-agent"),
    ] {
        let text = std::fs::read_to_string(deploy_dir().join(unit)).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit} has no ExecStart"));
        assert!(
            exec.contains(&format!("/usr/local/bin/{bin} run")),
            "{unit}: {exec}"
        );
        let help = std::process::Command::new(tests::bin(bin))
            .args(["run", "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for flag in exec.split_whitespace().filter(|w| w.starts_with("--")) {
            assert!(
                help.contains(flag),
                "{unit}: {flag} is not a flag of {bin} run"
            );
        }
        for hardening in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=",
            "ProtectHome=yes",
        ] {
            assert!(text.contains(hardening), "{unit} lacks {hardening}");
        }
    }
}

#[test]
fn the_agent_unit_bounds_what_the_allocator_keeps() {
    // The agent's memory figures in BENCHMARKS.md are measured with these settings.
    let text = std::fs::read_to_string(deploy_dir().join("systemd/tessera-agent.service")).unwrap();
    let env: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .flat_map(str::split_whitespace)
        .collect();
    for setting in [
        "MALLOC_ARENA_MAX=2",
        "MALLOC_MMAP_THRESHOLD_=65536",
        "MALLOC_TRIM_THRESHOLD_=65536",
    ] {
        assert!(
            env.contains(&setting),
            "the agent unit lacks {setting}: {env:?}"
        );
    }
}

/// The help text of `bin ARGS --help`.
fn help(bin: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(tests::bin(bin))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{bin} {args:?} --help");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The workload examples name commands, flags and selectors that exist.
#[test]
fn the_workload_examples_name_real_commands_flags_and_selectors() {
    let dir = deploy_dir().join("examples/workloads");
    let unit = std::fs::read_to_string(dir.join("hello-web.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("hello-web.service has an ExecStart");
    assert!(exec.contains("/usr/local/bin/tessera-agent api fetch x509 --write"));
    assert!(help("tessera-agent", &["api", "fetch", "x509"]).contains("--write"));
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "DynamicUser=yes",
    ] {
        assert!(
            unit.contains(hardening),
            "hello-web.service lacks {hardening}"
        );
    }

    let script = std::fs::read_to_string(dir.join("run-container.sh")).unwrap();
    let create = help("tessera-server", &["entry", "create"]);
    for flag in ["--parent-id", "--spiffe-id", "--selector", "--output"] {
        assert!(script.contains(flag), "run-container.sh: {flag}");
        assert!(
            create.contains(flag),
            "{flag} is not a flag of entry create"
        );
    }
    assert!(help("tessera-server", &["entry", "delete"]).contains("--entry-id"));
    // The selectors the README and the script give parse with the shared vocabulary.
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("--selector systemd:unit:hello-web.service"));
    for selector in [
        "systemd:unit:hello-web.service".to_owned(),
        "container:runtime:docker".to_owned(),
        format!("container:id:{}", "ab".repeat(32)),
    ] {
        selector
            .parse::<common::Selector>()
            .unwrap_or_else(|e| panic!("{selector}: {e}"));
    }
    let status = std::process::Command::new("sh")
        .arg("-n")
        .arg(dir.join("run-container.sh"))
        .status()
        .unwrap();
    assert!(status.success(), "run-container.sh does not parse");
}
