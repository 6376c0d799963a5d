//! Tenants: organisations inside the trust domain, and who may act for them.
//!
//! A tenant owns SPIFFE ID path prefixes (whole segments: `/acme` owns `/acme` and
//! `/acme/web`, never `/acme-evil`), claims DNS domains it proves control of, names its
//! admins (Unix users and groups on the admin socket) and may carry quotas and Cedar
//! policies of its own, which narrow the global ones for its entries. Every entry and
//! task belongs to exactly one tenant, the one owning its SPIFFE ID's path: no two tenants'
//! prefixes overlap, except the root prefix `/`, which only `default` may hold and which
//! owns what no other tenant does (the longest covering prefix decides). An upgrade puts
//! everything that existed into `default`, so nothing changes for an installation that
//! never creates a tenant.
//!
//! Who may act: platform operators (root, the server's user, the admin group) act for every
//! tenant; anyone else on the admin socket acts only for the tenants that list them (or a
//! group they are in) as admins, and sees nothing else: another tenant's objects answer
//! exactly like missing ones. [`Operator`] carries that decision into every handler.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::SpiffeId;
use common::entry::Governance;
use sha2::{Digest, Sha256};

use crate::audit::{AuditEvent, AuditKind};
use crate::clock::now_unix;
use crate::datastore::{AuditFor, Datastore, DatastoreError, EntryFilter, TenantRecord, UnixUser};
use crate::policy::PolicyEngine;

/// Longest tenant name (a DNS label).
const MAX_NAME: usize = 63;
/// Most path prefixes, admin users or admin groups on one tenant.
const MAX_LIST: usize = 64;
/// Longest path prefix.
const MAX_PREFIX: usize = 512;
/// The longest review period (ten years).
pub const MAX_REVIEW_EVERY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// Why a tenant request was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TenantError {
    /// The name is not a DNS label.
    #[error(
        "invalid tenant name {0:?}: use 1 to 63 lowercase letters, digits and hyphens, \
         not starting or ending with a hyphen"
    )]
    BadName(String),
    /// A path prefix is malformed.
    #[error("invalid path prefix {prefix:?}: {why}")]
    BadPrefix {
        /// As given.
        prefix: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A list setting is too long.
    #[error("too many {0} (at most {MAX_LIST})")]
    TooMany(&'static str),
    /// A quota or period is out of range.
    #[error("invalid {0}: {1}")]
    BadSetting(&'static str, String),
    /// Two tenants would own overlapping prefixes.
    #[error("path prefix {prefix} overlaps {other} of tenant {tenant}")]
    Overlap {
        /// The prefix asked for.
        prefix: String,
        /// The other tenant's prefix.
        other: String,
        /// The other tenant.
        tenant: String,
    },
    /// Only `default` may own `/`.
    #[error("only the default tenant may own the root prefix /")]
    RootPrefix,
    /// Entries would change tenant (or leave their tenant's prefixes).
    #[error("{0}")]
    WouldMoveEntries(String),
    /// No such tenant, or not one the caller may see (the same answer).
    #[error("tenant {0} not found")]
    NotFound(String),
    /// The name is taken.
    #[error("tenant {0} already exists")]
    Exists(String),
    /// It still owns something.
    #[error("{0}")]
    StillOwns(String),
    /// Changed concurrently; the caller may retry.
    #[error("tenant {0} was changed concurrently; try again")]
    Changed(String),
    /// Only platform operators may do this.
    #[error("{0} is restricted to platform operators")]
    PlatformOnly(&'static str),
    /// The caller administers several tenants and did not say which.
    #[error("name the tenant with --tenant (you administer {0})")]
    Ambiguous(String),
    /// A tenant policy text does not load.
    #[error("invalid tenant policies: {0}")]
    BadPolicy(String),
    /// The datastore failed.
    #[error("{0}")]
    Datastore(DatastoreError),
}

impl From<DatastoreError> for TenantError {
    fn from(e: DatastoreError) -> Self {
        Self::Datastore(e)
    }
}

/// Checks a tenant name: a DNS label (it appears in paths, audit records and messages).
pub fn validate_name(name: &str) -> Result<(), TenantError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TenantError::BadName(name.to_owned()))
    }
}

/// Checks a path prefix and returns it as stored: `/` or `/seg[/seg...]`, each segment
/// made of the characters a SPIFFE ID path allows, neither `.` nor `..`, no trailing `/`.
pub fn validate_prefix(prefix: &str) -> Result<String, TenantError> {
    let bad = |why| TenantError::BadPrefix {
        prefix: prefix.to_owned(),
        why,
    };
    if prefix == "/" {
        return Ok(prefix.to_owned());
    }
    if prefix.len() > MAX_PREFIX {
        return Err(bad("too long"));
    }
    let Some(rest) = prefix.strip_prefix('/') else {
        return Err(bad("must start with /"));
    };
    if rest.ends_with('/') {
        return Err(bad("must not end with /"));
    }
    for seg in rest.split('/') {
        if seg.is_empty() {
            return Err(bad("has an empty segment"));
        }
        if seg == "." || seg == ".." {
            return Err(bad("has a . or .. segment"));
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(bad(
                "segments may hold only letters, digits, '.', '-' and '_'",
            ));
        }
    }
    Ok(prefix.to_owned())
}

/// Whether `prefix` owns `path`: on whole segments (`/acme` owns `/acme` and `/acme/x`,
/// not `/acme-evil`); `/` owns every path.
pub fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The tenant that owns `path`: the one with the longest covering prefix.
pub fn owner_of<'a>(tenants: &'a [TenantRecord], path: &str) -> Option<&'a TenantRecord> {
    tenants
        .iter()
        .flat_map(|t| t.path_prefixes.iter().map(move |p| (p, t)))
        .filter(|(p, _)| covers(p, path))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, t)| t)
}

/// The prefixes of `t`, for messages: `/a, /b`.
pub fn prefixes_text(t: &TenantRecord) -> String {
    t.path_prefixes.join(", ")
}

/// Checks `t`'s prefixes against every other tenant's: none overlaps, and only `default`
/// owns `/`.
pub fn check_prefixes(t: &TenantRecord, others: &[TenantRecord]) -> Result<(), TenantError> {
    for p in &t.path_prefixes {
        if p == "/" && t.name != Governance::DEFAULT_TENANT {
            return Err(TenantError::RootPrefix);
        }
        for o in others.iter().filter(|o| o.name != t.name) {
            for q in &o.path_prefixes {
                // The root prefix owns only what nobody else does: it overlaps nothing.
                if p != "/" && q != "/" && (covers(p, q) || covers(q, p)) {
                    return Err(TenantError::Overlap {
                        prefix: p.clone(),
                        other: q.clone(),
                        tenant: o.name.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// What an operator may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant, and the platform itself (agents, tokens, CAs, tenants).
    Platform,
    /// Only these tenants' objects.
    Tenants(BTreeSet<String>),
}

/// Who is calling the admin API, and for which tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Their Unix user (peer credentials).
    pub user: UnixUser,
    /// What they may act on.
    pub scope: Scope,
}

impl Operator {
    /// A platform operator.
    pub fn platform(user: UnixUser) -> Self {
        Self {
            user,
            scope: Scope::Platform,
        }
    }

    /// How audit records and owners name them: `user:NAME`.
    pub fn principal(&self) -> String {
        format!("user:{}", self.user.name)
    }

    /// Whether they act for the platform (every tenant).
    pub fn is_platform(&self) -> bool {
        self.scope == Scope::Platform
    }

    /// Whether they may see and change `tenant`'s objects.
    pub fn sees(&self, tenant: &str) -> bool {
        match &self.scope {
            Scope::Platform => true,
            Scope::Tenants(t) => t.contains(tenant),
        }
    }

    /// Refuses unless they act for the platform.
    pub fn require_platform(&self, what: &'static str) -> Result<(), TenantError> {
        if self.is_platform() {
            Ok(())
        } else {
            Err(TenantError::PlatformOnly(what))
        }
    }

    /// The tenant a request names, or the default one: the only tenant they administer,
    /// or (platform operators) the tenant owning `path`. `NotFound` for a tenant they may
    /// not see, exactly as for one that does not exist.
    pub fn tenant_for<'a>(
        &self,
        named: &str,
        path: &str,
        tenants: &'a [TenantRecord],
    ) -> Result<&'a TenantRecord, TenantError> {
        let name = if !named.is_empty() {
            named.to_owned()
        } else {
            match &self.scope {
                Scope::Platform => match owner_of(tenants, path) {
                    Some(t) => t.name.clone(),
                    None => Governance::DEFAULT_TENANT.to_owned(),
                },
                Scope::Tenants(set) if set.len() == 1 => {
                    set.iter().next().cloned().unwrap_or_default()
                }
                Scope::Tenants(set) => {
                    return Err(TenantError::Ambiguous(
                        set.iter().cloned().collect::<Vec<_>>().join(", "),
                    ));
                }
            }
        };
        tenants
            .iter()
            .find(|t| t.name == name && self.sees(&t.name))
            .ok_or(TenantError::NotFound(name))
    }
}

/// Whether the Unix user `user` (primary group `gid`) is a member of group `group`.
pub fn in_group(user: &UnixUser, gid: u32, group: &str) -> bool {
    let found = match group.parse::<u32>() {
        Ok(g) => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(g)),
        Err(_) => nix::unistd::Group::from_name(group),
    };
    match found {
        Ok(Some(g)) => g.gid.as_raw() == gid || g.mem.contains(&user.name),
        // An unknown group has no members; a numeric one may still be the primary group.
        _ => group.parse::<u32>().is_ok_and(|g| g == gid),
    }
}

/// The tenants `user` (primary group `gid`) administers.
pub fn administered(user: &UnixUser, gid: u32, tenants: &[TenantRecord]) -> BTreeSet<String> {
    let uid = user.uid.to_string();
    tenants
        .iter()
        .filter(|t| {
            t.admin_users.iter().any(|u| *u == user.name || *u == uid)
                || t.admin_groups.iter().any(|g| in_group(user, gid, g))
        })
        .map(|t| t.name.clone())
        .collect()
}

/// What an operator asks a tenant to be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantRequest {
    /// Its name.
    pub name: String,
    /// Owned prefixes; empty on create: `/<name>`.
    pub path_prefixes: Vec<String>,
    /// Admin user names.
    pub admin_users: Vec<String>,
    /// Admin group names.
    pub admin_groups: Vec<String>,
    /// Quotas (`None`: no limit).
    pub max_entries: Option<i64>,
    /// Open tasks at once.
    pub max_open_tasks: Option<i64>,
    /// Open tasks at once on one entry.
    pub max_parallel_tasks_per_entry: Option<i64>,
    /// Default review period of its entries.
    pub review_every: Option<Duration>,
}

fn checked_list(what: &'static str, list: &[String]) -> Result<Vec<String>, TenantError> {
    if list.len() > MAX_LIST {
        return Err(TenantError::TooMany(what));
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for v in list {
        if v.is_empty() || v.len() > 64 || v.chars().any(|c| c.is_control() || c == ':') {
            return Err(TenantError::BadSetting(
                what,
                format!("{v:?} is not a Unix name"),
            ));
        }
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    Ok(out)
}

fn quota(what: &'static str, v: Option<i64>) -> Result<Option<i64>, TenantError> {
    match v {
        Some(n) if n < 1 => Err(TenantError::BadSetting(what, "must be at least 1".into())),
        _ => Ok(v),
    }
}

/// Tenant CRUD, with the checks that keep every identity in exactly one tenant.
#[derive(Debug, Clone)]
pub struct TenantDirectory {
    ds: Arc<dyn Datastore>,
    /// Serialises changes of ownership in this server (tenant prefixes, entry creation and
    /// moves), so a check and the write it guards see the same tenants.
    pub(crate) lock: Arc<tokio::sync::Mutex<()>>,
}

impl TenantDirectory {
    /// A directory over `ds`.
    pub fn new(ds: Arc<dyn Datastore>) -> Self {
        Self {
            ds,
            lock: Arc::default(),
        }
    }

    /// Every tenant.
    pub async fn all(&self) -> Result<Vec<TenantRecord>, TenantError> {
        Ok(self.ds.list_tenants().await?)
    }

    /// The Unix user's scope: platform operators act for everything; anyone else for the
    /// tenants naming them (possibly none).
    pub async fn scope_of(
        &self,
        user: &UnixUser,
        gid: u32,
        platform: bool,
    ) -> Result<Scope, TenantError> {
        if platform {
            return Ok(Scope::Platform);
        }
        Ok(Scope::Tenants(administered(user, gid, &self.all().await?)))
    }

    fn record(
        req: &TenantRequest,
        created_at: i64,
        revision: u64,
    ) -> Result<TenantRecord, TenantError> {
        validate_name(&req.name)?;
        let raw = if req.path_prefixes.is_empty() {
            vec![format!("/{}", req.name)]
        } else {
            req.path_prefixes.clone()
        };
        if raw.len() > MAX_LIST {
            return Err(TenantError::TooMany("path prefixes"));
        }
        let mut path_prefixes: Vec<String> = Vec::new();
        for p in &raw {
            let p = validate_prefix(p)?;
            if !path_prefixes.contains(&p) {
                path_prefixes.push(p);
            }
        }
        // Prefixes of one tenant may nest; keep only the outermost (what it owns is the same).
        let outer: Vec<String> = path_prefixes
            .iter()
            .filter(|p| !path_prefixes.iter().any(|q| q != *p && covers(q, p)))
            .cloned()
            .collect();
        if let Some(every) = req.review_every
            && (every < Duration::from_secs(1) || every > MAX_REVIEW_EVERY)
        {
            return Err(TenantError::BadSetting(
                "review period",
                format!("must be between 1s and {}s", MAX_REVIEW_EVERY.as_secs()),
            ));
        }
        Ok(TenantRecord {
            name: req.name.clone(),
            path_prefixes: outer,
            admin_users: checked_list("admin users", &req.admin_users)?,
            admin_groups: checked_list("admin groups", &req.admin_groups)?,
            max_entries: quota("max entries", req.max_entries)?,
            max_open_tasks: quota("max open tasks", req.max_open_tasks)?,
            max_parallel_tasks_per_entry: quota(
                "max parallel tasks per entry",
                req.max_parallel_tasks_per_entry,
            )?,
            review_every: req.review_every,
            created_at,
            revision,
            policy: None,
        })
    }

    /// Refuses prefixes that would move existing entries between tenants: every entry
    /// must stay owned (longest prefix) by the tenant it is in.
    async fn check_entries_stay(&self, all: &[TenantRecord]) -> Result<(), TenantError> {
        let entries = self.ds.list_entries(&EntryFilter::default()).await?;
        let mut moved = entries.iter().filter_map(|e| {
            let owner = owner_of(all, e.spiffe_id.path()).map_or("", |t| t.name.as_str());
            (owner != e.governance.tenant).then_some((e, owner))
        });
        if let Some((e, owner)) = moved.next() {
            let more = moved.count();
            return Err(TenantError::WouldMoveEntries(format!(
                "entry {} ({}) of tenant {} would be owned by {}{}: move or delete it first",
                e.id,
                e.spiffe_id,
                e.governance.tenant,
                if owner.is_empty() { "no tenant" } else { owner },
                if more > 0 {
                    format!(" (and {more} more entries)")
                } else {
                    String::new()
                },
            )));
        }
        Ok(())
    }

    /// Creates a tenant (platform operators only).
    pub async fn create(
        &self,
        by: &Operator,
        req: &TenantRequest,
    ) -> Result<TenantRecord, TenantError> {
        by.require_platform("creating tenants")?;
        let t = Self::record(req, now_unix(), 1)?;
        let _guard = self.lock.lock().await;
        let mut all = self.all().await?;
        if all.iter().any(|o| o.name == t.name) {
            return Err(TenantError::Exists(t.name));
        }
        check_prefixes(&t, &all)?;
        all.push(t.clone());
        self.check_entries_stay(&all).await?;
        self.ds
            .create_tenant(&t, &[tenant_event(AuditKind::TenantCreated, by, &t)])
            .await
            .map_err(|e| match e {
                DatastoreError::Conflict(_) => TenantError::Exists(t.name.clone()),
                other => other.into(),
            })?;
        tracing::info!(tenant = %t.name, prefixes = %prefixes_text(&t), "tenant created");
        Ok(t)
    }

    /// Replaces a tenant's settings (platform operators only).
    pub async fn update(
        &self,
        by: &Operator,
        req: &TenantRequest,
    ) -> Result<TenantRecord, TenantError> {
        by.require_platform("changing tenants")?;
        let _guard = self.lock.lock().await;
        let mut all = self.all().await?;
        let old = all
            .iter()
            .find(|t| t.name == req.name)
            .cloned()
            .ok_or_else(|| TenantError::NotFound(req.name.clone()))?;
        let t = TenantRecord {
            policy: old.policy.clone(),
            ..Self::record(req, old.created_at, old.revision + 1)?
        };
        check_prefixes(&t, &all)?;
        for slot in &mut all {
            if slot.name == t.name {
                *slot = t.clone();
            }
        }
        self.check_entries_stay(&all).await?;
        let event = tenant_event(AuditKind::TenantUpdated, by, &t);
        if !self.ds.update_tenant(&t, &[event]).await? {
            return Err(TenantError::Changed(t.name));
        }
        tracing::info!(tenant = %t.name, "tenant updated");
        Ok(t)
    }

    /// Deletes a tenant that owns nothing (platform operators only; never `default`).
    pub async fn delete(&self, by: &Operator, name: &str) -> Result<TenantRecord, TenantError> {
        by.require_platform("deleting tenants")?;
        if name == Governance::DEFAULT_TENANT {
            return Err(TenantError::StillOwns(
                "the default tenant cannot be deleted".to_owned(),
            ));
        }
        let _guard = self.lock.lock().await;
        let by = by.clone();
        let audit: AuditFor<TenantRecord> =
            Box::new(move |t| vec![tenant_event(AuditKind::TenantDeleted, &by, t)]);
        let t = match self.ds.delete_tenant(name, audit).await {
            Ok(Some(t)) => t,
            Ok(None) => return Err(TenantError::NotFound(name.to_owned())),
            Err(DatastoreError::Conflict(m)) => return Err(TenantError::StillOwns(m)),
            Err(e) => return Err(e.into()),
        };
        tracing::info!(tenant = %t.name, "tenant deleted");
        Ok(t)
    }

    /// Sets (`Some`) or clears (`None`) a tenant's own Cedar policies. The tenant's admins
    /// may do it as well as platform operators: tenant policies only narrow what the
    /// global set allows (see `crate::policy::TenantPolicies`). Invalid text changes
    /// nothing.
    pub async fn set_policy(
        &self,
        by: &Operator,
        name: &str,
        text: Option<&str>,
    ) -> Result<TenantRecord, TenantError> {
        let old = self.get(by, name).await?;
        let ids = match text {
            Some(text) => PolicyEngine::check_tenant(name, text)
                .map_err(|e| TenantError::BadPolicy(e.to_string()))?,
            None => Vec::new(),
        };
        let t = TenantRecord {
            policy: text.map(str::to_owned),
            revision: old.revision + 1,
            ..old
        };
        let digest = t.policy.as_deref().map(|p| hex::encode(Sha256::digest(p)));
        let event = AuditEvent::new(
            AuditKind::TenantPolicySet,
            format!("tenant:{}", t.name),
            serde_json::json!({
                "policies": ids,
                "sha256": digest,
                "revision": t.revision,
            }),
        )
        .by(by.principal())
        .in_tenant(&t.name);
        if !self.ds.update_tenant(&t, &[event]).await? {
            return Err(TenantError::Changed(t.name));
        }
        tracing::info!(tenant = %t.name, policies = ids.len(), "tenant policies set");
        Ok(t)
    }

    /// One tenant the operator may see.
    pub async fn get(&self, by: &Operator, name: &str) -> Result<TenantRecord, TenantError> {
        match self.ds.get_tenant(name).await? {
            Some(t) if by.sees(&t.name) => Ok(t),
            _ => Err(TenantError::NotFound(name.to_owned())),
        }
    }

    /// The tenants the operator may see.
    pub async fn list(&self, by: &Operator) -> Result<Vec<TenantRecord>, TenantError> {
        Ok(self
            .all()
            .await?
            .into_iter()
            .filter(|t| by.sees(&t.name))
            .collect())
    }
}

/// The audit record of a tenant's creation, change or deletion.
fn tenant_event(kind: AuditKind, by: &Operator, t: &TenantRecord) -> AuditEvent {
    AuditEvent::new(
        kind,
        format!("tenant:{}", t.name),
        serde_json::json!({
            "path_prefixes": t.path_prefixes,
            "admin_users": t.admin_users,
            "admin_groups": t.admin_groups,
            "max_entries": t.max_entries,
            "max_open_tasks": t.max_open_tasks,
            "max_parallel_tasks_per_entry": t.max_parallel_tasks_per_entry,
            "review_every": t.review_every.map(|d| d.as_secs()),
            "revision": t.revision,
        }),
    )
    .by(by.principal())
    .in_tenant(&t.name)
}

/// Checks an owner principal: `user:NAME` or a SPIFFE ID.
pub fn validate_owner(owner: &str) -> Result<(), String> {
    if let Some(name) = owner.strip_prefix("user:") {
        if name.is_empty()
            || name.len() > 64
            || name.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!(
                "invalid owner {owner:?}: user:NAME needs a Unix user name"
            ));
        }
        return Ok(());
    }
    SpiffeId::new(owner)
        .map(|_| ())
        .map_err(|e| format!("invalid owner {owner:?}: use user:NAME or a SPIFFE ID ({e})"))
}

pub mod domains;

#[cfg(test)]
mod tests;
