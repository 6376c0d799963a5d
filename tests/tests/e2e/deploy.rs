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
