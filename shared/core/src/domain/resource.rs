//! Resources (RFC 8707): the services and MCP servers an organization registers, each known by
//! an absolute URI, its identifier, and the scopes it understands.

use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub resource_id: Uuid,
    pub org_id: Uuid,
    /// Normalised by [`crate::validation::resource_identifier`]: unique in the organization.
    pub identifier: String,
    pub name: String,
    pub description: Option<String>,
    /// Never a management scope: those are for the management API's own audience.
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Bumped on every write; writes are conditional on the version they read.
    pub version: u64,
}

/// What a token request for a resource needs to know of it, kept on the organization's claim of
/// the identifier so that one read by identifier finds it: the token endpoint reads it in the
/// same round trip as the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceTarget {
    pub org_id: Uuid,
    pub resource_id: Uuid,
    pub identifier: String,
    pub scopes: Vec<String>,
}

impl Resource {
    pub fn target(&self) -> ResourceTarget {
        ResourceTarget {
            org_id: self.org_id,
            resource_id: self.resource_id,
            identifier: self.identifier.clone(),
            scopes: self.scopes.clone(),
        }
    }
}
