//! Atomic batches: all writes land or none do, and a failed condition names its index
//! and its guard.

use std::sync::Arc;

use agentidp_core::domain::{
    Agent, AuditAction, AuditEvent, Credential, CredentialStatus, Organization, Outcome, Plan,
};
use agentidp_core::store::{Guard, Store, StoreError, Usage, Write};
use chrono::Duration;
use uuid::Uuid;

use super::{
    agent, assert_condition_failed, audit_event, audit_query, claim, credential, new_agent,
    new_credential, now_ms, org,
};

pub async fn a_failed_name_claim_leaves_neither_the_agent_nor_the_audit_event<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    store.commit(vec![claim(org_id, "taken")]).await.unwrap();

    let late = agent(org_id, "Taken", now_ms());
    let event = audit_event(
        org_id,
        late.created_at,
        AuditAction::AgentCreated,
        Outcome::Success,
        Some(late.agent_id),
    );
    let result = store
        .commit(vec![
            new_agent(&late),
            Write::ClaimAgentName {
                org_id,
                name_key: Agent::name_key(&late.name),
                agent_id: late.agent_id,
            },
            Write::Audit(event.clone()),
        ])
        .await;

    assert_condition_failed(&result, 1);
    assert_eq!(store.get_agent(org_id, late.agent_id).await.unwrap(), None);
    assert_eq!(store.list_agents(org_id).await.unwrap(), Vec::new());
    let now = now_ms();
    let not_before = now - Duration::days(1);
    assert_eq!(
        store
            .get_audit_event(org_id, event.event_id, not_before, now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .query_audit(&audit_query(org_id, now))
            .await
            .unwrap()
            .events,
        Vec::new()
    );
}

/// State with one of everything, and a batch that touches all of it with every kind of write.
struct Fixture {
    org: Organization,
    agent: Agent,
    credential: Credential,
    new_credential: Credential,
    event: AuditEvent,
    jti: String,
    batch: Vec<Write>,
}

async fn fixture<S: Store>(store: &S) -> Fixture {
    let org = org(Plan::Free);
    let agent = agent(org.org_id, "held", now_ms());
    let credential = credential(org.org_id, agent.agent_id, now_ms());
    store
        .commit(vec![
            Write::CreateOrg(org.clone()),
            new_agent(&agent),
            claim(org.org_id, "held"),
            new_credential(&credential),
        ])
        .await
        .unwrap();

    let new_credential = self::credential(org.org_id, agent.agent_id, now_ms());
    let event = audit_event(
        org.org_id,
        now_ms(),
        AuditAction::AgentUpdated,
        Outcome::Success,
        Some(agent.agent_id),
    );
    let jti = Uuid::new_v4().to_string();
    let batch = vec![
        Write::SetPlan {
            org_id: org.org_id,
            plan: Plan::Enterprise,
        },
        Write::PutAgent {
            agent: Agent {
                name: "renamed".into(),
                version: 2,
                ..agent.clone()
            },
            expected_version: Some(1),
        },
        claim(org.org_id, "renamed"),
        Write::ReleaseAgentName {
            org_id: org.org_id,
            name_key: "held".into(),
        },
        Write::PutCredential {
            credential: Credential {
                status: CredentialStatus::Revoked,
                version: 2,
                ..credential.clone()
            },
            expected_version: Some(1),
        },
        self::new_credential(&new_credential),
        Write::CountAgents {
            org_id: org.org_id,
            delta: 1,
            limit: 10,
        },
        Write::CountTokenRequest {
            org_id: org.org_id,
            month: "2026-03".into(),
            limit: 10,
        },
        Write::RevokeToken {
            jti: jti.clone(),
            org_id: org.org_id,
            expires_at: now_ms() + Duration::hours(1),
        },
        Write::Audit(event.clone()),
    ];
    Fixture {
        org,
        agent,
        credential,
        new_credential,
        event,
        jti,
        batch,
    }
}

pub async fn a_failed_last_write_undoes_every_kind_of_earlier_write<S: Store + 'static>(
    store: Arc<S>,
) {
    let Fixture {
        org,
        agent,
        credential,
        new_credential,
        event,
        jti,
        mut batch,
    } = fixture(&*store).await;
    // A write on an item the batch has not touched (a batch touches each item at most once),
    // whose condition fails: an agent that does not exist at version 1.
    batch.push(Write::PutAgent {
        agent: self::agent(org.org_id, "ghost", now_ms()),
        expected_version: Some(1),
    });
    let last = batch.len() - 1;

    assert_condition_failed(&store.commit(batch).await, last);

    let org_id = org.org_id;
    assert_eq!(store.get_org(org_id).await.unwrap(), Some(org));
    assert_eq!(
        store.get_agent(org_id, agent.agent_id).await.unwrap(),
        Some(agent)
    );
    assert_eq!(
        store
            .credential_by_client_id(credential.client_id)
            .await
            .unwrap(),
        Some(credential)
    );
    assert_eq!(
        store
            .credential_by_client_id(new_credential.client_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.usage(org_id, "2026-03").await.unwrap(),
        Usage::default()
    );
    assert!(!store.is_token_revoked(&jti).await.unwrap());
    let now = now_ms();
    assert_eq!(
        store
            .get_audit_event(org_id, event.event_id, now - Duration::days(1), now)
            .await
            .unwrap(),
        None
    );
    // The claim made by the batch is free, and the one it released is still held.
    store.commit(vec![claim(org_id, "renamed")]).await.unwrap();
    assert_condition_failed(&store.commit(vec![claim(org_id, "held")]).await, 0);
}

pub async fn a_batch_of_every_kind_of_write_lands_together<S: Store + 'static>(store: Arc<S>) {
    let Fixture {
        org,
        agent,
        credential,
        new_credential,
        event,
        jti,
        batch,
    } = fixture(&*store).await;

    store.commit(batch).await.unwrap();

    let org_id = org.org_id;
    assert_eq!(
        store.get_org(org_id).await.unwrap().map(|o| o.plan),
        Some(Plan::Enterprise)
    );
    let renamed = Agent {
        name: "renamed".into(),
        version: 2,
        ..agent.clone()
    };
    assert_eq!(
        store.get_agent(org_id, agent.agent_id).await.unwrap(),
        Some(renamed)
    );
    let revoked = Credential {
        status: CredentialStatus::Revoked,
        version: 2,
        ..credential.clone()
    };
    assert_eq!(
        store
            .credential_by_client_id(credential.client_id)
            .await
            .unwrap(),
        Some(revoked)
    );
    assert_eq!(
        store
            .credential_by_client_id(new_credential.client_id)
            .await
            .unwrap(),
        Some(new_credential)
    );
    assert_eq!(
        store.usage(org_id, "2026-03").await.unwrap(),
        Usage {
            agents: 1,
            token_requests: 1,
            resources: 0,
            trusted_issuers: 0,
        }
    );
    assert!(store.is_token_revoked(&jti).await.unwrap());
    let now = now_ms();
    assert_eq!(
        store
            .get_audit_event(org_id, event.event_id, now - Duration::days(1), now)
            .await
            .unwrap(),
        Some(event)
    );
    assert_condition_failed(&store.commit(vec![claim(org_id, "renamed")]).await, 0);
    store.commit(vec![claim(org_id, "held")]).await.unwrap();
}

pub async fn the_first_failed_condition_is_reported_at_its_index<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    store.commit(vec![claim(org_id, "taken")]).await.unwrap();
    let harmless = || Write::RevokeToken {
        jti: Uuid::new_v4().to_string(),
        org_id,
        expires_at: now_ms(),
    };

    for failing in 0..4 {
        let mut batch: Vec<Write> = (0..4).map(|_| harmless()).collect();
        batch[failing] = claim(org_id, "taken");
        assert_condition_failed(&store.commit(batch).await, failing);
    }
    let two_failures = vec![
        harmless(),
        Write::SetPlan {
            org_id: Uuid::new_v4(),
            plan: Plan::Free,
        },
        claim(org_id, "taken"),
    ];
    assert_condition_failed(&store.commit(two_failures).await, 1);
}

pub async fn each_failed_condition_names_its_guard_wherever_it_stands<S: Store + 'static>(
    store: Arc<S>,
) {
    let org = org(Plan::Free);
    let org_id = org.org_id;
    let existing = agent(org_id, "existing", now_ms());
    let existing_credential = credential(org_id, existing.agent_id, now_ms());
    store
        .commit(vec![
            Write::CreateOrg(org.clone()),
            new_agent(&existing),
            new_credential(&existing_credential),
            claim(org_id, "taken"),
            Write::CountAgents {
                org_id,
                delta: 1,
                limit: 1,
            },
            Write::CountTokenRequest {
                org_id,
                month: "2026-03".into(),
                limit: 1,
            },
        ])
        .await
        .unwrap();
    let mut stale = existing.clone();
    stale.version += 1;
    let mut stale_credential = existing_credential.clone();
    stale_credential.version += 1;
    let failing: Vec<(Write, Guard)> = vec![
        (Write::CreateOrg(org.clone()), Guard::OrgIsNew),
        (
            Write::SetPlan {
                org_id: Uuid::new_v4(),
                plan: Plan::Enterprise,
            },
            Guard::OrgExists,
        ),
        (
            Write::PutAgent {
                agent: stale,
                expected_version: Some(7),
            },
            Guard::StaleVersion,
        ),
        (
            Write::PutCredential {
                credential: stale_credential,
                expected_version: Some(7),
            },
            Guard::StaleVersion,
        ),
        (claim(org_id, "taken"), Guard::NameTaken),
        (
            Write::CountAgents {
                org_id,
                delta: 1,
                limit: 1,
            },
            Guard::AgentLimit,
        ),
        (
            Write::CountTokenRequest {
                org_id,
                month: "2026-03".into(),
                limit: 1,
            },
            Guard::TokenQuota,
        ),
    ];
    for (write, guard) in failing {
        assert_eq!(write.guard(), Some(guard));
        // First, and behind an unconditional write: the guard, not the place, says what failed.
        for batch in [
            vec![write.clone()],
            vec![
                Write::RevokeToken {
                    jti: Uuid::new_v4().to_string(),
                    org_id,
                    expires_at: now_ms(),
                },
                write.clone(),
            ],
        ] {
            let result = store.commit(batch).await;
            assert!(
                matches!(result, Err(StoreError::ConditionFailed { guard: failed, .. }) if failed == guard),
                "expected {guard:?} to fail, got {result:?}"
            );
        }
    }
}
