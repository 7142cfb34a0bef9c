//! Credentials: reads by client id and by ids, versioned updates, isolation, listing.

use std::sync::Arc;

use agentidp_core::client_keys::{ClientKeySet, PublicKeys};
use agentidp_core::domain::{
    AgentStatus, Credential, CredentialProof, CredentialStatus, FederatedIdentity,
};
use agentidp_core::remote_keys::{JwksUri, KeyFetchNetwork};
use agentidp_core::store::{Guard, Store, StoreError, Write};
use chrono::Duration;
use serde_json::json;
use uuid::Uuid;

use super::{assert_condition_failed, assert_winners, credential, new_credential, now_ms, race};

pub async fn a_credential_reads_back_equal_by_client_id_and_by_its_ids<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let agent_id = Uuid::new_v4();
    let created = now_ms();
    let plain = Credential {
        expires_at: None,
        ..credential(org_id, agent_id, created)
    };
    let revoked = Credential {
        status: CredentialStatus::Revoked,
        agent_status: AgentStatus::Suspended,
        revoked_at: Some(created + Duration::milliseconds(5)),
        rotated_at: Some(created + Duration::milliseconds(3)),
        version: 9,
        ..credential(org_id, agent_id, created)
    };
    store
        .commit(vec![new_credential(&plain), new_credential(&revoked)])
        .await
        .unwrap();

    for expected in [plain, revoked] {
        assert_eq!(
            store
                .credential_by_client_id(expected.client_id)
                .await
                .unwrap()
                .as_ref(),
            Some(&expected)
        );
        assert_eq!(
            store
                .get_credential(org_id, agent_id, expected.credential_id)
                .await
                .unwrap()
                .as_ref(),
            Some(&expected)
        );
    }
}

pub async fn creating_a_credential_that_already_exists_fails<S: Store + 'static>(store: Arc<S>) {
    let first = credential(Uuid::new_v4(), Uuid::new_v4(), now_ms());
    store.commit(vec![new_credential(&first)]).await.unwrap();

    let overwrite = Credential {
        proof: CredentialProof::Secret {
            hash: "$2b$04$other".into(),
        },
        ..first.clone()
    };
    assert_condition_failed(&store.commit(vec![new_credential(&overwrite)]).await, 0);
    assert_eq!(
        store
            .credential_by_client_id(first.client_id)
            .await
            .unwrap(),
        Some(first)
    );
}

pub async fn updating_a_credential_needs_the_version_that_is_stored<S: Store + 'static>(
    store: Arc<S>,
) {
    let v1 = credential(Uuid::new_v4(), Uuid::new_v4(), now_ms());
    store.commit(vec![new_credential(&v1)]).await.unwrap();

    let rotated = Credential {
        proof: CredentialProof::Secret {
            hash: "$2b$04$rotated".into(),
        },
        rotated_at: Some(v1.created_at + Duration::minutes(1)),
        version: 2,
        ..v1.clone()
    };
    store
        .commit(vec![Write::PutCredential {
            credential: rotated.clone(),
            expected_version: Some(1),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.credential_by_client_id(v1.client_id).await.unwrap(),
        Some(rotated.clone())
    );

    let stale = Credential {
        status: CredentialStatus::Revoked,
        version: 2,
        ..v1.clone()
    };
    assert_condition_failed(
        &store
            .commit(vec![Write::PutCredential {
                credential: stale,
                expected_version: Some(1),
            }])
            .await,
        0,
    );
    assert_eq!(
        store.credential_by_client_id(v1.client_id).await.unwrap(),
        Some(rotated.clone())
    );

    let revoked = Credential {
        status: CredentialStatus::Revoked,
        revoked_at: Some(v1.created_at + Duration::minutes(2)),
        version: 3,
        ..rotated
    };
    store
        .commit(vec![Write::PutCredential {
            credential: revoked.clone(),
            expected_version: Some(2),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.credential_by_client_id(v1.client_id).await.unwrap(),
        Some(revoked)
    );

    let missing = credential(Uuid::new_v4(), Uuid::new_v4(), now_ms());
    assert_condition_failed(
        &store
            .commit(vec![Write::PutCredential {
                credential: missing.clone(),
                expected_version: Some(1),
            }])
            .await,
        0,
    );
    assert_eq!(
        store
            .credential_by_client_id(missing.client_id)
            .await
            .unwrap(),
        None
    );
}

pub async fn parallel_updates_of_one_credential_version_let_exactly_one_win<S: Store + 'static>(
    store: Arc<S>,
) {
    let v1 = credential(Uuid::new_v4(), Uuid::new_v4(), now_ms());
    store.commit(vec![new_credential(&v1)]).await.unwrap();

    let candidates: Vec<Credential> = (0..16)
        .map(|i| Credential {
            proof: CredentialProof::Secret {
                hash: format!("$2b$04$writer{i}"),
            },
            version: 2,
            ..v1.clone()
        })
        .collect();
    let batches = candidates
        .iter()
        .map(|c| {
            vec![Write::PutCredential {
                credential: c.clone(),
                expected_version: Some(1),
            }]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 1);
    let winner = results.iter().position(Result::is_ok).unwrap();
    assert_eq!(
        store
            .credential_by_client_id(v1.client_id)
            .await
            .unwrap()
            .as_ref(),
        Some(&candidates[winner])
    );
}

pub async fn a_credential_is_found_only_under_its_own_organization_and_agent<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let agent_id = Uuid::new_v4();
    let owned = credential(org_id, agent_id, now_ms());
    store.commit(vec![new_credential(&owned)]).await.unwrap();

    let id = owned.credential_id;
    assert_eq!(
        store
            .get_credential(Uuid::new_v4(), agent_id, id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_credential(org_id, Uuid::new_v4(), id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_credential(org_id, agent_id, Uuid::new_v4())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .list_credentials(Uuid::new_v4(), agent_id)
            .await
            .unwrap(),
        Vec::new()
    );
    assert_eq!(
        store.credential_by_client_id(Uuid::new_v4()).await.unwrap(),
        None
    );
    // The credential id is not a client id.
    assert_eq!(store.credential_by_client_id(id).await.unwrap(), None);
    assert_eq!(
        store.get_credential(org_id, agent_id, id).await.unwrap(),
        Some(owned)
    );
}

pub async fn credentials_are_listed_oldest_first_and_only_for_their_agent<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let agent_id = Uuid::new_v4();
    let other_agent = Uuid::new_v4();
    let t = now_ms();
    let mut mine = vec![
        credential(org_id, agent_id, t + Duration::seconds(1)),
        credential(org_id, agent_id, t),
        credential(org_id, agent_id, t),
        credential(org_id, agent_id, t + Duration::milliseconds(1)),
    ];
    let theirs = credential(org_id, other_agent, t);
    let mut writes: Vec<Write> = mine.iter().map(new_credential).collect();
    writes.push(new_credential(&theirs));
    store.commit(writes).await.unwrap();

    mine.sort_by_key(|c| (c.created_at, c.credential_id));
    assert_eq!(
        store.list_credentials(org_id, agent_id).await.unwrap(),
        mine
    );
    assert_eq!(
        store.list_credentials(org_id, other_agent).await.unwrap(),
        vec![theirs]
    );
    assert_eq!(
        store
            .list_credentials(org_id, Uuid::new_v4())
            .await
            .unwrap(),
        Vec::new()
    );
}

/// A public Ed25519 key (RFC 8037 §A.2) and a P-256 one (RFC 7517 §A.1), as a client sends them.
fn client_keys(kids: &[&str]) -> ClientKeySet {
    let keys: Vec<serde_json::Value> = kids
        .iter()
        .enumerate()
        .map(|(i, kid)| {
            if i % 2 == 0 {
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
                       "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
            } else {
                json!({"kty": "EC", "crv": "P-256", "kid": kid,
                       "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
                       "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"})
            }
        })
        .collect();
    ClientKeySet::from_jwks(&json!({ "keys": keys }), "jwks").unwrap()
}

pub async fn a_credential_with_public_keys_reads_back_equal_and_is_rotated_to_new_keys<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let keyed = Credential {
        proof: CredentialProof::PublicKeys(PublicKeys::Inline(client_keys(&["first"]))),
        ..credential(Uuid::new_v4(), Uuid::new_v4(), now_ms())
    };
    store.commit(vec![new_credential(&keyed)]).await.unwrap();
    assert_eq!(
        store
            .credential_by_client_id(keyed.client_id)
            .await
            .unwrap(),
        Some(keyed.clone())
    );
    let rotated = Credential {
        proof: CredentialProof::PublicKeys(PublicKeys::Inline(client_keys(&["second", "third"]))),
        version: 2,
        ..keyed.clone()
    };
    store
        .commit(vec![Write::PutCredential {
            credential: rotated.clone(),
            expected_version: Some(1),
        }])
        .await
        .unwrap();
    let read = store
        .get_credential(keyed.org_id, keyed.agent_id, keyed.credential_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read, rotated);
    assert_eq!(
        read.proof.public_keys().unwrap().key_ids().unwrap(),
        ["second", "third"],
        "the old key is gone"
    );
    assert_eq!(read.proof.secret_hash(), None);
}

pub async fn a_client_assertion_is_used_once_and_its_batch_fails_with_it<S: Store + 'static>(
    store: Arc<S>,
) {
    let (client, other_client) = (Uuid::new_v4(), Uuid::new_v4());
    let expires_at = now_ms() + Duration::minutes(5);
    let use_of = |client_id: Uuid, jti: &str| Write::UseClientAssertion {
        client_id,
        jti: jti.to_owned(),
        expires_at,
    };
    store.commit(vec![use_of(client, "jti-1")]).await.unwrap();
    // Another client's assertion may carry the same jti; this client's next one another jti.
    store
        .commit(vec![use_of(other_client, "jti-1"), use_of(client, "jti-2")])
        .await
        .unwrap();

    a_replay_fails_its_whole_batch(&store, use_of(client, "jti-1"), Guard::AssertionReplayed).await;
}

/// A second use, after a write it is batched with: the batch fails on the use, with `guard`,
/// and nothing of it is written.
async fn a_replay_fails_its_whole_batch<S: Store + 'static>(
    store: &Arc<S>,
    replay: Write,
    guard: Guard,
) {
    let counted = format!("client:{}", Uuid::new_v4());
    let tally = Write::Tally {
        key: counted.clone(),
        expires_at: now_ms() + Duration::minutes(5),
    };
    let replayed = store.commit(vec![tally, replay]).await;
    assert!(
        matches!(replayed, Err(StoreError::ConditionFailed { guard: failed, index: 1 }) if failed == guard),
        "expected {guard:?} at write 1, got {replayed:?}"
    );
    assert_eq!(
        store.tallies(&[counted], now_ms()).await.unwrap(),
        [0],
        "nothing of the batch was written"
    );
}

pub async fn a_dpop_proof_is_used_once_per_key_and_its_batch_fails_with_it<S: Store + 'static>(
    store: Arc<S>,
) {
    let expires_at = now_ms() + Duration::minutes(2);
    let use_of = |key_thumbprint: &str, jti: &str| Write::UseDpopProof {
        key_thumbprint: key_thumbprint.to_owned(),
        jti: jti.to_owned(),
        expires_at,
    };
    let client_id = Uuid::new_v4();
    store.commit(vec![use_of("key-a", "jti-1")]).await.unwrap();
    // Another key's proof may carry the same jti, and so may a client assertion: an attacker
    // cannot spend the jtis of a key it does not hold.
    store
        .commit(vec![
            use_of("key-b", "jti-1"),
            Write::UseClientAssertion {
                client_id,
                jti: "jti-1".into(),
                expires_at,
            },
        ])
        .await
        .unwrap();
    a_replay_fails_its_whole_batch(&store, use_of("key-a", "jti-1"), Guard::DpopProofReplayed)
        .await;
    let batches = (0..8).map(|_| vec![use_of("key-c", "raced")]).collect();
    assert_winners(&race(&store, batches).await, 1);
}

pub async fn parallel_uses_of_one_assertion_let_exactly_one_win<S: Store + 'static>(store: Arc<S>) {
    let client_id = Uuid::new_v4();
    let batches = (0..8)
        .map(|_| {
            vec![Write::UseClientAssertion {
                client_id,
                jti: "raced".into(),
                expires_at: now_ms() + Duration::minutes(5),
            }]
        })
        .collect();
    assert_winners(&race(&store, batches).await, 1);
}

pub async fn every_kind_of_proof_reads_back_equal<S: Store + 'static>(store: Arc<S>) {
    let published = PublicKeys::Published(
        JwksUri::parse(
            "https://agents.example.com/jwks.json",
            KeyFetchNetwork::Public,
        )
        .unwrap(),
    );
    let federated = FederatedIdentity {
        issuer: "https://token.actions.githubusercontent.com".to_owned(),
        subject: "repo:acme/agents:ref:refs/heads/main".to_owned(),
    };
    for proof in [
        CredentialProof::PublicKeys(published),
        CredentialProof::Federated(federated),
    ] {
        let credential = Credential {
            proof,
            ..credential(Uuid::new_v4(), Uuid::new_v4(), now_ms())
        };
        store
            .commit(vec![new_credential(&credential)])
            .await
            .unwrap();
        assert_eq!(
            store
                .credential_by_client_id(credential.client_id)
                .await
                .unwrap(),
            Some(credential.clone())
        );
        assert_eq!(credential.proof.secret_hash(), None);
    }
}
