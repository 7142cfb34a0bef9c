//! One fetch of one document: the HTTP client, the address filter, and the limits.

use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use agentidp_core::client_keys::ClientKeySet;
use agentidp_core::remote_keys::{JwksUri, KeyFetchNetwork, RemoteKeysError};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use reqwest::{StatusCode, redirect};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;

use crate::{FetchSettings, FetcherBuildError};

/// A document and the `Cache-Control` it came with.
pub(crate) struct Fetched {
    pub set: ClientKeySet,
    pub cache_control: Option<String>,
}

pub(crate) fn build_client(
    network: KeyFetchNetwork,
    settings: &FetchSettings,
) -> Result<reqwest::Client, FetcherBuildError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(&settings.extra_root_certificates)?)
        .dns_resolver(Arc::new(FilteringResolver { network }))
        // A proxy would connect to the destination itself, past the address filter; and the
        // environment of a Lambda is not where the fetch's destination should be chosen.
        .no_proxy()
        .redirect(redirect::Policy::none())
        .referer(false)
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.response_timeout)
        .user_agent(concat!("agentidp/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetcherBuildError::Client(error_chain(&e)))
}

/// TLS built here rather than by reqwest, whose rustls features choose ring as the provider or,
/// without one, panic unless a process-wide default was installed. The roots are Mozilla's as
/// webpki-roots ships them: a Lambda's image promises no system store.
fn tls_config(extra_roots: &[Vec<u8>]) -> Result<rustls::ClientConfig, FetcherBuildError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for der in extra_roots {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| FetcherBuildError::RootCertificate(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetcherBuildError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The client speaks HTTP/1.1 only (reqwest is built without http2).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Resolves a host name and keeps only the addresses the network permits, so that a name
/// pointed at the metadata service or a private address is refused at every fetch, whatever
/// it resolved to when it was registered. The connection goes to an address returned here, so
/// there is no second resolution a rebinding name could answer differently.
struct FilteringResolver {
    network: KeyFetchNetwork,
}

/// Told apart from other connect failures by its type, found in the error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("every address the host resolves to is forbidden")]
struct ForbiddenDestination;

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let network = self.network;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if resolved.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            let permitted: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|address| network.permits(address.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(Box::new(ForbiddenDestination) as Box<dyn StdError + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// The URL's rules, applied again at every fetch (a stored URL was checked under the rules of
/// its day), and the address literal, which reqwest connects to without asking the resolver.
pub(crate) fn check_destination(
    uri: &JwksUri,
    network: KeyFetchNetwork,
) -> Result<(), RemoteKeysError> {
    if let Err(reason) = JwksUri::parse(uri.as_str(), network) {
        tracing::warn!(url = %uri, reason, "a key set URL is refused by the network rules");
        return Err(RemoteKeysError::DestinationRefused);
    }
    let literal = match uri.url().host() {
        Some(url::Host::Ipv4(address)) => Some(IpAddr::V4(address)),
        Some(url::Host::Ipv6(address)) => Some(IpAddr::V6(address)),
        Some(url::Host::Domain(_)) | None => None,
    };
    match literal {
        Some(address) if !network.permits(address) => Err(RemoteKeysError::DestinationRefused),
        _ => Ok(()),
    }
}

/// Fetches and reads the document. The caller bounds the whole of it by the response timeout.
pub(crate) async fn download(
    client: &reqwest::Client,
    uri: &JwksUri,
    max_body_bytes: usize,
) -> Result<Fetched, RemoteKeysError> {
    let mut response = client
        .get(uri.url().clone())
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .send()
        .await
        .map_err(map_error)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(RemoteKeysError::Redirected);
    }
    if status != StatusCode::OK {
        return Err(RemoteKeysError::Status(status.as_u16()));
    }
    let cache_control: Vec<&str> = response
        .headers()
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let cache_control = (!cache_control.is_empty()).then(|| cache_control.join(","));
    let limit = u64::try_from(max_body_bytes).unwrap_or(u64::MAX);
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Err(RemoteKeysError::TooLarge);
    }
    // Read by chunks and counted, since a Content-Length may be missing: the cap holds for a
    // body delimited by the connection's end or by chunks as well.
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(map_error)? {
        if body.len().saturating_add(chunk.len()) > max_body_bytes {
            return Err(RemoteKeysError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let document: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| RemoteKeysError::NotAKeySet(format!("the document is not JSON: {e}")))?;
    let set = ClientKeySet::from_published_jwks(&document).map_err(RemoteKeysError::NotAKeySet)?;
    Ok(Fetched { set, cache_control })
}

/// The error a caller can act on: the refused destination is found by its type anywhere in the
/// chain (reqwest wraps the resolver's error in hyper's connect error).
fn map_error(error: reqwest::Error) -> RemoteKeysError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(&error);
    while let Some(current) = source {
        if current.is::<ForbiddenDestination>() {
            return RemoteKeysError::DestinationRefused;
        }
        source = current.source();
    }
    if error.is_timeout() {
        return RemoteKeysError::TimedOut;
    }
    RemoteKeysError::Unreachable(error_chain(&error.without_url()))
}

/// An error and its sources, as one line: reqwest's own message alone ("error sending
/// request") says nothing of what went wrong.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        let message = current.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_literal_the_network_forbids_is_refused_before_any_connection() {
        for text in [
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.1/jwks",
            "https://[::ffff:a9fe:a9fe]/jwks",
            "https://[fd00:ec2::254]/jwks",
            "https://2130706433/jwks",
            "http://127.0.0.1:9000/jwks",
        ] {
            let stored = JwksUri::from_stored(text).unwrap();
            assert_eq!(
                check_destination(&stored, KeyFetchNetwork::Public),
                Err(RemoteKeysError::DestinationRefused),
                "{text}"
            );
        }
    }

    #[test]
    fn a_stored_url_breaking_the_rules_is_refused_even_in_development() {
        for text in [
            "http://example.com/jwks",
            "http://10.0.0.1/jwks",
            "https://user:secret@localhost/jwks",
        ] {
            let stored = JwksUri::from_stored(text).unwrap();
            assert_eq!(
                check_destination(&stored, KeyFetchNetwork::Development),
                Err(RemoteKeysError::DestinationRefused),
                "{text}"
            );
        }
    }

    #[test]
    fn names_and_permitted_literals_pass_to_the_resolver() {
        let public = |text| {
            check_destination(
                &JwksUri::from_stored(text).unwrap(),
                KeyFetchNetwork::Public,
            )
        };
        assert_eq!(public("https://keys.example.com/jwks"), Ok(()));
        assert_eq!(public("https://localhost/jwks"), Ok(()));
        assert_eq!(public("https://8.8.8.8/jwks"), Ok(()));
        let development = |text| {
            check_destination(
                &JwksUri::from_stored(text).unwrap(),
                KeyFetchNetwork::Development,
            )
        };
        assert_eq!(development("http://127.0.0.1:9000/jwks"), Ok(()));
        assert_eq!(development("https://10.0.0.1/jwks"), Ok(()));
    }

    #[test]
    fn an_error_chain_reads_as_one_line_without_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: inner")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner(#[source] ForbiddenDestination);
        let text = error_chain(&Outer(Inner(ForbiddenDestination)));
        assert_eq!(
            text,
            "outer: inner: every address the host resolves to is forbidden"
        );
    }
}
