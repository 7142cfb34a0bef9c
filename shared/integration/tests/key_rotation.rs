//! The signing-key rotation (`agentidp_aws::rotation`), the publishing of the public keys, and
//! the functions' key sources (`CachedKeys` over `SecretsManagerSecret`) against a real Secrets Manager API: moto_server, at
//! `AGENTIDP_TEST_MOTO_ENDPOINT`. `scripts/test.sh` starts it; without it these tests fail rather
//! than pass without having run. Each test uses secrets of its own (random names), so the tests
//! share one moto_server.
//!
//! The tests play Secrets Manager's part in a rotation: they call the four steps in order for one
//! version id, as the service does. moto's own RotateSecret would need a Lambda function inside
//! moto, and it answers a read without a stage with the version the secret was created with, so
//! reads here name the stage (`AWSCURRENT`) as the rotation code does.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test fails loudly on the first surprise"
)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentidp_aws::SecretsManagerSecret;
use agentidp_aws::rotation::{
    AWSCURRENT, AWSPENDING, KEEP_PREVIOUS_KEYS, RotationError, RotationStep, Rotator, StepOutcome,
};
use agentidp_core::signing::{
    AccessTokenClaims, CachedKeys, Jwks, KeyError, KeySet, KeySetDocument, KeySource,
    SigningAlgorithm, TokenPolicy, TokenRejection,
};
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use chrono::{DateTime, Utc};
use uuid::Uuid;

fn moto_endpoint() -> String {
    std::env::var("AGENTIDP_TEST_MOTO_ENDPOINT").expect(
        "AGENTIDP_TEST_MOTO_ENDPOINT is not set. These tests need moto_server: run scripts/test.sh, \
         or `source scripts/test-services.sh && start_test_services` and then cargo test",
    )
}

fn client_for(endpoint: &str, timeouts: TimeoutConfig, retries: RetryConfig) -> Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "rotation-tests",
        ))
        .endpoint_url(endpoint)
        .timeout_config(timeouts)
        .retry_config(retries)
        .build();
    Client::from_conf(config)
}

fn moto_client() -> Client {
    client_for(
        &moto_endpoint(),
        TimeoutConfig::builder()
            .operation_timeout(Duration::from_secs(20))
            .build(),
        RetryConfig::standard(),
    )
}

async fn new_secret(client: &Client, document: &KeySetDocument) -> String {
    let name = format!("agentidp-rotation-test-{}", Uuid::new_v4().simple());
    client
        .create_secret()
        .name(&name)
        .secret_string(document.to_json().unwrap())
        .send()
        .await
        .unwrap();
    name
}

async fn document_at(client: &Client, secret: &str, stage: &str) -> KeySetDocument {
    let out = client
        .get_secret_value()
        .secret_id(secret)
        .version_stage(stage)
        .send()
        .await
        .unwrap();
    KeySetDocument::parse(out.secret_string().unwrap()).unwrap()
}

async fn stages(client: &Client, secret: &str) -> Vec<(String, Vec<String>)> {
    let mut versions: Vec<(String, Vec<String>)> = client
        .describe_secret()
        .secret_id(secret)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages()
        .unwrap()
        .iter()
        .map(|(id, stages)| {
            let mut stages = stages.clone();
            stages.sort();
            (id.clone(), stages)
        })
        .collect();
    versions.sort();
    versions
}

/// Secrets Manager's part: the four steps, in order, for a new version id.
async fn rotate(rotator: &Rotator, secret: &str, now: DateTime<Utc>) -> String {
    let token = Uuid::new_v4().to_string();
    for step in RotationStep::ALL {
        rotator
            .run(step.as_str(), secret, &token, now)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", step.as_str()));
    }
    token
}

fn policy() -> TokenPolicy {
    TokenPolicy {
        issuer: "https://idp.example.test".into(),
        audience: "https://idp.example.test".into(),
        lifetime_seconds: 3600,
    }
}

fn claims(now: DateTime<Utc>) -> AccessTokenClaims {
    let id = Uuid::new_v4().to_string();
    AccessTokenClaims {
        iss: policy().issuer,
        sub: id.clone(),
        aud: policy().audience,
        exp: now.timestamp() + 3600,
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: id.clone(),
        client_id: id.clone(),
        scope: "agents:read".into(),
        org_id: id,
    }
}

fn kids(document: &KeySetDocument) -> Vec<String> {
    document.keys.iter().map(|k| k.kid.clone()).collect()
}

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

fn keys_source(client: Client, secret: &str, refresh_after: Duration) -> KeySource {
    KeySource::Cached(CachedKeys::signing(
        SecretsManagerSecret::new(client, secret.to_owned()),
        refresh_after,
    ))
}

#[tokio::test]
async fn the_functions_key_source_loads_the_key_set_from_secrets_manager() {
    let client = moto_client();
    let now = Utc::now();
    let document = KeySetDocument::generate(SigningAlgorithm::RS256, now)
        .unwrap()
        .rotated(SigningAlgorithm::ES256, now, 1)
        .unwrap();
    let secret = new_secret(&client, &document).await;
    let source = keys_source(client, &secret, Duration::from_secs(300));
    let keys = source.keys().await.unwrap();
    let jwks: Vec<String> = keys.jwks().keys.into_iter().map(|k| k.kid).collect();
    assert_eq!(jwks, kids(&document));
    assert_eq!(keys.signing_algorithm().unwrap(), SigningAlgorithm::ES256);
    let token = keys.sign(&claims(now)).unwrap();
    // What the secret holds verifies what the source signed.
    let direct = KeySet::from_document(&document).unwrap();
    assert!(direct.verify(&token, &policy(), now).is_ok());
    // A missing secret is a failure to read the key source.
    let missing = keys_source(
        moto_client(),
        "agentidp-no-such-secret",
        Duration::from_secs(300),
    );
    assert!(matches!(
        missing.keys().await,
        Err(KeyError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_token_from_a_newer_key_verifies_at_once_and_made_up_key_ids_are_rate_limited() {
    let client = moto_client();
    let now = Utc::now();
    let secret = new_secret(
        &client,
        &KeySetDocument::generate(SigningAlgorithm::RS256, now).unwrap(),
    )
    .await;
    // A warm instance that would not refresh on its own for an hour.
    let warm = keys_source(client.clone(), &secret, Duration::from_secs(3600));
    let before = warm.keys().await.unwrap();

    // A made-up key id older than the newest key held is no sign of a rotation: no read, and
    // the early read stays available for a real one.
    let mut forged = KeySetDocument::generate(SigningAlgorithm::RS256, now).unwrap();
    forged.keys[0].kid = "19990101T000000Z-00000000".into();
    let forged_token = KeySet::from_document(&forged)
        .unwrap()
        .sign(&claims(now))
        .unwrap();
    assert_eq!(
        warm.keys_for_token(&forged_token)
            .await
            .unwrap()
            .verify(&forged_token, &policy(), now)
            .unwrap_err(),
        TokenRejection::UnknownKey
    );

    // A rotation, then a token from an instance that started after it.
    let rotator = Rotator::new(client.clone(), SigningAlgorithm::RS256);
    rotate(&rotator, &secret, now).await;
    let newer = KeySet::from_document(&document_at(&client, &secret, AWSCURRENT).await).unwrap();
    let token = newer.sign(&claims(now)).unwrap();
    assert_eq!(
        before.verify(&token, &policy(), now).unwrap_err(),
        TokenRejection::UnknownKey
    );
    let reread = warm.keys_for_token(&token).await.unwrap();
    assert!(reread.verify(&token, &policy(), now).is_ok());
    assert_eq!(
        reread.jwks().keys.len(),
        2,
        "the new key and the one before it"
    );
    // The re-read set is now the cached one.
    assert!(
        warm.keys()
            .await
            .unwrap()
            .verify(&token, &policy(), now)
            .is_ok()
    );

    // A second unknown key id within the interval does not read the secret again: a token from
    // yet another rotation waits for the regular refresh (or the interval).
    rotate(&rotator, &secret, now).await;
    let newest = KeySet::from_document(&document_at(&client, &secret, AWSCURRENT).await).unwrap();
    let too_soon = newest.sign(&claims(now)).unwrap();
    assert_eq!(
        warm.keys_for_token(&too_soon)
            .await
            .unwrap()
            .verify(&too_soon, &policy(), now)
            .unwrap_err(),
        TokenRejection::UnknownKey
    );
    // Tokens whose key is known never cause a read, whatever the interval.
    assert!(
        warm.keys_for_token(&token)
            .await
            .unwrap()
            .verify(&token, &policy(), now)
            .is_ok()
    );
}

/// A TCP forwarder to moto on a port of its own, which can be switched off: then nothing
/// answers on the port, as when Secrets Manager is unreachable.
struct Forwarder {
    port: u16,
    serving: Arc<AtomicBool>,
    listener: Option<TcpListener>,
    upstream: String,
}

impl Forwarder {
    /// Bound, but not accepting: connections wait unanswered.
    fn bind(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        Self {
            port,
            serving: Arc::new(AtomicBool::new(false)),
            listener: Some(listener),
            upstream,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts forwarding every connection, including those already waiting.
    fn serve(&mut self) {
        let listener = self.listener.take().unwrap();
        listener.set_nonblocking(true).unwrap();
        self.serving.store(true, Ordering::SeqCst);
        let serving = self.serving.clone();
        let upstream = self.upstream.clone();
        std::thread::spawn(move || {
            while serving.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let upstream = upstream.clone();
                        std::thread::spawn(move || forward(client, &upstream));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
            // The listener closes here: from now on connections are refused.
        });
    }

    fn stop(&self) {
        self.serving.store(false, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.serving.store(false, Ordering::SeqCst);
    }
}

fn forward(client: TcpStream, upstream: &str) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let pump = |mut from: TcpStream, mut to: TcpStream| {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = std::thread::spawn(move || pump(c2, s2));
    pump(server, client);
    let _ = up.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_secrets_manager_is_unavailable_and_a_later_call_recovers() {
    let moto = moto_endpoint();
    let document = KeySetDocument::generate(SigningAlgorithm::ES256, Utc::now()).unwrap();
    let secret = new_secret(&moto_client(), &document).await;
    let mut forwarder = Forwarder::bind(&moto);
    // Short timeouts and no retries keep the unreachable phase short; the functions use 2 s to
    // connect and 12 s per operation (shared/aws/src/lib.rs).
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_millis(500))
        .operation_attempt_timeout(Duration::from_secs(1))
        .operation_timeout(Duration::from_secs(2))
        .build();
    let unreliable = client_for(&forwarder.endpoint(), timeouts, RetryConfig::disabled());
    let source = keys_source(unreliable, &secret, Duration::from_millis(300));

    // Cold start with Secrets Manager not answering: unavailable, not a panic or a hang.
    let started = std::time::Instant::now();
    let err = source.keys().await.unwrap_err();
    assert!(matches!(err, KeyError::Unavailable(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The same source, once Secrets Manager answers again: no restart needed.
    forwarder.serve();
    let keys = source.keys().await.unwrap();
    assert_eq!(keys.jwks().keys[0].kid, document.keys[0].kid);

    // Unreachable again after the refresh interval: the cached set keeps serving.
    forwarder.stop();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let cached = source.keys().await.unwrap();
    assert_eq!(cached.jwks().keys[0].kid, document.keys[0].kid);

    // Slow rather than refusing (a listener that never answers on the same port): one request
    // waits for the re-read, the others go on with the cached set meanwhile.
    let _silent = TcpListener::bind(("127.0.0.1", forwarder.port)).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = std::time::Instant::now();
    let (waited, (went_on, went_on_after)) = tokio::join!(source.keys(), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        (source.keys().await, started.elapsed())
    });
    assert!(
        went_on_after < Duration::from_millis(500),
        "a request waited {went_on_after:?} for another's re-read"
    );
    assert_eq!(went_on.unwrap().jwks().keys[0].kid, document.keys[0].kid);
    assert_eq!(waited.unwrap().jwks().keys[0].kid, document.keys[0].kid);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the re-read did wait"
    );
}

// ---------------------------------------------------------------------------------------------
// The public keys: what the functions that only verify tokens read
// ---------------------------------------------------------------------------------------------

/// A public-key secret as the stack creates it: no key until a rotation publishes some.
async fn new_public_secret(client: &Client) -> String {
    let name = format!("agentidp-public-keys-test-{}", Uuid::new_v4().simple());
    client
        .create_secret()
        .name(&name)
        .secret_string("{\"keys\":[]}")
        .send()
        .await
        .unwrap();
    name
}

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

fn verifying_source(client: Client, secret: &str, refresh_after: Duration) -> KeySource {
    KeySource::Cached(CachedKeys::verify_only(
        SecretsManagerSecret::new(client, secret.to_owned()),
        refresh_after,
    ))
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
        Err(KeyError::Unavailable(_))
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
