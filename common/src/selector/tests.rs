use super::*;

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn sel(s: &str) -> Selector {
    s.parse().unwrap()
}

fn set(items: &[&str]) -> SelectorSet {
    items.iter().map(|s| sel(s)).collect()
}

/// A value each key accepts. The match is exhaustive, so a new key cannot be added without
/// a sample, and every test below that walks the vocabulary then covers it.
fn sample(key: SelectorKey) -> &'static str {
    match key {
        SelectorKey::Unix(key) => match key {
            UnixKey::Uid | UnixKey::Gid | UnixKey::SupplementaryGid => "1000",
            UnixKey::User | UnixKey::Group => "web",
            UnixKey::Path => "/usr/bin/app",
            UnixKey::Sha256 => SHA,
        },
        SelectorKey::Cgroup(CgroupKey::Path) => "/system.slice/app.service",
        SelectorKey::Container(ContainerKey::Id) | SelectorKey::K8s(K8sKey::ContainerId) => CID,
        SelectorKey::Container(ContainerKey::Runtime) => "docker",
        SelectorKey::Systemd(SystemdKey::Unit) => "app.service",
        SelectorKey::Systemd(SystemdKey::Slice) => "system.slice",
        SelectorKey::K8s(K8sKey::PodUid) => POD,
    }
}

const CID: &str = "4c01db0b339c2a1e1b4ee0a3b9b5e8f2d7c6a5b4c3d2e1f0a9b8c7d6e5f4a3b2";
const POD: &str = "2f1c3e0a-8b7d-4c6e-9f5a-1b2c3d4e5f60";

/// The cgroup kinds parse, round-trip, and refuse values attestation never emits, with an
/// error naming the rule.
#[test]
fn cgroup_kinds_validate_their_values() {
    let good = [
        "cgroup:path:/",
        "cgroup:path:/system.slice/docker-x.scope",
        &format!("container:id:{CID}"),
        "container:runtime:docker",
        "container:runtime:containerd",
        "container:runtime:cri-o",
        "container:runtime:podman",
        "systemd:unit:nginx.service",
        "systemd:unit:user@1000.service",
        "systemd:unit:session-3.scope",
        "systemd:unit:getty@tty1.service",
        "systemd:slice:system.slice",
        "systemd:slice:kubepods-burstable.slice",
        &format!("k8s:pod-uid:{POD}"),
        "k8s:pod-uid:5c8c4a5b4b2c6b1b8e8f9d6b6f3b2a1c",
        &format!("k8s:container-id:{CID}"),
    ];
    for text in good {
        let s = Selector::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(s.to_string(), text);
    }
    assert_eq!(
        Selector::new(ContainerKey::Runtime, "x"),
        Err(SelectorError::UnknownContainerRuntime("x".to_owned()))
    );
    let id = |key: SelectorKey| SelectorError::InvalidValue {
        key,
        rule: "exactly 64 lowercase hex characters",
    };
    let cid: SelectorKey = ContainerKey::Id.into();
    let kcid: SelectorKey = K8sKey::ContainerId.into();
    let bad: Vec<(String, SelectorError)> = vec![
        (format!("container:id:{}", &CID[1..]), id(cid)),
        (format!("container:id:{CID}0"), id(cid)),
        (format!("container:id:{}", CID.to_uppercase()), id(cid)),
        (format!("container:id:{}g", &CID[1..]), id(cid)),
        ("container:id:abc".to_owned(), id(cid)),
        (format!("k8s:container-id:{}", &CID[2..]), id(kcid)),
        (
            "container:runtime:rkt".to_owned(),
            SelectorError::UnknownContainerRuntime("rkt".to_owned()),
        ),
        (
            "container:runtime:Docker".to_owned(),
            SelectorError::UnknownContainerRuntime("Docker".to_owned()),
        ),
        (
            "container:runtime:crio".to_owned(),
            SelectorError::UnknownContainerRuntime("crio".to_owned()),
        ),
        (
            "container:image:nginx".to_owned(),
            SelectorError::UnknownKey {
                kind: SelectorKind::Container,
                key: "image".to_owned(),
            },
        ),
        (
            "k8s:ns:default".to_owned(),
            SelectorError::UnknownKey {
                kind: SelectorKind::K8s,
                key: "ns".to_owned(),
            },
        ),
    ];
    for (text, want) in bad {
        assert_eq!(Selector::from_str(&text), Err(want), "{text}");
    }
    // The rest: just refused, with a message naming the key.
    let refused = [
        "cgroup:path:system.slice",
        "systemd:unit:nginx",
        "systemd:unit:.service",
        "systemd:unit:a b.service",
        "systemd:unit:a/b.service",
        "systemd:unit:system.slice",
        "systemd:slice:nginx.service",
        "systemd:slice:.slice",
        "k8s:pod-uid:2f1c3e0a8b7d4c6e9f5a1b2c3d4e5f6",
        "k8s:pod-uid:2F1C3E0A-8B7D-4C6E-9F5A-1B2C3D4E5F60",
        "k8s:pod-uid:2f1c3e0a_8b7d_4c6e_9f5a_1b2c3d4e5f60",
        "k8s:pod-uid:2f1c3e0a-8b7d-4c6e-9f5a-1b2c3d4e5f6",
    ];
    for text in refused {
        let err = Selector::from_str(text).expect_err(text);
        let key = text.rsplit_once(':').unwrap().0;
        assert!(err.to_string().starts_with(key), "{text}: {err}");
    }
    let long = format!("systemd:unit:{}.service", "a".repeat(MAX_UNIT_NAME - 7));
    assert!(Selector::from_str(&long).is_err());
    let fits = format!("systemd:unit:{}.service", "a".repeat(MAX_UNIT_NAME - 8));
    assert!(Selector::from_str(&fits).is_ok());
    assert_eq!(
        SelectorError::UnknownContainerRuntime("rkt".to_owned()).to_string(),
        "unknown container runtime \"rkt\"; supported runtimes: docker, containerd, cri-o, podman"
    );
    assert_eq!(
        Selector::from_str("container:id:abc")
            .unwrap_err()
            .to_string(),
        "container:id value must be exactly 64 lowercase hex characters"
    );
    for runtime in ContainerRuntime::ALL {
        assert_eq!(runtime.as_str().parse::<ContainerRuntime>(), Ok(*runtime));
        Selector::new(ContainerKey::Runtime, runtime).unwrap();
    }
}

#[test]
fn valid_selectors_parse_and_round_trip() {
    use UnixKey as K;
    let sha = format!("unix:sha256:{SHA}");
    let long_path = format!("unix:path:/{}", "a".repeat(MAX_SELECTOR_LENGTH - 11));
    assert_eq!(long_path.len(), MAX_SELECTOR_LENGTH);
    let cases: Vec<(&str, UnixKey, &str)> = vec![
        ("unix:uid:1000", K::Uid, "1000"),
        ("unix:uid:0", K::Uid, "0"),
        ("unix:uid:4294967295", K::Uid, "4294967295"),
        ("unix:gid:42", K::Gid, "42"),
        ("unix:supplementary_gid:27", K::SupplementaryGid, "27"),
        ("unix:supplementary_gid:0", K::SupplementaryGid, "0"),
        (
            "unix:supplementary_gid:4294967295",
            K::SupplementaryGid,
            "4294967295",
        ),
        ("unix:user:www-data", K::User, "www-data"),
        ("unix:user:svc@REALM", K::User, "svc@REALM"),
        ("unix:user:DOMAIN\\alice", K::User, "DOMAIN\\alice"),
        ("unix:user:jörg", K::User, "jörg"),
        ("unix:group:wheel", K::Group, "wheel"),
        ("unix:path:/usr/bin/python3", K::Path, "/usr/bin/python3"),
        ("unix:path:/opt/my app/bin", K::Path, "/opt/my app/bin"),
        ("unix:path:/a:b", K::Path, "/a:b"),
        ("unix:path:/", K::Path, "/"),
        (&sha, K::Sha256, SHA),
        (&long_path, K::Path, long_path.get(10..).unwrap()),
    ];
    for (input, key, value) in cases {
        let s = Selector::from_str(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(s.kind(), SelectorKind::Unix, "{input:?}");
        assert_eq!(s.key(), SelectorKey::Unix(key), "{input:?}");
        assert_eq!(s.value(), value, "{input:?}");
        assert_eq!(s.to_string(), input);
        assert_eq!(Selector::try_from(input).unwrap(), s);
        assert_eq!(Selector::new(key, value).unwrap(), s);
        assert_eq!(Selector::unix(key, value).unwrap(), s);
    }
}

#[test]
fn invalid_selectors_report_specific_error() {
    use SelectorError as E;
    use UnixKey as K;
    let unix = SelectorKind::Unix;
    let too_long = format!("unix:path:/{}", "a".repeat(MAX_SELECTOR_LENGTH - 10));
    let sha_upper = format!("unix:sha256:{}", SHA.to_uppercase());
    let sha_short = format!("unix:sha256:{}", SHA.get(1..).unwrap());
    let sha_long = format!("unix:sha256:{SHA}0");
    let sha_not_hex = format!("unix:sha256:{}g", SHA.get(1..).unwrap());
    let unknown_key = |key: &str| E::UnknownKey {
        kind: unix,
        key: key.to_owned(),
    };
    let cases: Vec<(&str, SelectorError)> = vec![
        ("", E::Empty),
        (&too_long, E::TooLong(MAX_SELECTOR_LENGTH + 1)),
        ("unix", E::MissingColon),
        (":uid:1000", E::EmptyKind),
        ("unix:", E::EmptyValue),
        ("Unix:uid:1000", E::BadKindChar('U')),
        ("un.ix:uid:1000", E::BadKindChar('.')),
        ("unix :uid:1000", E::SurroundingWhitespace),
        ("un ix:uid:1000", E::BadKindChar(' ')),
        ("k8s8:ns:default", E::UnknownKind("k8s8".to_owned())),
        ("docker:label:a", E::UnknownKind("docker".to_owned())),
        ("unixx:uid:1", E::UnknownKind("unixx".to_owned())),
        (" unix:uid:1000", E::SurroundingWhitespace),
        ("unix:uid:1000 ", E::SurroundingWhitespace),
        ("unix: uid:1000", E::SurroundingWhitespace),
        ("unix:uid: 1000", E::SurroundingWhitespace),
        ("unix:uid:1000\n", E::ControlCharacter('\n')),
        ("unix:path:/bin/\0sh", E::ControlCharacter('\0')),
        ("unix:user:a\u{1b}[31m", E::ControlCharacter('\u{1b}')),
        ("unix:uid", E::MissingKey(unix)),
        ("unix::1000", E::MissingKey(unix)),
        ("unix:pid:1", unknown_key("pid")),
        ("unix:UID:1", unknown_key("UID")),
        ("unix:uid :1", unknown_key("uid ")),
        (
            "unix:supplementary_group:wheel",
            unknown_key("supplementary_group"),
        ),
        (
            "unix:supplementary-gid:27",
            unknown_key("supplementary-gid"),
        ),
        ("unix:uid:", E::EmptyKeyValue(K::Uid.into())),
        ("unix:gid:", E::EmptyKeyValue(K::Gid.into())),
        ("unix:user:", E::EmptyKeyValue(K::User.into())),
        ("unix:group:", E::EmptyKeyValue(K::Group.into())),
        (
            "unix:supplementary_gid:",
            E::EmptyKeyValue(K::SupplementaryGid.into()),
        ),
        ("unix:path:", E::EmptyKeyValue(K::Path.into())),
        ("unix:sha256:", E::EmptyKeyValue(K::Sha256.into())),
        ("unix:uid:-1", E::InvalidUnixId(K::Uid)),
        ("unix:uid:+1", E::InvalidUnixId(K::Uid)),
        ("unix:uid:01", E::InvalidUnixId(K::Uid)),
        ("unix:uid:00", E::InvalidUnixId(K::Uid)),
        ("unix:uid:4294967296", E::InvalidUnixId(K::Uid)),
        ("unix:uid:1e3", E::InvalidUnixId(K::Uid)),
        ("unix:uid:1 000", E::InvalidUnixId(K::Uid)),
        ("unix:gid:abc", E::InvalidUnixId(K::Gid)),
        (
            "unix:supplementary_gid:027",
            E::InvalidUnixId(K::SupplementaryGid),
        ),
        (
            "unix:supplementary_gid:27,28",
            E::InvalidUnixId(K::SupplementaryGid),
        ),
        (
            "unix:supplementary_gid:sudo",
            E::InvalidUnixId(K::SupplementaryGid),
        ),
        (
            "unix:user:a:b",
            E::InvalidUnixName {
                key: K::User,
                ch: ':',
            },
        ),
        (
            "unix:user:a/b",
            E::InvalidUnixName {
                key: K::User,
                ch: '/',
            },
        ),
        (
            "unix:group:a b",
            E::InvalidUnixName {
                key: K::Group,
                ch: ' ',
            },
        ),
        (
            "unix:group:a\u{a0}b",
            E::InvalidUnixName {
                key: K::Group,
                ch: '\u{a0}',
            },
        ),
        ("unix:path:bin/sh", E::RelativeUnixPath),
        ("unix:path:./sh", E::RelativeUnixPath),
        ("unix:path:~/sh", E::RelativeUnixPath),
        (&sha_upper, E::InvalidSha256),
        (&sha_short, E::InvalidSha256),
        (&sha_long, E::InvalidSha256),
        (&sha_not_hex, E::InvalidSha256),
    ];
    for (input, expected) in cases {
        assert_eq!(Selector::from_str(input), Err(expected), "{input:?}");
    }
}

#[test]
fn typed_constructors_validate_like_parse() {
    use SelectorError as E;
    use UnixKey as K;
    assert_eq!(
        Selector::new(K::Uid, ""),
        Err(E::EmptyKeyValue(K::Uid.into()))
    );
    assert_eq!(Selector::new(K::Uid, "1 "), Err(E::SurroundingWhitespace));
    assert_eq!(Selector::new(K::Uid, " 1"), Err(E::SurroundingWhitespace));
    assert_eq!(
        Selector::new(K::User, "a\nb"),
        Err(E::ControlCharacter('\n'))
    );
    assert_eq!(Selector::unix(K::Uid, -1), Err(E::InvalidUnixId(K::Uid)));
    assert_eq!(
        Selector::unix(K::SupplementaryGid, "x"),
        Err(E::InvalidUnixId(K::SupplementaryGid))
    );
    assert_eq!(Selector::unix(K::Path, "sh"), Err(E::RelativeUnixPath));
    // The length limit counts "unix:path:" too: 10 bytes of prefix + 1014 of value fit.
    let fits = format!("/{}", "a".repeat(MAX_SELECTOR_LENGTH - 11));
    assert_eq!(Selector::unix(K::Path, &fits).unwrap().value(), fits);
    let long = format!("{fits}a");
    assert_eq!(
        Selector::unix(K::Path, &long),
        Err(E::TooLong(MAX_SELECTOR_LENGTH + 1))
    );
    // The same limit through another key name.
    let name = "a".repeat(MAX_SELECTOR_LENGTH + 1 - "unix:user:".len());
    assert_eq!(
        Selector::unix(K::User, &name),
        Err(E::TooLong(MAX_SELECTOR_LENGTH + 1))
    );

    assert_eq!(Selector::unix(K::Uid, 1000).unwrap(), sel("unix:uid:1000"));
    assert_eq!(Selector::unix(K::Gid, 0u32).unwrap(), sel("unix:gid:0"));
    assert_eq!(
        Selector::unix(K::SupplementaryGid, 27).unwrap(),
        sel("unix:supplementary_gid:27")
    );
    assert_eq!(
        Selector::unix(K::User, "web").unwrap(),
        sel("unix:user:web")
    );
    assert_eq!(
        Selector::new(SelectorKey::Unix(K::Group), "staff").unwrap(),
        sel("unix:group:staff")
    );
}

/// The vocabulary is closed and self-consistent: every key of every kind has one
/// spelling, parses back to itself, builds a valid selector with a sample value and
/// refuses an empty one.
#[test]
fn every_key_round_trips_through_the_validator() {
    let mut spellings = std::collections::HashSet::new();
    for kind in SelectorKind::ALL {
        assert_eq!(kind.as_str().parse::<SelectorKind>(), Ok(*kind));
        assert_eq!(kind.to_string(), kind.as_str());
        assert!(
            kind.as_str()
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-')),
            "{kind}"
        );
        for key in kind.keys() {
            assert_eq!(key.kind(), *kind);
            assert!(spellings.insert(key.to_string()), "duplicate {key}");
            assert_eq!(kind.key(key.as_str()), Ok(key), "{key}");
            let s = Selector::new(key, sample(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(s.kind(), *kind);
            assert_eq!(s.key(), key);
            let text = format!("{key}:{}", sample(key));
            assert_eq!(s.to_string(), text);
            assert_eq!(Selector::from_str(&text), Ok(s), "{text}");
            assert_eq!(
                Selector::from_str(&format!("{key}:")),
                Err(SelectorError::EmptyKeyValue(key))
            );
        }
    }
    assert_eq!(SelectorKey::all().count(), spellings.len());
    let unix: Vec<SelectorKey> = UnixKey::ALL.iter().map(|&k| k.into()).collect();
    assert_eq!(SelectorKind::Unix.keys(), unix);
    assert_eq!(
        UnixKey::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        [
            "uid",
            "gid",
            "user",
            "group",
            "supplementary_gid",
            "path",
            "sha256"
        ]
    );
    for key in UnixKey::ALL {
        assert_eq!(key.as_str().parse::<UnixKey>(), Ok(*key));
        assert_eq!(key.to_string(), key.as_str());
        assert_eq!(SelectorKey::from(*key).as_str(), key.as_str());
    }
}

/// Error messages list the vocabulary from the enums, so they cannot go stale.
#[test]
fn error_messages_list_the_vocabulary() {
    let unknown = SelectorError::UnknownKind("docker".to_owned()).to_string();
    assert_eq!(
        unknown,
        "unknown selector kind \"docker\"; supported kinds: unix, cgroup, container, systemd, k8s"
    );
    let key = SelectorError::UnknownKey {
        kind: SelectorKind::Unix,
        key: "pid".to_owned(),
    }
    .to_string();
    assert_eq!(
        key,
        "unknown unix selector key \"pid\"; supported keys: \
         uid, gid, user, group, supplementary_gid, path, sha256"
    );
    let missing = SelectorError::MissingKey(SelectorKind::Unix).to_string();
    assert_eq!(
        missing,
        "unix selector value must be key:value, e.g. unix:uid:1000; keys: \
         uid, gid, user, group, supplementary_gid, path, sha256"
    );
    for k in UnixKey::ALL {
        assert!(
            key.contains(k.as_str()) && missing.contains(k.as_str()),
            "{k}"
        );
    }
    // The example in the message is itself valid.
    assert!(Selector::from_str("unix:uid:1000").is_ok());
    let examples: Vec<String> = SelectorKind::ALL
        .iter()
        .map(|k| format!("{k}:{}", k.example()))
        .collect();
    for e in examples {
        assert!(Selector::from_str(&e).is_ok(), "{e}");
    }
    assert_eq!(
        SelectorError::EmptyKeyValue(UnixKey::SupplementaryGid.into()).to_string(),
        "unix:supplementary_gid selector has an empty value"
    );
    assert_eq!(
        SelectorError::InvalidUnixId(UnixKey::SupplementaryGid).to_string(),
        "unix:supplementary_gid value must be a decimal u32 with no sign and no leading zeros"
    );
    assert_eq!(
        SelectorError::TooLong(2000).to_string(),
        "selector is 2000 bytes long; the limit is 1024 bytes"
    );
}

/// Selectors order exactly as their strings do, including across keys where one key name
/// is a prefix of another or a character sorts below `:`.
#[test]
fn order_is_string_order() {
    let texts = [
        "unix:uid:1000",
        "unix:uid:999",
        "unix:user:a",
        "unix:gid:1",
        "unix:group:a",
        "unix:group:A",
        "unix:gid:10",
        "unix:supplementary_gid:27",
        "unix:supplementary_gid:100",
        "unix:sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "unix:path:/a",
        "unix:path:/a b",
        "unix:path:/a:b",
        "unix:user:u-1",
        "unix:user:u",
    ];
    let mut by_ord: Vec<Selector> = texts.iter().map(|t| sel(t)).collect();
    by_ord.sort();
    let mut by_text: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    by_text.sort();
    let got: Vec<String> = by_ord.iter().map(ToString::to_string).collect();
    assert_eq!(got, by_text);
    for a in &by_ord {
        for b in &by_ord {
            assert_eq!(a.cmp(b), a.to_string().cmp(&b.to_string()), "{a} vs {b}");
            assert_eq!(a.partial_cmp(b), Some(a.cmp(b)));
            assert_eq!(a == b, a.to_string() == b.to_string());
        }
    }
}

#[test]
fn debug_shows_the_string_form() {
    assert_eq!(
        format!("{:?}", sel("unix:uid:1000")),
        "Selector(\"unix:uid:1000\")"
    );
}

#[test]
fn serde_round_trip() {
    let s = sel("unix:uid:1000");
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(json, r#""unix:uid:1000""#);
    assert_eq!(serde_json::from_str::<Selector>(&json).unwrap(), s);
    assert!(serde_json::from_str::<Selector>(r#""unix:uid:01""#).is_err());

    let set = set(&[
        "unix:uid:1000",
        "unix:gid:1000",
        "unix:supplementary_gid:27",
    ]);
    let json = serde_json::to_string(&set).unwrap();
    assert_eq!(
        json,
        r#"["unix:gid:1000","unix:supplementary_gid:27","unix:uid:1000"]"#
    );
    assert_eq!(serde_json::from_str::<SelectorSet>(&json).unwrap(), set);
    assert!(serde_json::from_str::<SelectorSet>(r#"["k8s:ns:a"]"#).is_err());
    assert!(serde_json::from_str::<SelectorSet>(r#"["container:id:a"]"#).is_err());
}

#[test]
fn set_basics() {
    let mut set = SelectorSet::new();
    assert!(set.is_empty());
    assert!(set.insert(sel("unix:uid:1000")));
    assert!(!set.insert(sel("unix:uid:1000")), "duplicates are ignored");
    set.extend([sel("unix:gid:1000"), sel("unix:user:web")]);
    assert_eq!(set.len(), 3);
    assert!(!set.is_empty());
    assert!(set.contains(&sel("unix:user:web")));
    assert!(!set.contains(&sel("unix:user:db")));
    let listed: Vec<String> = set.iter().map(ToString::to_string).collect();
    assert_eq!(listed, ["unix:gid:1000", "unix:uid:1000", "unix:user:web"]);
    assert_eq!((&set).into_iter().count(), 3);
    assert_eq!(set.clone().into_iter().count(), 3);
    assert_eq!(SelectorSet::default(), SelectorSet::new());
}

#[test]
fn set_stays_sorted_and_unique_however_built() {
    let sorted = ["unix:gid:1000", "unix:uid:1000", "unix:user:web"];
    let listed = |s: &SelectorSet| s.iter().map(ToString::to_string).collect::<Vec<_>>();
    // Inserted out of order, extended with repeats, read from an unsorted list.
    let mut inserted = SelectorSet::new();
    for s in [
        "unix:user:web",
        "unix:gid:1000",
        "unix:uid:1000",
        "unix:gid:1000",
    ] {
        inserted.insert(sel(s));
    }
    let mut extended = set(&["unix:user:web"]);
    extended.extend([
        sel("unix:uid:1000"),
        sel("unix:user:web"),
        sel("unix:gid:1000"),
    ]);
    let read: SelectorSet = serde_json::from_str(
        r#"["unix:user:web","unix:uid:1000","unix:gid:1000","unix:uid:1000"]"#,
    )
    .unwrap();
    for s in [&inserted, &extended, &read] {
        assert_eq!(listed(s), sorted);
        assert_eq!(s, &inserted, "equal sets compare equal");
    }
    assert!(set(&["unix:uid:1000", "unix:user:web"]).is_subset_of(&read));
    assert!(!set(&["unix:uid:1000", "unix:user:db"]).is_subset_of(&read));
    assert!(!read.is_subset_of(&set(&["unix:uid:1000"])));
}

#[test]
fn subset_and_entry_matching() {
    let caller = set(&["unix:uid:1000", "unix:gid:1000", "unix:user:web"]);
    let empty = SelectorSet::new();

    // (entry, matches caller?)
    let cases = [
        (set(&["unix:uid:1000"]), true),
        (set(&["unix:uid:1000", "unix:user:web"]), true),
        (caller.clone(), true),
        (set(&["unix:uid:1001"]), false),
        (set(&["unix:uid:1000", "unix:uid:1001"]), false),
        (
            set(&[
                "unix:uid:1000",
                "unix:gid:1000",
                "unix:user:web",
                "unix:path:/x",
            ]),
            false,
        ),
    ];
    for (entry, expected) in cases {
        assert_eq!(entry.entry_matches(&caller), expected, "{entry:?}");
        assert_eq!(SelectorSet::matches(&entry, &caller), expected, "{entry:?}");
        assert_eq!(entry.is_subset_of(&caller), expected, "{entry:?}");
    }

    // The empty set is a subset of everything, but an empty entry matches nobody.
    assert!(empty.is_subset_of(&caller));
    assert!(empty.is_subset_of(&empty));
    assert!(!empty.entry_matches(&caller));
    assert!(!empty.entry_matches(&empty));
    assert!(!SelectorSet::matches(&empty, &caller));
    // A caller with no selectors matches no non-empty entry.
    assert!(!set(&["unix:uid:1000"]).entry_matches(&empty));
}

/// A caller has one `supplementary_gid` selector per group: an entry naming one group
/// matches every caller in it, whatever other groups it has; naming two requires both.
#[test]
fn supplementary_groups_match_by_membership() {
    let caller = |groups: &[u32]| -> SelectorSet {
        let mut set = set(&["unix:uid:65534", "unix:gid:65534"]);
        set.extend(
            groups
                .iter()
                .map(|g| Selector::unix(UnixKey::SupplementaryGid, g).unwrap()),
        );
        set
    };
    let in_27 = set(&["unix:uid:65534", "unix:supplementary_gid:27"]);
    let in_27_and_28 = set(&["unix:supplementary_gid:27", "unix:supplementary_gid:28"]);
    let many: Vec<u32> = (1000..1064).chain([27]).chain(2000..3000).collect();

    // (caller's supplementary groups, matches in_27, matches in_27_and_28)
    let cases: Vec<(Vec<u32>, bool, bool)> = vec![
        (vec![], false, false),
        (vec![27], true, false),
        (vec![28], false, false),
        (vec![27, 28], true, true),
        (vec![28, 27, 4], true, true),
        ((1000..1064).collect(), false, false),
        (many, true, false),
    ];
    for (groups, want_27, want_both) in cases {
        let caller = caller(&groups);
        assert_eq!(caller.len(), 2 + groups.len());
        assert_eq!(in_27.entry_matches(&caller), want_27, "{groups:?}");
        assert_eq!(in_27_and_28.entry_matches(&caller), want_both, "{groups:?}");
    }
    // The primary gid is its own selector: `gid:27` does not satisfy `supplementary_gid:27`.
    let primary_27 = set(&["unix:uid:65534", "unix:gid:27"]);
    assert!(!in_27.entry_matches(&primary_27));
}
