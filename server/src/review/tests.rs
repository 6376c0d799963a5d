use std::time::Duration;

use common::entry::{Disabled, Governance};
use common::task::TaskState;
use common::{EntryId, RegistrationEntry, Selector, SpiffeId, TaskId};

use super::*;
use crate::datastore::{DomainRecord, EntryUsage, TaskRecord};
use crate::policy::Decision;

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn entry(id: &str, tenant: &str, selectors: &[&str]) -> RegistrationEntry {
    RegistrationEntry {
        id: EntryId::parse(id).unwrap(),
        spiffe_id: SpiffeId::new(&format!("spiffe://example.org/{tenant}/{id}")).unwrap(),
        parent_id: SpiffeId::new("spiffe://example.org/node").unwrap(),
        selectors: selectors
            .iter()
            .map(|s| s.parse::<Selector>().unwrap())
            .collect(),
        x509_svid_ttl: Duration::from_secs(3600),
        jwt_svid_ttl: Duration::from_secs(300),
        dns_names: vec![],
        jit: false,
        hint: String::new(),
        created_at: NOW - 100 * DAY,
        revision: 1,
        governance: Governance::new(tenant, "user:alice"),
        node_selectors: None,
    }
}

fn used(id: &str, at: i64) -> EntryUsage {
    EntryUsage {
        entry_id: EntryId::parse(id).unwrap(),
        issued: 3,
        last_issued_at: Some(at - 5),
        deliveries: 2,
        validations: 0,
        last_used_at: Some(at),
    }
}

fn task(id: &str, entry: &RegistrationEntry, state: TaskState) -> TaskRecord {
    TaskRecord {
        id: TaskId::parse(id).unwrap(),
        state,
        entry_id: entry.id.clone(),
        spiffe_id: entry.spiffe_id.clone(),
        parent_id: entry.parent_id.clone(),
        provisioned: false,
        requester: "user:alice".into(),
        approver: None,
        reason: String::new(),
        ticket: String::new(),
        scopes: vec![],
        audiences: vec![],
        created_at: NOW,
        activated_at: Some(NOW),
        deadline: NOW + 60,
        end: (!state.is_open()).then(|| crate::datastore::TaskEnd {
            at: NOW,
            reason: String::new(),
        }),
        decision: Decision {
            allowed: true,
            approval_required: false,
            max_ttl_seconds: None,
            max_parallel: None,
            break_glass_allowed: false,
            policies: vec![],
            errors: vec![],
            action: String::new(),
            principal: String::new(),
            entry: String::new(),
        },
        requester_unix: None,
        approver_uid: None,
        tenant: entry.governance.tenant.clone(),
        binding: common::task::TaskBinding::Selectors,
        break_glass: false,
        acknowledgement: None,
        status: None,
    }
}

fn flags(items: &[ReviewItem], id: &str) -> Vec<&'static str> {
    items
        .iter()
        .find(|i| i.entry.id.as_str() == id)
        .unwrap()
        .flags
        .iter()
        .map(|f| f.as_str())
        .collect()
}

#[test]
fn each_case_is_flagged_and_a_healthy_identity_is_not() {
    let healthy = entry("healthy", "acme", &["unix:uid:1"]);
    let mut no_owner = entry("noowner", "acme", &["unix:uid:2"]);
    no_owner.governance.owner.clear();
    let mut expired = entry("expired", "acme", &["unix:uid:3"]);
    expired.governance.expires_at = Some(NOW - 1);
    expired.governance.disabled = Some(Disabled {
        at: NOW - 1,
        reason: crate::registration::EXPIRED.into(),
    });
    let mut lapsed = entry("lapsed", "acme", &["unix:uid:4"]);
    lapsed.governance.review_every = Some(Duration::from_secs(90 * 86_400));
    let mut certified = entry("certified", "acme", &["unix:uid:5"]);
    certified.governance.review_every = Some(Duration::from_secs(90 * 86_400));
    certified.governance.certified_at = Some(NOW - DAY);
    let stale = entry("stale", "acme", &["unix:uid:6"]);
    let mut dormant = entry("dormant", "acme", &["unix:uid:7"]);
    dormant.jit = true;
    dormant.governance.review_every = Some(Duration::from_secs(7 * 86_400));
    dormant.governance.certified_at = Some(NOW - DAY);
    let wide = entry("wide", "acme", &["unix:uid:8"]);
    let narrow = entry("narrow", "acme", &["unix:uid:8", "unix:gid:8"]);
    let other_tenant = entry("othertenant", "beta", &["unix:uid:8"]);
    let mut dns = entry("dns", "acme", &["unix:uid:9"]);
    dns.dns_names = vec!["web.acme.test".into(), "web.evil.test".into()];
    let mut left = entry("left", "acme", &["unix:uid:10"]);
    left.governance.disabled = Some(Disabled {
        at: NOW,
        reason: format!("{}: left the company", crate::registration::OFFBOARDED),
    });
    let entries = vec![
        healthy.clone(),
        no_owner,
        expired,
        lapsed,
        certified,
        stale,
        dormant.clone(),
        wide,
        narrow,
        other_tenant,
        dns,
        left,
    ];
    let recent = NOW - DAY;
    let usage: Vec<EntryUsage> = [
        "healthy",
        "noowner",
        "expired",
        "lapsed",
        "certified",
        "wide",
        "narrow",
        "othertenant",
        "dns",
        "left",
    ]
    .iter()
    .map(|id| used(id, recent))
    .chain([used("dormant", NOW - 30 * DAY)])
    .collect();
    let domains = vec![DomainRecord {
        domain: "acme.test".into(),
        tenant: "acme".into(),
        challenge: "c".into(),
        added_at: 0,
        verified_at: Some(1),
        checked_at: Some(NOW),
        failing_since: None,
        last_error: None,
    }];
    let tasks = vec![
        task("t-open", &healthy, TaskState::Active),
        task("t-done", &healthy, TaskState::Completed),
        task("t-dormant", &dormant, TaskState::PendingApproval),
    ];
    let items = review(&ReviewInput {
        entries: &entries,
        tasks: &tasks,
        usage: &usage,
        domains: &domains,
        now: NOW,
        stale_after: Duration::from_secs(30 * 86_400),
    });
    assert_eq!(items.len(), entries.len());
    assert_eq!(flags(&items, "healthy"), Vec::<&str>::new());
    let h = items
        .iter()
        .find(|i| i.entry.id.as_str() == "healthy")
        .unwrap();
    assert_eq!(h.open_tasks, [TaskId::parse("t-open").unwrap()]);
    assert_eq!(h.last_used_at, Some(recent));
    assert_eq!(h.last_issued_at, Some(recent - 5));
    assert_eq!(flags(&items, "noowner"), ["no_owner"]);
    assert_eq!(flags(&items, "expired"), ["expired"]);
    assert_eq!(flags(&items, "lapsed"), ["review_lapsed"]);
    assert_eq!(flags(&items, "certified"), Vec::<&str>::new());
    assert_eq!(flags(&items, "stale"), ["stale"], "never used in 100 days");
    assert_eq!(flags(&items, "dormant"), ["stale", "dormant"]);
    assert_eq!(flags(&items, "wide"), ["overlapping_selectors"]);
    assert_eq!(flags(&items, "narrow"), ["overlapping_selectors"]);
    assert_eq!(
        flags(&items, "othertenant"),
        Vec::<&str>::new(),
        "overlap is per tenant"
    );
    assert_eq!(flags(&items, "dns"), ["unverified_dns_name"]);
    let d = items.iter().find(|i| i.entry.id.as_str() == "dns").unwrap();
    assert_eq!(d.unverified_dns_names, ["web.evil.test"]);
    assert_eq!(flags(&items, "left"), ["owner_offboarded"]);
}

#[test]
fn a_failing_domain_flags_names_and_the_default_tenant_is_exempt_until_it_claims_one() {
    let mut e = entry("e", "acme", &["unix:uid:1"]);
    e.dns_names = vec!["a.acme.test".into()];
    let mut legacy = entry("legacy", "default", &["unix:uid:2"]);
    legacy.dns_names = vec!["old.example.org".into()];
    let failing = DomainRecord {
        domain: "acme.test".into(),
        tenant: "acme".into(),
        challenge: "c".into(),
        added_at: 0,
        verified_at: Some(1),
        checked_at: Some(NOW),
        failing_since: Some(NOW - 10),
        last_error: Some("gone".into()),
    };
    let entries = [e, legacy];
    let usage = [used("e", NOW), used("legacy", NOW)];
    let input = |domains: &[DomainRecord]| {
        review(&ReviewInput {
            entries: &entries,
            tasks: &[],
            usage: &usage,
            domains,
            now: NOW,
            stale_after: Duration::from_secs(30 * 86_400),
        })
    };
    let items = input(std::slice::from_ref(&failing));
    assert_eq!(flags(&items, "e"), ["unverified_dns_name"]);
    assert_eq!(flags(&items, "legacy"), Vec::<&str>::new());
    let mut default_claim = failing.clone();
    default_claim.tenant = "default".into();
    default_claim.domain = "example.net".into();
    let items = input(&[failing, default_claim]);
    assert_eq!(flags(&items, "legacy"), ["unverified_dns_name"]);
}

#[test]
fn break_glass_tasks_are_flagged_until_acknowledged_whether_open_or_ended() {
    let db = entry("db", "acme", &["unix:uid:1"]);
    let web = entry("web", "acme", &["unix:uid:2"]);
    let glass = |id: &str, e: &RegistrationEntry, state: TaskState| TaskRecord {
        break_glass: true,
        ..task(id, e, state)
    };
    let reviewed = TaskRecord {
        acknowledgement: Some(crate::datastore::Acknowledgement {
            by: "user:bob".into(),
            uid: 1001,
            at: NOW,
            note: "fine".into(),
        }),
        ..glass("bg-reviewed", &web, TaskState::Completed)
    };
    // A provisioned task's entry is gone: it is listed only beside the entries.
    let gone = entry("gone", "acme", &["unix:uid:3"]);
    let tasks = vec![
        glass("bg-open", &db, TaskState::Active),
        glass("bg-ended", &db, TaskState::Expired),
        task("plain", &web, TaskState::Completed),
        reviewed,
        glass("bg-provisioned", &gone, TaskState::Revoked),
    ];
    let entries = vec![db, web];
    let usage = [used("db", NOW - DAY), used("web", NOW - DAY)];
    let items = review(&ReviewInput {
        entries: &entries,
        tasks: &tasks,
        usage: &usage,
        domains: &[],
        now: NOW,
        stale_after: Duration::from_secs(30 * 86_400),
    });
    assert_eq!(flags(&items, "db"), ["break_glass_unreviewed"]);
    assert_eq!(flags(&items, "web"), Vec::<&str>::new(), "acknowledged");
    let db_item = items.iter().find(|i| i.entry.id.as_str() == "db").unwrap();
    let ids = |v: &[TaskId]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(ids(&db_item.break_glass_tasks), ["bg-open", "bg-ended"]);
    assert_eq!(ids(&db_item.open_tasks), ["bg-open"]);
    let unreviewed: Vec<&str> = unreviewed_break_glass(&tasks)
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(unreviewed, ["bg-open", "bg-ended", "bg-provisioned"]);
}
