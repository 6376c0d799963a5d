//! The rotation worker against an in-process server ([`FakeNode`]) under paused time:
//! an hour of schedule runs in milliseconds, and every instant asserted is exact.

use std::collections::BTreeSet;
use std::time::Duration;

use common::TaskId;
use common::proto::tessera;
use tokio::task::JoinHandle;

use super::backoff::{BACKOFF_MAX, BACKOFF_MIN};
use super::*;
use crate::cache::CacheSnapshot;
use crate::clock::TokioClock;
use crate::testing::{FakeNode, NodeCall};

const SECOND: Duration = Duration::from_secs(1);
/// Tokio timers have millisecond resolution: a sleep may end up to this much late.
const TIMER_SLACK: Duration = Duration::from_millis(2);

struct Harness {
    fake: FakeNode,
    clock: TokioClock,
    cache: Cache,
    shutdown: CancellationToken,
    worker: JoinHandle<Result<(), RotationError>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// Starts the worker against a fake server holding what `setup` puts there. The agent
    /// SVID lives `agent_ttl`.
    async fn start(agent_ttl: Duration, setup: impl FnOnce(&FakeNode)) -> Self {
        let clock = TokioClock::starting_now();
        let td = TrustDomain::new("example.org").unwrap();
        let fake = FakeNode::new(&td, Arc::new(clock), agent_ttl).unwrap();
        setup(&fake);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::default();
        let shutdown = CancellationToken::new();
        let rotation = Rotation {
            connector: Arc::new(fake.clone()),
            clock: Arc::new(clock),
            trust_domain: td,
            data_dir: dir.path().to_owned(),
            cache: cache.clone(),
            bundle: BundleCell::new(fake.bundle()),
            agent_svid: fake.agent_svid().unwrap(),
            link: server_client::ServerLink::default(),
            retry: SignRetry::default(),
            metrics: Arc::default(),
        };
        let worker = tokio::spawn(rotation.run(shutdown.clone()));
        Self {
            fake,
            clock,
            cache,
            shutdown,
            worker,
            _dir: dir,
        }
    }

    /// Waits (in paused time, at most ten hours of it) until `f` holds for the cache.
    async fn until<T>(&self, mut f: impl FnMut(&CacheSnapshot) -> Option<T>) -> T {
        let mut rx = self.cache.subscribe();
        let wait = async {
            loop {
                if let Some(v) = f(&rx.borrow_and_update()) {
                    return v;
                }
                rx.changed().await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(36_000), wait)
            .await
            .expect("the cache never reached the expected state")
    }

    fn svid(&self, id: &str) -> Option<Arc<X509Svid>> {
        self.cache.current().entries.get(id)?.svid.clone()
    }

    async fn first_svid(&self, id: &str) -> Arc<X509Svid> {
        self.until(|s| s.entries.get(id)?.svid.clone()).await
    }

    /// Waits for an SVID of `id` other than `old`.
    async fn next_svid(&self, id: &str, old: &X509Svid) -> Arc<X509Svid> {
        let serial = old.leaf().serial_hex.clone();
        self.until(|s| {
            s.entries
                .get(id)?
                .svid
                .clone()
                .filter(|n| n.leaf().serial_hex != serial)
        })
        .await
    }

    async fn sleep_until(&self, at: SystemTime) {
        tokio::time::sleep_until(self.clock.instant_at(at)).await;
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.worker.await.unwrap().unwrap();
    }
}

fn life(svid: &X509Svid) -> Duration {
    svid.not_after()
        .duration_since(svid.leaf().not_before)
        .unwrap()
}

fn since(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap()
}

#[tokio::test(start_paused = true)]
async fn rotates_at_the_renewal_point_and_not_before() {
    let h = Harness::start(Duration::from_secs(36_000), |f| {
        f.upsert_entry(f.entry("web", "/web", Duration::from_secs(100)));
    })
    .await;
    let first = h.first_svid("web").await;
    assert_eq!(life(&first), Duration::from_secs(100));
    let nb = first.leaf().not_before;
    let refresh = first.refresh_at();
    let at = since(refresh, nb);
    assert!(
        (Duration::from_secs(40)..=Duration::from_secs(50)).contains(&at),
        "renewal point at {at:?} of 100 s"
    );

    // A second before the renewal point: still the first SVID, signed once.
    h.sleep_until(refresh - SECOND).await;
    assert_eq!(
        h.svid("web").unwrap().leaf().serial_hex,
        first.leaf().serial_hex
    );
    assert_eq!(h.fake.sign_calls().len(), 1, "{:?}", h.fake.calls());

    // At the renewal point: a new SVID, from a second signing call made right then.
    let second = h.next_svid("web", &first).await;
    let calls = h.fake.sign_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let renewed_at = calls[1].0;
    assert!(
        renewed_at >= refresh && since(renewed_at, refresh) <= TIMER_SLACK,
        "renewed {:?} after the renewal point",
        renewed_at.duration_since(refresh)
    );
    assert!(second.not_after() > first.not_after());
    // And the agent SVID (10 h) was left alone.
    assert!(!h.fake.calls().iter().any(|c| c.call == NodeCall::Renew));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_agent_svid_is_renewed_at_its_renewal_point_and_used_from_then_on() {
    let h = Harness::start(Duration::from_secs(600), |f| {
        f.upsert_entry(f.entry("web", "/web", Duration::from_secs(3600)));
    })
    .await;
    h.first_svid("web").await;
    let started = h.clock.now();
    // Well past 50 % of 600 s, not yet 60 %.
    h.sleep_until(started + Duration::from_secs(330)).await;
    let calls = h.fake.calls();
    let renew = calls
        .iter()
        .position(|c| c.call == NodeCall::Renew)
        .expect("agent SVID renewed");
    let renewed_after = since(calls[renew].at, started);
    assert!(
        (Duration::from_secs(240)..=Duration::from_secs(300) + TIMER_SLACK)
            .contains(&renewed_after),
        "renewed after {renewed_after:?}"
    );
    // The next session presents the new SVID and resumes the sync stream.
    let connects: Vec<&Option<String>> = calls[renew..]
        .iter()
        .filter_map(|c| match &c.call {
            NodeCall::Connect { agent_serial } => Some(agent_serial),
            _ => None,
        })
        .collect();
    let first_serial = match &calls[0].call {
        NodeCall::Connect { agent_serial } => agent_serial.clone(),
        other => panic!("first call {other:?}"),
    };
    assert!(connects.last().is_some_and(|s| **s != first_serial));
    assert_eq!(
        calls[renew..]
            .iter()
            .filter(|c| c.call == NodeCall::Sync)
            .count(),
        1
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn sign_retries_back_off_doubling_jittered_and_within_the_svids_remaining_life() {
    let h = Harness::start(Duration::from_secs(36_000), |f| {
        f.upsert_entry(f.entry("web", "/web", Duration::from_secs(100)));
    })
    .await;
    let first = h.first_svid("web").await;
    // The server fails the renewal ten times in a row: uncapped, backoff would sleep
    // through the SVID's expiry (the retries alone would take 75 s or more).
    const FAILURES: usize = 10;
    h.fake.fail_next_signs(FAILURES);
    let second = h.next_svid("web", &first).await;

    let calls = h.fake.sign_calls();
    assert_eq!(calls.len(), 1 + FAILURES + 1, "{calls:?}");
    assert!(calls[1..=FAILURES].iter().all(|(_, failed)| *failed));
    assert!(!calls[FAILURES + 1].1);
    assert!(
        calls[1].0 >= first.refresh_at(),
        "first attempt at the renewal point"
    );
    let renewed_at = calls[FAILURES + 1].0;
    assert!(
        renewed_at < first.not_after(),
        "renewed {:?} before expiry: the SVID never lapsed",
        first.not_after().duration_since(renewed_at)
    );
    assert!(second.not_after() > first.not_after());

    let mut base = BACKOFF_MIN;
    let mut ratios = Vec::new();
    let mut capped = 0;
    for k in 1..=FAILURES {
        let (failed_at, next_at) = (calls[k].0, calls[k + 1].0);
        let gap = since(next_at, failed_at);
        let quarter = since(first.not_after(), failed_at) / 4;
        let bound = base.min(quarter.max(backoff::RETRY_FLOOR));
        assert!(
            gap <= bound + TIMER_SLACK,
            "retry {k}: waited {gap:?}, bound {bound:?} (step {base:?}, a quarter of the life left {quarter:?})"
        );
        if quarter >= base {
            // Not capped by the SVID: a jittered draw from the upper half of the step.
            assert!(gap >= base / 2, "retry {k}: {gap:?} < half of {base:?}");
            ratios.push(gap.as_secs_f64() / base.as_secs_f64());
        } else {
            capped += 1;
        }
        base = (base * 2).min(BACKOFF_MAX);
    }
    assert!(ratios.len() >= 4, "the first retries double from 0.5 s");
    assert!(
        ratios.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-6),
        "delays are jittered: {ratios:?}"
    );
    assert!(capped >= 2, "the remaining life capped the later retries");
    h.stop().await;
}

/// Many entries: batches of at most `SIGN_BATCH` CSRs, up to `SIGN_CALLS_IN_FLIGHT` of
/// them out at once; after a failed call no new batch is sent until the retry, while
/// those already out are answered and kept.
#[tokio::test(start_paused = true)]
async fn batches_are_signed_a_few_at_once_and_a_failure_stops_new_ones() {
    const ENTRIES: usize = 3 * SIGN_BATCH + 100;
    const SIGN_TIME: Duration = Duration::from_millis(10);
    let h = Harness::start(Duration::from_secs(36_000), |f| {
        f.delay_signs(SIGN_TIME);
        // The first call fails.
        f.fail_next_signs(1);
        for i in 0..ENTRIES {
            f.upsert_entry(f.entry(&format!("e{i:04}"), &format!("/w/{i}"), 3600 * SECOND));
        }
    })
    .await;
    h.until(|s| {
        (s.entries.len() == ENTRIES && s.entries.values().all(|c| c.svid.is_some())).then_some(())
    })
    .await;
    let calls = h.fake.sign_calls();
    let first_round: Vec<_> = calls.iter().filter(|(at, _)| *at == calls[0].0).collect();
    assert_eq!(
        first_round.len(),
        SIGN_CALLS_IN_FLIGHT,
        "the first calls go out together, no more after the failure: {calls:?}"
    );
    assert_eq!(first_round.iter().filter(|(_, failed)| *failed).count(), 1);
    assert_eq!(h.fake.most_signs_in_flight(), SIGN_CALLS_IN_FLIGHT - 1);
    // The retry sends the failed batch and the one never sent, after the backoff.
    let retries = &calls[SIGN_CALLS_IN_FLIGHT..];
    assert_eq!(retries.len(), 2, "{calls:?}");
    assert!(
        retries
            .iter()
            .all(|(at, failed)| !failed && since(*at, calls[0].0) >= BACKOFF_MIN / 2)
    );
    let mut sent: Vec<String> = Vec::new();
    for c in h.fake.calls() {
        if let NodeCall::Sign { entry_ids, failed } = c.call {
            assert!(entry_ids.len() <= SIGN_BATCH);
            if !failed {
                sent.extend(entry_ids);
            }
        }
    }
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), ENTRIES, "every entry signed once");

    // With nothing failing, every batch is signed, three at a time at most.
    let h2 = Harness::start(Duration::from_secs(36_000), |f| {
        f.delay_signs(SIGN_TIME);
        for i in 0..ENTRIES {
            f.upsert_entry(f.entry(&format!("e{i:04}"), &format!("/w/{i}"), 3600 * SECOND));
        }
    })
    .await;
    h2.until(|s| {
        (s.entries.len() == ENTRIES && s.entries.values().all(|c| c.svid.is_some())).then_some(())
    })
    .await;
    assert_eq!(h2.fake.sign_calls().len(), 4);
    assert_eq!(h2.fake.most_signs_in_flight(), SIGN_CALLS_IN_FLIGHT);
    h2.stop().await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn sign_backoff_is_capped_at_thirty_seconds() {
    let h = Harness::start(Duration::from_secs(36_000), |f| {
        f.upsert_entry(f.entry("web", "/web", Duration::from_secs(7200)));
    })
    .await;
    let first = h.first_svid("web").await;
    const FAILURES: usize = 12;
    h.fake.fail_next_signs(FAILURES);
    h.next_svid("web", &first).await;
    let calls = h.fake.sign_calls();
    assert_eq!(calls.len(), 1 + FAILURES + 1);
    let gaps: Vec<Duration> = calls[1..]
        .windows(2)
        .map(|w| since(w[1].0, w[0].0))
        .collect();
    assert!(
        gaps.iter().all(|g| *g <= BACKOFF_MAX + TIMER_SLACK),
        "{gaps:?}"
    );
    // From the seventh retry on the step is the cap: draws in [15 s, 30 s].
    assert!(gaps[6..].iter().all(|g| *g >= BACKOFF_MAX / 2), "{gaps:?}");
    h.stop().await;
}

fn task_entry(f: &FakeNode, deadline: i64) -> tessera::Entry {
    let mut e = f.entry("job", "/job", Duration::from_secs(3600));
    e.jit = true;
    e.task = Some(tessera::TaskGrant {
        task_id: "t1".to_owned(),
        deadline,
        audiences: vec!["a".to_owned()],
        binding: None,
    });
    e
}

#[tokio::test(start_paused = true)]
async fn parallel_tasks_on_one_entry_each_get_their_own_svid_and_end_alone() {
    let clock = TokioClock::starting_now();
    let deadline = clock.now_unix() + 3600;
    let two = |f: &FakeNode| {
        let mut e = task_entry(f, deadline);
        let grant = |id: &str| tessera::TaskGrant {
            task_id: id.to_owned(),
            deadline,
            audiences: vec!["a".to_owned()],
            binding: None,
        };
        e.task = Some(grant("t1"));
        e.tasks = vec![grant("t1"), grant("t2")];
        e
    };
    let h = Harness::start(Duration::from_secs(36_000), |f| {
        f.upsert_entry(two(f));
    })
    .await;
    let a = h.first_svid("job#t1").await;
    let b = h.first_svid("job#t2").await;
    assert_ne!(
        a.leaf().serial_hex,
        b.leaf().serial_hex,
        "one SVID per task"
    );
    // Task t1 ends: its slot goes, t2 keeps its SVID.
    let mut one = two(&h.fake);
    one.task = Some(one.tasks.remove(1));
    one.tasks = vec![one.task.clone().unwrap()];
    one.revision = 1;
    h.fake.upsert_entry(one);
    h.until(|s| (!s.entries.contains_key("job#t1")).then_some(()))
        .await;
    assert_eq!(
        h.svid("job#t2").map(|s| s.leaf().serial_hex.clone()),
        Some(b.leaf().serial_hex.clone()),
        "the other task's SVID is kept"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_task_svid_is_withdrawn_at_the_task_deadline() {
    let clock = TokioClock::starting_now();
    let deadline = clock.now_unix() + 60;
    let h = Harness::start(Duration::from_secs(36_000), |f| {
        f.upsert_entry(task_entry(f, deadline));
    })
    .await;
    let svid = h.first_svid("job#t1").await;
    let deadline_at = clock::from_unix(deadline);
    assert_eq!(svid.not_after(), deadline_at, "cut to the task deadline");

    h.sleep_until(deadline_at - SECOND).await;
    assert!(h.svid("job#t1").is_some(), "served until the deadline");
    h.until(|s| s.entries.get("job#t1")?.svid.is_none().then_some(()))
        .await;
    let withdrawn_at = h.clock.now();
    assert!(
        withdrawn_at >= deadline_at && since(withdrawn_at, deadline_at) <= TIMER_SLACK,
        "withdrawn {:?} after the deadline",
        withdrawn_at.duration_since(deadline_at)
    );
    // One SVID for the whole task: one lasting until the deadline is never renewed.
    assert_eq!(h.fake.sign_calls().len(), 1, "{:?}", h.fake.calls());
    // Nor is a new one asked for once the task is over.
    h.sleep_until(deadline_at + Duration::from_secs(600)).await;
    assert_eq!(h.fake.sign_calls().len(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_task_svid_is_withdrawn_at_the_deadline_while_the_server_is_away() {
    let clock = TokioClock::starting_now();
    let deadline = clock.now_unix() + 60;
    let h = Harness::start(Duration::from_secs(36_000), |f| {
        f.upsert_entry(task_entry(f, deadline));
    })
    .await;
    h.first_svid("job#t1").await;
    h.fake.set_unreachable(true);
    let deadline_at = clock::from_unix(deadline);
    h.until(|s| s.entries.get("job#t1")?.svid.is_none().then_some(()))
        .await;
    let late = since(h.clock.now(), deadline_at);
    assert!(late <= TIMER_SLACK, "withdrawn {late:?} after the deadline");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_task_svid_is_withdrawn_when_the_task_ends() {
    let clock = TokioClock::starting_now();
    let deadline = clock.now_unix() + 3600;
    let h = Harness::start(Duration::from_secs(36_000), |f| {
        f.upsert_entry(task_entry(f, deadline));
    })
    .await;
    h.first_svid("job#t1").await;
    let ended_at = h.clock.now() + Duration::from_secs(10);
    h.sleep_until(ended_at).await;
    // The server ends the task: the entry comes back without its grant.
    let mut ended = task_entry(&h.fake, deadline);
    ended.task = None;
    ended.revision = 2;
    h.fake.upsert_entry(ended);
    h.until(|s| s.entries.get("job")?.svid.is_none().then_some(()))
        .await;
    assert_eq!(h.clock.now(), ended_at, "at once");
    let snap = h.cache.current();
    let identities = snap.identities(
        &["unix:uid:0".parse::<common::Selector>().unwrap()]
            .into_iter()
            .collect(),
        &crate::cache::Lineage::known(vec![]),
        h.clock.now(),
    );
    assert!(!identities.matched, "a dormant task entry grants nothing");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn standing_svids_survive_a_server_outage_and_renew_after_it() {
    let h = Harness::start(Duration::from_secs(36_000), |f| {
        f.upsert_entry(f.entry("web", "/web", Duration::from_secs(100)));
    })
    .await;
    let first = h.first_svid("web").await;
    h.fake.set_unreachable(true);
    h.sleep_until(first.refresh_at() + Duration::from_secs(20))
        .await;
    assert_eq!(
        h.svid("web").unwrap().leaf().serial_hex,
        first.leaf().serial_hex,
        "the last good SVID keeps being served"
    );
    h.fake.set_unreachable(false);
    let second = h.next_svid("web", &first).await;
    assert!(h.clock.now() < first.not_after(), "renewed before expiry");
    // Reconnection attempts were spaced by at most a quarter of the life left.
    let syncs: Vec<SystemTime> = h
        .fake
        .calls()
        .iter()
        .filter(|c| c.call == NodeCall::Sync)
        .map(|c| c.at)
        .collect();
    assert!(syncs.len() > 5, "{syncs:?}");
    for w in syncs.windows(2) {
        let quarter = first.not_after().duration_since(w[0]).unwrap() / 4;
        assert!(since(w[1], w[0]) <= quarter.max(backoff::RETRY_FLOOR) + TIMER_SLACK);
    }
    assert!(second.not_after() > first.not_after());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_agent_stops_serving_and_the_worker_fails() {
    let h = Harness::start(Duration::from_secs(36_000), |f| {
        f.upsert_entry(f.entry("web", "/web", Duration::from_secs(100)));
    })
    .await;
    h.first_svid("web").await;
    // An evicted agent's stream ends with PermissionDenied.
    h.fake
        .push_error(tonic::Status::permission_denied("agent evicted"));
    let err = h.worker.await.unwrap().unwrap_err();
    assert!(matches!(err, RotationError::AgentRefused(ref why) if why == "agent evicted"));
    assert!(
        h.cache.current().entries.is_empty(),
        "nothing served any more"
    );
}

mod schedule_fns {
    use super::*;
    use crate::testing::TestCa;

    fn cached(svid: Option<X509Svid>, grant: Option<TaskGrant>) -> CachedEntry {
        let wire = tessera::Entry {
            id: "e".into(),
            spiffe_id: "spiffe://example.org/e".into(),
            parent_id: "spiffe://example.org/agent".into(),
            selectors: vec!["unix:uid:0".into()],
            x509_svid_ttl_seconds: 100,
            jwt_svid_ttl_seconds: 100,
            jit: grant.is_some(),
            revision: 1,
            ..Default::default()
        };
        CachedEntry {
            entry: Arc::new(AgentEntry::try_from(wire).unwrap()),
            grant: grant.map(Arc::new),
            svid: svid.map(Arc::new),
            svid_revision: 1,
        }
    }

    #[test]
    fn renewal_is_due_at_the_refresh_point_unless_the_task_deadline_caps_it() {
        let td = TrustDomain::new("example.org").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = TestCa::new(&td, t0).unwrap();
        let id = common::SpiffeId::new("spiffe://example.org/e").unwrap();
        let svid = ca.issue(&id, t0, Duration::from_secs(100)).unwrap();
        let refresh = svid.refresh_at();

        let standing = cached(Some(svid.clone()), None);
        assert!(!schedule::needs_svid(&standing, refresh - SECOND));
        assert!(schedule::needs_svid(&standing, refresh));
        assert_eq!(schedule::renewal_at(&standing, &svid), Some(refresh));

        let mut stale = cached(Some(svid.clone()), None);
        Arc::make_mut(&mut stale.entry).revision = 2;
        assert!(schedule::needs_svid(&stale, t0), "entry changed");
        assert!(schedule::needs_svid(&cached(None, None), t0), "none yet");

        // Lasts until the deadline: never renewed, withdrawn at the deadline.
        let until_deadline = TaskGrant {
            task_id: TaskId::parse("t").unwrap(),
            deadline: crate::cache::unix(t0) + 100,
            audiences: Vec::new(),
            binding: common::task::TaskBinding::Selectors,
        };
        let task = cached(Some(svid.clone()), Some(until_deadline));
        assert_eq!(schedule::renewal_at(&task, &svid), None);
        assert!(!schedule::needs_svid(&task, refresh + SECOND));
        assert!(!schedule::grant_ended(&task, t0 + Duration::from_secs(99)));
        assert!(schedule::grant_ended(&task, t0 + Duration::from_secs(100)));
        // A deadline past the SVID's life: renewed as usual.
        let later = TaskGrant {
            task_id: TaskId::parse("t").unwrap(),
            deadline: crate::cache::unix(t0) + 1000,
            audiences: Vec::new(),
            binding: common::task::TaskBinding::Selectors,
        };
        let long_task = cached(Some(svid), Some(later));
        assert!(schedule::needs_svid(&long_task, refresh));

        // The worker wakes at the earliest of the agent's and the entries' points.
        let agent = ca.issue(&id, t0, Duration::from_secs(3600)).unwrap();
        let mut snap = CacheSnapshot::default();
        snap.entries
            .insert(EntryId::parse("e").unwrap(), Arc::new(task.clone()));
        assert_eq!(
            schedule::next_wake(&snap, &agent, None, t0),
            t0 + Duration::from_secs(100),
            "the task deadline"
        );
        snap.entries
            .insert(EntryId::parse("e").unwrap(), Arc::new(standing));
        assert_eq!(schedule::next_wake(&snap, &agent, None, t0), refresh);
        // Past the renewal point after a failed renewal: at the retry, not at once.
        let retry = refresh + Duration::from_secs(3);
        assert_eq!(
            schedule::next_wake(&snap, &agent, Some(retry), refresh + SECOND),
            retry
        );
        snap.entries
            .insert(EntryId::parse("e").unwrap(), Arc::new(cached(None, None)));
        let retry = t0 + Duration::from_secs(7);
        assert_eq!(schedule::next_wake(&snap, &agent, Some(retry), t0), retry);
        assert_eq!(
            schedule::next_wake(&snap, &agent, None, t0),
            t0,
            "pending, no failure yet: now"
        );
        assert_eq!(
            schedule::shortest_remaining_life(&snap, [&EntryId::parse("e").unwrap()], t0),
            None,
            "no SVID served"
        );
        snap.entries
            .insert(EntryId::parse("e").unwrap(), Arc::new(task));
        assert_eq!(
            schedule::shortest_remaining_life(&snap, [&EntryId::parse("e").unwrap()], t0 + SECOND),
            Some(Duration::from_secs(99))
        );
    }
}

/// A resumed stream's delta changes only what it names, keeps the SVIDs of everything
/// else, and lands with its revocations in one cache update.
#[test]
fn a_resumed_delta_changes_only_what_it_names_and_keeps_other_svids() {
    use crate::testing::TestCa;

    let td = TrustDomain::new("example.org").unwrap();
    let now = SystemTime::now();
    let ca = TestCa::new(&td, now).unwrap();
    let wire = |id: &str, revision: u64| tessera::Entry {
        id: id.into(),
        spiffe_id: format!("spiffe://example.org/{id}"),
        parent_id: "spiffe://example.org/agent".into(),
        selectors: vec!["unix:uid:0".into()],
        x509_svid_ttl_seconds: 100,
        jwt_svid_ttl_seconds: 100,
        revision,
        ..Default::default()
    };
    let update = |cursor: &str, u: sync_update::Update| SyncUpdate {
        cursor: cursor.into(),
        update: Some(u),
    };
    let template = |id: &str| tessera::Template {
        id: id.into(),
        spiffe_id_template: "spiffe://example.org/acme/{systemd:unit}".into(),
        selectors: vec!["systemd:slice:acme.slice".into()],
        ..Default::default()
    };
    let cache = Cache::default();
    let ignore_bundle = |_: Bundle| {};
    apply_update(
        &cache,
        update(
            "feed/3",
            sync_update::Update::Snapshot(tessera::SyncSnapshot {
                entries: vec![wire("kept", 1), wire("changed", 1), wire("gone", 1)],
                bundle: None,
                revocations: None,
                templates: vec![template("t-gone"), template("t-kept")],
                more: false,
            }),
        ),
        ignore_bundle,
    );
    // Every entry has its SVID, as after signing.
    cache.update(|s| {
        for c in s.entries.values_mut() {
            let c = Arc::make_mut(c);
            let svid = ca
                .issue(&c.entry.spiffe_id, now, Duration::from_secs(100))
                .unwrap();
            c.svid = Some(Arc::new(svid));
            c.svid_revision = c.entry.revision;
        }
    });
    let before = cache.current();
    let kept_svid = before.entries[&EntryId::parse("kept").unwrap()]
        .svid
        .clone();

    let mut watch = cache.subscribe();
    watch.borrow_and_update();
    let revocations = tessera::Revocations {
        crls: vec![],
        ended_tasks: vec![tessera::EndedTask {
            task_id: "t9".into(),
            until: 1_900_000_000,
            state: "revoked".into(),
            ended_at: 0,
        }],
    };
    apply_update(
        &cache,
        update(
            "feed/9",
            sync_update::Update::Resumed(tessera::SyncDelta {
                entries_upserted: vec![wire("changed", 2), wire("new", 1)],
                entries_deleted: vec!["gone".into()],
                bundle: None,
                revocations: Some(revocations.clone()),
                templates_upserted: vec![template("t-kept"), template("t-new")],
                templates_deleted: Vec::new(),
            }),
        ),
        ignore_bundle,
    );
    assert!(watch.has_changed().unwrap());
    watch.borrow_and_update();
    assert!(
        !watch.has_changed().unwrap(),
        "one cache update for the whole delta"
    );
    let after = cache.current();
    let ids: BTreeSet<&str> = after
        .entries
        .values()
        .map(|c| c.entry.id.as_str())
        .collect();
    assert_eq!(ids, BTreeSet::from(["kept", "changed", "new"]));
    let get = |id: &str| &after.entries[&EntryId::parse(id).unwrap()];
    assert!(
        get("kept").svid.is_some() && get("kept").svid == kept_svid,
        "an entry the delta does not name keeps its SVID"
    );
    assert_eq!(get("changed").entry.revision, 2);
    let now = SystemTime::now();
    assert!(
        schedule::needs_svid(get("changed"), now),
        "a changed entry is signed again"
    );
    assert!(schedule::needs_svid(get("new"), now));
    assert!(!schedule::needs_svid(get("kept"), now));
    assert_eq!(*after.revocations, revocations);
    assert!(after.synced && after.from_server);
    // The cursor moved with the state, and is persisted with it.
    assert_eq!(after.cursor, "feed/9");
    let reloaded = CacheSnapshot::decode(&after.encode()).unwrap();
    assert_eq!(reloaded.cursor, "feed/9");
    // The templates are the delta's whole set, and persisted with the rest.
    let names = |s: &CacheSnapshot| {
        s.templates
            .keys()
            .map(ToString::to_string)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        names(&after),
        BTreeSet::from(["t-kept".into(), "t-new".into()])
    );
    assert_eq!(names(&reloaded), names(&after));
    // A position alone changes nothing served: no cache update, no stream woken.
    apply_update(
        &cache,
        SyncUpdate {
            cursor: "feed/12".into(),
            update: None,
        },
        ignore_bundle,
    );
    assert!(!watch.has_changed().unwrap());
    assert_eq!(cache.current().cursor, "feed/9");
    apply_update(
        &cache,
        update("", sync_update::Update::TemplateDeleted("t-new".into())),
        ignore_bundle,
    );
    assert_eq!(names(&cache.current()), BTreeSet::from(["t-kept".into()]));
    apply_update(
        &cache,
        update("", sync_update::Update::TemplateUpserted(template("t-up"))),
        ignore_bundle,
    );
    assert_eq!(
        names(&cache.current()),
        BTreeSet::from(["t-kept".into(), "t-up".into()])
    );
}
