//! A [`Datastore`] that counts its failures: every call goes to the store inside, and one
//! that fails for a reason other than its own outcome (`Unavailable`, `Backend`,
//! `Corrupt`; not `Conflict` or `NotFound`, which answer the request) is counted in
//! [`ServerMetrics::datastore_errors`] by operation class (`read`, `write`, `probe`) and
//! error kind. It also hands the store the counter of audit records appended, which the
//! store updates once they are committed.

use std::sync::Arc;

use common::task::TaskState;
use common::{EntryId, RegistrationEntry, SpiffeId, TaskId, TemplateId};

use super::ServerMetrics;
use crate::audit::{AuditEvent, AuditRecord, ChainHead};
use crate::datastore::*;

/// See the module docs.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn Datastore>,
    metrics: Arc<ServerMetrics>,
}

impl Metered {
    /// `inner`, counted in `metrics` (and its audit appends too).
    pub fn new(inner: Arc<dyn Datastore>, metrics: Arc<ServerMetrics>) -> Self {
        inner.count_audit_appends(metrics.audit_appended());
        Self { inner, metrics }
    }

    fn counted<T>(
        &self,
        op: &'static str,
        r: Result<T, DatastoreError>,
    ) -> Result<T, DatastoreError> {
        if let Err(e) = &r {
            self.metrics.datastore_failed(op, e);
        }
        r
    }
}

#[async_trait::async_trait]
impl Datastore for Metered {
    async fn create_entry(
        &self,
        entry: &RegistrationEntry,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let r = self.inner.create_entry(entry, audit).await;
        self.counted("write", r)
    }

    async fn update_entry(
        &self,
        entry: &RegistrationEntry,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let r = self.inner.update_entry(entry, audit).await;
        self.counted("write", r)
    }

    async fn update_entry_if_unchanged(
        &self,
        entry: &RegistrationEntry,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let r = self.inner.update_entry_if_unchanged(entry, audit).await;
        self.counted("write", r)
    }

    async fn delete_entry(
        &self,
        id: &EntryId,
        audit: AuditFor<RegistrationEntry>,
    ) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let r = self.inner.delete_entry(id, audit).await;
        self.counted("write", r)
    }

    async fn get_entry(&self, id: &EntryId) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let r = self.inner.get_entry(id).await;
        self.counted("read", r)
    }

    async fn get_entries(&self, ids: &[EntryId]) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let r = self.inner.get_entries(ids).await;
        self.counted("read", r)
    }

    async fn list_entries(
        &self,
        filter: &EntryFilter,
    ) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let r = self.inner.list_entries(filter).await;
        self.counted("read", r)
    }

    async fn create_join_token(
        &self,
        token_hash: &str,
        spiffe_id: &SpiffeId,
        expires_at: i64,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let r = self
            .inner
            .create_join_token(token_hash, spiffe_id, expires_at, audit)
            .await;
        self.counted("write", r)
    }

    async fn get_join_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<ConsumedToken>, DatastoreError> {
        let r = self.inner.get_join_token(token_hash).await;
        self.counted("read", r)
    }

    async fn attest_agent_with_token(
        &self,
        token_hash: &str,
        now: i64,
        agent: &AgentRecord,
        audit: &[AuditEvent],
    ) -> Result<TokenAttestation, DatastoreError> {
        let r = self
            .inner
            .attest_agent_with_token(token_hash, now, agent, audit)
            .await;
        self.counted("write", r)
    }

    async fn attest_agent(
        &self,
        agent: &AgentRecord,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let r = self.inner.attest_agent(agent, audit).await;
        self.counted("write", r)
    }

    async fn renew_agent(
        &self,
        id: &SpiffeId,
        expected_serial: &str,
        new_serial: &str,
        expires_at: i64,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let r = self
            .inner
            .renew_agent(id, expected_serial, new_serial, expires_at, audit)
            .await;
        self.counted("write", r)
    }

    async fn ban_agent(
        &self,
        id: &SpiffeId,
        audit: &[AuditEvent],
    ) -> Result<Option<AgentRecord>, DatastoreError> {
        let r = self.inner.ban_agent(id, audit).await;
        self.counted("write", r)
    }

    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, DatastoreError> {
        let r = self.inner.get_agent(id).await;
        self.counted("read", r)
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, DatastoreError> {
        let r = self.inner.list_agents().await;
        self.counted("read", r)
    }

    async fn delete_agent(
        &self,
        id: &SpiffeId,
        audit: &[AuditEvent],
    ) -> Result<Option<AgentRecord>, DatastoreError> {
        let r = self.inner.delete_agent(id, audit).await;
        self.counted("write", r)
    }

    async fn append_audit(
        &self,
        events: &[AuditEvent],
    ) -> Result<Vec<AuditRecord>, DatastoreError> {
        let r = self.inner.append_audit(events).await;
        self.counted("write", r)
    }

    async fn list_audit(
        &self,
        task_id: Option<&TaskId>,
        tenant: Option<&str>,
    ) -> Result<Vec<AuditRecord>, DatastoreError> {
        let r = self.inner.list_audit(task_id, tenant).await;
        self.counted("read", r)
    }

    async fn audit_head(&self) -> Result<Option<ChainHead>, DatastoreError> {
        let r = self.inner.audit_head().await;
        self.counted("read", r)
    }

    async fn audit_record(&self, seq: i64) -> Result<Option<AuditRecord>, DatastoreError> {
        let r = self.inner.audit_record(seq).await;
        self.counted("read", r)
    }

    fn anchor_audit(&self, head: ChainHead) {
        self.inner.anchor_audit(head)
    }

    fn audit_heads(&self) -> tokio::sync::watch::Receiver<Option<ChainHead>> {
        self.inner.audit_heads()
    }

    async fn create_task(
        &self,
        task: &TaskRecord,
        provisioned_entry: Option<&RegistrationEntry>,
        audit: &[AuditEvent],
    ) -> Result<StatusEntry, DatastoreError> {
        let r = self.inner.create_task(task, provisioned_entry, audit).await;
        self.counted("write", r)
    }

    async fn create_task_within(
        &self,
        task: &TaskRecord,
        provisioned_entry: Option<&RegistrationEntry>,
        audit: &[AuditEvent],
        limits: &TaskLimits,
    ) -> Result<Result<StatusEntry, LimitReached>, DatastoreError> {
        let r = self
            .inner
            .create_task_within(task, provisioned_entry, audit, limits)
            .await;
        self.counted("write", r)
    }

    async fn update_task(
        &self,
        task: &TaskRecord,
        expected: &[TaskState],
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let r = self.inner.update_task(task, expected, audit).await;
        self.counted("write", r)
    }

    async fn acknowledge_task(
        &self,
        id: &TaskId,
        acknowledgement: &Acknowledgement,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let r = self
            .inner
            .acknowledge_task(id, acknowledgement, audit)
            .await;
        self.counted("write", r)
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, DatastoreError> {
        let r = self.inner.get_task(id).await;
        self.counted("read", r)
    }

    async fn list_tasks(
        &self,
        state: Option<TaskState>,
    ) -> Result<Vec<TaskRecord>, DatastoreError> {
        let r = self.inner.list_tasks(state).await;
        self.counted("read", r)
    }

    async fn due_tasks(&self, now: i64) -> Result<Vec<TaskRecord>, DatastoreError> {
        let r = self.inner.due_tasks(now).await;
        self.counted("read", r)
    }

    async fn open_tasks_for_entry(
        &self,
        entry_id: &EntryId,
    ) -> Result<Vec<TaskRecord>, DatastoreError> {
        let r = self.inner.open_tasks_for_entry(entry_id).await;
        self.counted("read", r)
    }

    async fn record_issuance(
        &self,
        task_svids: Vec<TaskSvid>,
        audit: Vec<AuditEvent>,
        issued: Vec<IssuedSvid>,
    ) -> Result<Vec<AuditRecord>, DatastoreError> {
        let r = self.inner.record_issuance(task_svids, audit, issued).await;
        self.counted("write", r)
    }

    async fn revoked_since(
        &self,
        now: i64,
    ) -> Result<(Vec<TaskRecord>, Vec<TaskSvid>), DatastoreError> {
        let r = self.inner.revoked_since(now).await;
        self.counted("read", r)
    }

    async fn newest_status_list(&self) -> Result<Option<i64>, DatastoreError> {
        let r = self.inner.newest_status_list().await;
        self.counted("read", r)
    }

    async fn same_workload_elsewhere(
        &self,
        parent_id: &SpiffeId,
        selectors: &common::SelectorSet,
        tenant: &str,
    ) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let r = self
            .inner
            .same_workload_elsewhere(parent_id, selectors, tenant)
            .await;
        self.counted("read", r)
    }

    async fn lapsed_entries(&self, now: i64) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let r = self.inner.lapsed_entries(now).await;
        self.counted("read", r)
    }

    async fn create_tenant(
        &self,
        t: &TenantRecord,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let r = self.inner.create_tenant(t, audit).await;
        self.counted("write", r)
    }

    async fn update_tenant(
        &self,
        t: &TenantRecord,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let r = self.inner.update_tenant(t, audit).await;
        self.counted("write", r)
    }

    async fn delete_tenant(
        &self,
        name: &str,
        audit: AuditFor<TenantRecord>,
    ) -> Result<Option<TenantRecord>, DatastoreError> {
        let r = self.inner.delete_tenant(name, audit).await;
        self.counted("write", r)
    }

    async fn get_tenant(&self, name: &str) -> Result<Option<TenantRecord>, DatastoreError> {
        let r = self.inner.get_tenant(name).await;
        self.counted("read", r)
    }

    async fn list_tenants(&self) -> Result<Vec<TenantRecord>, DatastoreError> {
        let r = self.inner.list_tenants().await;
        self.counted("read", r)
    }

    async fn tenant_counts(&self, name: &str) -> Result<(i64, i64), DatastoreError> {
        let r = self.inner.tenant_counts(name).await;
        self.counted("read", r)
    }

    async fn put_domain(
        &self,
        d: &DomainRecord,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let r = self.inner.put_domain(d, audit).await;
        self.counted("write", r)
    }

    async fn record_domain_check(
        &self,
        d: &DomainRecord,
        previous_checked_at: Option<i64>,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let r = self
            .inner
            .record_domain_check(d, previous_checked_at, audit)
            .await;
        self.counted("write", r)
    }

    async fn get_domain(&self, domain: &str) -> Result<Option<DomainRecord>, DatastoreError> {
        let r = self.inner.get_domain(domain).await;
        self.counted("read", r)
    }

    async fn list_domains(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<DomainRecord>, DatastoreError> {
        let r = self.inner.list_domains(tenant).await;
        self.counted("read", r)
    }

    async fn delete_domain(
        &self,
        domain: &str,
        audit: AuditFor<DomainRecord>,
    ) -> Result<Option<DomainRecord>, DatastoreError> {
        let r = self.inner.delete_domain(domain, audit).await;
        self.counted("write", r)
    }

    async fn record_usage(&self, reports: &[UsageReport]) -> Result<(), DatastoreError> {
        let r = self.inner.record_usage(reports).await;
        self.counted("write", r)
    }

    async fn entry_usage(
        &self,
        entry_ids: Option<&[EntryId]>,
    ) -> Result<Vec<EntryUsage>, DatastoreError> {
        let r = self.inner.entry_usage(entry_ids).await;
        self.counted("read", r)
    }

    async fn publish_authorities(
        &self,
        items: &[PublishedAuthority],
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let r = self.inner.publish_authorities(items, audit).await;
        self.counted("write", r)
    }

    async fn list_authorities(&self, now: i64) -> Result<Vec<PublishedAuthority>, DatastoreError> {
        let r = self.inner.list_authorities(now).await;
        self.counted("read", r)
    }

    async fn prune_authorities(&self, now: i64) -> Result<u64, DatastoreError> {
        let r = self.inner.prune_authorities(now).await;
        self.counted("write", r)
    }

    async fn claim_set_receiver(
        &self,
        receiver: &str,
        holder: &str,
        start: i64,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<i64>, DatastoreError> {
        let r = self
            .inner
            .claim_set_receiver(receiver, holder, start, now_ms, until_ms)
            .await;
        self.counted("write", r)
    }

    async fn advance_set_cursor(
        &self,
        receiver: &str,
        holder: &str,
        from: i64,
        to: i64,
        audit: &[AuditEvent],
    ) -> Result<bool, DatastoreError> {
        let r = self
            .inner
            .advance_set_cursor(receiver, holder, from, to, audit)
            .await;
        self.counted("write", r)
    }

    async fn release_set_receiver(
        &self,
        receiver: &str,
        holder: &str,
    ) -> Result<(), DatastoreError> {
        let r = self.inner.release_set_receiver(receiver, holder).await;
        self.counted("write", r)
    }

    async fn create_template(
        &self,
        template: &TemplateRecord,
        audit: &[AuditEvent],
    ) -> Result<(), DatastoreError> {
        let r = self.inner.create_template(template, audit).await;
        self.counted("write", r)
    }

    async fn get_template(
        &self,
        id: &TemplateId,
    ) -> Result<Option<TemplateRecord>, DatastoreError> {
        let r = self.inner.get_template(id).await;
        self.counted("read", r)
    }

    async fn list_templates(
        &self,
        parent: Option<&SpiffeId>,
    ) -> Result<Vec<TemplateRecord>, DatastoreError> {
        let r = self.inner.list_templates(parent).await;
        self.counted("read", r)
    }

    async fn delete_template(
        &self,
        id: &TemplateId,
        audit: AuditFor<DeletedTemplate>,
    ) -> Result<Option<DeletedTemplate>, DatastoreError> {
        let r = self.inner.delete_template(id, audit).await;
        self.counted("write", r)
    }

    async fn mark_instances_seen(&self, ids: &[EntryId], now: i64) -> Result<(), DatastoreError> {
        let r = self.inner.mark_instances_seen(ids, now).await;
        self.counted("write", r)
    }

    async fn stale_instances(&self, now: i64) -> Result<Vec<RegistrationEntry>, DatastoreError> {
        let r = self.inner.stale_instances(now).await;
        self.counted("read", r)
    }

    async fn delete_stale_instance(
        &self,
        id: &EntryId,
        now: i64,
        audit: AuditFor<RegistrationEntry>,
    ) -> Result<Option<RegistrationEntry>, DatastoreError> {
        let r = self.inner.delete_stale_instance(id, now, audit).await;
        self.counted("write", r)
    }

    async fn ping(&self, within: std::time::Duration) -> Result<(), DatastoreError> {
        let r = self.inner.ping(within).await;
        self.counted("probe", r)
    }

    fn count_audit_appends(&self, counted: AuditAppended) {
        self.inner.count_audit_appends(counted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditKind;
    use crate::datastore::sqlite;
    use crate::metrics::{AuditKindLabel, DatastoreErrorLabels};

    #[tokio::test]
    async fn committed_audit_records_and_failed_calls_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite::SqliteDatastore::open(&dir.path().join("ds.sqlite3"))
            .await
            .unwrap();
        let metrics = Arc::new(ServerMetrics::default());
        let ds = Metered::new(Arc::new(store.clone()), Arc::clone(&metrics));
        let appended = |kind| {
            metrics
                .audit_appends
                .get_or_create(&AuditKindLabel::of(kind))
                .get()
        };
        let failed = |op, error| {
            metrics
                .datastore_errors
                .get_or_create(&DatastoreErrorLabels { op, error })
                .get()
        };

        let event = |kind| AuditEvent::new(kind, "subject", serde_json::json!({}));
        ds.append_audit(&[
            event(AuditKind::PolicyReloaded),
            event(AuditKind::PolicyReloaded),
            event(AuditKind::CaRotated),
            event(AuditKind::PolicyReloaded),
        ])
        .await
        .unwrap();
        assert_eq!(appended("policy.reloaded"), 3);
        assert_eq!(appended("ca.rotated"), 1);
        assert_eq!(appended("entry.created"), 0);

        // An answer is not a failure.
        let missing = EntryId::parse("00000000-0000-7000-8000-000000000001").unwrap();
        assert_eq!(ds.get_entry(&missing).await.unwrap(), None);
        assert!(
            ds.get_entries(std::slice::from_ref(&missing))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(failed("read", "unavailable") + failed("read", "backend"), 0);

        // The database gone: reads, writes and probes fail, each counted in its class.
        store.close().await;
        assert!(ds.get_entry(&missing).await.is_err());
        assert!(
            ds.get_entries(std::slice::from_ref(&missing))
                .await
                .is_err()
        );
        assert!(
            ds.append_audit(&[event(AuditKind::CaRotated)])
                .await
                .is_err()
        );
        assert!(ds.ping(std::time::Duration::from_secs(1)).await.is_err());
        assert_eq!(failed("read", "unavailable"), 2);
        assert_eq!(failed("write", "unavailable"), 1);
        assert_eq!(failed("probe", "unavailable"), 1);
        assert_eq!(
            appended("ca.rotated"),
            1,
            "nothing committed, nothing counted"
        );
    }
}
