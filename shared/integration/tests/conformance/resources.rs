//! Resources, their identifier claims and their count: reads, versioned writes, the claim's
//! uniqueness and moves, deletion, isolation, and the plan limit.

use std::sync::Arc;

use agentidp_core::domain::{Resource, ResourceTarget};
use agentidp_core::store::{Guard, Store, Write};
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::{assert_condition_failed, assert_guard, assert_winners, now_ms, race};

pub fn resource(org_id: Uuid, identifier: &str, created_at: DateTime<Utc>) -> Resource {
    Resource {
        resource_id: Uuid::new_v4(),
        org_id,
        identifier: identifier.to_owned(),
        name: "Weather MCP ✓ \"v2\"".into(),
        description: Some("Forecasts; O'Brien's tools".into()),
        scopes: vec!["tools:call".into(), "weather:read".into()],
        created_at,
        updated_at: created_at,
        version: 1,
    }
}

fn new_resource(resource: &Resource) -> Write {
    Write::PutResource {
        resource: resource.clone(),
        expected_version: None,
    }
}

fn claim(resource: &Resource) -> Write {
    Write::ClaimResourceIdentifier(resource.target())
}

fn release(org_id: Uuid, identifier: &str) -> Write {
    Write::ReleaseResourceIdentifier {
        org_id,
        identifier: identifier.to_owned(),
    }
}

/// What a create commits: the claim, then the record.
pub(super) async fn register<S: Store + 'static>(store: &Arc<S>, resource: &Resource) {
    store
        .commit(vec![claim(resource), new_resource(resource)])
        .await
        .unwrap();
}

pub async fn a_resource_reads_back_equal_by_id_and_its_claim_by_identifier<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let full = resource(org_id, "https://mcp.example.com/mcp", now_ms());
    let bare = Resource {
        description: None,
        scopes: Vec::new(),
        ..resource(org_id, "http://localhost:8000/", now_ms())
    };
    register(&store, &full).await;
    register(&store, &bare).await;

    for expected in [&full, &bare] {
        assert_eq!(
            store
                .get_resource(org_id, expected.resource_id)
                .await
                .unwrap()
                .as_ref(),
            Some(expected)
        );
        assert_eq!(
            store
                .resource_by_identifier(org_id, &expected.identifier)
                .await
                .unwrap(),
            Some(expected.target())
        );
    }
    assert_eq!(
        store
            .resource_by_identifier(org_id, "https://mcp.example.com/mcp/")
            .await
            .unwrap(),
        None,
        "an identifier is matched exactly"
    );
    assert_eq!(
        store.get_resource(org_id, Uuid::new_v4()).await.unwrap(),
        None
    );
}

pub async fn resources_are_listed_oldest_first_with_ties_broken_by_id<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let t = now_ms();
    let mut resources = vec![
        resource(org_id, "https://c.example.com/", t + Duration::seconds(2)),
        resource(org_id, "https://a.example.com/", t),
        resource(
            org_id,
            "https://b.example.com/",
            t + Duration::milliseconds(1),
        ),
        resource(org_id, "https://d.example.com/", t),
    ];
    for r in &resources {
        register(&store, r).await;
    }
    // Counters and identifier claims share the organization's partition on DynamoDB; none of
    // them is listed.
    store
        .commit(vec![Write::CountResources {
            org_id,
            delta: 1,
            limit: 10,
        }])
        .await
        .unwrap();

    resources.sort_by_key(|r| (r.created_at, r.resource_id));
    assert_eq!(store.list_resources(org_id).await.unwrap(), resources);
}

pub async fn updating_or_deleting_a_resource_needs_the_version_that_is_stored<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let v1 = resource(org_id, "https://versioned.example.com/", now_ms());
    register(&store, &v1).await;
    assert_condition_failed(&store.commit(vec![new_resource(&v1)]).await, 0);

    let v2 = Resource {
        name: "renamed".into(),
        description: None,
        version: 2,
        ..v1.clone()
    };
    store
        .commit(vec![Write::PutResource {
            resource: v2.clone(),
            expected_version: Some(1),
        }])
        .await
        .unwrap();
    let stale = Resource {
        name: "stale".into(),
        version: 2,
        ..v1.clone()
    };
    let result = store
        .commit(vec![Write::PutResource {
            resource: stale,
            expected_version: Some(1),
        }])
        .await;
    assert_guard(&result, Guard::StaleVersion);
    let stale_delete = Write::DeleteResource {
        org_id,
        resource_id: v1.resource_id,
        expected_version: 1,
    };
    assert_guard(&store.commit(vec![stale_delete]).await, Guard::StaleVersion);
    assert_eq!(
        store.get_resource(org_id, v1.resource_id).await.unwrap(),
        Some(v2)
    );

    let missing = resource(org_id, "https://missing.example.com/", now_ms());
    assert_condition_failed(
        &store
            .commit(vec![Write::PutResource {
                resource: missing.clone(),
                expected_version: Some(1),
            }])
            .await,
        0,
    );
    assert_condition_failed(
        &store
            .commit(vec![Write::DeleteResource {
                org_id,
                resource_id: missing.resource_id,
                expected_version: 1,
            }])
            .await,
        0,
    );
    assert_eq!(
        store
            .get_resource(org_id, missing.resource_id)
            .await
            .unwrap(),
        None
    );
}

pub async fn an_identifier_is_claimed_by_one_resource_which_alone_may_rewrite_its_claim<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let identifier = "https://claimed.example.com/mcp";
    let owner = resource(org_id, identifier, now_ms());
    register(&store, &owner).await;

    // Another resource cannot take it, and nothing of its batch lands.
    let rival = resource(org_id, identifier, now_ms());
    let result = store
        .commit(vec![new_resource(&rival), claim(&rival)])
        .await;
    assert_guard(&result, Guard::IdentifierTaken);
    assert_condition_failed(&result, 1);
    assert_eq!(
        store.get_resource(org_id, rival.resource_id).await.unwrap(),
        None
    );

    // The owner rewrites its claim: the copy of its scopes follows.
    let rescoped = ResourceTarget {
        scopes: vec!["tools:list".into()],
        ..owner.target()
    };
    store
        .commit(vec![Write::ClaimResourceIdentifier(rescoped.clone())])
        .await
        .unwrap();
    assert_eq!(
        store
            .resource_by_identifier(org_id, identifier)
            .await
            .unwrap(),
        Some(rescoped)
    );

    // Releasing is unconditional, and a released identifier is free for anyone.
    store
        .commit(vec![release(org_id, identifier)])
        .await
        .unwrap();
    store
        .commit(vec![release(org_id, identifier)])
        .await
        .unwrap();
    assert_eq!(
        store
            .resource_by_identifier(org_id, identifier)
            .await
            .unwrap(),
        None
    );
    register(&store, &rival).await;
    assert_eq!(
        store
            .resource_by_identifier(org_id, identifier)
            .await
            .unwrap(),
        Some(rival.target())
    );
}

pub async fn moving_a_resource_to_a_new_identifier_moves_its_claim<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let old = "https://old.example.com/mcp";
    let new = "https://new.example.com/mcp";
    let v1 = resource(org_id, old, now_ms());
    register(&store, &v1).await;
    let taken = resource(org_id, "https://taken.example.com/", now_ms());
    register(&store, &taken).await;

    let move_to = |identifier: &str, expected_version: u64| {
        let next = Resource {
            identifier: identifier.to_owned(),
            version: expected_version + 1,
            ..v1.clone()
        };
        (
            next.clone(),
            vec![
                Write::PutResource {
                    resource: next.clone(),
                    expected_version: Some(expected_version),
                },
                claim(&next),
                release(org_id, old),
            ],
        )
    };
    // Onto another resource's identifier: refused, and nothing moves.
    let (_, refused) = move_to(&taken.identifier, 1);
    assert_guard(&store.commit(refused).await, Guard::IdentifierTaken);
    assert_eq!(
        store.get_resource(org_id, v1.resource_id).await.unwrap(),
        Some(v1.clone())
    );
    assert_eq!(
        store.resource_by_identifier(org_id, old).await.unwrap(),
        Some(v1.target())
    );
    assert_eq!(
        store
            .resource_by_identifier(org_id, &taken.identifier)
            .await
            .unwrap(),
        Some(taken.target())
    );

    let (v2, moved) = move_to(new, 1);
    store.commit(moved).await.unwrap();
    assert_eq!(
        store.get_resource(org_id, v1.resource_id).await.unwrap(),
        Some(v2.clone())
    );
    assert_eq!(
        store.resource_by_identifier(org_id, new).await.unwrap(),
        Some(v2.target())
    );
    assert_eq!(
        store.resource_by_identifier(org_id, old).await.unwrap(),
        None
    );
    // The old identifier is free again.
    register(&store, &resource(org_id, old, now_ms())).await;
}

pub async fn deleting_a_resource_frees_its_identifier<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    let identifier = "https://deleted.example.com/";
    let gone = resource(org_id, identifier, now_ms());
    register(&store, &gone).await;
    store
        .commit(vec![
            Write::DeleteResource {
                org_id,
                resource_id: gone.resource_id,
                expected_version: 1,
            },
            release(org_id, identifier),
        ])
        .await
        .unwrap();

    assert_eq!(
        store.get_resource(org_id, gone.resource_id).await.unwrap(),
        None
    );
    assert_eq!(store.list_resources(org_id).await.unwrap(), Vec::new());
    assert_eq!(
        store
            .resource_by_identifier(org_id, identifier)
            .await
            .unwrap(),
        None
    );
    let again = resource(org_id, identifier, now_ms());
    register(&store, &again).await;
    assert_eq!(store.list_resources(org_id).await.unwrap(), vec![again]);
}

pub async fn another_organizations_resources_and_identifiers_are_invisible<S: Store + 'static>(
    store: Arc<S>,
) {
    let owner = Uuid::new_v4();
    let stranger = Uuid::new_v4();
    let identifier = "https://shared-name.example.com/mcp";
    let owned = resource(owner, identifier, now_ms());
    register(&store, &owned).await;

    assert_eq!(
        store
            .get_resource(stranger, owned.resource_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.list_resources(stranger).await.unwrap(), Vec::new());
    assert_eq!(
        store
            .resource_by_identifier(stranger, identifier)
            .await
            .unwrap(),
        None
    );
    // Identifiers are unique per organization only.
    let theirs = resource(stranger, identifier, now_ms());
    register(&store, &theirs).await;
    assert_eq!(
        store.list_resources(owner).await.unwrap(),
        vec![owned.clone()]
    );
    assert_eq!(
        store
            .resource_by_identifier(owner, identifier)
            .await
            .unwrap(),
        Some(owned.target())
    );
    // A delete names its organization: another's id there deletes nothing.
    assert_condition_failed(
        &store
            .commit(vec![Write::DeleteResource {
                org_id: stranger,
                resource_id: owned.resource_id,
                expected_version: 1,
            }])
            .await,
        0,
    );
    assert_eq!(
        store.get_resource(owner, owned.resource_id).await.unwrap(),
        Some(owned)
    );
}

pub async fn the_resource_count_stops_at_the_limit_and_never_goes_below_zero<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let count = |delta: i64, limit: u64| {
        vec![Write::CountResources {
            org_id,
            delta,
            limit,
        }]
    };
    let resources =
        |store: Arc<S>| async move { store.usage(org_id, "2026-03").await.unwrap().resources };

    store.commit(count(-1, 2)).await.unwrap();
    assert_eq!(resources(Arc::clone(&store)).await, 0);
    store.commit(count(1, 2)).await.unwrap();
    store.commit(count(1, 2)).await.unwrap();
    assert_guard(&store.commit(count(1, 2)).await, Guard::ResourceLimit);
    let usage = store.usage(org_id, "2026-03").await.unwrap();
    assert_eq!(
        (usage.resources, usage.agents, usage.token_requests),
        (2, 0, 0),
        "the resource count is its own"
    );
    store.commit(count(-1, 2)).await.unwrap();
    store.commit(count(1, 2)).await.unwrap();
    assert_eq!(resources(Arc::clone(&store)).await, 2);
    // A decrement is never refused, even past the limit or below zero.
    for _ in 0..3 {
        store.commit(count(-1, 0)).await.unwrap();
    }
    assert_eq!(resources(Arc::clone(&store)).await, 0);
    // Another organization's count is untouched by all of it.
    assert_eq!(
        store
            .usage(Uuid::new_v4(), "2026-03")
            .await
            .unwrap()
            .resources,
        0
    );
}

pub async fn parallel_claims_of_one_identifier_let_exactly_one_win<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let batches = (0..16)
        .map(|_| {
            let contender = resource(org_id, "https://contested.example.com/", now_ms());
            vec![claim(&contender), new_resource(&contender)]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 1);
    let listed = store.list_resources(org_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        store
            .resource_by_identifier(org_id, "https://contested.example.com/")
            .await
            .unwrap()
            .map(|target| target.resource_id),
        Some(listed[0].resource_id)
    );
}

pub async fn parallel_resource_counts_at_the_limit_never_exceed_it<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let batches = (0..12)
        .map(|_| {
            vec![Write::CountResources {
                org_id,
                delta: 1,
                limit: 3,
            }]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 3);
    assert_eq!(store.usage(org_id, "2026-03").await.unwrap().resources, 3);
}
