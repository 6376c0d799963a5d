//! One test suite for every datastore backend: each case below runs against SQLite (a
//! temporary file) and PostgreSQL (a fresh schema, dropped afterwards), each fresh or
//! upgraded from a datastore written by release 7c0b47d, as
//! `datastore::conformance::{sqlite,postgres,sqlite_upgraded,postgres_upgraded}::<case>`
//! (the databases are in `testdb`; PostgreSQL must answer, the cases never skip).
//!
//! "Two servers" are two datastore objects on the same database: each has its own pool
//! and its own in-process lock, so only the database can keep them consistent.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use common::task::TaskState;
use common::{EntryId, RegistrationEntry, Selector, SelectorSet, SpiffeId, TaskId};
use serde_json::json;

use super::testdb::{Backend, Under};
use super::{
    Acknowledgement, AgentRecord, AuthorityKind, ConsumedToken, Datastore, DatastoreError,
    DomainRecord, EntryFilter, EntryUsage, LimitReached, PublishedAuthority, STATUS_LIST_SIZE,
    StatusEntry, TaskEnd, TaskLimits, TaskRecord, TaskSvid, TemplateRecord, TenantRecord,
    TokenAttestation, UnixUser, UsageReport,
};
use crate::audit::{AuditEvent, ChainHead, verify};
use crate::policy::Decision;

/// The conflict message for a duplicate entry (both backends, the API shows it).
const ENTRY_CONFLICT: &str =
    "an entry with the same SPIFFE ID, parent ID and selectors already exists";

/// Each case as a test per backend, on a fresh database and on one written by release
/// 7c0b47d and migrated by this code (then emptied: the cases expect no records but
/// their own).
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        conformance!(@on sqlite, Sqlite::new(); $($case),*);
        conformance!(@on postgres, Postgres::new().await; $($case),*);
        conformance!(@on sqlite_upgraded, Sqlite::upgraded().await; $($case),*);
        conformance!(@on postgres_upgraded, Postgres::upgraded().await; $($case),*);
    };
    (@on $backend:ident, $make:expr; $($case:ident),*) => {
        mod $backend {
            #[allow(unused_imports, reason = "each backend module uses one of them")]
            use crate::datastore::testdb::{Postgres, Sqlite};
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let b = $make;
                    super::$case(&b).await;
                }
            )*
        }
    };
}

conformance!(
    entries_crud_and_conflicts,
    entries_are_fetched_by_id_many_at_once,
    changes_commit_with_their_audit_records_or_not_at_all,
    join_tokens_are_single_use_under_concurrency,
    agents_attest_renew_ban,
    a_ban_is_never_undone_by_a_concurrent_attestation,
    audit_chain_stays_gap_free_under_concurrent_appends,
    audit_numbers_are_never_reused_after_a_deletion,
    tasks_lifecycle,
    tasks_compare_and_set_under_concurrency,
    entry_compare_and_set_applies_once,
    lapsed_entries_are_disabled_once_across_servers,
    set_push_receivers_are_held_by_one_server_at_a_time,
    domain_checks_are_recorded_once_across_servers,
    the_parallel_limit_holds_under_concurrent_creates,
    break_glass_tasks_are_acknowledged_once,
    due_and_revoked_tasks,
    reopen_sees_everything,
    ping_answers_only_while_the_datastore_does,
    entry_usage_adds_up_per_entry_and_agent,
    entry_usage_counts_every_concurrent_report,
    large_batches_span_several_statements,
    an_issuance_is_recorded_in_one_call,
    published_authorities_are_shared_replaced_and_pruned,
    status_list_entries_are_random_unique_and_report_ended_tasks,
    status_lists_move_on_when_half_full,
    templates_crud_instances_and_grace,
    node_selectors_and_node_entries_round_trip,
);

fn sid(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

fn selectors(list: &[String]) -> SelectorSet {
    list.iter()
        .map(|s| Selector::from_str(s).unwrap())
        .collect()
}

fn eid(id: &str) -> EntryId {
    EntryId::parse(id).unwrap()
}

fn tid(id: &str) -> TaskId {
    TaskId::parse(id).unwrap()
}

fn entry(id: &str, spiffe_id: &str, uid: u32) -> RegistrationEntry {
    RegistrationEntry {
        id: eid(id),
        spiffe_id: sid(spiffe_id),
        parent_id: sid("spiffe://example.org/node/a"),
        selectors: selectors(&[format!("unix:uid:{uid}"), "unix:gid:0".into()]),
        x509_svid_ttl: Duration::from_secs(3600),
        jwt_svid_ttl: Duration::from_secs(300),
        dns_names: vec!["a.example.org".into(), "b.example.org".into()],
        jit: false,
        hint: "hint \"quoted\" ünïcode".into(),
        created_at: 1_700_000_000,
        revision: 1,
        governance: common::entry::Governance {
            tenant: "default".into(),
            owner: "user:root".into(),
            expires_at: Some(2_000_000_000),
            review_every: Some(Duration::from_secs(86_400)),
            certified_at: None,
            disabled: None,
            template_id: None,
        },
        node_selectors: None,
    }
}

fn task(id: &str, e: &RegistrationEntry, state: TaskState, deadline: i64) -> TaskRecord {
    TaskRecord {
        id: tid(id),
        state,
        entry_id: e.id.clone(),
        spiffe_id: e.spiffe_id.clone(),
        parent_id: e.parent_id.clone(),
        provisioned: false,
        requester: "user:root".into(),
        approver: None,
        reason: "deploy".into(),
        ticket: "CHG-1".into(),
        scopes: vec!["db:read".into(), "db:write".into()],
        audiences: vec![
            "https://tools.example/ünï \"q\"".into(),
            "spiffe://example.org/tool".into(),
        ],
        created_at: 1_700_000_000,
        activated_at: None,
        deadline,
        end: (!state.is_open()).then(|| TaskEnd {
            at: 1_700_000_000,
            reason: String::new(),
        }),
        decision: Decision {
            allowed: true,
            approval_required: false,
            max_ttl_seconds: Some(3600),
            max_parallel: Some(3),
            break_glass_allowed: false,
            policies: vec!["ops.cedar:operators".into()],
            errors: vec!["ünïcode \"q\" \\ /".into()],
            action: "begin_task".into(),
            principal: "User::\"root\"".into(),
            entry: format!("Entry::\"{}\"", e.id),
        },
        requester_unix: Some(UnixUser {
            uid: 0,
            name: "root".into(),
        }),
        approver_uid: None,
        tenant: "default".into(),
        // Every column of a binding, at the edges of its range, round-trips.
        binding: common::task::TaskBinding::Tree(common::task::Holder {
            process: common::task::ProcessInstance {
                pid: u32::MAX,
                start_time: 1 << 40,
            },
            agent: e.parent_id.clone(),
        }),
        break_glass: false,
        acknowledgement: None,
        status: None,
    }
}

/// `t` moved to the final `state` at `at`, for `reason`.
fn ended(t: &TaskRecord, state: TaskState, at: i64, reason: &str) -> TaskRecord {
    TaskRecord {
        state,
        end: Some(TaskEnd {
            at,
            reason: reason.into(),
        }),
        ..t.clone()
    }
}

fn agent(id: &str, serial: &str) -> AgentRecord {
    AgentRecord {
        spiffe_id: sid(id),
        serial: serial.into(),
        previous_serial: None,
        expires_at: 2_000_000_000,
        attested_at: 1_700_000_000,
        banned: false,
        attestation_type: "join_token".into(),
        selectors: BTreeSet::new(),
    }
}

fn event(kind: &str, subject: &str, task_id: Option<&str>) -> AuditEvent {
    let detail = json!({"subject": subject, "n": 1, "text": "ünïcode \"q\" \\ /"});
    AuditEvent {
        kind: kind.to_owned(),
        task_id: task_id.map(str::to_owned),
        subject: subject.to_owned(),
        detail,
        actor: None,
        tenant: None,
    }
}

fn is_entry_conflict<T: std::fmt::Debug>(r: &Result<T, DatastoreError>) -> bool {
    matches!(r, Err(DatastoreError::Conflict(m)) if m == ENTRY_CONFLICT)
}

async fn entries_are_fetched_by_id_many_at_once(b: &dyn Backend) {
    let ds = b.open().await;
    assert!(ds.get_entries(&[]).await.unwrap().is_empty());
    assert!(ds.get_entries(&[eid("a")]).await.unwrap().is_empty());
    let a = entry("a", "spiffe://example.org/a", 1);
    let b_entry = entry("b", "spiffe://example.org/b", 2);
    let mut c = entry("c", "spiffe://example.org/c", 3);
    c.jit = true;
    c.governance.expires_at = None;
    for e in [&c, &a, &b_entry] {
        ds.create_entry(e, &[]).await.unwrap();
    }
    let all = [a.clone(), b_entry.clone(), c.clone()];
    // All found: each as stored, in id order whatever the order asked.
    assert_eq!(
        ds.get_entries(&[eid("c"), eid("a"), eid("b")])
            .await
            .unwrap(),
        all
    );
    // Unknown ids are left out.
    assert_eq!(
        ds.get_entries(&[eid("zzz"), eid("c"), eid("0"), eid("a")])
            .await
            .unwrap(),
        [a.clone(), c.clone()]
    );
    assert!(
        ds.get_entries(&[eid("x"), eid("y")])
            .await
            .unwrap()
            .is_empty()
    );
    // Repeats are answered once.
    assert_eq!(
        ds.get_entries(&[eid("b"), eid("b"), eid("a"), eid("b")])
            .await
            .unwrap(),
        [a.clone(), b_entry.clone()]
    );

    // More ids than one query binds: found entries in every chunk, unknown ids between
    // them, every id asked twice.
    let n = super::ENTRY_IDS_PER_QUERY + 40;
    let mut many: Vec<RegistrationEntry> = (0..n)
        .map(|i| {
            let mut e = entry(
                &format!("m{i:04}"),
                &format!("spiffe://example.org/many/{i}"),
                4,
            );
            e.created_at += i64::try_from(i).unwrap();
            e
        })
        .collect();
    for e in &many {
        ds.create_entry(e, &[]).await.unwrap();
    }
    let mut asked: Vec<EntryId> = Vec::new();
    for e in many.iter().rev() {
        asked.push(e.id.clone());
        asked.push(eid(&format!("{}-gone", e.id.as_str())));
    }
    asked.extend(many.iter().map(|e| e.id.clone()));
    asked.push(eid("a"));
    let got = ds.get_entries(&asked).await.unwrap();
    many.insert(0, a.clone());
    assert_eq!(got.len(), n + 1);
    assert_eq!(got, many);
    // Deleted entries are gone from the answer too.
    ds.delete_entry(&eid("a"), Box::new(|_| Vec::new()))
        .await
        .unwrap();
    assert_eq!(
        ds.get_entries(&[eid("a"), eid("c")]).await.unwrap(),
        [c.clone()]
    );
}

async fn entries_crud_and_conflicts(b: &dyn Backend) {
    let ds = b.open().await;
    let a = entry("a", "spiffe://example.org/web", 1);
    ds.create_entry(&a, &[]).await.unwrap();
    assert_eq!(ds.get_entry(&eid("a")).await.unwrap().unwrap(), a);
    // Same SPIFFE ID, parent and selectors under another id; the same id again.
    let r = ds
        .create_entry(&entry("a2", "spiffe://example.org/web", 1), &[])
        .await;
    assert!(is_entry_conflict(&r), "{r:?}");
    let r = ds
        .create_entry(&entry("a", "spiffe://example.org/x", 9), &[])
        .await;
    assert!(is_entry_conflict(&r), "{r:?}");
    // Selector sets are compared as sets.
    let mut reordered = entry("a3", "spiffe://example.org/web", 1);
    reordered.selectors = selectors(&["unix:gid:0".into(), "unix:uid:1".into()]);
    assert!(is_entry_conflict(&ds.create_entry(&reordered, &[]).await));

    let mut b_entry = entry("b", "spiffe://example.org/web", 2);
    b_entry.created_at = 1_600_000_000;
    ds.create_entry(&b_entry, &[]).await.unwrap();
    let mut b2 = entry("b", "spiffe://example.org/web", 3);
    b2.revision = 2;
    b2.created_at = b_entry.created_at;
    b2.jit = true;
    b2.x509_svid_ttl = Duration::from_secs(60);
    ds.update_entry(&b2, &[]).await.unwrap();
    assert_eq!(ds.get_entry(&eid("b")).await.unwrap().unwrap(), b2);
    // An update that would duplicate another entry, and one of an unknown entry.
    let r = ds
        .update_entry(&entry("b", "spiffe://example.org/web", 1), &[])
        .await;
    assert!(is_entry_conflict(&r), "{r:?}");
    assert_eq!(
        ds.get_entry(&eid("b")).await.unwrap().unwrap(),
        b2,
        "unchanged"
    );
    assert!(matches!(
        ds.update_entry(&entry("zzz", "spiffe://example.org/z", 9), &[])
            .await,
        Err(DatastoreError::NotFound(_))
    ));

    // As many selectors as an entry may have, each as long as allowed (64 KiB in all).
    let mut big = entry("big", "spiffe://example.org/big", 0);
    big.selectors = selectors(
        &(0..64)
            .map(|i| format!("unix:path:/{}{i:03}", "p".repeat(1000)))
            .collect::<Vec<_>>(),
    );
    big.hint = "h".repeat(1024);
    ds.create_entry(&big, &[]).await.unwrap();
    assert_eq!(ds.get_entry(&eid("big")).await.unwrap().unwrap(), big);
    let mut big2 = big.clone();
    big2.id = eid("big2");
    assert!(is_entry_conflict(&ds.create_entry(&big2, &[]).await));

    // Filters, and creation order (then id).
    let mut other = entry("c", "spiffe://example.org/other", 4);
    other.parent_id = sid("spiffe://example.org/node/b");
    other.created_at = 1_600_000_000;
    ds.create_entry(&other, &[]).await.unwrap();
    let ids = |v: Vec<RegistrationEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(ds.list_entries(&EntryFilter::default()).await.unwrap()),
        ["b", "c", "a", "big"]
    );
    let by_id = EntryFilter {
        spiffe_id: Some(sid("spiffe://example.org/web")),
        ..Default::default()
    };
    assert_eq!(ids(ds.list_entries(&by_id).await.unwrap()), ["b", "a"]);
    let by_parent = EntryFilter {
        parent_id: Some(sid("spiffe://example.org/node/b")),
        ..Default::default()
    };
    assert_eq!(ids(ds.list_entries(&by_parent).await.unwrap()), ["c"]);
    let both = EntryFilter {
        spiffe_id: Some(sid("spiffe://example.org/web")),
        parent_id: Some(sid("spiffe://example.org/node/b")),
        tenant: None,
    };
    assert!(ds.list_entries(&both).await.unwrap().is_empty());

    assert_eq!(
        ds.delete_entry(&eid("a"), Box::new(|_| Vec::new()))
            .await
            .unwrap()
            .unwrap(),
        a
    );
    assert!(
        ds.delete_entry(&eid("a"), Box::new(|_| Vec::new()))
            .await
            .unwrap()
            .is_none()
    );
    assert!(ds.get_entry(&eid("a")).await.unwrap().is_none());
    // The deleted entry's identity is free again.
    ds.create_entry(&entry("a2", "spiffe://example.org/web", 1), &[])
        .await
        .unwrap();
}

/// Every change takes its audit records into its own transaction: a change that is
/// refused (conflict, lost compare-and-set, nothing to delete) appends nothing, and one that
/// applies appends exactly its records, deletions describing the row they removed.
async fn changes_commit_with_their_audit_records_or_not_at_all(b: &dyn Backend) {
    let ds = b.open().await;
    let kinds = |ds: &Arc<dyn Datastore>| {
        let ds = Arc::clone(ds);
        async move {
            ds.list_audit(None, None)
                .await
                .unwrap()
                .into_iter()
                .map(|r| format!("{} {}", r.event.kind, r.event.subject))
                .collect::<Vec<_>>()
        }
    };
    let a = entry("a", "spiffe://example.org/web", 1);
    ds.create_entry(&a, &[event("entry.created", "a", None)])
        .await
        .unwrap();
    let dup = entry("a2", "spiffe://example.org/web", 1);
    let r = ds
        .create_entry(&dup, &[event("entry.created", "a2", None)])
        .await;
    assert!(is_entry_conflict(&r), "{r:?}");
    let r = ds
        .update_entry(
            &entry("zzz", "spiffe://example.org/z", 9),
            &[event("entry.updated", "zzz", None)],
        )
        .await;
    assert!(matches!(r, Err(DatastoreError::NotFound(_))), "{r:?}");
    let gone = ds
        .delete_entry(
            &eid("nope"),
            Box::new(|e| vec![event("entry.deleted", e.id.as_str(), None)]),
        )
        .await
        .unwrap();
    assert!(gone.is_none());
    assert_eq!(kinds(&ds).await, ["entry.created a"]);
    let deleted = ds
        .delete_entry(
            &eid("a"),
            Box::new(|e| vec![event("entry.deleted", e.spiffe_id.as_str(), None)]),
        )
        .await
        .unwrap();
    assert_eq!(deleted, Some(a.clone()));

    let t = TenantRecord {
        name: "acme".into(),
        path_prefixes: vec!["/acme".into()],
        admin_users: vec![],
        admin_groups: vec![],
        max_entries: None,
        max_open_tasks: None,
        max_parallel_tasks_per_entry: None,
        review_every: None,
        created_at: 1_700_000_000,
        revision: 1,
        policy: None,
    };
    ds.create_tenant(&t, &[event("tenant.created", "acme", None)])
        .await
        .unwrap();
    let r = ds
        .create_tenant(&t, &[event("tenant.created", "acme-again", None)])
        .await;
    assert!(matches!(r, Err(DatastoreError::Conflict(_))), "{r:?}");
    // A stale revision: lost compare-and-set, no record.
    let stale = TenantRecord {
        revision: 5,
        ..t.clone()
    };
    let applied = ds
        .update_tenant(&stale, &[event("tenant.updated", "stale", None)])
        .await
        .unwrap();
    assert!(!applied);
    let d = DomainRecord {
        domain: "acme.example".into(),
        tenant: "acme".into(),
        challenge: "c".into(),
        added_at: 1_700_000_000,
        verified_at: None,
        checked_at: None,
        failing_since: None,
        last_error: None,
    };
    ds.put_domain(&d, &[event("domain.added", "acme.example", None)])
        .await
        .unwrap();
    // The tenant still owns the domain: refused, no record.
    let r = ds
        .delete_tenant(
            "acme",
            Box::new(|t| vec![event("tenant.deleted", &t.name, None)]),
        )
        .await;
    assert!(matches!(r, Err(DatastoreError::Conflict(_))), "{r:?}");
    let removed = ds
        .delete_domain(
            "acme.example",
            Box::new(|d| vec![event("domain.removed", &d.domain, None)]),
        )
        .await
        .unwrap();
    assert_eq!(removed, Some(d));
    ds.delete_tenant(
        "acme",
        Box::new(|t| vec![event("tenant.deleted", &t.name, None)]),
    )
    .await
    .unwrap()
    .unwrap();

    let node = sid("spiffe://example.org/node/n");
    ds.create_join_token("h1", &node, 2_000_000_000, &[event("token", "h1", None)])
        .await
        .unwrap();
    let r = ds
        .create_join_token(
            "h1",
            &node,
            2_000_000_000,
            &[event("token", "h1-again", None)],
        )
        .await;
    assert!(matches!(r, Err(DatastoreError::Conflict(_))), "{r:?}");
    let agent = AgentRecord {
        spiffe_id: node.clone(),
        serial: "01".into(),
        previous_serial: None,
        expires_at: 2_000_000_000,
        attested_at: 1_700_000_000,
        banned: false,
        attestation_type: "join_token".into(),
        selectors: BTreeSet::new(),
    };
    assert!(
        ds.attest_agent(&agent, &[event("attested", "01", None)])
            .await
            .unwrap()
    );
    // A renewal against a serial that is no longer current: nothing, no record.
    let renewed = ds
        .renew_agent(
            &node,
            "ff",
            "02",
            2_000_000_000,
            &[event("renewed", "ff", None)],
        )
        .await
        .unwrap();
    assert!(!renewed);
    assert!(
        ds.ban_agent(&node, &[event("banned", "n", None)])
            .await
            .unwrap()
            .is_some()
    );
    // A banned agent's attestation is refused: nothing, no record.
    assert!(
        !ds.attest_agent(&agent, &[event("attested", "again", None)])
            .await
            .unwrap()
    );
    let unknown = sid("spiffe://example.org/node/unknown");
    assert!(
        ds.ban_agent(&unknown, &[event("banned", "unknown", None)])
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ds.delete_agent(&unknown, &[event("evicted", "unknown", None)])
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ds.delete_agent(&node, &[event("evicted", "n", None)])
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        kinds(&ds).await,
        [
            "entry.created a",
            "entry.deleted spiffe://example.org/web",
            "tenant.created acme",
            "domain.added acme.example",
            "domain.removed acme.example",
            "tenant.deleted acme",
            "token h1",
            "attested 01",
            "banned n",
            "evicted n",
        ]
    );
    let records = ds.list_audit(None, None).await.unwrap();
    verify(&records).unwrap();
}

async fn join_tokens_are_single_use_under_concurrency(b: &dyn Backend) {
    // Two stores on one database: two servers.
    let servers = [b.open().await, b.open().await];
    const TOKENS: usize = 25;
    const CONSUMERS: usize = 4;
    const NOW: i64 = 1000;
    let node = |i: usize| format!("spiffe://example.org/node/t{i}");
    for i in 0..TOKENS {
        servers[0]
            .create_join_token(
                &format!("hash-{i}"),
                &sid(&node(i)),
                NOW + 1 + i as i64,
                &[],
            )
            .await
            .unwrap();
    }
    // Same hash again: refused (it is the primary key).
    assert!(matches!(
        servers[1]
            .create_join_token("hash-0", &sid(&node(0)), 1, &[])
            .await,
        Err(DatastoreError::Conflict(_))
    ));
    assert_eq!(
        servers[1].get_join_token("hash-3").await.unwrap(),
        Some(ConsumedToken {
            spiffe_id: sid(&node(3)),
            expires_at: NOW + 4
        })
    );
    let audited_before = servers[0].list_audit(None, None).await.unwrap().len();
    // Every token presented by several consumers at once, alternating between the stores;
    // each consumer would store the agent with its own serial and audit record.
    let mut handles = Vec::new();
    for i in 0..TOKENS {
        for k in 0..CONSUMERS {
            let ds = Arc::clone(&servers[k % 2]);
            let record = agent(&node(i), &format!("{i:02x}{k:02x}"));
            handles.push(tokio::spawn(async move {
                let audit = [event("attested", &format!("t{i} by {k}"), None)];
                let got = ds
                    .attest_agent_with_token(&format!("hash-{i}"), NOW, &record, &audit)
                    .await
                    .unwrap();
                (i, k, got)
            }));
        }
    }
    let mut winners: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for h in handles {
        let (i, k, got) = h.await.unwrap();
        match got {
            TokenAttestation::Attested => winners.entry(i).or_default().push(k),
            TokenAttestation::TokenGone => {}
            TokenAttestation::Banned => panic!("no agent is banned"),
        }
    }
    assert_eq!(winners.len(), TOKENS, "every token consumed: {winners:?}");
    assert!(
        winners.values().all(|w| w.len() == 1),
        "exactly one consumer per token: {winners:?}"
    );
    // The winner's agent record and audit record were stored, nobody else's.
    let audit = servers[1].list_audit(None, None).await.unwrap();
    let attested: Vec<&str> = audit[audited_before..]
        .iter()
        .map(|r| r.event.subject.as_str())
        .collect();
    assert_eq!(attested.len(), TOKENS, "{attested:?}");
    for (i, w) in &winners {
        let stored = servers[0]
            .get_agent(&sid(&node(*i)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.serial, format!("{i:02x}{:02x}", w[0]));
        let subject = format!("t{i} by {}", w[0]);
        assert_eq!(
            attested.iter().filter(|s| **s == subject).count(),
            1,
            "{attested:?}"
        );
        assert_eq!(
            servers[i % 2]
                .get_join_token(&format!("hash-{i}"))
                .await
                .unwrap(),
            None
        );
    }
    verify(&audit).unwrap();
    assert_eq!(servers[0].get_join_token("unknown").await.unwrap(), None);

    // Expired, or granting another SPIFFE ID: nothing changes, the token stays.
    let late = sid("spiffe://example.org/node/late");
    servers[0]
        .create_join_token("hash-late", &late, NOW, &[])
        .await
        .unwrap();
    let other = agent("spiffe://example.org/node/other", "0c");
    for (hash, record) in [
        ("hash-late", agent(late.as_str(), "0a")),
        ("hash-late", other.clone()),
        ("unknown", other),
    ] {
        assert_eq!(
            servers[1]
                .attest_agent_with_token(hash, NOW, &record, &[event("attested", "no", None)])
                .await
                .unwrap(),
            TokenAttestation::TokenGone,
            "{hash}"
        );
    }
    assert!(
        servers[0]
            .get_join_token("hash-late")
            .await
            .unwrap()
            .is_some()
    );
    assert!(servers[0].get_agent(&late).await.unwrap().is_none());

    // A banned agent: refused, nothing changes, the token stays.
    let banned = sid("spiffe://example.org/node/banned");
    assert!(
        servers[0]
            .attest_agent(&agent(banned.as_str(), "01"), &[])
            .await
            .unwrap()
    );
    servers[0].ban_agent(&banned, &[]).await.unwrap().unwrap();
    servers[0]
        .create_join_token("hash-banned", &banned, NOW + 100, &[])
        .await
        .unwrap();
    assert_eq!(
        servers[1]
            .attest_agent_with_token(
                "hash-banned",
                NOW,
                &agent(banned.as_str(), "02"),
                &[event("attested", "banned", None)]
            )
            .await
            .unwrap(),
        TokenAttestation::Banned
    );
    assert!(
        servers[0]
            .get_join_token("hash-banned")
            .await
            .unwrap()
            .is_some()
    );
    let record = servers[0].get_agent(&banned).await.unwrap().unwrap();
    assert!(record.banned && record.serial == "01", "{record:?}");
    assert_eq!(
        servers[0].list_audit(None, None).await.unwrap().len(),
        audit.len(),
        "no refused attestation left a record"
    );
}

async fn agents_attest_renew_ban(b: &dyn Backend) {
    let ds = b.open().await;
    let id = sid("spiffe://example.org/node/a");
    let record = agent(id.as_str(), "01");
    assert!(ds.attest_agent(&record, &[]).await.unwrap());
    assert_eq!(ds.get_agent(&id).await.unwrap().unwrap(), record);
    // Re-attestation of a known, unbanned agent replaces its record.
    let mut again = agent(id.as_str(), "0a");
    again.previous_serial = Some("01".into());
    assert!(ds.attest_agent(&again, &[]).await.unwrap());
    assert_eq!(ds.get_agent(&id).await.unwrap().unwrap(), again);
    // Compare-and-set renewal: a stale expected serial changes nothing.
    assert!(!ds.renew_agent(&id, "01", "02", 6, &[]).await.unwrap());
    assert!(ds.renew_agent(&id, "0a", "02", 6, &[]).await.unwrap());
    assert!(!ds.renew_agent(&id, "0a", "03", 7, &[]).await.unwrap());
    let got = ds.get_agent(&id).await.unwrap().unwrap();
    assert_eq!(
        (
            got.serial.as_str(),
            got.previous_serial.as_deref(),
            got.expires_at
        ),
        ("02", Some("0a"), 6)
    );
    let unknown = sid("spiffe://example.org/node/unknown");
    assert!(!ds.renew_agent(&unknown, "", "01", 1, &[]).await.unwrap());
    assert!(ds.ban_agent(&unknown, &[]).await.unwrap().is_none());
    assert!(ds.get_agent(&unknown).await.unwrap().is_none());

    let mut second = agent("spiffe://example.org/node/b", "b1");
    second.attested_at = 1;
    assert!(ds.attest_agent(&second, &[]).await.unwrap());
    let listed: Vec<String> = ds
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.spiffe_id.to_string())
        .collect();
    assert_eq!(
        listed,
        ["spiffe://example.org/node/b", "spiffe://example.org/node/a"]
    );

    // A banned agent cannot renew or attest again until its record is deleted.
    let banned = ds.ban_agent(&id, &[]).await.unwrap().unwrap();
    assert!(banned.banned);
    assert_eq!(banned.serial, "02");
    assert!(!ds.renew_agent(&id, "02", "03", 8, &[]).await.unwrap());
    assert!(!ds.attest_agent(&record, &[]).await.unwrap());
    assert_eq!(ds.get_agent(&id).await.unwrap().unwrap(), banned);
    assert_eq!(ds.delete_agent(&id, &[]).await.unwrap().unwrap(), banned);
    assert!(ds.delete_agent(&id, &[]).await.unwrap().is_none());
    assert!(ds.attest_agent(&record, &[]).await.unwrap());
    assert!(!ds.get_agent(&id).await.unwrap().unwrap().banned);
}

/// An agent's node selectors are stored with each attestation (a re-attestation replaces
/// them, a join-token agent has none) and a node entry keeps its flag and node selectors,
/// also through an update; it is found under the server's ID like any parent.
async fn node_selectors_and_node_entries_round_trip(b: &dyn Backend) {
    let ds = b.open().await;
    let cn = |v: &str| common::NodeSelector::from_str(&format!("x509pop:subject:cn:{v}")).unwrap();
    let fp = common::NodeSelector::from_str(&format!("x509pop:ca:fingerprint:{}", "ab".repeat(32)))
        .unwrap();
    let id = sid("spiffe://example.org/tessera/agent/x509pop/a");
    let mut record = agent(id.as_str(), "01");
    record.attestation_type = "x509pop".into();
    record.selectors = [cn("web1"), fp.clone()].into();
    assert!(ds.attest_agent(&record, &[]).await.unwrap());
    let got = ds.get_agent(&id).await.unwrap().unwrap();
    assert_eq!(got, record);
    assert_eq!(
        got.selectors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            format!("x509pop:ca:fingerprint:{}", "ab".repeat(32)),
            "x509pop:subject:cn:web1".to_owned()
        ]
    );
    // Re-attested with another certificate: the new selectors replace the old.
    let mut again = agent(id.as_str(), "02");
    again.attestation_type = "x509pop".into();
    again.selectors = [cn("web2")].into();
    assert!(ds.attest_agent(&again, &[]).await.unwrap());
    assert_eq!(
        ds.get_agent(&id).await.unwrap().unwrap().selectors,
        again.selectors
    );
    assert_eq!(ds.list_agents().await.unwrap(), vec![again]);
    // A join-token agent has none.
    let token = agent("spiffe://example.org/node/t", "t1");
    assert!(ds.attest_agent(&token, &[]).await.unwrap());
    assert!(
        ds.get_agent(&token.spiffe_id)
            .await
            .unwrap()
            .unwrap()
            .selectors
            .is_empty()
    );

    let server = sid("spiffe://example.org/tessera/server");
    let mut group = entry("node-1", "spiffe://example.org/group/web", 0);
    group.parent_id = server.clone();
    group.selectors = SelectorSet::new();
    group.dns_names = Vec::new();
    group.node_selectors = Some([cn("web1"), fp].into());
    ds.create_entry(&group, &[]).await.unwrap();
    let workload = entry("wl-1", "spiffe://example.org/web", 0);
    ds.create_entry(&workload, &[]).await.unwrap();
    assert_eq!(ds.get_entry(&group.id).await.unwrap().unwrap(), group);
    assert!(!ds.get_entry(&workload.id).await.unwrap().unwrap().is_node());
    let under_server = ds
        .list_entries(&EntryFilter {
            parent_id: Some(server),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(under_server, vec![group.clone()]);
    // The same SPIFFE ID and node selectors again is a duplicate, as for any entry.
    let mut dup = group.clone();
    dup.id = eid("node-2");
    let r = ds.create_entry(&dup, &[]).await;
    assert!(matches!(r, Err(DatastoreError::Conflict(_))), "{r:?}");
    let mut updated = group.clone();
    updated.revision = 2;
    updated.node_selectors = Some([cn("web2")].into());
    ds.update_entry(&updated, &[]).await.unwrap();
    assert_eq!(ds.get_entry(&group.id).await.unwrap().unwrap(), updated);
}

async fn a_ban_is_never_undone_by_a_concurrent_attestation(b: &dyn Backend) {
    let servers = [b.open().await, b.open().await];
    for round in 0..20 {
        let id = format!("spiffe://example.org/node/r{round}");
        assert!(
            servers[0]
                .attest_agent(&agent(&id, "00"), &[])
                .await
                .unwrap()
        );
        let attester = {
            let ds = Arc::clone(&servers[0]);
            let id = id.clone();
            tokio::spawn(async move {
                let mut applied = Vec::new();
                for i in 0..10 {
                    applied.push(
                        ds.attest_agent(&agent(&id, &format!("{i:02}")), &[])
                            .await
                            .unwrap(),
                    );
                }
                applied
            })
        };
        let banner = {
            let ds = Arc::clone(&servers[1]);
            let id = sid(&id);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(200 * round)).await;
                ds.ban_agent(&id, &[]).await.unwrap()
            })
        };
        let applied = attester.await.unwrap();
        assert!(banner.await.unwrap().unwrap().banned);
        let stored = servers[0].get_agent(&sid(&id)).await.unwrap().unwrap();
        assert!(stored.banned, "round {round}: the ban was undone");
        // Once one attestation was refused (the ban landed), none after it applied.
        if let Some(first_refused) = applied.iter().position(|a| !a) {
            assert!(
                applied[first_refused..].iter().all(|a| !a),
                "round {round}: {applied:?}"
            );
        }
        assert!(
            !servers[1]
                .attest_agent(&agent(&id, "ff"), &[])
                .await
                .unwrap()
        );
    }
}

async fn audit_chain_stays_gap_free_under_concurrent_appends(b: &dyn Backend) {
    let servers = [b.open().await, b.open().await];
    const WORKERS: usize = 8;
    const ROUNDS: usize = 25;
    const TASK_WORKERS: usize = 2;
    let started = tokio::time::Instant::now();
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let ds = Arc::clone(&servers[w % 2]);
        handles.push(tokio::spawn(async move {
            let mut n = 0;
            for r in 0..ROUNDS {
                let batch: Vec<AuditEvent> = (0..=(r % 3))
                    .map(|k| event("test.append", &format!("w{w}-r{r}-k{k}"), None))
                    .collect();
                let stored = ds.append_audit(&batch).await.unwrap();
                assert_eq!(stored.len(), batch.len());
                // A batch is contiguous and in order.
                for (i, rec) in stored.iter().enumerate() {
                    assert_eq!(rec.seq, stored[0].seq + i as i64);
                    assert_eq!(rec.event, batch[i]);
                }
                n += batch.len();
            }
            n
        }));
    }
    // Task changes append in the same transactions, interleaved with the above.
    for w in 0..TASK_WORKERS {
        let ds = Arc::clone(&servers[(w + 1) % 2]);
        handles.push(tokio::spawn(async move {
            let mut n = 0;
            for r in 0..ROUNDS / 5 {
                let e = entry(&format!("tw{w}-{r}"), "spiffe://example.org/t", 0);
                let t = task(&format!("task-{w}-{r}"), &e, TaskState::Active, 10);
                ds.create_task(
                    &t,
                    None,
                    &[
                        event("task.requested", t.id.as_str(), Some(t.id.as_str())),
                        event("task.activated", t.id.as_str(), Some(t.id.as_str())),
                    ],
                )
                .await
                .unwrap();
                let done = ended(&t, TaskState::Completed, 11, "done");
                assert!(
                    ds.update_task(
                        &done,
                        &[TaskState::Active],
                        &[event("task.completed", t.id.as_str(), Some(t.id.as_str()))]
                    )
                    .await
                    .unwrap()
                );
                n += 3;
            }
            n
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    let elapsed = started.elapsed();
    let log = servers[0].list_audit(None, None).await.unwrap();
    assert_eq!(verify(&log), Ok(total), "the chain verifies end to end");
    assert_eq!(log.len(), total);
    assert_eq!(
        log.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=total as i64).collect::<Vec<_>>(),
        "no gaps"
    );
    // Every event exactly once, and each worker's in the order it appended them.
    let subjects: Vec<&str> = log
        .iter()
        .filter(|r| r.event.kind == "test.append")
        .map(|r| r.event.subject.as_str())
        .collect();
    assert_eq!(
        subjects.iter().collect::<BTreeSet<_>>().len(),
        subjects.len()
    );
    for w in 0..WORKERS {
        let mine: Vec<&str> = subjects
            .iter()
            .copied()
            .filter(|s| s.starts_with(&format!("w{w}-")))
            .collect();
        let expected: Vec<String> = (0..ROUNDS)
            .flat_map(|r| (0..=(r % 3)).map(move |k| format!("w{w}-r{r}-k{k}")))
            .collect();
        assert_eq!(mine, expected);
    }
    let one = servers[1]
        .list_audit(Some(&tid("task-1-2")), None)
        .await
        .unwrap();
    assert_eq!(
        one.iter()
            .map(|r| r.event.kind.as_str())
            .collect::<Vec<_>>(),
        ["task.requested", "task.activated", "task.completed"]
    );
    println!(
        "audit: {total} records in {} transactions from {} workers on 2 datastore objects in {:.0} ms: {:.0} records/s",
        WORKERS * ROUNDS + TASK_WORKERS * (ROUNDS / 5) * 2,
        WORKERS + TASK_WORKERS,
        elapsed.as_secs_f64() * 1000.0,
        total as f64 / elapsed.as_secs_f64()
    );
}

/// The newest records deleted under a running server, or under one that restarts knowing
/// only a checkpoint: the next record takes a new number, after the highest head known.
async fn audit_numbers_are_never_reused_after_a_deletion(b: &(impl Backend + Under)) {
    let ds = b.open().await;
    let first = ds
        .append_audit(&[
            event("a", "1", None),
            event("b", "2", None),
            event("c", "3", None),
        ])
        .await
        .unwrap();
    let head = |r: &crate::audit::AuditRecord| ChainHead {
        seq: r.seq,
        hash: r.hash.clone(),
    };
    assert_eq!(ds.audit_head().await.unwrap(), Some(head(&first[2])));
    assert_eq!(ds.audit_record(2).await.unwrap().as_ref(), Some(&first[1]));
    assert_eq!(ds.audit_record(9).await.unwrap(), None);
    assert_eq!(*ds.audit_heads().borrow(), Some(head(&first[2])));

    b.script("DELETE FROM audit_log WHERE seq >= 2").await;
    assert_eq!(ds.audit_head().await.unwrap(), Some(head(&first[0])));
    let next = ds.append_audit(&[event("d", "4", None)]).await.unwrap();
    assert_eq!(next[0].seq, 4, "record 2's number must not be used again");
    assert_eq!(next[0].prev_hash, first[2].hash);
    assert_eq!(*ds.audit_heads().borrow(), Some(head(&next[0])));

    // Another server object (a restart) that knows record 4 only from a checkpoint.
    let restarted = b.open().await;
    b.script("DELETE FROM audit_log WHERE seq >= 2").await;
    restarted.anchor_audit(head(&next[0]));
    // A lower head never lowers the floor.
    restarted.anchor_audit(head(&first[0]));
    let more = restarted
        .append_audit(&[event("e", "5", None), event("f", "6", None)])
        .await
        .unwrap();
    assert_eq!(
        more.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [5, 6],
        "records 2 to 4 were deleted: their numbers stay unused"
    );
    assert_eq!(more[0].prev_hash, next[0].hash);
    let log = restarted.list_audit(None, None).await.unwrap();
    assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 5, 6]);
    // Without deletions, the stored head is followed as before (another server appended).
    let again = ds.append_audit(&[event("g", "7", None)]).await.unwrap();
    assert_eq!(again[0].seq, 7);
    assert_eq!(again[0].prev_hash, more[1].hash);
}

async fn tasks_lifecycle(b: &dyn Backend) {
    let ds = b.open().await;
    let mut e = entry("e", "spiffe://example.org/jit/db", 0);
    e.jit = true;
    ds.create_entry(&e, &[]).await.unwrap();

    let mut t1 = task("t1", &e, TaskState::PendingApproval, 5000);
    t1.status = Some(
        ds.create_task(&t1, None, &[event("task.requested", "t1", Some("t1"))])
            .await
            .unwrap(),
    );
    assert_eq!(ds.get_task(&tid("t1")).await.unwrap().unwrap(), t1);
    assert_eq!(
        ds.open_tasks_for_entry(&eid("e")).await.unwrap().remove(0),
        t1
    );
    assert_eq!(ds.list_audit(None, None).await.unwrap().len(), 1);

    // One open task per entry and holder; the refused task and its audit records are not
    // stored.
    let mut t2 = task("t2", &e, TaskState::Active, 5000);
    let r = ds
        .create_task(&t2, None, &[event("task.requested", "t2", Some("t2"))])
        .await;
    assert!(
        matches!(&r, Err(DatastoreError::Conflict(m)) if m == "entry e already has an open task"),
        "{r:?}"
    );
    assert!(ds.get_task(&tid("t2")).await.unwrap().is_none());
    assert_eq!(ds.list_audit(None, None).await.unwrap().len(), 1);
    // Another holder's task may be open beside it (parallel tasks), and so may one bound
    // by selectors (the server keeps those alone on their entry; the datastore counts
    // them as one holder).
    let mut t3 = task("t3", &e, TaskState::Active, 5000);
    t3.binding = common::task::TaskBinding::Process(common::task::Holder {
        process: common::task::ProcessInstance {
            pid: 7,
            start_time: 9,
        },
        agent: e.parent_id.clone(),
    });
    let mut t4 = task("t4", &e, TaskState::Active, 5000);
    t4.binding = common::task::TaskBinding::Selectors;
    let mut t5 = task("t5", &e, TaskState::Active, 5000);
    t5.binding = common::task::TaskBinding::Selectors;
    for t in [&t3, &t4] {
        ds.create_task(t, None, &[]).await.unwrap();
    }
    assert!(matches!(
        ds.create_task(&t5, None, &[]).await,
        Err(DatastoreError::Conflict(_))
    ));
    let open: Vec<TaskId> = ds
        .open_tasks_for_entry(&eid("e"))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(open, [tid("t1"), tid("t3"), tid("t4")]);
    for t in [&t3, &t4] {
        let done = ended(t, TaskState::Cancelled, 1_700_000_050, "requester exited");
        assert!(
            ds.update_task(&done, &[TaskState::Active], &[])
                .await
                .unwrap()
        );
    }

    // Compare-and-set: from a state it is not in, nothing changes (nor is audited).
    let mut active = t1.clone();
    active.state = TaskState::Active;
    active.approver = Some("user:alice".into());
    active.approver_uid = Some(u32::MAX);
    active.activated_at = Some(1_700_000_100);
    let approved = [event("task.approved", "t1", Some("t1"))];
    assert!(
        !ds.update_task(&active, &[TaskState::Active], &approved)
            .await
            .unwrap()
    );
    assert_eq!(ds.get_task(&tid("t1")).await.unwrap().unwrap(), t1);
    assert_eq!(ds.list_audit(None, None).await.unwrap().len(), 1);
    assert!(
        ds.update_task(&active, &[TaskState::PendingApproval], &approved)
            .await
            .unwrap()
    );
    assert_eq!(ds.get_task(&tid("t1")).await.unwrap().unwrap(), active);
    assert_eq!(
        ds.list_tasks(Some(TaskState::Active)).await.unwrap(),
        vec![active.clone()]
    );
    assert!(
        ds.list_tasks(Some(TaskState::PendingApproval))
            .await
            .unwrap()
            .is_empty()
    );

    // Ending a task that did not provision its entry keeps the entry, and frees it for
    // the next task.
    let revoked = ended(
        &active,
        TaskState::Revoked,
        1_700_000_200,
        "suspected misuse",
    );
    assert!(
        ds.update_task(
            &revoked,
            &[TaskState::PendingApproval, TaskState::Active],
            &[event("task.revoked", "t1", Some("t1"))]
        )
        .await
        .unwrap()
    );
    assert!(ds.get_entry(&eid("e")).await.unwrap().is_some());
    assert!(ds.open_tasks_for_entry(&eid("e")).await.unwrap().is_empty());
    t2.status = Some(ds.create_task(&t2, None, &[]).await.unwrap());
    assert_eq!(
        ds.open_tasks_for_entry(&eid("e")).await.unwrap().remove(0),
        t2
    );

    // A provisioned entry is created with its task and deleted when the task ends.
    let p = entry("p", "spiffe://example.org/jit/tmp", 7);
    let mut tp = task("tp", &p, TaskState::Active, 5000);
    tp.provisioned = true;
    tp.status = Some(
        ds.create_task(&tp, Some(&p), &[event("task.requested", "tp", Some("tp"))])
            .await
            .unwrap(),
    );
    assert_eq!(ds.get_entry(&eid("p")).await.unwrap().unwrap(), p);
    // A provisioned entry duplicating another is refused with the entry conflict, and
    // nothing of the task is stored.
    let mut dup = entry("p-dup", "spiffe://example.org/jit/tmp", 7);
    dup.created_at = 5;
    let mut tdup = task("tdup", &dup, TaskState::Active, 5000);
    tdup.provisioned = true;
    let audit_before = ds.list_audit(None, None).await.unwrap().len();
    let r = ds
        .create_task(&tdup, Some(&dup), &[event("x", "tdup", Some("tdup"))])
        .await;
    assert!(is_entry_conflict(&r), "{r:?}");
    assert!(ds.get_task(&tid("tdup")).await.unwrap().is_none());
    assert!(ds.get_entry(&eid("p-dup")).await.unwrap().is_none());
    assert_eq!(ds.list_audit(None, None).await.unwrap().len(), audit_before);

    let tp_done = ended(&tp, TaskState::Completed, 1_700_000_300, "");
    assert!(
        ds.update_task(
            &tp_done,
            &[TaskState::Active],
            &[event("task.completed", "tp", Some("tp"))]
        )
        .await
        .unwrap()
    );
    assert!(
        ds.get_entry(&eid("p")).await.unwrap().is_none(),
        "provisioned entry deleted with its task"
    );
    assert_eq!(ds.get_task(&tid("tp")).await.unwrap().unwrap(), tp_done);

    let kinds =
        |v: Vec<crate::audit::AuditRecord>| v.into_iter().map(|r| r.event.kind).collect::<Vec<_>>();
    assert_eq!(
        kinds(ds.list_audit(Some(&tid("t1")), None).await.unwrap()),
        ["task.requested", "task.approved", "task.revoked"]
    );
    assert_eq!(
        kinds(ds.list_audit(Some(&tid("tp")), None).await.unwrap()),
        ["task.requested", "task.completed"]
    );
    let log = ds.list_audit(None, None).await.unwrap();
    assert_eq!(verify(&log), Ok(5));
    assert_eq!(
        ds.list_tasks(None)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>(),
        ["t1", "t2", "t3", "t4", "tp"]
    );
}

async fn break_glass_tasks_are_acknowledged_once(b: &dyn Backend) {
    let ds = b.open().await;
    let mut e = entry("bg", "spiffe://example.org/jit/bg", 0);
    e.jit = true;
    ds.create_entry(&e, &[]).await.unwrap();
    let mut t = task("tbg", &e, TaskState::Active, 5000);
    t.break_glass = true;
    t.status = Some(ds.create_task(&t, None, &[]).await.unwrap());
    let stored = ds.get_task(&tid("tbg")).await.unwrap().unwrap();
    assert_eq!(stored, t);
    assert!(stored.awaits_review());
    // A task that is not break-glass cannot be acknowledged, and nothing is audited.
    let plain = task("tplain", &e, TaskState::Completed, 5000);
    ds.create_task(&plain, None, &[]).await.unwrap();
    let ack = Acknowledgement {
        by: "user:ünï \"q\"".into(),
        uid: u32::MAX,
        at: 1_700_000_500,
        note: "reviewed: INC-7 ünïcode \"q\"".into(),
    };
    let audited = |n: &str| [event("task.acknowledged", n, Some(n))];
    assert!(
        !ds.acknowledge_task(&tid("tplain"), &ack, &audited("tplain"))
            .await
            .unwrap()
    );
    assert!(
        !ds.acknowledge_task(&tid("missing"), &ack, &audited("missing"))
            .await
            .unwrap()
    );
    assert!(ds.list_audit(None, None).await.unwrap().is_empty());
    // Ending it keeps it flagged; the acknowledgement is recorded once, with its record,
    // and survives a later update of the task made from a copy read before it.
    let done = ended(&t, TaskState::Completed, 1_700_000_100, "fixed");
    assert!(
        ds.update_task(&done, &[TaskState::Active], &[])
            .await
            .unwrap()
    );
    assert!(
        ds.get_task(&tid("tbg"))
            .await
            .unwrap()
            .unwrap()
            .awaits_review()
    );
    assert!(
        ds.acknowledge_task(&tid("tbg"), &ack, &audited("tbg"))
            .await
            .unwrap()
    );
    let got = ds.get_task(&tid("tbg")).await.unwrap().unwrap();
    assert_eq!(got.acknowledgement.as_ref(), Some(&ack));
    assert!(!got.awaits_review() && got.break_glass);
    let again = Acknowledgement {
        by: "user:other".into(),
        ..ack.clone()
    };
    assert!(
        !ds.acknowledge_task(&tid("tbg"), &again, &audited("tbg"))
            .await
            .unwrap()
    );
    assert_eq!(
        ds.get_task(&tid("tbg"))
            .await
            .unwrap()
            .unwrap()
            .acknowledgement,
        Some(ack.clone())
    );
    assert_eq!(ds.list_audit(None, None).await.unwrap().len(), 1);
    let stale = ended(&done, TaskState::Revoked, 1_700_000_600, "late");
    assert!(
        ds.update_task(&stale, &[TaskState::Completed], &[])
            .await
            .unwrap()
    );
    let got = ds.get_task(&tid("tbg")).await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::Revoked);
    assert_eq!(
        got.acknowledgement,
        Some(ack),
        "an update never undoes a review"
    );
}

/// Runs every attempt at once, attempt k through `servers[k % 2]` (two connections, as two
/// servers sharing the database would), each a compare-and-set that `apply` reports as
/// applied or not; returns the attempts that applied, in their order.
async fn race_compare_and_set<T, F, Fut>(
    servers: &[Arc<dyn Datastore>; 2],
    attempts: Vec<T>,
    apply: F,
) -> Vec<T>
where
    T: Clone + Send + 'static,
    F: Fn(Arc<dyn Datastore>, T) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let handles: Vec<_> = attempts
        .iter()
        .enumerate()
        .map(|(k, attempt)| tokio::spawn(apply(Arc::clone(&servers[k % 2]), attempt.clone())))
        .collect();
    let mut winners = Vec::new();
    for (handle, attempt) in handles.into_iter().zip(attempts) {
        if handle.await.unwrap() {
            winners.push(attempt);
        }
    }
    winners
}

async fn tasks_compare_and_set_under_concurrency(b: &dyn Backend) {
    let servers = [b.open().await, b.open().await];
    for round in 0..10 {
        let e = entry(&format!("e{round}"), "spiffe://example.org/jit/c", round);
        let mut t = task(&format!("t{round}"), &e, TaskState::Active, 5000);
        t.provisioned = true;
        t.status = Some(servers[0].create_task(&t, Some(&e), &[]).await.unwrap());
        let ends = [TaskState::Revoked, TaskState::Expired, TaskState::Completed]
            .into_iter()
            .enumerate()
            .map(|(k, state)| ended(&t, state, 12, &format!("by {k}")))
            .collect();
        let winners = race_compare_and_set(&servers, ends, |ds, end| async move {
            let audit = [event("task.ended", end.id.as_str(), Some(end.id.as_str()))];
            ds.update_task(&end, &[TaskState::Active], &audit)
                .await
                .unwrap()
        })
        .await;
        assert_eq!(winners.len(), 1, "round {round}: exactly one transition");
        assert_eq!(
            servers[1].get_task(&t.id).await.unwrap().unwrap(),
            winners[0]
        );
        assert!(servers[1].get_entry(&e.id).await.unwrap().is_none());
        assert_eq!(
            servers[0]
                .list_audit(Some(&t.id), None)
                .await
                .unwrap()
                .len(),
            1
        );
    }
    assert_eq!(
        verify(&servers[0].list_audit(None, None).await.unwrap()),
        Ok(10)
    );
}

async fn entry_compare_and_set_applies_once(b: &dyn Backend) {
    let servers = [b.open().await, b.open().await];
    let e = entry("cas", "spiffe://example.org/cas", 1);
    servers[0].create_entry(&e, &[]).await.unwrap();
    let mut next = e.clone();
    next.revision = 2;
    next.hint = "second".into();
    let audit = [event("entry.updated", "cas", None)];
    assert!(
        servers[1]
            .update_entry_if_unchanged(&next, &audit)
            .await
            .unwrap()
    );
    // The same change again: the stored revision is 2 now, nothing applies, no record.
    let mut stale = e.clone();
    stale.revision = 2;
    stale.hint = "stale".into();
    assert!(
        !servers[0]
            .update_entry_if_unchanged(&stale, &audit)
            .await
            .unwrap()
    );
    assert_eq!(servers[0].get_entry(&e.id).await.unwrap().unwrap(), next);
    assert_eq!(servers[0].list_audit(None, None).await.unwrap().len(), 1);
    // A missing entry: nothing applies.
    let mut gone = entry("gone", "spiffe://example.org/gone", 1);
    gone.revision = 2;
    assert!(
        !servers[0]
            .update_entry_if_unchanged(&gone, &audit)
            .await
            .unwrap()
    );
    assert!(servers[0].get_entry(&gone.id).await.unwrap().is_none());
    // A duplicate of another entry is still a conflict.
    let other = entry("other", "spiffe://example.org/other", 2);
    servers[0].create_entry(&other, &[]).await.unwrap();
    let mut dup = other.clone();
    dup.id = e.id.clone();
    dup.revision = 3;
    assert!(matches!(
        servers[1].update_entry_if_unchanged(&dup, &audit).await,
        Err(DatastoreError::Conflict(m)) if m == ENTRY_CONFLICT
    ));
    assert_eq!(servers[0].list_audit(None, None).await.unwrap().len(), 1);
}

/// Every server runs the lapse schedule (`Registrar::disable_lapsed`): each reads the
/// lapsed entries and disables each with a compare-and-set on its revision. Two servers
/// at it at the same moment disable each entry once, with one record (and, on
/// PostgreSQL, one change on the feed); the other skips it.
async fn lapsed_entries_are_disabled_once_across_servers(b: &(impl Backend + Under)) {
    const ENTRIES: usize = 12;
    let servers = [b.open().await, b.open().await];
    let now = 1_800_000_000;
    let mut ids = Vec::new();
    for round in 0..3 {
        for i in 0..ENTRIES {
            let n = round * ENTRIES + i;
            let mut e = entry(
                &format!("lapsed{n}"),
                &format!("spiffe://example.org/l{n}"),
                1,
            );
            // Half expire, half have their review lapse (created long ago, never
            // certified); one more is neither.
            if i % 2 == 0 {
                e.governance.expires_at = Some(now - 1);
            }
            servers[0].create_entry(&e, &[]).await.unwrap();
            ids.push(e.id);
        }
        let mut fresh = entry(
            &format!("fresh{round}"),
            "spiffe://example.org/fresh",
            round as u32,
        );
        fresh.created_at = now;
        fresh.governance.expires_at = None;
        servers[0].create_entry(&fresh, &[]).await.unwrap();
        // Both servers, twice each, at the same moment: read, then compare-and-set.
        let mut handles = Vec::new();
        for k in 0..4 {
            let ds = Arc::clone(&servers[k % 2]);
            handles.push(tokio::spawn(async move {
                let mut applied = Vec::new();
                for e in ds.lapsed_entries(now).await.unwrap() {
                    let mut next = e.clone();
                    next.revision += 1;
                    next.governance.disabled = Some(common::entry::Disabled {
                        at: now,
                        reason: format!("by {k}"),
                    });
                    let audit = [event("entry.disabled", e.id.as_str(), None)];
                    if ds.update_entry_if_unchanged(&next, &audit).await.unwrap() {
                        applied.push(next);
                    }
                }
                applied
            }));
        }
        let mut disabled = Vec::new();
        for h in handles {
            disabled.extend(h.await.unwrap());
        }
        assert_eq!(
            disabled.len(),
            ENTRIES,
            "round {round}: each entry disabled once"
        );
        for d in &disabled {
            assert_eq!(&servers[1].get_entry(&d.id).await.unwrap().unwrap(), d);
        }
        assert!(servers[1].lapsed_entries(now).await.unwrap().is_empty());
    }
    let records = servers[0].list_audit(None, None).await.unwrap();
    let mut per_entry = BTreeMap::new();
    for r in &records {
        assert_eq!(r.event.kind, "entry.disabled");
        *per_entry.entry(r.event.subject.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_entry.len(), ids.len(), "{per_entry:?}");
    assert!(per_entry.values().all(|&n| n == 1), "{per_entry:?}");
    assert_eq!(verify(&records), Ok(ids.len()));
    for id in &ids {
        let e = servers[1].get_entry(id).await.unwrap().unwrap();
        assert_eq!(e.revision, 2, "{id}: one change");
    }
    // PostgreSQL's feed has one change per create and one per disable; SQLite has no feed.
    let changes = b
        .texts("SELECT CAST(count(*) AS TEXT) AS t FROM changes WHERE kind = 'entry'")
        .await;
    let changes: usize = changes[0].parse().unwrap();
    let created = ids.len() + 3;
    assert!(
        changes == 0 || changes == created + ids.len(),
        "{changes} changes for {created} entries created and {} disabled",
        ids.len()
    );
}

/// Every server re-checks verified domains: of two checks that read the same state, one
/// records its outcome (and its change of state, once).
async fn domain_checks_are_recorded_once_across_servers(b: &dyn Backend) {
    let servers = [b.open().await, b.open().await];
    let t = TenantRecord {
        name: "acme".into(),
        path_prefixes: vec!["/acme".into()],
        admin_users: vec![],
        admin_groups: vec![],
        max_entries: None,
        max_open_tasks: None,
        max_parallel_tasks_per_entry: None,
        review_every: None,
        created_at: 1_700_000_000,
        revision: 1,
        policy: None,
    };
    servers[0].create_tenant(&t, &[]).await.unwrap();
    let d = DomainRecord {
        domain: "acme.example".into(),
        tenant: "acme".into(),
        challenge: "c".into(),
        added_at: 1_700_000_000,
        verified_at: None,
        checked_at: None,
        failing_since: None,
        last_error: None,
    };
    servers[0].put_domain(&d, &[]).await.unwrap();
    let mut checked = d.clone();
    checked.verified_at = Some(1_700_000_100);
    checked.checked_at = Some(1_700_000_100);
    // Never checked before (NULL), first check wins.
    assert!(
        servers[1]
            .record_domain_check(
                &checked,
                None,
                &[event("domain.verified", "acme.example", None)]
            )
            .await
            .unwrap()
    );
    // Both servers re-check at once from the same state: one records it.
    let attempts = (0..6)
        .map(|k| {
            let mut failing = checked.clone();
            failing.checked_at = Some(1_700_000_200 + k);
            failing.failing_since = failing.checked_at;
            failing.last_error = Some(format!("check {k}"));
            failing
        })
        .collect();
    let winners = race_compare_and_set(&servers, attempts, |ds, failing| async move {
        let audit = [event("domain.failing", "acme.example", None)];
        ds.record_domain_check(&failing, Some(1_700_000_100), &audit)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        servers[0]
            .get_domain("acme.example")
            .await
            .unwrap()
            .unwrap(),
        winners[0]
    );
    let kinds: Vec<String> = servers[0]
        .list_audit(None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event.kind)
        .collect();
    assert_eq!(kinds, ["domain.verified", "domain.failing"]);
    // Another claim (a different challenge): nothing applies.
    let mut other = winners[0].clone();
    other.challenge = "other".into();
    let previous = other.checked_at;
    other.checked_at = Some(1_700_000_300);
    assert!(
        !servers[0]
            .record_domain_check(&other, previous, &[])
            .await
            .unwrap()
    );
}

/// SET push: one server at a time holds a receiver's lease and moves its cursor, with the
/// delivery's record; the others wait for the lease to be given up or run out.
async fn set_push_receivers_are_held_by_one_server_at_a_time(b: &dyn Backend) {
    const RX: &str = "https://rx.example.org/events";
    let servers = [b.open().await, b.open().await];
    // Both servers ask for a new receiver at once, many times: one holds it.
    let mut handles = Vec::new();
    for k in 0..8 {
        let ds = Arc::clone(&servers[k % 2]);
        let holder = format!("server-{}", k % 2);
        handles.push(tokio::spawn(async move {
            let got = ds
                .claim_set_receiver(RX, &holder, 5, 1_000, 21_000)
                .await
                .unwrap();
            (holder, got)
        }));
    }
    let mut holders = BTreeSet::new();
    for h in handles {
        let (holder, got) = h.await.unwrap();
        if let Some(seq) = got {
            assert_eq!(seq, 5, "the cursor starts where the first claim said");
            holders.insert(holder);
        }
    }
    assert_eq!(holders.len(), 1, "{holders:?}");
    let a = holders.pop_first().unwrap();
    let (ds_a, ds_b, b_id) = if a == "server-0" {
        (&servers[0], &servers[1], "server-1")
    } else {
        (&servers[1], &servers[0], "server-0")
    };
    // The other server waits while the lease runs; the holder renews it.
    assert_eq!(
        ds_b.claim_set_receiver(RX, b_id, 0, 20_999, 40_999)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        ds_a.claim_set_receiver(RX, &a, 0, 10_000, 30_000)
            .await
            .unwrap(),
        Some(5)
    );
    // Only the holder moves the cursor, from where it is; the record goes with it.
    let delivered = [event("set.delivered", "spiffe://example.org/t", None)];
    assert!(
        !ds_b
            .advance_set_cursor(RX, b_id, 5, 7, &delivered)
            .await
            .unwrap()
    );
    assert!(
        ds_a.advance_set_cursor(RX, &a, 5, 7, &delivered)
            .await
            .unwrap()
    );
    assert!(
        !ds_a
            .advance_set_cursor(RX, &a, 5, 8, &delivered)
            .await
            .unwrap(),
        "the cursor is no longer at 5"
    );
    assert_eq!(ds_a.list_audit(None, None).await.unwrap().len(), 1);
    // Another receiver is independent.
    assert_eq!(
        ds_b.claim_set_receiver("https://other.example.org/", b_id, 3, 10_000, 30_000)
            .await
            .unwrap(),
        Some(3)
    );
    // The lease runs out: the other server takes the receiver over at its cursor, and
    // the former holder can no longer move it.
    assert_eq!(
        ds_b.claim_set_receiver(RX, b_id, 0, 30_000, 50_000)
            .await
            .unwrap(),
        Some(7)
    );
    assert!(
        !ds_a
            .advance_set_cursor(RX, &a, 7, 9, &delivered)
            .await
            .unwrap()
    );
    assert_eq!(
        ds_a.claim_set_receiver(RX, &a, 0, 30_001, 50_001)
            .await
            .unwrap(),
        None
    );
    // Given up (shutdown): the other takes it at once. Releasing what one does not
    // hold changes nothing.
    ds_a.release_set_receiver(RX, &a).await.unwrap();
    assert_eq!(
        ds_a.claim_set_receiver(RX, &a, 0, 30_002, 50_002)
            .await
            .unwrap(),
        None
    );
    ds_b.release_set_receiver(RX, b_id).await.unwrap();
    assert_eq!(
        ds_a.claim_set_receiver(RX, &a, 0, 30_003, 50_003)
            .await
            .unwrap(),
        Some(7)
    );
    // A reopened datastore (a restarted server) sees the same cursor.
    let reopened = b.open().await;
    assert_eq!(
        reopened
            .claim_set_receiver(RX, &a, 0, 30_004, 50_004)
            .await
            .unwrap(),
        Some(7)
    );
    assert_eq!(
        verify(&servers[0].list_audit(None, None).await.unwrap()),
        Ok(1)
    );
}

async fn due_and_revoked_tasks(b: &dyn Backend) {
    let ds = b.open().await;
    let mk = |id: &str, state: TaskState, deadline: i64| {
        let e = entry(&format!("entry-{id}"), "spiffe://example.org/jit/d", 0);
        let t = task(id, &e, state, deadline);
        if state.is_open() {
            t
        } else {
            ended(&t, state, 10, "")
        }
    };
    let tasks = [
        mk("open-100", TaskState::Active, 100),
        mk("open-50", TaskState::PendingApproval, 50),
        mk("ended-10", TaskState::Revoked, 10),
        mk("ended-200", TaskState::Cancelled, 200),
        mk("ended-300", TaskState::Completed, 300),
    ];
    for t in &tasks {
        ds.create_task(t, None, &[]).await.unwrap();
    }
    let ids = |v: Vec<TaskRecord>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert!(ds.due_tasks(49).await.unwrap().is_empty());
    assert_eq!(ids(ds.due_tasks(50).await.unwrap()), ["open-50"]);
    assert_eq!(
        ids(ds.due_tasks(1000).await.unwrap()),
        ["open-50", "open-100"]
    );

    let svid = |task_id: &str, serial: &str, not_after: i64| TaskSvid {
        task_id: tid(task_id),
        serial: serial.into(),
        issuer_serial: "ca1".into(),
        not_after,
    };
    ds.record_issuance(
        vec![
            svid("ended-200", "0a", 150),
            svid("ended-200", "0b", 50),
            svid("open-100", "0c", 150),
            svid("ended-300", "0d", 400),
        ],
        Vec::new(),
        Vec::new(),
    )
    .await
    .unwrap();
    ds.record_issuance(Vec::new(), Vec::new(), Vec::new())
        .await
        .unwrap();
    // Recording a serial again replaces it.
    ds.record_issuance(vec![svid("ended-200", "0a", 160)], Vec::new(), Vec::new())
        .await
        .unwrap();
    let (revoked, svids) = ds.revoked_since(100).await.unwrap();
    assert_eq!(ids(revoked), ["ended-200", "ended-300"]);
    assert_eq!(
        svids,
        vec![svid("ended-200", "0a", 160), svid("ended-300", "0d", 400)]
    );
    let (revoked, svids) = ds.revoked_since(250).await.unwrap();
    assert_eq!(ids(revoked), ["ended-300"]);
    assert_eq!(svids, vec![svid("ended-300", "0d", 400)]);
}

async fn reopen_sees_everything(b: &dyn Backend) {
    // Servers starting together each create the schema: no race.
    let opened = futures::future::join_all((0..4).map(|_| b.open())).await;
    drop(opened);
    let ds = b.open().await;
    let e = entry("e", "spiffe://example.org/web", 1);
    ds.create_entry(&e, &[]).await.unwrap();
    let p = entry("p", "spiffe://example.org/jit/p", 2);
    let mut tp = task("tp", &p, TaskState::Active, 5000);
    tp.provisioned = true;
    tp.status = Some(
        ds.create_task(&tp, Some(&p), &[event("task.requested", "tp", Some("tp"))])
            .await
            .unwrap(),
    );
    let te = task("te", &e, TaskState::Active, 5000);
    ds.create_task(&te, None, &[]).await.unwrap();
    let te = ended(&te, TaskState::Revoked, 20, "");
    assert!(
        ds.update_task(
            &te,
            &[TaskState::Active],
            &[event("task.revoked", "te", None)]
        )
        .await
        .unwrap()
    );
    ds.record_issuance(
        vec![TaskSvid {
            task_id: tid("te"),
            serial: "01".into(),
            issuer_serial: "ca".into(),
            not_after: 4000,
        }],
        Vec::new(),
        Vec::new(),
    )
    .await
    .unwrap();
    let node = sid("spiffe://example.org/node/a");
    ds.create_join_token("h1", &node, 99, &[]).await.unwrap();
    assert!(
        ds.attest_agent(&agent(node.as_str(), "01"), &[])
            .await
            .unwrap()
    );
    assert!(ds.renew_agent(&node, "01", "02", 6, &[]).await.unwrap());
    let banned = agent("spiffe://example.org/node/banned", "09");
    assert!(ds.attest_agent(&banned, &[]).await.unwrap());
    ds.ban_agent(&banned.spiffe_id, &[]).await.unwrap();
    ds.append_audit(&[event("agent.banned", banned.spiffe_id.as_str(), None)])
        .await
        .unwrap();

    let all = EntryFilter::default();
    let entries = ds.list_entries(&all).await.unwrap();
    let agents = ds.list_agents().await.unwrap();
    let tasks = ds.list_tasks(None).await.unwrap();
    let log = ds.list_audit(None, None).await.unwrap();
    let revoked = ds.revoked_since(0).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(agents.len(), 2);
    assert_eq!(tasks.len(), 2);
    assert_eq!(log.len(), 3);
    drop(ds);

    let ds = b.open().await;
    assert_eq!(ds.list_entries(&all).await.unwrap(), entries);
    assert_eq!(ds.list_agents().await.unwrap(), agents);
    assert_eq!(ds.list_tasks(None).await.unwrap(), tasks);
    assert_eq!(ds.list_audit(None, None).await.unwrap(), log);
    assert_eq!(ds.revoked_since(0).await.unwrap(), revoked);
    assert_eq!(
        ds.open_tasks_for_entry(&eid("p")).await.unwrap().remove(0),
        tp
    );
    assert!(
        ds.get_agent(&banned.spiffe_id)
            .await
            .unwrap()
            .unwrap()
            .banned
    );
    let got = ds.get_agent(&node).await.unwrap().unwrap();
    assert_eq!(
        (got.serial.as_str(), got.previous_serial.as_deref()),
        ("02", Some("01"))
    );
    let tok = ds.get_join_token("h1").await.unwrap().unwrap();
    assert_eq!((&tok.spiffe_id, tok.expires_at), (&node, 99));
    let mut again = got.clone();
    again.serial = "03".into();
    assert_eq!(
        ds.attest_agent_with_token("h1", 98, &again, &[])
            .await
            .unwrap(),
        TokenAttestation::Attested
    );
    assert_eq!(ds.get_join_token("h1").await.unwrap(), None);
    // The chain continues where the previous object left it.
    ds.append_audit(&[event("after.reopen", "x", None)])
        .await
        .unwrap();
    let log = ds.list_audit(None, None).await.unwrap();
    assert_eq!(verify(&log), Ok(4));
}

async fn ping_answers_only_while_the_datastore_does(b: &(impl Backend + Under)) {
    const WITHIN: Duration = Duration::from_secs(5);
    let ds = b.open().await;
    ds.ping(WITHIN).await.unwrap();
    // More at once than the pool has connections: they wait for one, within the bound.
    let pings = futures::future::join_all((0..32).map(|_| ds.ping(WITHIN))).await;
    assert!(pings.iter().all(Result::is_ok), "{pings:?}");

    // The database answers, but not with the datastore's tables: not an answer.
    b.script("ALTER TABLE tessera_schema RENAME TO tessera_schema_away")
        .await;
    match ds.ping(WITHIN).await {
        Err(DatastoreError::Backend(cause)) => {
            assert!(cause.contains("tessera_schema"), "{cause}");
        }
        other => panic!("ping without the schema table: {other:?}"),
    }
    b.script("ALTER TABLE tessera_schema_away RENAME TO tessera_schema")
        .await;
    ds.ping(WITHIN).await.unwrap();
}

fn report(entry: &str, agent: &str, deliveries: u64, validations: u64, at: i64) -> UsageReport {
    UsageReport {
        entry_id: eid(entry),
        agent_id: sid(agent),
        deliveries,
        validations,
        last_used_at: at,
    }
}

async fn entry_usage_adds_up_per_entry_and_agent(b: &dyn Backend) {
    const N1: &str = "spiffe://example.org/node/1";
    const N2: &str = "spiffe://example.org/node/2";
    let ds = b.open().await;
    assert!(ds.entry_usage(None).await.unwrap().is_empty());
    // Usage is kept for an entry that exists or not: deleting one never waits on it.
    ds.create_entry(&entry("a", "spiffe://example.org/a", 1), &[])
        .await
        .unwrap();
    ds.record_issuance(
        Vec::new(),
        Vec::new(),
        vec![
            (eid("a"), sid(N1), 100),
            (eid("a"), sid(N1), 90),
            (eid("b"), sid(N1), 50),
        ],
    )
    .await
    .unwrap();
    ds.record_issuance(Vec::new(), Vec::new(), vec![(eid("a"), sid(N2), 110)])
        .await
        .unwrap();
    ds.record_issuance(Vec::new(), Vec::new(), Vec::new())
        .await
        .unwrap();
    ds.record_usage(&[
        report("a", N1, 2, 1, 200),
        // An older last use never moves the time back; counts add up.
        report("a", N1, 3, 0, 150),
        report("a", N2, 1, 0, 300),
        report("c", N2, 0, 4, 10),
    ])
    .await
    .unwrap();
    ds.record_usage(&[]).await.unwrap();
    assert_eq!(
        ds.delete_entry(&eid("a"), Box::new(|_| Vec::new()))
            .await
            .unwrap()
            .unwrap()
            .id,
        eid("a")
    );

    let a = EntryUsage {
        entry_id: eid("a"),
        issued: 3,
        last_issued_at: Some(110),
        deliveries: 6,
        validations: 1,
        last_used_at: Some(300),
    };
    let b_usage = EntryUsage {
        entry_id: eid("b"),
        issued: 1,
        last_issued_at: Some(50),
        deliveries: 0,
        validations: 0,
        last_used_at: None,
    };
    let c = EntryUsage {
        entry_id: eid("c"),
        issued: 0,
        last_issued_at: None,
        deliveries: 0,
        validations: 4,
        last_used_at: Some(10),
    };
    assert_eq!(
        ds.entry_usage(None).await.unwrap(),
        [a.clone(), b_usage.clone(), c.clone()]
    );
    // Only the entries asked for (repeats and unknown ids ignored), in entry order.
    let asked = [eid("c"), eid("a"), eid("zzz"), eid("a")];
    assert_eq!(
        ds.entry_usage(Some(&asked)).await.unwrap(),
        [a.clone(), c.clone()]
    );
    assert!(ds.entry_usage(Some(&[])).await.unwrap().is_empty());
    // More ids than one query binds.
    let many: Vec<EntryId> = (0..1200)
        .map(|i| eid(&format!("x{i:04}")))
        .chain([eid("b")])
        .collect();
    assert_eq!(
        ds.entry_usage(Some(&many)).await.unwrap(),
        std::slice::from_ref(&b_usage)
    );

    // Counts saturate at the largest stored value instead of failing.
    ds.record_usage(&[report("s", N1, u64::MAX, 1, 1)])
        .await
        .unwrap();
    ds.record_usage(&[report("s", N1, 5, u64::MAX, 2)])
        .await
        .unwrap();
    let s = ds.entry_usage(Some(&[eid("s")])).await.unwrap();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0].deliveries, i64::MAX as u64);
    assert_eq!(s[0].validations, i64::MAX as u64);
    assert_eq!(s[0].last_used_at, Some(2));

    // Another server (or a restarted one) sees the same.
    let again = b.open().await;
    assert_eq!(
        again
            .entry_usage(Some(&[eid("a"), eid("b"), eid("c")]))
            .await
            .unwrap(),
        [a, b_usage, c]
    );
}

/// `record_issuance` stores a batch's task serials, audit records (chained after the
/// log) and issue counts together; without audit events it still stores the rest.
async fn an_issuance_is_recorded_in_one_call(b: &dyn Backend) {
    const N: &str = "spiffe://example.org/node/1";
    let ds = b.open().await;
    let first = ds
        .append_audit(&[event("test.before", "s", None)])
        .await
        .unwrap();
    let svid = |serial: &str| TaskSvid {
        task_id: tid("t1"),
        serial: serial.into(),
        issuer_serial: "ca1".into(),
        not_after: 500,
    };
    let events = [
        event("svid.x509.issued", "s1", Some("t1")),
        event("svid.x509.issued", "s2", None),
    ];
    let issued = [(eid("a"), sid(N), 100), (eid("b"), sid(N), 101)];
    let stored = ds
        .record_issuance(vec![svid("0a")], events.to_vec(), issued.to_vec())
        .await
        .unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].seq, first[0].seq + 1);
    assert_eq!(stored[0].prev_hash, first[0].hash);
    assert_eq!(stored[1].event, events[1]);
    let listed = ds.list_audit(None, None).await.unwrap();
    assert_eq!(listed.last(), stored.last());
    let usage = ds.entry_usage(None).await.unwrap();
    assert_eq!(
        usage
            .iter()
            .map(|u| (u.entry_id.as_str(), u.issued))
            .collect::<Vec<_>>(),
        [("a", 1), ("b", 1)]
    );
    let (_, svids) = ds.revoked_since(0).await.unwrap();
    assert!(svids.is_empty(), "no ended task: nothing revoked");
    // Without audit events: the serials and counts still land, the log does not grow.
    let none = ds
        .record_issuance(vec![svid("0b")], Vec::new(), issued[..1].to_vec())
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(ds.list_audit(None, None).await.unwrap().len(), listed.len());
    let usage = ds.entry_usage(Some(&[eid("a")])).await.unwrap();
    assert_eq!(usage[0].issued, 2);
    // Both serials are stored: once the task ends, both are revoked.
    let e = entry("entry-t1", "spiffe://example.org/jit/d", 0);
    let task = ended(
        &task("t1", &e, TaskState::Active, 200),
        TaskState::Revoked,
        10,
        "",
    );
    ds.create_task(&task, None, &[]).await.unwrap();
    let (_, svids) = ds.revoked_since(100).await.unwrap();
    let serials: Vec<&str> = svids.iter().map(|s| s.serial.as_str()).collect();
    assert_eq!(serials, ["0a", "0b"]);
}

/// Audit appends and issue counts of more rows than one statement binds are stored whole,
/// in order, and count each row once.
async fn large_batches_span_several_statements(b: &dyn Backend) {
    const N: &str = "spiffe://example.org/node/1";
    let ds = b.open().await;
    let events: Vec<AuditEvent> = (0..250)
        .map(|i| AuditEvent {
            tenant: (i % 2 == 0).then(|| format!("t{i}")),
            actor: (i % 3 == 0).then(|| format!("a{i}")),
            ..event("test.batch", &format!("s{i}"), None)
        })
        .collect();
    let stored = ds.append_audit(&events).await.unwrap();
    assert_eq!(stored.len(), events.len());
    let read = ds.list_audit(None, None).await.unwrap();
    assert_eq!(read, stored);
    for (i, rec) in read.iter().enumerate() {
        assert_eq!(rec.seq, read[0].seq + i as i64);
        assert_eq!(rec.event, events[i]);
        if i > 0 {
            assert_eq!(rec.prev_hash, read[i - 1].hash);
        }
    }
    // 300 (entry, agent) pairs, each issued twice in one call, in no particular order.
    let issued: Vec<_> = (0..600)
        .map(|i| {
            (
                eid(&format!("e{:03}", (i * 7) % 300)),
                sid(N),
                1000 + i as i64,
            )
        })
        .collect();
    ds.record_issuance(Vec::new(), Vec::new(), issued.to_vec())
        .await
        .unwrap();
    ds.record_issuance(Vec::new(), Vec::new(), issued[..1].to_vec())
        .await
        .unwrap();
    let usage = ds.entry_usage(None).await.unwrap();
    assert_eq!(usage.len(), 300);
    for u in &usage {
        let times: Vec<i64> = issued
            .iter()
            .filter(|(e, _, _)| e == &u.entry_id)
            .map(|(_, _, at)| *at)
            .collect();
        let extra = u64::from(u.entry_id == issued[0].0);
        assert_eq!(u.issued, 2 + extra, "{u:?}");
        assert_eq!(u.last_issued_at, times.iter().max().copied(), "{u:?}");
    }
}

async fn entry_usage_counts_every_concurrent_report(b: &dyn Backend) {
    const AGENT: &str = "spiffe://example.org/node/1";
    let servers = [b.open().await, b.open().await];
    let mut handles = Vec::new();
    for i in 0..40_i64 {
        let ds = Arc::clone(&servers[(i % 2) as usize]);
        handles.push(tokio::spawn(async move {
            ds.record_usage(&[
                report("a", AGENT, 1, 2, 1000 + i),
                report("b", AGENT, 1, 0, 5),
            ])
            .await
            .unwrap();
            ds.record_issuance(
                Vec::new(),
                Vec::new(),
                vec![(eid("a"), sid(AGENT), 2000 - i)],
            )
            .await
            .unwrap();
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let got = servers[0].entry_usage(None).await.unwrap();
    assert_eq!(
        got,
        [
            EntryUsage {
                entry_id: eid("a"),
                issued: 40,
                last_issued_at: Some(2000),
                deliveries: 40,
                validations: 80,
                last_used_at: Some(1039),
            },
            EntryUsage {
                entry_id: eid("b"),
                issued: 0,
                last_issued_at: None,
                deliveries: 40,
                validations: 0,
                last_used_at: Some(5),
            },
        ]
    );
}

/// `t` bound to process `pid` on its entry's agent.
fn held(mut t: TaskRecord, pid: u32) -> TaskRecord {
    t.binding = common::task::TaskBinding::Process(common::task::Holder {
        process: common::task::ProcessInstance { pid, start_time: 1 },
        agent: t.parent_id.clone(),
    });
    t
}

/// Creates `tasks` at once, alternating between the two servers; returns each outcome.
async fn create_at_once(
    servers: &[Arc<dyn Datastore>; 2],
    tasks: Vec<TaskRecord>,
    limits: &TaskLimits,
) -> Vec<Result<StatusEntry, LimitReached>> {
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks.len()));
    let handles: Vec<_> = tasks
        .into_iter()
        .enumerate()
        .map(|(k, t)| {
            let (ds, limits, barrier) = (
                Arc::clone(&servers[k % 2]),
                limits.clone(),
                Arc::clone(&barrier),
            );
            tokio::spawn(async move {
                let audit = [event("task.requested", t.id.as_str(), Some(t.id.as_str()))];
                barrier.wait().await;
                ds.create_task_within(&t, None, &audit, &limits)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

async fn the_parallel_limit_holds_under_concurrent_creates(b: &dyn Backend) {
    let servers = [b.open().await, b.open().await];
    let e = entry("e", "spiffe://example.org/jit/p", 1);
    let f = entry("f", "spiffe://example.org/jit/q", 2);
    servers[0].create_entry(&e, &[]).await.unwrap();
    servers[0].create_entry(&f, &[]).await.unwrap();
    // Twelve holders at once on one entry, at most three: exactly three are stored, each
    // with its record; the others are told which limit refused them and leave nothing.
    let per_entry = TaskLimits {
        tenant_open_tasks: None,
        entry_parallel: Some(3),
    };
    let many = (0..12u32)
        .map(|k| held(task(&format!("p{k}"), &e, TaskState::Active, 5000), k + 1))
        .collect();
    let out = create_at_once(&servers, many, &per_entry).await;
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 3, "{out:?}");
    for refused in out.iter().filter_map(|r| r.clone().err()) {
        assert_eq!(refused, LimitReached::EntryParallel { open: 3, max: 3 });
    }
    assert_eq!(
        servers[1].open_tasks_for_entry(&e.id).await.unwrap().len(),
        3
    );
    assert_eq!(servers[1].list_audit(None, None).await.unwrap().len(), 3);
    // The tenant's quota of open tasks (five, three used) holds across entries the same way.
    let tenant = TaskLimits {
        tenant_open_tasks: Some(5),
        entry_parallel: Some(100),
    };
    let more = (0..8u32)
        .map(|k| held(task(&format!("q{k}"), &f, TaskState::Active, 5000), k + 1))
        .collect();
    let out = create_at_once(&servers, more, &tenant).await;
    assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 2, "{out:?}");
    assert!(
        out.iter()
            .all(|r| matches!(r, Ok(_) | Err(LimitReached::TenantOpenTasks { max: 5 })))
    );
    assert_eq!(servers[0].tenant_counts("default").await.unwrap().1, 5);
    // A task bound by selectors is never open beside others, and none joins it.
    let loose = TaskLimits::default();
    let by_selectors = task("s1", &f, TaskState::Active, 5000);
    let mut by_selectors = by_selectors;
    by_selectors.binding = common::task::TaskBinding::Selectors;
    let gated = TaskLimits {
        tenant_open_tasks: None,
        entry_parallel: Some(100),
    };
    assert_eq!(
        servers[0]
            .create_task_within(&by_selectors, None, &[], &gated)
            .await
            .unwrap(),
        Err(LimitReached::SelectorsBoundAlone)
    );
    let g = entry("g", "spiffe://example.org/jit/r", 3);
    servers[0].create_entry(&g, &[]).await.unwrap();
    by_selectors.entry_id = g.id.clone();
    by_selectors.spiffe_id = g.spiffe_id.clone();
    servers[0]
        .create_task_within(&by_selectors, None, &[], &gated)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        servers[1]
            .create_task_within(
                &held(task("s2", &g, TaskState::Active, 5000), 9),
                None,
                &[],
                &gated
            )
            .await
            .unwrap(),
        Err(LimitReached::SelectorsBoundAlone)
    );
    // The same holder twice is the unique index's conflict, whatever the limits; and no
    // limits at all (a provisioning task) checks nothing.
    let open = servers[1].open_tasks_for_entry(&e.id).await.unwrap();
    let mut twice = task("p99", &e, TaskState::Active, 5000);
    twice.binding = open[0].binding.clone();
    assert!(matches!(
        servers[1]
            .create_task_within(&twice, None, &[], &loose)
            .await,
        Err(DatastoreError::Conflict(_))
    ));
    servers[1]
        .create_task_within(
            &held(task("p100", &e, TaskState::Active, 5000), 100),
            None,
            &[],
            &loose,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        servers[0].open_tasks_for_entry(&e.id).await.unwrap().len(),
        4
    );
}

fn authority(
    server: &str,
    kind: AuthorityKind,
    key: &str,
    state: &str,
    not_after: i64,
) -> PublishedAuthority {
    PublishedAuthority {
        server_id: server.to_owned(),
        kind,
        key_id: key.to_owned(),
        state: state.to_owned(),
        material: format!("material of {key}"),
        not_after,
        published_at: 100,
    }
}

async fn published_authorities_are_shared_replaced_and_pruned(b: &dyn Backend) {
    let servers = [b.open().await, b.open().await];
    let a1 = authority("a", AuthorityKind::X509, "01", "active", 1000);
    let a2 = authority("a", AuthorityKind::Jwt, "k1", "prepared", 2000);
    // The same key id under another server is another row.
    let b1 = authority("b", AuthorityKind::X509, "01", "active", 500);
    let audit = [event("bundle.published", "a", None)];
    servers[0]
        .publish_authorities(&[a1.clone(), a2.clone()], &audit)
        .await
        .unwrap();
    servers[1]
        .publish_authorities(std::slice::from_ref(&b1), &[])
        .await
        .unwrap();
    for ds in &servers {
        assert_eq!(
            ds.list_authorities(0).await.unwrap(),
            [a2.clone(), a1.clone(), b1.clone()],
            "every server sees every server's material (by server, kind, key id)"
        );
    }
    let records = servers[1].list_audit(None, None).await.unwrap();
    assert_eq!(records.len(), 1, "published with its audit record");
    assert_eq!(records[0].event.kind, "bundle.published");

    // A state change replaces the row.
    let mut a2_active = a2.clone();
    a2_active.state = "active".into();
    a2_active.published_at = 200;
    servers[0]
        .publish_authorities(std::slice::from_ref(&a2_active), &[])
        .await
        .unwrap();
    assert_eq!(
        servers[1].list_authorities(0).await.unwrap(),
        [a2_active.clone(), a1.clone(), b1.clone()]
    );

    // Expired material is not listed, and pruning deletes it (idempotently).
    assert_eq!(
        servers[1].list_authorities(500).await.unwrap(),
        [a2_active.clone(), a1.clone()]
    );
    assert_eq!(servers[0].prune_authorities(1000).await.unwrap(), 2);
    assert_eq!(servers[1].prune_authorities(1000).await.unwrap(), 0);
    assert_eq!(servers[1].list_authorities(0).await.unwrap(), [a2_active]);
}

/// Creates `per` tasks from each of `workers` concurrent callers, alternating between the
/// `servers`, each on an entry of its own; returns each caller's tasks as stored by
/// their creation, in creation order.
async fn create_concurrently(
    servers: &[Arc<dyn Datastore>],
    prefix: &str,
    workers: usize,
    per: usize,
) -> Vec<Vec<TaskRecord>> {
    let mut handles = Vec::new();
    for w in 0..workers {
        let ds = Arc::clone(&servers[w % servers.len()]);
        let prefix = prefix.to_owned();
        handles.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for r in 0..per {
                let name = format!("{prefix}{w}-{r}");
                let e = entry(&name, "spiffe://example.org/jit/sl", 0);
                let mut t = task(&name, &e, TaskState::Active, 5000);
                t.status = Some(StatusEntry { list: 99, idx: 7 }); // ignored
                let audit = [event("task.requested", &name, Some(&name))];
                t.status = Some(ds.create_task(&t, None, &audit).await.unwrap());
                made.push(t);
            }
            made
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.push(h.await.unwrap());
    }
    all
}

/// Every new task gets an entry of the newest status list, drawn at random, never one
/// another task holds, even when two servers create at once; the entry is stored with
/// the task and comes back with the tasks that ended.
async fn status_list_entries_are_random_unique_and_report_ended_tasks(b: &dyn Backend) {
    let servers = [b.open().await, b.open().await];
    assert_eq!(servers[0].newest_status_list().await.unwrap(), None);
    let made = create_concurrently(&servers, "sl", 4, 25).await;
    let all: Vec<&TaskRecord> = made.iter().flatten().collect();
    let entries: BTreeSet<StatusEntry> = all.iter().filter_map(|t| t.status).collect();
    assert_eq!(entries.len(), 100, "no two tasks share an entry");
    assert!(
        entries
            .iter()
            .all(|e| e.list == 1 && e.idx < STATUS_LIST_SIZE)
    );
    // Random, not handed out in order: spread over the list (a run of 100 draws all in
    // one quarter of it has probability 2^-200), and no caller's are increasing.
    let idx: Vec<u32> = entries.iter().map(|e| e.idx).collect();
    let (min, max) = (idx.iter().min().unwrap(), idx.iter().max().unwrap());
    assert!(
        *min < STATUS_LIST_SIZE / 4 && *max > STATUS_LIST_SIZE / 4 * 3,
        "{idx:?}"
    );
    for mine in &made {
        let seq: Vec<u32> = mine.iter().map(|t| t.status.unwrap().idx).collect();
        assert!(seq.windows(2).any(|w| w[0] > w[1]), "{seq:?}");
    }
    for ds in &servers {
        assert_eq!(ds.newest_status_list().await.unwrap(), Some(1));
    }
    // Stored with the task (each server reads the other's), and kept by its updates.
    for (i, t) in all.iter().enumerate() {
        let got = servers[(i + 1) % 2].get_task(&t.id).await.unwrap().unwrap();
        assert_eq!(got.status, t.status, "{}", t.id);
    }
    let ending: Vec<TaskRecord> = all
        .iter()
        .step_by(10)
        .map(|t| {
            let mut end = ended(t, TaskState::Revoked, 1_700_000_100, "misuse");
            end.status = None; // an update never changes the entry
            end
        })
        .collect();
    for t in &ending {
        assert!(
            servers[0]
                .update_task(t, &[TaskState::Active], &[])
                .await
                .unwrap()
        );
    }
    let (revoked, _) = servers[1].revoked_since(100).await.unwrap();
    let reported: BTreeMap<TaskId, Option<StatusEntry>> =
        revoked.into_iter().map(|t| (t.id, t.status)).collect();
    let expected: BTreeMap<TaskId, Option<StatusEntry>> = all
        .iter()
        .step_by(10)
        .map(|t| (t.id.clone(), t.status))
        .collect();
    assert_eq!(reported, expected);
}

/// Once the newest list has given out half its entries, the next task starts a new list
/// (an old list is never drawn from again); within a list, a drawn entry that another task
/// holds is drawn again.
async fn status_lists_move_on_when_half_full(b: &(impl Backend + Under)) {
    let servers = [b.open().await, b.open().await];
    let ds = &servers[0];
    let first = task(
        "first",
        &entry("e1", "spiffe://example.org/jit/h", 0),
        TaskState::Completed,
        5000,
    );
    let e1 = ds.create_task(&first, None, &[]).await.unwrap();
    assert_eq!(e1.list, 1);
    // One short of half full: the next task still goes to list 1, the one after to 2.
    b.script(&format!(
        "UPDATE status_lists SET allocated = {} WHERE number = 1",
        STATUS_LIST_SIZE / 2 - 1
    ))
    .await;
    let second = task(
        "second",
        &entry("e2", "spiffe://example.org/jit/h", 0),
        TaskState::Completed,
        5000,
    );
    let e2 = servers[1].create_task(&second, None, &[]).await.unwrap();
    assert_eq!(e2.list, 1);
    assert_ne!(e2, e1);
    let third = task(
        "third",
        &entry("e3", "spiffe://example.org/jit/h", 0),
        TaskState::Completed,
        5000,
    );
    let e3 = ds.create_task(&third, None, &[]).await.unwrap();
    assert_eq!(e3.list, 2);
    for s in &servers {
        assert_eq!(s.newest_status_list().await.unwrap(), Some(2));
    }
    // Half of list 2 held by tasks the allocator did not count (every even entry but
    // the third task's): every new task must land on a free entry, so draws collide and
    // are drawn again.
    b.script(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 2 FROM n WHERE i < {last})
        INSERT INTO tasks (id, state, entry_id, spiffe_id, parent_id, provisioned, requester,
            approver, reason, ticket, scopes, created_at, activated_at, deadline, ended_at,
            end_reason, decision, requester_uid, requester_user, approver_uid, tenant,
            audiences, bind_kind, bind_pid, bind_start_time, bind_agent, break_glass,
            status_list, status_idx)
        SELECT 'filler-' || n.i, t.state, t.entry_id, t.spiffe_id, t.parent_id,
            t.provisioned, t.requester, t.approver, t.reason, t.ticket, t.scopes,
            t.created_at, t.activated_at, t.deadline, t.ended_at, t.end_reason, t.decision,
            t.requester_uid, t.requester_user, t.approver_uid, t.tenant, t.audiences,
            t.bind_kind, t.bind_pid, t.bind_start_time, t.bind_agent, t.break_glass, 2, n.i
        FROM n, tasks t WHERE t.id = 'first' AND n.i <> {skip}",
        last = STATUS_LIST_SIZE - 2,
        skip = e3.idx,
    ))
    .await;
    let made = create_concurrently(&servers, "half", 4, 5).await;
    let entries: BTreeSet<StatusEntry> = made.iter().flatten().filter_map(|t| t.status).collect();
    assert_eq!(entries.len(), 20);
    for e in &entries {
        assert_eq!(e.list, 2, "{e:?}: an old list is never drawn from again");
        assert_eq!(e.idx % 2, 1, "{e:?} is held by another task");
    }
}

fn template(id: &str, text: &str, grace: u64) -> TemplateRecord {
    TemplateRecord {
        id: common::TemplateId::parse(id).unwrap(),
        template: common::SpiffeIdTemplate::new(text).unwrap(),
        parent_id: sid("spiffe://example.org/node/a"),
        selectors: selectors(&["systemd:slice:acme.slice".into()]),
        x509_svid_ttl: Duration::from_secs(3600),
        jwt_svid_ttl: Duration::from_secs(300),
        tenant: "default".into(),
        owner: "user:root".into(),
        grace: Duration::from_secs(grace),
        created_at: 1_700_000_000,
    }
}

fn instance(id: &str, of: &TemplateRecord, unit: &str, created_at: i64) -> RegistrationEntry {
    let mut e = entry(id, &format!("spiffe://example.org/acme/svc/{unit}"), 0);
    e.selectors = selectors(&[
        "systemd:slice:acme.slice".into(),
        format!("systemd:unit:{unit}"),
    ]);
    e.created_at = created_at;
    e.governance.template_id = Some(of.id.clone());
    e
}

/// Templates: stored and read back, unique per text and parent, listed by parent; entries
/// keep their template id; instances not seen within the grace are stale (seen times only
/// move forward); deleting a template deletes its instances, with the records the
/// deletion makes, in one transaction; an instance whose template is gone is stale.
async fn templates_crud_instances_and_grace(b: &dyn Backend) {
    let ds = b.open().await;
    let t = template("t1", "spiffe://example.org/acme/svc/{systemd:unit}", 10);
    ds.create_template(&t, &[event("template.created", "t1", None)])
        .await
        .unwrap();
    assert_eq!(ds.get_template(&t.id).await.unwrap().unwrap(), t);
    let dup = template("t2", "spiffe://example.org/acme/svc/{systemd:unit}", 10);
    let r = ds.create_template(&dup, &[]).await;
    assert!(matches!(r, Err(DatastoreError::Conflict(_))), "{r:?}");
    let mut other = template("t3", "spiffe://example.org/other/{systemd:unit}", 5);
    other.parent_id = sid("spiffe://example.org/node/b");
    ds.create_template(&other, &[]).await.unwrap();
    assert_eq!(
        ds.list_templates(None).await.unwrap(),
        [t.clone(), other.clone()]
    );
    assert_eq!(
        ds.list_templates(Some(&sid("spiffe://example.org/node/b")))
            .await
            .unwrap(),
        [other.clone()]
    );
    assert!(
        ds.get_template(&common::TemplateId::parse("nope").unwrap())
            .await
            .unwrap()
            .is_none()
    );

    // Instances keep their template id; a plain entry has none and is never stale.
    let a = instance("ia", &t, "a.service", 1000);
    let bb = instance("ib", &t, "b.service", 1000);
    ds.create_entry(&a, &[]).await.unwrap();
    ds.create_entry(&bb, &[]).await.unwrap();
    ds.create_entry(&entry("plain", "spiffe://example.org/web", 1), &[])
        .await
        .unwrap();
    assert_eq!(ds.get_entry(&eid("ia")).await.unwrap().unwrap(), a);
    assert!(ds.stale_instances(1009).await.unwrap().is_empty());
    let ids =
        |v: Vec<RegistrationEntry>| v.into_iter().map(|e| e.id.to_string()).collect::<Vec<_>>();
    assert_eq!(ids(ds.stale_instances(1010).await.unwrap()), ["ia", "ib"]);
    // Seen at 1005: stale from 1015; an older report does not move it back.
    ds.mark_instances_seen(&[eid("ia")], 1005).await.unwrap();
    ds.mark_instances_seen(&[eid("ia")], 1001).await.unwrap();
    ds.mark_instances_seen(&[], 1).await.unwrap();
    assert_eq!(ids(ds.stale_instances(1014).await.unwrap()), ["ib"]);
    assert_eq!(ids(ds.stale_instances(1015).await.unwrap()), ["ia", "ib"]);

    // Deleting a stale instance checks again that it is stale, in the delete itself: one
    // seen since it was listed stays, as does an entry made from no template.
    let deprovisioned: fn(&RegistrationEntry) -> Vec<AuditEvent> =
        |e| vec![event("entry.deprovisioned", e.id.as_str(), None)];
    let before = ds.audit_head().await.unwrap().map_or(0, |h| h.seq);
    ds.mark_instances_seen(&[eid("ia")], 1012).await.unwrap();
    for (id, now) in [("ia", 1015), ("plain", 9999), ("missing", 9999)] {
        let r = ds
            .delete_stale_instance(&eid(id), now, Box::new(deprovisioned))
            .await
            .unwrap();
        assert!(r.is_none(), "{id} at {now}: {r:?}");
    }
    assert!(ds.get_entry(&eid("ia")).await.unwrap().is_some());
    assert!(ds.get_entry(&eid("plain")).await.unwrap().is_some());
    let gone = ds
        .delete_stale_instance(&eid("ib"), 1010, Box::new(deprovisioned))
        .await
        .unwrap();
    assert_eq!(gone, Some(bb.clone()));
    assert!(ds.get_entry(&eid("ib")).await.unwrap().is_none());
    assert_eq!(ds.audit_head().await.unwrap().unwrap().seq, before + 1);
    ds.create_entry(&bb, &[]).await.unwrap();

    // Deleting the template deletes its instances and records both, in one transaction.
    let before = ds.audit_head().await.unwrap().map_or(0, |h| h.seq);
    let (gone, instances) = ds
        .delete_template(
            &t.id,
            Box::new(|(t, instances)| {
                let mut v = vec![event("template.deleted", t.id.as_str(), None)];
                v.extend(
                    instances
                        .iter()
                        .map(|e| event("entry.deprovisioned", e.id.as_str(), None)),
                );
                v
            }),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone, t);
    assert_eq!(ids(instances), ["ia", "ib"]);
    assert_eq!(ds.audit_head().await.unwrap().unwrap().seq, before + 3);
    assert!(ds.get_entry(&eid("ia")).await.unwrap().is_none());
    assert!(ds.get_entry(&eid("plain")).await.unwrap().is_some());
    assert!(ds.get_template(&t.id).await.unwrap().is_none());
    let again = ds
        .delete_template(&t.id, Box::new(|_| vec![]))
        .await
        .unwrap();
    assert!(again.is_none());

    // An instance made while its template was being deleted is stale at once.
    ds.create_entry(&instance("orphan", &t, "c.service", 2000), &[])
        .await
        .unwrap();
    assert_eq!(ids(ds.stale_instances(2000).await.unwrap()), ["orphan"]);

    // Another server sees the same.
    let second = b.open().await;
    assert_eq!(second.list_templates(None).await.unwrap(), [other]);
}
