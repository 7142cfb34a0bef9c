//! The key source of the function that signs (`CachedKeys` over `SecretsManagerSecret`): loading
//! the key set, re-reading it early for a newer key, and Secrets Manager unreachable.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentidp_aws::SecretsManagerSecret;
use agentidp_aws::rotation::{AWSCURRENT, Rotator};
use agentidp_core::signing::{
    CachedKeys, KeyError, KeySet, KeySetDocument, KeySource, SigningAlgorithm, TokenRejection,
};
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use chrono::Utc;

use crate::support::{
    claims, client_for, document_at, kids, moto_client, moto_endpoint, new_secret, policy, rotate,
};

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
        Err(KeyError::Unavailable { .. })
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
    assert!(matches!(err, KeyError::Unavailable { .. }), "{err}");
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
