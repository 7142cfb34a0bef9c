//! Agents and their name claims: reads, versioned updates, isolation, listing order.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentidp_core::domain::{Agent, AgentStatus};
use agentidp_core::store::{Store, Write};
use chrono::Duration;
use uuid::Uuid;

use super::{agent, assert_condition_failed, assert_winners, claim, new_agent, now_ms, race};

pub async fn an_agent_with_metadata_and_capabilities_reads_back_equal<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let created = now_ms();
    let mut decommissioned = agent(org_id, "Billing Bot", created);
    decommissioned.status = AgentStatus::Decommissioned;
    decommissioned.updated_at = created + Duration::milliseconds(1234);
    decommissioned.decommissioned_at = Some(decommissioned.updated_at);
    decommissioned.active_credentials = 7;
    decommissioned.version = 12;
    let suspended = Agent {
        status: AgentStatus::Suspended,
        ..agent(org_id, "Ünïcödé 🤖", created)
    };
    store
        .commit(vec![new_agent(&decommissioned), new_agent(&suspended)])
        .await
        .unwrap();

    for expected in [decommissioned, suspended] {
        assert_eq!(
            store.get_agent(org_id, expected.agent_id).await.unwrap(),
            Some(expected)
        );
    }
}

pub async fn an_agent_with_every_optional_field_empty_reads_back_equal<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let bare = Agent {
        description: None,
        owner: None,
        capabilities: Vec::new(),
        scopes: Vec::new(),
        metadata: BTreeMap::new(),
        ..agent(org_id, "bare", now_ms())
    };
    store.commit(vec![new_agent(&bare)]).await.unwrap();
    assert_eq!(
        store.get_agent(org_id, bare.agent_id).await.unwrap(),
        Some(bare)
    );
}

pub async fn creating_an_agent_that_already_exists_fails<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    let first = agent(org_id, "first", now_ms());
    store.commit(vec![new_agent(&first)]).await.unwrap();

    let overwrite = Agent {
        name: "overwrite".into(),
        ..first.clone()
    };
    assert_condition_failed(&store.commit(vec![new_agent(&overwrite)]).await, 0);
    assert_eq!(
        store.get_agent(org_id, first.agent_id).await.unwrap(),
        Some(first)
    );
}

pub async fn updating_an_agent_needs_the_version_that_is_stored<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    let v1 = agent(org_id, "versioned", now_ms());
    store.commit(vec![new_agent(&v1)]).await.unwrap();

    let v2 = Agent {
        status: AgentStatus::Suspended,
        version: 2,
        ..v1.clone()
    };
    store
        .commit(vec![Write::PutAgent {
            agent: v2.clone(),
            expected_version: Some(1),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.get_agent(org_id, v1.agent_id).await.unwrap(),
        Some(v2.clone())
    );

    let stale = Agent {
        name: "stale".into(),
        version: 2,
        ..v1.clone()
    };
    assert_condition_failed(
        &store
            .commit(vec![Write::PutAgent {
                agent: stale,
                expected_version: Some(1),
            }])
            .await,
        0,
    );
    let ahead = Agent {
        name: "ahead".into(),
        version: 4,
        ..v1.clone()
    };
    assert_condition_failed(
        &store
            .commit(vec![Write::PutAgent {
                agent: ahead,
                expected_version: Some(3),
            }])
            .await,
        0,
    );
    assert_eq!(
        store.get_agent(org_id, v1.agent_id).await.unwrap(),
        Some(v2)
    );

    let missing = agent(org_id, "missing", now_ms());
    assert_condition_failed(
        &store
            .commit(vec![Write::PutAgent {
                agent: missing.clone(),
                expected_version: Some(1),
            }])
            .await,
        0,
    );
    assert_eq!(
        store.get_agent(org_id, missing.agent_id).await.unwrap(),
        None
    );
}

pub async fn parallel_updates_of_one_agent_version_let_exactly_one_win<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let v1 = agent(org_id, "contended", now_ms());
    store.commit(vec![new_agent(&v1)]).await.unwrap();

    let candidates: Vec<Agent> = (0..16)
        .map(|i| Agent {
            description: Some(format!("writer {i}")),
            version: 2,
            ..v1.clone()
        })
        .collect();
    let batches = candidates
        .iter()
        .map(|a| {
            vec![Write::PutAgent {
                agent: a.clone(),
                expected_version: Some(1),
            }]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 1);
    let winner = results.iter().position(Result::is_ok).unwrap();
    assert_eq!(
        store.get_agent(org_id, v1.agent_id).await.unwrap().as_ref(),
        Some(&candidates[winner])
    );
}

pub async fn another_organizations_agent_is_invisible<S: Store + 'static>(store: Arc<S>) {
    let owner = Uuid::new_v4();
    let stranger = Uuid::new_v4();
    let owned = agent(owner, "owned", now_ms());
    store.commit(vec![new_agent(&owned)]).await.unwrap();

    assert_eq!(
        store.get_agent(stranger, owned.agent_id).await.unwrap(),
        None
    );
    assert_eq!(store.list_agents(stranger).await.unwrap(), Vec::new());
    assert_eq!(store.get_agent(owner, Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(store.list_agents(owner).await.unwrap(), vec![owned]);
}

pub async fn agents_are_listed_oldest_first_with_ties_broken_by_id<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let t = now_ms();
    let mut agents = vec![
        agent(org_id, "newest", t + Duration::seconds(2)),
        agent(org_id, "tie-a", t),
        agent(org_id, "middle", t + Duration::milliseconds(1)),
        agent(org_id, "tie-b", t),
        agent(org_id, "tie-c", t),
    ];
    store
        .commit(agents.iter().map(new_agent).collect())
        .await
        .unwrap();
    store
        .commit(vec![new_agent(&agent(Uuid::new_v4(), "elsewhere", t))])
        .await
        .unwrap();

    agents.sort_by_key(|a| (a.created_at, a.agent_id));
    assert_eq!(store.list_agents(org_id).await.unwrap(), agents);
}

// ----------------------------------------------------------------------------------------------
// Agent names.

pub async fn a_claimed_agent_name_is_taken_until_released<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    store
        .commit(vec![claim(org_id, "billing-bot")])
        .await
        .unwrap();
    assert_condition_failed(&store.commit(vec![claim(org_id, "billing-bot")]).await, 0);

    // The key is per organization.
    store
        .commit(vec![claim(Uuid::new_v4(), "billing-bot")])
        .await
        .unwrap();
    store
        .commit(vec![claim(org_id, "billing-bot-2")])
        .await
        .unwrap();

    let release = Write::ReleaseAgentName {
        org_id,
        name_key: "billing-bot".into(),
    };
    store.commit(vec![release.clone()]).await.unwrap();
    // Releasing is unconditional, so releasing a free name succeeds too.
    store.commit(vec![release]).await.unwrap();
    store
        .commit(vec![claim(org_id, "billing-bot")])
        .await
        .unwrap();
    assert_condition_failed(&store.commit(vec![claim(org_id, "billing-bot")]).await, 0);
}

pub async fn parallel_claims_of_one_agent_name_let_exactly_one_win<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let batches = (0..16)
        .map(|_| {
            let contender = agent(org_id, "Popular", now_ms());
            vec![
                Write::ClaimAgentName {
                    org_id,
                    name_key: Agent::name_key(&contender.name),
                    agent_id: contender.agent_id,
                },
                new_agent(&contender),
            ]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 1);
    assert_eq!(store.list_agents(org_id).await.unwrap().len(), 1);
}
