//! The migration runner on real databases, both backends: a datastore written by release
//! 7c0b47d (the last before versioned migrations) is upgraded in place and keeps every
//! record; a fresh database ends with the same schema; nothing is applied twice; newer,
//! altered or partial schemas are refused with a clear error; a failed migration leaves
//! the database as it was.

use std::collections::BTreeSet;

use common::task::TaskState;
use common::{RegistrationEntry, SpiffeId};

use super::{MIGRATIONS, MigrateError, Report, latest};
use crate::audit::{AuditEvent, AuditKind, verify};
use crate::datastore::testdb::{Backend as _, Postgres, Sqlite, TestDatabase, Under as _};
use crate::datastore::{Datastore as _, DatastoreError, EntryFilter};

/// The recorded versions, as `"<version> <how>"`.
const VERSIONS: &str =
    "SELECT CAST(version AS TEXT) || ' ' || how AS t FROM tessera_schema ORDER BY version";
/// Everything recorded of each version.
const VERSION_ROWS: &str = "SELECT CAST(version AS TEXT) || ' ' || how || ' ' || checksum || ' '
        || CAST(installed_at AS TEXT) || ' ' || description AS t
    FROM tessera_schema ORDER BY version";
/// The fixture's node, and the node banned in it.
const NODE: &str = "spiffe://example.org/node/fixture";
const BANNED: &str = "spiffe://example.org/node/banned";

/// Each case on a fresh SQLite file and on a fresh PostgreSQL schema.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(&super::Sqlite::new()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(&super::Postgres::new().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_release_datastore_is_upgraded_in_place_and_keeps_every_record,
    a_fresh_database_goes_through_every_version_once,
    servers_starting_together_on_a_release_datastore_upgrade_it_once,
    a_newer_schema_is_refused_naming_both_versions,
    a_changed_migration_is_refused,
    a_database_with_some_of_the_tables_is_refused,
    a_failed_migration_changes_nothing,
);

/// What the upgrade of the release's datastore records: version 1 as a baseline, every
/// later version applied.
fn upgraded_versions() -> Vec<String> {
    std::iter::once("1 baseline".to_owned())
        .chain((2..=latest()).map(|v| format!("{v} applied")))
        .collect()
}

/// How [`records`] reads the columns that schema version 3 changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholders {
    /// As stored.
    AsStored,
    /// As version 3 stores them: NULL where the release wrote 0 or '' for "not set".
    AsNull,
}

/// Every record of every table of version 1, as text, sorted: what the release stored
/// (with `placeholders`: read as version 3 stores them, so the same records compare
/// equal before and after the upgrade).
async fn records(db: &dyn TestDatabase, placeholders: Placeholders) -> BTreeSet<String> {
    let tables: &[(&str, &[&str])] = &[
        (
            "entries",
            &[
                "id",
                "spiffe_id",
                "parent_id",
                "selectors",
                "x509_svid_ttl",
                "jwt_svid_ttl",
                "dns_names",
                "jit",
                "hint",
                "created_at",
                "revision",
            ],
        ),
        ("join_tokens", &["token_hash", "spiffe_id", "expires_at"]),
        (
            "audit_log",
            &[
                "seq",
                "at_ms",
                "kind",
                "task_id",
                "subject",
                "detail",
                "prev_hash",
                "hash",
            ],
        ),
        (
            "tasks",
            &[
                "id",
                "state",
                "entry_id",
                "spiffe_id",
                "parent_id",
                "provisioned",
                "requester",
                "approver",
                "reason",
                "ticket",
                "scopes",
                "created_at",
                "activated_at",
                "deadline",
                "ended_at",
                "end_reason",
                "decision",
            ],
        ),
        (
            "task_svids",
            &["serial", "task_id", "issuer_serial", "not_after"],
        ),
        (
            "agents",
            &[
                "spiffe_id",
                "serial",
                "previous_serial",
                "expires_at",
                "attested_at",
                "banned",
                "attestation_type",
            ],
        ),
    ];
    let open = "state IN ('pending_approval', 'active')";
    let as_null = |table: &str, c: &str| -> String {
        match (placeholders, table, c) {
            (Placeholders::AsNull, "tasks", "approver") => "NULLIF(approver, '')".into(),
            (Placeholders::AsNull, "tasks", "activated_at") => "NULLIF(activated_at, 0)".into(),
            (Placeholders::AsNull, "tasks", "ended_at" | "end_reason") => {
                format!("CASE WHEN {open} THEN NULL ELSE {c} END")
            }
            (Placeholders::AsNull, "agents", "previous_serial") => {
                "NULLIF(previous_serial, '')".into()
            }
            _ => c.to_owned(),
        }
    };
    let mut all = BTreeSet::new();
    for (table, columns) in tables {
        let row: Vec<String> = columns
            .iter()
            .map(|c| format!("coalesce(CAST({} AS TEXT), 'NULL')", as_null(table, c)))
            .collect();
        let sql = format!(
            "SELECT '{table}|' || {} AS t FROM {table}",
            row.join(" || '|' || ")
        );
        all.extend(db.texts(&sql).await);
    }
    all
}

async fn a_release_datastore_is_upgraded_in_place_and_keeps_every_record(db: &dyn TestDatabase) {
    db.load_fixture().await;
    let before = records(db, Placeholders::AsNull).await;
    assert_eq!(
        before.len(),
        5 + 1 + 25 + 3 + 3 + 2,
        "the fixture as dumped"
    );

    let ds = db.open().await;
    assert_eq!(
        db.texts(VERSIONS).await,
        upgraded_versions(),
        "the release's tables recorded as version 1, later versions applied"
    );
    assert_eq!(
        records(db, Placeholders::AsStored).await,
        before,
        "every record unchanged but for the placeholders version 3 turns into NULL"
    );

    // Everything reads back through the datastore.
    let entries = ds.list_entries(&EntryFilter::default()).await.unwrap();
    let ids: BTreeSet<&str> = entries.iter().map(|e| e.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([
            "spiffe://example.org/web",
            "spiffe://example.org/db",
            "spiffe://example.org/jit/deploy",
            "spiffe://example.org/jit/ops",
            "spiffe://example.org/jit/tmp",
        ])
    );
    let by_id = |id: &str| -> &RegistrationEntry {
        entries.iter().find(|e| e.spiffe_id.as_str() == id).unwrap()
    };
    let db_entry = by_id("spiffe://example.org/db");
    // Schema version 5: everything that existed is in the default tenant, which owns `/`;
    // owners were not recorded (the review flags them), nothing expires or is disabled.
    for e in &entries {
        assert_eq!(e.governance.tenant, "default", "{e:?}");
        assert_eq!(e.governance.owner, "", "{e:?}");
        assert_eq!(e.governance.expires_at, None);
        assert_eq!(e.governance.disabled, None);
    }
    let tenants = ds.list_tenants().await.unwrap();
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0].name, "default");
    assert_eq!(tenants[0].path_prefixes, ["/"]);
    assert_eq!(db_entry.selectors.len(), 3);
    assert_eq!(db_entry.dns_names, ["db.example.org", "db-1.example.org"]);
    assert_eq!(db_entry.hint, "primary \"db\" ünïcode");
    assert_eq!(db_entry.x509_svid_ttl.as_secs(), 1800);
    assert!(by_id("spiffe://example.org/jit/deploy").jit);
    assert!(!by_id("spiffe://example.org/web").jit);

    let agents = ds.list_agents().await.unwrap();
    let banned: Vec<(&str, bool)> = agents
        .iter()
        .map(|a| (a.spiffe_id.as_str(), a.banned))
        .collect();
    assert_eq!(banned, [(NODE, false), (BANNED, true)]);

    let tasks = ds.list_tasks(None).await.unwrap();
    let states: Vec<(&str, TaskState, bool)> = tasks
        .iter()
        .map(|t| (t.spiffe_id.as_str(), t.state, t.provisioned))
        .collect();
    assert_eq!(
        states,
        [
            ("spiffe://example.org/jit/deploy", TaskState::Active, false),
            ("spiffe://example.org/jit/tmp", TaskState::Active, true),
            ("spiffe://example.org/jit/ops", TaskState::Revoked, false),
        ]
    );
    assert_eq!(tasks[0].scopes, ["db:read", "db:write"]);
    // Schema version 7: a release's tasks declared no JWT audiences (so get no JWT-SVIDs).
    assert!(tasks.iter().all(|t| t.audiences.is_empty()), "{tasks:?}");
    // Schema version 8: a release's tasks were bound by selectors.
    assert!(
        tasks
            .iter()
            .all(|t| t.binding == common::task::TaskBinding::Selectors),
        "{tasks:?}"
    );
    // Schema version 9: a release's tasks were not break-glass, so nothing awaits review.
    assert!(
        tasks
            .iter()
            .all(|t| !t.break_glass && t.acknowledgement.is_none()),
        "{tasks:?}"
    );
    // Schema version 13: a release's tasks hold no status list entry (their tokens name a
    // list of their own), and no list exists yet.
    assert!(tasks.iter().all(|t| t.status.is_none()), "{tasks:?}");
    assert_eq!(ds.newest_status_list().await.unwrap(), None);
    assert!(tasks.iter().all(|t| t.tenant == "default"), "{tasks:?}");
    // No placeholders read back: open tasks have no end, the active ones an activation
    // time, the revoked one an end; nobody approved these; the fixture's agents never
    // renewed.
    for t in &tasks {
        assert_eq!(t.end.is_some(), !t.state.is_open(), "{t:?}");
        assert_eq!(
            t.activated_at.is_some(),
            t.state != TaskState::PendingApproval
        );
        assert_eq!(t.approver, None);
        assert!(t.decision.allowed, "{t:?}");
    }
    assert!(
        tasks[2]
            .end
            .as_ref()
            .is_some_and(|e| e.at >= tasks[2].created_at)
    );
    assert!(agents.iter().all(|a| a.previous_serial.is_none()));
    assert_eq!(tasks[0].ticket, "CHG-1");
    let deploy = by_id("spiffe://example.org/jit/deploy");
    assert_eq!(
        ds.open_tasks_for_entry(&deploy.id).await.unwrap().first(),
        tasks.first()
    );
    let (revoked, svids) = ds.revoked_since(0).await.unwrap();
    assert_eq!(revoked, tasks[2..]);
    assert_eq!(svids.len(), 1);
    assert_eq!(svids[0].task_id, tasks[2].id);

    // The join token the release left unused is still single use.
    let token_hash = db.texts("SELECT token_hash AS t FROM join_tokens").await;
    let token = ds.get_join_token(&token_hash[0]).await.unwrap().unwrap();
    assert_eq!(token.spiffe_id.as_str(), "spiffe://example.org/node/unused");
    // (Its expiry was fixed when the release wrote it: "now" is just before.)
    let now = token.expires_at - 1;
    let node = crate::datastore::AgentRecord {
        spiffe_id: token.spiffe_id.clone(),
        serial: "0b".into(),
        previous_serial: None,
        expires_at: now + 60,
        attested_at: now,
        banned: false,
        attestation_type: "join_token".into(),
        selectors: BTreeSet::new(),
    };
    for want in [
        crate::datastore::TokenAttestation::Attested,
        crate::datastore::TokenAttestation::TokenGone,
    ] {
        assert_eq!(
            ds.attest_agent_with_token(&token_hash[0], now, &node, &[])
                .await
                .unwrap(),
            want
        );
    }
    assert_eq!(ds.get_join_token(&token_hash[0]).await.unwrap(), None);

    // The audit chain verifies, and the next record chains onto it.
    let log = ds.list_audit(None, None).await.unwrap();
    assert_eq!(verify(&log), Ok(25));
    ds.append_audit(&[AuditEvent::new(
        AuditKind::PolicyReloaded,
        "x",
        serde_json::json!({}),
    )])
    .await
    .unwrap();
    assert_eq!(verify(&ds.list_audit(None, None).await.unwrap()), Ok(26));

    // The release's entries are unique by the same rule as new ones: the migration
    // computed each identity as the current code does.
    let mut copy = by_id("spiffe://example.org/web").clone();
    copy.id = common::EntryId::parse("copy").unwrap();
    let r = ds.create_entry(&copy, &[]).await;
    assert!(
        matches!(&r, Err(DatastoreError::Conflict(m)) if m.contains("same SPIFFE ID")),
        "{r:?}"
    );
    let mut changed = by_id("spiffe://example.org/db").clone();
    changed.spiffe_id = SpiffeId::new("spiffe://example.org/web").unwrap();
    changed.selectors = copy.selectors.clone();
    changed.revision += 1;
    assert!(matches!(
        ds.update_entry(&changed, &[]).await,
        Err(DatastoreError::Conflict(_))
    ));
    changed.spiffe_id = SpiffeId::new("spiffe://example.org/db2").unwrap();
    ds.update_entry(&changed, &[]).await.unwrap();
    assert_eq!(ds.get_entry(&changed.id).await.unwrap().unwrap(), changed);
}

async fn a_fresh_database_goes_through_every_version_once(db: &dyn TestDatabase) {
    assert_eq!(
        db.migrate().await.unwrap(),
        Report {
            baseline: false,
            applied: (1..=latest()).collect()
        }
    );
    let recorded = db.texts(VERSION_ROWS).await;
    assert_eq!(recorded.len(), MIGRATIONS.len());
    // Opening again, by the runner or a datastore, applies and records nothing.
    assert_eq!(db.migrate().await.unwrap(), Report::default());
    drop(db.open().await);
    drop(db.open().await);
    assert_eq!(db.texts(VERSION_ROWS).await, recorded);
}

async fn servers_starting_together_on_a_release_datastore_upgrade_it_once(db: &dyn TestDatabase) {
    db.load_fixture().await;
    let opened = futures::future::join_all((0..4).map(|_| db.try_open())).await;
    assert!(opened.iter().all(Result::is_ok), "{opened:?}");
    assert_eq!(db.texts(VERSIONS).await, upgraded_versions());
    assert_eq!(db.migrate().await.unwrap(), Report::default());
}

async fn a_newer_schema_is_refused_naming_both_versions(db: &dyn TestDatabase) {
    drop(db.open().await);
    let newer = latest() + 1;
    db.script(&format!(
        "INSERT INTO tessera_schema (version, description, checksum, installed_at, how)
         VALUES ({newer}, 'from the future', '', 0, 'applied')"
    ))
    .await;
    let err = db.migrate().await.unwrap_err();
    assert!(
        matches!(err, MigrateError::TooNew { found, known } if found == newer && known == latest()),
        "{err:?}"
    );
    // What the server prints before it exits.
    let shown = db.try_open().await.unwrap_err().to_string();
    for part in [
        &format!("schema is version {newer}"),
        &format!("up to version {}", latest()),
        "upgrade tessera-server",
    ] {
        assert!(shown.contains(part), "{shown}");
    }
}

async fn a_changed_migration_is_refused(db: &dyn TestDatabase) {
    drop(db.open().await);
    db.script("UPDATE tessera_schema SET checksum = 'edited' WHERE version = 2")
        .await;
    let err = db.migrate().await.unwrap_err();
    assert!(
        matches!(&err, MigrateError::Changed { version: 2, recorded, .. } if recorded == "edited"),
        "{err:?}"
    );
    db.script("DELETE FROM tessera_schema WHERE version = 1")
        .await;
    let err = db.migrate().await.unwrap_err();
    assert!(
        matches!(&err, MigrateError::Gaps { found } if *found == (2..=latest()).collect::<Vec<_>>()),
        "{err:?}"
    );
}

async fn a_database_with_some_of_the_tables_is_refused(db: &dyn TestDatabase) {
    db.script("CREATE TABLE entries (id TEXT PRIMARY KEY)")
        .await;
    let err = db.migrate().await.unwrap_err();
    assert!(
        matches!(&err, MigrateError::Partial { missing }
            if missing == "join_tokens, audit_log, tasks, task_svids, agents"),
        "{err:?}"
    );
    let err = db.try_open().await.unwrap_err().to_string();
    assert!(err.contains("not a tessera-server datastore"), "{err}");
    // Nothing was created, not even the version table.
    assert_eq!(db.tables().await, ["entries"]);
}

async fn a_failed_migration_changes_nothing(db: &dyn TestDatabase) {
    db.load_fixture().await;
    db.script(db.blocks_version_2()).await;
    let before = records(db, Placeholders::AsStored).await;
    let err = db.migrate().await.unwrap_err();
    assert!(
        matches!(&err, MigrateError::Failed { version: 2, .. }),
        "{err:?}"
    );
    // Version 1 was recorded in a transaction of its own; version 2 left no trace.
    assert_eq!(db.texts(VERSIONS).await, ["1 baseline"]);
    assert_eq!(records(db, Placeholders::AsStored).await, before);
    let shown = db.try_open().await.unwrap_err().to_string();
    assert!(shown.contains("migration to schema version 2"), "{shown}");
}

async fn fresh_and_upgraded_schemas_are_identical(
    fresh: &dyn TestDatabase,
    old: &dyn TestDatabase,
) {
    drop(fresh.open().await);
    old.load_fixture().await;
    drop(old.open().await);
    let schema = fresh.schema().await;
    assert!(schema.len() > 10, "{schema:#?}");
    assert_eq!(schema, old.schema().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fresh_and_upgraded_schemas_are_identical_on_sqlite() {
    fresh_and_upgraded_schemas_are_identical(&Sqlite::new(), &Sqlite::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fresh_and_upgraded_schemas_are_identical_on_postgres() {
    let (fresh, old) = (Postgres::new().await, Postgres::new().await);
    fresh_and_upgraded_schemas_are_identical(&fresh, &old).await;
    // Listings are ordered by these keys: they compare as bytes, as on SQLite.
    let schema = fresh.schema().await;
    for column in [
        "entries.id",
        "agents.spiffe_id",
        "tasks.id",
        "task_svids.serial",
    ] {
        assert!(
            schema
                .iter()
                .any(|l| l.starts_with(&format!("column {column} ")) && l.ends_with("collate C")),
            "{column}: {schema:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_who_may_not_create_tables_runs_on_a_migrated_postgres_database() {
    use sqlx::Connection as _;

    let db = Postgres::new().await;
    drop(db.open().await);
    // A role with the rights of a server's runtime user only: no CREATE on the schema.
    let role = format!("{}_dml", db.schema_name());
    let schema = db.schema_name();
    db.script(&format!(
        "CREATE ROLE {role} NOLOGIN;
         GRANT USAGE ON SCHEMA {schema} TO {role};
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role};"
    ))
    .await;
    let url = format!("{}&options=-c%20role%3D{role}", db.url);
    let opened = crate::datastore::postgres::PostgresDatastore::open(&url).await;
    let appended = match &opened {
        Ok(ds) => {
            let r = ds
                .append_audit(&[AuditEvent::new(
                    AuditKind::PolicyReloaded,
                    "x",
                    serde_json::json!({}),
                )])
                .await;
            ds.close().await;
            r.map(|v| v.len())
        }
        Err(e) => Err(e.clone()),
    };
    // The role really may not create tables.
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let created = sqlx::query("CREATE TABLE not_allowed (x TEXT)")
        .execute(&mut conn)
        .await;
    conn.close().await.unwrap();
    // Roles belong to the cluster, not to the schema: drop it before asserting.
    db.script(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await;
    assert!(opened.is_ok(), "{opened:?}");
    assert!(matches!(appended, Ok(1)), "{appended:?}");
    let denied = created.unwrap_err().to_string();
    assert!(denied.contains("permission denied"), "{denied}");
}
