//! The signing-key rotation (`agentidp_aws::rotation`), the publishing of the public keys, and
//! the functions' key sources (`CachedKeys` over `SecretsManagerSecret`) against a real Secrets Manager API: moto_server, at
//! `AGENTIDP_TEST_MOTO_ENDPOINT`. `scripts/test.sh` starts it; without it these tests fail rather
//! than pass without having run. Each test uses secrets of its own (random names), so the tests
//! share one moto_server.
//!
//! The tests play Secrets Manager's part in a rotation: they call the four steps in order for one
//! version id, as the service does. moto's own RotateSecret would need a Lambda function inside
//! moto, and it answers a read without a stage with the version the secret was created with, so
//! reads here name the stage (`AWSCURRENT`) as the rotation code does.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fails loudly on the first surprise"
)]

// The modules live in key_rotation/ beside this file, not in tests/ where a crate root looks for
// them: cargo makes every file in tests/ a test target of its own.
#[path = "key_rotation/support.rs"]
mod support;

#[path = "key_rotation/key_sources.rs"]
mod key_sources;
#[path = "key_rotation/publishing.rs"]
mod publishing;
#[path = "key_rotation/steps.rs"]
mod steps;
