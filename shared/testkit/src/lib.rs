//! What the tests share: clients for DynamoDB Local and moto_server (the services
//! `scripts/test-services.sh` starts), the stores a test runs on, and [`per_store!`].
//!
//! A test that needs one of these services fails when its endpoint is not set, rather than pass
//! without having run.

#![expect(
    clippy::expect_used,
    reason = "a test kit: a missing service or a failed set-up fails the test loudly"
)]

use std::path::Path;
use std::sync::{Arc, LazyLock};

use agentidp_core::store::Store;
use agentidp_store_dynamodb::{DynamoStore, TableNames, ensure_tables};
use agentidp_store_sqlite::SqliteStore;
use tokio::sync::OnceCell;

/// The region and the dummy credentials the local services accept.
const REGION: &str = "us-east-1";
const PROVIDER: &str = "agentidp-testkit";

// ---------------------------------------------------------------------------------------------
// DynamoDB Local

/// DynamoDB Local's endpoint, as `scripts/test-services.sh` sets it.
pub fn dynamodb_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect(
        "AWS_ENDPOINT_URL_DYNAMODB is not set. This test needs DynamoDB Local: run \
         scripts/test.sh, or `source scripts/test-services.sh && start_test_services` and then \
         cargo test",
    )
}

/// Configuration for a DynamoDB at `endpoint` (DynamoDB Local, or a proxy in front of it),
/// for a caller to add timeouts, retries or interceptors to. Clients are built per test: a
/// client's connections belong to the runtime that opened them, and each test has its own.
pub fn dynamodb_config_at(endpoint: &str) -> aws_sdk_dynamodb::config::Builder {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("test", "test", None, None, PROVIDER))
        .endpoint_url(endpoint)
}

/// Configuration for DynamoDB Local; see [`dynamodb_config_at`].
pub fn dynamodb_config() -> aws_sdk_dynamodb::config::Builder {
    dynamodb_config_at(&dynamodb_endpoint())
}

/// A client of DynamoDB Local with the SDK's default timeouts and retries.
pub fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(dynamodb_config().build())
}

/// One set of tables per test process, so concurrent runs never see each other's data.
static TABLES: LazyLock<TableNames> = LazyLock::new(|| {
    TableNames::with_prefix(&format!("agentidp-test-{}", uuid::Uuid::new_v4().simple()))
});
static TABLES_CREATED: OnceCell<()> = OnceCell::const_new();

/// This test process's tables in DynamoDB Local, created by the first call.
pub async fn dynamodb_tables() -> TableNames {
    TABLES_CREATED
        .get_or_try_init(|| async { ensure_tables(&dynamodb_client(), &TABLES).await })
        .await
        .expect("the test tables are created in DynamoDB Local");
    TABLES.clone()
}

/// The DynamoDB store on this test process's tables in DynamoDB Local.
pub async fn dynamodb_store() -> Arc<dyn Store> {
    Arc::new(DynamoStore::new(dynamodb_client(), dynamodb_tables().await))
}

// ---------------------------------------------------------------------------------------------
// The embedded store

/// The local server's store as it runs: a database file with its writer and reader connections,
/// in a new directory under `scratch`. Callers pass cargo's per-target scratch directory,
/// `env!("CARGO_TARGET_TMPDIR")` (target/tmp, emptied by `cargo clean`): cargo sets it only
/// when it compiles an integration test or a benchmark, so this library cannot read it itself.
pub fn embedded_store_in(scratch: impl AsRef<Path>) -> Arc<dyn Store> {
    // Kept, not deleted on drop: the store must outlive this function, and its directory with it.
    let dir = tempfile::tempdir_in(scratch)
        .expect("a scratch directory")
        .keep();
    Arc::new(SqliteStore::open(&dir.join("agentidp.sqlite")).expect("a file-backed store opens"))
}

/// Expands the given async test functions, each taking an `Arc<dyn Store>`, into one test per
/// store: `embedded` and `dynamodb` modules. The calling crate must be an integration test (for
/// `CARGO_TARGET_TMPDIR`) with tokio among its dependencies.
#[macro_export]
macro_rules! per_store {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::embedded_store_in(::std::env!("CARGO_TARGET_TMPDIR")))
                        .await;
                }
            )*
        }
        mod dynamodb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::dynamodb_store().await).await;
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Secrets Manager on moto_server

/// moto_server's endpoint, as `scripts/test-services.sh` sets it.
pub fn moto_endpoint() -> String {
    std::env::var("AGENTIDP_TEST_MOTO_ENDPOINT").expect(
        "AGENTIDP_TEST_MOTO_ENDPOINT is not set. This test needs moto_server: run \
         scripts/test.sh, or `source scripts/test-services.sh && start_test_services` and then \
         cargo test",
    )
}

/// Configuration for a Secrets Manager at `endpoint` (moto_server, or a proxy in front of it),
/// for a caller to add timeouts or retries to.
pub fn secrets_manager_config_at(endpoint: &str) -> aws_sdk_secretsmanager::config::Builder {
    use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
    aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("test", "test", None, None, PROVIDER))
        .endpoint_url(endpoint)
}

/// Configuration for moto_server's Secrets Manager; see [`secrets_manager_config_at`].
pub fn secrets_manager_config() -> aws_sdk_secretsmanager::config::Builder {
    secrets_manager_config_at(&moto_endpoint())
}

/// A client of moto_server's Secrets Manager with the SDK's default timeouts and retries.
pub fn secrets_manager_client() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::from_conf(secrets_manager_config().build())
}
