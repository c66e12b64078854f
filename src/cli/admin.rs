//! `liaison admin`: the operator's commands, run against the database directly.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::api::convert::{org_kind_to_pb, scope_to_pb};
use crate::api::{AdminApi, Caller};
use crate::domain::{OrganizationKind, Scope};
use crate::pb::{self, admin_service_server::AdminService};
use crate::store::Store;

#[derive(Subcommand)]
pub(super) enum AdminCommand {
    /// Creates the operator's first admin key and prints it, alone, on the last line.
    Bootstrap {
        /// Issue another operator key even if one is live.
        #[arg(long)]
        force: bool,
    },
    /// Creates an organization; prints its resource name.
    CreateOrg {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        display_name: String,
        /// vendor, distributor, retailer or other.
        #[arg(long)]
        kind: String,
    },
    /// Lists organizations: name, kind, state, display name (tab-separated).
    ListOrgs,
    /// Shows one organization.
    GetOrg { slug: String },
    /// Suspends an organization: its keys stop working.
    SuspendOrg {
        slug: String,
        #[arg(long)]
        reason: String,
    },
    /// Lifts a suspension.
    ReactivateOrg { slug: String },
    /// Issues an API key for an organization (or `operator`); prints it on the last line.
    CreateKey {
        /// Organization slug, or `operator`.
        #[arg(long)]
        org: String,
        /// read, write or admin; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        #[arg(long, default_value = "")]
        display_name: String,
        /// Expiry as an RFC 3339 time, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Lists API keys: name, prefix, scopes, state (tab-separated).
    ListKeys {
        /// Organization slug, or `operator`.
        #[arg(long)]
        org: String,
        #[arg(long)]
        show_revoked: bool,
    },
    /// Revokes an API key by resource name.
    RevokeKey { name: String },
    /// Takes a consistent copy of the SQLite database into PATH (`VACUUM INTO`) while
    /// the hub keeps serving. PATH must not exist.
    Backup { path: PathBuf },
    /// The audit log: verify every chain, sign checkpoints now.
    Audit {
        #[command(subcommand)]
        command: AdminAuditCommand,
    },
    /// Seals new page tokens with a fresh key kept in the database; tokens sealed with
    /// the previous keys keep working for a day. Not for keys given in the config.
    RotatePageTokenKey,
    /// Customer metrics: recompute them from the interactions.
    Metrics {
        #[command(subcommand)]
        command: AdminMetricsCommand,
    },
}

/// `liaison admin metrics …`: run against the database.
#[derive(Subcommand)]
pub(super) enum AdminMetricsCommand {
    /// Recomputes every customer's running totals from its interactions, prints each
    /// difference from the stored ones, and replaces those that differ. With
    /// `--check`, changes nothing and exits 1 if any differ.
    Repair {
        #[arg(long)]
        check: bool,
    },
    /// Recomputes every active organization's RFM quintiles now (the hub does so every
    /// `customers.rfm_interval_secs`) and prints them.
    Rfm,
}

/// Runs `liaison admin metrics …`.
pub(super) async fn metrics(
    store: &Store,
    settings: &crate::app::customers::CustomerSettings,
    command: AdminMetricsCommand,
) -> anyhow::Result<()> {
    let check = match command {
        AdminMetricsCommand::Repair { check } => check,
        AdminMetricsCommand::Rfm => {
            let now = store.clock().now();
            let mut after: Option<String> = None;
            loop {
                let page = store.organizations(after.as_deref(), 100).await?;
                for org in page.items.iter().filter(|o| o.is_active()) {
                    match crate::app::metrics::compute_rfm(store, settings, org, now).await? {
                        None => println!("{}\tno customer bought", org.slug),
                        Some(b) => println!(
                            "{}\t{} customers\trecency {:?}\tfrequency {:?}\tmonetary ({}) {}",
                            org.slug,
                            b.customers,
                            b.recency
                                .map(|m| jiff::Timestamp::from_microsecond(m as i64)
                                    .map_or_else(|_| m.to_string(), |t| t.to_string())),
                            b.frequency,
                            if b.currency.is_empty() {
                                "no reporting currency"
                            } else {
                                &b.currency
                            },
                            b.monetary.map_or("-".to_owned(), |m| format!(
                                "{:?}",
                                m.map(crate::domain::metrics::decimal)
                            )),
                        ),
                    }
                }
                match page.next_after {
                    Some(next) => after = Some(next),
                    None => return Ok(()),
                }
            }
        }
    };
    let found = crate::app::metrics::check(store, !check).await?;
    let total = |t: &Option<crate::domain::metrics::Total>| match t {
        None => "none".to_owned(),
        Some(t) => format!(
            "count={} amount={} first={} last={}",
            t.count,
            crate::domain::metrics::decimal(t.amount),
            t.first,
            t.last
        ),
    };
    for d in &found.differences {
        let any = d.stored.as_ref().or(d.recomputed.as_ref());
        println!(
            "customers/{}\tscope={}\ttype={}\tcurrency={}\tstored: {}\trecomputed: {}",
            d.customer_id,
            if d.scope.is_empty() {
                "shared"
            } else {
                &d.scope
            },
            any.map_or("", |t| t.kind.as_str()),
            any.and_then(|t| t.currency.as_deref()).unwrap_or("-"),
            total(&d.stored),
            total(&d.recomputed)
        );
    }
    if found.differences.len() == crate::store::MAX_REPORTED {
        println!(
            "(the first {} differences only)",
            crate::store::MAX_REPORTED
        );
    }
    println!(
        "checked {} customers: {} with metrics that differed from their interactions{}",
        found.customers,
        found.customers_differing,
        match (found.customers_differing, check) {
            (0, _) => "",
            (_, true) => " (not repaired: --check)",
            (_, false) => ", repaired",
        }
    );
    if check && found.customers_differing > 0 {
        anyhow::bail!("customer metrics differ from the interactions");
    }
    Ok(())
}

/// A request as the operator, for calling the service in-process.
pub(super) fn as_operator<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(Caller::operator());
    request
}

/// Explains a failed call the way a person at a terminal needs it.
pub(super) fn explain(status: tonic::Status) -> anyhow::Error {
    use tonic_types::StatusExt;
    let mut text = status.message().to_owned();
    if let Some(bad) = status.get_details_bad_request() {
        text = bad
            .field_violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
    }
    anyhow::anyhow!("{text} ({:?})", status.code())
}

pub(super) fn org_name(slug: &str) -> String {
    if slug == "operator" {
        "operator".into()
    } else {
        format!("organizations/{slug}")
    }
}

pub(super) fn print_org(o: &pb::Organization) {
    let kind = pb::OrganizationKind::try_from(o.kind)
        .map(|k| k.as_str_name())
        .unwrap_or("?");
    let state = pb::organization::State::try_from(o.state)
        .map(|s| s.as_str_name())
        .unwrap_or("?");
    println!("{}\t{kind}\t{state}\t{}", o.name, o.display_name);
}

pub(super) async fn admin(
    api: AdminApi,
    store: &Store,
    command: AdminCommand,
) -> anyhow::Result<()> {
    match command {
        AdminCommand::Bootstrap { force } => {
            if !force && store.operator_has_live_key(jiff::Timestamp::now()).await? {
                anyhow::bail!("the operator already has a live key; use --force to issue another");
            }
            let request = pb::CreateApiKeyRequest {
                parent: "operator".into(),
                api_key: Some(pb::ApiKey {
                    display_name: "bootstrap".into(),
                    scopes: vec![pb::ApiKeyScope::Admin as i32],
                    ..Default::default()
                }),
                request_id: String::new(),
            };
            let created = api
                .create_api_key(as_operator(request))
                .await
                .map_err(explain)?
                .into_inner();
            let name = created.api_key.map(|k| k.name).unwrap_or_default();
            println!("Created the operator key {name}. It is shown only now; keep it secret:");
            println!("{}", created.key);
        }
        AdminCommand::CreateOrg {
            slug,
            display_name,
            kind,
        } => {
            let kind = OrganizationKind::parse(&kind)
                .map_err(|v| anyhow::anyhow!("--kind {}", v.description))?;
            let kind = org_kind_to_pb(kind);
            let request = pb::CreateOrganizationRequest {
                organization: Some(pb::Organization {
                    slug,
                    display_name,
                    kind: kind as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            };
            print_org(
                &api.create_organization(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner(),
            );
        }
        AdminCommand::ListOrgs => {
            let mut page_token = String::new();
            loop {
                let request = pb::ListOrganizationsRequest {
                    page_size: 1000,
                    page_token,
                };
                let page = api
                    .list_organizations(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner();
                page.organizations.iter().for_each(print_org);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        AdminCommand::GetOrg { slug } => {
            let request = pb::GetOrganizationRequest {
                name: org_name(&slug),
            };
            print_org(
                &api.get_organization(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner(),
            );
        }
        AdminCommand::SuspendOrg { slug, reason } => {
            let request = pb::SuspendOrganizationRequest {
                name: org_name(&slug),
                reason,
                ..Default::default()
            };
            print_org(
                &api.suspend_organization(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner(),
            );
        }
        AdminCommand::ReactivateOrg { slug } => {
            let request = pb::ReactivateOrganizationRequest {
                name: org_name(&slug),
                ..Default::default()
            };
            print_org(
                &api.reactivate_organization(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner(),
            );
        }
        AdminCommand::CreateKey {
            org,
            scopes,
            display_name,
            expires,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s).map(|scope| scope_to_pb(scope) as i32))
                .collect::<Option<Vec<_>>>()
                .context("--scope must be read, write or admin")?;
            let expire_time = expires
                .map(|e| {
                    e.parse::<jiff::Timestamp>()
                        .map(|t| prost_types::Timestamp {
                            seconds: t.as_second(),
                            nanos: t.subsec_nanosecond(),
                        })
                        .with_context(|| format!("--expires {e:?} is not an RFC 3339 time"))
                })
                .transpose()?;
            let request = pb::CreateApiKeyRequest {
                parent: org_name(&org),
                api_key: Some(pb::ApiKey {
                    display_name,
                    scopes,
                    expire_time,
                    ..Default::default()
                }),
                request_id: String::new(),
            };
            let created = api
                .create_api_key(as_operator(request))
                .await
                .map_err(explain)?
                .into_inner();
            let name = created.api_key.map(|k| k.name).unwrap_or_default();
            println!("Created {name}. The key is shown only now:");
            println!("{}", created.key);
        }
        AdminCommand::ListKeys { org, show_revoked } => {
            let mut page_token = String::new();
            loop {
                let request = pb::ListApiKeysRequest {
                    parent: org_name(&org),
                    page_size: 1000,
                    page_token,
                    show_revoked,
                };
                let page = api
                    .list_api_keys(as_operator(request))
                    .await
                    .map_err(explain)?
                    .into_inner();
                for key in &page.api_keys {
                    let scopes: Vec<&str> = key
                        .scopes
                        .iter()
                        .map(|&s| {
                            pb::ApiKeyScope::try_from(s)
                                .map(|s| s.as_str_name())
                                .unwrap_or("?")
                        })
                        .collect();
                    let state = if key.revoke_time.is_some() {
                        "REVOKED"
                    } else {
                        "ACTIVE"
                    };
                    println!(
                        "{}\t{}\t{}\t{state}\t{}",
                        key.name,
                        key.prefix,
                        scopes.join(","),
                        key.display_name
                    );
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        AdminCommand::RevokeKey { name } => {
            let request = pb::RevokeApiKeyRequest {
                name,
                request_id: String::new(),
            };
            let key = api
                .revoke_api_key(as_operator(request))
                .await
                .map_err(explain)?
                .into_inner();
            println!("{}\tREVOKED", key.name);
        }
        AdminCommand::Backup { .. }
        | AdminCommand::RotatePageTokenKey
        | AdminCommand::Metrics { .. }
        | AdminCommand::Audit { .. } => {
            unreachable!("handled before the admin API is needed")
        }
    }
    Ok(())
}

/// `liaison admin audit …`: run against the database.
#[derive(Subcommand)]
pub(super) enum AdminAuditCommand {
    /// Checks every organization's chain (or one's) against its checkpoints and head;
    /// names the first bad entry of each and exits 1 if any is bad.
    Verify {
        /// Only this organization (slug).
        #[arg(long)]
        organization: Option<String>,
    },
    /// Signs each organization's newest entry now (the hub also does so every
    /// `audit.checkpoint_interval_secs`).
    Checkpoint,
}
