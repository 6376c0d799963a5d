//! The agent's parser of `/proc/<pid>/cgroup` (`agent::fuzzing::cgroup_selectors`), which
//! reads paths that container runtimes, systemd and delegated processes chose. Properties:
//! no panic, and every selector produced is one the shared vocabulary accepts unchanged
//! (so the server's validator and the attestor agree on it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The agent reads the file lossily, as here.
    let text = String::from_utf8_lossy(data);
    if let Some(selectors) = agent::fuzzing::cgroup_selectors(&text) {
        for s in selectors {
            let parsed: common::Selector = s.parse().expect("attested selector is valid");
            assert_eq!(parsed.to_string(), s);
        }
    }
});
