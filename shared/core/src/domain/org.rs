//! Organizations own every record. Each has a plan, and the plan sets its limits.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Enterprise,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Enterprise => "enterprise",
        }
    }

    pub fn parse(text: &str) -> Option<Plan> {
        match text {
            "free" => Some(Plan::Free),
            "enterprise" => Some(Plan::Enterprise),
            _ => None,
        }
    }
}

/// What one organization may use. The free plan's figures come from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanLimits {
    /// Agents that are not decommissioned.
    pub max_agents: u64,
    pub max_active_credentials_per_agent: u64,
    /// Token requests per calendar month (UTC).
    pub monthly_token_requests: u64,
    pub audit_retention_days: u32,
    /// Registered resources (RFC 8707 audiences).
    pub max_resources: u64,
    /// Trusted issuers (workload identity federation).
    pub max_trusted_issuers: u64,
}

impl PlanLimits {
    pub const FREE_DEFAULT: PlanLimits = PlanLimits {
        max_agents: 100,
        max_active_credentials_per_agent: 10,
        monthly_token_requests: 10_000,
        audit_retention_days: 90,
        max_resources: 10,
        max_trusted_issuers: 5,
    };

    /// Enterprise is bounded too: an agent's state change rewrites its active credentials in one
    /// transaction, and DynamoDB allows 100 items per transaction.
    pub const ENTERPRISE: PlanLimits = PlanLimits {
        max_agents: 100_000,
        max_active_credentials_per_agent: 50,
        monthly_token_requests: 1_000_000_000,
        audit_retention_days: 365,
        max_resources: u64::MAX,
        max_trusted_issuers: u64::MAX,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub org_id: Uuid,
    pub name: String,
    pub plan: Plan,
    pub created_at: DateTime<Utc>,
}
