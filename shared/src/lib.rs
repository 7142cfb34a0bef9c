//! AgentIdP's library: the domain and its rules, validation, secrets, token signing, storage,
//! and the HTTP handlers that every Lambda function and the local server share.

pub mod api;
pub mod aws;
pub mod config;
pub mod domain;
pub mod files;
pub mod lambda;
pub mod rotation;
pub mod secret;
pub mod service;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod validation;
