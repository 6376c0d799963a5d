//! Cedar policy engine: decides, for every task start and every SVID issuance for a
//! `jit` entry, whether it is allowed, whether it needs approval, and the maximum TTL.
//!
//! Policies are Cedar (`*.cedar` files, or the built-in [`DEFAULT_POLICIES`]) validated in
//! strict mode against [`SCHEMA`]. `permit` policies may carry the annotations
//! `@max_ttl("900" | "15m" | "2h" | "1d")`, `@approval("required" | "none")`,
//! `@max_parallel("N")` (at most N tasks open at once on the entry) and
//! `@break_glass("allowed" | "denied")`; any policy may carry `@id("name")`, which names it
//! `file.cedar:name` in decisions and logs.
//!
//! Break-glass: a request marked break-glass (context `break_glass`) may skip approval only
//! when a global permit that allowed it carries `@break_glass("allowed")`. Tenant sets
//! cannot allow it (the annotation is refused there); they narrow it like anything else:
//! a tenant `forbid` (e.g. `when { context.break_glass }`) denies, and a tenant permit
//! that requires approval takes break-glass away.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use cedar_policy::ffi::DetailedError;
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema,
    ValidationMode, Validator,
};

/// Cedar schema (human-readable syntax) every policy is validated against.
pub const SCHEMA: &str = include_str!("policy/schema.cedarschema");

/// Built-in policy set, used when no policy directory is configured.
pub const DEFAULT_POLICIES: &str = include_str!("policy/builtin.cedar");

/// File name under which the built-in policies are reported.
const BUILTIN_FILE: &str = "builtin.cedar";

/// What is being decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Starting a task (Cedar `Tessera::Action::"begin_task"`).
    BeginTask,
    /// Issuing an SVID for a `jit` entry (Cedar `Tessera::Action::"issue_svid"`).
    IssueSvid,
}

impl Action {
    /// The Cedar action id.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeginTask => "begin_task",
            Self::IssueSvid => "issue_svid",
        }
    }
}

/// Who asks. Operators are identified by their Unix user name on the admin socket;
/// workloads by their standing SPIFFE ID (attested by the agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An operator (Cedar `Tessera::User::"alice"`).
    User(String),
    /// A workload by SPIFFE ID (Cedar `Tessera::Workload::"spiffe://td/path"`).
    Workload(String),
}

impl Principal {
    /// Cedar entity type, entity id, and `context.origin`.
    fn parts(&self) -> (&'static str, &str, &'static str) {
        match self {
            Self::User(name) => ("User", name, "operator"),
            Self::Workload(id) => ("Workload", id, "workload"),
        }
    }
}

/// The entry the task activates (or provisions).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryFacts {
    /// Registration entry id (Cedar `Tessera::Entry::"<id>"`).
    pub id: String,
    /// The entry's SPIFFE ID.
    pub spiffe_id: String,
    /// Whether the entry is just-in-time (only issued inside a task).
    pub jit: bool,
    /// The entry's selectors, as `type:value` strings.
    pub selectors: Vec<String>,
    /// The tenant the entry belongs to.
    pub tenant: String,
}

/// One question for the policy engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRequest {
    /// What is being decided.
    pub action: Action,
    /// Who asks.
    pub principal: Principal,
    /// The entry concerned.
    pub entry: EntryFacts,
    /// Scopes the task asks for.
    pub scopes: Vec<String>,
    /// The audience a JWT-SVID is asked for (`issue_svid` of a JWT-SVID, one decision per
    /// audience); empty when beginning a task and when issuing an X.509-SVID.
    pub audience: String,
    /// The JWT audiences the task declared.
    pub declared_audiences: Vec<String>,
    /// Requested TTL in seconds.
    pub ttl_seconds: i64,
    /// Ticket reference (may be empty).
    pub ticket: String,
    /// Free-text reason (may be empty).
    pub reason: String,
    /// The approver, if one is named.
    pub approver: Option<String>,
    /// The uid of the Unix user that requested the task, when recorded.
    pub requester_uid: Option<u32>,
    /// The uid of the approver, if one is named.
    pub approver_uid: Option<u32>,
    /// Current time, Unix seconds.
    pub now_unix: i64,
    /// The task creates a temporary entry rather than activating an existing one.
    pub provisioned: bool,
    /// The task is (asked as) break-glass.
    pub break_glass: bool,
}

/// The outcome of [`PolicyEngine::evaluate`]. Stored with the task it admitted (as JSON:
/// these fields; an `explanation` key written by earlier releases is ignored on read).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// Cedar said Allow.
    pub allowed: bool,
    /// Some determining permit policy carries `@approval("required")`.
    pub approval_required: bool,
    /// Smallest `@max_ttl` among the permit policies that decided it (None: no cap).
    pub max_ttl_seconds: Option<i64>,
    /// Smallest `@max_parallel` among the permit policies that decided it: at most this
    /// many tasks open at once on the entry (None: no cap from policy). (Absent from
    /// decisions stored before it: None.)
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// Some determining global permit carries `@break_glass("allowed")` and no tenant
    /// permit requires approval: a break-glass request may skip approval. (Absent from
    /// decisions stored before break-glass: false.)
    #[serde(default)]
    pub break_glass_allowed: bool,
    /// Ids of the policies that determined the decision, "file.cedar:policy-id".
    pub policies: Vec<String>,
    /// Evaluation errors (a policy that errored is skipped, as Cedar does), as text.
    pub errors: Vec<String>,
    /// The action, e.g. `begin_task`.
    pub action: String,
    /// The principal, e.g. `User::"alice"`.
    pub principal: String,
    /// The entry, e.g. `Entry::"e1" (spiffe://td/db)`.
    pub entry: String,
}

impl Decision {
    /// One human-readable paragraph explaining the decision.
    pub fn explain(&self) -> String {
        let list = |v: &[String]| format!("[{}]", v.join(", "));
        let mut out = if self.allowed {
            let approval = if self.approval_required {
                "approval required"
            } else {
                "no approval required"
            };
            let ttl = self
                .max_ttl_seconds
                .map_or_else(|| "no TTL cap".to_owned(), |s| format!("max TTL {s} s"));
            let parallel = self
                .max_parallel
                .map_or_else(String::new, |n| format!("; at most {n} parallel"));
            let break_glass = if self.break_glass_allowed {
                "; break-glass allowed"
            } else {
                ""
            };
            format!(
                "allowed by policies {} ({approval}; {ttl}{parallel}{break_glass})",
                list(&self.policies)
            )
        } else if self.policies.is_empty() {
            format!(
                "denied: no policy permits {} for {} on {}",
                self.action, self.principal, self.entry
            )
        } else {
            format!("denied by policies {}", list(&self.policies))
        };
        if !self.errors.is_empty() {
            let _ = write!(
                out,
                "; {} evaluation error(s), those policies were skipped: {}",
                self.errors.len(),
                self.errors.join("; ")
            );
        }
        out
    }

    /// The decision as JSON (fields plus `explanation`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "allowed": self.allowed,
            "approval_required": self.approval_required,
            "max_ttl_seconds": self.max_ttl_seconds,
            "max_parallel": self.max_parallel,
            "break_glass_allowed": self.break_glass_allowed,
            "policies": self.policies,
            "errors": self.errors,
            "action": self.action,
            "principal": self.principal,
            "entry": self.entry,
            "explanation": self.explain(),
        })
    }
}

/// Why a policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The directory holds no policy.
    #[error("no policies in {0}: everything would be denied")]
    Empty(PathBuf),
    /// A file is not valid Cedar.
    #[error("{at}: syntax error: {message}")]
    Parse {
        /// `file.cedar:line:col` (just the file name where Cedar gives no position).
        at: String,
        /// What is wrong.
        message: String,
    },
    /// A policy does not validate against the schema (strict mode).
    #[error("{at}: policy `{policy}` does not match the schema: {message}")]
    Invalid {
        /// `file.cedar:line:col` (just the file name where Cedar gives no position).
        at: String,
        /// Policy name.
        policy: String,
        /// What is wrong.
        message: String,
    },
    /// A policy is well-formed Cedar but unusable here (bad annotation, template, bad name).
    #[error("{file}: policy `{policy}`: {message}")]
    Policy {
        /// File name.
        file: String,
        /// Policy name.
        policy: String,
        /// What is wrong.
        message: String,
    },
    /// Two policies share an `@id` name.
    #[error("duplicate policy name `{name}` (in {first} and {second})")]
    Duplicate {
        /// The name.
        name: String,
        /// File of the first use.
        first: String,
        /// File of the second use.
        second: String,
    },
    /// A tenant's policy text is unusable as a whole.
    #[error("{0}")]
    Tenant(String),
    /// The built-in schema does not parse (a bug).
    #[error("built-in policy schema is invalid: {0}")]
    Schema(String),
}

/// Per-policy facts taken from annotations.
#[derive(Debug, Clone, Copy, Default)]
struct PolicyMeta {
    max_ttl: Option<i64>,
    max_parallel: Option<u32>,
    approval: bool,
    break_glass: bool,
}

/// A validated policy set ready for evaluation.
#[derive(Debug, Default)]
struct Loaded {
    set: PolicySet,
    meta: HashMap<PolicyId, PolicyMeta>,
    count: usize,
}

/// Largest tenant policy text accepted.
pub const MAX_TENANT_POLICY_BYTES: usize = 64 * 1024;

/// A tenant's own policies, as stored with the tenant. They apply on top of the global set
/// to every decision about the tenant's entries, and can only narrow it: a tenant `forbid`
/// denies; a tenant `permit` that matches adds its `@approval("required")` and lowers the
/// TTL cap with its `@max_ttl`, but never allows what the global set denies. A request no
/// tenant policy matches keeps the global decision. So a tenant admin may write them
/// without being able to widen anything.
#[derive(Debug, Clone, Copy)]
pub struct TenantPolicies<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The Cedar text (empty: none).
    pub text: &'a str,
}

/// A tenant's set as parsed, kept while its text is unchanged.
#[derive(Debug)]
struct TenantSet {
    text: String,
    loaded: Result<Arc<Loaded>, String>,
}

/// The policy engine: the policy set in force and where it came from. `Send + Sync`;
/// [`evaluate`](Self::evaluate) does no I/O.
#[derive(Debug)]
pub struct PolicyEngine {
    /// The policy directory; `None` for the built-in set.
    dir: Option<PathBuf>,
    current: RwLock<Arc<Loaded>>,
    /// Tenants' sets, parsed once per text (callers pass the text they read).
    tenants: RwLock<HashMap<String, Arc<TenantSet>>>,
}

fn schema() -> Result<&'static Schema, PolicyError> {
    static SCHEMA_CELL: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA_CELL
        .get_or_init(|| {
            Schema::from_cedarschema_str(SCHEMA)
                .map(|(s, _warnings)| s)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PolicyError::Schema(e.clone()))
}

impl PolicyEngine {
    /// The built-in default set (used when no policy directory is configured).
    ///
    /// Should the built-in set ever fail to load (a bug caught by the tests), the engine
    /// logs it and holds an empty set, which denies everything.
    pub fn builtin() -> Self {
        let loaded = load_builtin().unwrap_or_else(|e| {
            tracing::error!(error = %e, "built-in policies failed to load; denying everything");
            Loaded::default()
        });
        Self {
            dir: None,
            current: RwLock::new(Arc::new(loaded)),
            tenants: RwLock::default(),
        }
    }

    /// Loads every `*.cedar` file in `dir` (sorted by name), parses, and validates against
    /// [`SCHEMA`] (strict mode). Any error names the file and the problem (and line:col where
    /// Cedar gives it). An empty directory is an error.
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        let loaded = load_from_dir(dir)?;
        Ok(Self {
            dir: Some(dir.to_path_buf()),
            current: RwLock::new(Arc::new(loaded)),
            tenants: RwLock::default(),
        })
    }

    /// Re-reads the directory. On error the last good set stays in force and the error is
    /// returned. Returns the number of policies now in force.
    pub fn reload(&self) -> Result<usize, PolicyError> {
        match self.dir.as_deref().map_or_else(load_builtin, load_from_dir) {
            Ok(l) => {
                let count = l.count;
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(l);
                tracing::info!(source = %self.source_name(), count, "policies reloaded");
                Ok(count)
            }
            Err(e) => {
                tracing::warn!(source = %self.source_name(), error = %e,
                    "policy reload failed; keeping the previous set");
                Err(e)
            }
        }
    }

    /// Validates a directory without installing it (for `tessera-server policy check DIR`).
    /// Returns the number of policies.
    pub fn check_dir(dir: &Path) -> Result<usize, PolicyError> {
        load_from_dir(dir).map(|l| l.count)
    }

    /// Decides `req` against the set in force. Never fails: a request Cedar cannot even
    /// build is denied, with the reason in `errors`.
    pub fn evaluate(&self, req: &PolicyRequest) -> Decision {
        self.evaluate_for(req, None)
    }

    /// Decides `req` against the global set, then, when it allows, against the tenant's own
    /// policies (see [`TenantPolicies`] for how they narrow it). Tenant policies that no
    /// longer load (stored by an earlier release, say) deny, with the reason in `errors`.
    pub fn evaluate_for(
        &self,
        req: &PolicyRequest,
        tenant: Option<TenantPolicies<'_>>,
    ) -> Decision {
        let loaded = self.current();
        let (ptype, pid, _) = req.principal.parts();
        let mut decision = Decision {
            allowed: false,
            approval_required: false,
            max_ttl_seconds: None,
            max_parallel: None,
            break_glass_allowed: false,
            policies: Vec::new(),
            errors: Vec::new(),
            action: req.action.as_str().to_owned(),
            principal: format!("{ptype}::{pid:?}"),
            entry: format!("Entry::{:?} ({})", req.entry.id, req.entry.spiffe_id),
        };
        let (request, entities) = match build_request(req) {
            Ok(built) => built,
            Err(e) => {
                decision.errors.push(format!("cannot build request: {e}"));
                return decision;
            }
        };
        let global = decide(&loaded, &request, &entities);
        decision.allowed = global.allowed;
        decision.errors.extend(global.errors);
        if decision.allowed {
            decision.narrow(&loaded, &global.policies);
            decision.break_glass_allowed = global
                .policies
                .iter()
                .filter_map(|id| loaded.meta.get(id))
                .any(|m| m.break_glass);
        }
        decision
            .policies
            .extend(global.policies.iter().map(ToString::to_string));
        let Some(tp) = tenant.filter(|t| decision.allowed && !t.text.trim().is_empty()) else {
            return decision;
        };
        let tenant_set = match self.tenant_set(tp) {
            Ok(set) => set,
            Err(e) => {
                decision.deny(Vec::new());
                decision.errors.push(format!(
                    "the policies of tenant {} do not load, so nothing is allowed: {e}",
                    tp.tenant
                ));
                return decision;
            }
        };
        let own = decide(&tenant_set, &request, &entities);
        decision.errors.extend(own.errors);
        let ids: Vec<String> = own.policies.iter().map(ToString::to_string).collect();
        if own.allowed {
            decision.narrow(&tenant_set, &own.policies);
            // A tenant that wants an approver gets one: break-glass never skips it.
            if own
                .policies
                .iter()
                .filter_map(|id| tenant_set.meta.get(id))
                .any(|m| m.approval)
            {
                decision.break_glass_allowed = false;
            }
            decision.policies.extend(ids);
        } else if !ids.is_empty() {
            // Cedar denies with reasons only when a forbid matched.
            decision.deny(ids);
        }
        decision
    }

    /// Validates a tenant's policy text (strict mode, as for the global set) without
    /// installing anything. Returns the policy names, `tenant/<name>:<id>`.
    pub fn check_tenant(tenant: &str, text: &str) -> Result<Vec<String>, PolicyError> {
        let file = tenant_file(tenant);
        if text.len() > MAX_TENANT_POLICY_BYTES {
            return Err(PolicyError::Tenant(format!(
                "{file}: {} bytes is more than the {MAX_TENANT_POLICY_BYTES} allowed",
                text.len()
            )));
        }
        let loaded = load_sources(&[(file.clone(), text.to_owned())], Path::new(&file)).map_err(
            |e| match e {
                PolicyError::Empty(_) => PolicyError::Tenant(format!(
                    "{file}: holds no policy (to remove a tenant's policies, clear them)"
                )),
                other => other,
            },
        )?;
        if let Some(id) = loaded
            .meta
            .iter()
            .find_map(|(id, m)| m.break_glass.then_some(id))
        {
            let policy = id.to_string();
            return Err(PolicyError::Policy {
                policy: policy
                    .strip_prefix(&format!("{file}:"))
                    .unwrap_or(&policy)
                    .to_owned(),
                file,
                message: "@break_glass(\"allowed\") is for the global policy set only: a \
                          tenant's policies can narrow break-glass (forbid it), never allow it"
                    .to_owned(),
            });
        }
        let mut ids: Vec<String> = loaded.set.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        Ok(ids)
    }

    /// The tenant's parsed set, parsing `tp.text` unless it is the text parsed last time.
    fn tenant_set(&self, tp: TenantPolicies<'_>) -> Result<Arc<Loaded>, String> {
        let cached = self
            .tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tp.tenant)
            .filter(|c| c.text == tp.text)
            .cloned();
        let entry = cached.unwrap_or_else(|| {
            let file = tenant_file(tp.tenant);
            let loaded = load_sources(&[(file.clone(), tp.text.to_owned())], Path::new(&file))
                .map(Arc::new)
                .map_err(|e| e.to_string());
            let entry = Arc::new(TenantSet {
                text: tp.text.to_owned(),
                loaded,
            });
            self.tenants
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(tp.tenant.to_owned(), Arc::clone(&entry));
            entry
        });
        entry.loaded.clone()
    }

    /// "builtin" or the directory path, plus policy count — for logs and `policy show`.
    pub fn describe(&self) -> String {
        format!("{} ({} policies)", self.source_name(), self.current().count)
    }

    fn source_name(&self) -> String {
        self.dir
            .as_ref()
            .map_or_else(|| "builtin".to_owned(), |d| d.display().to_string())
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The name a tenant's policies are reported under: `tenant/<name>`.
fn tenant_file(tenant: &str) -> String {
    format!("tenant/{tenant}")
}

/// What one policy set said about one request.
struct SetAnswer {
    allowed: bool,
    /// The determining policies (permits when allowed, forbids when denied), sorted.
    policies: Vec<PolicyId>,
    errors: Vec<String>,
}

fn decide(loaded: &Loaded, request: &Request, entities: &Entities) -> SetAnswer {
    let response = Authorizer::new().is_authorized(request, &loaded.set, entities);
    let diag = response.diagnostics();
    let mut policies: Vec<PolicyId> = diag.reason().cloned().collect();
    policies.sort_by_key(ToString::to_string);
    SetAnswer {
        allowed: response.decision() == CedarDecision::Allow,
        policies,
        errors: diag.errors().map(ToString::to_string).collect(),
    }
}

impl Decision {
    /// Applies the annotations of the permits that allowed it: approval if any asks for
    /// it, the smallest TTL cap, the smallest parallel cap.
    fn narrow(&mut self, loaded: &Loaded, permits: &[PolicyId]) {
        for meta in permits.iter().filter_map(|id| loaded.meta.get(id)) {
            self.approval_required |= meta.approval;
            if let Some(ttl) = meta.max_ttl {
                self.max_ttl_seconds = Some(self.max_ttl_seconds.map_or(ttl, |m| m.min(ttl)));
            }
            if let Some(n) = meta.max_parallel {
                self.max_parallel = Some(self.max_parallel.map_or(n, |m| m.min(n)));
            }
        }
    }

    /// Turns it into a denial by `forbids` (empty: by no policy).
    pub(crate) fn deny(&mut self, forbids: Vec<String>) {
        self.allowed = false;
        self.approval_required = false;
        self.max_ttl_seconds = None;
        self.max_parallel = None;
        self.break_glass_allowed = false;
        self.policies = forbids;
    }
}

fn uid(ty: &str, id: &str) -> Result<EntityUid, String> {
    let name = EntityTypeName::from_str(&format!("Tessera::{ty}")).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(name, EntityId::new(id)))
}

/// Splits `spiffe://td/path...` into (`td`, `/path...`); anything else gives empty strings.
fn split_spiffe(id: &str) -> (String, String) {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return (String::new(), String::new());
    };
    match rest.find('/') {
        Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
        None => (rest.to_owned(), String::new()),
    }
}

fn str_expr(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_owned())
}

fn set_expr(v: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(v.iter().map(|s| str_expr(s)))
}

fn spiffe_attrs(spiffe_id: &str) -> HashMap<String, RestrictedExpression> {
    let (td, path) = split_spiffe(spiffe_id);
    HashMap::from([
        ("spiffe_id".to_owned(), str_expr(spiffe_id)),
        ("trust_domain".to_owned(), str_expr(&td)),
        ("path".to_owned(), str_expr(&path)),
    ])
}

fn build_request(req: &PolicyRequest) -> Result<(Request, Entities), String> {
    let schema = schema().map_err(|e| e.to_string())?;
    let (ptype, pid, origin) = req.principal.parts();
    let principal = uid(ptype, pid)?;
    let principal_entity = match &req.principal {
        Principal::User(_) => Entity::new_no_attrs(principal.clone(), HashSet::new()),
        Principal::Workload(id) => Entity::new(principal.clone(), spiffe_attrs(id), HashSet::new())
            .map_err(|e| e.to_string())?,
    };
    let resource = uid("Entry", &req.entry.id)?;
    let mut entry_attrs = spiffe_attrs(&req.entry.spiffe_id);
    let bool = RestrictedExpression::new_bool;
    entry_attrs.insert("jit".to_owned(), bool(req.entry.jit));
    entry_attrs.insert("selectors".to_owned(), set_expr(&req.entry.selectors));
    entry_attrs.insert("tenant".to_owned(), str_expr(&req.entry.tenant));
    let resource_entity =
        Entity::new(resource.clone(), entry_attrs, HashSet::new()).map_err(|e| e.to_string())?;
    let entities = Entities::from_entities([principal_entity, resource_entity], Some(schema))
        .map_err(|e| e.to_string())?;

    let day_secs = req.now_unix.rem_euclid(86_400);
    // 1970-01-01 was a Thursday (4, with 0 = Sunday).
    let weekday = (req.now_unix.div_euclid(86_400) + 4).rem_euclid(7);
    let long = RestrictedExpression::new_long;
    let context = Context::from_pairs(
        [
            ("ttl_seconds", long(req.ttl_seconds)),
            ("ticket", str_expr(&req.ticket)),
            ("reason", str_expr(&req.reason)),
            ("scopes", set_expr(&req.scopes)),
            ("audience", str_expr(&req.audience)),
            ("declared_audiences", set_expr(&req.declared_audiences)),
            ("has_approver", bool(req.approver.is_some())),
            ("approver", str_expr(req.approver.as_deref().unwrap_or(""))),
            // -1 when unknown (a task recorded before uids were kept) or not approved.
            (
                "requester_uid",
                long(req.requester_uid.map_or(-1, i64::from)),
            ),
            ("approver_uid", long(req.approver_uid.map_or(-1, i64::from))),
            ("now", long(req.now_unix)),
            ("hour_utc", long(day_secs / 3600)),
            ("weekday_utc", long(weekday)),
            ("provisioned", bool(req.provisioned)),
            ("break_glass", bool(req.break_glass)),
            ("origin", str_expr(origin)),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    )
    .map_err(|e| e.to_string())?;
    let action = uid("Action", req.action.as_str())?;
    let request = Request::new(principal, action, resource, context, Some(schema))
        .map_err(|e| e.to_string())?;
    Ok((request, entities))
}

fn load_builtin() -> Result<Loaded, PolicyError> {
    let builtin = (BUILTIN_FILE.to_owned(), DEFAULT_POLICIES.to_owned());
    load_sources(&[builtin], Path::new(BUILTIN_FILE))
}

fn load_from_dir(dir: &Path) -> Result<Loaded, PolicyError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PolicyError::Io { path, source }
    };
    let mut files = Vec::new();
    for dirent in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = dirent.map_err(io_err(dir))?.path();
        if path.extension().is_some_and(|e| e == "cedar") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut sources = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sources.push((name, text));
    }
    load_sources(&sources, dir)
}

/// 1-based (line, column) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Position (`file:line:col`) and message of the first of `total` Cedar diagnostics.
fn describe_diag(d: &DetailedError, file: &str, text: &str, total: usize) -> (String, String) {
    let mut msg = d.message.clone();
    if let Some(help) = &d.help {
        let _ = write!(msg, " (help: {help})");
    }
    if total > 1 {
        let _ = write!(msg, " (and {} more)", total - 1);
    }
    let at = match d.source_locations.first() {
        Some(l) => {
            let (line, col) = line_col(text, l.loc.start);
            format!("{file}:{line}:{col}")
        }
        None => file.to_owned(),
    };
    (at, msg)
}

/// Largest `@max_parallel` accepted (more is a typo, not a limit).
pub const MAX_PARALLEL_ANNOTATION: u32 = 10_000;

/// Parses a duration annotation: plain seconds, or a number with `s`, `m`, `h` or `d`.
pub fn parse_duration(value: &str) -> Option<i64> {
    let units = [("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)];
    let (num, mult) = units
        .iter()
        .find_map(|(unit, mult)| Some((value.strip_suffix(unit)?, *mult)))
        .unwrap_or((value, 1));
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<i64>()
        .ok()?
        .checked_mul(mult)
        .filter(|s| *s > 0)
}

fn policy_meta(p: &cedar_policy::Policy) -> Result<PolicyMeta, String> {
    let mut meta = PolicyMeta::default();
    let permit = p.effect() == Effect::Permit;
    for (key, value) in p.annotations() {
        match key {
            "max_ttl" | "max_parallel" | "approval" | "break_glass" if !permit => {
                return Err(format!("@{key} is only meaningful on permit policies"));
            }
            "max_ttl" => {
                let want = "expected a positive duration like \"900\", \"15m\", \"2h\", \"1d\"";
                let ttl = parse_duration(value);
                meta.max_ttl =
                    Some(ttl.ok_or_else(|| format!("bad @max_ttl(\"{value}\"): {want}"))?);
            }
            "max_parallel" => {
                // Digits only (no sign, no spaces), 1 to MAX_PARALLEL_ANNOTATION.
                let n = value
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| value.parse::<u32>().ok())
                    .flatten()
                    .filter(|n| (1..=MAX_PARALLEL_ANNOTATION).contains(n));
                meta.max_parallel = Some(n.ok_or_else(|| {
                    format!(
                        "bad @max_parallel(\"{value}\"): expected a whole number of tasks \
                         from 1 to {MAX_PARALLEL_ANNOTATION}"
                    )
                })?);
            }
            "approval" => {
                meta.approval = value == "required";
                if !meta.approval && value != "none" {
                    let want = "expected \"required\" or \"none\"";
                    return Err(format!("bad @approval(\"{value}\"): {want}"));
                }
            }
            "break_glass" => {
                meta.break_glass = value == "allowed";
                if !meta.break_glass && value != "denied" {
                    let want = "expected \"allowed\" or \"denied\"";
                    return Err(format!("bad @break_glass(\"{value}\"): {want}"));
                }
            }
            _ => {}
        }
    }
    Ok(meta)
}

/// Parses and validates `sources` (file name, text); `origin` names them when there is
/// no policy at all.
fn load_sources(sources: &[(String, String)], origin: &Path) -> Result<Loaded, PolicyError> {
    let schema = schema()?;
    let validator = Validator::new(schema.clone());
    let mut set = PolicySet::new();
    let mut meta = HashMap::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (file, text) in sources {
        let parsed = PolicySet::from_str(text).map_err(|e| {
            let total = e.iter().count();
            let (at, message) = e.iter().next().map_or_else(
                || (file.clone(), e.to_string()),
                |first| describe_diag(&DetailedError::from(first), file, text, total),
            );
            PolicyError::Parse { at, message }
        })?;
        let policy_err = |policy: &str, message: String| PolicyError::Policy {
            file: file.clone(),
            policy: policy.to_owned(),
            message,
        };
        if let Some(t) = parsed.templates().next() {
            return Err(policy_err(
                &t.annotation("id")
                    .map_or_else(|| t.id().to_string(), str::to_owned),
                "templates (?principal / ?resource) are not supported".to_owned(),
            ));
        }
        let mut policies: Vec<_> = parsed.policies().collect();
        policies.sort_by_key(|p| p.id().to_string());
        let mut file_set = PolicySet::new();
        for p in policies {
            let name = match p.annotation("id") {
                Some(n) => {
                    let ok = !n.is_empty()
                        && n.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                    if !ok {
                        return Err(policy_err(
                            n,
                            "bad @id: use letters, digits, '-', '_' and '.'".to_owned(),
                        ));
                    }
                    if let Some(first) = names.insert(n.to_owned(), file.clone()) {
                        return Err(PolicyError::Duplicate {
                            name: n.to_owned(),
                            first,
                            second: file.clone(),
                        });
                    }
                    n.to_owned()
                }
                None => p.id().to_string(),
            };
            let m = policy_meta(p).map_err(|msg| policy_err(&name, msg))?;
            let id = PolicyId::new(format!("{file}:{name}"));
            meta.insert(id.clone(), m);
            file_set
                .add(p.new_id(id))
                .map_err(|e| policy_err(&name, e.to_string()))?;
        }
        let result = validator.validate(&file_set, ValidationMode::Strict);
        for w in result.validation_warnings() {
            tracing::warn!(file = %file, warning = %w, "policy validation warning");
        }
        let errors: Vec<_> = result.validation_errors().collect();
        if let Some(first) = errors.first() {
            let (at, message) =
                describe_diag(&DetailedError::from(*first), file, text, errors.len());
            let policy = first.policy_id().to_string();
            let message = message
                .strip_prefix(&format!("for policy `{policy}`, "))
                .map_or_else(|| message.clone(), str::to_owned);
            let policy = policy
                .strip_prefix(&format!("{file}:"))
                .unwrap_or(&policy)
                .to_owned();
            return Err(PolicyError::Invalid {
                at,
                policy,
                message,
            });
        }
        for p in file_set.policies() {
            set.add(p.clone())
                .map_err(|e| policy_err(p.id().as_ref(), e.to_string()))?;
        }
    }
    let count = set.policies().count();
    if count == 0 {
        return Err(PolicyError::Empty(origin.to_path_buf()));
    }
    Ok(Loaded { set, meta, count })
}

#[cfg(test)]
mod tests;
