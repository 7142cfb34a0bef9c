//! Revoked tokens, alone and read together with their agent.

use std::sync::Arc;

use agentidp_core::store::{Store, Write};
use chrono::Duration;
use uuid::Uuid;

use super::{agent, now_ms};

pub async fn a_revoked_token_is_reported_and_revoking_it_again_is_harmless<S: Store + 'static>(
    store: Arc<S>,
) {
    let jti = Uuid::new_v4().to_string();
    let revoke = Write::RevokeToken {
        jti: jti.clone(),
        org_id: Uuid::new_v4(),
        expires_at: now_ms() + Duration::hours(1),
    };
    assert!(!store.is_token_revoked(&jti).await.unwrap());

    store.commit(vec![revoke.clone()]).await.unwrap();
    assert!(store.is_token_revoked(&jti).await.unwrap());
    store.commit(vec![revoke]).await.unwrap();
    assert!(store.is_token_revoked(&jti).await.unwrap());
    assert!(
        !store
            .is_token_revoked(&Uuid::new_v4().to_string())
            .await
            .unwrap()
    );
}

pub async fn a_tokens_standing_reads_its_revocation_and_its_agent_together<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let agent = self::agent(org_id, "standing", now_ms());
    store
        .commit(vec![Write::PutAgent {
            agent: agent.clone(),
            expected_version: None,
        }])
        .await
        .unwrap();
    let jti = Uuid::new_v4().to_string();
    assert_eq!(
        store
            .token_standing(&jti, org_id, agent.agent_id)
            .await
            .unwrap(),
        (false, Some(agent.clone()))
    );
    store
        .commit(vec![Write::RevokeToken {
            jti: jti.clone(),
            org_id,
            expires_at: now_ms() + Duration::hours(1),
        }])
        .await
        .unwrap();
    assert_eq!(
        store
            .token_standing(&jti, org_id, agent.agent_id)
            .await
            .unwrap(),
        (true, Some(agent.clone()))
    );
    assert_eq!(
        store
            .token_standing(&jti, Uuid::new_v4(), agent.agent_id)
            .await
            .unwrap(),
        (true, None),
        "another organization's agent is not found"
    );
}
