//! A snapshot larger than one part reaches a real agent from a real server in parts, and
//! the agent serves every entry of it: 300 entries exist before the agent first syncs, so
//! its first message is a snapshot of 300, which the server sends as two parts (256 and
//! 44) because the agent asks for parts of 256.

use std::time::Duration;

use tests::{AGENT_ID, AgentProc, ServerProc, uid_selector, wait_for};

const ENTRIES: usize = 300;

#[test]
fn a_snapshot_in_parts_is_served_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    let selector = uid_selector();
    // Made before the agent exists, so that they all come in its first snapshot.
    let mut want: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..6)
            .map(|w| {
                let (server, selector) = (&server, &selector);
                s.spawn(move || {
                    (w..ENTRIES)
                        .step_by(6)
                        .map(|i| {
                            let id = format!("spiffe://example.org/parts/e{i}");
                            server.create_entry_under(AGENT_ID, &id, &[selector], &[]);
                            id
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    want.sort();

    let mut agent = AgentProc::new(dir.path(), &server);
    agent.restart(Some(&server.token(AGENT_ID)));
    let served = wait_for(Duration::from_secs(90), || {
        (agent.fetch_ids().ok()? == want).then_some(())
    });
    assert!(
        served.is_some(),
        "the agent never served the {ENTRIES} entries:\n{}",
        agent.log_tail()
    );
    let log = agent.log_text();
    let assembled: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("snapshot received in parts"))
        .collect();
    assert_eq!(assembled.len(), 1, "one snapshot in parts:\n{log}");
    assert!(
        assembled[0].contains("parts=2") && assembled[0].contains(&format!("entries={ENTRIES}")),
        "{}",
        assembled[0]
    );
}
