//! The four steps of a rotation of the private key set, as Secrets Manager calls them: in order,
//! repeated by a retry, out of turn, and on a document that is not what they expect.

use std::time::Duration;

use agentidp_aws::rotation::{
    AWSCURRENT, AWSPENDING, KEEP_PREVIOUS_KEYS, RotationError, RotationStep, Rotator, StepOutcome,
};
use agentidp_core::signing::{KeyError, KeySet, KeySetDocument, SigningAlgorithm, TokenRejection};
use chrono::Utc;
use uuid::Uuid;

use crate::support::{
    claims, document_at, kids, moto_client, new_public_secret, new_secret, policy, rotate, stages,
    verifying_source,
};

#[tokio::test]
async fn a_rotation_puts_a_new_key_first_and_tokens_signed_before_it_still_verify() {
    let client = moto_client();
    let now = Utc::now();
    let before = KeySetDocument::generate(SigningAlgorithm::RS256, now).unwrap();
    let secret = new_secret(&client, &before).await;
    let old_keys = KeySet::from_document(&before).unwrap();
    let old_token = old_keys.sign(&claims(now)).unwrap();

    let rotator = Rotator::new(client.clone(), SigningAlgorithm::RS256);
    let token = Uuid::new_v4().to_string();
    let created = rotator
        .run_step(RotationStep::CreateSecret, &secret, &token, now)
        .await
        .unwrap();
    let StepOutcome::Created { kids: pending_kids } = created else {
        panic!("createSecret: {created:?}");
    };
    // Until finishSecret, readers of AWSCURRENT still get the old document.
    assert_eq!(
        kids(&document_at(&client, &secret, AWSCURRENT).await),
        kids(&before)
    );
    let pending = document_at(&client, &secret, AWSPENDING).await;
    assert_eq!(kids(&pending), pending_kids);
    assert_eq!(
        rotator
            .run_step(RotationStep::SetSecret, &secret, &token, now)
            .await
            .unwrap(),
        StepOutcome::NothingToSet
    );
    assert!(matches!(
        rotator
            .run_step(RotationStep::TestSecret, &secret, &token, now)
            .await
            .unwrap(),
        StepOutcome::Tested { .. }
    ));
    let finished = rotator
        .run_step(RotationStep::FinishSecret, &secret, &token, now)
        .await
        .unwrap();
    assert!(matches!(
        finished,
        StepOutcome::Finished {
            previous: Some(_),
            published: None
        }
    ));

    let after = document_at(&client, &secret, AWSCURRENT).await;
    assert_eq!(after.keys.len(), 2);
    assert_ne!(after.keys[0].kid, before.keys[0].kid, "a new key signs");
    assert_eq!(after.keys[1].kid, before.keys[0].kid, "the old key is kept");
    let new_keys = KeySet::from_document(&after).unwrap();
    // Signed before, verified after.
    assert_eq!(
        new_keys.verify(&old_token, &policy(), now).unwrap().scope,
        "agents:read"
    );
    // New tokens carry the new key's id, and the old key set cannot verify them.
    let new_token = new_keys.sign(&claims(now)).unwrap();
    let header = jsonwebtoken::decode_header(&new_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(after.keys[0].kid.as_str()));
    assert_eq!(
        old_keys.verify(&new_token, &policy(), now).unwrap_err(),
        TokenRejection::UnknownKey
    );
    // The JWKS publishes both keys, the new one first.
    let jwks: Vec<String> = new_keys.jwks().keys.into_iter().map(|k| k.kid).collect();
    assert_eq!(jwks, kids(&after));
    // Secrets Manager's labels: the token's version is current, the old one previous.
    let versions = stages(&client, &secret).await;
    let current = versions
        .iter()
        .find(|(_, s)| s.iter().any(|s| s == AWSCURRENT))
        .unwrap();
    assert_eq!(current.0, token);
    assert!(
        versions
            .iter()
            .any(|(id, s)| id != &token && s == &vec!["AWSPREVIOUS".to_owned()])
    );
}

#[tokio::test]
async fn the_first_rotation_of_the_empty_secret_makes_the_first_key() {
    // What the stack creates: secrets with no key, the private one rotated at once.
    let client = moto_client();
    let secret = new_secret(&client, &KeySetDocument { keys: vec![] }).await;
    let public = new_public_secret(&client).await;
    let rotator =
        Rotator::new(client.clone(), SigningAlgorithm::ES256).publishing_to(public.clone());
    rotate(&rotator, &secret, Utc::now()).await;
    let document = document_at(&client, &secret, AWSCURRENT).await;
    assert_eq!(document.keys.len(), 1);
    assert_eq!(document.keys[0].alg, SigningAlgorithm::ES256);
    let keys = KeySet::from_document(&document).unwrap();
    let token = keys.sign(&claims(Utc::now())).unwrap();
    assert!(keys.verify(&token, &policy(), Utc::now()).is_ok());
    // The verifying functions have it too.
    let verifying = verifying_source(client, &public, Duration::from_secs(300))
        .keys()
        .await
        .unwrap();
    assert!(verifying.verify(&token, &policy(), Utc::now()).is_ok());
}

#[tokio::test]
async fn repeated_rotations_keep_a_bounded_number_of_keys() {
    let client = moto_client();
    let now = Utc::now();
    let first = KeySetDocument::generate(SigningAlgorithm::EdDSA, now).unwrap();
    let secret = new_secret(&client, &first).await;
    let rotator = Rotator::new(client.clone(), SigningAlgorithm::EdDSA);
    // A token from each generation of signing key.
    let mut tokens = vec![
        KeySet::from_document(&first)
            .unwrap()
            .sign(&claims(now))
            .unwrap(),
    ];
    let mut signing_kids = vec![first.keys[0].kid.clone()];
    for _ in 0..4 {
        rotate(&rotator, &secret, now).await;
        let current = document_at(&client, &secret, AWSCURRENT).await;
        tokens.push(
            KeySet::from_document(&current)
                .unwrap()
                .sign(&claims(now))
                .unwrap(),
        );
        signing_kids.push(current.keys[0].kid.clone());
    }
    let current = document_at(&client, &secret, AWSCURRENT).await;
    assert_eq!(current.keys.len(), 1 + KEEP_PREVIOUS_KEYS);
    // Newest first: the last signing keys, in reverse order of their making.
    let newest: Vec<String> = signing_kids
        .iter()
        .rev()
        .take(1 + KEEP_PREVIOUS_KEYS)
        .cloned()
        .collect();
    assert_eq!(kids(&current), newest);
    let keys = KeySet::from_document(&current).unwrap();
    assert_eq!(keys.jwks().keys.len(), 1 + KEEP_PREVIOUS_KEYS);
    for (generation, token) in tokens.iter().enumerate() {
        let age = tokens.len() - 1 - generation;
        let result = keys.verify(token, &policy(), now);
        if age <= KEEP_PREVIOUS_KEYS {
            assert!(result.is_ok(), "a token {age} rotations old: {result:?}");
        } else {
            assert_eq!(
                result.unwrap_err(),
                TokenRejection::UnknownKey,
                "{age} rotations old"
            );
        }
    }
}

#[tokio::test]
async fn every_step_repeated_by_a_retry_changes_nothing() {
    let client = moto_client();
    let now = Utc::now();
    let before = KeySetDocument::generate(SigningAlgorithm::ES256, now).unwrap();
    let secret = new_secret(&client, &before).await;
    let rotator = Rotator::new(client.clone(), SigningAlgorithm::ES256);
    let token = Uuid::new_v4().to_string();
    rotator
        .run_step(RotationStep::CreateSecret, &secret, &token, now)
        .await
        .unwrap();
    let pending = kids(&document_at(&client, &secret, AWSPENDING).await);
    assert_eq!(
        rotator
            .run_step(RotationStep::CreateSecret, &secret, &token, now)
            .await
            .unwrap(),
        StepOutcome::AlreadyCreated
    );
    assert_eq!(
        kids(&document_at(&client, &secret, AWSPENDING).await),
        pending
    );
    for step in [
        RotationStep::SetSecret,
        RotationStep::TestSecret,
        RotationStep::TestSecret,
    ] {
        rotator.run_step(step, &secret, &token, now).await.unwrap();
    }
    rotator
        .run_step(RotationStep::FinishSecret, &secret, &token, now)
        .await
        .unwrap();
    let after = stages(&client, &secret).await;
    for step in RotationStep::ALL {
        assert_eq!(
            rotator.run_step(step, &secret, &token, now).await.unwrap(),
            StepOutcome::AlreadyCurrent,
            "{step:?} after the rotation finished"
        );
    }
    assert_eq!(stages(&client, &secret).await, after);
    assert_eq!(
        kids(&document_at(&client, &secret, AWSCURRENT).await),
        pending
    );
}

#[tokio::test]
async fn steps_for_a_version_that_is_not_being_rotated_are_refused() {
    let client = moto_client();
    let now = Utc::now();
    let before = KeySetDocument::generate(SigningAlgorithm::ES256, now).unwrap();
    let secret = new_secret(&client, &before).await;
    let rotator = Rotator::new(client.clone(), SigningAlgorithm::ES256);
    let unknown = Uuid::new_v4().to_string();
    for step in [
        RotationStep::SetSecret,
        RotationStep::TestSecret,
        RotationStep::FinishSecret,
    ] {
        let err = rotator
            .run_step(step, &secret, &unknown, now)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RotationError::VersionState { .. }),
            "{step:?}: {err}"
        );
    }
    assert!(matches!(
        rotator
            .run("rotateEverything", &secret, &unknown, now)
            .await,
        Err(RotationError::UnknownStep(_))
    ));
    // A version that is neither pending nor current (here: AWSPREVIOUS after a rotation).
    let first_version = stages(&client, &secret).await[0].0.clone();
    rotate(&rotator, &secret, now).await;
    let err = rotator
        .run_step(RotationStep::CreateSecret, &secret, &first_version, now)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::VersionState { .. }), "{err}");
    // Nothing of it moved AWSCURRENT off the rotation's version.
    assert_eq!(
        document_at(&client, &secret, AWSCURRENT).await.keys.len(),
        2
    );
}

#[tokio::test]
async fn a_pending_key_set_that_drops_the_current_key_fails_its_test_and_is_never_current() {
    let client = moto_client();
    let now = Utc::now();
    let before = KeySetDocument::generate(SigningAlgorithm::ES256, now).unwrap();
    let secret = new_secret(&client, &before).await;
    let token = Uuid::new_v4().to_string();
    // A pending version that someone else made, without the key that signs today's tokens.
    let foreign = KeySetDocument::generate(SigningAlgorithm::ES256, now).unwrap();
    client
        .put_secret_value()
        .secret_id(&secret)
        .client_request_token(&token)
        .secret_string(foreign.to_json().unwrap())
        .version_stages(AWSPENDING)
        .send()
        .await
        .unwrap();
    let rotator = Rotator::new(client.clone(), SigningAlgorithm::ES256);
    let err = rotator
        .run_step(RotationStep::TestSecret, &secret, &token, now)
        .await
        .unwrap_err();
    assert!(matches!(err, RotationError::TestFailed(_)), "{err}");
    assert!(err.to_string().contains(&before.keys[0].kid), "{err}");
    assert_eq!(
        kids(&document_at(&client, &secret, AWSCURRENT).await),
        kids(&before)
    );
}

#[tokio::test]
async fn a_malformed_current_document_stops_the_rotation_before_anything_is_stored() {
    let client = moto_client();
    let name = format!("agentidp-rotation-test-{}", Uuid::new_v4().simple());
    client
        .create_secret()
        .name(&name)
        .secret_string("{\"keys\": \"not a list\"}")
        .send()
        .await
        .unwrap();
    let rotator = Rotator::new(client.clone(), SigningAlgorithm::ES256);
    let token = Uuid::new_v4().to_string();
    let err = rotator
        .run_step(RotationStep::CreateSecret, &name, &token, Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RotationError::Keys(KeyError::Malformed(_))),
        "{err}"
    );
    assert_eq!(
        stages(&client, &name).await.len(),
        1,
        "no version was added"
    );
}
