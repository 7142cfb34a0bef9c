//! DPoP (RFC 9449): a client proves, with each request, that it holds the private key a token is
//! bound to. A proof is a JWT the client signs with that key, naming the request (`htm`, `htu`),
//! when it was made (`iat`), a unique id (`jti`), and at a resource server the token's hash
//! (`ath`); its header carries the public key (`jwk`), whose RFC 7638 thumbprint a bound token
//! carries as `cnf.jkt`.
//!
//! Pure: no clock, no store. A proof's single use is the caller's to record (its `jti`, until
//! [`VerifiedDpopProof::replay_window_end`]).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::client_keys::{AssertionAlgorithm, jws_parts, numeric_date, read_key, signed_claims};

/// The `typ` of a DPoP proof (RFC 9449 §4.2).
pub const DPOP_PROOF_TYPE: &str = "dpop+jwt";
/// Proofs larger than this are refused before any parsing; one with an RSA key is under 2 KiB.
const MAX_PROOF_BYTES: usize = 8 * 1024;
const MAX_JTI_CHARS: usize = 256;
/// How long a server nonce is accepted: it names a window this long, and the one before it
/// is accepted too, so a nonce lives between one and two windows.
pub const NONCE_WINDOW_SECONDS: i64 = 300;
/// Bytes of HMAC-SHA256 a nonce carries: enough that one cannot be guessed.
const NONCE_TAG_BYTES: usize = 16;

/// A DPoP proof as received: a credential in its own right for as long as it is fresh, so its
/// text never appears in `Debug` output or logs.
pub struct DpopProof(String);

impl DpopProof {
    pub fn new(text: String) -> Self {
        Self(text)
    }
}

impl fmt::Debug for DpopProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DpopProof([redacted])")
    }
}

/// What a proof must say to be accepted for one request.
pub struct DpopExpectations<'a> {
    /// The request's method (`htm`).
    pub method: &'a str,
    /// The request's URL as the client addressed it (`htu`): the configured public URL and the
    /// path; a query or fragment on either side is ignored (RFC 9449 §4.3).
    pub url: &'a str,
    /// The access token the request presents, whose hash the proof must carry (`ath`); `None`
    /// at the token endpoint.
    pub access_token: Option<&'a str>,
    /// How far the proof's `iat` may be from now, either way.
    pub max_age_seconds: i64,
    /// The server nonces a proof must carry one of, when nonces are required.
    pub nonces: Option<&'a DpopNonces>,
}

/// The access token is a credential: only whether there is one shows.
impl fmt::Debug for DpopExpectations<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopExpectations")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("access_token", &self.access_token.map(|_| "[redacted]"))
            .field("max_age_seconds", &self.max_age_seconds)
            .field("nonces", &self.nonces)
            .finish()
    }
}

/// A proof that checked out: the key it was made with and what makes it single use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDpopProof {
    /// The RFC 7638 thumbprint of the proof's key: a bound token's `cnf.jkt`.
    pub thumbprint: String,
    pub jti: String,
    pub iat: i64,
}

impl VerifiedDpopProof {
    /// The last instant the proof could be accepted: a record of its use must outlive it.
    pub fn replay_window_end(&self, max_age_seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(
            self.iat
                .saturating_add(max_age_seconds.max(0))
                .saturating_add(1),
            0,
        )
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Why a proof was refused. The client is told (`invalid_dpop_proof`, or `use_dpop_nonce` for
/// [`DpopRejection::NonceRequired`]): the proof is its own, so naming the problem tells it
/// nothing it could not find out, and helps whoever builds the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopRejection {
    #[error("a DPoP proof is required (the DPoP header)")]
    Missing,
    #[error("the DPoP proof is too large")]
    TooLarge,
    #[error("the DPoP proof is not a well-formed JWT with the required header and claims")]
    Malformed,
    #[error("the DPoP proof's typ must be dpop+jwt")]
    WrongType,
    #[error("the DPoP proof's alg must be one of ES256, EdDSA, RS256, PS256")]
    AlgorithmNotAllowed,
    #[error("the DPoP proof's jwk must be a public key fit for its alg, with no private member")]
    InvalidKey,
    #[error("the DPoP proof's signature does not verify with its jwk")]
    BadSignature,
    #[error("the DPoP proof's htm is not this request's method")]
    WrongMethod,
    #[error("the DPoP proof's htu is not this request's URL")]
    WrongUrl,
    #[error("the DPoP proof's iat is too far from the server's time")]
    Stale,
    #[error("the DPoP proof has no usable jti")]
    MissingJti,
    #[error("the DPoP proof's ath is not the hash of the access token presented")]
    WrongAccessTokenHash,
    #[error("the DPoP proof must carry the nonce the server provided")]
    NonceRequired,
    #[error("the DPoP proof was used before")]
    Replayed,
    #[error("the DPoP proof's key is not the one the access token is bound to")]
    WrongKey,
}

impl DpopRejection {
    /// The audit and log reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "dpop_proof_missing",
            Self::TooLarge => "dpop_proof_too_large",
            Self::Malformed => "dpop_proof_malformed",
            Self::WrongType => "dpop_proof_wrong_type",
            Self::AlgorithmNotAllowed => "dpop_proof_algorithm_not_allowed",
            Self::InvalidKey => "dpop_proof_invalid_key",
            Self::BadSignature => "dpop_proof_bad_signature",
            Self::WrongMethod => "dpop_proof_wrong_method",
            Self::WrongUrl => "dpop_proof_wrong_url",
            Self::Stale => "dpop_proof_stale",
            Self::MissingJti => "dpop_proof_missing_jti",
            Self::WrongAccessTokenHash => "dpop_proof_wrong_ath",
            Self::NonceRequired => "dpop_nonce_required",
            Self::Replayed => "dpop_proof_replayed",
            Self::WrongKey => "dpop_proof_wrong_key",
        }
    }
}

/// `ath` (RFC 9449 §4.2): base64url of the SHA-256 of the token's ASCII.
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

/// A URL as RFC 9449 §4.3 compares `htu`: syntax- and scheme-based normalisation (RFC 3986
/// §6.2.2, §6.2.3) as the `url` crate parses it, on both sides (scheme and host lowercased, the
/// default port made explicit, dot segments removed from the path), no query, no fragment.
fn comparable_url(text: &str) -> Option<String> {
    let url = url::Url::parse(text).ok()?;
    if !matches!(url.scheme(), "https" | "http") {
        return None;
    }
    Some(format!(
        "{}://{}:{}{}",
        url.scheme(),
        url.host_str()?,
        url.port_or_known_default()?,
        url.path()
    ))
}

impl DpopProof {
    /// Checks the proof against the request (RFC 9449 §4.3) at `now`, in the order that tells a
    /// forger least: form, key and signature before any claim.
    pub fn verify(
        &self,
        expected: &DpopExpectations<'_>,
        now: DateTime<Utc>,
    ) -> Result<VerifiedDpopProof, DpopRejection> {
        let text = self.0.as_str();
        if text.len() > MAX_PROOF_BYTES {
            return Err(DpopRejection::TooLarge);
        }
        let [header, _, _] = jws_parts(text).ok_or(DpopRejection::Malformed)?;
        let header: Map<String, Value> = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(DpopRejection::Malformed)?;
        // RFC 7515 §4.1.11: an extension we do not implement must not be ignored.
        if header.contains_key("crit") {
            return Err(DpopRejection::Malformed);
        }
        if header.get("typ").and_then(Value::as_str) != Some(DPOP_PROOF_TYPE) {
            return Err(DpopRejection::WrongType);
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(DpopRejection::Malformed)?;
        let alg = AssertionAlgorithm::parse(alg).ok_or(DpopRejection::AlgorithmNotAllowed)?;
        let Some(Value::Object(jwk)) = header.get("jwk") else {
            return Err(DpopRejection::Malformed);
        };
        let mut problems = Vec::new();
        let key = read_key(jwk, "jwk", &mut problems).ok_or(DpopRejection::InvalidKey)?;
        if !key.accepts(alg) {
            return Err(DpopRejection::InvalidKey);
        }
        let claims = signed_claims(text, &key, alg).map_err(|rejection| match rejection {
            crate::client_keys::AssertionRejection::BadSignature => DpopRejection::BadSignature,
            _ => DpopRejection::Malformed,
        })?;
        let claim = |name: &str| claims.get(name).and_then(Value::as_str);
        let jti = claim("jti")
            .filter(|jti| !jti.is_empty() && jti.chars().count() <= MAX_JTI_CHARS)
            .ok_or(DpopRejection::MissingJti)?;
        // RFC 9110 §9.1: methods are case-sensitive.
        if claim("htm") != Some(expected.method) {
            return Err(DpopRejection::WrongMethod);
        }
        let presented_url = claim("htu").ok_or(DpopRejection::WrongUrl)?;
        match (comparable_url(presented_url), comparable_url(expected.url)) {
            (Some(presented), Some(wanted)) if presented == wanted => {}
            _ => return Err(DpopRejection::WrongUrl),
        }
        let iat = claims
            .get("iat")
            .and_then(numeric_date)
            .ok_or(DpopRejection::Malformed)?;
        if iat.abs_diff(now.timestamp()) > expected.max_age_seconds.unsigned_abs() {
            return Err(DpopRejection::Stale);
        }
        if let Some(token) = expected.access_token
            && claim("ath") != Some(access_token_hash(token).as_str())
        {
            return Err(DpopRejection::WrongAccessTokenHash);
        }
        if let Some(nonces) = expected.nonces
            && !claim("nonce").is_some_and(|nonce| nonces.accepts(nonce, now))
        {
            return Err(DpopRejection::NonceRequired);
        }
        Ok(VerifiedDpopProof {
            thumbprint: key.thumbprint(),
            jti: jti.to_owned(),
            iat,
        })
    }
}

/// Server nonces (RFC 9449 §8) that need no storage, so every instance accepts every other's:
/// a nonce names a time window and carries an HMAC of it under a secret derived from the signing
/// keys, which every instance of the token endpoint holds. The newest key makes them; any key of
/// the set accepts them, so a rotation's overlap keeps instances agreeing.
pub struct DpopNonces {
    keys: Vec<aws_lc_rs::hmac::Key>,
}

impl fmt::Debug for DpopNonces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopNonces")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl DpopNonces {
    /// Nonces under these secrets, the first of which makes new ones.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self {
            keys: secrets
                .into_iter()
                .map(|secret| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret))
                .collect(),
        }
    }

    fn window(now: DateTime<Utc>) -> i64 {
        now.timestamp().div_euclid(NONCE_WINDOW_SECONDS)
    }

    fn nonce(key: &aws_lc_rs::hmac::Key, window: i64) -> String {
        let window = window.to_be_bytes();
        let tag = aws_lc_rs::hmac::sign(key, &[b"dpop-nonce".as_slice(), &window].concat());
        let mut bytes = window.to_vec();
        bytes.extend_from_slice(&tag.as_ref()[..NONCE_TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A nonce for proofs made from now on; `None` when no key makes one.
    pub fn issue(&self, now: DateTime<Utc>) -> Option<String> {
        self.keys
            .first()
            .map(|key| Self::nonce(key, Self::window(now)))
    }

    /// Whether `nonce` was made by one of the keys for this window or the one before.
    pub fn accepts(&self, nonce: &str, now: DateTime<Utc>) -> bool {
        let Some(window) = URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()
            .filter(|bytes| bytes.len() == 8 + NONCE_TAG_BYTES)
            .and_then(|bytes| bytes[..8].try_into().ok())
            .map(i64::from_be_bytes)
        else {
            return false;
        };
        let current = Self::window(now);
        if window != current && window != current - 1 {
            return false;
        }
        self.keys.iter().any(|key| {
            crate::secret::constant_time_eq(Self::nonce(key, window).as_bytes(), nonce.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    const URL: &str = "https://idp.example.com/api/v1/token";

    fn key_pair() -> EcdsaKeyPair {
        EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap()
    }

    fn public_jwk(pair: &EcdsaKeyPair) -> Value {
        let point = pair.public_key().as_ref();
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    fn sign(pair: &EcdsaKeyPair, header: &Value, claims: &Value) -> DpopProof {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = pair.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        DpopProof::new(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    fn header(pair: &EcdsaKeyPair) -> Value {
        json!({ "typ": DPOP_PROOF_TYPE, "alg": "ES256", "jwk": public_jwk(pair) })
    }

    fn claims(now: DateTime<Utc>) -> Value {
        json!({ "jti": "j1", "htm": "POST", "htu": URL, "iat": now.timestamp() })
    }

    fn expectations<'a>() -> DpopExpectations<'a> {
        DpopExpectations {
            method: "POST",
            url: URL,
            access_token: None,
            max_age_seconds: 60,
            nonces: None,
        }
    }

    #[test]
    fn a_fresh_proof_yields_its_keys_thumbprint() {
        let pair = key_pair();
        let now = Utc::now();
        let verified = sign(&pair, &header(&pair), &claims(now))
            .verify(&expectations(), now)
            .unwrap();
        let jwk = public_jwk(&pair);
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        let expected = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ));
        assert_eq!(verified.thumbprint, expected);
        assert_eq!(verified.jti, "j1");
    }

    #[test]
    fn the_url_is_compared_without_query_and_with_scheme_and_host_normalised() {
        let pair = key_pair();
        let now = Utc::now();
        let mut c = claims(now);
        c["htu"] = json!("HTTPS://IDP.example.com:443/api/v1/token?x=1#f");
        assert!(
            sign(&pair, &header(&pair), &c)
                .verify(&expectations(), now)
                .is_ok()
        );
        c["htu"] = json!("https://idp.example.com/api/v1/token/introspect");
        assert_eq!(
            sign(&pair, &header(&pair), &c).verify(&expectations(), now),
            Err(DpopRejection::WrongUrl)
        );
    }

    #[test]
    fn each_broken_rule_is_its_own_refusal() {
        let pair = key_pair();
        let now = Utc::now();
        let refused = |header: Value, claims: Value, expected: &DpopExpectations<'_>| {
            sign(&pair, &header, &claims)
                .verify(expected, now)
                .unwrap_err()
        };
        let base = expectations();
        let mut h = header(&pair);
        h["typ"] = json!("JWT");
        assert_eq!(refused(h, claims(now), &base), DpopRejection::WrongType);
        let mut h = header(&pair);
        h["alg"] = json!("HS256");
        assert_eq!(
            refused(h, claims(now), &base),
            DpopRejection::AlgorithmNotAllowed
        );
        let mut h = header(&pair);
        h["alg"] = json!("none");
        assert_eq!(
            refused(h, claims(now), &base),
            DpopRejection::AlgorithmNotAllowed
        );
        let mut h = header(&pair);
        h["jwk"]["d"] = json!("c2VjcmV0");
        assert_eq!(refused(h, claims(now), &base), DpopRejection::InvalidKey);
        let mut h = header(&pair);
        h["alg"] = json!("RS256");
        assert_eq!(refused(h, claims(now), &base), DpopRejection::InvalidKey);
        let mut h = header(&pair);
        h["jwk"] = public_jwk(&key_pair());
        assert_eq!(refused(h, claims(now), &base), DpopRejection::BadSignature);
        let mut c = claims(now);
        c["htm"] = json!("GET");
        assert_eq!(refused(header(&pair), c, &base), DpopRejection::WrongMethod);
        for iat in [now.timestamp() - 61, now.timestamp() + 61] {
            let mut c = claims(now);
            c["iat"] = json!(iat);
            assert_eq!(refused(header(&pair), c, &base), DpopRejection::Stale);
        }
        let mut c = claims(now);
        c.as_object_mut().unwrap().remove("jti");
        assert_eq!(refused(header(&pair), c, &base), DpopRejection::MissingJti);
        let with_token = DpopExpectations {
            access_token: Some("the-token"),
            ..expectations()
        };
        let mut c = claims(now);
        c["ath"] = json!(access_token_hash("another-token"));
        assert_eq!(
            refused(header(&pair), c, &with_token),
            DpopRejection::WrongAccessTokenHash
        );
        let mut c = claims(now);
        c["ath"] = json!(access_token_hash("the-token"));
        assert!(
            sign(&pair, &header(&pair), &c)
                .verify(&with_token, now)
                .is_ok()
        );
    }

    #[test]
    fn a_nonce_is_accepted_for_two_windows_and_only_under_the_servers_keys() {
        let now = Utc::now();
        let nonces = DpopNonces::new([b"secret one".as_slice(), b"secret two".as_slice()]);
        let nonce = nonces.issue(now).unwrap();
        assert!(nonces.accepts(&nonce, now));
        let later = now + chrono::Duration::seconds(NONCE_WINDOW_SECONDS);
        assert!(nonces.accepts(&nonce, later));
        let too_late = now + chrono::Duration::seconds(2 * NONCE_WINDOW_SECONDS);
        assert!(!nonces.accepts(&nonce, too_late));
        // A set that lost the first key (it rotated out) still accepts what the second made.
        let older = DpopNonces::new([b"secret two".as_slice()]);
        assert!(nonces.accepts(&older.issue(now).unwrap(), now));
        let stranger = DpopNonces::new([b"another server".as_slice()]);
        assert!(!nonces.accepts(&stranger.issue(now).unwrap(), now));
        assert!(!nonces.accepts("garbage", now));

        let pair = key_pair();
        let with_nonces = DpopExpectations {
            nonces: Some(&nonces),
            ..expectations()
        };
        assert_eq!(
            sign(&pair, &header(&pair), &claims(now)).verify(&with_nonces, now),
            Err(DpopRejection::NonceRequired)
        );
        let mut c = claims(now);
        c["nonce"] = json!(nonce);
        assert!(
            sign(&pair, &header(&pair), &c)
                .verify(&with_nonces, now)
                .is_ok()
        );
    }

    #[test]
    fn a_proof_and_the_token_it_goes_with_never_show_in_debug_output() {
        let proof = DpopProof::new("eyJhbGciOi.secret.sig".into());
        assert!(!format!("{proof:?}").contains("secret"));
        let expected = DpopExpectations {
            access_token: Some("eyJ.the-token.sig"),
            ..expectations()
        };
        assert!(!format!("{expected:?}").contains("the-token"));
    }
}
