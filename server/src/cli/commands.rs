//! Running admin commands: each connects to the server's admin socket, makes one call and
//! prints the answer through [`super::output`].

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use common::proto::tessera::admin_client::AdminClient;
use common::proto::tessera::{
    AgentIdRequest, CreateJoinTokenRequest, EntryIdRequest, EntrySpec, GetBundleRequest,
    HealthRequest, ListAgentsRequest, ListAuditRequest, ListCasRequest, ListEntriesRequest,
    ListTenantsRequest, ReviewRequest, RotateCaRequest, Tenant, TenantDomainRequest,
    TenantNameRequest, TenantPolicyRequest, TenantSpec, UpdateEntryRequest, VerifyAuditRequest,
    VerifyAuditResponse,
};
use common::proto::tessera::{ListTemplatesRequest, TemplateIdRequest, TemplateSpec};
use daemon::cli_output::{self, Output, UsageError};
use serde_json::json;
use tonic::transport::Channel;

use super::args::{
    AdminOpts, AgentCommand, AuditCommand, BundleCommand, BundleFormat, CaCommand, Command,
    DomainCommand, EntryCommand, OwnerCommand, PolicyCommand, TaskCommand, TemplateCommand,
    TenantCommand, TenantFields, TenantPolicyCommand, TokenCommand,
};
use super::output;

/// Connects to the admin API over its Unix socket at `path`, only if the process
/// listening there runs as root, as the caller, or as `server_user` (a name or a uid); the
/// error names `TESSERA_ADMIN_SOCKET`.
pub async fn connect_admin(
    path: &Path,
    server_user: Option<&str>,
) -> anyhow::Result<AdminClient<Channel>> {
    let mut trusted = vec![0, nix::unistd::geteuid().as_raw()];
    if let Some(user) = server_user {
        trusted.push(server_uid(user)?);
    }
    trusted.sort_unstable();
    trusted.dedup();
    let channel = cli_output::connect_socket(
        path,
        "the server's admin socket",
        "tessera-server",
        "TESSERA_ADMIN_SOCKET",
        "--admin-socket",
        Some(&trusted),
    )
    .await?;
    Ok(AdminClient::new(channel))
}

/// [`connect_admin`] with the command line's options (the default socket when none).
async fn admin_client(admin: &AdminOpts) -> anyhow::Result<AdminClient<Channel>> {
    let path = admin.admin_socket.clone().unwrap_or_else(|| {
        daemon::socket::default_client_socket(crate::config::ADMIN_SOCKET_IN_RUNTIME_DIR)
    });
    connect_admin(&path, admin.server_user.as_deref()).await
}

/// The uid of `--server-user`: a user name, or a uid in decimal.
fn server_uid(user: &str) -> anyhow::Result<u32> {
    if let Ok(uid) = user.parse() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(UsageError(format!("--server-user {user:?}: no such user")).into()),
        Err(e) => Err(anyhow::anyhow!("--server-user {user:?}: {e}")),
    }
}

/// `audit verify --checkpoints --public-key [--records]`: the checks the server makes,
/// made here against copies (the records from the server unless a file is given).
async fn verify_offline(
    admin: &AdminOpts,
    checkpoints: &Path,
    public_key: &Path,
    records: Option<&Path>,
) -> anyhow::Result<VerifyAuditResponse> {
    use crate::audit::AuditRecord;
    use crate::audit::anchor::{PublicKey, verify_anchored};
    let key = PublicKey::read(public_key).map_err(anyhow::Error::msg)?;
    let text = std::fs::read_to_string(checkpoints)
        .with_context(|| format!("reading {}", checkpoints.display()))?;
    let log: Vec<AuditRecord> = match records {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| e.to_string())
                    .and_then(|v| AuditRecord::from_json(&v))
                    .map_err(|e| anyhow::anyhow!("{} line {}: {e}", path.display(), i + 1))
            })
            .collect::<anyhow::Result<_>>()?,
        None => {
            let mut c = admin_client(admin).await?;
            let mut stream = c
                .list_audit(ListAuditRequest::default())
                .await
                .map_err(status)?
                .into_inner();
            let mut log = Vec::new();
            while let Some(r) = stream.message().await.map_err(status)? {
                log.push(output::audit_record_from_wire(r));
            }
            log
        }
    };
    let report = verify_anchored(&log, &text, &key);
    let problems = report.messages();
    Ok(VerifyAuditResponse {
        ok: problems.is_empty(),
        records: i64::try_from(report.chain.verified).unwrap_or(i64::MAX),
        first_bad_seq: report.first_bad_seq(),
        error: problems.join("; "),
        problems,
        checkpoints: i64::try_from(report.checkpoints).unwrap_or(i64::MAX),
        anchored: report.anchored,
    })
}

/// An admin call failed: print the server's message, not the gRPC plumbing.
fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

fn print(output: Output, text: String, value: serde_json::Value) {
    cli_output::print(output, &text, &value);
}

/// Runs an admin command.
pub async fn run_admin(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(_) => anyhow::bail!("BUG: run is not an admin command"),
        Command::Token { command, admin } => {
            let mut c = admin_client(&admin).await?;
            let TokenCommand::Generate { spiffe_id, ttl } = command;
            let r = c
                .create_join_token(CreateJoinTokenRequest {
                    spiffe_id: spiffe_id.unwrap_or_default(),
                    ttl_seconds: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(
                admin.output,
                format!("{}\n", r.token),
                json!({"token": r.token, "spiffe_id": r.spiffe_id, "expires_at": r.expires_at}),
            );
        }
        Command::Entry { command, admin } => {
            let mut c = admin_client(&admin).await?;
            match command {
                EntryCommand::Create(fields) => {
                    let e = c
                        .create_entry(EntrySpec::from(fields))
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(admin.output, output::entry_text(&e), output::entry_json(&e));
                }
                EntryCommand::Update { entry_id, fields } => {
                    let e = c
                        .update_entry(UpdateEntryRequest {
                            id: entry_id,
                            spec: Some(fields.into()),
                        })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(admin.output, output::entry_text(&e), output::entry_json(&e));
                }
                EntryCommand::Delete { entry_id } => {
                    let e = c
                        .delete_entry(EntryIdRequest { id: entry_id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(
                        admin.output,
                        format!("Deleted entry {}\n", e.id),
                        output::entry_json(&e),
                    );
                }
                EntryCommand::Show {
                    entry_id: Some(id), ..
                } => {
                    let e = c
                        .get_entry(EntryIdRequest { id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(admin.output, output::entry_text(&e), output::entry_json(&e));
                }
                EntryCommand::Certify { entry_id } => {
                    let e = c
                        .certify_entry(EntryIdRequest { id: entry_id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(admin.output, output::entry_text(&e), output::entry_json(&e));
                }
                EntryCommand::Show {
                    entry_id: None,
                    spiffe_id,
                    parent_id,
                    tenant,
                } => {
                    let list = c
                        .list_entries(ListEntriesRequest {
                            spiffe_id: spiffe_id.unwrap_or_default(),
                            parent_id: parent_id.unwrap_or_default(),
                            tenant: tenant.unwrap_or_default(),
                        })
                        .await
                        .map_err(status)?
                        .into_inner()
                        .entries;
                    let text = format!(
                        "Found {} entries\n{}",
                        list.len(),
                        list.iter()
                            .map(|e| format!("\n{}", output::entry_text(e)))
                            .collect::<String>()
                    );
                    print(
                        admin.output,
                        text,
                        json!({"entries": list.iter().map(output::entry_json).collect::<Vec<_>>()}),
                    );
                }
            }
        }
        Command::Template { command, admin } => {
            let mut c = admin_client(&admin).await?;
            match command {
                TemplateCommand::Create(fields) => {
                    let t = c
                        .create_template(TemplateSpec::from(fields))
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(
                        admin.output,
                        output::template_text(&t),
                        output::template_json(&t),
                    );
                }
                TemplateCommand::List { tenant } => {
                    let list = c
                        .list_templates(ListTemplatesRequest {
                            tenant: tenant.unwrap_or_default(),
                        })
                        .await
                        .map_err(status)?
                        .into_inner()
                        .templates;
                    let text = format!(
                        "Found {} templates\n{}",
                        list.len(),
                        list.iter()
                            .map(|t| format!("\n{}", output::template_text(t)))
                            .collect::<String>()
                    );
                    print(
                        admin.output,
                        text,
                        json!({"templates": list.iter().map(output::template_json).collect::<Vec<_>>()}),
                    );
                }
                TemplateCommand::Delete { template_id } => {
                    let t = c
                        .delete_template(TemplateIdRequest { id: template_id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(
                        admin.output,
                        format!("Deleted template {} and its entries\n", t.id),
                        output::template_json(&t),
                    );
                }
            }
        }
        Command::Agent { command, admin } => {
            let mut c = admin_client(&admin).await?;
            match command {
                AgentCommand::List => {
                    let list = c
                        .list_agents(ListAgentsRequest {})
                        .await
                        .map_err(status)?
                        .into_inner()
                        .agents;
                    let text = format!(
                        "Found {} attested agents\n{}",
                        list.len(),
                        list.iter()
                            .map(|a| format!("\n{}", output::agent_text(a)))
                            .collect::<String>()
                    );
                    print(
                        admin.output,
                        text,
                        json!({"agents": list.iter().map(output::agent_json).collect::<Vec<_>>()}),
                    );
                }
                AgentCommand::Evict { spiffe_id } => {
                    let a = c
                        .evict_agent(AgentIdRequest { spiffe_id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(
                        admin.output,
                        format!("Evicted agent {}\n", a.spiffe_id),
                        output::agent_json(&a),
                    );
                }
                AgentCommand::Ban { spiffe_id } => {
                    let a = c
                        .ban_agent(AgentIdRequest { spiffe_id })
                        .await
                        .map_err(status)?
                        .into_inner();
                    print(
                        admin.output,
                        format!("Banned agent {}\n", a.spiffe_id),
                        output::agent_json(&a),
                    );
                }
            }
        }
        Command::Bundle {
            command: BundleCommand::Show { format },
            admin,
        } => {
            let mut c = admin_client(&admin).await?;
            let b = c
                .get_bundle(GetBundleRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let pem_text = pem::encode_many(
                &b.x509_authorities
                    .iter()
                    .map(|d| pem::Pem::new("CERTIFICATE", d.clone()))
                    .collect::<Vec<_>>(),
            );
            match format {
                BundleFormat::Pem => print(
                    admin.output,
                    pem_text.clone(),
                    json!({"trust_domain": b.trust_domain, "pem": pem_text}),
                ),
                BundleFormat::Spiffe => {
                    let v = output::spiffe_bundle_json(&b)?;
                    print(Output::Json, String::new(), v);
                }
            }
        }
        Command::Ca { command, admin } => {
            let mut c = admin_client(&admin).await?;
            let list = match command {
                CaCommand::Show => c.list_cas(ListCasRequest {}).await,
                CaCommand::Rotate => c.rotate_ca(RotateCaRequest {}).await,
            }
            .map_err(status)?
            .into_inner()
            .cas;
            print(
                admin.output,
                output::cas_text(&list),
                output::cas_json(&list),
            );
        }
        Command::Audit {
            command: AuditCommand::Show { task, tenant },
            admin,
        } => {
            let mut c = admin_client(&admin).await?;
            let mut stream = c
                .list_audit(ListAuditRequest {
                    task_id: task.unwrap_or_default(),
                    tenant: tenant.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            while let Some(r) = stream.message().await.map_err(status)? {
                let (text, value) = output::audit_record(&r);
                print(admin.output, text, value);
            }
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    checkpoints,
                    public_key,
                    records,
                },
            admin,
        } => {
            let r = match (checkpoints, public_key) {
                (Some(checkpoints), Some(public_key)) => {
                    verify_offline(&admin, &checkpoints, &public_key, records.as_deref()).await?
                }
                _ => {
                    let mut c = admin_client(&admin).await?;
                    c.verify_audit(VerifyAuditRequest {})
                        .await
                        .map_err(status)?
                        .into_inner()
                }
            };
            let value = json!({
                "ok": r.ok,
                "records": r.records,
                "checkpoints": r.checkpoints,
                "anchored": r.anchored,
                "first_bad_seq": (!r.ok).then_some(r.first_bad_seq),
                "error": (!r.ok).then_some(&r.error),
                "problems": r.problems,
            });
            if r.ok {
                print(
                    admin.output,
                    format!(
                        "Audit log verified: {} records, chain intact; {} signed checkpoints agree (anchored up to record {}).\n",
                        r.records, r.checkpoints, r.anchored
                    ),
                    value,
                );
            } else {
                print(admin.output, String::new(), value);
                anyhow::bail!("audit log is broken: {}", r.problems.join("; "));
            }
        }
        Command::Task { command, admin } => run_task(command, &admin).await?,
        Command::Tenant { command, admin } => run_tenant(command, &admin).await?,
        Command::Owner {
            command: OwnerCommand::Offboard { owner, reason },
            admin,
        } => {
            let mut c = admin_client(&admin).await?;
            let r = c
                .offboard_owner(common::proto::tessera::OffboardRequest {
                    owner: owner.clone(),
                    reason: reason.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(
                admin.output,
                output::offboard_text(&owner, &r),
                json!({
                    "owner": owner,
                    "ended_tasks": r.ended_tasks,
                    "disabled_entries": r.disabled_entries,
                }),
            );
        }
        Command::Review {
            tenant,
            stale_after,
            admin,
        } => {
            let mut c = admin_client(&admin).await?;
            let r = c
                .review(ReviewRequest {
                    tenant: tenant.unwrap_or_default(),
                    stale_after_seconds: stale_after
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(
                admin.output,
                output::review_text(&r),
                output::review_json(&r),
            );
        }
        Command::Policy {
            command: PolicyCommand::Check { dir },
            admin,
        } => {
            let n = crate::policy::PolicyEngine::check_dir(&dir)?;
            print(
                admin.output,
                format!("{}: {n} policies, valid.\n", dir.display()),
                json!({"dir": dir, "policies": n, "valid": true}),
            );
        }
        Command::Policy {
            command: PolicyCommand::Reload,
            admin,
        } => {
            let mut c = admin_client(&admin).await?;
            let r = c
                .reload_policy(common::proto::tessera::ReloadPolicyRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print(
                admin.output,
                format!(
                    "Policy reloaded: {} ({} policies)\n",
                    r.description, r.policies
                ),
                json!({"source": r.description, "policies": r.policies}),
            );
        }
        Command::Healthcheck { admin } => {
            let mut c = admin_client(&admin).await?;
            let h = c
                .health(HealthRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if !h.ready {
                anyhow::bail!("the server is unhealthy: {}", h.reason);
            }
            print(
                admin.output,
                "Server is healthy.\n".into(),
                json!({"healthy": true}),
            );
        }
    }
    Ok(())
}

/// The wire spec of a tenant's settings: on create, what was given; on update, what was
/// given over `current`.
fn tenant_spec(f: TenantFields, current: Option<&Tenant>) -> TenantSpec {
    let keep = |given: Vec<String>, cur: Option<&Vec<String>>| {
        if given.is_empty() {
            cur.cloned().unwrap_or_default()
        } else {
            given
        }
    };
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    TenantSpec {
        path_prefixes: keep(f.path_prefixes, current.map(|t| &t.path_prefixes)),
        admin_users: keep(f.admin_users, current.map(|t| &t.admin_users)),
        admin_groups: keep(f.admin_groups, current.map(|t| &t.admin_groups)),
        max_entries: f
            .max_entries
            .unwrap_or_else(|| current.map_or(0, |t| t.max_entries)),
        max_open_tasks: f
            .max_open_tasks
            .unwrap_or_else(|| current.map_or(0, |t| t.max_open_tasks)),
        max_parallel_tasks_per_entry: f
            .max_parallel_tasks_per_entry
            .unwrap_or_else(|| current.map_or(0, |t| t.max_parallel_tasks_per_entry)),
        review_every_seconds: f
            .review_every
            .map_or_else(|| current.map_or(0, |t| t.review_every_seconds), secs),
        name: f.name,
    }
}

async fn run_tenant(command: TenantCommand, admin: &AdminOpts) -> anyhow::Result<()> {
    let mut c = admin_client(admin).await?;
    let out = admin.output;
    match command {
        TenantCommand::Create(fields) => {
            let t = c
                .create_tenant(tenant_spec(fields, None))
                .await
                .map_err(status)?
                .into_inner();
            print(out, output::tenant_text(&t), output::tenant_json(&t));
        }
        TenantCommand::Update(fields) => {
            let current = c
                .get_tenant(TenantNameRequest {
                    name: fields.name.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let t = c
                .update_tenant(tenant_spec(fields, Some(&current)))
                .await
                .map_err(status)?
                .into_inner();
            print(out, output::tenant_text(&t), output::tenant_json(&t));
        }
        TenantCommand::Show { name } => {
            let t = c
                .get_tenant(TenantNameRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            print(out, output::tenant_text(&t), output::tenant_json(&t));
        }
        TenantCommand::List => {
            let list = c
                .list_tenants(ListTenantsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .tenants;
            let text = format!(
                "Found {} tenants\n{}",
                list.len(),
                list.iter()
                    .map(|t| format!("\n{}", output::tenant_text(t)))
                    .collect::<String>()
            );
            print(
                out,
                text,
                json!({"tenants": list.iter().map(output::tenant_json).collect::<Vec<_>>()}),
            );
        }
        TenantCommand::Delete { name } => {
            let t = c
                .delete_tenant(TenantNameRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            print(
                out,
                format!("Deleted tenant {}\n", t.name),
                output::tenant_json(&t),
            );
        }
        TenantCommand::Policy { command } => run_tenant_policy(&mut c, out, command).await?,
        TenantCommand::Domain { command } => {
            let (args, call) = match command {
                DomainCommand::Add(a) => (a, 0),
                DomainCommand::Verify(a) => (a, 1),
                DomainCommand::Remove(a) => (a, 2),
            };
            let req = TenantDomainRequest {
                tenant: args.tenant,
                domain: args.domain,
            };
            let d = match call {
                0 => c.add_tenant_domain(req).await,
                1 => c.verify_tenant_domain(req).await,
                _ => c.remove_tenant_domain(req).await,
            }
            .map_err(status)?
            .into_inner();
            let text = match call {
                0 => format!(
                    "{}\nPublish the TXT record above, then run `tessera-server tenant domain verify --tenant {} --domain {}`.\n",
                    output::domain_text(&d),
                    d.tenant,
                    d.domain
                ),
                2 => format!("Removed domain {} from tenant {}\n", d.domain, d.tenant),
                _ => output::domain_text(&d),
            };
            print(out, text, output::domain_json(&d));
        }
    }
    Ok(())
}

async fn run_tenant_policy(
    c: &mut AdminClient<Channel>,
    out: Output,
    command: TenantPolicyCommand,
) -> anyhow::Result<()> {
    let (name, policy, clear) = match command {
        TenantPolicyCommand::Show { name } => {
            let t = c
                .get_tenant(TenantNameRequest { name })
                .await
                .map_err(status)?
                .into_inner();
            let text = if t.policy.is_empty() {
                format!("Tenant {} has no policies of its own\n", t.name)
            } else {
                t.policy.clone()
            };
            print(out, text, json!({"name": t.name, "policy": t.policy}));
            return Ok(());
        }
        TenantPolicyCommand::Set { name, file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            (name, text, false)
        }
        TenantPolicyCommand::Clear { name } => (name, String::new(), true),
    };
    let t = c
        .set_tenant_policy(TenantPolicyRequest {
            name,
            policy,
            clear,
        })
        .await
        .map_err(status)?
        .into_inner();
    let text = if clear {
        format!("Cleared the policies of tenant {}\n", t.name)
    } else {
        format!(
            "Set the policies of tenant {} (revision {})\n",
            t.name, t.revision
        )
    };
    print(out, text, output::tenant_json(&t));
    Ok(())
}

async fn run_task(command: TaskCommand, admin: &AdminOpts) -> anyhow::Result<()> {
    use common::proto::tessera::{
        AcknowledgeTaskRequest, EndTaskRequest, ListTasksRequest, TaskIdRequest,
    };
    use common::task::{decision_json, task_json, task_text};
    let mut c = admin_client(admin).await?;
    let end = |id: String, outcome: &str, reason: Option<String>| EndTaskRequest {
        id,
        outcome: outcome.to_owned(),
        reason: reason.unwrap_or_default(),
    };
    let task = match command {
        TaskCommand::Create(spec) => c.create_task(spec.into_spec()).await,
        TaskCommand::Show { task_id } => c.get_task(TaskIdRequest { id: task_id }).await,
        TaskCommand::Approve { task_id } => c.approve_task(TaskIdRequest { id: task_id }).await,
        TaskCommand::Acknowledge { task_id, note } => {
            c.acknowledge_task(AcknowledgeTaskRequest { id: task_id, note })
                .await
        }
        TaskCommand::Complete { task_id, reason } => {
            c.end_task(end(task_id, "completed", reason)).await
        }
        TaskCommand::Fail { task_id, reason } => c.end_task(end(task_id, "failed", reason)).await,
        TaskCommand::Cancel { task_id, reason } => {
            c.end_task(end(task_id, "cancelled", reason)).await
        }
        TaskCommand::Revoke { task_id, reason } => {
            c.end_task(end(task_id, "revoked", reason)).await
        }
        TaskCommand::List { state } => {
            let tasks = c
                .list_tasks(ListTasksRequest {
                    state: state.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner()
                .tasks;
            let text = tasks.iter().map(task_text).collect::<Vec<_>>().join("\n");
            let value = json!({"tasks": tasks.iter().map(task_json).collect::<Vec<_>>()});
            print(admin.output, text, value);
            return Ok(());
        }
        TaskCommand::Explain {
            task_id: Some(id),
            spec: _,
        } => {
            let t = c
                .get_task(TaskIdRequest { id })
                .await
                .map_err(status)?
                .into_inner();
            let d = t.decision.unwrap_or_default();
            let text = format!(
                "Task {} ({}): {}\nPolicies: {}\n",
                t.id,
                t.state,
                d.explanation,
                d.policies.join(", ")
            );
            print(admin.output, text, decision_json(&d));
            return Ok(());
        }
        TaskCommand::Explain {
            task_id: None,
            spec,
        } => {
            let d = c
                .explain_task(spec.into_spec())
                .await
                .map_err(status)?
                .into_inner();
            let text = format!("{}\nPolicies: {}\n", d.explanation, d.policies.join(", "));
            print(admin.output, text, decision_json(&d));
            return Ok(());
        }
    }
    .map_err(status)?
    .into_inner();
    print(admin.output, task_text(&task), task_json(&task));
    Ok(())
}
