//! Key sets published at a URL (a client's `jwksUri`, a trusted issuer's keys): the URL's rules
//! and the port the operations fetch through. The adapter that fetches over HTTPS, with its
//! time and size limits, cache and address filter, is `agentidp-remote-keys`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use async_trait::async_trait;

use crate::client_keys::ClientKeySet;

/// Longer than any real key set URL; bounds what is stored and logged.
const MAX_URI_CHARS: usize = 2048;

/// Which destinations key sets may be fetched from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFetchNetwork {
    /// `https` to public addresses only: what a deployment runs with. A URL anyone registers
    /// must not reach the cloud's metadata service or anything else inside the network.
    Public,
    /// Also plain `http` to loopback hosts, and private, loopback and link-local destinations:
    /// the local server, `sam local` and tests, whose key servers run beside them.
    Development,
}

impl KeyFetchNetwork {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "public" => Some(Self::Public),
            "development" => Some(Self::Development),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Development => "development",
        }
    }

    /// Whether a fetch may connect to `address`.
    pub fn permits(self, address: IpAddr) -> bool {
        match self {
            Self::Public => is_public_address(address),
            Self::Development => true,
        }
    }
}

/// A URL a key set is fetched from: an absolute `https` URL without user information or
/// fragment (plain `http` only to a loopback host, under [`KeyFetchNetwork::Development`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct JwksUri(url::Url);

impl fmt::Debug for JwksUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwksUri({})", self.0)
    }
}

impl fmt::Display for JwksUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl JwksUri {
    /// Validates a URL an API caller sent. The error is the problem, for the field it names.
    /// A host that is an address literal is checked against `network` here; a name is checked
    /// when it is resolved, at every fetch, since what it resolves to can change.
    pub fn parse(text: &str, network: KeyFetchNetwork) -> Result<Self, &'static str> {
        const ABSOLUTE: &str =
            "must be an absolute https URL, such as https://example.com/jwks.json";
        if text.len() > MAX_URI_CHARS {
            return Err("must be at most 2048 characters");
        }
        let url = url::Url::parse(text).map_err(|_| ABSOLUTE)?;
        let host = url.host().ok_or(ABSOLUTE)?;
        let loopback = match &host {
            url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
            url::Host::Ipv4(address) => address.is_loopback(),
            url::Host::Ipv6(address) => address.is_loopback(),
        };
        match (url.scheme(), network) {
            ("https", _) => {}
            ("http", KeyFetchNetwork::Development) if loopback => {}
            ("http", KeyFetchNetwork::Development) => {
                return Err("must use https (plain http only to a loopback host)");
            }
            _ => return Err("must use https"),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not have user information");
        }
        if url.fragment().is_some() {
            return Err("must not have a fragment");
        }
        let literal = match host {
            url::Host::Domain(_) => None,
            url::Host::Ipv4(address) => Some(IpAddr::V4(address)),
            url::Host::Ipv6(address) => Some(IpAddr::V6(address)),
        };
        if let Some(address) = literal
            && !network.permits(address)
        {
            return Err("must not point at a private, loopback or link-local address");
        }
        Ok(Self(url))
    }

    /// The stored form, which was validated when it was registered. The network rules are
    /// applied again at every fetch, so a stored URL gains nothing from a later change of them.
    pub fn from_stored(text: &str) -> Result<Self, String> {
        url::Url::parse(text)
            .map(Self)
            .map_err(|e| format!("the stored key set URL is not a URL: {e}"))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

/// Whether an address is one on the public internet: not private, loopback, link-local (the
/// cloud metadata service is at 169.254.169.254), shared (carrier NAT), multicast, reserved,
/// documentation or unspecified, and for IPv6 addresses that embed an IPv4 address, the same of
/// that address.
pub fn is_public_address(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_ipv4(v4),
        IpAddr::V6(v6) => is_public_ipv6(v6),
    }
}

fn is_public_ipv4(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    !(address.is_unspecified()
        || address.is_private()
        || address.is_loopback()
        || address.is_link_local()
        || address.is_broadcast()
        || address.is_multicast()
        || address.is_documentation()
        || a == 0
        // 100.64.0.0/10, shared address space (RFC 6598).
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24, IETF protocol assignments (RFC 6890).
        || (a == 192 && b == 0 && c == 0)
        // 198.18.0.0/15, benchmarking (RFC 2544).
        || (a == 198 && (b == 18 || b == 19))
        // 240.0.0.0/4, reserved.
        || a >= 240)
}

fn is_public_ipv6(address: Ipv6Addr) -> bool {
    if let Some(v4) = address.to_ipv4_mapped() {
        return is_public_ipv4(v4);
    }
    let segments = address.segments();
    let embedded_v4 = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match segments {
        // ::/96, IPv4-compatible (deprecated), which includes :: and ::1.
        [0, 0, 0, 0, 0, 0, _, _] => false,
        // 64:ff9b::/96 (NAT64) and 2002::/16 (6to4) reach the IPv4 address they embed.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => is_public_ipv4(embedded_v4(high, low)),
        [0x2002, high, low, ..] => is_public_ipv4(embedded_v4(high, low)),
        // 2001::/32 Teredo and 2001:db8::/32 documentation.
        [0x2001, 0 | 0xdb8, ..] => false,
        // 100::/64, discard only.
        [0x100, 0, 0, 0, ..] => false,
        [first, ..] => {
            // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local (deprecated),
            // ff00::/8 multicast.
            !((first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || (first & 0xff00) == 0xff00)
        }
    }
}

/// Why a published key set could not be had. A key set that cannot be fetched is the key
/// owner's problem, told to nobody but the audit trail: the request it was needed for is
/// refused as with a wrong key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteKeysError {
    /// The host resolved only to addresses the network rules forbid.
    #[error("the key set URL leads to a forbidden address")]
    DestinationRefused,
    #[error("the key set URL could not be reached: {0}")]
    Unreachable(String),
    #[error("the key set URL did not answer in time")]
    TimedOut,
    /// Redirects are not followed: the registered URL is the one trusted.
    #[error("the key set URL answered with a redirect")]
    Redirected,
    #[error("the key set URL answered with status {0}")]
    Status(u16),
    #[error("the key set is larger than allowed")]
    TooLarge,
    #[error("the key set is not a usable JWKS: {0}")]
    NotAKeySet(String),
}

impl RemoteKeysError {
    /// The audit reason, snake_case.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::DestinationRefused => "jwks_destination_refused",
            Self::Unreachable(_) => "jwks_unreachable",
            Self::TimedOut => "jwks_timed_out",
            Self::Redirected => "jwks_redirected",
            Self::Status(_) => "jwks_bad_status",
            Self::TooLarge => "jwks_too_large",
            Self::NotAKeySet(_) => "jwks_invalid",
        }
    }
}

/// Key sets by URL, as the operations see them: a fetch, or a copy kept from one.
#[async_trait]
pub trait RemoteKeySets: Send + Sync {
    /// The key set published at `uri`. `wanted_key`: the kid an assertion names; a kept copy
    /// without it is fetched again, at most once per refetch interval per URL, so that a
    /// rotated key works at once and made-up kids cannot make this a fetch per request.
    async fn key_set(
        &self,
        uri: &JwksUri,
        wanted_key: Option<&str>,
    ) -> Result<Arc<ClientKeySet>, RemoteKeysError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public_address(text.parse().unwrap())
    }

    #[test]
    fn addresses_inside_a_network_or_the_host_are_not_public() {
        for address in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "192.0.0.170",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001:0::1",
            "100::1",
        ] {
            assert!(!public(address), "{address} counted as public");
        }
    }

    #[test]
    fn internet_addresses_are_public() {
        for address in [
            "93.184.215.14",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::6810:85e5",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(public(address), "{address} counted as not public");
        }
    }

    #[test]
    fn a_key_set_url_must_be_https_without_credentials_or_fragment() {
        let parse = |text| JwksUri::parse(text, KeyFetchNetwork::Public);
        assert!(parse("https://example.com/.well-known/jwks.json").is_ok());
        assert!(parse("http://example.com/jwks").is_err());
        assert!(parse("http://localhost:8080/jwks").is_err());
        assert!(parse("https://user:pw@example.com/jwks").is_err());
        assert!(parse("https://example.com/jwks#keys").is_err());
        assert!(parse("ftp://example.com/jwks").is_err());
        assert!(parse("jwks.json").is_err());
        assert!(parse(&format!("https://example.com/{}", "a".repeat(2048))).is_err());
    }

    #[test]
    fn an_address_literal_inside_the_network_is_refused_unless_in_development() {
        for text in [
            "https://169.254.169.254/latest/meta-data",
            "https://10.1.2.3/jwks",
            "https://[::1]/jwks",
            "https://[::ffff:a9fe:a9fe]/jwks",
        ] {
            assert!(
                JwksUri::parse(text, KeyFetchNetwork::Public).is_err(),
                "{text}"
            );
            assert!(
                JwksUri::parse(text, KeyFetchNetwork::Development).is_ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn plain_http_is_for_loopback_hosts_in_development_only() {
        let dev = |text| JwksUri::parse(text, KeyFetchNetwork::Development);
        assert!(dev("http://127.0.0.1:9000/jwks").is_ok());
        assert!(dev("http://localhost:9000/jwks").is_ok());
        assert!(dev("http://[::1]:9000/jwks").is_ok());
        assert!(dev("http://10.0.0.1/jwks").is_err());
        assert!(dev("http://example.com/jwks").is_err());
    }
}
