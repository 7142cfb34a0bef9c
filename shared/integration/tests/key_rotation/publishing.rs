//! The public keys: what the functions that only verify tokens read, as the rotation publishes
//! them.

use std::time::Duration;

use agentidp_aws::rotation::{
    AWSCURRENT, AWSPENDING, KEEP_PREVIOUS_KEYS, RotationError, RotationStep, Rotator, StepOutcome,
};
use agentidp_core::signing::{
    Jwks, KeyError, KeySet, KeySetDocument, SigningAlgorithm, TokenRejection,
};
use aws_sdk_secretsmanager::Client;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::support::{
    claims, document_at, kids, moto_client, new_public_secret, new_secret, policy, rotate,
    verifying_source,
};

/// The public secret's AWSCURRENT value, as stored, and its version id.
async fn published(client: &Client, secret: &str) -> (String, String) {
    let out = client
        .get_secret_value()
        .secret_id(secret)
        .version_stage(AWSCURRENT)
        .send()
        .await
        .unwrap();
    (
        out.secret_string().unwrap().to_owned(),
        out.version_id().unwrap().to_owned(),
    )
}

async fn published_kids(client: &Client, secret: &str) -> Vec<String> {
    let (json, _) = published(client, secret).await;
    Jwks::parse(&json)
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect()
}

/// A token signed with `document`'s key number `index` alone.
fn signed_by(document: &KeySetDocument, index: usize, now: DateTime<Utc>) -> String {
    let one = KeySetDocument {
        keys: vec![document.keys[index].clone()],
    };
    KeySet::from_document(&one)
        .unwrap()
        .sign(&claims(now))
        .unwrap()
}

#[tokio::test]
async fn a_verifying_functions_key_source_holds_no_key_that_signs() {
    // The attack: code running in the agents, credentials or audit function (which only verify
    // tokens) signs a token of its choosing with the keys that function loaded.
    let client = moto_client();
    let now = Utc::now();
    let document = KeySetDocument::generate(SigningAlgorithm::EdDSA, now)
        .unwrap()
        .rotated(SigningAlgorithm::ES256, now, 2)
        .unwrap()
        .rotated(SigningAlgorithm::RS256, now, 2)
        .unwrap();
    let private = new_secret(&client, &document).await;
    let public = new_public_secret(&client).await;
    // Before a rotation publishes anything, the verifying functions are not ready (503).
    let unpublished = verifying_source(client.clone(), &public, Duration::from_secs(300));
    assert!(matches!(
        unpublished.keys().await,
        Err(KeyError::Unavailable { .. })
    ));
    let jwks = KeySet::from_document(&document).unwrap().jwks();
    client
        .put_secret_value()
        .secret_id(&public)
        .secret_string(jwks.to_json().unwrap())
        .send()
        .await
        .unwrap();

    let keys = verifying_source(client.clone(), &public, Duration::from_secs(300))
        .keys()
        .await
        .unwrap();
    assert!(matches!(keys.sign(&claims(now)), Err(KeyError::VerifyOnly)));
    // It verifies what each of the private keys signed, of every algorithm.
    for index in 0..document.keys.len() {
        let token = signed_by(&document, index, now);
        assert!(
            keys.verify(&token, &policy(), now).is_ok(),
            "{:?}",
            document.keys[index].alg
        );
    }
    assert_eq!(keys.jwks(), jwks);
    // Pointed at the private key set, it refuses to load it rather than hold a private key.
    let misconfigured = verifying_source(client, &private, Duration::from_secs(300));
    assert!(matches!(
        misconfigured.keys().await,
        Err(KeyError::Malformed(_))
    ));
}

#[tokio::test]
async fn a_rotation_publishes_a_new_key_before_it_signs_and_drops_an_old_one_when_the_signer_does()
{
    let client = moto_client();
    let now = Utc::now();
    // Three keys: the most a set keeps, so the rotation drops the oldest.
    let before = KeySetDocument::generate(SigningAlgorithm::ES256, now)
        .unwrap()
        .rotated(SigningAlgorithm::ES256, now, KEEP_PREVIOUS_KEYS)
        .unwrap()
        .rotated(SigningAlgorithm::ES256, now, KEEP_PREVIOUS_KEYS)
        .unwrap();
    assert_eq!(before.keys.len(), 1 + KEEP_PREVIOUS_KEYS);
    let private = new_secret(&client, &before).await;
    let public = new_public_secret(&client).await;
    let rotator =
        Rotator::new(client.clone(), SigningAlgorithm::ES256).publishing_to(public.clone());
    let token = Uuid::new_v4().to_string();

    rotator
        .run_step(RotationStep::CreateSecret, &private, &token, now)
        .await
        .unwrap();
    assert!(published_kids(&client, &public).await.is_empty());
    let pending = document_at(&client, &private, AWSPENDING).await;

    // setSecret: the new key and every current one, before any token is signed with the new key.
    let set = rotator
        .run_step(RotationStep::SetSecret, &private, &token, now)
        .await
        .unwrap();
    let mut both = kids(&pending);
    both.push(before.keys[KEEP_PREVIOUS_KEYS].kid.clone());
    assert_eq!(set, StepOutcome::Published { kids: both.clone() });
    assert_eq!(published_kids(&client, &public).await, both);
    let (raw, _) = published(&client, &public).await;
    for private_part in ["PRIVATE KEY", "privateKeyPem", "\"d\""] {
        assert!(!raw.contains(private_part), "{private_part} published");
    }
    let verifier = verifying_source(client.clone(), &public, Duration::from_secs(3600));
    let keys = verifier.keys().await.unwrap();
    let new_token = signed_by(&pending, 0, now);
    let oldest_token = signed_by(&before, KEEP_PREVIOUS_KEYS, now);
    for token in [&new_token, &oldest_token, &signed_by(&before, 0, now)] {
        assert!(keys.verify(token, &policy(), now).is_ok());
    }

    rotator
        .run_step(RotationStep::TestSecret, &private, &token, now)
        .await
        .unwrap();
    // finishSecret: exactly the set the token function holds from now on.
    let finished = rotator
        .run_step(RotationStep::FinishSecret, &private, &token, now)
        .await
        .unwrap();
    assert!(matches!(
        finished,
        StepOutcome::Finished {
            previous: Some(_),
            published: Some(ref at_finish)
        } if *at_finish == kids(&pending)
    ));
    let current = document_at(&client, &private, AWSCURRENT).await;
    let (raw, _) = published(&client, &public).await;
    assert_eq!(
        Jwks::parse(&raw).unwrap(),
        KeySet::from_document(&current).unwrap().jwks(),
        "the verifying functions hold what the JWKS endpoint serves"
    );
    // The oldest key left the token function's set, and now the verifying functions' too.
    let reread = verifying_source(client, &public, Duration::from_secs(3600))
        .keys()
        .await
        .unwrap();
    assert_eq!(
        reread.verify(&oldest_token, &policy(), now).unwrap_err(),
        TokenRejection::UnknownKey
    );
    assert!(reread.verify(&new_token, &policy(), now).is_ok());
}

#[tokio::test]
async fn a_verifying_function_warm_before_a_rotation_verifies_a_token_of_the_new_key_at_once() {
    let client = moto_client();
    let now = Utc::now();
    let private = new_secret(
        &client,
        &KeySetDocument::generate(SigningAlgorithm::RS256, now).unwrap(),
    )
    .await;
    let public = new_public_secret(&client).await;
    let rotator =
        Rotator::new(client.clone(), SigningAlgorithm::RS256).publishing_to(public.clone());
    rotate(&rotator, &private, now).await;
    // An instance that would not refresh on its own for an hour.
    let warm = verifying_source(client.clone(), &public, Duration::from_secs(3600));
    let before = warm.keys().await.unwrap();

    rotate(&rotator, &private, now).await;
    // A tokens-function instance that started after the rotation signs with the new key.
    let signer = KeySet::from_document(&document_at(&client, &private, AWSCURRENT).await).unwrap();
    let token = signer.sign(&claims(now)).unwrap();
    assert_eq!(
        before.verify(&token, &policy(), now).unwrap_err(),
        TokenRejection::UnknownKey
    );
    // The unknown key id makes the instance read the public secret again, which has it.
    let reread = warm.keys_for_token(&token).await.unwrap();
    assert!(reread.verify(&token, &policy(), now).is_ok());
    assert_eq!(reread.jwks(), signer.jwks());
}

#[tokio::test]
async fn a_retried_publishing_step_writes_nothing() {
    let client = moto_client();
    let now = Utc::now();
    let private = new_secret(
        &client,
        &KeySetDocument::generate(SigningAlgorithm::ES256, now).unwrap(),
    )
    .await;
    let public = new_public_secret(&client).await;
    let rotator =
        Rotator::new(client.clone(), SigningAlgorithm::ES256).publishing_to(public.clone());
    let token = Uuid::new_v4().to_string();
    rotator
        .run_step(RotationStep::CreateSecret, &private, &token, now)
        .await
        .unwrap();
    let first = rotator
        .run_step(RotationStep::SetSecret, &private, &token, now)
        .await
        .unwrap();
    let (_, version) = published(&client, &public).await;
    assert_eq!(
        rotator
            .run_step(RotationStep::SetSecret, &private, &token, now)
            .await
            .unwrap(),
        first
    );
    assert_eq!(published(&client, &public).await.1, version);
    rotator
        .run_step(RotationStep::TestSecret, &private, &token, now)
        .await
        .unwrap();
    // With one key before the rotation, none is dropped: finishSecret publishes the same set.
    rotator
        .run_step(RotationStep::FinishSecret, &private, &token, now)
        .await
        .unwrap();
    assert_eq!(published(&client, &public).await.1, version);
    assert_eq!(
        rotator
            .run_step(RotationStep::FinishSecret, &private, &token, now)
            .await
            .unwrap(),
        StepOutcome::AlreadyCurrent
    );
    assert_eq!(published(&client, &public).await.1, version);
}

#[tokio::test]
async fn a_pending_key_set_that_fails_its_test_is_never_published() {
    let client = moto_client();
    let now = Utc::now();
    let before = KeySetDocument::generate(SigningAlgorithm::ES256, now).unwrap();
    let private = new_secret(&client, &before).await;
    let public = new_public_secret(&client).await;
    let (_, version) = published(&client, &public).await;
    // A pending version that someone else made, without the key that signs today's tokens.
    let token = Uuid::new_v4().to_string();
    let foreign = KeySetDocument::generate(SigningAlgorithm::ES256, now).unwrap();
    client
        .put_secret_value()
        .secret_id(&private)
        .client_request_token(&token)
        .secret_string(foreign.to_json().unwrap())
        .version_stages(AWSPENDING)
        .send()
        .await
        .unwrap();
    let rotator =
        Rotator::new(client.clone(), SigningAlgorithm::ES256).publishing_to(public.clone());
    let err = rotator
        .run_step(RotationStep::SetSecret, &private, &token, now)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::TestFailed(_)), "{err}");
    assert_eq!(published(&client, &public).await.1, version);
    assert!(published_kids(&client, &public).await.is_empty());
}
