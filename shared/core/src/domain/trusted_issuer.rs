//! Trusted issuers (workload identity federation, RFC 7523 §2.1): the outside token issuers an
//! organization accepts tokens of, such as a Kubernetes cluster, GitHub Actions or a SPIFFE
//! trust domain. A federated credential maps one subject of one of them to an agent.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::client_keys::PublicKeys;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// Derived from the organization and `issuer` ([`TrustedIssuer::id_for`]), so that the token
    /// endpoint finds the issuer a federated credential names by key, and an organization
    /// cannot trust one issuer twice.
    pub issuer_id: Uuid,
    pub org_id: Uuid,
    /// Its tokens' `iss`, compared exactly. Never changes: another issuer is another record.
    pub issuer: String,
    /// What its tokens' `aud` must hold to be accepted here: an issuer's tokens for other
    /// relying parties are not ours to honour.
    pub audience: String,
    pub keys: PublicKeys,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: u64,
}

/// The namespace of trusted issuers' ids (a random UUID, fixed forever: ids depend on it).
const TRUSTED_ISSUER_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_4c3e_9d2a_4e57_8f10_3a7c_5e2b_91d4);

impl TrustedIssuer {
    /// The id of `issuer`'s record in the organization: a name-based UUID (RFC 9562 §5.5).
    pub fn id_for(org_id: Uuid, issuer: &str) -> Uuid {
        let org_namespace = Uuid::new_v5(&TRUSTED_ISSUER_NAMESPACE, org_id.as_bytes());
        Uuid::new_v5(&org_namespace, issuer.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_issuer_has_one_id_per_organization_and_different_ones_across_them() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let github = "https://token.actions.githubusercontent.com";
        assert_eq!(
            TrustedIssuer::id_for(a, github),
            TrustedIssuer::id_for(a, github)
        );
        assert_ne!(
            TrustedIssuer::id_for(a, github),
            TrustedIssuer::id_for(b, github)
        );
        assert_ne!(
            TrustedIssuer::id_for(a, github),
            TrustedIssuer::id_for(a, "https://kubernetes.default.svc")
        );
    }
}
