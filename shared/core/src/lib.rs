//! AgentIdP's core: the domain and its rules, validation, client secrets, token signing, the
//! operations (`service`) and the store traits they write through. Nothing here knows HTTP,
//! AWS, SQLite or Lambda; those layers depend on this crate, never the other way round
//! (docs/architecture.md).

pub mod client_keys;
pub mod config;
pub mod domain;
pub mod dpop;
pub mod error;
pub mod files;
pub mod remote_keys;
pub mod secret;
pub mod service;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod validation;
