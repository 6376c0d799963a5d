//! The cross-server change feed: several servers on one PostgreSQL database push every
//! change to their own agents, whichever server made it.
//!
//! Triggers append each change agents must hear about to the table `changes`, in the
//! transaction that makes it, numbered without gaps in commit order and naming the server
//! that made it (`tessera.origin`, set on every connection: [`origin`]), and announce it
//! with `NOTIFY tessera_changes` (delivered at commit); see
//! `migrations/postgres/0012_change_feed.sql`. Each server runs one [`Feed`]: it
//! `LISTEN`s, and on a notification, after (re)connecting and every [`POLL`] reads the
//! rows after the last one it applied, skips its own (published in-process when they were
//! made) and publishes the others on its [`Events`] hub, re-reading what changed: an entry
//! as stored now, a task into the in-memory grants, and the revocations at once when a
//! task ended early. The cursor only moves forward past rows applied, so a lost connection
//! or a missed notification loses nothing and applies nothing twice; a row whose
//! re-read fails is retried from there.
//!
//! Rows older than [`KEEP`] are pruned by one server at a time (a transaction-scoped
//! `pg_try_advisory_xact_lock`); the newest row always stays, so numbering goes on. A
//! server whose cursor fell behind what was pruned (away for longer than [`KEEP`])
//! reloads its tasks and re-publishes every entry.
//!
//! After each batch the tailer waits for this server's own writes in progress to be
//! published ([`Events::settle`]) and publishes [`ChangeEvent::Settled`]: every change
//! up to that number has been published on this server. Sync streams pass it to agents as
//! their cursor; an agent that reconnects, to this server or another, names it and gets
//! only what changed for it since ([`Cursor::touched_since`]), after the server it
//! reached has applied everything committed before it asked ([`Cursor::caught_up`]).
//!
//! With SQLite one server owns the datastore and publishes in-process: no feed runs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::{EntryId, SpiffeId, TaskId};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row as _};
use tokio_util::sync::CancellationToken;

use crate::datastore::{Datastore, DatastoreError, EntryFilter};
use crate::events::{ChangeEvent, Events};
use crate::tasks::Tasks;

/// The `NOTIFY` channel.
pub const CHANNEL: &str = "tessera_changes";
/// How often the feed is read without a notification (a missed one costs at most this).
pub const POLL: Duration = Duration::from_secs(1);
/// How long rows are kept.
pub const KEEP: Duration = Duration::from_secs(3600);
/// How often a server tries to prune.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most rows read at once.
const BATCH: i64 = 1000;
/// Transaction-scoped advisory lock held while pruning ("TESP").
const PRUNE_LOCK: i64 = 0x5445_5350;

const READ: &str = "SELECT seq, kind, subject, entry_id, parent_id, previous_parent, origin
    FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2";

/// This process's instance id (the `origin` of the rows its writes append).
pub fn origin() -> &'static str {
    crate::datastore::postgres::origin()
}

/// One row of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its number: gap-free, in commit order.
    pub seq: i64,
    /// What changed: `entry`, `entry_deleted`, `task`, `agent_removed`, `tenant`, `bundle`.
    pub kind: String,
    /// The entry id, task id, agent SPIFFE ID or tenant name.
    pub subject: String,
    /// The entry concerned (entries, tasks).
    pub entry_id: Option<String>,
    /// The agent the entry is parented to (entries, tasks).
    pub parent_id: Option<String>,
    /// The agent an updated entry moved away from.
    pub previous_parent: Option<String>,
    /// The server instance that made the change.
    pub origin: String,
}

/// The largest sequence number in the feed (0 when empty): where a server that just read
/// its state starts. Read it *before* loading that state: a change in between is then
/// applied once more (re-reads are idempotent), never missed.
pub async fn head(pool: &PgPool) -> Result<i64, DatastoreError> {
    sqlx::query_scalar::<_, i64>("SELECT COALESCE(max(seq), 0) FROM changes")
        .fetch_one(pool)
        .await
        .map_err(backend)
}

/// Reads the rows after `after`, oldest first (at most `BATCH`).
pub async fn read_after(pool: &PgPool, after: i64) -> Result<Vec<Change>, DatastoreError> {
    let rows = sqlx::query(READ)
        .bind(after)
        .bind(BATCH)
        .fetch_all(pool)
        .await
        .map_err(backend)?;
    rows.iter()
        .map(|r| {
            Ok(Change {
                seq: r.try_get("seq")?,
                kind: r.try_get("kind")?,
                subject: r.try_get("subject")?,
                entry_id: r.try_get("entry_id")?,
                parent_id: r.try_get("parent_id")?,
                previous_parent: r.try_get("previous_parent")?,
                origin: r.try_get("origin")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(backend)
}

/// Deletes the rows written before `before_ms` (unix milliseconds), keeping the newest,
/// if no other server is pruning; returns how many, `None` when another server was.
pub async fn prune(pool: &PgPool, before_ms: i64) -> Result<Option<u64>, DatastoreError> {
    let mut tx = pool.begin().await.map_err(backend)?;
    let mine: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PRUNE_LOCK)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend)?;
    if !mine {
        return Ok(None);
    }
    let n = sqlx::query(
        "DELETE FROM changes WHERE at_ms < $1 AND seq < (SELECT max(seq) FROM changes)",
    )
    .bind(before_ms)
    .execute(&mut *tx)
    .await
    .map_err(backend)?
    .rows_affected();
    tx.commit().await.map_err(backend)?;
    Ok(Some(n))
}

fn backend(e: sqlx::Error) -> DatastoreError {
    DatastoreError::Backend(format!("change feed: {e}"))
}

/// Where this server is in the feed, shared with its sync streams.
#[derive(Debug)]
pub struct Cursor {
    pool: PgPool,
    /// Every change up to this number has been published on this server.
    settled: AtomicI64,
    advanced: tokio::sync::Notify,
}

/// What changed for one agent between two cursors.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Entries created, changed, deleted or moved away, or whose tasks changed.
    pub entries: BTreeSet<String>,
    /// The agent was evicted or banned.
    pub agent_removed: bool,
    /// A node entry (an entry parented to the `groups_parent` asked about) changed: the
    /// agent's groups may have.
    pub groups_changed: bool,
}

impl Cursor {
    /// A cursor at `settled` (from [`head`], read before the server loaded its state).
    pub fn new(pool: PgPool, settled: i64) -> Arc<Self> {
        Arc::new(Self {
            pool,
            settled: AtomicI64::new(settled),
            advanced: tokio::sync::Notify::new(),
        })
    }

    /// Every change up to this number has been published on this server.
    pub fn settled(&self) -> i64 {
        self.settled.load(Ordering::Acquire)
    }

    fn advance(&self, to: i64) {
        self.settled.fetch_max(to, Ordering::AcqRel);
        self.advanced.notify_waiters();
    }

    /// Waits (at most `bound`) until this server has published every change committed
    /// before the call; returns the settled number, or `None` on timeout or when the
    /// feed cannot be read.
    pub async fn caught_up(&self, bound: Duration) -> Option<i64> {
        let target = head(&self.pool).await.ok()?;
        let wait = async {
            loop {
                let advanced = self.advanced.notified();
                tokio::pin!(advanced);
                advanced.as_mut().enable();
                let now = self.settled();
                if now >= target {
                    return now;
                }
                advanced.await;
            }
        };
        tokio::time::timeout(bound, wait).await.ok()
    }

    /// What changed for `agent` after `after` up to `upto` (a settled number), or `None`
    /// when that cannot be told: rows after `after` were pruned, or `after` is beyond
    /// `upto` (a cursor from another database, or one restored from a backup).
    ///
    /// `parents`: the IDs whose entries the agent receives (its own and its node groups').
    /// `groups_parent`: for an agent that may be in node groups, the parent of node
    /// entries (the server): a change to one sets [`Touched::groups_changed`].
    pub async fn touched_since(
        &self,
        agent: &SpiffeId,
        parents: &[&SpiffeId],
        groups_parent: Option<&SpiffeId>,
        after: i64,
        upto: i64,
    ) -> Result<Option<Touched>, DatastoreError> {
        if after > upto || after < 0 {
            return Ok(None);
        }
        // One snapshot of the table: pruning cannot remove rows between the check and
        // the read.
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        let oldest: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM changes")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
        // The newest row always stays, so an empty table means nothing was ever written.
        if oldest.is_some_and(|o| o > after + 1) {
            return Ok(None);
        }
        let parents: Vec<&str> = parents.iter().map(|p| p.as_str()).collect();
        let groups_parent = groups_parent.map(SpiffeId::as_str);
        let rows = sqlx::query(
            "SELECT kind, subject, entry_id, parent_id, previous_parent FROM changes
             WHERE seq > $1 AND seq <= $2
               AND (parent_id = ANY($4) OR previous_parent = ANY($4)
                    OR parent_id = $5 OR previous_parent = $5
                    OR (kind = 'agent_removed' AND subject = $3))",
        )
        .bind(after)
        .bind(upto)
        .bind(agent.as_str())
        .bind(&parents)
        .bind(groups_parent)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        let mut touched = Touched::default();
        for r in rows {
            let kind: String = r.try_get("kind").map_err(backend)?;
            let parent: Option<String> = r.try_get("parent_id").map_err(backend)?;
            let previous: Option<String> = r.try_get("previous_parent").map_err(backend)?;
            if groups_parent.is_some()
                && (parent.as_deref() == groups_parent || previous.as_deref() == groups_parent)
            {
                touched.groups_changed = true;
            }
            if kind == "agent_removed" {
                touched.agent_removed = true;
            } else if let Some(id) = r
                .try_get::<Option<String>, _>("entry_id")
                .map_err(backend)?
            {
                touched.entries.insert(id);
            }
        }
        Ok(Some(touched))
    }
}

/// A cursor as agents hold it (opaque to them).
pub fn encode(seq: i64) -> String {
    format!("feed/{seq}")
}

/// The number in a cursor from [`encode`]; `None` for anything else.
pub fn decode(cursor: &str) -> Option<i64> {
    cursor
        .strip_prefix("feed/")?
        .parse()
        .ok()
        .filter(|n| *n >= 0)
}

/// One server's tailer.
#[derive(Debug)]
pub struct Feed {
    pool: PgPool,
    ds: Arc<dyn Datastore>,
    tasks: Arc<Tasks>,
    events: Events,
    /// Woken when another server's published trust material changed: the bundle's
    /// sharing loop re-reads the table at once.
    bundle_changed: Arc<tokio::sync::Notify>,
    /// Bumped when another server changed a task (its audit records are committed with
    /// it): SET push reads the log at once rather than at its next poll.
    tasks_changed: tokio::sync::watch::Sender<u64>,
    /// The last row applied (or skipped as this server's own).
    last: i64,
    /// Where this server's sync streams are (see [`Cursor`]).
    cursor: Arc<Cursor>,
}

impl Feed {
    /// A tailer that applies the rows after `cursor`'s settled number (from [`head`]).
    pub(crate) fn new(
        ds: Arc<dyn Datastore>,
        tasks: Arc<Tasks>,
        events: Events,
        bundle_changed: Arc<tokio::sync::Notify>,
        tasks_changed: tokio::sync::watch::Sender<u64>,
        cursor: Arc<Cursor>,
    ) -> Self {
        Self {
            pool: cursor.pool.clone(),
            ds,
            tasks,
            events,
            bundle_changed,
            tasks_changed,
            last: cursor.settled(),
            cursor,
        }
    }

    /// Tails the feed until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune_tick = tokio::time::interval(PRUNE_EVERY);
        prune_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listener: Option<PgListener> = None;
        tracing::info!(
            origin = origin(),
            from = self.last,
            "tailing the change feed"
        );
        loop {
            if listener.is_none() {
                listener = self.listen().await;
                // Whatever was announced while not listening.
                self.catch_up().await;
            }
            let heard = tokio::select! {
                () = shutdown.cancelled() => return,
                _ = poll.tick() => Ok(true),
                _ = prune_tick.tick() => {
                    self.prune().await;
                    Ok(true)
                }
                n = recv(&mut listener) => n,
            };
            match heard {
                Ok(true) => {}
                // The connection was lost: sqlx reconnects on the next call and LISTENs
                // again; a notification sent meanwhile is lost, so read.
                Ok(false) => tracing::warn!("change feed listener reconnecting"),
                Err(e) => {
                    tracing::warn!(error = %e, "change feed listener failed; reconnecting");
                    listener = None;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
            }
            self.catch_up().await;
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut l = match PgListener::connect_with(&self.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect the change feed listener; polling");
                return None;
            }
        };
        match l.listen(CHANNEL).await {
            Ok(()) => Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for the change feed; polling");
                None
            }
        }
    }

    async fn prune(&self) {
        let cutoff = crate::clock::now_unix()
            .saturating_sub(i64::try_from(KEEP.as_secs()).unwrap_or(i64::MAX))
            .saturating_mul(1000);
        match prune(&self.pool, cutoff).await {
            Ok(Some(n)) if n > 0 => tracing::debug!(rows = n, "change feed pruned"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot prune the change feed; will retry"),
        }
    }

    /// Applies every row after the cursor; stops at a failure (retried on the next call).
    pub async fn catch_up(&mut self) {
        loop {
            let batch = match read_after(&self.pool, self.last).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the change feed; will retry");
                    return;
                }
            };
            let full = i64::try_from(batch.len()).unwrap_or(i64::MAX) >= BATCH;
            if let Some(first) = batch.first()
                && first.seq != self.last + 1
                && self.last > 0
            {
                tracing::warn!(
                    last_applied = self.last,
                    next = first.seq,
                    "change feed rows were pruned before this server read them; reloading tasks and re-publishing every entry"
                );
                if let Err(e) = self.resync().await {
                    tracing::warn!(error = %e, "cannot resynchronise from the datastore; will retry");
                    return;
                }
            }
            let applied = self.apply(&batch).await;
            self.settle().await;
            if let Err(e) = applied {
                tracing::warn!(error = %e, "cannot apply the change feed; will retry");
                return;
            }
            if !full {
                return;
            }
        }
    }

    /// Once this server's own writes in progress are published, tells the sync streams
    /// that everything up to the last row applied has been.
    async fn settle(&self) {
        if self.last <= self.cursor.settled() {
            return;
        }
        self.events.settle().await;
        self.cursor.advance(self.last);
        self.events.publish(ChangeEvent::Settled(self.last));
    }

    /// Applies `batch` in order, moving the cursor past each row applied.
    async fn apply(&mut self, batch: &[Change]) -> Result<(), DatastoreError> {
        let mut revocations = false;
        let mut result = Ok(());
        for c in batch {
            if c.origin != origin() {
                match self.apply_one(c).await {
                    Ok(r) => revocations |= r,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            self.last = c.seq;
        }
        if revocations {
            self.tasks.refresh_revocations_now().await?;
        }
        result
    }

    /// Publishes one change; returns whether the revocations must be recomputed.
    async fn apply_one(&self, c: &Change) -> Result<bool, DatastoreError> {
        tracing::debug!(seq = c.seq, kind = %c.kind, subject = %c.subject, origin = %c.origin, "change from another server");
        match c.kind.as_str() {
            "entry" => {
                // Deleted since: its own row follows.
                if let Some(id) = parsed(EntryId::parse(c.subject.as_str()))
                    && let Some(entry) = self.ds.get_entry(&id).await?
                {
                    self.events.publish(ChangeEvent::EntryUpserted {
                        entry: Arc::new(entry),
                        previous_parent: agent_id(c.previous_parent.as_deref()),
                    });
                }
            }
            "entry_deleted" => {
                if let Some(id) = parsed(EntryId::parse(c.subject.as_str()))
                    && let Some(parent_id) = agent_id(c.parent_id.as_deref())
                {
                    self.events
                        .publish(ChangeEvent::EntryDeleted { id, parent_id });
                }
            }
            "task" => {
                self.tasks_changed.send_modify(|n| *n = n.wrapping_add(1));
                if let Some(id) = parsed(TaskId::parse(c.subject.as_str())) {
                    return self.tasks.apply_remote(&id).await;
                }
            }
            "template" => {
                // Deleted since: its own row follows.
                if let Some(id) = parsed(common::TemplateId::parse(c.subject.as_str()))
                    && let Some(t) = self.ds.get_template(&id).await?
                {
                    self.events
                        .publish(ChangeEvent::TemplateUpserted(Arc::new(t)));
                }
            }
            "template_deleted" => {
                if let Some(id) = parsed(common::TemplateId::parse(c.subject.as_str()))
                    && let Some(parent_id) = agent_id(c.parent_id.as_deref())
                {
                    self.events
                        .publish(ChangeEvent::TemplateDeleted { id, parent_id });
                }
            }
            "agent_removed" => {
                if let Some(id) = agent_id(Some(&c.subject)) {
                    self.events.publish(ChangeEvent::AgentRemoved(id));
                }
            }
            // The union is recomposed from the table (by the bundle's sharing loop); agents
            // hear of it only if it changed.
            "bundle" => self.bundle_changed.notify_one(),
            // Issuance reads tenants from the datastore; what a tenant change does to
            // entries (disabling them) is a change of its own.
            "tenant" => {}
            other => tracing::debug!(kind = other, "unknown change kind ignored"),
        }
        Ok(false)
    }

    /// After rows were lost: every task and entry as stored now.
    async fn resync(&self) -> Result<(), DatastoreError> {
        self.tasks.load().await?;
        for entry in self.ds.list_entries(&EntryFilter::default()).await? {
            self.events.publish(ChangeEvent::EntryUpserted {
                entry: Arc::new(entry),
                previous_parent: None,
            });
        }
        self.events.publish(ChangeEvent::RevocationsChanged);
        Ok(())
    }
}

/// Waits for a notification: `Ok(true)` on one, `Ok(false)` when the connection was lost
/// (the next call reconnects); never returns without a listener.
async fn recv(listener: &mut Option<PgListener>) -> Result<bool, sqlx::Error> {
    match listener {
        Some(l) => l.try_recv().await.map(|n| n.is_some()),
        None => std::future::pending().await,
    }
}

fn parsed<T>(r: Result<T, common::ids::IdError>) -> Option<T> {
    r.inspect_err(|e| tracing::warn!(error = %e, "change feed names a bad id"))
        .ok()
}

fn agent_id(s: Option<&str>) -> Option<SpiffeId> {
    let s = s?;
    SpiffeId::new(s)
        .inspect_err(|e| tracing::warn!(id = s, error = %e, "change feed names a bad SPIFFE ID"))
        .ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::datastore::postgres::PostgresDatastore;

    fn feed_entry(n: usize, parent: &str) -> common::RegistrationEntry {
        use std::str::FromStr as _;
        common::RegistrationEntry {
            id: common::EntryId::parse(format!("feed-{n}")).unwrap(),
            spiffe_id: common::SpiffeId::new(&format!("spiffe://example.org/feed/{n}")).unwrap(),
            parent_id: common::SpiffeId::new(parent).unwrap(),
            selectors: [common::Selector::from_str(&format!("unix:uid:{n}")).unwrap()]
                .into_iter()
                .collect(),
            x509_svid_ttl: Duration::from_secs(3600),
            jwt_svid_ttl: Duration::from_secs(300),
            dns_names: Vec::new(),
            jit: false,
            hint: String::new(),
            created_at: 1_700_000_000,
            revision: 1,
            governance: common::entry::Governance {
                tenant: "default".into(),
                owner: String::new(),
                expires_at: None,
                review_every: None,
                certified_at: None,
                disabled: None,
                template_id: None,
            },
            node_selectors: None,
        }
    }

    /// The change feed: every entry change through the datastore is in `changes`, in the
    /// same transaction, named with this process's origin and announced; numbers are
    /// gap-free in commit order under concurrent writers from two pools (a reader never
    /// sees N+1 before N); another origin shows as such; pruning keeps the newest row.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_change_feed_records_every_change_in_commit_order() {
        use crate::datastore::Datastore as _;
        use crate::feed;
        use sqlx::postgres::PgListener;

        let db = crate::datastore::testdb::Postgres::new().await;
        let a = PostgresDatastore::open(&db.url).await.unwrap();
        let b = PostgresDatastore::open(&db.url).await.unwrap();
        let pool = a.feed_pool();
        assert_eq!(feed::head(&pool).await.unwrap(), 0);
        let mut listener = PgListener::connect_with(&pool).await.unwrap();
        listener.listen(feed::CHANNEL).await.unwrap();

        let node_a = "spiffe://example.org/node/a";
        let node_b = "spiffe://example.org/node/b";
        let mut e = feed_entry(0, node_a);
        a.create_entry(&e, &[]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), listener.recv())
            .await
            .expect("NOTIFY at commit")
            .unwrap();
        e.parent_id = common::SpiffeId::new(node_b).unwrap();
        e.revision = 2;
        a.update_entry(&e, &[]).await.unwrap();
        a.delete_entry(&e.id, Box::new(|_| Vec::new()))
            .await
            .unwrap();
        let rows = feed::read_after(&pool, 0).await.unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|c| {
                (
                    c.seq,
                    c.kind.as_str(),
                    c.subject.as_str(),
                    c.parent_id.as_deref(),
                    c.previous_parent.as_deref(),
                    c.origin.as_str(),
                )
            })
            .collect();
        let me = feed::origin();
        assert_eq!(
            got,
            [
                (1, "entry", "feed-0", Some(node_a), None, me),
                (2, "entry", "feed-0", Some(node_b), Some(node_a), me),
                (3, "entry_deleted", "feed-0", Some(node_b), None, me),
            ]
        );
        // Templates: created and deleted (with their instances, none here).
        let t = crate::datastore::TemplateRecord {
            id: common::TemplateId::parse("feed-t").unwrap(),
            template: common::SpiffeIdTemplate::new("spiffe://example.org/t/{systemd:unit}")
                .unwrap(),
            parent_id: common::SpiffeId::new(node_a).unwrap(),
            selectors: e.selectors.clone(),
            x509_svid_ttl: Duration::from_secs(60),
            jwt_svid_ttl: Duration::from_secs(60),
            tenant: "default".into(),
            owner: String::new(),
            grace: Duration::from_secs(5),
            created_at: 1,
        };
        a.create_template(&t, &[]).await.unwrap();
        a.delete_template(&t.id, Box::new(|_| Vec::new()))
            .await
            .unwrap()
            .unwrap();
        let rows = feed::read_after(&pool, 3).await.unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|c| (c.kind.as_str(), c.subject.as_str(), c.parent_id.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("template", "feed-t", Some(node_a)),
                ("template_deleted", "feed-t", Some(node_a)),
            ]
        );
        sqlx::query("DELETE FROM changes WHERE seq > 3")
            .execute(&pool)
            .await
            .unwrap();

        // A failed write appends nothing: a duplicate entry is refused.
        let dup = feed_entry(1, node_a);
        a.create_entry(&dup, &[]).await.unwrap();
        let mut again = dup.clone();
        again.id = common::EntryId::parse("feed-dup").unwrap();
        assert!(a.create_entry(&again, &[]).await.is_err());
        assert_eq!(feed::head(&pool).await.unwrap(), 4);

        // Another origin (another server) is named as such.
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query("SET tessera.origin = 'other-server'")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query("UPDATE tenants SET revision = revision + 1 WHERE name = 'default'")
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        let last = feed::read_after(&pool, 4).await.unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(
            (
                last[0].kind.as_str(),
                last[0].subject.as_str(),
                last[0].origin.as_str()
            ),
            ("tenant", "default", "other-server")
        );

        // Concurrent writers on two pools; a reader following the cursor sees every
        // number once, in order, with no gap.
        const N: usize = 40;
        let reader_pool = pool.clone();
        let reader = tokio::spawn(async move {
            let mut cursor = 5;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while cursor < 5 + N as i64 && tokio::time::Instant::now() < deadline {
                for c in feed::read_after(&reader_pool, cursor).await.unwrap() {
                    assert_eq!(c.seq, cursor + 1, "gap or reordering in the feed");
                    cursor = c.seq;
                }
            }
            cursor
        });
        let writers: Vec<_> = (0..N)
            .map(|i| {
                let ds = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    ds.create_entry(&feed_entry(100 + i, node_a), &[])
                        .await
                        .unwrap();
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(reader.await.unwrap(), 5 + N as i64);

        // Pruning keeps the newest row, so numbering goes on.
        let far_future = i64::MAX;
        assert_eq!(
            feed::prune(&pool, far_future).await.unwrap(),
            Some(4 + N as u64)
        );
        assert_eq!(feed::head(&pool).await.unwrap(), 5 + N as i64);
        a.create_entry(&feed_entry(999, node_a), &[]).await.unwrap();
        assert_eq!(feed::head(&pool).await.unwrap(), 6 + N as i64);
        a.close().await;
        b.close().await;
    }

    /// What changed for an agent between two cursors: its entries created, changed,
    /// moved away or deleted, not other agents'; an eviction; `None` past the head or
    /// after pruning.
    #[tokio::test(flavor = "multi_thread")]
    async fn touched_since_names_what_changed_for_one_agent() {
        use crate::datastore::Datastore as _;
        use crate::feed;

        let db = crate::datastore::testdb::Postgres::new().await;
        let ds = PostgresDatastore::open(&db.url).await.unwrap();
        let pool = ds.feed_pool();
        let node_a = "spiffe://example.org/node/a";
        let node_b = "spiffe://example.org/node/b";
        let agent = common::SpiffeId::new(node_a).unwrap();
        let cursor = feed::Cursor::new(pool.clone(), 0);

        // Before the cursor: seen already.
        ds.create_entry(&feed_entry(1, node_a), &[]).await.unwrap();
        ds.create_entry(&feed_entry(2, node_a), &[]).await.unwrap();
        ds.create_entry(&feed_entry(3, node_a), &[]).await.unwrap();
        let from = feed::head(&pool).await.unwrap();
        // After: one created, one moved away, one deleted, one of another agent's.
        ds.create_entry(&feed_entry(4, node_a), &[]).await.unwrap();
        let mut moved = feed_entry(2, node_b);
        moved.revision = 2;
        ds.update_entry(&moved, &[]).await.unwrap();
        ds.delete_entry(&feed_entry(3, node_a).id, Box::new(|_| Vec::new()))
            .await
            .unwrap();
        ds.create_entry(&feed_entry(5, node_b), &[]).await.unwrap();
        let upto = feed::head(&pool).await.unwrap();

        let touched = cursor
            .touched_since(&agent, &[&agent], None, from, upto)
            .await
            .unwrap()
            .expect("resumable");
        assert_eq!(
            touched.entries,
            ["feed-2", "feed-3", "feed-4"].map(String::from).into()
        );
        assert!(!touched.agent_removed);
        // Nothing after the head.
        let none = cursor
            .touched_since(&agent, &[&agent], None, upto, upto)
            .await
            .unwrap();
        assert_eq!(none, Some(feed::Touched::default()));
        // Only up to `upto`: a later change waits for the stream.
        ds.create_entry(&feed_entry(6, node_a), &[]).await.unwrap();
        let touched = cursor
            .touched_since(&agent, &[&agent], None, from, upto)
            .await
            .unwrap()
            .unwrap();
        assert!(!touched.entries.contains("feed-6"));
        // A cursor beyond the head (another database, a restored one) cannot resume.
        assert_eq!(
            cursor
                .touched_since(&agent, &[&agent], None, upto + 100, upto)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            cursor
                .touched_since(&agent, &[&agent], None, -1, upto)
                .await
                .unwrap(),
            None
        );
        // Rows after the cursor pruned: cannot resume; from the newest row on, can.
        assert!(feed::prune(&pool, i64::MAX).await.unwrap().is_some());
        let head = feed::head(&pool).await.unwrap();
        assert_eq!(
            cursor
                .touched_since(&agent, &[&agent], None, from, head)
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            cursor
                .touched_since(&agent, &[&agent], None, head - 1, head)
                .await
                .unwrap(),
            Some(feed::Touched {
                entries: ["feed-6".to_owned()].into(),
                agent_removed: false,
                groups_changed: false,
            })
        );
        // A node group's entries are the agent's too; a node entry (parented to the
        // server) changing tells an agent that may be in groups that they may have.
        let group = common::SpiffeId::new("spiffe://example.org/group/web").unwrap();
        let server = common::SpiffeId::new("spiffe://example.org/tessera/server").unwrap();
        let before = feed::head(&pool).await.unwrap();
        ds.create_entry(&feed_entry(7, group.as_str()), &[])
            .await
            .unwrap();
        ds.create_entry(&feed_entry(8, server.as_str()), &[])
            .await
            .unwrap();
        let now = feed::head(&pool).await.unwrap();
        let touched = cursor
            .touched_since(&agent, &[&agent, &group], Some(&server), before, now)
            .await
            .unwrap()
            .unwrap();
        assert!(touched.groups_changed);
        assert!(touched.entries.contains("feed-7"));
        let alone = cursor
            .touched_since(&agent, &[&agent], None, before, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(alone, feed::Touched::default());
        // The cursor encoding round-trips and refuses anything else.
        assert_eq!(feed::decode(&feed::encode(42)), Some(42));
        for bad in ["", "42", "feed/", "feed/-1", "feed/x", "other/1"] {
            assert_eq!(feed::decode(bad), None, "{bad:?}");
        }
        ds.close().await;
    }
}
