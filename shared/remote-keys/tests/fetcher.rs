//! The fetcher against real servers on loopback: what it fetches, what it refuses, and how
//! often it asks. Real time, with the settings shortened to fractions of a second.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentidp_core::remote_keys::{JwksUri, KeyFetchNetwork, RemoteKeySets, RemoteKeysError};
use agentidp_remote_keys::{FetchSettings, FetcherBuildError, KeySetFetcher};
use serde_json::json;

use support::{KeyServer, Reply, TestCertificate, jwks, p256_jwk};

const MS: Duration = Duration::from_millis(1);

fn settings() -> FetchSettings {
    FetchSettings {
        connect_timeout: 1000 * MS,
        response_timeout: 1000 * MS,
        ..FetchSettings::default()
    }
}

fn fetcher(network: KeyFetchNetwork, settings: FetchSettings) -> KeySetFetcher {
    KeySetFetcher::with_settings(network, settings).unwrap()
}

fn development() -> KeySetFetcher {
    fetcher(KeyFetchNetwork::Development, settings())
}

fn dev_uri(text: &str) -> JwksUri {
    JwksUri::parse(text, KeyFetchNetwork::Development).unwrap()
}

/// A key set fetched from a server that always answers `reply`, with a fresh fetcher.
async fn fetch_once(reply: Reply) -> (Result<(), RemoteKeysError>, KeyServer) {
    let server = KeyServer::http(move |_| reply.clone()).await;
    let uri = dev_uri(&server.url("127.0.0.1", "/jwks"));
    let result = development().key_set(&uri, None).await.map(|_| ());
    (result, server)
}

#[test]
fn the_production_defaults_are_the_documented_ones_and_build() {
    let defaults = FetchSettings::default();
    assert_eq!(defaults.connect_timeout, Duration::from_secs(2));
    assert_eq!(defaults.response_timeout, Duration::from_secs(3));
    assert_eq!(defaults.max_body_bytes, 64 * 1024);
    assert_eq!(defaults.default_freshness, Duration::from_secs(300));
    assert_eq!(defaults.min_freshness, Duration::from_secs(60));
    assert_eq!(defaults.max_freshness, Duration::from_secs(24 * 3600));
    assert_eq!(
        defaults.unknown_kid_refetch_interval,
        Duration::from_secs(60)
    );
    assert_eq!(defaults.failure_backoff, Duration::from_secs(30));
    assert_eq!(defaults.stale_grace, Duration::from_secs(3600));
    assert_eq!(defaults.max_cached_urls, 1024);
    assert!(defaults.extra_root_certificates.is_empty());
    for network in [KeyFetchNetwork::Public, KeyFetchNetwork::Development] {
        assert_eq!(KeySetFetcher::new(network).unwrap().network(), network);
    }
}

#[test]
fn inconsistent_settings_and_unusable_roots_are_refused_at_start_up() {
    let build = |settings| KeySetFetcher::with_settings(KeyFetchNetwork::Public, settings);
    let refused = [
        FetchSettings {
            min_freshness: Duration::from_secs(120),
            max_freshness: Duration::from_secs(60),
            ..FetchSettings::default()
        },
        FetchSettings {
            response_timeout: Duration::ZERO,
            ..FetchSettings::default()
        },
        FetchSettings {
            max_cached_urls: 0,
            ..FetchSettings::default()
        },
        FetchSettings {
            max_body_bytes: 0,
            ..FetchSettings::default()
        },
    ];
    for settings in refused {
        assert!(
            matches!(build(settings), Err(FetcherBuildError::Settings(_))),
            "accepted"
        );
    }
    let garbage_root = FetchSettings {
        extra_root_certificates: vec![b"not a certificate".to_vec()],
        ..FetchSettings::default()
    };
    assert!(matches!(
        build(garbage_root),
        Err(FetcherBuildError::RootCertificate(_))
    ));
}

#[tokio::test]
async fn a_key_set_is_fetched_over_https_in_development() {
    let certificate = TestCertificate::new();
    let document = jwks(&["one", "two"]);
    let server = KeyServer::https(&certificate, move |_| Reply::ok(document.clone())).await;
    let fetcher = fetcher(
        KeyFetchNetwork::Development,
        FetchSettings {
            extra_root_certificates: vec![certificate.der.clone()],
            ..settings()
        },
    );
    for host in ["localhost", "127.0.0.1"] {
        let uri = dev_uri(&server.https_url(host, "/.well-known/jwks.json"));
        let set = fetcher.key_set(&uri, Some("two")).await.unwrap();
        assert!(set.has_key("one") && set.has_key("two"));
    }
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn an_https_server_without_a_trusted_certificate_is_unreachable() {
    let certificate = TestCertificate::new();
    let document = jwks(&["one"]);
    let server = KeyServer::https(&certificate, move |_| Reply::ok(document.clone())).await;
    let uri = dev_uri(&server.https_url("localhost", "/jwks"));
    let result = development().key_set(&uri, None).await;
    assert!(
        matches!(result, Err(RemoteKeysError::Unreachable(_))),
        "{result:?}"
    );
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn the_same_https_server_is_refused_on_the_public_network_by_name_and_by_address() {
    let certificate = TestCertificate::new();
    let document = jwks(&["one"]);
    let server = KeyServer::https(&certificate, move |_| Reply::ok(document.clone())).await;
    let fetcher = fetcher(
        KeyFetchNetwork::Public,
        FetchSettings {
            extra_root_certificates: vec![certificate.der.clone()],
            ..settings()
        },
    );
    // The name passes the URL's rules, since what it resolves to is only known at the fetch.
    let by_name = JwksUri::parse(
        &server.https_url("localhost", "/jwks"),
        KeyFetchNetwork::Public,
    )
    .unwrap();
    // The literal would be refused when registered; stored before the rules changed, it is
    // refused at the fetch.
    let by_address = JwksUri::from_stored(&server.https_url("127.0.0.1", "/jwks")).unwrap();
    let ipv6 = JwksUri::from_stored(&server.https_url("[::1]", "/jwks")).unwrap();
    for uri in [by_name, by_address, ipv6] {
        assert_eq!(
            fetcher.key_set(&uri, None).await,
            Err(RemoteKeysError::DestinationRefused),
            "{uri}"
        );
    }
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn plain_http_to_loopback_works_in_development_only() {
    let document = jwks(&["one"]);
    let server = KeyServer::http(move |_| Reply::ok(document.clone())).await;
    for host in ["localhost", "127.0.0.1"] {
        let uri = dev_uri(&server.url(host, "/jwks"));
        let set = development().key_set(&uri, None).await.unwrap();
        assert!(set.has_key("one"));
    }
    let stored = JwksUri::from_stored(&server.url("127.0.0.1", "/jwks")).unwrap();
    let public = fetcher(KeyFetchNetwork::Public, settings());
    assert_eq!(
        public.key_set(&stored, None).await,
        Err(RemoteKeysError::DestinationRefused)
    );
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn max_age_is_honoured_so_the_server_is_asked_once() {
    let document = jwks(&["one"]);
    let server = KeyServer::http(move |_| {
        Reply::ok_with("Cache-Control: public, max-age=600", document.clone())
    })
    .await;
    let uri = dev_uri(&server.url("127.0.0.1", "/jwks"));
    let fetcher = development();
    for _ in 0..5 {
        fetcher.key_set(&uri, Some("one")).await.unwrap();
    }
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_set_is_fetched_again_once_its_freshness_ends() {
    let document = jwks(&["one"]);
    let server = KeyServer::http(move |_| Reply::ok(document.clone())).await;
    let uri = dev_uri(&server.url("127.0.0.1", "/jwks"));
    let fetcher = fetcher(
        KeyFetchNetwork::Development,
        FetchSettings {
            min_freshness: 100 * MS,
            default_freshness: 300 * MS,
            ..settings()
        },
    );
    fetcher.key_set(&uri, None).await.unwrap();
    fetcher.key_set(&uri, None).await.unwrap();
    assert_eq!(server.requests(), 1);
    tokio::time::sleep(350 * MS).await;
    fetcher.key_set(&uri, None).await.unwrap();
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn no_store_is_kept_for_the_minimum_freshness() {
    let document = jwks(&["one"]);
    let server =
        KeyServer::http(move |_| Reply::ok_with("Cache-Control: no-store", document.clone())).await;
    let uri = dev_uri(&server.url("127.0.0.1", "/jwks"));
    let fetcher = fetcher(
        KeyFetchNetwork::Development,
        FetchSettings {
            min_freshness: 300 * MS,
            ..settings()
        },
    );
    for _ in 0..3 {
        fetcher.key_set(&uri, None).await.unwrap();
    }
    assert_eq!(server.requests(), 1);
    tokio::time::sleep(350 * MS).await;
    fetcher.key_set(&uri, None).await.unwrap();
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_then_is_rate_limited() {
    let before = jwks(&["old"]);
    let after = jwks(&["old", "rotated"]);
    let server = KeyServer::http(move |n| {
        let document = if n == 0 { &before } else { &after };
        Reply::ok_with("Cache-Control: max-age=3600", document.clone())
    })
    .await;
    let uri = dev_uri(&server.url("127.0.0.1", "/jwks"));
    let fetcher = fetcher(
        KeyFetchNetwork::Development,
        FetchSettings {
            unknown_kid_refetch_interval: 300 * MS,
            ..settings()
        },
    );
    assert!(
        !fetcher
            .key_set(&uri, None)
            .await
            .unwrap()
            .has_key("rotated")
    );
    tokio::time::sleep(350 * MS).await;
    // A rotated key works at once.
    let set = fetcher.key_set(&uri, Some("rotated")).await.unwrap();
    assert!(set.has_key("rotated"));
    assert_eq!(server.requests(), 2);
    // Made-up kids get the kept set, without a fetch each.
    for kid in ["made-up-1", "made-up-2", "made-up-3"] {
        let set = fetcher.key_set(&uri, Some(kid)).await.unwrap();
        assert!(!set.has_key(kid));
    }
    assert_eq!(server.requests(), 2);
    tokio::time::sleep(350 * MS).await;
    fetcher.key_set(&uri, Some("made-up-4")).await.unwrap();
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn concurrent_callers_for_one_url_share_one_fetch() {
    let document = jwks(&["one"]);
    let server = KeyServer::http(move |_| Reply::ok(document.clone())).await;
    let uri = dev_uri(&server.url("127.0.0.1", "/jwks"));
    let fetcher = Arc::new(development());
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let (fetcher, uri) = (Arc::clone(&fetcher), uri.clone());
            tokio::spawn(async move { fetcher.key_set(&uri, Some("one")).await })
        })
        .collect();
    for caller in callers {
        assert!(caller.await.unwrap().unwrap().has_key("one"));
    }
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_redirect_is_refused_and_its_target_never_contacted() {
    let document = jwks(&["one"]);
    let target = KeyServer::http(move |_| Reply::ok(document.clone())).await;
    for status in [
        "301 Moved Permanently",
        "302 Found",
        "307 Temporary Redirect",
    ] {
        let location = format!("Location: {}", target.url("127.0.0.1", "/jwks"));
        let redirecting = KeyServer::http(move |_| Reply::Full {
            status,
            headers: vec![location.clone()],
            body: Vec::new(),
        })
        .await;
        let uri = dev_uri(&redirecting.url("127.0.0.1", "/jwks"));
        assert_eq!(
            development().key_set(&uri, None).await,
            Err(RemoteKeysError::Redirected),
            "{status}"
        );
        assert_eq!(redirecting.requests(), 1);
    }
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn an_oversized_body_with_a_content_length_is_refused() {
    let (result, _) = fetch_once(Reply::ok(vec![b' '; 64 * 1024 + 1])).await;
    assert_eq!(result, Err(RemoteKeysError::TooLarge));
}

#[tokio::test]
async fn a_body_at_the_limit_is_read() {
    // A real key set padded with white space to exactly the limit.
    let mut document = jwks(&["one"]).into_bytes();
    document.resize(64 * 1024, b' ');
    let (result, _) = fetch_once(Reply::ok(document)).await;
    assert_eq!(result, Ok(()));
}

#[tokio::test]
async fn an_oversized_body_without_a_content_length_is_refused() {
    let (result, server) = fetch_once(Reply::Stream {
        head: "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".into(),
        piece: 8 * 1024,
        total: 8 * 1024 * 1024,
        pause: Duration::ZERO,
    })
    .await;
    assert_eq!(result, Err(RemoteKeysError::TooLarge));
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn an_oversized_chunked_body_is_refused() {
    let mut raw =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..32 {
        raw.extend_from_slice(b"1000\r\n");
        raw.extend_from_slice(&[b' '; 0x1000]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let (result, _) = fetch_once(Reply::Raw(raw)).await;
    assert_eq!(result, Err(RemoteKeysError::TooLarge));
}

#[tokio::test]
async fn a_content_length_shorter_than_the_body_is_not_read_past() {
    // The declared 16 bytes are read and are not a key set; the megabyte after them is not.
    let (result, _) = fetch_once(Reply::Stream {
        head: "HTTP/1.1 200 OK\r\nContent-Length: 16\r\nConnection: close\r\n\r\n".into(),
        piece: 8 * 1024,
        total: 1024 * 1024,
        pause: Duration::ZERO,
    })
    .await;
    assert!(
        matches!(result, Err(RemoteKeysError::NotAKeySet(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn slow_headers_time_out() {
    let server = KeyServer::http(|_| Reply::Silent(Duration::from_secs(10))).await;
    let uri = dev_uri(&server.url("127.0.0.1", "/jwks"));
    let fetcher = fetcher(
        KeyFetchNetwork::Development,
        FetchSettings {
            response_timeout: 400 * MS,
            ..settings()
        },
    );
    let started = Instant::now();
    assert_eq!(
        fetcher.key_set(&uri, None).await,
        Err(RemoteKeysError::TimedOut)
    );
    assert!(started.elapsed() < 2000 * MS, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_slowly_dripping_body_times_out() {
    let server = KeyServer::http(|_| Reply::Stream {
        head: "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n".into(),
        piece: 1,
        total: 1000,
        pause: 50 * MS,
    })
    .await;
    let uri = dev_uri(&server.url("127.0.0.1", "/jwks"));
    let fetcher = fetcher(
        KeyFetchNetwork::Development,
        FetchSettings {
            response_timeout: 400 * MS,
            ..settings()
        },
    );
    let started = Instant::now();
    assert_eq!(
        fetcher.key_set(&uri, None).await,
        Err(RemoteKeysError::TimedOut)
    );
    assert!(started.elapsed() < 2000 * MS, "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let uri = dev_uri(&format!("http://127.0.0.1:{port}/jwks"));
    let result = development().key_set(&uri, None).await;
    assert!(
        matches!(result, Err(RemoteKeysError::Unreachable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_server_error_is_reported_with_its_status() {
    for (status, code) in [("500 Internal Server Error", 500), ("404 Not Found", 404)] {
        let (result, _) = fetch_once(Reply::status(status)).await;
        assert_eq!(result, Err(RemoteKeysError::Status(code)));
    }
}

#[tokio::test]
async fn a_document_that_is_not_json_is_not_a_key_set() {
    let (result, _) = fetch_once(Reply::ok("<html>keys</html>")).await;
    assert!(
        matches!(&result, Err(RemoteKeysError::NotAKeySet(reason)) if reason.contains("not JSON")),
        "{result:?}"
    );
    let (result, _) = fetch_once(Reply::ok(r#"{"issuer": "https://example.com"}"#)).await;
    assert!(
        matches!(result, Err(RemoteKeysError::NotAKeySet(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_key_set_holding_a_private_key_is_refused() {
    let mut leaked = p256_jwk("leaked");
    leaked["d"] = json!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let document = json!({"keys": [p256_jwk("fine"), leaked]}).to_string();
    let (result, _) = fetch_once(Reply::ok(document)).await;
    assert!(
        matches!(&result, Err(RemoteKeysError::NotAKeySet(reason)) if reason.contains("private")),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_stale_set_is_served_after_a_failed_refetch_within_the_grace_and_refused_after() {
    let document = jwks(&["one"]);
    let server = KeyServer::http(move |n| {
        if n == 0 {
            Reply::ok_with("Cache-Control: max-age=0", document.clone())
        } else {
            Reply::status("500 Internal Server Error")
        }
    })
    .await;
    let uri = dev_uri(&server.url("127.0.0.1", "/jwks"));
    let fetcher = fetcher(
        KeyFetchNetwork::Development,
        FetchSettings {
            min_freshness: 200 * MS,
            failure_backoff: 50 * MS,
            stale_grace: 400 * MS,
            ..settings()
        },
    );
    fetcher.key_set(&uri, None).await.unwrap();
    tokio::time::sleep(250 * MS).await;
    let stale = fetcher.key_set(&uri, None).await.unwrap();
    assert!(stale.has_key("one"));
    assert_eq!(server.requests(), 2);
    tokio::time::sleep(600 * MS).await;
    assert_eq!(
        fetcher.key_set(&uri, None).await,
        Err(RemoteKeysError::Status(500))
    );
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn the_failure_backoff_keeps_a_broken_server_from_being_hammered() {
    let server = KeyServer::http(|_| Reply::status("503 Service Unavailable")).await;
    let uri = dev_uri(&server.url("127.0.0.1", "/jwks"));
    let fetcher = fetcher(
        KeyFetchNetwork::Development,
        FetchSettings {
            failure_backoff: 300 * MS,
            ..settings()
        },
    );
    for _ in 0..10 {
        assert_eq!(
            fetcher.key_set(&uri, None).await,
            Err(RemoteKeysError::Status(503))
        );
    }
    assert_eq!(server.requests(), 1);
    tokio::time::sleep(350 * MS).await;
    assert_eq!(
        fetcher.key_set(&uri, None).await,
        Err(RemoteKeysError::Status(503))
    );
    assert_eq!(server.requests(), 2);
}
