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
    fixture_with(PolicyEngine::builtin()).await
}

/// A fixture whose server applies `policy`.
async fn fixture_with(policy: PolicyEngine) -> Fixture {
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
        Arc::new(policy),
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
        audiences: vec!["https://tools.example".into()],
        ttl: Some(ttl),
        binding: TaskBinding::Selectors,
        break_glass: false,
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
    let grant = f.tasks.issue_grant(&entry, None, None).await.unwrap();
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
    // The grant leaves memory right after the stored state changes, on the loop's task:
    // poll briefly rather than race it.
    for _ in 0..100 {
        if f.tasks.grant_for(&entry.id).is_none() {
            break;
        }
        tokio::time::sleep(EXPIRY_TICK / 4).await;
    }
    assert!(
        f.tasks.grant_for(&entry.id).is_none(),
        "no grant after the deadline"
    );
    assert!(f.tasks.issue_grant(&entry, None, None).await.is_err());
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
    assert!(f.tasks.issue_grant(&entry, None, None).await.is_ok());
    f.clock.advance(Duration::from_secs(1));
    let why = f.tasks.issue_grant(&entry, None, None).await.unwrap_err();
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
    let e = check_other_user(&by_operator, &unix(2000, "carol"), "approve").unwrap_err();
    assert!(
        e.to_string().contains("requested task") && e.to_string().contains("user:carol"),
        "{e}"
    );
    assert_eq!(
        check_other_user(&by_operator, &unix(2001, "dave"), "approve").unwrap(),
        "user:dave"
    );
}

/// An entry of `spiffe` (path under example.org) on agent `parent`, owned by `owner`,
/// created by `by`; `uid` keeps selectors distinct.
async fn owned_entry(
    f: &Fixture,
    spiffe: &str,
    parent: &str,
    jit: bool,
    owner: &str,
    uid: u32,
    by: &Operator,
) -> RegistrationEntry {
    f.registrar
        .create(
            &EntryRequest {
                spiffe_id: format!("spiffe://example.org/{spiffe}"),
                parent_id: format!("spiffe://example.org/{parent}"),
                selectors: vec![format!("unix:uid:{uid}")],
                jit,
                owner: owner.into(),
                ..Default::default()
            },
            by,
        )
        .await
        .unwrap()
}

fn root() -> Operator {
    platform(0, "root")
}

fn as_user(uid: u32, name: &str) -> Requester {
    Requester::User(platform(uid, name))
}

async fn state_of(f: &Fixture, t: &TaskRecord) -> (TaskState, Option<String>) {
    let t = f.tasks.get(&t.id).await.unwrap();
    (t.state, t.end.map(|e| e.reason))
}

async fn disabled_reason(f: &Fixture, e: &RegistrationEntry) -> Option<String> {
    f.tasks
        .ds
        .get_entry(&e.id)
        .await
        .unwrap()
        .unwrap()
        .governance
        .disabled
        .map(|d| d.reason)
}

fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[tokio::test]
async fn offboarding_ends_the_owners_tasks_and_disables_their_entries_and_nothing_else() {
    let f = fixture().await;
    let r = root();
    // pat requests a task on bob's entry; alice requests one on pat's entry; alice one on
    // bob's entry (not pat's business).
    let bobs_jit = owned_entry(&f, "db-bob", "agent", true, "user:bob", 1, &r).await;
    let pats_jit = owned_entry(&f, "db-pat", "agent", true, "user:pat", 2, &r).await;
    let other_jit = owned_entry(&f, "db-other", "agent", true, "user:bob", 3, &r).await;
    let pats_web = owned_entry(&f, "web-pat", "agent", false, "user:pat", 4, &r).await;
    let bobs_web = owned_entry(&f, "web-bob", "agent", false, "user:bob", 5, &r).await;
    let by_pat = f
        .tasks
        .create(&as_user(1001, "pat"), &request(&bobs_jit, HOUR))
        .await
        .unwrap();
    let on_pats = f
        .tasks
        .create(&operator(), &request(&pats_jit, HOUR))
        .await
        .unwrap();
    let untouched = f
        .tasks
        .create(&operator(), &request(&other_jit, HOUR))
        .await
        .unwrap();
    assert_eq!(by_pat.state, TaskState::Active);
    assert_eq!(on_pats.state, TaskState::Active);

    let done = f
        .tasks
        .offboard("user:pat", "left the company", &r)
        .await
        .unwrap();
    assert_eq!(
        sorted(&done.ended_tasks),
        sorted(&[by_pat.id.clone(), on_pats.id.clone()])
    );
    assert_eq!(
        sorted(&done.disabled_entries),
        sorted(&[pats_jit.id.clone(), pats_web.id.clone()])
    );
    let why = Some("owner offboarded: left the company".to_owned());
    for t in [&by_pat, &on_pats] {
        assert_eq!(state_of(&f, t).await, (TaskState::Revoked, why.clone()));
    }
    assert_eq!(state_of(&f, &untouched).await, (TaskState::Active, None));
    assert_eq!(disabled_reason(&f, &pats_web).await, why);
    assert_eq!(disabled_reason(&f, &pats_jit).await, why);
    assert_eq!(disabled_reason(&f, &bobs_web).await, None);
    assert_eq!(disabled_reason(&f, &bobs_jit).await, None);
    // Revoked like any revocation: both are published to the agents.
    let revoked: Vec<TaskId> = f
        .tasks
        .revocations()
        .ended_tasks
        .iter()
        .map(|e| e.task_id.clone())
        .collect();
    assert_eq!(
        sorted(&revoked),
        sorted(&[by_pat.id.clone(), on_pats.id.clone()])
    );
    assert!(f.tasks.grant_for(&bobs_jit.id).is_none());
    assert!(f.tasks.grant_for(&other_jit.id).is_some());

    // One audit record of the offboarding, naming the operator and what it did.
    let audit = f.tasks.ds.list_audit(None, None).await.unwrap();
    let offboarded: Vec<_> = audit
        .iter()
        .filter(|a| a.event.kind == "owner.offboarded")
        .collect();
    assert_eq!(offboarded.len(), 1);
    let ev = &offboarded[0].event;
    assert_eq!(ev.actor.as_deref(), Some("user:root"));
    assert_eq!(ev.subject, "user:pat");
    assert_eq!(ev.detail["ended"], 2);
    assert_eq!(ev.detail["disabled"], 2);
    let disabled_events = audit
        .iter()
        .filter(|a| a.event.kind == "entry.disabled")
        .count();
    assert_eq!(disabled_events, 2);

    // Again: nothing more to do, and it says so.
    let again = f.tasks.offboard("user:pat", "again", &r).await.unwrap();
    assert_eq!(again, Offboarded::default());
    assert_eq!(disabled_reason(&f, &pats_web).await, why, "reason kept");

    // A malformed owner is refused.
    let e = f.tasks.offboard("pat", "", &r).await.unwrap_err();
    assert!(matches!(e, TaskError::Invalid(_)), "{e:?}");
    assert!(e.to_string().contains("user:NAME"), "{e}");
}

#[tokio::test]
async fn a_tenant_admin_offboards_only_in_its_tenants() {
    let f = fixture().await;
    let r = root();
    f.registrar
        .tenants()
        .create(
            &r,
            &crate::tenants::TenantRequest {
                name: "acme".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let acme_admin = Operator {
        user: unix(2000, "tina"),
        scope: Scope::Tenants(["acme".to_owned()].into()),
    };
    let acme_jit = owned_entry(&f, "acme/db", "agent", true, "user:pat", 1, &r).await;
    let acme_web = owned_entry(&f, "acme/web", "agent", false, "user:pat", 2, &r).await;
    let dflt_jit = owned_entry(&f, "db", "agent", true, "user:pat", 3, &r).await;
    let dflt_web = owned_entry(&f, "web", "agent", false, "user:pat", 4, &r).await;
    assert_eq!(acme_web.governance.tenant, "acme");
    assert_eq!(dflt_web.governance.tenant, "default");
    let acme_task = f
        .tasks
        .create(&operator(), &request(&acme_jit, HOUR))
        .await
        .unwrap();
    let dflt_task = f
        .tasks
        .create(&operator(), &request(&dflt_jit, HOUR))
        .await
        .unwrap();

    let done = f.tasks.offboard("user:pat", "", &acme_admin).await.unwrap();
    assert_eq!(done.ended_tasks, vec![acme_task.id.clone()]);
    assert_eq!(
        sorted(&done.disabled_entries),
        sorted(&[acme_jit.id.clone(), acme_web.id.clone()])
    );
    let why = Some("owner offboarded".to_owned());
    assert_eq!(
        state_of(&f, &acme_task).await,
        (TaskState::Revoked, why.clone())
    );
    assert_eq!(disabled_reason(&f, &acme_web).await, why);
    // The other tenant's are untouched, and the admin's record belongs to its tenant.
    assert_eq!(state_of(&f, &dflt_task).await, (TaskState::Active, None));
    assert_eq!(disabled_reason(&f, &dflt_web).await, None);
    assert_eq!(disabled_reason(&f, &dflt_jit).await, None);
    let audit = f.tasks.ds.list_audit(None, Some("acme")).await.unwrap();
    let ev = audit
        .iter()
        .find(|a| a.event.kind == "owner.offboarded")
        .expect("recorded in acme");
    assert_eq!(ev.event.actor.as_deref(), Some("user:tina"));
    assert_eq!(ev.event.detail["ended_tasks"], json!([acme_task.id]));

    // A platform operator finishes the job everywhere else.
    let rest = f.tasks.offboard("user:pat", "", &r).await.unwrap();
    assert_eq!(rest.ended_tasks, vec![dflt_task.id.clone()]);
    assert_eq!(
        sorted(&rest.disabled_entries),
        sorted(&[dflt_jit.id.clone(), dflt_web.id.clone()])
    );
}

#[tokio::test]
async fn deleting_the_last_standing_entry_of_a_requester_ends_its_tasks() {
    let f = fixture().await;
    let r = root();
    // The workload `runtime` exists under two agents.
    let on_agent = owned_entry(&f, "runtime", "agent", false, "", 10, &r).await;
    let on_agent2 = owned_entry(&f, "runtime", "agent2", false, "", 11, &r).await;
    let jit = owned_entry(&f, "db", "agent", true, "", 12, &r).await;
    let other_jit = owned_entry(&f, "db2", "agent", true, "", 13, &r).await;
    let task = f
        .tasks
        .create(&workload(Some(unix(1000, "alice"))), &request(&jit, HOUR))
        .await
        .unwrap();
    assert_eq!(task.state, TaskState::PendingApproval);
    let by_operator = f
        .tasks
        .create(&operator(), &request(&other_jit, HOUR))
        .await
        .unwrap();

    // One of its standing entries remains: the requester still exists.
    f.tasks.delete_entry(&on_agent.id, &r).await.unwrap();
    assert_eq!(
        state_of(&f, &task).await,
        (TaskState::PendingApproval, None)
    );

    // The last one goes: its tasks end, other requesters' do not.
    f.tasks.delete_entry(&on_agent2.id, &r).await.unwrap();
    assert_eq!(
        state_of(&f, &task).await,
        (TaskState::Revoked, Some(REQUESTER_DELETED.to_owned()))
    );
    assert_eq!(state_of(&f, &by_operator).await, (TaskState::Active, None));
}

#[tokio::test]
async fn ending_an_agents_tasks_takes_its_identities_and_its_jit_entries_only() {
    let f = fixture().await;
    let r = root();
    // `runtime` stands on agent (and on agent2, through which it asked for a task on an
    // entry of agent2): tasks do not record the agent, so evicting agent ends it too.
    owned_entry(&f, "runtime", "agent", false, "", 20, &r).await;
    owned_entry(&f, "runtime", "agent2", false, "", 24, &r).await;
    let on_agent2 = owned_entry(&f, "db", "agent2", true, "", 21, &r).await;
    let on_agent = owned_entry(&f, "db-local", "agent", true, "", 22, &r).await;
    let elsewhere = owned_entry(&f, "db-far", "agent2", true, "", 23, &r).await;
    let by_runtime = f
        .tasks
        .create(
            &Requester::Workload {
                spiffe_id: SpiffeId::new("spiffe://example.org/runtime").unwrap(),
                agent: SpiffeId::new("spiffe://example.org/agent2").unwrap(),
                unix: Some(unix(1000, "alice")),
                tenant: "default".into(),
            },
            &request(&on_agent2, HOUR),
        )
        .await
        .unwrap();
    let lives_on_agent = f
        .tasks
        .create(&operator(), &request(&on_agent, HOUR))
        .await
        .unwrap();
    let far = f
        .tasks
        .create(&operator(), &request(&elsewhere, HOUR))
        .await
        .unwrap();

    let agent = SpiffeId::new("spiffe://example.org/agent").unwrap();
    let ended = f
        .tasks
        .end_tasks_of_agent(&agent, "agent evicted")
        .await
        .unwrap();
    assert_eq!(
        sorted(&ended),
        sorted(&[by_runtime.id.clone(), lives_on_agent.id.clone()])
    );
    let why = Some("agent evicted".to_owned());
    assert_eq!(
        state_of(&f, &by_runtime).await,
        (TaskState::Revoked, why.clone())
    );
    assert_eq!(
        state_of(&f, &lives_on_agent).await,
        (TaskState::Revoked, why)
    );
    assert_eq!(state_of(&f, &far).await, (TaskState::Active, None));
    // Nothing left: a second call ends nothing.
    assert!(
        f.tasks
            .end_tasks_of_agent(&agent, "agent banned")
            .await
            .unwrap()
            .is_empty()
    );
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn jwt_svids_are_granted_only_for_the_audiences_the_task_declared() {
    let f = fixture().await;
    let entry = jit_entry(&f).await;
    let task = f
        .tasks
        .create(
            &operator(),
            &TaskRequest {
                scopes: strings(&["read", "db:write"]),
                audiences: strings(&["a", "https://tools.example"]),
                ..request(&entry, HOUR)
            },
        )
        .await
        .unwrap();
    assert_eq!(task.audiences, ["a", "https://tools.example"]);
    assert_eq!(task.scopes, ["read", "db:write"]);
    // Stored, and sent to agents with the grant.
    assert_eq!(
        f.tasks.get(&task.id).await.unwrap().audiences,
        task.audiences
    );
    assert_eq!(
        f.tasks.grant_for(&entry.id).unwrap().audiences,
        task.audiences
    );
    let jwt = |aud: &[&str]| {
        let aud = strings(aud);
        let tasks = Arc::clone(&f.tasks);
        let entry = entry.clone();
        async move { tasks.issue_grant(&entry, None, Some(&aud)).await }
    };
    assert!(jwt(&["a"]).await.is_ok());
    assert!(jwt(&["https://tools.example", "a", "a"]).await.is_ok());
    for outside in [&["b"][..], &["a", "b"], &["A"]] {
        let why = jwt(outside).await.unwrap_err();
        assert!(
            why.contains(task.id.as_str()) && why.contains("outside the audiences"),
            "{outside:?}: {why}"
        );
    }
    // X.509-SVIDs are not affected.
    assert!(f.tasks.issue_grant(&entry, None, None).await.is_ok());
}

#[tokio::test]
async fn a_task_that_declared_no_audiences_gets_no_jwt_svids_but_its_x509_svid() {
    let f = fixture().await;
    let entry = jit_entry(&f).await;
    let task = f
        .tasks
        .create(
            &operator(),
            &TaskRequest {
                audiences: vec![],
                ..request(&entry, HOUR)
            },
        )
        .await
        .unwrap();
    let why = f
        .tasks
        .issue_grant(&entry, None, Some(&strings(&["https://tools.example"])))
        .await
        .unwrap_err();
    assert!(
        why.contains(task.id.as_str()) && why.contains("declared no JWT audiences"),
        "{why}"
    );
    assert!(f.tasks.issue_grant(&entry, None, None).await.is_ok());
}

#[tokio::test]
async fn bad_audiences_or_scopes_are_refused_and_nothing_is_stored() {
    let f = fixture().await;
    let entry = jit_entry(&f).await;
    let bad: [(&str, Vec<String>, Vec<String>); 5] = [
        ("empty audience", vec![], vec![String::new()]),
        ("audience with a space", vec![], strings(&["a b"])),
        ("duplicate audience", vec![], strings(&["a", "a"])),
        ("scope with a space", strings(&["read write"]), vec![]),
        ("scope with a quote", strings(&["say\"hi\""]), vec![]),
    ];
    for (what, scopes, audiences) in bad {
        let err = f
            .tasks
            .create(
                &operator(),
                &TaskRequest {
                    scopes,
                    audiences,
                    ..request(&entry, HOUR)
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TaskError::Invalid(_)), "{what}: {err:?}");
    }
    assert!(f.tasks.list(None, &operator()).await.unwrap().is_empty());
    assert!(f.tasks.grant_for(&entry.id).is_none());
}

#[tokio::test]
async fn policy_sees_the_requested_audience_and_the_declared_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("aud.cedar"),
        r#"
@id("begin") permit (principal, action == Tessera::Action::"begin_task", resource)
when { !context.declared_audiences.contains("https://forbidden.example") };
@id("issue") permit (principal, action == Tessera::Action::"issue_svid", resource);
@id("no-payments") forbid (principal, action == Tessera::Action::"issue_svid", resource)
when { context.audience == "https://payments.example" };
@id("short-for-a") @max_ttl("60") permit (principal, action == Tessera::Action::"issue_svid", resource)
when { context.audience == "a" };
"#,
    )
    .unwrap();
    let f = fixture_with(PolicyEngine::load_dir(dir.path()).unwrap()).await;
    let entry = jit_entry(&f).await;
    let denied = f
        .tasks
        .create(
            &operator(),
            &TaskRequest {
                audiences: strings(&["https://forbidden.example"]),
                ..request(&entry, HOUR)
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(denied, TaskError::Denied(_)), "{denied:?}");
    let task = f
        .tasks
        .create(
            &operator(),
            &TaskRequest {
                audiences: strings(&["a", "b", "https://payments.example"]),
                ..request(&entry, HOUR)
            },
        )
        .await
        .unwrap();
    let grant = |aud: &[&str]| {
        let aud = strings(aud);
        let tasks = Arc::clone(&f.tasks);
        let entry = entry.clone();
        async move { tasks.issue_grant(&entry, None, Some(&aud)).await }
    };
    // Declared, yet forbidden by policy: refused, naming the task, audience and policy.
    let why = grant(&["b", "https://payments.example"]).await.unwrap_err();
    assert!(
        why.contains(task.id.as_str())
            && why.contains("https://payments.example")
            && why.contains("no-payments"),
        "{why}"
    );
    assert!(grant(&["b"]).await.unwrap().max_ttl > Duration::from_secs(60));
    // The cap of any audience's decision applies to the token.
    assert_eq!(
        grant(&["b", "a"]).await.unwrap().max_ttl,
        Duration::from_secs(60)
    );
    // X.509: the policy sees an empty audience.
    assert!(f.tasks.issue_grant(&entry, None, None).await.is_ok());
}

fn process_binding(agent: &str) -> TaskBinding {
    TaskBinding::Process(common::task::Holder {
        process: common::task::ProcessInstance {
            pid: 4242,
            start_time: 123_456,
        },
        agent: SpiffeId::new(agent).unwrap(),
    })
}

#[tokio::test]
async fn only_a_workloads_agent_binds_a_task_to_a_process_and_only_it_ends_it_on_exit() {
    let f = fixture().await;
    let entry = jit_entry(&f).await;
    // An operator's task is bound by selectors: a process binding is refused, nothing stored.
    let mut asked = request(&entry, HOUR);
    asked.binding = process_binding("spiffe://example.org/agent");
    let refused = f.tasks.create(&operator(), &asked).await.unwrap_err();
    assert!(
        matches!(&refused, TaskError::Invalid(m) if m.contains("bound by selectors")),
        "{refused:?}"
    );
    // A workload's binding must name its own agent.
    let mut elsewhere = request(&entry, HOUR);
    elsewhere.binding = process_binding("spiffe://example.org/other-agent");
    let alice = || workload(Some(unix(1000, "alice")));
    assert!(matches!(
        f.tasks.create(&alice(), &elsewhere).await,
        Err(TaskError::Invalid(_))
    ));
    assert!(f.tasks.list(None, &operator()).await.unwrap().is_empty());

    let task = f.tasks.create(&alice(), &asked).await.unwrap();
    assert_eq!(task.binding, asked.binding);
    assert_eq!(
        f.tasks.get(&task.id).await.unwrap().binding,
        asked.binding,
        "stored"
    );
    let task = f
        .tasks
        .approve(&task.id, &platform(2000, "bob"))
        .await
        .unwrap();
    assert_eq!(
        f.tasks.grant_for(&entry.id).unwrap().binding,
        asked.binding,
        "the grant carries the binding to the agent"
    );
    // Another agent cannot end it as "requester exited"; its own agent can.
    let other = SpiffeId::new("spiffe://example.org/other-agent").unwrap();
    assert!(matches!(
        f.tasks.end_for_holder_exit(&other, &task.id).await,
        Err(TaskError::NotFound(_))
    ));
    let agent = SpiffeId::new("spiffe://example.org/agent").unwrap();
    let ended = f.tasks.end_for_holder_exit(&agent, &task.id).await.unwrap();
    assert_eq!(ended.state, TaskState::Cancelled);
    assert_eq!(
        ended.end.as_ref().map(|e| e.reason.as_str()),
        Some(REQUESTER_EXITED)
    );
    assert!(f.tasks.grant_for(&entry.id).is_none());
    assert!(matches!(
        f.tasks.end_for_holder_exit(&agent, &task.id).await,
        Err(TaskError::WrongState(_))
    ));
    // A task bound by selectors never ends this way.
    let by_selectors = f
        .tasks
        .create(&operator(), &request(&entry, HOUR))
        .await
        .unwrap();
    assert!(matches!(
        f.tasks.end_for_holder_exit(&agent, &by_selectors.id).await,
        Err(TaskError::NotFound(_))
    ));
}

fn holder_binding(pid: u32) -> TaskBinding {
    TaskBinding::Process(common::task::Holder {
        process: common::task::ProcessInstance {
            pid,
            start_time: u64::from(pid) * 10,
        },
        agent: SpiffeId::new("spiffe://example.org/agent").unwrap(),
    })
}

#[tokio::test]
async fn parallel_tasks_on_one_entry_one_per_holder_up_to_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"permit(principal, action, resource);"#,
    )
    .unwrap();
    let mut f = fixture_with(PolicyEngine::load_dir(dir.path()).unwrap()).await;
    f.tasks = Arc::new(
        Arc::try_unwrap(f.tasks)
            .unwrap()
            .with_max_parallel_per_entry(2),
    );
    let entry = jit_entry(&f).await;
    let alice = || workload(Some(unix(1000, "alice")));
    let bound = |pid| {
        let mut r = request(&entry, HOUR);
        r.binding = holder_binding(pid);
        r
    };
    let a = f.tasks.create(&alice(), &bound(1)).await.unwrap();
    let b = f.tasks.create(&alice(), &bound(2)).await.unwrap();
    assert_eq!((a.state, b.state), (TaskState::Active, TaskState::Active));
    let grants: Vec<TaskId> = f
        .tasks
        .grants_for(&entry.id)
        .into_iter()
        .map(|g| g.task_id)
        .collect();
    assert_eq!(
        grants,
        [a.id.clone(), b.id.clone()],
        "both live, oldest first"
    );
    // Each issuance names its task; the wrong one, or none among several, is refused.
    let ga = f
        .tasks
        .issue_grant(&entry, Some(&a.id), None)
        .await
        .unwrap();
    assert_eq!(ga.task.id, a.id);
    let gb = f
        .tasks
        .issue_grant(&entry, Some(&b.id), None)
        .await
        .unwrap();
    assert_eq!(gb.task.id, b.id);
    let why = f.tasks.issue_grant(&entry, None, None).await.unwrap_err();
    assert!(why.contains("several active tasks"), "{why}");
    let stranger = TaskId::generate();
    assert!(
        f.tasks
            .issue_grant(&entry, Some(&stranger), None)
            .await
            .is_err()
    );
    // The same holder twice, a third holder past the limit, and selectors beside bound
    // tasks are refused.
    let same = f.tasks.create(&alice(), &bound(1)).await.unwrap_err();
    assert!(matches!(same, TaskError::Conflict(_)), "{same:?}");
    let third = f.tasks.create(&alice(), &bound(3)).await.unwrap_err();
    assert!(
        matches!(&third, TaskError::Quota(m) if m.contains("at most 2")
            && m.contains("the server's max_parallel_tasks_per_entry")),
        "{third:?}"
    );
    let sel = f
        .tasks
        .create(&operator(), &request(&entry, HOUR))
        .await
        .unwrap_err();
    assert!(matches!(sel, TaskError::Conflict(_)), "{sel:?}");
    // Ending one leaves the other live.
    let agent = SpiffeId::new("spiffe://example.org/agent").unwrap();
    f.tasks.end_for_holder_exit(&agent, &a.id).await.unwrap();
    let left: Vec<TaskId> = f
        .tasks
        .grants_for(&entry.id)
        .into_iter()
        .map(|g| g.task_id)
        .collect();
    assert_eq!(left, std::slice::from_ref(&b.id));
    assert!(
        f.tasks
            .issue_grant(&entry, Some(&a.id), None)
            .await
            .is_err()
    );
    assert_eq!(
        f.tasks
            .issue_grant(&entry, None, None)
            .await
            .unwrap()
            .task
            .id,
        b.id,
        "the only one left"
    );
}

/// Operators need approval for up to an hour; only alice may break glass.
const BREAK_GLASS_POLICY: &str = r#"
@id("ops") @approval("required") @max_ttl("1h")
permit (principal is Tessera::User, action == Tessera::Action::"begin_task", resource);

@id("alice-break-glass") @break_glass("allowed")
permit (principal == Tessera::User::"alice", action == Tessera::Action::"begin_task", resource);

@id("issue") permit (principal, action == Tessera::Action::"issue_svid", resource);
"#;

async fn break_glass_fixture() -> (Fixture, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bg.cedar"), BREAK_GLASS_POLICY).unwrap();
    let f = fixture_with(PolicyEngine::load_dir(dir.path()).unwrap()).await;
    (f, dir)
}

fn breaking(r: TaskRequest) -> TaskRequest {
    TaskRequest {
        break_glass: true,
        reason: "INC-7 database down".into(),
        ..r
    }
}

async fn kinds_of(f: &Fixture, id: &TaskId) -> Vec<String> {
    f.tasks
        .ds
        .list_audit(Some(id), None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event.kind)
        .collect()
}

#[tokio::test]
async fn break_glass_skips_approval_only_where_policy_allows_it_and_is_capped() {
    let (f, _dir) = break_glass_fixture().await;
    let entry = jit_entry(&f).await;
    // Bob may start tasks with approval, but not break glass: refused at once, with the
    // reason, and no task is stored.
    let bob = Requester::User(platform(1001, "bob"));
    let e = f
        .tasks
        .create(&bob, &breaking(request(&entry, HOUR)))
        .await
        .unwrap_err();
    assert!(matches!(e, TaskError::Denied(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("break-glass is not allowed for User::\"bob\""),
        "{e}"
    );
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::PermissionDenied);
    assert!(f.tasks.list(None, &bob).await.unwrap().is_empty());
    // Alice without break-glass waits for an approver like anyone.
    let pending = f
        .tasks
        .create(&operator(), &request(&entry, HOUR))
        .await
        .unwrap();
    assert_eq!(pending.state, TaskState::PendingApproval);
    assert!(!pending.break_glass && !pending.awaits_review());
    f.tasks
        .end(&pending.id, Outcome::Cancelled, "", &operator())
        .await
        .unwrap();
    // With break-glass: active at once, for at most break_glass_max_ttl (15 min by
    // default) though she asked for an hour and the policy allows one.
    let t = f
        .tasks
        .create(&operator(), &breaking(request(&entry, HOUR)))
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Active);
    assert!(t.break_glass && t.awaits_review());
    assert_eq!(t.approver, None);
    assert_eq!(t.deadline - t.activated_at.unwrap(), 15 * 60);
    assert!(t.decision.break_glass_allowed);
    assert_eq!(f.tasks.grant_for(&entry.id).unwrap().task_id, t.id);
    assert_eq!(
        kinds_of(&f, &t.id).await,
        [
            "task.requested",
            "task.policy",
            "task.activated",
            "task.break_glass"
        ]
    );
    // A shorter request stays shorter; the server's cap is configurable.
    f.tasks
        .end(&t.id, Outcome::Completed, "fixed", &operator())
        .await
        .unwrap();
    let short = f
        .tasks
        .create(
            &operator(),
            &breaking(request(&entry, Duration::from_secs(60))),
        )
        .await
        .unwrap();
    assert_eq!(short.deadline - short.activated_at.unwrap(), 60);
    // Its end is marked break-glass in the record SET receivers are sent.
    f.tasks
        .end(&short.id, Outcome::Revoked, "done", &operator())
        .await
        .unwrap();
    let ended = f.tasks.ds.list_audit(Some(&short.id), None).await.unwrap();
    let end = ended.iter().find(|r| r.event.kind == "task.ended").unwrap();
    assert_eq!(end.event.detail["break_glass"], true);
    assert_eq!(end.event.detail["requester"], "user:alice");
    // Ending does not review it.
    assert!(f.tasks.get(&short.id).await.unwrap().awaits_review());
}

#[tokio::test]
async fn the_break_glass_cap_is_the_servers_setting() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bg.cedar"), BREAK_GLASS_POLICY).unwrap();
    let mut f = fixture_with(PolicyEngine::load_dir(dir.path()).unwrap()).await;
    let tasks = Arc::into_inner(f.tasks).unwrap();
    f.tasks = Arc::new(tasks.with_break_glass_max_ttl(Duration::from_secs(120)));
    let entry = jit_entry(&f).await;
    let t = f
        .tasks
        .create(&operator(), &breaking(request(&entry, HOUR)))
        .await
        .unwrap();
    assert_eq!(t.deadline - t.activated_at.unwrap(), 120);
}

#[tokio::test]
async fn a_break_glass_task_is_acknowledged_once_by_someone_other_than_its_requester() {
    let (f, _dir) = break_glass_fixture().await;
    let entry = jit_entry(&f).await;
    let t = f
        .tasks
        .create(&operator(), &breaking(request(&entry, HOUR)))
        .await
        .unwrap();
    let forbidden = |e: TaskError, want: &str| {
        assert!(matches!(e, TaskError::Forbidden(_)), "{e:?}");
        assert!(e.to_string().contains(want), "{e} should say {want:?}");
    };
    // The requester, by name or by uid, cannot.
    let e = f
        .tasks
        .acknowledge(&t.id, "all fine", &platform(1000, "alice"))
        .await
        .unwrap_err();
    forbidden(e, "user:alice requested task");
    let e = f
        .tasks
        .acknowledge(&t.id, "all fine", &platform(1000, "alice-admin"))
        .await
        .unwrap_err();
    forbidden(e, "is the same Unix user as the requester");
    // A note is required and bounded.
    for note in ["", "  ", "a\u{7}b"] {
        let e = f
            .tasks
            .acknowledge(&t.id, note, &platform(1001, "bob"))
            .await
            .unwrap_err();
        assert!(matches!(e, TaskError::Invalid(_)), "{note:?}: {e:?}");
    }
    // Another tenant's admin cannot tell it from a missing task.
    let other = Operator {
        user: unix(2000, "tina"),
        scope: Scope::Tenants(["acme".to_owned()].into()),
    };
    let e = f
        .tasks
        .acknowledge(&t.id, "fine", &other)
        .await
        .unwrap_err();
    assert!(matches!(e, TaskError::NotFound(_)), "{e:?}");
    assert!(f.tasks.get(&t.id).await.unwrap().awaits_review());
    assert!(
        !kinds_of(&f, &t.id)
            .await
            .contains(&"task.acknowledged".to_owned())
    );
    // Bob can, while it runs; once.
    let acked = f
        .tasks
        .acknowledge(&t.id, "INC-7: justified", &platform(1001, "bob"))
        .await
        .unwrap();
    let ack = acked.acknowledgement.clone().unwrap();
    assert_eq!((ack.by.as_str(), ack.uid), ("user:bob", 1001));
    assert_eq!(ack.note, "INC-7: justified");
    assert_eq!(
        acked.state,
        TaskState::Active,
        "reviewing changes nothing else"
    );
    assert_eq!(f.tasks.get(&t.id).await.unwrap(), acked);
    let e = f
        .tasks
        .acknowledge(&t.id, "again", &platform(1002, "carol"))
        .await
        .unwrap_err();
    assert!(matches!(e, TaskError::WrongState(_)), "{e:?}");
    assert!(
        e.to_string().contains("already acknowledged by user:bob"),
        "{e}"
    );
    assert_eq!(
        tonic::Status::from(e).code(),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(f.tasks.get(&t.id).await.unwrap(), acked);
    let records = f.tasks.ds.list_audit(Some(&t.id), None).await.unwrap();
    let acks: Vec<_> = records
        .iter()
        .filter(|r| r.event.kind == "task.acknowledged")
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].event.actor.as_deref(), Some("user:bob"));
    assert_eq!(acks[0].event.detail["note"], "INC-7: justified");
    assert_eq!(acks[0].event.detail["acknowledged_uid"], 1001);
    // A task that is not break-glass has nothing to acknowledge.
    f.tasks
        .end(&t.id, Outcome::Completed, "", &operator())
        .await
        .unwrap();
    let plain = f
        .tasks
        .create(&operator(), &request(&entry, HOUR))
        .await
        .unwrap();
    let e = f
        .tasks
        .acknowledge(&plain.id, "fine", &platform(1001, "bob"))
        .await
        .unwrap_err();
    forbidden(e, "is not a break-glass task");
}

#[tokio::test]
async fn a_workloads_break_glass_task_is_not_acknowledged_by_its_unix_user() {
    // Workloads may break glass too, where policy says so.
    let policy = format!(
        "{BREAK_GLASS_POLICY}\n@id(\"rt\") @approval(\"required\") @break_glass(\"allowed\")\n\
         permit (principal is Tessera::Workload, action == Tessera::Action::\"begin_task\", resource);"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bg.cedar"), policy).unwrap();
    let f2 = fixture_with(PolicyEngine::load_dir(dir.path()).unwrap()).await;
    let entry = jit_entry(&f2).await;
    let t = f2
        .tasks
        .create(
            &workload(Some(unix(1000, "svc"))),
            &breaking(request(&entry, HOUR)),
        )
        .await
        .unwrap();
    assert_eq!(t.state, TaskState::Active);
    assert!(t.awaits_review());
    let e = f2
        .tasks
        .acknowledge(&t.id, "fine", &platform(1000, "alice"))
        .await
        .unwrap_err();
    assert!(matches!(e, TaskError::Forbidden(_)), "{e:?}");
    f2.tasks
        .acknowledge(&t.id, "fine", &platform(1001, "bob"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_parallel_limit_is_the_least_of_server_tenant_and_policy_and_names_its_source() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"@id("three") @max_parallel("3") permit(principal, action, resource);"#,
    )
    .unwrap();
    let f = fixture_with(PolicyEngine::load_dir(dir.path()).unwrap()).await;
    let entry = jit_entry(&f).await;
    let set_tenant_limit = |n: Option<i64>| {
        let ds = Arc::clone(&f.tasks.ds);
        async move {
            let mut t = ds.get_tenant("default").await.unwrap().unwrap();
            t.max_parallel_tasks_per_entry = n;
            t.revision += 1;
            assert!(ds.update_tenant(&t, &[]).await.unwrap());
        }
    };
    let alice = || workload(Some(unix(1000, "alice")));
    let bound = |pid| {
        let mut r = request(&entry, HOUR);
        r.binding = holder_binding(pid);
        r
    };
    // The tenant's 2 is below the policy's 3 and the server's 16.
    set_tenant_limit(Some(2)).await;
    f.tasks.create(&alice(), &bound(1)).await.unwrap();
    let second = f.tasks.create(&alice(), &bound(2)).await.unwrap();
    assert_eq!(second.decision.max_parallel, Some(3));
    let third = f.tasks.create(&alice(), &bound(3)).await.unwrap_err();
    assert!(
        matches!(&third, TaskError::Quota(m) if m.contains("already has 2 open tasks: at most 2 \
            at once (tenant default's max_parallel_tasks_per_entry)")),
        "{third:?}"
    );
    // Without it, the policy's 3 holds, named with the policies that set it.
    set_tenant_limit(None).await;
    f.tasks.create(&alice(), &bound(3)).await.unwrap();
    let fourth = f.tasks.create(&alice(), &bound(4)).await.unwrap_err();
    assert!(
        matches!(&fourth, TaskError::Quota(m) if m.contains("at most 3 at once (@max_parallel \
            of policies [p.cedar:three])")),
        "{fourth:?}"
    );
    // Nothing refused was stored.
    assert_eq!(
        f.tasks
            .ds
            .open_tasks_for_entry(&entry.id)
            .await
            .unwrap()
            .len(),
        3
    );
}
