//! `agentidp-local`: every route of the four functions on one port, for trying AgentIdP
//! without AWS. Embedded store by default, durable in the data directory.

use std::net::SocketAddr;
use std::path::PathBuf;

use agentidp_core::config::{Config, process_env};
use agentidp_local::{
    BOOTSTRAP_FILE, DEFAULT_DATA_DIR, EXPIRY_PURGE_INTERVAL, StoreKind, StoreOptions,
    bootstrap_if_empty, bootstrap_json, build_idp, migrate,
};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "agentidp-local", about = "Run the AgentIdP API locally")]
struct Args {
    /// Port to listen on.
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Where the embedded store, the signing keys and bootstrap.json live.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    store: StoreKind,
    /// The token issuer (`iss`); defaults to the listen address. Also `AGENTIDP_ISSUER`.
    #[arg(long)]
    issuer: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    agentidp_core::telemetry::init(false);
    let args = Args::parse();
    let address = SocketAddr::new(args.host, args.port);
    let issuer = args
        .issuer
        .clone()
        .or_else(|| process_env("AGENTIDP_ISSUER"))
        .unwrap_or_else(|| format!("http://{address}"));
    let lookup = |name: &str| {
        match name {
            "AGENTIDP_ISSUER" => Some(issuer.clone()),
            // The local server runs beside its clients' key servers: loopback and plain http
            // are fine here, unless the environment says otherwise.
            "AGENTIDP_KEY_FETCH_NETWORK" => {
                process_env(name).or_else(|| Some("development".to_owned()))
            }
            _ => process_env(name),
        }
    };
    let config = Config::from_lookup(lookup).map_err(|e| e.to_string())?;
    let options = StoreOptions::from_lookup(
        args.store,
        args.data_dir.clone(),
        Some(EXPIRY_PURGE_INTERVAL),
        &lookup,
    )
    .map_err(|e| e.to_string())?;
    let idp = build_idp(config, &options).await?;
    if let Some(bootstrapped) = bootstrap_if_empty(&idp, &args.data_dir).await? {
        // Printed once, on the operator's own terminal; also kept in bootstrap.json (0600).
        println!("Created the default organization. Its bootstrap admin credential (shown once):");
        println!(
            "{}",
            serde_json::to_string_pretty(&bootstrap_json(&bootstrapped))
                .map_err(|e| e.to_string())?
        );
        println!("Saved to {}", args.data_dir.join(BOOTSTRAP_FILE).display());
    }
    // An embedded store made by an older version gets what an upgrade brings, as an operator
    // of DynamoDB gets it from `agentidp-admin migrate`.
    for change in migrate(&idp).await? {
        tracing::info!(%change, "migrated");
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("binding {address}: {e}"))?;
    tracing::info!(%address, issuer = %idp.config().issuer, store = ?args.store, "AgentIdP listening");
    agentidp_local::serve(listener, idp, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| e.to_string())
}
