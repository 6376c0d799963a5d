use super::*;

fn tenant(name: &str, prefixes: &[&str]) -> TenantRecord {
    TenantRecord {
        name: name.to_owned(),
        path_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        admin_users: vec![],
        admin_groups: vec![],
        max_entries: None,
        max_open_tasks: None,
        max_parallel_tasks_per_entry: None,
        review_every: None,
        created_at: 0,
        revision: 1,
        policy: None,
    }
}

#[test]
fn prefixes_own_whole_segments() {
    assert!(covers("/acme", "/acme"));
    assert!(covers("/acme", "/acme/web"));
    assert!(!covers("/acme", "/acme-evil"));
    assert!(!covers("/acme", "/acmeweb/x"));
    assert!(!covers("/acme/web", "/acme"));
    assert!(covers("/", "/anything/at/all"));
}

#[test]
fn the_longest_prefix_owns_a_path() {
    let all = [
        tenant("default", &["/"]),
        tenant("acme", &["/acme"]),
        tenant("beta", &["/beta", "/shared/beta"]),
    ];
    let owner = |p| owner_of(&all, p).map(|t| t.name.as_str());
    assert_eq!(owner("/acme/web"), Some("acme"));
    assert_eq!(owner("/acme-evil/web"), Some("default"));
    assert_eq!(owner("/shared/beta/x"), Some("beta"));
    assert_eq!(owner("/shared/other"), Some("default"));
    assert_eq!(owner_of(&all[1..], "/other"), None);
}

#[test]
fn overlapping_prefixes_are_refused() {
    let all = [tenant("default", &["/"]), tenant("acme", &["/acme"])];
    assert!(check_prefixes(&tenant("beta", &["/beta"]), &all).is_ok());
    assert!(check_prefixes(&tenant("beta", &["/acme-evil"]), &all).is_ok());
    for bad in ["/acme", "/acme/sub", "/"] {
        let err = check_prefixes(&tenant("beta", &[bad]), &all).unwrap_err();
        let text = err.to_string();
        if bad == "/" {
            assert!(matches!(err, TenantError::RootPrefix), "{text}");
        } else {
            assert!(text.contains("overlaps /acme of tenant acme"), "{text}");
        }
    }
    // A tenant's own prefixes never conflict with themselves (update).
    assert!(check_prefixes(&tenant("acme", &["/acme", "/acme2"]), &all).is_ok());
    // `/acme` under a tenant owning `/`: the root overlaps nothing.
    assert!(check_prefixes(&tenant("default", &["/"]), &all).is_ok());
}

#[test]
fn names_and_prefixes_are_validated() {
    for ok in ["acme", "a", "acme-2", "0x"] {
        assert!(validate_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "Acme",
        "-acme",
        "acme-",
        "ac_me",
        "ac.me",
        &"a".repeat(64),
    ] {
        assert!(validate_name(bad).is_err(), "{bad}");
    }
    for ok in ["/", "/acme", "/acme/web", "/a.b-c_d"] {
        assert_eq!(validate_prefix(ok).unwrap(), ok);
    }
    for (bad, why) in [
        ("acme", "start with /"),
        ("/acme/", "end with /"),
        ("//acme", "empty segment"),
        ("/acme/../x", ". or .."),
        ("/ac me", "letters"),
        ("/ac%2fme", "letters"),
    ] {
        let e = validate_prefix(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn a_tenant_record_defaults_its_prefix_and_keeps_only_outer_ones() {
    let req = TenantRequest {
        name: "acme".into(),
        ..TenantRequest::default()
    };
    assert_eq!(
        TenantDirectory::record(&req, 1, 1).unwrap().path_prefixes,
        ["/acme"]
    );
    let req = TenantRequest {
        name: "acme".into(),
        path_prefixes: vec!["/acme/web".into(), "/acme".into(), "/acme".into()],
        max_entries: Some(0),
        ..TenantRequest::default()
    };
    assert!(TenantDirectory::record(&req, 1, 1).is_err(), "quota 0");
    let req = TenantRequest {
        max_entries: Some(3),
        ..req
    };
    assert_eq!(
        TenantDirectory::record(&req, 1, 1).unwrap().path_prefixes,
        ["/acme"]
    );
}

#[test]
fn operators_see_only_their_tenants() {
    let user = UnixUser {
        uid: 1000,
        name: "alice".into(),
    };
    let mut acme = tenant("acme", &["/acme"]);
    acme.admin_users = vec!["alice".into()];
    let mut beta = tenant("beta", &["/beta"]);
    beta.admin_users = vec!["1000".into()];
    let gamma = tenant("gamma", &["/gamma"]);
    let all = [tenant("default", &["/"]), acme, beta, gamma];
    let set = administered(&user, 4242, &all);
    assert_eq!(
        set.iter().map(String::as_str).collect::<Vec<_>>(),
        ["acme", "beta"]
    );

    let op = Operator {
        user: user.clone(),
        scope: Scope::Tenants(set),
    };
    assert!(op.sees("acme") && !op.sees("gamma") && !op.is_platform());
    // Several tenants and none named: the operator must say which.
    assert!(matches!(
        op.tenant_for("", "/acme/x", &all),
        Err(TenantError::Ambiguous(_))
    ));
    // Another tenant answers like a missing one.
    let hidden = op
        .tenant_for("gamma", "/gamma/x", &all)
        .unwrap_err()
        .to_string();
    let missing = op
        .tenant_for("nope", "/gamma/x", &all)
        .unwrap_err()
        .to_string();
    assert_eq!(hidden.replace("gamma", "X"), missing.replace("nope", "X"));

    let one = Operator {
        user: user.clone(),
        scope: Scope::Tenants(["acme".to_owned()].into()),
    };
    assert_eq!(one.tenant_for("", "/beta/x", &all).unwrap().name, "acme");
    let root = Operator::platform(user);
    assert_eq!(root.tenant_for("", "/beta/x", &all).unwrap().name, "beta");
    assert_eq!(root.tenant_for("", "/other", &all).unwrap().name, "default");
    assert!(root.require_platform("x").is_ok() && one.require_platform("x").is_err());
}

#[test]
fn owners_are_users_or_spiffe_ids() {
    for ok in ["user:alice", "spiffe://example.org/svc"] {
        assert!(validate_owner(ok).is_ok(), "{ok}");
    }
    for bad in [
        "alice",
        "user:",
        "user:a b",
        "spiffe://example.org/",
        "group:x",
    ] {
        assert!(validate_owner(bad).is_err(), "{bad}");
    }
}
