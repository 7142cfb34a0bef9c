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
            .token_standing(std::slice::from_ref(&jti), org_id, &[agent.agent_id])
            .await
            .unwrap(),
        (false, vec![Some(agent.clone())])
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
            .token_standing(std::slice::from_ref(&jti), org_id, &[agent.agent_id])
            .await
            .unwrap(),
        (true, vec![Some(agent.clone())])
    );
    assert_eq!(
        store
            .token_standing(
                std::slice::from_ref(&jti),
                Uuid::new_v4(),
                &[agent.agent_id]
            )
            .await
            .unwrap(),
        (true, vec![None]),
        "another organization's agent is not found"
    );
}

pub async fn a_chains_standing_reads_every_token_id_and_agent_in_one_go<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let subject = self::agent(org_id, "subject", now_ms());
    let actor = self::agent(org_id, "actor", now_ms());
    let missing = Uuid::new_v4();
    for agent in [&subject, &actor] {
        store
            .commit(vec![Write::PutAgent {
                agent: agent.clone(),
                expected_version: None,
            }])
            .await
            .unwrap();
    }
    let (own, parent) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    // An agent may stand twice in a chain, and a token id too: the answer keeps the order.
    let chain = [subject.agent_id, actor.agent_id, missing, subject.agent_id];
    let jtis = [own.clone(), parent.clone(), parent.clone()];
    assert_eq!(
        store.token_standing(&jtis, org_id, &chain).await.unwrap(),
        (
            false,
            vec![
                Some(subject.clone()),
                Some(actor.clone()),
                None,
                Some(subject.clone())
            ]
        )
    );
    store
        .commit(vec![Write::RevokeToken {
            jti: parent.clone(),
            org_id,
            expires_at: now_ms() + Duration::hours(1),
        }])
        .await
        .unwrap();
    assert!(
        store.token_standing(&jtis, org_id, &chain).await.unwrap().0,
        "an ancestor's revocation is found with the token's own"
    );
}
