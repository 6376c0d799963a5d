//! What the agent does with messages from the server's sync stream: each is decoded as a
//! `SyncUpdate`, the parts of a snapshot sent in parts are put back together as the agent's
//! node client does (`agent::fuzzing::as_received`), and each message is applied to the
//! cache exactly as the rotation worker applies it (`agent::fuzzing::apply_sync_update`).
//!
//! The input is a sequence of length-delimited messages. Properties: nothing panics;
//! every cached entry is filed under its own id (a just-in-time entry once per active
//! task, under `agent::cache::slot_key`); a snapshot the server sent replaces the
//! entries; and the cache, written as the agent persists it (`cache.pb`), reads back with
//! the same entries and bundle, so anything the server can make the agent hold survives a
//! restart.
#![no_main]

use agent::cache::{Cache, CacheSnapshot};
use common::proto::tessera::sync_update;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cache = Cache::default();
    let received = agent::fuzzing::as_received(agent::fuzzing::decode_sync_messages(data));
    for update in received {
        let snapshot_ids = match &update.update {
            Some(sync_update::Update::Snapshot(s)) => {
                assert!(!s.more, "only a whole snapshot reaches the cache");
                Some(s.entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
            }
            _ => None,
        };
        agent::fuzzing::apply_sync_update(&cache, update);
        let now = cache.current();
        for (id, cached) in &now.entries {
            assert_eq!(
                id,
                &agent::cache::slot_key(&cached.entry.id, cached.grant.as_deref()),
                "an entry is filed under its id (and its task's, once per task)"
            );
        }
        if let Some(ids) = snapshot_ids {
            assert!(now.synced && now.from_server);
            for cached in now.entries.values() {
                assert!(
                    ids.iter().any(|w| w == cached.entry.id.as_str()),
                    "a snapshot replaces every entry"
                );
            }
        }
        let reloaded =
            CacheSnapshot::decode(&now.encode()).expect("the persisted cache reads back");
        let mut before: Vec<_> = now.entries.keys().collect();
        let mut after: Vec<_> = reloaded.entries.keys().collect();
        before.sort();
        after.sort();
        assert_eq!(before, after, "the same entries after a restart");
        for (id, cached) in &now.entries {
            let back = &reloaded.entries[id];
            assert_eq!(back.entry, cached.entry);
            assert_eq!(back.grant, cached.grant);
        }
        assert_eq!(
            reloaded.bundle, now.bundle,
            "the same bundle after a restart"
        );
        assert_eq!(reloaded.revocations, now.revocations);
    }
});
