//! `template.yaml` held to the code:
//!
//! - every route of `ROUTES` is routed by the template to the function of its group, and the
//!   template routes nothing else;
//! - every table of `TABLE_SPECS` exists with the same keys, indexes and TTL attribute (and the
//!   settings every data table must have), and there is no other table;
//! - each function's environment names every table, and the bootstrap command in the outputs
//!   names every table;
//! - only the token and rotation functions can read the private signing keys and decrypt them
//!   (IAM, and the policy of the KMS key that encrypts them); the functions that only verify
//!   tokens read the public keys, and each function is told only of the secret it reads;
//! - the routes that authenticate clients with bcrypt share the token route's throttling;
//! - each function's IAM policy grants exactly the DynamoDB actions, on exactly the tables and
//!   indexes, that the function uses. What it uses is observed, not listed by hand: every sample
//!   event of the function (`events/`) runs on DynamoDB Local through the real `DynamoStore`,
//!   whose SDK client records each request's operation, table and index. The events cover every
//!   route and the error paths that reach the store, so a new store call on any path shows up
//!   here as a missing grant, and a grant nothing uses as a surplus one.
//!
//! The IAM part needs DynamoDB Local (`AWS_ENDPOINT_URL_DYNAMODB`, which `scripts/test.sh`
//! starts); without it that test fails rather than pass without having run.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails loudly on the first surprise"
)]

#[expect(
    dead_code,
    reason = "the template checks use the fixture's records, not its tokens"
)]
mod fixture;

// The modules live in template/ beside this file, not in tests/ where a crate root looks for
// them: cargo makes every file in tests/ a test target of its own.
#[path = "template/support.rs"]
mod support;

#[path = "template/functions.rs"]
mod functions;
#[path = "template/iam.rs"]
mod iam;
#[path = "template/routes.rs"]
mod routes;
#[path = "template/signing_keys.rs"]
mod signing_keys;
#[path = "template/tables.rs"]
mod tables;
