//! End-to-end tests over real HTTP against the local server, each on the embedded store and on
//! DynamoDB Local (started by `scripts/test.sh`).

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails loudly on the first surprise"
)]

mod client;
mod support;

mod audit_trail;
mod bad_input;
mod brute_force;
mod credentials;
mod delegation;
mod discovery;
mod dpop;
mod error_bodies;
mod faults;
mod federation;
mod isolation;
mod lifecycle;
mod limits;
mod migrations;
mod oauth;
mod private_key_jwt;
mod races;
mod resource_tokens;
mod resources;
mod round_trips;
mod scopes;
mod takeover;
