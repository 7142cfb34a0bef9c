//! Trusted issuers: their records, the key that makes each issuer trusted once per
//! organization, and their count.

use std::sync::Arc;

use agentidp_core::client_keys::{ClientKeySet, PublicKeys};
use agentidp_core::domain::TrustedIssuer;
use agentidp_core::remote_keys::{JwksUri, KeyFetchNetwork};
use agentidp_core::store::{Guard, Store, Write};
use chrono::Duration;
use serde_json::json;
use uuid::Uuid;

use super::{assert_guard, now_ms};

const GITHUB: &str = "https://token.actions.githubusercontent.com";

fn trusted_issuer(org_id: Uuid, issuer: &str, keys: PublicKeys) -> TrustedIssuer {
    let now = now_ms();
    TrustedIssuer {
        issuer_id: TrustedIssuer::id_for(org_id, issuer),
        org_id,
        issuer: issuer.to_owned(),
        audience: "https://idp.example.com".to_owned(),
        keys,
        description: Some("CI".to_owned()),
        created_at: now,
        updated_at: now,
        version: 1,
    }
}

fn inline_keys() -> PublicKeys {
    PublicKeys::Inline(
        ClientKeySet::from_jwks(
            &json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ci-1",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}),
            "jwks",
        )
        .unwrap(),
    )
}

fn published_keys() -> PublicKeys {
    PublicKeys::Published(
        JwksUri::parse(
            "https://token.actions.githubusercontent.com/.well-known/jwks",
            KeyFetchNetwork::Public,
        )
        .unwrap(),
    )
}

fn create(issuer: &TrustedIssuer) -> Write {
    Write::PutTrustedIssuer {
        issuer: issuer.clone(),
        expected_version: None,
    }
}

pub async fn a_trusted_issuer_reads_back_equal_by_id_and_in_the_listing<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let inline = trusted_issuer(org_id, "https://kubernetes.default.svc", inline_keys());
    let mut published = trusted_issuer(org_id, GITHUB, published_keys());
    published.description = None;
    published.created_at = inline.created_at + Duration::milliseconds(1);
    store
        .commit(vec![create(&published), create(&inline)])
        .await
        .unwrap();
    for issuer in [&inline, &published] {
        assert_eq!(
            store
                .get_trusted_issuer(org_id, issuer.issuer_id)
                .await
                .unwrap()
                .as_ref(),
            Some(issuer)
        );
    }
    assert_eq!(
        store.list_trusted_issuers(org_id).await.unwrap(),
        vec![inline, published],
        "oldest first"
    );
}

pub async fn an_issuer_is_trusted_once_per_organization<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    let first = trusted_issuer(org_id, GITHUB, inline_keys());
    store.commit(vec![create(&first)]).await.unwrap();
    let again = trusted_issuer(org_id, GITHUB, published_keys());
    assert_guard(
        &store.commit(vec![create(&again)]).await,
        Guard::IssuerAlreadyTrusted,
    );
    assert_eq!(
        store
            .get_trusted_issuer(org_id, first.issuer_id)
            .await
            .unwrap(),
        Some(first),
        "the first record stands"
    );
    // Another organization trusts the same issuer under its own record.
    let elsewhere = trusted_issuer(Uuid::new_v4(), GITHUB, inline_keys());
    store.commit(vec![create(&elsewhere)]).await.unwrap();
}

pub async fn changing_or_deleting_a_trusted_issuer_needs_the_version_that_is_stored<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let issuer = trusted_issuer(org_id, GITHUB, inline_keys());
    store.commit(vec![create(&issuer)]).await.unwrap();
    let changed = TrustedIssuer {
        audience: "sts.example.com".to_owned(),
        keys: published_keys(),
        version: 2,
        ..issuer.clone()
    };
    let put = |expected| Write::PutTrustedIssuer {
        issuer: changed.clone(),
        expected_version: Some(expected),
    };
    assert_guard(&store.commit(vec![put(7)]).await, Guard::StaleVersion);
    store.commit(vec![put(1)]).await.unwrap();
    assert_eq!(
        store
            .get_trusted_issuer(org_id, issuer.issuer_id)
            .await
            .unwrap(),
        Some(changed)
    );
    let delete = |expected_version| Write::DeleteTrustedIssuer {
        org_id,
        issuer_id: issuer.issuer_id,
        expected_version,
    };
    assert_guard(&store.commit(vec![delete(1)]).await, Guard::StaleVersion);
    store.commit(vec![delete(2)]).await.unwrap();
    assert_eq!(
        store
            .get_trusted_issuer(org_id, issuer.issuer_id)
            .await
            .unwrap(),
        None
    );
    // Gone for good: trusting it again is a new record.
    store.commit(vec![create(&issuer)]).await.unwrap();
}

pub async fn another_organizations_trusted_issuers_are_invisible<S: Store + 'static>(
    store: Arc<S>,
) {
    let owner = Uuid::new_v4();
    let issuer = trusted_issuer(owner, GITHUB, inline_keys());
    store.commit(vec![create(&issuer)]).await.unwrap();
    let stranger = Uuid::new_v4();
    assert_eq!(
        store
            .get_trusted_issuer(stranger, issuer.issuer_id)
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .list_trusted_issuers(stranger)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn the_trusted_issuer_count_stops_at_the_limit_and_is_its_own<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let count = |delta: i64| {
        vec![Write::CountTrustedIssuers {
            org_id,
            delta,
            limit: 2,
        }]
    };
    store.commit(count(1)).await.unwrap();
    store.commit(count(1)).await.unwrap();
    assert_guard(&store.commit(count(1)).await, Guard::TrustedIssuerLimit);
    let usage = store.usage(org_id, "2026-03").await.unwrap();
    assert_eq!(
        (usage.trusted_issuers, usage.resources, usage.agents),
        (2, 0, 0)
    );
    for _ in 0..3 {
        store.commit(count(-1)).await.unwrap();
    }
    assert_eq!(
        store
            .usage(org_id, "2026-03")
            .await
            .unwrap()
            .trusted_issuers,
        0,
        "never below zero"
    );
}
