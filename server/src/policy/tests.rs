//! Policy loading, evaluation and explanations.

use super::*;

/// 2024-06-03 10:00:00 UTC, a Monday; 2024-06-01 (same time) was a Saturday.
const MONDAY_10H: i64 = 1_717_408_800;
const SATURDAY_10H: i64 = MONDAY_10H - 2 * 86_400;
const ANY: &str = "permit (principal, action, resource);";
const OPS: &str = r#"
@id("oncall-db") @approval("required") @max_ttl("900")
permit (principal == Tessera::User::"alice", action == Tessera::Action::"begin_task", resource)
when { resource.jit };

@id("no-prod-weekend")
forbid (principal, action, resource)
when { resource.trust_domain == "prod.example" && [0, 6].contains(context.weekday_utc) };
"#;

fn req(action: Action, principal: Principal) -> PolicyRequest {
    let entry = EntryFacts {
        id: "e1".into(),
        spiffe_id: "spiffe://prod.example/db/primary".into(),
        jit: true,
        selectors: vec!["unix:uid:1000".into()],
        tenant: "acme".into(),
    };
    PolicyRequest {
        action,
        principal,
        entry,
        scopes: vec!["db:read".into()],
        audience: String::new(),
        declared_audiences: vec!["https://tools.example".into()],
        ttl_seconds: 600,
        ticket: "INC-42".into(),
        reason: "fix".into(),
        approver: None,
        requester_uid: Some(1000),
        approver_uid: None,
        now_unix: MONDAY_10H,
        provisioned: false,
        break_glass: false,
    }
}

fn alice() -> PolicyRequest {
    req(Action::BeginTask, Principal::User("alice".into()))
}

fn workload(id: &str) -> Principal {
    Principal::Workload(id.into())
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn engine(files: &[(&str, &str)]) -> (tempfile::TempDir, PolicyEngine) {
    let dir = dir_with(files);
    let e = PolicyEngine::load_dir(dir.path()).unwrap();
    (dir, e)
}

/// The load error for `files`; `check_dir` must report the same.
fn load_err(files: &[(&str, &str)]) -> String {
    let dir = dir_with(files);
    let err = PolicyEngine::load_dir(dir.path()).unwrap_err().to_string();
    let check = PolicyEngine::check_dir(dir.path()).unwrap_err();
    assert_eq!(check.to_string(), err);
    err
}

#[test]
fn allow_with_approval_and_ttl() {
    let (_d, e) = engine(&[("ops.cedar", OPS)]);
    let d = e.evaluate(&alice());
    assert!(d.allowed && d.approval_required && d.errors.is_empty());
    assert_eq!(d.max_ttl_seconds, Some(900));
    assert_eq!(d.policies, ["ops.cedar:oncall-db"]);
    let want = "allowed by policies [ops.cedar:oncall-db] (approval required; max TTL 900 s)";
    assert_eq!(d.explain(), want);
    let j = d.to_json();
    assert_eq!(j["allowed"], true);
    assert_eq!(j["max_ttl_seconds"], 900);
    assert_eq!(j["explanation"], want);
}

#[test]
fn deny_by_forbid_names_policy() {
    let (_d, e) = engine(&[("ops.cedar", OPS)]);
    let d = e.evaluate(&PolicyRequest {
        now_unix: SATURDAY_10H,
        ..alice()
    });
    assert!(!d.allowed && !d.approval_required && d.max_ttl_seconds.is_none());
    assert_eq!(d.policies, ["ops.cedar:no-prod-weekend"]);
    assert_eq!(
        d.explain(),
        "denied by policies [ops.cedar:no-prod-weekend]"
    );
}

#[test]
fn deny_when_nothing_permits() {
    let (_d, e) = engine(&[("ops.cedar", OPS)]);
    let d = e.evaluate(&req(
        Action::BeginTask,
        workload("spiffe://prod.example/batch"),
    ));
    assert!(!d.allowed && d.policies.is_empty());
    let want = "denied: no policy permits begin_task for Workload::\"spiffe://prod.example/\
                batch\" on Entry::\"e1\" (spiffe://prod.example/db/primary)";
    assert_eq!(d.explain(), want);
}

#[test]
fn ttl_is_min_of_determining_policies() {
    let a =
        r#"@id("day") @max_ttl("1d") @approval("required") permit (principal, action, resource);"#;
    let b = r#"@id("two-hours") @max_ttl("2h") permit (principal, action, resource);
        @id("never") @max_ttl("1m") permit (principal, action, resource) when { false };"#;
    let (dir, e) = engine(&[("a.cedar", a), ("b.cedar", b)]);
    let d = e.evaluate(&alice());
    assert!(
        d.allowed && d.approval_required,
        "any determining policy requiring it counts"
    );
    assert_eq!(d.max_ttl_seconds, Some(7200));
    assert_eq!(d.policies, ["a.cedar:day", "b.cedar:two-hours"]);
    assert!(d.explain().ends_with("(approval required; max TTL 7200 s)"));
    assert_eq!(
        e.describe(),
        format!("{} (3 policies)", dir.path().display())
    );
}

#[test]
fn duration_parsing() {
    let good = [
        ("900", 900),
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86_400),
    ];
    for (text, secs) in good {
        assert_eq!(parse_duration(text), Some(secs), "{text}");
    }
    let bad = [
        "",
        "0",
        "-5",
        "1w",
        "h",
        "1.5h",
        "15 m",
        "99999999999999999d",
    ];
    for text in bad.into_iter().chain(["9999999999999999999"]) {
        assert_eq!(parse_duration(text), None, "{text:?}");
    }
}

#[test]
fn context_and_entity_attributes() {
    let p = r#"
@id("rich")
permit (principal is Tessera::Workload, action == Tessera::Action::"begin_task", resource)
when {
  context.ticket like "INC-*" && context.hour_utc >= 8 && context.hour_utc < 18 &&
  context.weekday_utc == 1 && context.now == 1717408800 &&
  context.scopes.contains("db:read") &&
  context.declared_audiences.contains("https://tools.example") && context.audience == "" &&
  principal.trust_domain == "prod.example" && principal.path like "/batch/*" &&
  resource.jit && resource.path == "/db/primary" && resource.trust_domain == "prod.example" &&
  resource.selectors.contains("unix:uid:1000") &&
  context.origin == "workload" && !context.provisioned && context.ttl_seconds <= 3600 &&
  context.has_approver && context.approver == "bob" &&
  context.requester_uid == 1000 && context.approver_uid == 1001
};"#;
    let (_d, e) = engine(&[("rich.cedar", p)]);
    let ok = PolicyRequest {
        approver: Some("bob".into()),
        approver_uid: Some(1001),
        ..req(
            Action::BeginTask,
            workload("spiffe://prod.example/batch/nightly"),
        )
    };
    let d = e.evaluate(&ok);
    assert!(d.allowed, "{}", d.explain());
    assert_eq!(d.policies, ["rich.cedar:rich"]);
    let mutations: [&dyn Fn(&mut PolicyRequest); 15] = [
        &|r| r.ticket = "CHG-1".into(),
        &|r| r.now_unix += 9 * 3600,
        &|r| r.now_unix = SATURDAY_10H,
        &|r| r.scopes = vec!["db:write".into()],
        &|r| r.declared_audiences = vec!["https://other.example".into()],
        &|r| r.audience = "https://tools.example".into(),
        &|r| r.principal = workload("spiffe://dev.example/batch/x"),
        &|r| r.principal = workload("spiffe://prod.example/web"),
        &|r| r.entry.jit = false,
        &|r| r.provisioned = true,
        &|r| r.ttl_seconds = 3601,
        &|r| r.approver = None,
        &|r| r.requester_uid = None,
        &|r| r.approver_uid = Some(1000),
        &|r| r.action = Action::IssueSvid,
    ];
    for (i, mutate) in mutations.iter().enumerate() {
        let mut r = ok.clone();
        mutate(&mut r);
        assert!(!e.evaluate(&r).allowed, "mutation {i} should be denied");
    }
    assert_eq!(split_spiffe("spiffe://td"), ("td".into(), String::new()));
    assert_eq!(split_spiffe("http://x/y"), (String::new(), String::new()));
}

#[test]
fn a_forbidden_audience_denies_its_jwt_svids_only() {
    let p = r#"
@id("issue") permit (principal, action == Tessera::Action::"issue_svid", resource);
@id("no-payments") forbid (principal, action == Tessera::Action::"issue_svid", resource)
when { context.audience like "https://payments.*" };
@id("declared-tools-only") forbid (principal, action == Tessera::Action::"begin_task", resource)
when { !context.declared_audiences.containsAll(["https://tools.example"]) };
@id("begin") permit (principal, action == Tessera::Action::"begin_task", resource);
"#;
    let (_d, e) = engine(&[("aud.cedar", p)]);
    let issue = |audience: &str| PolicyRequest {
        audience: audience.into(),
        ..req(Action::IssueSvid, Principal::User("alice".into()))
    };
    assert!(e.evaluate(&issue("https://tools.example")).allowed);
    assert!(e.evaluate(&issue("")).allowed, "X.509: no audience");
    let d = e.evaluate(&issue("https://payments.example"));
    assert!(!d.allowed);
    assert_eq!(d.policies, ["aud.cedar:no-payments"]);
    assert!(e.evaluate(&alice()).allowed);
    let other = PolicyRequest {
        declared_audiences: vec!["https://payments.example".into()],
        ..alice()
    };
    let d = e.evaluate(&other);
    assert!(!d.allowed);
    assert_eq!(d.policies, ["aud.cedar:declared-tools-only"]);
}

#[test]
fn evaluation_error_is_reported_and_policy_skipped() {
    let p = r#"@id("overflow") permit (principal, action, resource)
               when { context.ttl_seconds * 9223372036854775807 > 0 };
               @id("plain") permit (principal, action, resource);"#;
    let (_d, e) = engine(&[("o.cedar", p)]);
    let d = e.evaluate(&alice());
    assert!(d.allowed);
    assert_eq!(d.policies, ["o.cedar:plain"]);
    assert_eq!(d.errors.len(), 1);
    assert!(d.errors[0].contains("o.cedar:overflow"), "{:?}", d.errors);
    assert!(d.explain().contains("evaluation error"));
}

#[test]
fn syntax_error_names_file_and_position() {
    let broken =
        format!("{ANY}\n\npermit (principal, action, resource) when {{ resource.jit == }};");
    let err = load_err(&[("a.cedar", ANY), ("b.cedar", &broken)]);
    assert!(
        err.starts_with("b.cedar:3:61: syntax error: unexpected token"),
        "{err}"
    );
}

#[test]
fn schema_invalid_policy_rejected() {
    let typo =
        "@id(\"typo\")\npermit (principal, action, resource)\nwhen { resource.nonexistent };";
    let err = load_err(&[("bad.cedar", typo)]);
    assert!(
        err.starts_with("bad.cedar:3:8: policy `typo` does not match"),
        "{err}"
    );
    assert!(err.contains("`nonexistent`"), "{err}");
    // `path` exists on Workload but not on User: strict mode wants `principal is Workload`.
    let err = load_err(&[(
        "t.cedar",
        "permit (principal, action, resource) when { principal.path == \"/x\" };",
    )]);
    assert!(err.starts_with("t.cedar:1:45: policy `policy0`"), "{err}");
    let err = load_err(&[(
        "t.cedar",
        "permit (principal, action == Tessera::Action::\"rm\", resource);",
    )]);
    assert!(err.contains("unrecognized action"), "{err}");
}

#[test]
fn bad_annotations_rejected() {
    let cases = [
        r#"@id("p1") @max_ttl("forever") permit => x.cedar: policy `p1`: bad @max_ttl("forever")"#,
        r#"@id("p2") @max_ttl("0") permit => x.cedar: policy `p2`: bad @max_ttl"#,
        r#"@id("p3") @approval("maybe") permit => x.cedar: policy `p3`: bad @approval"#,
        r#"@id("f") @max_ttl("1h") forbid => only meaningful on permit"#,
        r#"@id("has space") permit => bad @id"#,
    ];
    for case in cases {
        let (head, want) = case.split_once(" => ").unwrap();
        let err = load_err(&[("x.cedar", &format!("{head} (principal, action, resource);"))]);
        assert!(err.contains(want), "{case}: {err}");
    }
    let template = "permit (principal == ?principal, action, resource);";
    assert!(load_err(&[("t.cedar", template)]).contains("templates"));
    let same = format!("@id(\"same\") {ANY}");
    let err = load_err(&[("a.cedar", &same), ("b.cedar", &same)]);
    assert_eq!(err, "duplicate policy name `same` (in a.cedar and b.cedar)");
}

#[test]
fn empty_dir_rejected() {
    let err = load_err(&[("notes.txt", ANY)]);
    assert!(err.starts_with("no policies in ") && err.ends_with("everything would be denied"));
    assert!(load_err(&[("empty.cedar", "// nothing\n")]).starts_with("no policies"));
    let missing = PolicyEngine::load_dir(Path::new("/nonexistent/tessera-policies"));
    assert!(matches!(missing, Err(PolicyError::Io { .. })));
}

#[test]
fn reload_keeps_last_good_set() {
    let dir = dir_with(&[("ops.cedar", OPS)]);
    let e = PolicyEngine::load_dir(dir.path()).unwrap();
    let before = e.evaluate(&alice());
    assert!(before.allowed);

    let file = dir.path().join("ops.cedar");
    std::fs::write(&file, "permit (principal, action, resource").unwrap();
    let err = e.reload().unwrap_err();
    assert!(err.to_string().starts_with("ops.cedar:1:"), "{err}");
    assert_eq!(e.evaluate(&alice()), before);
    assert!(e.describe().ends_with("(2 policies)"), "{}", e.describe());

    let fixed = format!("@id(\"deny-all\") forbid (principal, action, resource); {ANY} {ANY}");
    std::fs::write(&file, fixed).unwrap();
    assert_eq!(e.reload().unwrap(), 3);
    let after = e.evaluate(&alice());
    assert!(!after.allowed);
    assert_eq!(after.policies, ["ops.cedar:deny-all"]);
}

#[test]
fn builtin_set() {
    let e = PolicyEngine::builtin();
    assert_eq!(e.describe(), "builtin (3 policies)");
    assert_eq!(e.reload().unwrap(), 3);

    let d = e.evaluate(&alice());
    assert!(d.allowed && !d.approval_required, "{}", d.explain());
    assert_eq!(d.max_ttl_seconds, Some(86_400));
    assert_eq!(d.policies, ["builtin.cedar:operator-begin-task"]);

    let w = workload("spiffe://prod.example/batch");
    let d = e.evaluate(&req(Action::BeginTask, w.clone()));
    assert!(d.allowed && d.approval_required, "{}", d.explain());
    assert_eq!(d.max_ttl_seconds, Some(3600));
    assert_eq!(d.policies, ["builtin.cedar:workload-begin-task"]);
    // The built-in set allows break-glass to nobody.
    let mut asked = req(Action::BeginTask, w.clone());
    asked.break_glass = true;
    assert!(!e.evaluate(&asked).break_glass_allowed);
    let mut asked = alice();
    asked.break_glass = true;
    assert!(!e.evaluate(&asked).break_glass_allowed);

    for p in [w, Principal::User("bob".into())] {
        let d = e.evaluate(&req(Action::IssueSvid, p));
        assert!(d.allowed && !d.approval_required && d.max_ttl_seconds.is_none());
        assert_eq!(d.policies, ["builtin.cedar:issue-svid"]);
    }
}

#[test]
fn engine_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<PolicyEngine>();
}

/// Global set for the tenant tests: operators may start tasks for up to a day, without
/// approval; nothing may touch `/vault`.
const GLOBAL: &str = r#"
@id("ops") @max_ttl("1d")
permit (principal is Tessera::User, action, resource);

@id("no-vault")
forbid (principal, action, resource) when { resource.path like "/vault*" };
"#;

fn acme(text: &str) -> Option<TenantPolicies<'_>> {
    Some(TenantPolicies {
        tenant: "acme",
        text,
    })
}

#[test]
fn tenant_forbid_denies_what_the_global_set_allows() {
    let (_d, e) = engine(&[("g.cedar", GLOBAL)]);
    let own = r#"@id("no-long") forbid (principal, action, resource) when { context.ttl_seconds > 300 };"#;
    let d = e.evaluate_for(&alice(), acme(own));
    assert!(!d.allowed && !d.approval_required && d.max_ttl_seconds.is_none());
    assert_eq!(d.policies, ["tenant/acme:no-long"]);
    assert_eq!(d.explain(), "denied by policies [tenant/acme:no-long]");
    // Within the tenant's bound the global decision stands.
    let mut short = alice();
    short.ttl_seconds = 300;
    let d = e.evaluate_for(&short, acme(own));
    assert!(d.allowed);
    assert_eq!(d.policies, ["g.cedar:ops"]);
    assert_eq!(d.max_ttl_seconds, Some(86_400));
}

#[test]
fn tenant_permit_cannot_allow_what_the_global_set_denies() {
    let (_d, e) = engine(&[("g.cedar", GLOBAL)]);
    let own = r#"@id("all") permit (principal, action, resource);"#;
    // A global forbid.
    let mut vault = alice();
    vault.entry.spiffe_id = "spiffe://prod.example/vault/root".into();
    let d = e.evaluate_for(&vault, acme(own));
    assert!(!d.allowed);
    assert_eq!(d.policies, ["g.cedar:no-vault"]);
    // No global permit (workloads).
    let w = req(Action::BeginTask, workload("spiffe://prod.example/ci"));
    let d = e.evaluate_for(&w, acme(own));
    assert!(!d.allowed && d.policies.is_empty());
}

#[test]
fn tenant_permit_adds_approval_and_lowers_the_ttl_cap() {
    let (_d, e) = engine(&[("g.cedar", GLOBAL)]);
    let own = r#"
@id("approve") @approval("required") @max_ttl("15m")
permit (principal, action, resource) when { resource.tenant == "acme" };

@id("loose") @approval("none") @max_ttl("2d")
permit (principal, action, resource);
"#;
    let d = e.evaluate_for(&alice(), acme(own));
    assert!(d.allowed && d.approval_required);
    assert_eq!(d.max_ttl_seconds, Some(900));
    assert_eq!(
        d.policies,
        ["g.cedar:ops", "tenant/acme:approve", "tenant/acme:loose"]
    );
    // A permit cannot raise the global cap or waive approval.
    let only_loose =
        r#"@id("loose") @approval("none") @max_ttl("2d") permit (principal, action, resource);"#;
    let d = e.evaluate_for(&alice(), acme(only_loose));
    assert_eq!(d.max_ttl_seconds, Some(86_400));
    let (_d2, strict) = engine(&[(
        "g.cedar",
        r#"@approval("required") permit (principal, action, resource);"#,
    )]);
    assert!(
        strict
            .evaluate_for(&alice(), acme(only_loose))
            .approval_required
    );
}

#[test]
fn tenant_policies_that_match_nothing_keep_the_global_decision() {
    let (_d, e) = engine(&[("g.cedar", GLOBAL)]);
    let own = r#"@id("other") forbid (principal, action, resource) when { resource.tenant == "globex" };"#;
    let global = e.evaluate(&alice());
    assert_eq!(e.evaluate_for(&alice(), acme(own)), global);
    assert_eq!(e.evaluate_for(&alice(), acme("  \n")), global);
    assert_eq!(e.evaluate_for(&alice(), None), global);
}

#[test]
fn tenant_text_that_does_not_load_denies() {
    let (_d, e) = engine(&[("g.cedar", GLOBAL)]);
    let d = e.evaluate_for(
        &alice(),
        acme("permit (principal, action, resource) when {"),
    );
    assert!(!d.allowed && d.policies.is_empty());
    assert!(
        d.errors[0].starts_with("the policies of tenant acme do not load"),
        "{:?}",
        d.errors
    );
    // The parsed set is kept per text: a fixed text is used at once.
    let own = r#"@id("x") forbid (principal, action, resource);"#;
    assert_eq!(
        e.evaluate_for(&alice(), acme(own)).policies,
        ["tenant/acme:x"]
    );
    let d = e.evaluate_for(&alice(), acme(ANY));
    assert!(d.allowed);
}

#[test]
fn tenant_text_is_checked_like_the_global_set() {
    let ids = PolicyEngine::check_tenant(
        "acme",
        r#"@id("b") forbid (principal, action, resource); @id("a") forbid (principal, action, resource);"#,
    )
    .unwrap();
    assert_eq!(ids, ["tenant/acme:a", "tenant/acme:b"]);
    let err = PolicyEngine::check_tenant(
        "acme",
        "permit (principal, action, resource) when { context.nope };",
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("tenant/acme:1:"), "{err}");
    let err = PolicyEngine::check_tenant("acme", "// nothing\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tenant/acme: holds no policy (to remove a tenant's policies, clear them)"
    );
    let big = format!("{ANY}{}", " ".repeat(MAX_TENANT_POLICY_BYTES));
    let err = PolicyEngine::check_tenant("acme", &big)
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than the 65536 allowed"), "{err}");
    let err = PolicyEngine::check_tenant(
        "acme",
        r#"@max_ttl("soon") permit (principal, action, resource);"#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bad @max_ttl"), "{err}");
}

/// Global set for the break-glass tests: operators need approval; on-call `alice` may break
/// glass on `/db/*` entries for at most an hour; `/vault` is never touched.
const BREAK_GLASS: &str = r#"
@id("ops") @approval("required") @max_ttl("1d")
permit (principal is Tessera::User, action == Tessera::Action::"begin_task", resource);

@id("oncall-break-glass") @break_glass("allowed") @max_ttl("1h")
permit (principal == Tessera::User::"alice", action == Tessera::Action::"begin_task", resource)
when { resource.path like "/db/*" };

@id("no-vault")
forbid (principal, action, resource) when { resource.path like "/vault*" };
"#;

fn breaking(mut r: PolicyRequest) -> PolicyRequest {
    r.break_glass = true;
    r
}

#[test]
fn break_glass_is_allowed_only_by_an_annotated_permit_that_allowed_the_request() {
    let (_d, e) = engine(&[("g.cedar", BREAK_GLASS)]);
    let d = e.evaluate(&breaking(alice()));
    assert!(
        d.allowed && d.approval_required && d.break_glass_allowed,
        "{d:?}"
    );
    assert_eq!(d.max_ttl_seconds, Some(3600));
    assert_eq!(d.policies, ["g.cedar:oncall-break-glass", "g.cedar:ops"]);
    assert!(
        d.explain().ends_with("; break-glass allowed)"),
        "{}",
        d.explain()
    );
    assert_eq!(d.to_json()["break_glass_allowed"], true);
    // Another operator: allowed with approval, but not by break-glass.
    let bob = breaking(req(Action::BeginTask, Principal::User("bob".into())));
    let d = e.evaluate(&bob);
    assert!(
        d.allowed && d.approval_required && !d.break_glass_allowed,
        "{d:?}"
    );
    assert!(!d.explain().contains("break-glass"), "{}", d.explain());
    // Alice outside the annotated permit's condition.
    let mut other = breaking(alice());
    other.entry.spiffe_id = "spiffe://prod.example/web/front".into();
    assert!(!e.evaluate(&other).break_glass_allowed);
    // A forbid still denies, break-glass or not.
    let mut vault = breaking(alice());
    vault.entry.spiffe_id = "spiffe://prod.example/vault/db".into();
    let d = e.evaluate(&vault);
    assert!(!d.allowed && !d.break_glass_allowed);
    // Policies see the request's break_glass in their context.
    let (_d2, gate) = engine(&[(
        "g.cedar",
        r#"@id("p") permit (principal, action, resource);
@id("no-bg") forbid (principal, action, resource) when { context.break_glass };"#,
    )]);
    assert!(gate.evaluate(&alice()).allowed);
    let d = gate.evaluate(&breaking(alice()));
    assert!(!d.allowed);
    assert_eq!(d.policies, ["g.cedar:no-bg"]);
}

#[test]
fn break_glass_annotations_are_checked() {
    for (text, want) in [
        (
            r#"@id("p") @break_glass("sometimes") permit (principal, action, resource);"#,
            "x.cedar: policy `p`: bad @break_glass(\"sometimes\"): expected \"allowed\" or \"denied\"",
        ),
        (
            r#"@id("f") @break_glass("allowed") forbid (principal, action, resource);"#,
            "@break_glass is only meaningful on permit policies",
        ),
    ] {
        let err = load_err(&[("x.cedar", text)]);
        assert!(err.contains(want), "{text}: {err}");
    }
    // "denied" is the same as no annotation.
    let (_d, e) = engine(&[(
        "x.cedar",
        r#"@break_glass("denied") permit (principal, action, resource);"#,
    )]);
    assert!(!e.evaluate(&breaking(alice())).break_glass_allowed);
}

#[test]
fn tenant_policies_narrow_break_glass_and_never_allow_it() {
    let (_d, e) = engine(&[("g.cedar", BREAK_GLASS)]);
    // A tenant may forbid it...
    let own = r#"@id("no-bg") forbid (principal, action, resource) when { context.break_glass };"#;
    PolicyEngine::check_tenant("acme", own).unwrap();
    let d = e.evaluate_for(&breaking(alice()), acme(own));
    assert!(!d.allowed && !d.break_glass_allowed);
    assert_eq!(d.policies, ["tenant/acme:no-bg"]);
    assert!(
        e.evaluate_for(&alice(), acme(own)).allowed,
        "only break-glass"
    );
    // ... or take it away by requiring approval ...
    let approve = r#"@id("approve") @approval("required") permit (principal, action, resource);"#;
    let d = e.evaluate_for(&breaking(alice()), acme(approve));
    assert!(
        d.allowed && d.approval_required && !d.break_glass_allowed,
        "{d:?}"
    );
    // ... and a matching permit that asks for nothing keeps it.
    let plain = r#"@id("plain") permit (principal, action, resource);"#;
    assert!(
        e.evaluate_for(&breaking(alice()), acme(plain))
            .break_glass_allowed
    );
    // It can never allow it: the annotation is refused in a tenant's set, ...
    let widen = r#"@id("widen") @break_glass("allowed") permit (principal, action, resource);"#;
    let err = PolicyEngine::check_tenant("acme", widen)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tenant/acme: policy `widen`: @break_glass(\"allowed\") is for the global policy set \
         only: a tenant's policies can narrow break-glass (forbid it), never allow it"
    );
    // ... and ignored in one stored before the check (bob has no global break-glass).
    let bob = breaking(req(Action::BeginTask, Principal::User("bob".into())));
    let d = e.evaluate_for(&bob, acme(widen));
    assert!(d.allowed && !d.break_glass_allowed, "{d:?}");
}

#[test]
fn max_parallel_is_the_smallest_of_the_permits_that_allowed_and_tenants_only_lower_it() {
    let (_d, e) = engine(&[(
        "g.cedar",
        r#"
@id("four") @max_parallel("4") permit (principal, action, resource);
@id("two") @max_parallel("2") permit (principal, action, resource) when { resource.tenant == "acme" };
"#,
    )]);
    let d = e.evaluate(&alice());
    assert!(d.allowed);
    assert_eq!(d.max_parallel, Some(2), "{d:?}");
    assert!(
        d.explain().contains("at most 2 parallel"),
        "{}",
        d.explain()
    );
    assert_eq!(d.to_json()["max_parallel"], 2);
    // No annotation among the permits that allowed: no cap from policy.
    let (_d2, plain) = engine(&[("g.cedar", ANY)]);
    let d = plain.evaluate(&alice());
    assert_eq!(d.max_parallel, None);
    assert!(!d.explain().contains("parallel"), "{}", d.explain());
    // A tenant permit lowers it, never raises it; a denial carries none.
    let own = r#"@id("one") @max_parallel("1") permit (principal, action, resource);"#;
    assert_eq!(e.evaluate_for(&alice(), acme(own)).max_parallel, Some(1));
    let loose = r#"@id("many") @max_parallel("50") permit (principal, action, resource);"#;
    assert_eq!(e.evaluate_for(&alice(), acme(loose)).max_parallel, Some(2));
    let forbid = r#"@id("no") forbid (principal, action, resource);"#;
    assert_eq!(e.evaluate_for(&alice(), acme(forbid)).max_parallel, None);
    // Decisions stored before it read as no cap.
    let mut old = d.to_json();
    old.as_object_mut().unwrap().remove("max_parallel");
    let back: Decision = serde_json::from_value(old).unwrap();
    assert_eq!(back.max_parallel, None);
}

#[test]
fn max_parallel_annotations_are_checked() {
    for value in [
        "0",
        "-1",
        "+2",
        " 2",
        "2.5",
        "two",
        "",
        "10001",
        "99999999999",
    ] {
        let text =
            format!(r#"@id("p") @max_parallel("{value}") permit (principal, action, resource);"#);
        let err = load_err(&[("x.cedar", &text)]);
        assert!(
            err.contains(&format!(
                "x.cedar: policy `p`: bad @max_parallel(\"{value}\"): expected a whole number of \
                 tasks from 1 to 10000"
            )),
            "{value:?}: {err}"
        );
    }
    let err = load_err(&[(
        "x.cedar",
        r#"@id("f") @max_parallel("2") forbid (principal, action, resource);"#,
    )]);
    assert!(
        err.contains("@max_parallel is only meaningful on permit policies"),
        "{err}"
    );
    for value in ["1", "10000"] {
        let text = format!(r#"@max_parallel("{value}") permit (principal, action, resource);"#);
        let (_d, e) = engine(&[("x.cedar", &text)]);
        assert_eq!(
            e.evaluate(&alice()).max_parallel,
            Some(value.parse().unwrap())
        );
    }
}
