//! Agents and their lifecycle: `active` ⇄ `suspended`, either → `decommissioned` (terminal).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Active,
    Suspended,
    Decommissioned,
}

impl AgentStatus {
    pub const ALL: [AgentStatus; 3] = [
        AgentStatus::Active,
        AgentStatus::Suspended,
        AgentStatus::Decommissioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Suspended => "suspended",
            AgentStatus::Decommissioned => "decommissioned",
        }
    }

    pub fn parse(text: &str) -> Option<AgentStatus> {
        AgentStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The lifecycle's edges. Staying in the same state is not a transition.
    pub fn can_become(self, next: AgentStatus) -> bool {
        matches!(
            (self, next),
            (AgentStatus::Active, AgentStatus::Suspended)
                | (AgentStatus::Suspended, AgentStatus::Active)
                | (AgentStatus::Active, AgentStatus::Decommissioned)
                | (AgentStatus::Suspended, AgentStatus::Decommissioned)
        )
    }

    pub fn may_obtain_tokens(self) -> bool {
        self == AgentStatus::Active
    }

    pub fn may_receive_credentials(self) -> bool {
        self == AgentStatus::Active
    }

    /// Tokens of a suspended agent introspect as inactive until it is reactivated.
    pub fn tokens_are_honoured(self) -> bool {
        self == AgentStatus::Active
    }

    /// A decommissioned agent is kept for audit, but nothing about it changes any more.
    pub fn is_mutable(self) -> bool {
        self != AgentStatus::Decommissioned
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub agent_id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub capabilities: Vec<String>,
    pub scopes: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub status: AgentStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub decommissioned_at: Option<DateTime<Utc>>,
    /// Credentials in status `active`, expired or not, counted against the plan.
    pub active_credentials: u64,
    /// Who may act for this agent by token exchange, and with which scopes. `None`: no one.
    pub delegation: Option<DelegationPolicy>,
    /// The kill switch: a token whose chain began (`AccessTokenClaims::origin_iat`) at or before
    /// this instant is inactive, wherever the agent stands in its chain.
    pub tokens_not_before: Option<DateTime<Utc>>,
    /// Whether every token of the agent must be DPoP-bound (RFC 9449 §5.2's
    /// `dpop_bound_access_tokens`): a token request without a proof is refused, and a token
    /// issued to it unbound, before this was set, is no longer honoured.
    pub require_dpop: bool,
    /// Bumped on every write; writes are conditional on the version they read.
    pub version: u64,
}

/// An agent's consent to be acted for (RFC 8693 §4.4 `may_act`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DelegationPolicy {
    /// The agents that may act for it, at most [`DelegationPolicy::MAX_ACTORS`].
    pub may_act: Vec<Uuid>,
    /// The scopes an actor may get, within the subject token's; `None`: any of those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

impl DelegationPolicy {
    pub const MAX_ACTORS: usize = 20;

    pub fn permits(&self, actor: Uuid) -> bool {
        self.may_act.contains(&actor)
    }
}

impl Agent {
    /// Whether a token that began at `origin_iat` (seconds) was issued before the kill switch,
    /// and so is no longer honoured. A token issued in the same second as the switch counts as
    /// before it: `iat` has whole seconds only.
    pub fn stopped_tokens_from(&self, origin_iat: i64) -> bool {
        self.tokens_not_before
            .is_some_and(|at| origin_iat.saturating_mul(1000) <= at.timestamp_millis())
    }
}

impl Agent {
    /// The key that makes names unique within an organization: case and surrounding space do not
    /// make a different name.
    pub fn name_key(name: &str) -> String {
        name.trim().to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_of_states_is_allowed_or_refused_as_the_lifecycle_says() {
        use AgentStatus::*;
        let allowed = [
            (Active, Suspended),
            (Suspended, Active),
            (Active, Decommissioned),
            (Suspended, Decommissioned),
        ];
        for from in AgentStatus::ALL {
            for to in AgentStatus::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn decommissioned_is_terminal() {
        for to in AgentStatus::ALL {
            assert!(!AgentStatus::Decommissioned.can_become(to));
        }
        assert!(!AgentStatus::Decommissioned.is_mutable());
    }

    #[test]
    fn only_an_active_agent_gets_tokens_and_credentials() {
        for status in AgentStatus::ALL {
            let active = status == AgentStatus::Active;
            assert_eq!(status.may_obtain_tokens(), active);
            assert_eq!(status.may_receive_credentials(), active);
            assert_eq!(status.tokens_are_honoured(), active);
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in AgentStatus::ALL {
            assert_eq!(AgentStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(AgentStatus::parse("Active"), None);
    }

    #[test]
    fn names_differing_only_in_case_and_padding_share_a_key() {
        assert_eq!(
            Agent::name_key("  Billing-Bot "),
            Agent::name_key("billing-bot")
        );
    }
}
