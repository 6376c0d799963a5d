//! The quickstart path: server, token, entry, agent, fetch with the agent CLI.

use tests::Cluster;

#[test]
fn quickstart_fetch_with_cli() {
    let c = Cluster::start(&[]);
    c.server
        .create_entry("spiffe://example.org/smoke", &["unix:uid:0"], &[]);
    let out = c.fetch_json();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["svids"][0]["spiffe_id"], "spiffe://example.org/smoke");
}
