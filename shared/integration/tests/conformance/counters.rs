//! Counters: the agent count, the monthly token quota and the throttle tallies.

use std::sync::Arc;

use agentidp_core::domain::Plan;
use agentidp_core::store::{ClientStanding, Store, Usage, Write};
use chrono::Duration;
use tokio::sync::Barrier;
use uuid::Uuid;

use super::{assert_condition_failed, assert_winners, credential, now_ms, org, race};

pub async fn the_agent_count_stops_at_the_limit_and_moves_both_ways<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let count = |delta: i64, limit: u64| {
        vec![Write::CountAgents {
            org_id,
            delta,
            limit,
        }]
    };
    let agents =
        |store: Arc<S>| async move { store.usage(org_id, "2026-03").await.unwrap().agents };

    for _ in 0..3 {
        store.commit(count(1, 3)).await.unwrap();
    }
    assert_eq!(agents(Arc::clone(&store)).await, 3);
    assert_condition_failed(&store.commit(count(1, 3)).await, 0);
    assert_eq!(agents(Arc::clone(&store)).await, 3);

    store.commit(count(-1, 3)).await.unwrap();
    assert_eq!(agents(Arc::clone(&store)).await, 2);
    store.commit(count(1, 3)).await.unwrap();
    assert_eq!(agents(Arc::clone(&store)).await, 3);

    // A lowered limit (a downgraded plan) blocks growth but never a decrement.
    assert_condition_failed(&store.commit(count(1, 2)).await, 0);
    store.commit(count(-1, 2)).await.unwrap();
    assert_eq!(agents(Arc::clone(&store)).await, 2);
    assert_condition_failed(&store.commit(count(1, 2)).await, 0);
    store.commit(count(-1, 0)).await.unwrap();
    store.commit(count(1, 2)).await.unwrap();
    assert_eq!(agents(Arc::clone(&store)).await, 2);
}

pub async fn the_agent_count_never_goes_below_zero<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    store
        .commit(vec![Write::CountAgents {
            org_id,
            delta: -1,
            limit: 10,
        }])
        .await
        .unwrap();
    assert_eq!(store.usage(org_id, "2026-03").await.unwrap().agents, 0);

    store
        .commit(vec![Write::CountAgents {
            org_id,
            delta: 1,
            limit: 10,
        }])
        .await
        .unwrap();
    store
        .commit(vec![Write::CountAgents {
            org_id,
            delta: -1,
            limit: 10,
        }])
        .await
        .unwrap();
    store
        .commit(vec![Write::CountAgents {
            org_id,
            delta: -1,
            limit: 10,
        }])
        .await
        .unwrap();
    assert_eq!(store.usage(org_id, "2026-03").await.unwrap().agents, 0);
    store
        .commit(vec![Write::CountAgents {
            org_id,
            delta: 1,
            limit: 10,
        }])
        .await
        .unwrap();
    assert_eq!(store.usage(org_id, "2026-03").await.unwrap().agents, 1);
}

pub async fn parallel_agent_counts_at_the_limit_never_exceed_it<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    let batches = (0..20)
        .map(|_| {
            vec![Write::CountAgents {
                org_id,
                delta: 1,
                limit: 5,
            }]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 5);
    assert_eq!(
        store.usage(org_id, "2026-03").await.unwrap(),
        Usage {
            agents: 5,
            token_requests: 0,
            resources: 0,
            trusted_issuers: 0,
        }
    );
}

pub async fn token_requests_are_counted_per_organization_and_month_up_to_the_limit<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let request = |org_id: Uuid, month: &str| {
        vec![Write::CountTokenRequest {
            org_id,
            month: month.to_owned(),
            limit: 3,
        }]
    };

    for _ in 0..3 {
        store.commit(request(org_id, "2026-03")).await.unwrap();
    }
    assert_condition_failed(&store.commit(request(org_id, "2026-03")).await, 0);
    store.commit(request(org_id, "2026-04")).await.unwrap();
    let other_org = Uuid::new_v4();
    store.commit(request(other_org, "2026-03")).await.unwrap();

    assert_eq!(
        store.usage(org_id, "2026-03").await.unwrap(),
        Usage {
            agents: 0,
            token_requests: 3,
            resources: 0,
            trusted_issuers: 0,
        }
    );
    assert_eq!(
        store.usage(org_id, "2026-04").await.unwrap(),
        Usage {
            agents: 0,
            token_requests: 1,
            resources: 0,
            trusted_issuers: 0,
        }
    );
    assert_eq!(
        store.usage(org_id, "2026-05").await.unwrap(),
        Usage {
            agents: 0,
            token_requests: 0,
            resources: 0,
            trusted_issuers: 0,
        }
    );
    assert_eq!(
        store.usage(other_org, "2026-03").await.unwrap(),
        Usage {
            agents: 0,
            token_requests: 1,
            resources: 0,
            trusted_issuers: 0,
        }
    );
}

pub async fn parallel_token_requests_at_the_limit_never_exceed_it<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let batches = (0..20)
        .map(|_| {
            vec![Write::CountTokenRequest {
                org_id,
                month: "2026-03".into(),
                limit: 5,
            }]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 5);
    assert_eq!(
        store.usage(org_id, "2026-03").await.unwrap(),
        Usage {
            agents: 0,
            token_requests: 5,
            resources: 0,
            trusted_issuers: 0,
        }
    );
}

pub async fn an_organization_without_counters_has_zero_usage<S: Store + 'static>(store: Arc<S>) {
    let created = org(Plan::Free);
    store
        .commit(vec![Write::CreateOrg(created.clone())])
        .await
        .unwrap();
    assert_eq!(
        store.usage(created.org_id, "2026-03").await.unwrap(),
        Usage::default()
    );
    assert_eq!(
        store.usage(Uuid::new_v4(), "2026-03").await.unwrap(),
        Usage::default()
    );
}

// ----------------------------------------------------------------------------------------------
// Throttle tallies.

pub async fn failure_counters_add_up_per_key_and_read_zero_when_absent_or_expired<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let now = now_ms();
    let (a, b, gone, never) = (
        format!("client:{}", Uuid::new_v4()),
        format!("ip:{}", Uuid::new_v4()),
        format!("client:{}", Uuid::new_v4()),
        format!("client:{}", Uuid::new_v4()),
    );
    let later = now + Duration::minutes(15);
    for _ in 0..3 {
        store
            .commit(vec![Write::Tally {
                key: a.clone(),
                expires_at: later,
            }])
            .await
            .unwrap();
    }
    store
        .commit(vec![
            Write::Tally {
                key: b.clone(),
                expires_at: later,
            },
            Write::Tally {
                key: gone.clone(),
                expires_at: now - Duration::seconds(1),
            },
        ])
        .await
        .unwrap();
    let counts = store
        .tallies(&[never.clone(), a.clone(), gone, b.clone()], now)
        .await
        .unwrap();
    assert_eq!(counts, vec![0, 3, 0, 1]);
    assert_eq!(
        store.tallies(&[a], later).await.unwrap(),
        vec![0],
        "a counter ends with its window"
    );
}

pub async fn adding_to_a_tally_returns_its_new_count_and_the_batch_form_agrees<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let key = format!("org-requests#{}", Uuid::new_v4());
    let expires_at = now_ms() + Duration::minutes(1);
    assert_eq!(store.add_tally(&key, expires_at).await.unwrap(), 1);
    assert_eq!(store.add_tally(&key, expires_at).await.unwrap(), 2);
    store
        .commit(vec![Write::Tally {
            key: key.clone(),
            expires_at,
        }])
        .await
        .unwrap();
    assert_eq!(store.add_tally(&key, expires_at).await.unwrap(), 4);
    assert_eq!(store.tallies(&[key], now_ms()).await.unwrap(), vec![4]);
}

pub async fn a_clients_standing_reads_its_credential_counters_and_resource_together<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let (org_id, agent_id) = (Uuid::new_v4(), Uuid::new_v4());
    let credential = self::credential(org_id, agent_id, now_ms());
    store
        .commit(vec![Write::PutCredential {
            credential: credential.clone(),
            expected_version: None,
        }])
        .await
        .unwrap();
    let key = format!("auth-client#{}", Uuid::new_v4());
    store
        .commit(vec![Write::Tally {
            key: key.clone(),
            expires_at: now_ms() + Duration::minutes(5),
        }])
        .await
        .unwrap();
    let mcp = super::resources::resource(org_id, "https://mcp.example.com/mcp", now_ms());
    super::resources::register(&store, &mcp).await;
    let absent = format!("auth-address#{}", Uuid::new_v4());
    let standing = store
        .client_standing(
            Some(credential.client_id),
            &[key.clone(), absent.clone()],
            Some((org_id, &mcp.identifier)),
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(
        standing,
        ClientStanding {
            credential: Some(credential.clone()),
            tallies: vec![1, 0],
            resource: Some(mcp.target()),
        }
    );
    // The claim is the organization's: the same identifier elsewhere, or another one, is none.
    for (org, identifier) in [
        (Uuid::new_v4(), mcp.identifier.as_str()),
        (org_id, "https://mcp.example.com/other"),
    ] {
        let standing = store
            .client_standing(
                Some(credential.client_id),
                &[],
                Some((org, identifier)),
                now_ms(),
            )
            .await
            .unwrap();
        assert_eq!(standing.resource, None, "{org} {identifier}");
        assert_eq!(standing.credential.as_ref(), Some(&credential));
    }
    let standing = store
        .client_standing(Some(Uuid::new_v4()), &[absent], None, now_ms())
        .await
        .unwrap();
    assert_eq!(
        standing,
        ClientStanding {
            credential: None,
            tallies: vec![0],
            resource: None,
        }
    );
    assert_eq!(
        store
            .client_standing(None, &[], None, now_ms())
            .await
            .unwrap(),
        ClientStanding {
            credential: None,
            tallies: vec![],
            resource: None,
        }
    );
}

pub async fn parallel_failures_are_all_counted<S: Store + 'static>(store: Arc<S>) {
    let key = format!("client:{}", Uuid::new_v4());
    let expires_at = now_ms() + Duration::minutes(15);
    let barrier = Arc::new(Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.commit(vec![Write::Tally { key, expires_at }]).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.tallies(&[key], now_ms()).await.unwrap(), vec![20]);
}
