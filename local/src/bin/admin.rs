//! `agentidp-admin`: operator actions on the embedded store or on DynamoDB.

use std::path::PathBuf;

use agentidp_core::config::{Config, process_env};
use agentidp_core::domain::Plan;
use agentidp_core::domain::time::format_timestamp;
use agentidp_core::error::Chain;
use agentidp_local::{DEFAULT_DATA_DIR, StoreKind, StoreOptions, build_idp, migrate};
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "agentidp-admin",
    about = "Operate AgentIdP: organizations, plans, bootstrap credentials, migrations"
)]
struct Args {
    /// The embedded store's directory (the local server's, safe to use while it runs).
    #[arg(long, default_value = DEFAULT_DATA_DIR, global = true)]
    data_dir: PathBuf,
    /// `dynamodb` uses the tables named by AGENTIDP_*_TABLE, as the functions do.
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded, global = true)]
    store: StoreKind,
    #[command(subcommand)]
    command: Command,
}

fn parse_plan(text: &str) -> Result<Plan, String> {
    Plan::parse(text).ok_or_else(|| format!("unknown plan `{text}`: use free or enterprise"))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an organization and its bootstrap admin credential (printed once).
    CreateOrg {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "free", value_parser = parse_plan)]
        plan: Plan,
    },
    /// List organizations.
    ListOrgs,
    /// Change an organization's plan.
    SetPlan {
        #[arg(long)]
        org: uuid::Uuid,
        #[arg(long, value_parser = parse_plan)]
        plan: Plan,
    },
    /// Issue a new bootstrap admin credential, when the old secret is lost.
    IssueBootstrapCredential {
        #[arg(long)]
        org: uuid::Uuid,
    },
    /// Bring every organization's data up to this version (once after an upgrade; running it
    /// again changes nothing). Prints each change.
    Migrate,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    agentidp_core::telemetry::init(false);
    let args = Args::parse();
    // The CLI signs nothing; the issuer only has to be well-formed.
    let lookup = |name: &str| {
        process_env(name)
            .or_else(|| (name == "AGENTIDP_ISSUER").then(|| "http://127.0.0.1:3000".to_owned()))
    };
    let config = Config::from_lookup(lookup).map_err(|e| e.to_string())?;
    let options = StoreOptions::from_lookup(args.store, args.data_dir, None, &lookup)
        .map_err(|e| e.to_string())?;
    let idp = build_idp(config, &options).await?;
    let output = match args.command {
        Command::CreateOrg { name, plan } => {
            let created = idp
                .create_org(&name, plan)
                .await
                .map_err(|e| Chain(&e).to_string())?;
            json!({
                "orgId": created.org.org_id,
                "name": created.org.name,
                "plan": created.org.plan.as_str(),
                "clientId": created.admin.credential.client_id,
                "clientSecret": created.admin.client_secret.expose(),
            })
        }
        Command::ListOrgs => {
            let orgs = idp.list_orgs().await.map_err(|e| Chain(&e).to_string())?;
            json!(orgs
                .iter()
                .map(|o| json!({"orgId": o.org_id, "name": o.name, "plan": o.plan.as_str(), "createdAt": format_timestamp(&o.created_at)}))
                .collect::<Vec<_>>())
        }
        Command::SetPlan { org, plan } => {
            let org = idp
                .set_plan(org, plan)
                .await
                .map_err(|e| Chain(&e).to_string())?;
            json!({"orgId": org.org_id, "name": org.name, "plan": org.plan.as_str()})
        }
        Command::IssueBootstrapCredential { org } => {
            let issued = idp
                .issue_bootstrap_credential(org)
                .await
                .map_err(|e| Chain(&e).to_string())?;
            json!({
                "orgId": org,
                "agentId": issued.credential.agent_id,
                "clientId": issued.credential.client_id,
                "clientSecret": issued.client_secret.expose(),
            })
        }
        Command::Migrate => json!(migrate(&idp).await?),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&output).map_err(|e| e.to_string())?
    );
    Ok(())
}
