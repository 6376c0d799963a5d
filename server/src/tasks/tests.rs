//! The task service against a real SQLite datastore, with the wall clock under test
//! control ([`ManualClock`]): an hour-long deadline is reached in milliseconds of real
//! time, and exactly when the clock says so.

use std::time::{Duration, SystemTime};

use common::TrustDomain;
use common::task::TaskState;

use super::*;
use crate::clock::ManualClock;
use crate::datastore::sqlite::SqliteDatastore;

struct Fixture {
    _dir: tempfile::TempDir,
    tasks: Arc<Tasks>,
    registrar: Registrar,
    events: Events,
    clock: ManualClock,
}

const HOUR: Duration = Duration::from_secs(3600);

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ds: Arc<dyn Datastore> = Arc::new(
        SqliteDatastore::open(&dir.path().join("ds.sqlite3"))
            .await
            .unwrap(),
    );
    let td = TrustDomain::new("example.org").unwrap();
    let events = Events::default();
    let ca = Arc::new(
        CaSet::load_or_create(dir.path(), &td, 24 * HOUR, None, SystemTime::now()).unwrap(),
    );
    let registrar = Registrar::new(Arc::clone(&ds), events.clone(), td, HOUR, HOUR / 12);
    let clock = ManualClock::starting_at(SystemTime::now());
    let tasks = Arc::new(Tasks::new(
        ds,
        registrar.clone(),
        Arc::new(PolicyEngine::builtin()),
        events.clone(),
        ca,
        Arc::new(clock.clone()),
        24 * HOUR,
    ));
    tasks.load().await.unwrap();
    Fixture {
        _dir: dir,
        tasks,
        registrar,
        events,
        clock,
    }
}

async fn jit_entry(f: &Fixture) -> RegistrationEntry {
    f.registrar
        .create(
            &EntryRequest {
                spiffe_id: "spiffe://example.org/db-admin".into(),
                parent_id: "spiffe://example.org/agent".into(),
                selectors: vec!["unix:uid:1000".into()],
                jit: true,
                ..Default::default()
            },
            &platform(1000, "alice"),
        )
        .await
        .unwrap()
}

fn request(entry: &RegistrationEntry, ttl: Duration) -> TaskRequest {
    TaskRequest {
        target: TaskTarget::Entry(entry.id.clone()),
        reason: "migration".into(),
        ticket: "OPS-1".into(),
        scopes: vec![],
        ttl: Some(ttl),
    }
}

fn unix(uid: u32, name: &str) -> UnixUser {
    UnixUser {
        uid,
        name: name.into(),
    }
}

fn platform(uid: u32, name: &str) -> Operator {
    Operator::platform(unix(uid, name))
}

fn operator() -> Requester {
    Requester::User(platform(1000, "alice"))
}

/// A workload on the entry's agent, attested as the Unix user `as_user`.
fn workload(as_user: Option<UnixUser>) -> Requester {
    Requester::Workload {
        spiffe_id: SpiffeId::new("spiffe://example.org/runtime").unwrap(),
        agent: SpiffeId::new("spiffe://example.org/agent").unwrap(),
        unix: as_user,
        tenant: "default".into(),
    }
}

/// Waits (real time, bounded) until task `id` is in `state`.
async fn wait_for_state(tasks: &Tasks, id: &TaskId, state: TaskState) -> TaskRecord {
    for _ in 0..100 {
        let t = tasks.get(id).await.unwrap();
        if t.state == state {
            return t;
        }
        tokio::time::sleep(EXPIRY_TICK / 4).await;
    }
    panic!("task {id} did not reach {state} within 100 polls");
}

#[tokio::test]
async fn a_task_expires_at_its_deadline_by_the_clock_not_before() {
    let f = fixture().await;
    let entry = jit_entry(&f).await;
    let task = f
        .tasks
        .create(&operator(), &request(&entry, HOUR))
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::Active);
    assert_eq!(f.tasks.grant_for(&entry.id).unwrap().task_id, task.id);
    let mut changes = f.events.subscribe();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn(Arc::clone(&f.tasks).run(shutdown.clone()));

    // One second before the deadline (and after several ticks of the loop): still
    // active, still granted, SVIDs still signable.
    f.clock.advance(HOUR - Duration::from_secs(1));
    tokio::time::sleep(EXPIRY_TICK * 3).await;
    assert_eq!(
        f.tasks.get(&task.id).await.unwrap().state,
        TaskState::Active
    );
    assert!(f.tasks.grant_for(&entry.id).is_some());
    let grant = f.tasks.issue_grant(&entry).await.unwrap();
    assert!(
        grant.max_ttl <= Duration::from_secs(1),
        "cut to the deadline: {grant:?}"
    );

    // At the deadline the loop expires it on its next tick, without anybody calling.
    f.clock.advance(Duration::from_secs(1));
    let ended = wait_for_state(&f.tasks, &task.id, TaskState::Expired).await;
    let end = ended.end.as_ref().expect("a final task has an end");
    assert_eq!(end.reason, "deadline reached");
    assert!(end.at >= task.deadline);
    assert!(
        f.tasks.grant_for(&entry.id).is_none(),
        "no grant after the deadline"
    );
    assert!(f.tasks.issue_grant(&entry).await.is_err());
    // The agents were told: the entry was republished without a grant.
    let mut republished = false;
    while let Ok(ev) = changes.try_recv() {
        if let ChangeEvent::EntryUpserted { entry: e, .. } = ev {
            republished |= e.id == entry.id;
        }
    }
    assert!(
        republished,
        "the entry was republished when the task expired"
    );
    // Expiry is not a revocation: its credentials end at the deadline by themselves.
    assert!(f.tasks.revocations().ended_tasks.is_empty());
    shutdown.cancel();
    runner.await.unwrap();
}

#[tokio::test]
async fn issuance_is_refused_once_the_deadline_passed_even_before_expiry_runs() {
    let f = fixture().await;
    let entry = jit_entry(&f).await;
    let task = f
        .tasks
        .create(&operator(), &request(&entry, Duration::from_secs(60)))
        .await
        .unwrap();
    // No deadline loop running: issuance checks the deadline itself.
    f.clock.advance(Duration::from_secs(59));
    assert!(f.tasks.issue_grant(&entry).await.is_ok());
    f.clock.advance(Duration::from_secs(1));
    let why = f.tasks.issue_grant(&entry).await.unwrap_err();
    assert!(why.contains("reached its deadline"), "{why}");
    assert_eq!(f.tasks.expire_due().await.unwrap(), 1);
    assert_eq!(
        f.tasks.get(&task.id).await.unwrap().state,
        TaskState::Expired
    );
}

#[tokio::test]
async fn ending_early_publishes_a_revocation_until_the_deadline() {
    let f = fixture().await;
    let entry = jit_entry(&f).await;
    let task = f
        .tasks
        .create(&operator(), &request(&entry, HOUR))
        .await
        .unwrap();
    f.tasks
        .end(&task.id, Outcome::Completed, "done", &operator())
        .await
        .unwrap();
    let r = f.tasks.revocations();
    assert_eq!(r.ended_tasks.len(), 1);
    assert_eq!(r.ended_tasks[0].task_id, task.id);
    assert_eq!(r.ended_tasks[0].until, task.deadline);
    // Past the deadline the revocation is pruned: nothing issued under it is valid anyway.
    f.clock.advance(HOUR);
    f.tasks.refresh_revocations(false).await.unwrap();
    assert!(f.tasks.revocations().ended_tasks.is_empty());
}

#[tokio::test]
async fn a_standing_entry_cannot_be_activated_and_the_refusal_names_the_fix() {
    let f = fixture().await;
    let standing = f
        .registrar
        .create(
            &EntryRequest {
                spiffe_id: "spiffe://example.org/web".into(),
                parent_id: "spiffe://example.org/agent".into(),
                selectors: vec!["unix:uid:1000".into()],
                ..Default::default()
            },
            &platform(1000, "alice"),
        )
        .await
        .unwrap();
    let e = f
        .tasks
        .create(&operator(), &request(&standing, HOUR))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TaskError::Invalid(_)), "{e:?}");
    assert!(
        msg.contains("--jit") && msg.contains("--provision"),
        "{msg}"
    );
    assert!(
        f.tasks.list(None, &operator()).await.unwrap().is_empty(),
        "nothing stored"
    );
}

#[tokio::test]
async fn the_requesters_unix_user_can_never_approve_under_another_name_or_uid() {
    let f = fixture().await;
    let entry = jit_entry(&f).await;
    // The built-in policy makes a workload's task wait for approval.
    let task = f
        .tasks
        .create(&workload(Some(unix(1000, "alice"))), &request(&entry, HOUR))
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::PendingApproval);
    assert_eq!(task.requester_unix, Some(unix(1000, "alice")));
    let stored = f.tasks.get(&task.id).await.unwrap();
    assert_eq!(stored.requester_unix, Some(unix(1000, "alice")));

    // The same uid under another name (a second account sharing the uid), and the same
    // name with another uid (the user on another host), are the same user.
    for approver in [unix(1000, "bob"), unix(1001, "alice")] {
        let e = f
            .tasks
            .approve(&task.id, &Operator::platform(approver.clone()))
            .await
            .unwrap_err();
        assert!(matches!(e, TaskError::Forbidden(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("is the same Unix user as the requester")
                && msg.contains("uid 1000 as user alice"),
            "{msg}"
        );
    }
    // Refusals change nothing.
    let unchanged = f.tasks.get(&task.id).await.unwrap();
    assert_eq!(unchanged, stored);

    let approved = f
        .tasks
        .approve(&task.id, &platform(0, "root"))
        .await
        .unwrap();
    assert_eq!(approved.state, TaskState::Active);
    assert_eq!(approved.approver.as_deref(), Some("user:root"));
    assert_eq!(approved.approver_uid, Some(0));
    assert_eq!(f.tasks.get(&task.id).await.unwrap(), approved);
}

#[tokio::test]
async fn a_task_whose_requester_user_is_unknown_cannot_be_approved() {
    let f = fixture().await;
    let entry = jit_entry(&f).await;
    let task = f
        .tasks
        .create(&workload(None), &request(&entry, HOUR))
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::PendingApproval);
    let e = f
        .tasks
        .approve(&task.id, &platform(0, "root"))
        .await
        .unwrap_err();
    assert!(matches!(e, TaskError::Forbidden(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("does not record which Unix user requested it"),
        "{e}"
    );
    assert_eq!(
        f.tasks.get(&task.id).await.unwrap().state,
        TaskState::PendingApproval
    );
}

#[tokio::test]
async fn an_operator_cannot_approve_a_task_they_requested() {
    let f = fixture().await;
    let entry = jit_entry(&f).await;
    let task = f
        .tasks
        .create(&workload(Some(unix(1000, "alice"))), &request(&entry, HOUR))
        .await
        .unwrap();
    // The label check still applies to operators whose task was requested as themselves.
    let mut by_operator = f.tasks.get(&task.id).await.unwrap();
    by_operator.requester = "user:carol".into();
    let e = check_approver(&by_operator, &unix(2000, "carol")).unwrap_err();
    assert!(
        e.to_string().contains("requested task") && e.to_string().contains("user:carol"),
        "{e}"
    );
    assert_eq!(
        check_approver(&by_operator, &unix(2001, "dave")).unwrap(),
        "user:dave"
    );
}
