//! Domain types and their lifecycle rules. Nothing here does I/O.

pub mod agent;
pub mod audit;
pub mod credential;
pub mod org;
pub mod resource;
pub mod scope;
pub mod time;
pub mod trusted_issuer;

pub use agent::{Agent, AgentStatus};
pub use audit::{Actor, AuditAction, AuditEvent, Outcome};
pub use credential::{
    Credential, CredentialProof, CredentialStatus, CredentialType, FederatedIdentity,
};
pub use org::{Organization, Plan, PlanLimits};
pub use resource::{Resource, ResourceTarget};
pub use scope::{Scope, ScopeSet};
pub use trusted_issuer::TrustedIssuer;
