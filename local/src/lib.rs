//! The local server and the operator CLI: the same handlers as the Lambda functions, served
//! over plain HTTP, on the embedded store by default or on DynamoDB.

use agentidp_remote_keys::KeySetFetcher;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentidp_core::config::{Config, ConfigError};
use agentidp_core::domain::time::{Clock, SystemClock};
use agentidp_core::error::Chain;
use agentidp_core::service::Idp;
use agentidp_core::service::orgs::BootstrappedOrg;
use agentidp_core::signing::KeySource;
use agentidp_core::store::Store;
use agentidp_http::{ApiRequest, Origin};
use agentidp_store_dynamodb::{DynamoStore, TableNames, client_from_env, ensure_tables};
use agentidp_store_sqlite::SqliteStore;
use axum::extract::{ConnectInfo, State};
use serde_json::json;

pub const DEFAULT_DATA_DIR: &str = ".agentidp";
pub const DATABASE_FILE: &str = "agentidp.db";
pub const KEYS_FILE: &str = "signing-keys.json";
pub const BOOTSTRAP_FILE: &str = "bootstrap.json";
/// Table names the local server uses on DynamoDB when `AGENTIDP_*_TABLE` are not set.
pub const LOCAL_TABLE_PREFIX: &str = "agentidp-local-";
/// How often the local server's embedded store deletes expired rows.
pub const EXPIRY_PURGE_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// Bodies are read up to this much before the API's own 64 KiB limit answers 413.
const READ_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// SQLite in the data directory: durable, no services needed.
    Embedded,
    /// DynamoDB, as the SDK's environment configures it (`AWS_ENDPOINT_URL_DYNAMODB` for
    /// DynamoDB Local). Missing tables are created.
    Dynamodb,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub kind: StoreKind,
    pub data_dir: PathBuf,
    /// How often the embedded store deletes expired rows, as DynamoDB's TTL does on AWS; `None`
    /// in a short-lived process such as the operator CLI.
    pub purge_expired_every: Option<Duration>,
    /// The DynamoDB tables, when `AGENTIDP_*_TABLE` name them; else the local server's own.
    pub tables: Option<TableNames>,
    /// The Secrets Manager secret of the signing keys (`AGENTIDP_SIGNING_KEY_SECRET_ID`); else
    /// the keys live in the data directory.
    pub signing_key_secret: Option<String>,
}

impl StoreOptions {
    /// The options of a store in `data_dir`, with the table names and the key secret read
    /// through `lookup`. Some table names but not all is an error naming a missing one: a
    /// silent fallback would mix the deployment's tables with the local server's.
    pub fn from_lookup(
        kind: StoreKind,
        data_dir: PathBuf,
        purge_expired_every: Option<Duration>,
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            kind,
            data_dir,
            purge_expired_every,
            tables: if TableNames::any_named(lookup) {
                Some(TableNames::from_lookup(lookup)?)
            } else {
                None
            },
            signing_key_secret: lookup(agentidp_aws::SIGNING_KEY_SECRET_VAR),
        })
    }
}

pub async fn open_store(options: &StoreOptions) -> Result<Arc<dyn Store>, String> {
    match options.kind {
        StoreKind::Embedded => {
            agentidp_core::files::create_private_dir(&options.data_dir)
                .map_err(|e| format!("creating {}: {e}", options.data_dir.display()))?;
            let store = Arc::new(
                SqliteStore::open(&options.data_dir.join(DATABASE_FILE))
                    .map_err(|e| Chain(&e).to_string())?,
            );
            if let Some(every) = options.purge_expired_every {
                spawn_expiry_purge(Arc::clone(&store), every);
            }
            Ok(store)
        }
        StoreKind::Dynamodb => {
            let names = options
                .tables
                .clone()
                .unwrap_or_else(|| TableNames::with_prefix(LOCAL_TABLE_PREFIX));
            let client = client_from_env().await;
            ensure_tables(&client, &names)
                .await
                .map_err(|e| Chain(&e).to_string())?;
            Ok(Arc::new(DynamoStore::new(client, names)))
        }
    }
}

/// Purges the embedded store's expired rows now and then every `every`. Reads already skip
/// them; this keeps the database file from growing for ever under a long-running server.
fn spawn_expiry_purge(store: Arc<SqliteStore>, every: Duration) {
    tokio::spawn(async move {
        // interval() refuses a zero period.
        let mut ticks = tokio::time::interval(every.max(Duration::from_secs(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.purge_expired(SystemClock.now()).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "expired rows purged from the embedded store"),
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "purging expired rows failed; next try in an interval")
                }
            }
        }
    });
}

/// Signing keys: Secrets Manager when `AGENTIDP_SIGNING_KEY_SECRET_ID` is set, else the data
/// directory's key file, generated on first start.
pub async fn key_source(config: &Config, options: &StoreOptions) -> Result<KeySource, String> {
    match &options.signing_key_secret {
        Some(secret_id) => {
            let sdk = agentidp_aws::sdk_config().await;
            let client = agentidp_aws::SecretsManagerClient::new(&sdk);
            Ok(agentidp_aws::signing_keys(client, secret_id.clone()))
        }
        None => {
            let keys_file = options.data_dir.join(KEYS_FILE);
            KeySource::load_or_create_file(&keys_file, config.signing_algorithm)
                .map_err(|e| Chain(&e).to_string())
        }
    }
}

pub async fn build_idp(config: Config, options: &StoreOptions) -> Result<Arc<Idp>, String> {
    let store = open_store(options).await?;
    let keys = key_source(&config, options).await?;
    let remote_keys =
        KeySetFetcher::new(config.key_fetch_network).map_err(|e| Chain(&e).to_string())?;
    let idp = Idp::new(
        config,
        store,
        keys,
        Arc::new(remote_keys),
        Arc::new(SystemClock),
    )
    .map_err(|e| Chain(&e).to_string())?;
    Ok(Arc::new(idp))
}

/// The credential file an operator reads after first start.
pub fn bootstrap_json(bootstrapped: &BootstrappedOrg) -> serde_json::Value {
    json!({
        "orgId": bootstrapped.org.org_id,
        "clientId": bootstrapped.admin.credential.client_id,
        "clientSecret": bootstrapped.admin.client_secret.expose(),
    })
}

/// On first start, with no organization yet, creates the default one and keeps its bootstrap
/// admin credential in `<data-dir>/bootstrap.json` (mode 0600).
pub async fn bootstrap_if_empty(
    idp: &Arc<Idp>,
    data_dir: &Path,
) -> Result<Option<BootstrappedOrg>, String> {
    if !idp
        .list_orgs()
        .await
        .map_err(|e| Chain(&e).to_string())?
        .is_empty()
    {
        return Ok(None);
    }
    let bootstrapped = idp
        .create_org("default", agentidp_core::domain::Plan::Free)
        .await
        .map_err(|e| Chain(&e).to_string())?;
    let text =
        serde_json::to_string_pretty(&bootstrap_json(&bootstrapped)).map_err(|e| e.to_string())?;
    agentidp_core::files::write_private(&data_dir.join(BOOTSTRAP_FILE), text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", data_dir.join(BOOTSTRAP_FILE).display()))?;
    Ok(Some(bootstrapped))
}

/// Runs the data migrations on every organization (idempotent: a second run changes nothing)
/// and returns what they changed, as `agentidp-admin migrate` prints it: one entry per agent
/// given scopes.
pub async fn migrate(idp: &Arc<Idp>) -> Result<Vec<serde_json::Value>, String> {
    let mut changed = Vec::new();
    for org in idp.list_orgs().await.map_err(|e| Chain(&e).to_string())? {
        let granted = idp
            .grant_new_management_scopes(org.org_id)
            .await
            .map_err(|e| Chain(&e).to_string())?;
        changed.extend(granted.into_iter().map(|grant| {
            json!({
                "orgId": org.org_id,
                "agentId": grant.agent_id,
                "name": grant.name,
                "addedScopes": grant.added,
            })
        }));
    }
    Ok(changed)
}

async fn forward(
    State(idp): State<Arc<Idp>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    // A body past the read limit is not kept; a stand-in one byte over the API's own limit
    // lets the handler answer 413 in the shape of the endpoint, with a request id, as for any
    // other oversized body.
    let body = match axum::body::to_bytes(body, READ_LIMIT).await {
        Ok(body) => body.to_vec(),
        Err(_) => vec![0; agentidp_http::MAX_BODY_BYTES + 1],
    };
    let origin = Origin {
        source_ip: Some(peer.ip().to_string()),
        ..Origin::default()
    };
    let request = ApiRequest::from_parts(parts, body, origin);
    let response = agentidp_http::handle(&idp, None, request).await;
    let (parts, body) = response.into_parts();
    axum::response::Response::from_parts(parts, axum::body::Body::from(body))
}

pub fn router(idp: Arc<Idp>) -> axum::Router {
    axum::Router::new().fallback(forward).with_state(idp)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    idp: Arc<Idp>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(idp).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
