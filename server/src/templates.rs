//! Identity templates: entries provisioned at a workload's first Workload API call.
//!
//! An operator declares a template (`spiffe://td/acme/svc/{systemd:unit}`, a parent agent,
//! selectors, tenant, owner, TTLs, a grace period). Its literal prefix (`/acme/svc`) must
//! be owned by the template's tenant, checked like an entry's SPIFFE ID. When a workload of
//! the parent agent that has the template's selectors asks and no entry matches it, the
//! agent calls `ProvisionEntry`; [`Templates::provision`] takes from the caller's attested
//! selectors only the values of the template's placeholder keys, renders the SPIFFE ID
//! (each value exactly one path segment, see [`common::template`]), and creates the entry
//! through the registrar, with every check an operator's entry gets (tenant, prefix,
//! verified domain, cross-tenant duplicates, quota), recording `template_id` and auditing
//! `entry.provisioned`. The same template and values give the same entry (a race of two
//! callers: the datastore's uniqueness leaves one). Agents report the instances their
//! Workload API streams hold; [`Templates::collect`] deletes instances not reported for
//! the template's grace (`entry.deprovisioned`), and deleting a template deletes its
//! instances.

use std::sync::Arc;
use std::time::Duration;

use common::{
    EntryId, RegistrationEntry, Selector, SelectorSet, SpiffeId, SpiffeIdTemplate, TemplateId,
};

use crate::audit::{AuditEvent, AuditKind, SERVER_ACTOR};
use crate::datastore::{Datastore, DatastoreError, EntryFilter, TemplateRecord, UnixUser};
use crate::events::ChangeEvent;
use crate::registration::{EntryRequest, Registrar, RegistrationError, entry_event};
use crate::tenants::{Operator, Scope};

/// The grace period of a template that states none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);
/// The shortest grace period a template may have.
pub const MIN_GRACE: Duration = Duration::from_secs(2);
/// The longest grace period a template may have (30 days).
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 86_400);
/// Most selectors a provisioning request may carry.
pub const MAX_CALLER_SELECTORS: usize = 256;

/// A template as asked for (from the admin API's wire form).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateRequest {
    /// The SPIFFE ID template.
    pub template: String,
    /// The agent it applies to.
    pub parent_id: String,
    /// What a workload must have besides a value per placeholder.
    pub selectors: Vec<String>,
    /// `None`: the server default.
    pub x509_svid_ttl: Option<Duration>,
    /// `None`: the server default.
    pub jwt_svid_ttl: Option<Duration>,
    /// Empty: as for an entry.
    pub tenant: String,
    /// Empty: the caller.
    pub owner: String,
    /// `None`: [`DEFAULT_GRACE`].
    pub grace: Option<Duration>,
}

/// Template CRUD, provisioning and collection of instances whose workload is gone.
#[derive(Debug, Clone)]
pub struct Templates {
    ds: Arc<dyn Datastore>,
    registrar: Registrar,
}

fn bad(e: impl std::fmt::Display) -> RegistrationError {
    RegistrationError::BadTemplate(e.to_string())
}

fn template_event(kind: AuditKind, t: &TemplateRecord, by: &str) -> AuditEvent {
    AuditEvent::new(
        kind,
        &t.id,
        serde_json::json!({
            "spiffe_id_template": t.template.as_str(),
            "parent_id": t.parent_id.as_str(),
            "selectors": t.selectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "x509_svid_ttl": t.x509_svid_ttl.as_secs(),
            "jwt_svid_ttl": t.jwt_svid_ttl.as_secs(),
            "grace_seconds": t.grace.as_secs(),
            "owner": t.owner,
        }),
    )
    .by(by)
    .in_tenant(&t.tenant)
}

impl Templates {
    /// Templates on `ds`, whose instances are made and deleted through `registrar`.
    pub fn new(ds: Arc<dyn Datastore>, registrar: Registrar) -> Self {
        Self { ds, registrar }
    }

    /// Validates and stores a template for `by`.
    pub async fn create(
        &self,
        spec: &TemplateRequest,
        by: &Operator,
    ) -> Result<TemplateRecord, RegistrationError> {
        let template = SpiffeIdTemplate::new(&spec.template).map_err(bad)?;
        let grace = spec.grace.unwrap_or(DEFAULT_GRACE);
        if grace < MIN_GRACE || grace > MAX_GRACE {
            return Err(bad(format!(
                "grace must be between {}s and {}s",
                MIN_GRACE.as_secs(),
                MAX_GRACE.as_secs()
            )));
        }
        // The literal prefix stands for every instance: it is checked as an entry's SPIFFE
        // ID would be (trust domain, reserved paths, tenant prefixes), with the template's
        // parent, selectors and TTLs.
        let prefix = SpiffeId::from_parts(template.trust_domain(), &template.literal_prefix())
            .map_err(bad)?;
        let as_entry = EntryRequest {
            spiffe_id: prefix.to_string(),
            parent_id: spec.parent_id.clone(),
            selectors: spec.selectors.clone(),
            x509_svid_ttl: spec.x509_svid_ttl,
            jwt_svid_ttl: spec.jwt_svid_ttl,
            tenant: spec.tenant.clone(),
            owner: spec.owner.clone(),
            ..EntryRequest::default()
        };
        let _guard = self.registrar.tenants().lock.lock().await;
        let now = crate::clock::now_unix();
        let entry = self.registrar.prepare(by, &as_entry, now).await?;
        if let Some(key) = entry
            .selectors
            .iter()
            .map(Selector::key)
            .find(|k| template.placeholders().contains(k))
        {
            return Err(bad(format!(
                "selector {key} is also a placeholder: the placeholder gives each instance its own"
            )));
        }
        let record = TemplateRecord {
            id: TemplateId::generate(),
            template,
            parent_id: entry.parent_id,
            selectors: entry.selectors,
            x509_svid_ttl: entry.x509_svid_ttl,
            jwt_svid_ttl: entry.jwt_svid_ttl,
            tenant: entry.governance.tenant,
            owner: entry.governance.owner,
            grace: Duration::from_secs(grace.as_secs()),
            created_at: now,
        };
        let event = template_event(AuditKind::TemplateCreated, &record, &by.principal());
        let _write = self.registrar.events().begin_write();
        self.ds.create_template(&record, &[event]).await?;
        self.registrar
            .events()
            .publish(ChangeEvent::TemplateUpserted(Arc::new(record.clone())));
        tracing::info!(template_id = %record.id, template = %record.template, parent_id = %record.parent_id, tenant = %record.tenant, "template created");
        Ok(record)
    }

    /// The templates `by` may see (only `tenant`'s if not empty).
    pub async fn list(
        &self,
        by: &Operator,
        tenant: &str,
    ) -> Result<Vec<TemplateRecord>, RegistrationError> {
        Ok(self
            .ds
            .list_templates(None)
            .await?
            .into_iter()
            .filter(|t| by.sees(&t.tenant) && (tenant.is_empty() || t.tenant == tenant))
            .collect())
    }

    /// Deletes a template `by` may see, and every instance of it.
    pub async fn delete(
        &self,
        id: &TemplateId,
        by: &Operator,
    ) -> Result<(TemplateRecord, Vec<RegistrationEntry>), RegistrationError> {
        let not_found = || RegistrationError::NotFound(format!("template {id}"));
        match self.ds.get_template(id).await? {
            Some(t) if by.sees(&t.tenant) => {}
            _ => return Err(not_found()),
        }
        let actor = by.principal();
        let _write = self.registrar.events().begin_write();
        let deleted = self
            .ds
            .delete_template(
                id,
                Box::new(move |(t, instances)| {
                    let mut events = vec![template_event(AuditKind::TemplateDeleted, t, &actor)];
                    events.extend(
                        instances
                            .iter()
                            .map(|e| entry_event(AuditKind::EntryDeprovisioned, e, &actor)),
                    );
                    events
                }),
            )
            .await?
            .ok_or_else(not_found)?;
        self.registrar.publish_deleted(&deleted.1);
        self.registrar
            .events()
            .publish(ChangeEvent::TemplateDeleted {
                id: deleted.0.id.clone(),
                parent_id: deleted.0.parent_id.clone(),
            });
        tracing::info!(template_id = %id, instances = deleted.1.len(), "template deleted");
        Ok(deleted)
    }

    /// The entry of template `id` for a workload of `agent` with attested `selectors`:
    /// the existing one, or a new one. Refuses (creating nothing) a template not parented
    /// to `agent` (`NotFound`, as for an unknown one), a caller without the template's
    /// selectors (`NotEntitled`), and values that are not one path segment each
    /// (`BadTemplate`).
    pub async fn provision(
        &self,
        agent: &SpiffeId,
        id: &TemplateId,
        selectors: &[String],
    ) -> Result<RegistrationEntry, RegistrationError> {
        if selectors.len() > MAX_CALLER_SELECTORS {
            return Err(RegistrationError::TooMany(
                "selectors",
                MAX_CALLER_SELECTORS,
            ));
        }
        let mut caller = SelectorSet::new();
        for raw in selectors {
            let s: Selector = raw
                .parse()
                .map_err(|source| RegistrationError::InvalidSelector {
                    selector: raw.clone(),
                    source,
                })?;
            caller.insert(s);
        }
        let template = match self.ds.get_template(id).await? {
            Some(t) if t.parent_id == *agent => t,
            _ => return Err(RegistrationError::NotFound(format!("template {id}"))),
        };
        if !template.selectors.is_subset_of(&caller) {
            return Err(RegistrationError::NotEntitled(format!(
                "the workload does not have the selectors of template {id}"
            )));
        }
        let values = template.template.values_from(&caller).map_err(bad)?;
        let spiffe_id = template.template.render(&values).map_err(bad)?;
        let mut own = template.selectors.clone();
        for (key, value) in &values {
            own.insert(Selector::new(*key, value).map_err(bad)?);
        }
        if let Some(existing) = self.instance(&template, &spiffe_id, &own).await? {
            return Ok(existing);
        }
        let spec = EntryRequest {
            spiffe_id: spiffe_id.to_string(),
            parent_id: template.parent_id.to_string(),
            selectors: own.iter().map(ToString::to_string).collect(),
            x509_svid_ttl: Some(template.x509_svid_ttl),
            jwt_svid_ttl: Some(template.jwt_svid_ttl),
            tenant: template.tenant.clone(),
            owner: template.owner.clone(),
            ..EntryRequest::default()
        };
        // Acting for the template's tenant only: the checks an operator of that tenant
        // would pass, nothing a platform operator could do besides.
        let by = Operator {
            user: UnixUser {
                uid: u32::MAX,
                name: SERVER_ACTOR.to_owned(),
            },
            scope: Scope::Tenants([template.tenant.clone()].into()),
        };
        match self
            .registrar
            .provision(&spec, &by, &template.id, agent.as_str())
            .await
        {
            Ok(entry) => Ok(entry),
            // Another caller made it first: theirs is the one.
            Err(RegistrationError::Duplicate(m)) => self
                .instance(&template, &spiffe_id, &own)
                .await?
                .ok_or(RegistrationError::Duplicate(m)),
            Err(e) => Err(e),
        }
    }

    async fn instance(
        &self,
        template: &TemplateRecord,
        spiffe_id: &SpiffeId,
        selectors: &SelectorSet,
    ) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let found = self
            .ds
            .list_entries(&EntryFilter {
                spiffe_id: Some(spiffe_id.clone()),
                parent_id: Some(template.parent_id.clone()),
                tenant: None,
            })
            .await?;
        Ok(found.into_iter().find(|e| {
            e.governance.template_id.as_ref() == Some(&template.id) && e.selectors == *selectors
        }))
    }

    /// Records that `agent`'s workloads hold these instances now; ids of entries that are
    /// not instances parented to `agent` are ignored. Returns how many were recorded.
    pub async fn seen(
        &self,
        agent: &SpiffeId,
        ids: &[EntryId],
        now: i64,
    ) -> Result<usize, DatastoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let own: Vec<EntryId> = self
            .ds
            .list_entries(&EntryFilter {
                parent_id: Some(agent.clone()),
                ..EntryFilter::default()
            })
            .await?
            .into_iter()
            .filter(|e| e.governance.template_id.is_some() && ids.contains(&e.id))
            .map(|e| e.id)
            .collect();
        self.ds.mark_instances_seen(&own, now).await?;
        Ok(own.len())
    }

    /// Deletes the instances whose workload has been gone for their template's grace at
    /// `now` (Unix seconds); returns how many this call deleted (another server may
    /// delete some first).
    pub async fn collect(&self, now: i64) -> Result<usize, RegistrationError> {
        let mut n = 0;
        for e in self.ds.stale_instances(now).await? {
            // Checked again in the delete: an instance reported alive since it was
            // listed stays.
            let deleted = self
                .registrar
                .delete_if_stale(&e.id, now, SERVER_ACTOR, AuditKind::EntryDeprovisioned)
                .await?;
            if deleted.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::sqlite::SqliteDatastore;
    use crate::events::Events;
    use common::TrustDomain;

    const AGENT: &str = "spiffe://example.org/node/a";

    fn root() -> Operator {
        Operator::platform(UnixUser {
            uid: 0,
            name: "root".into(),
        })
    }

    async fn setup() -> (tempfile::TempDir, Arc<dyn Datastore>, Templates) {
        let dir = tempfile::tempdir().unwrap();
        let ds: Arc<dyn Datastore> = Arc::new(
            SqliteDatastore::open(&dir.path().join("d.sqlite3"))
                .await
                .unwrap(),
        );
        let registrar = Registrar::new(
            Arc::clone(&ds),
            Events::default(),
            TrustDomain::new("example.org").unwrap(),
            Duration::from_secs(3600),
            Duration::from_secs(300),
        );
        let templates = Templates::new(Arc::clone(&ds), registrar);
        (dir, ds, templates)
    }

    fn spec(template: &str, selectors: &[&str]) -> TemplateRequest {
        TemplateRequest {
            template: template.into(),
            parent_id: AGENT.into(),
            selectors: selectors.iter().map(|s| (*s).to_owned()).collect(),
            grace: Some(Duration::from_secs(2)),
            ..TemplateRequest::default()
        }
    }

    fn caller(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    async fn audit_kinds(ds: &Arc<dyn Datastore>) -> Vec<String> {
        ds.list_audit(None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.event.kind)
            .collect()
    }

    #[tokio::test]
    async fn bad_templates_are_refused_and_change_nothing() {
        let (_dir, ds, t) = setup().await;
        for (s, want) in [
            (
                spec(
                    "spiffe://example.org/acme/svc",
                    &["systemd:slice:acme.slice"],
                ),
                "at least one placeholder",
            ),
            (
                spec(
                    "spiffe://other.org/acme/{systemd:unit}",
                    &["systemd:slice:acme.slice"],
                ),
                "not in trust domain",
            ),
            (
                spec(
                    "spiffe://example.org/tessera/server/{systemd:unit}",
                    &["systemd:slice:acme.slice"],
                ),
                "reserved",
            ),
            (
                spec(
                    "spiffe://example.org/acme/{systemd:unit}",
                    &["systemd:unit:a.service"],
                ),
                "also a placeholder",
            ),
            (
                spec("spiffe://example.org/acme/{systemd:unit}", &[]),
                "at least one selector",
            ),
            (
                TemplateRequest {
                    grace: Some(Duration::from_secs(1)),
                    ..spec(
                        "spiffe://example.org/acme/{systemd:unit}",
                        &["systemd:slice:acme.slice"],
                    )
                },
                "grace must be between",
            ),
        ] {
            let err = t.create(&s, &root()).await.unwrap_err();
            assert!(err.to_string().contains(want), "{s:?}: {err}");
        }
        assert!(ds.list_templates(None).await.unwrap().is_empty());
        assert!(audit_kinds(&ds).await.is_empty());
    }

    #[tokio::test]
    async fn provisioning_makes_one_entry_per_value_through_the_registrar() {
        let (_dir, ds, t) = setup().await;
        let tpl = t
            .create(
                &spec(
                    "spiffe://example.org/acme/svc/{systemd:unit}",
                    &["systemd:slice:acme.slice"],
                ),
                &root(),
            )
            .await
            .unwrap();
        assert_eq!(tpl.owner, "user:root");
        assert_eq!(tpl.tenant, "default");
        let agent = SpiffeId::new(AGENT).unwrap();
        let a_sel = caller(&[
            "systemd:slice:acme.slice",
            "systemd:unit:a.service",
            "unix:uid:1000",
        ]);
        let a = t.provision(&agent, &tpl.id, &a_sel).await.unwrap();
        assert_eq!(
            a.spiffe_id.as_str(),
            "spiffe://example.org/acme/svc/a.service"
        );
        assert_eq!(a.parent_id, agent);
        assert_eq!(
            a.selectors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["systemd:slice:acme.slice", "systemd:unit:a.service"],
            "the template's selectors and the placeholder's, nothing else of the caller"
        );
        assert_eq!(a.governance.template_id.as_ref(), Some(&tpl.id));
        assert_eq!(a.governance.owner, "user:root");
        // Idempotent, and a race of callers gives one entry.
        assert_eq!(t.provision(&agent, &tpl.id, &a_sel).await.unwrap(), a);
        let b_sel = caller(&["systemd:slice:acme.slice", "systemd:unit:b.service"]);
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (t, agent, sel, id) = (t.clone(), agent.clone(), b_sel.clone(), tpl.id.clone());
                tokio::spawn(async move { t.provision(&agent, &id, &sel).await.unwrap() })
            })
            .collect();
        let mut got = Vec::new();
        for r in racers {
            got.push(r.await.unwrap().id);
        }
        got.dedup();
        assert_eq!(got.len(), 1, "{got:?}");
        let all = ds.list_entries(&EntryFilter::default()).await.unwrap();
        assert_eq!(all.len(), 2);
        let kinds = audit_kinds(&ds).await;
        assert_eq!(
            kinds,
            ["template.created", "entry.provisioned", "entry.provisioned"]
        );
    }

    #[tokio::test]
    async fn callers_that_may_not_use_a_template_get_nothing() {
        let (_dir, ds, t) = setup().await;
        let tpl = t
            .create(
                &spec(
                    "spiffe://example.org/acme/{cgroup:path}",
                    &["systemd:slice:acme.slice"],
                ),
                &root(),
            )
            .await
            .unwrap();
        let agent = SpiffeId::new(AGENT).unwrap();
        // Values that would leave the prefix or not be one segment.
        for path in ["/..", "/a/../..", "/acme.slice/a.service", "/"] {
            let sel = caller(&["systemd:slice:acme.slice", &format!("cgroup:path:{path}")]);
            let err = t.provision(&agent, &tpl.id, &sel).await.unwrap_err();
            assert!(
                matches!(err, RegistrationError::BadTemplate(_)),
                "{path}: {err:?}"
            );
        }
        // Another agent: as if the template did not exist.
        let other = SpiffeId::new("spiffe://example.org/node/b").unwrap();
        let sel = caller(&["systemd:slice:acme.slice", "cgroup:path:/x"]);
        let err = t.provision(&other, &tpl.id, &sel).await.unwrap_err();
        assert!(matches!(err, RegistrationError::NotFound(_)), "{err:?}");
        // Without the template's selectors.
        let err = t
            .provision(&agent, &tpl.id, &caller(&["cgroup:path:/x"]))
            .await
            .unwrap_err();
        assert!(matches!(err, RegistrationError::NotEntitled(_)), "{err:?}");
        // Malformed selectors.
        let err = t
            .provision(&agent, &tpl.id, &caller(&["nonsense"]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistrationError::InvalidSelector { .. }),
            "{err:?}"
        );
        assert!(
            ds.list_entries(&EntryFilter::default())
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(audit_kinds(&ds).await, ["template.created"]);
    }

    #[tokio::test]
    async fn instances_go_after_the_grace_and_with_their_template() {
        let (_dir, ds, t) = setup().await;
        let tpl = t
            .create(
                &spec(
                    "spiffe://example.org/acme/svc/{systemd:unit}",
                    &["systemd:slice:acme.slice"],
                ),
                &root(),
            )
            .await
            .unwrap();
        let agent = SpiffeId::new(AGENT).unwrap();
        let a = t
            .provision(
                &agent,
                &tpl.id,
                &caller(&["systemd:slice:acme.slice", "systemd:unit:a.service"]),
            )
            .await
            .unwrap();
        let b = t
            .provision(
                &agent,
                &tpl.id,
                &caller(&["systemd:slice:acme.slice", "systemd:unit:b.service"]),
            )
            .await
            .unwrap();
        let now = a.created_at;
        assert_eq!(t.collect(now + 1).await.unwrap(), 0);
        // `a` is reported alive (by its own agent only); `b` is not.
        let other = SpiffeId::new("spiffe://example.org/node/b").unwrap();
        assert_eq!(
            t.seen(&other, std::slice::from_ref(&b.id), now + 2)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            t.seen(&agent, std::slice::from_ref(&a.id), now + 2)
                .await
                .unwrap(),
            1
        );
        assert_eq!(t.collect(now + 3).await.unwrap(), 1);
        assert!(ds.get_entry(&b.id).await.unwrap().is_none());
        assert!(ds.get_entry(&a.id).await.unwrap().is_some());
        assert_eq!(t.collect(now + 4).await.unwrap(), 1);
        assert!(ds.get_entry(&a.id).await.unwrap().is_none());
        // Provisioned again, then the template goes with it.
        let a2 = t
            .provision(
                &agent,
                &tpl.id,
                &caller(&["systemd:slice:acme.slice", "systemd:unit:a.service"]),
            )
            .await
            .unwrap();
        let (_, gone) = t.delete(&tpl.id, &root()).await.unwrap();
        assert_eq!(gone, std::slice::from_ref(&a2));
        assert!(ds.get_entry(&a2.id).await.unwrap().is_none());
        let kinds = audit_kinds(&ds).await;
        assert_eq!(
            kinds,
            [
                "template.created",
                "entry.provisioned",
                "entry.provisioned",
                "entry.deprovisioned",
                "entry.deprovisioned",
                "entry.provisioned",
                "template.deleted",
                "entry.deprovisioned",
            ]
        );
    }
}
