//! private_key_jwt client authentication (RFC 7523 §2.2, RFC 7521 §4.2): an agent signs a short
//! JWT with its own private key and presents it at the token endpoint. AgentIdP keeps only the
//! client's public keys, as a JWKS validated here, and verifies the assertion against them.
//!
//! Pure: no clock, no store. Replay (a jti seen before) is the caller's to refuse, using
//! [`VerifiedAssertion::expires_at`] to know how long to remember the jti.

use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ParsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use crate::remote_keys::JwksUri;
use crate::validation::{FieldError, check_text};

/// More keys than this is not a rotation but a key store; refused to bound the work per request.
const MAX_KEYS: usize = 10;
/// A published set (a `jwksUri`) may hold keys for other uses and a provider's rotation overlap;
/// past this it is refused, bounding the work and memory one URL can cost.
pub const MAX_PUBLISHED_KEYS: usize = 32;
const MAX_KID_CHARS: usize = 128;
/// Assertions larger than this are refused before any parsing; a real one is well under 2 KiB.
const MAX_ASSERTION_BYTES: usize = 8 * 1024;
const MAX_JTI_CHARS: usize = 256;

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;
/// AWS-LC refuses public exponents longer than this when it verifies, so such a key could never
/// authenticate: better refused when it is registered.
const MAX_RSA_EXPONENT_BITS: usize = 33;
const P256_COORDINATE_BYTES: usize = 32;
const ED25519_KEY_BYTES: usize = 32;

/// The JWK members that hold, or are part of, a private or symmetric key (RFC 7518 §6.2.2, §6.3.2,
/// §6.4; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
const PRIVATE_KEY_REFUSED: &str = "private key material is refused; send the public key only";

/// The JWS algorithms an assertion may use. Never `none`, never HMAC: an HMAC "key" would be the
/// public key itself, which anyone can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AssertionAlgorithm {
    RS256,
    PS256,
    ES256,
    EdDSA,
}

/// RFC 9864's fully specified name of EdDSA with Ed25519, the only curve accepted here: what
/// openid-client 6 writes in `alg` for an Ed25519 key.
const ED25519_ALGORITHM_NAME: &str = "Ed25519";

/// The algorithms an assertion may be signed with, as the metadata's
/// `token_endpoint_auth_signing_alg_values_supported` lists them.
pub const ASSERTION_ALGORITHMS: [&str; 5] = [
    AssertionAlgorithm::RS256.as_str(),
    AssertionAlgorithm::PS256.as_str(),
    AssertionAlgorithm::ES256.as_str(),
    AssertionAlgorithm::EdDSA.as_str(),
    ED25519_ALGORITHM_NAME,
];

impl AssertionAlgorithm {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "RS256" => Some(Self::RS256),
            "PS256" => Some(Self::PS256),
            "ES256" => Some(Self::ES256),
            "EdDSA" | ED25519_ALGORITHM_NAME => Some(Self::EdDSA),
            _ => None,
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }

    fn jwt_algorithm(self) -> Algorithm {
        match self {
            Self::RS256 => Algorithm::RS256,
            Self::PS256 => Algorithm::PS256,
            Self::ES256 => Algorithm::ES256,
            Self::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// The public key itself, base64url as in the JWK (validated canonical, so equal keys compare
/// equal and the thumbprint is the RFC 7638 one).
#[derive(Clone, PartialEq, Eq)]
enum KeyMaterial {
    Rsa { n: String, e: String },
    P256 { x: String, y: String },
    Ed25519 { x: String },
}

impl KeyMaterial {
    fn kty(&self) -> &'static str {
        match self {
            KeyMaterial::Rsa { .. } => "RSA",
            KeyMaterial::P256 { .. } => "EC",
            KeyMaterial::Ed25519 { .. } => "OKP",
        }
    }

    fn algorithms(&self) -> &'static [AssertionAlgorithm] {
        match self {
            KeyMaterial::Rsa { .. } => &[AssertionAlgorithm::RS256, AssertionAlgorithm::PS256],
            KeyMaterial::P256 { .. } => &[AssertionAlgorithm::ES256],
            KeyMaterial::Ed25519 { .. } => &[AssertionAlgorithm::EdDSA],
        }
    }

    fn decoding_key(&self) -> jsonwebtoken::errors::Result<DecodingKey> {
        match self {
            KeyMaterial::Rsa { n, e } => DecodingKey::from_rsa_components(n, e),
            KeyMaterial::P256 { x, y } => DecodingKey::from_ec_components(x, y),
            KeyMaterial::Ed25519 { x } => DecodingKey::from_ed_components(x),
        }
    }

    /// RFC 7638 §3.2: the required members only, in lexicographic order, no white space. The
    /// values are base64url and the curve names fixed, so none needs JSON escaping.
    fn thumbprint(&self) -> String {
        let canonical = match self {
            KeyMaterial::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
            KeyMaterial::P256 { x, y } => {
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#)
            }
            KeyMaterial::Ed25519 { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
        };
        URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            canonical.as_bytes(),
        ))
    }
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ClientKey {
    kid: Option<String>,
    alg: Option<AssertionAlgorithm>,
    /// Kept only so the JWKS shown back is the one sent; validated to be `sig`.
    use_sig: bool,
    material: KeyMaterial,
    /// The kid, or the thumbprint when there is none: what names the key in audit and errors.
    id: String,
}

impl ClientKey {
    /// The key's RFC 7638 thumbprint: what a DPoP-bound token's `cnf.jkt` names.
    pub(crate) fn thumbprint(&self) -> String {
        self.material.thumbprint()
    }

    pub(crate) fn accepts(&self, alg: AssertionAlgorithm) -> bool {
        match self.alg {
            Some(pinned) => pinned == alg,
            None => self.material.algorithms().contains(&alg),
        }
    }

    /// Members inserted in lexicographic order, so the JSON is the same whether or not some
    /// crate in the build turns on serde_json's `preserve_order`.
    fn to_jwk(&self) -> Value {
        let mut members = BTreeMap::new();
        members.insert("kty", self.material.kty().to_owned());
        if let Some(kid) = &self.kid {
            members.insert("kid", kid.clone());
        }
        if let Some(alg) = self.alg {
            members.insert("alg", alg.as_str().to_owned());
        }
        if self.use_sig {
            members.insert("use", "sig".to_owned());
        }
        match &self.material {
            KeyMaterial::Rsa { n, e } => {
                members.insert("n", n.clone());
                members.insert("e", e.clone());
            }
            KeyMaterial::P256 { x, y } => {
                members.insert("crv", "P-256".to_owned());
                members.insert("x", x.clone());
                members.insert("y", y.clone());
            }
            KeyMaterial::Ed25519 { x } => {
                members.insert("crv", "Ed25519".to_owned());
                members.insert("x", x.clone());
            }
        }
        Value::Object(
            members
                .into_iter()
                .map(|(name, value)| (name.to_owned(), Value::String(value)))
                .collect::<Map<_, _>>(),
        )
    }
}

/// A client's public keys for private_key_jwt, validated: only public members are kept.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKeySet {
    keys: Vec<ClientKey>,
}

impl fmt::Debug for ClientKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKeySet ")?;
        f.debug_map()
            .entries(self.keys.iter().map(|k| (&k.id, k.material.kty())))
            .finish()
    }
}

impl ClientKeySet {
    /// Validates a JWKS document (`{"keys": [...]}`) as an API caller sent it. Field paths in the
    /// errors start with `field_prefix` (the caller passes "jwks"), e.g. "jwks.keys[0].d".
    pub fn from_jwks(jwks: &Value, field_prefix: &str) -> Result<Self, Vec<FieldError>> {
        let keys_field = if field_prefix.is_empty() {
            "keys".to_owned()
        } else {
            format!("{field_prefix}.keys")
        };
        let Some(document) = jwks.as_object() else {
            let field = if field_prefix.is_empty() {
                "keys"
            } else {
                field_prefix
            };
            return Err(vec![FieldError::new(
                field,
                "must be a JWKS: an object with a `keys` array",
            )]);
        };
        let items = match document.get("keys") {
            None | Some(Value::Null) => {
                return Err(vec![FieldError::new(keys_field, "is required")]);
            }
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(vec![FieldError::new(
                    keys_field,
                    "must be an array of keys",
                )]);
            }
        };
        if items.is_empty() {
            return Err(vec![FieldError::new(
                keys_field,
                "must hold at least one key",
            )]);
        }
        if items.len() > MAX_KEYS {
            return Err(vec![FieldError::new(
                keys_field,
                format!("must hold at most {MAX_KEYS} keys"),
            )]);
        }
        let mut errors = Vec::new();
        let mut keys = Vec::with_capacity(items.len());
        let mut kids: Vec<(String, String)> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let field = format!("{keys_field}[{index}]");
            let Some(members) = item.as_object() else {
                errors.push(FieldError::new(field, "must be a JWK object"));
                continue;
            };
            if let Some(kid) = members.get("kid").and_then(Value::as_str) {
                let kid_field = format!("{field}.kid");
                match kids.iter().find(|(seen, _)| seen == kid) {
                    Some((_, first)) => errors.push(FieldError::new(
                        kid_field,
                        format!("duplicates {first}: key ids must be unique in the set"),
                    )),
                    None => kids.push((kid.to_owned(), kid_field)),
                }
            } else if items.len() > 1 && matches!(members.get("kid"), None | Some(Value::Null)) {
                // With several keys the assertion's header kid is what picks one; without a kid
                // on every key some would be unreachable or ambiguous.
                errors.push(FieldError::new(
                    format!("{field}.kid"),
                    "is required when the set holds more than one key",
                ));
            }
            if let Some(key) = read_key(members, &field, &mut errors) {
                keys.push(key);
            }
        }
        if errors.is_empty() {
            Ok(Self { keys })
        } else {
            Err(errors)
        }
    }

    /// Reads a JWKS as a key server publishes it (a `jwksUri`, a trusted issuer's keys), where
    /// sets routinely hold keys for other uses: encryption keys, algorithms and curves not
    /// accepted here are skipped rather than refused, and the set is refused only if no key is
    /// usable, if it holds private key material (its owner leaked it: nothing signed with it
    /// proves anything), or if it is larger than [`MAX_PUBLISHED_KEYS`].
    pub fn from_published_jwks(jwks: &Value) -> Result<Self, String> {
        let items = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the document is not a JWKS: it has no `keys` array")?;
        if items.len() > MAX_PUBLISHED_KEYS {
            return Err(format!(
                "the JWKS holds {} keys, more than the {MAX_PUBLISHED_KEYS} accepted",
                items.len()
            ));
        }
        let mut keys: Vec<ClientKey> = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let Some(members) = item.as_object() else {
                continue;
            };
            if let Some(name) = PRIVATE_MEMBERS.iter().find(|m| members.contains_key(**m)) {
                return Err(format!(
                    "key {index} of the JWKS holds private key material (`{name}`)"
                ));
            }
            let mut problems = Vec::new();
            if let Some(key) = read_key(members, "keys", &mut problems)
                && problems.is_empty()
                && !keys.iter().any(|k| k.id == key.id)
            {
                keys.push(key);
            }
        }
        // Several keys without a kid cannot be told apart; an assertion names the one it needs.
        if keys.len() > 1 {
            keys.retain(|k| k.kid.is_some());
        }
        if keys.is_empty() {
            return Err("the JWKS holds no key usable for signatures here".into());
        }
        Ok(Self { keys })
    }

    /// Whether a key of this set has this id (its kid, or its thumbprint when it has none).
    pub fn has_key(&self, key_id: &str) -> bool {
        self.keys.iter().any(|k| k.id == key_id)
    }

    /// The stored form: canonical JSON `{"keys":[...]}` of the public members only.
    pub fn to_json(&self) -> String {
        self.jwks().to_string()
    }

    /// Parses the stored form (validated again; an error is a corrupt store record).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("the stored client key set is not JSON: {e}"))?;
        Self::from_jwks(&value, "jwks").map_err(|errors| {
            let problems: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            format!(
                "the stored client key set is invalid: {}",
                problems.join("; ")
            )
        })
    }

    /// The key ids, in the set's order (a key without `kid` is listed as its RFC 7638 thumbprint).
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// The public JWKS to show an API caller (the same public members).
    pub fn jwks(&self) -> Value {
        let mut document = Map::new();
        document.insert(
            "keys".to_owned(),
            Value::Array(self.keys.iter().map(ClientKey::to_jwk).collect()),
        );
        Value::Object(document)
    }

    /// Verifies a client assertion against these keys and `expected`, at `now`.
    ///
    /// The signature is checked before any claim, so a forger learns nothing from which claim
    /// check a forgery would have failed.
    pub fn verify_assertion(
        &self,
        assertion: &ClientAssertion,
        expected: &AssertionExpectations<'_>,
        now: DateTime<Utc>,
    ) -> Result<VerifiedAssertion, AssertionRejection> {
        let (claims, key_id) = self.verify_signature(assertion.expose())?;
        check_claims(&claims, expected, now, &key_id)
    }

    /// Verifies a workload's token from a trusted issuer (RFC 7523 §2.1) against these, the
    /// issuer's keys: signature, then `iss`, `sub`, `aud`, and times at `now`. Its `jti` is not
    /// single use: a workload presents the token its platform gave it until the platform
    /// replaces it, as every federation of this kind (Kubernetes, GitHub, cloud STSs) expects.
    pub fn verify_federated(
        &self,
        token: &ClientAssertion,
        expected: &FederatedExpectations<'_>,
        now: DateTime<Utc>,
    ) -> Result<VerifiedFederation, AssertionRejection> {
        let (claims, key_id) = self.verify_signature(token.expose())?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if text("iss") != Some(expected.issuer) {
            return Err(AssertionRejection::UntrustedIssuer);
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => aud == expected.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a == expected.audience),
            _ => false,
        };
        if !audience_ok {
            return Err(AssertionRejection::WrongAudience);
        }
        let subject = text("sub").ok_or(AssertionRejection::UnknownSubject)?;
        if subject != expected.subject {
            return Err(AssertionRejection::UnknownSubject);
        }
        let expires_at = check_times(&claims, now, expected.leeway_seconds)?;
        Ok(VerifiedFederation {
            issuer: expected.issuer.to_owned(),
            subject: subject.to_owned(),
            expires_at,
            key_id,
        })
    }

    /// The signature of a compact JWS against the key its header names, and its claims.
    /// Checked before any claim, so a forger learns nothing from which claim check a forgery
    /// would have failed.
    fn verify_signature(
        &self,
        token: &str,
    ) -> Result<(Map<String, Value>, String), AssertionRejection> {
        if token.len() > MAX_ASSERTION_BYTES {
            return Err(AssertionRejection::TooLarge);
        }
        let header = read_header(token)?;
        let alg = AssertionAlgorithm::parse(&header.alg)
            .ok_or(AssertionRejection::AlgorithmNotAllowed)?;
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|k| k.id == *kid),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .ok_or(AssertionRejection::UnknownKey)?;
        if !key.accepts(alg) {
            return Err(AssertionRejection::AlgorithmNotAllowed);
        }
        Ok((signed_claims(token, key, alg)?, key.id.clone()))
    }
}

/// A compact JWS's claims, once its signature checks out against `key` with `alg`.
pub(crate) fn signed_claims(
    token: &str,
    key: &ClientKey,
    alg: AssertionAlgorithm,
) -> Result<Map<String, Value>, AssertionRejection> {
    // The key was validated when read, so this cannot fail; were it to, it verifies nothing.
    let decoding = key
        .material
        .decoding_key()
        .map_err(|_| AssertionRejection::UnknownKey)?;
    // The signature by hand rather than with `jsonwebtoken::decode`, whose header parser knows
    // no `Ed25519`; the claims are the caller's to check, against the injected `now`.
    let [header_part, payload_part, signature] =
        jws_parts(token).ok_or(AssertionRejection::Malformed)?;
    let signed = &token[..header_part.len() + 1 + payload_part.len()];
    match jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &decoding, alg.jwt_algorithm())
    {
        Ok(true) => {}
        Ok(false) => return Err(AssertionRejection::BadSignature),
        Err(_) => return Err(AssertionRejection::Malformed),
    }
    let claims: Value = URL_SAFE_NO_PAD
        .decode(payload_part)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(AssertionRejection::Malformed)?;
    match claims {
        Value::Object(claims) => Ok(claims),
        _ => Err(AssertionRejection::Malformed),
    }
}

/// `exp` (required), `nbf` and `iat` against `now`, with `leeway` seconds of skew: when the
/// token expires.
fn check_times(
    claims: &Map<String, Value>,
    now: DateTime<Utc>,
    leeway: i64,
) -> Result<DateTime<Utc>, AssertionRejection> {
    let now = now.timestamp();
    let leeway = leeway.max(0);
    let exp = claims
        .get("exp")
        .and_then(numeric_date)
        .ok_or(AssertionRejection::MissingExpiry)?;
    if exp <= now.saturating_sub(leeway) {
        return Err(AssertionRejection::Expired);
    }
    for name in ["nbf", "iat"] {
        if let Some(value) = claims.get(name) {
            let at = numeric_date(value).ok_or(AssertionRejection::Malformed)?;
            if at > now.saturating_add(leeway) {
                return Err(AssertionRejection::NotYetValid);
            }
        }
    }
    DateTime::from_timestamp(exp, 0).ok_or(AssertionRejection::Malformed)
}

fn check_claims(
    claims: &Map<String, Value>,
    expected: &AssertionExpectations<'_>,
    now: DateTime<Utc>,
    key_id: &str,
) -> Result<VerifiedAssertion, AssertionRejection> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    // RFC 7523 §3: iss and sub are both the client id for client authentication.
    if text("iss") != Some(expected.client_id) || text("sub") != Some(expected.client_id) {
        return Err(AssertionRejection::WrongIssuerOrSubject);
    }
    let accepted = |aud: &str| expected.audiences.iter().any(|a| a == aud);
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => accepted(aud),
        // One audience only: an assertion naming several servers would be accepted by each
        // (the audience injection draft-ietf-oauth-rfc7523bis closes).
        Some(Value::Array(auds)) if auds.len() == 1 => {
            auds.iter().filter_map(Value::as_str).any(accepted)
        }
        _ => false,
    };
    if !audience_ok {
        return Err(AssertionRejection::WrongAudience);
    }
    let leeway = expected.leeway_seconds.max(0);
    let expires_at = check_times(claims, now, leeway)?;
    if expires_at.timestamp()
        > now
            .timestamp()
            .saturating_add(expected.max_lifetime_seconds)
            .saturating_add(leeway)
    {
        return Err(AssertionRejection::LifetimeTooLong);
    }
    let jti = text("jti")
        .filter(|jti| !jti.is_empty() && jti.chars().count() <= MAX_JTI_CHARS)
        .ok_or(AssertionRejection::MissingJti)?;
    Ok(VerifiedAssertion {
        jti: jti.to_owned(),
        expires_at,
        key_id: key_id.to_owned(),
    })
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional, truncated down to whole seconds.
pub(crate) fn numeric_date(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        value
            .as_f64()
            .filter(|seconds| seconds.is_finite())
            .map(|seconds| seconds.floor() as i64)
    })
}

struct AssertionHeader {
    alg: String,
    kid: Option<String>,
}

/// Read by hand rather than with `jsonwebtoken::decode_header`, which cannot represent `none` or
/// an unknown algorithm and would report those as malformed rather than as not allowed.
fn read_header(token: &str) -> Result<AssertionHeader, AssertionRejection> {
    let [header, _, _] = jws_parts(token).ok_or(AssertionRejection::Malformed)?;
    let header: Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(AssertionRejection::Malformed)?;
    let header = header.as_object().ok_or(AssertionRejection::Malformed)?;
    // RFC 7515 §4.1.11: an extension we do not implement must not be ignored.
    if header.contains_key("crit") {
        return Err(AssertionRejection::Malformed);
    }
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(AssertionRejection::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AssertionRejection::Malformed),
    };
    Ok(AssertionHeader { alg, kid })
}

/// The three parts of a JWS compact serialization, or None when it has another number of parts.
pub(crate) fn jws_parts(token: &str) -> Option<[&str; 3]> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => Some([header, payload, signature]),
        _ => None,
    }
}

/// One key of the JWKS, or None with its problems pushed onto `errors`.
pub(crate) fn read_key(
    members: &Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<ClientKey> {
    let before = errors.len();
    for name in PRIVATE_MEMBERS {
        if members.contains_key(name) {
            errors.push(FieldError::new(
                format!("{field}.{name}"),
                PRIVATE_KEY_REFUSED,
            ));
        }
    }
    let mut member = |name: &str| -> Option<&str> {
        match members.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(value)) => Some(value.as_str()),
            Some(_) => {
                errors.push(FieldError::new(
                    format!("{field}.{name}"),
                    "must be a string",
                ));
                None
            }
        }
    };
    let kty = member("kty");
    let kid = member("kid").map(str::to_owned);
    let alg = member("alg").map(str::to_owned);
    let use_ = member("use").map(str::to_owned);
    let n = member("n").map(str::to_owned);
    let e = member("e").map(str::to_owned);
    let crv = member("crv").map(str::to_owned);
    let x = member("x").map(str::to_owned);
    let y = member("y").map(str::to_owned);

    let path = |name: &str| format!("{field}.{name}");
    if let Some(kid) = &kid {
        check_text(&path("kid"), kid, MAX_KID_CHARS, errors);
    }
    if let Some(use_) = &use_
        && use_ != "sig"
    {
        errors.push(FieldError::new(
            path("use"),
            "must be \"sig\": the key verifies client assertions",
        ));
    }
    match members.get("key_ops") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ops)) if ops.iter().all(Value::is_string) => {
            if !ops.iter().any(|op| op == "verify") {
                errors.push(FieldError::new(
                    path("key_ops"),
                    "must contain \"verify\": the key verifies client assertions",
                ));
            }
        }
        Some(_) => errors.push(FieldError::new(
            path("key_ops"),
            "must be an array of strings",
        )),
    }

    let material = match kty {
        None => {
            if !members.contains_key("kty") || members.get("kty") == Some(&Value::Null) {
                errors.push(FieldError::new(path("kty"), "is required"));
            }
            None
        }
        Some("RSA") => read_rsa(n.as_deref(), e.as_deref(), &path, errors),
        Some("EC") => read_p256(crv.as_deref(), x.as_deref(), y.as_deref(), &path, errors),
        Some("OKP") => read_ed25519(crv.as_deref(), x.as_deref(), &path, errors),
        Some("oct") => {
            errors.push(FieldError::new(
                path("kty"),
                "symmetric (oct) keys are refused: private_key_jwt needs a public key \
                 (RSA, EC P-256 or Ed25519)",
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(path("kty"), "must be RSA, EC or OKP"));
            None
        }
    };
    let material = material?;
    let alg = match alg {
        None => None,
        Some(alg) => match AssertionAlgorithm::parse(&alg)
            .filter(|alg| material.algorithms().contains(alg))
        {
            Some(alg) => Some(alg),
            None => {
                let fitting: Vec<&str> = material.algorithms().iter().map(|a| a.as_str()).collect();
                errors.push(FieldError::new(
                    path("alg"),
                    format!(
                        "must be {} for this key type, or left out",
                        fitting.join(" or ")
                    ),
                ));
                None
            }
        },
    };
    if let Err(e) = material.decoding_key() {
        errors.push(FieldError::new(
            field,
            format!("is not a usable public key: {e}"),
        ));
    }
    if errors.len() > before {
        return None;
    }
    let id = kid.clone().unwrap_or_else(|| material.thumbprint());
    Some(ClientKey {
        kid,
        alg,
        use_sig: use_.is_some(),
        material,
        id,
    })
}

/// Decodes a base64url member (RFC 7515 §2: no padding), pushing a problem when it is not.
fn decode_member(
    value: Option<&str>,
    name: &str,
    path: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Option<Vec<u8>> {
    let Some(value) = value else {
        errors.push(FieldError::new(path(name), "is required"));
        return None;
    };
    match URL_SAFE_NO_PAD.decode(value) {
        Ok(bytes) if !bytes.is_empty() => Some(bytes),
        _ => {
            errors.push(FieldError::new(
                path(name),
                "must be non-empty base64url without padding",
            ));
            None
        }
    }
}

fn read_rsa(
    n: Option<&str>,
    e: Option<&str>,
    path: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Option<KeyMaterial> {
    let modulus = decode_member(n, "n", path, errors);
    let exponent = decode_member(e, "e", path, errors);
    let (modulus, exponent) = (modulus?, exponent?);
    let mut valid = true;
    // RFC 7518 §6.3.1.1: no leading zero octet; AWS-LC refuses one when it verifies.
    if modulus.first() == Some(&0) {
        errors.push(FieldError::new(
            path("n"),
            "must not start with a zero octet (RFC 7518 §6.3.1.1)",
        ));
        valid = false;
    } else {
        let bits = bit_length(&modulus);
        if bits < MIN_RSA_BITS {
            errors.push(FieldError::new(
                path("n"),
                format!("an RSA key must be at least {MIN_RSA_BITS} bits; this one is {bits}"),
            ));
            valid = false;
        } else if bits > MAX_RSA_BITS {
            errors.push(FieldError::new(
                path("n"),
                format!("an RSA key must be at most {MAX_RSA_BITS} bits; this one is {bits}"),
            ));
            valid = false;
        } else if modulus.last().is_some_and(|low| low & 1 == 0) {
            errors.push(FieldError::new(
                path("n"),
                "is not an RSA modulus (it is even)",
            ));
            valid = false;
        }
    }
    let exponent_ok = exponent.first() != Some(&0)
        && bit_length(&exponent) <= MAX_RSA_EXPONENT_BITS
        && exponent.last().is_some_and(|low| low & 1 == 1)
        && bit_length(&exponent) >= 2;
    if !exponent_ok {
        errors.push(FieldError::new(
            path("e"),
            "must be an odd public exponent from 3 to 2^33 - 1, without leading zero octets",
        ));
        valid = false;
    }
    valid.then(|| KeyMaterial::Rsa {
        n: URL_SAFE_NO_PAD.encode(&modulus),
        e: URL_SAFE_NO_PAD.encode(&exponent),
    })
}

fn read_p256(
    crv: Option<&str>,
    x: Option<&str>,
    y: Option<&str>,
    path: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Option<KeyMaterial> {
    if crv != Some("P-256") {
        errors.push(FieldError::new(
            path("crv"),
            "must be P-256: the only EC curve accepted",
        ));
        return None;
    }
    let x_bytes = decode_member(x, "x", path, errors);
    let y_bytes = decode_member(y, "y", path, errors);
    let (x_bytes, y_bytes) = (x_bytes?, y_bytes?);
    let mut valid = true;
    for (name, bytes) in [("x", &x_bytes), ("y", &y_bytes)] {
        if bytes.len() != P256_COORDINATE_BYTES {
            errors.push(FieldError::new(
                path(name),
                format!("must be {P256_COORDINATE_BYTES} bytes for P-256"),
            ));
            valid = false;
        }
    }
    if !valid {
        return None;
    }
    let mut point = Vec::with_capacity(1 + 2 * P256_COORDINATE_BYTES);
    point.push(0x04);
    point.extend_from_slice(&x_bytes);
    point.extend_from_slice(&y_bytes);
    // A point off the curve would fail every verification; worse, it is a classic attack input.
    if ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point).is_err() {
        errors.push(FieldError::new(
            path("x"),
            "x and y are not a point on the P-256 curve",
        ));
        return None;
    }
    Some(KeyMaterial::P256 {
        x: URL_SAFE_NO_PAD.encode(&x_bytes),
        y: URL_SAFE_NO_PAD.encode(&y_bytes),
    })
}

fn read_ed25519(
    crv: Option<&str>,
    x: Option<&str>,
    path: &dyn Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) -> Option<KeyMaterial> {
    if crv != Some("Ed25519") {
        errors.push(FieldError::new(
            path("crv"),
            "must be Ed25519: the only OKP curve accepted",
        ));
        return None;
    }
    let x_bytes = decode_member(x, "x", path, errors)?;
    if x_bytes.len() != ED25519_KEY_BYTES {
        errors.push(FieldError::new(
            path("x"),
            format!("must be {ED25519_KEY_BYTES} bytes for Ed25519"),
        ));
        return None;
    }
    if is_weak_ed25519(&x_bytes) {
        errors.push(FieldError::new(
            path("x"),
            "is a point of small order or not reduced: a signature anyone can make verifies with it",
        ));
        return None;
    }
    Some(KeyMaterial::Ed25519 {
        x: URL_SAFE_NO_PAD.encode(&x_bytes),
    })
}

/// The encodings of the points of small order (libsodium's `has_small_order` list, with the
/// sign bit cleared): the identity, the points of order 2, 4 and 8. AWS-LC's Ed25519
/// verification does not refuse them, and with the identity as public key one fixed signature
/// verifies every message.
const SMALL_ORDER_ED25519: [[u8; 32]; 4] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
];

/// A public Ed25519 key no signature should be trusted from: a point of small order, or a `y`
/// that is not reduced modulo p = 2^255 - 19 (which covers the non-canonical p - 1... p + 18,
/// among them the other spellings of the points above).
fn is_weak_ed25519(x: &[u8]) -> bool {
    let Ok(encoded) = <[u8; 32]>::try_from(x) else {
        return true;
    };
    let mut y = encoded;
    y[31] &= 0x7f;
    let top_is_all_ones = y[31] == 0x7f && y[1..31].iter().all(|b| *b == 0xff);
    // p - 1 is 0xec ff..ff 7f: y >= p - 1 is the point of order 2 or not reduced.
    let order_two_or_unreduced = top_is_all_ones && y[0] >= 0xec;
    order_two_or_unreduced || SMALL_ORDER_ED25519.contains(&y)
}

/// The bit length of a big-endian unsigned integer without leading zero octets.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(first) => bytes.len() * 8 - first.leading_zeros() as usize,
    }
}

/// Where the public keys of a client or of a trusted issuer are: held here, or published by
/// their owner at a URL and fetched when needed (so the owner rotates them without telling us).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeys {
    Inline(ClientKeySet),
    Published(JwksUri),
}

impl PublicKeys {
    /// The stored form: the JWKS itself, or `{"jwksUri": ...}`.
    pub fn to_json(&self) -> String {
        match self {
            PublicKeys::Inline(keys) => keys.to_json(),
            PublicKeys::Published(uri) => {
                serde_json::json!({ "jwksUri": uri.as_str() }).to_string()
            }
        }
    }

    /// Parses the stored form (an error is a corrupt store record).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| format!("the stored public keys are not JSON: {e}"))?;
        match value.get("jwksUri").and_then(Value::as_str) {
            Some(uri) => JwksUri::from_stored(uri).map(PublicKeys::Published),
            None => ClientKeySet::from_json(text).map(PublicKeys::Inline),
        }
    }

    pub fn key_ids(&self) -> Option<Vec<String>> {
        match self {
            PublicKeys::Inline(keys) => Some(keys.key_ids()),
            PublicKeys::Published(_) => None,
        }
    }

    pub fn jwks_uri(&self) -> Option<&JwksUri> {
        match self {
            PublicKeys::Inline(_) => None,
            PublicKeys::Published(uri) => Some(uri),
        }
    }
}

/// A client_assertion as received: Debug and Display never print it.
pub struct ClientAssertion(String);

impl ClientAssertion {
    pub fn new(text: String) -> Self {
        Self(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What can be refused before any key is looked for: the size, the header's form and its
    /// algorithm. What is left is the header's `kid`: which key of a published set the
    /// assertion needs. Checked first, so that no malformed assertion costs a key set fetch.
    pub fn precheck(&self) -> Result<Option<String>, AssertionRejection> {
        if self.0.len() > MAX_ASSERTION_BYTES {
            return Err(AssertionRejection::TooLarge);
        }
        let header = read_header(&self.0)?;
        AssertionAlgorithm::parse(&header.alg).ok_or(AssertionRejection::AlgorithmNotAllowed)?;
        Ok(header.kid)
    }

    /// The client id the assertion claims, read before any key is known: its `sub`, when the
    /// payload decodes and `iss` == `sub` (both strings); None otherwise. No signature check.
    pub fn claimed_client_id(&self) -> Option<String> {
        if self.0.len() > MAX_ASSERTION_BYTES {
            return None;
        }
        let [_, payload, _] = jws_parts(&self.0)?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        let iss = claims.get("iss")?.as_str()?;
        let sub = claims.get("sub")?.as_str()?;
        (iss == sub && !sub.is_empty()).then(|| sub.to_owned())
    }
}

impl fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientAssertion([redacted])")
    }
}

impl fmt::Display for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

pub struct AssertionExpectations<'a> {
    pub client_id: &'a str,
    /// Accepted `aud` values: the issuer and the token endpoint URL (RFC 7523 §3); `aud` may be a
    /// string or an array, and one of its values must be one of these.
    pub audiences: &'a [String],
    /// `exp` may be at most this far after `now` (default the caller passes: 300).
    pub max_lifetime_seconds: i64,
    /// Clock skew allowed on `exp`, `nbf` and `iat` (the caller passes 30).
    pub leeway_seconds: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    pub jti: String,
    /// When the assertion expires: the replay record of its jti must outlive it.
    pub expires_at: DateTime<Utc>,
    /// The key that verified it (its kid, or its thumbprint when it has none).
    pub key_id: String,
}

pub struct FederatedExpectations<'a> {
    /// The trusted issuer's `iss`, compared exactly.
    pub issuer: &'a str,
    /// The audience the trusted issuer's tokens must carry (one of `aud`'s values).
    pub audience: &'a str,
    /// The external subject the credential maps to its agent.
    pub subject: &'a str,
    pub leeway_seconds: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedFederation {
    pub issuer: String,
    pub subject: String,
    pub expires_at: DateTime<Utc>,
    pub key_id: String,
}

/// Why an assertion was refused. The token endpoint answers all of them with `invalid_client`;
/// the reason is for the audit log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssertionRejection {
    #[error("client assertion too large")]
    TooLarge,
    #[error("client assertion malformed")]
    Malformed,
    #[error("client assertion algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("client assertion names no registered key")]
    UnknownKey,
    #[error("client assertion signature invalid")]
    BadSignature,
    #[error("client assertion iss and sub are not the client id")]
    WrongIssuerOrSubject,
    #[error("client assertion audience is not this server")]
    WrongAudience,
    #[error("client assertion has no exp")]
    MissingExpiry,
    #[error("client assertion expired")]
    Expired,
    #[error("client assertion lifetime too long")]
    LifetimeTooLong,
    #[error("client assertion not yet valid")]
    NotYetValid,
    #[error("client assertion has no usable jti")]
    MissingJti,
    #[error("the token's issuer is not the trusted issuer")]
    UntrustedIssuer,
    #[error("the token's subject is not the credential's")]
    UnknownSubject,
}

impl AssertionRejection {
    /// The audit reason, snake_case, e.g. "assertion_expired", "assertion_bad_signature".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "assertion_too_large",
            Self::Malformed => "assertion_malformed",
            Self::AlgorithmNotAllowed => "assertion_algorithm_not_allowed",
            Self::UnknownKey => "assertion_unknown_key",
            Self::BadSignature => "assertion_bad_signature",
            Self::WrongIssuerOrSubject => "assertion_wrong_issuer_or_subject",
            Self::WrongAudience => "assertion_wrong_audience",
            Self::MissingExpiry => "assertion_missing_expiry",
            Self::Expired => "assertion_expired",
            Self::LifetimeTooLong => "assertion_lifetime_too_long",
            Self::NotYetValid => "assertion_not_yet_valid",
            Self::MissingJti => "assertion_missing_jti",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::UnknownSubject => "unknown_subject",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
    };
    use base64::engine::general_purpose::STANDARD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const CLIENT_ID: &str = "0b7c1f7e-3f64-4c1e-9a55-1d2d0f6f4f11";
    const ISSUER: &str = "https://idp.example.com";
    const TOKEN_ENDPOINT: &str = "https://idp.example.com/oauth2/token";

    struct TestKey {
        /// The public JWK, without kid or alg.
        jwk: Value,
        signing: EncodingKey,
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa() -> TestKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'static> = pair.as_der().unwrap();
        let components: aws_lc_rs::rsa::PublicKeyComponents<Vec<u8>> = pair.public_key().into();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        TestKey {
            jwk: json!({"kty": "RSA", "n": b64(&components.n), "e": b64(&components.e)}),
            signing: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        }
    }

    fn p256() -> TestKey {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        TestKey {
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
            signing: EncodingKey::from_ec_der(pkcs8.as_ref()),
        }
    }

    fn ed25519() -> TestKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        TestKey {
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())}),
            signing: EncodingKey::from_ed_der(pkcs8.as_ref()),
        }
    }

    // RSA key generation is slow in a debug build: two keys shared by every test.
    static RSA: LazyLock<TestKey> = LazyLock::new(rsa);
    static OTHER_RSA: LazyLock<TestKey> = LazyLock::new(rsa);
    static P256: LazyLock<TestKey> = LazyLock::new(p256);
    static ED25519: LazyLock<TestKey> = LazyLock::new(ed25519);

    /// Long before the system clock: were any time check made against the system clock, every
    /// assertion here would be expired.
    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_600_000_000, 0).unwrap()
    }

    fn at(offset: i64) -> i64 {
        now().timestamp() + offset
    }

    fn with(jwk: &Value, members: Value) -> Value {
        let mut jwk = jwk.clone();
        for (name, value) in members.as_object().unwrap() {
            jwk[name] = value.clone();
        }
        jwk
    }

    fn set(keys: Vec<Value>) -> ClientKeySet {
        ClientKeySet::from_jwks(&json!({ "keys": keys }), "jwks").unwrap()
    }

    fn refusals(keys: Vec<Value>) -> Vec<FieldError> {
        ClientKeySet::from_jwks(&json!({ "keys": keys }), "jwks").unwrap_err()
    }

    fn claims() -> Value {
        json!({
            "iss": CLIENT_ID,
            "sub": CLIENT_ID,
            "aud": TOKEN_ENDPOINT,
            "exp": at(120),
            "iat": at(0),
            "jti": "7d2a4c1e-assertion-1",
        })
    }

    fn sign(key: &TestKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> ClientAssertion {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        ClientAssertion::new(jsonwebtoken::encode(&header, claims, &key.signing).unwrap())
    }

    fn compact(header: &Value, claims: &Value, signature: &[u8]) -> ClientAssertion {
        ClientAssertion::new(format!(
            "{}.{}.{}",
            b64(&serde_json::to_vec(header).unwrap()),
            b64(&serde_json::to_vec(claims).unwrap()),
            b64(signature)
        ))
    }

    fn verify(
        keys: &ClientKeySet,
        assertion: &ClientAssertion,
    ) -> Result<VerifiedAssertion, AssertionRejection> {
        let audiences = vec![ISSUER.to_owned(), TOKEN_ENDPOINT.to_owned()];
        let expected = AssertionExpectations {
            client_id: CLIENT_ID,
            audiences: &audiences,
            max_lifetime_seconds: 300,
            leeway_seconds: 30,
        };
        keys.verify_assertion(assertion, &expected, now())
    }

    /// An Ed25519 key "k1" alone in its set, verifying an assertion of these claims.
    fn verify_claims(claims: &Value) -> Result<VerifiedAssertion, AssertionRejection> {
        let keys = set(vec![with(&ED25519.jwk, json!({"kid": "k1"}))]);
        verify(&keys, &sign(&ED25519, Algorithm::EdDSA, Some("k1"), claims))
    }

    fn edited(members: Value) -> Value {
        with(&claims(), members)
    }

    fn without(name: &str) -> Value {
        let mut claims = claims();
        claims.as_object_mut().unwrap().remove(name);
        claims
    }

    #[test]
    fn each_key_type_verifies_a_good_assertion() {
        for (key, alg) in [
            (&*RSA, Algorithm::RS256),
            (&*RSA, Algorithm::PS256),
            (&*P256, Algorithm::ES256),
            (&*ED25519, Algorithm::EdDSA),
        ] {
            let keys = set(vec![with(&key.jwk, json!({"kid": "agent-key-1"}))]);
            let verified = verify(&keys, &sign(key, alg, Some("agent-key-1"), &claims()));
            assert_eq!(
                verified,
                Ok(VerifiedAssertion {
                    jti: "7d2a4c1e-assertion-1".into(),
                    expires_at: DateTime::from_timestamp(at(120), 0).unwrap(),
                    key_id: "agent-key-1".into(),
                }),
                "{alg:?}"
            );
        }
    }

    /// An assertion whose header names its algorithm `alg` as given, signed with `key` by
    /// `signing` (for RFC 9864's `Ed25519`, which jsonwebtoken's header does not know).
    fn signed_as(key: &TestKey, alg: &str, signing: Algorithm, claims: &Value) -> ClientAssertion {
        let message = format!(
            "{}.{}",
            b64(json!({"alg": alg, "kid": "k1"}).to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key.signing, signing).unwrap();
        ClientAssertion::new(format!("{message}.{signature}"))
    }

    #[test]
    fn an_ed25519_key_of_small_order_or_not_reduced_is_refused() {
        let mut spellings: Vec<[u8; 32]> = SMALL_ORDER_ED25519.to_vec();
        // The same points with the sign bit set, and p - 1, p, p + 1.
        spellings.extend(SMALL_ORDER_ED25519.iter().map(|y| {
            let mut signed = *y;
            signed[31] |= 0x80;
            signed
        }));
        for low in [0xec, 0xed, 0xee] {
            let mut y = [0xff; 32];
            y[0] = low;
            y[31] = 0x7f;
            spellings.push(y);
        }
        for y in spellings {
            let errors = refusals(vec![json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&y)})]);
            assert_eq!(errors.len(), 1, "{y:02x?}: {errors:?}");
            assert_eq!(errors[0].field, "jwks.keys[0].x", "{y:02x?}");
        }
        // A generated key is none of them.
        assert!(!is_weak_ed25519(
            &URL_SAFE_NO_PAD
                .decode(ED25519.jwk["x"].as_str().unwrap())
                .unwrap()
        ));
    }

    #[test]
    fn the_identity_key_would_verify_a_signature_anyone_can_make() {
        // Why the blocklist exists: this is the forgery it prevents, were the key accepted.
        let identity = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&SMALL_ORDER_ED25519[1])});
        let message = format!(
            "{}.{}",
            b64(json!({"alg": "EdDSA"}).to_string().as_bytes()),
            b64(claims().to_string().as_bytes())
        );
        let mut forged_signature = [0u8; 64];
        forged_signature[0] = 1;
        let key = DecodingKey::from_ed_components(identity["x"].as_str().unwrap()).unwrap();
        let verified = jsonwebtoken::crypto::verify(
            &b64(&forged_signature),
            message.as_bytes(),
            &key,
            Algorithm::EdDSA,
        );
        assert!(
            matches!(verified, Ok(true)),
            "AWS-LC verifies it: {verified:?}"
        );
        assert!(ClientKeySet::from_jwks(&json!({"keys": [identity]}), "jwks").is_err());
    }

    #[test]
    fn the_rfc_9864_name_ed25519_verifies_with_an_ed25519_key_only() {
        let ed25519 = set(vec![with(&ED25519.jwk, json!({"kid": "k1"}))]);
        let assertion = signed_as(&ED25519, "Ed25519", Algorithm::EdDSA, &claims());
        assert_eq!(verify(&ed25519, &assertion).unwrap().key_id, "k1");
        let p256 = set(vec![with(&P256.jwk, json!({"kid": "k1"}))]);
        let on_p256 = signed_as(&P256, "Ed25519", Algorithm::ES256, &claims());
        assert_eq!(
            verify(&p256, &on_p256),
            Err(AssertionRejection::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn the_key_is_chosen_by_kid_among_several() {
        let keys = set(vec![
            with(&RSA.jwk, json!({"kid": "rsa"})),
            with(&P256.jwk, json!({"kid": "ec"})),
            with(&ED25519.jwk, json!({"kid": "ed"})),
        ]);
        let assertion = sign(&P256, Algorithm::ES256, Some("ec"), &claims());
        assert_eq!(verify(&keys, &assertion).unwrap().key_id, "ec");
    }

    #[test]
    fn a_lone_key_without_kid_verifies_an_assertion_without_kid_and_is_named_by_its_thumbprint() {
        let keys = set(vec![P256.jwk.clone()]);
        let thumbprint = keys.key_ids().remove(0);
        let verified = verify(&keys, &sign(&P256, Algorithm::ES256, None, &claims())).unwrap();
        assert_eq!(verified.key_id, thumbprint);
        let named = sign(&P256, Algorithm::ES256, Some(&thumbprint), &claims());
        assert_eq!(verify(&keys, &named).unwrap().key_id, thumbprint);
    }

    #[test]
    fn an_assertion_over_8_kib_is_too_large() {
        let keys = set(vec![with(&ED25519.jwk, json!({"kid": "k1"}))]);
        let padded = edited(json!({"padding": "x".repeat(MAX_ASSERTION_BYTES)}));
        let assertion = sign(&ED25519, Algorithm::EdDSA, Some("k1"), &padded);
        assert_eq!(verify(&keys, &assertion), Err(AssertionRejection::TooLarge));
    }

    #[test]
    fn an_assertion_that_is_not_a_compact_jws_is_malformed() {
        let keys = set(vec![with(&ED25519.jwk, json!({"kid": "k1"}))]);
        let good_claims = b64(&serde_json::to_vec(&claims()).unwrap());
        let header = |h: Value| b64(&serde_json::to_vec(&h).unwrap());
        for text in [
            String::new(),
            "not a jwt".to_owned(),
            format!("{}.{good_claims}", header(json!({"alg": "EdDSA"}))),
            format!(
                "{}.{good_claims}.sig.extra",
                header(json!({"alg": "EdDSA"}))
            ),
            format!("!!!.{good_claims}.c2ln"),
            format!("{}.{good_claims}.c2ln", b64(b"not json")),
            format!("{}.{good_claims}.c2ln", header(json!(["EdDSA"]))),
            format!("{}.{good_claims}.c2ln", header(json!({"kid": "k1"}))),
            format!(
                "{}.{good_claims}.c2ln",
                header(json!({"alg": 7, "kid": "k1"}))
            ),
            format!(
                "{}.{good_claims}.c2ln",
                header(json!({"alg": "EdDSA", "kid": 1}))
            ),
            format!(
                "{}.{good_claims}.c2ln",
                header(json!({"alg": "EdDSA", "kid": "k1", "crit": ["exp"]}))
            ),
            format!(
                "{}.{good_claims}.not*base64",
                header(json!({"alg": "EdDSA", "kid": "k1"}))
            ),
        ] {
            assert_eq!(
                verify(&keys, &ClientAssertion::new(text.clone())),
                Err(AssertionRejection::Malformed),
                "{text}"
            );
        }
        // Correctly signed, but the payload is a JSON string, not a claims object.
        let not_an_object = sign(&ED25519, Algorithm::EdDSA, Some("k1"), &json!("claims"));
        assert_eq!(
            verify(&keys, &not_an_object),
            Err(AssertionRejection::Malformed)
        );
        let bad_iat = sign(
            &ED25519,
            Algorithm::EdDSA,
            Some("k1"),
            &edited(json!({"iat": "yesterday"})),
        );
        assert_eq!(verify(&keys, &bad_iat), Err(AssertionRejection::Malformed));
    }

    #[test]
    fn alg_none_is_not_allowed() {
        let keys = set(vec![with(&RSA.jwk, json!({"kid": "k1"}))]);
        for alg in ["none", "None", "NONE"] {
            let unsigned = compact(&json!({"alg": alg, "kid": "k1"}), &claims(), b"");
            assert_eq!(
                verify(&keys, &unsigned),
                Err(AssertionRejection::AlgorithmNotAllowed),
                "{alg}"
            );
        }
        let lone = set(vec![RSA.jwk.clone()]);
        let unsigned = compact(&json!({"alg": "none"}), &claims(), b"");
        assert_eq!(
            verify(&lone, &unsigned),
            Err(AssertionRejection::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn hs256_signed_with_the_public_key_as_the_secret_is_not_allowed() {
        let jwk = with(&RSA.jwk, json!({"kid": "k1"}));
        let keys = set(vec![jwk.clone()]);
        let modulus = URL_SAFE_NO_PAD
            .decode(RSA.jwk["n"].as_str().unwrap())
            .unwrap();
        for secret in [
            keys.to_json().into_bytes(),
            serde_json::to_vec(&jwk).unwrap(),
            modulus,
        ] {
            let forged = TestKey {
                jwk: Value::Null,
                signing: EncodingKey::from_secret(&secret),
            };
            for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
                assert_eq!(
                    verify(&keys, &sign(&forged, alg, Some("k1"), &claims())),
                    Err(AssertionRejection::AlgorithmNotAllowed),
                    "{alg:?}"
                );
            }
        }
    }

    #[test]
    fn an_algorithm_that_does_not_fit_the_key_is_not_allowed() {
        let pinned = set(vec![with(&RSA.jwk, json!({"kid": "k1", "alg": "RS256"}))]);
        let pss = sign(&RSA, Algorithm::PS256, Some("k1"), &claims());
        assert_eq!(
            verify(&pinned, &pss),
            Err(AssertionRejection::AlgorithmNotAllowed)
        );
        let rs384 = sign(&RSA, Algorithm::RS384, Some("k1"), &claims());
        assert_eq!(
            verify(&pinned, &rs384),
            Err(AssertionRejection::AlgorithmNotAllowed)
        );
        let ec = set(vec![with(&P256.jwk, json!({"kid": "k1"}))]);
        let rsa_signed = sign(&RSA, Algorithm::RS256, Some("k1"), &claims());
        assert_eq!(
            verify(&ec, &rsa_signed),
            Err(AssertionRejection::AlgorithmNotAllowed)
        );
        let ed = set(vec![with(&ED25519.jwk, json!({"kid": "k1"}))]);
        let ec_signed = sign(&P256, Algorithm::ES256, Some("k1"), &claims());
        assert_eq!(
            verify(&ed, &ec_signed),
            Err(AssertionRejection::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn a_kid_not_in_the_set_is_an_unknown_key() {
        let keys = set(vec![
            with(&RSA.jwk, json!({"kid": "k1"})),
            with(&P256.jwk, json!({"kid": "k2"})),
        ]);
        let assertion = sign(&P256, Algorithm::ES256, Some("k3"), &claims());
        assert_eq!(
            verify(&keys, &assertion),
            Err(AssertionRejection::UnknownKey)
        );
    }

    #[test]
    fn an_assertion_without_kid_is_an_unknown_key_when_the_set_has_two_keys() {
        let keys = set(vec![
            with(&RSA.jwk, json!({"kid": "k1"})),
            with(&P256.jwk, json!({"kid": "k2"})),
        ]);
        let assertion = sign(&P256, Algorithm::ES256, None, &claims());
        assert_eq!(
            verify(&keys, &assertion),
            Err(AssertionRejection::UnknownKey)
        );
    }

    #[test]
    fn a_kid_that_names_neither_the_lone_keys_kid_nor_its_thumbprint_is_an_unknown_key() {
        let keys = set(vec![P256.jwk.clone()]);
        let assertion = sign(&P256, Algorithm::ES256, Some("some-kid"), &claims());
        assert_eq!(
            verify(&keys, &assertion),
            Err(AssertionRejection::UnknownKey)
        );
    }

    #[test]
    fn an_assertion_signed_by_another_key_with_the_same_kid_has_a_bad_signature() {
        let keys = set(vec![with(&RSA.jwk, json!({"kid": "k1"}))]);
        let impostor = sign(&OTHER_RSA, Algorithm::RS256, Some("k1"), &claims());
        assert_eq!(
            verify(&keys, &impostor),
            Err(AssertionRejection::BadSignature)
        );
    }

    #[test]
    fn an_assertion_whose_claims_were_changed_after_signing_has_a_bad_signature() {
        let keys = set(vec![with(&P256.jwk, json!({"kid": "k1"}))]);
        let genuine = sign(&P256, Algorithm::ES256, Some("k1"), &claims());
        let [header, _, signature] = jws_parts(genuine.expose()).unwrap();
        let other_claims = b64(&serde_json::to_vec(&edited(json!({"jti": "other"}))).unwrap());
        let tampered = ClientAssertion::new(format!("{header}.{other_claims}.{signature}"));
        assert_eq!(
            verify(&keys, &tampered),
            Err(AssertionRejection::BadSignature)
        );
    }

    #[test]
    fn an_issuer_other_than_the_subject_or_the_client_is_refused() {
        for claims in [
            edited(json!({"iss": "someone-else"})),
            edited(json!({"sub": "someone-else"})),
            edited(json!({"iss": "someone-else", "sub": "someone-else"})),
            edited(json!({"iss": [CLIENT_ID]})),
            without("iss"),
            without("sub"),
        ] {
            assert_eq!(
                verify_claims(&claims),
                Err(AssertionRejection::WrongIssuerOrSubject),
                "{claims}"
            );
        }
    }

    #[test]
    fn an_audience_of_another_server_is_refused() {
        for claims in [
            edited(json!({"aud": "https://other.example.com/oauth2/token"})),
            edited(
                json!({"aud": ["https://other.example.com", "https://other.example.com/token"]}),
            ),
            edited(json!({"aud": []})),
            edited(json!({"aud": 7})),
            without("aud"),
        ] {
            assert_eq!(
                verify_claims(&claims),
                Err(AssertionRejection::WrongAudience),
                "{claims}"
            );
        }
    }

    #[test]
    fn the_issuer_or_the_token_endpoint_is_accepted_as_audience_alone_or_in_an_array() {
        for aud in [json!(ISSUER), json!(TOKEN_ENDPOINT), json!([ISSUER])] {
            assert!(
                verify_claims(&edited(json!({ "aud": aud }))).is_ok(),
                "{aud}"
            );
        }
    }

    #[test]
    fn an_assertion_for_several_audiences_is_refused_even_when_one_is_ours() {
        for aud in [
            json!(["https://other.example.com", ISSUER]),
            json!([ISSUER, TOKEN_ENDPOINT]),
            json!([]),
        ] {
            assert_eq!(
                verify_claims(&edited(json!({ "aud": aud }))),
                Err(AssertionRejection::WrongAudience),
                "{aud}"
            );
        }
    }

    #[test]
    fn an_assertion_without_exp_is_refused() {
        for claims in [
            without("exp"),
            edited(json!({"exp": null})),
            edited(json!({"exp": "soon"})),
        ] {
            assert_eq!(
                verify_claims(&claims),
                Err(AssertionRejection::MissingExpiry),
                "{claims}"
            );
        }
    }

    #[test]
    fn an_assertion_expired_beyond_the_leeway_is_refused() {
        for exp in [at(-30), at(-600)] {
            assert_eq!(
                verify_claims(&edited(json!({ "exp": exp }))),
                Err(AssertionRejection::Expired)
            );
        }
        assert!(verify_claims(&edited(json!({"exp": at(-29)}))).is_ok());
    }

    #[test]
    fn an_assertion_expiring_10_minutes_ahead_has_too_long_a_lifetime() {
        assert_eq!(
            verify_claims(&edited(json!({"exp": at(600)}))),
            Err(AssertionRejection::LifetimeTooLong)
        );
        assert_eq!(
            verify_claims(&edited(json!({"exp": at(331)}))),
            Err(AssertionRejection::LifetimeTooLong)
        );
        assert!(verify_claims(&edited(json!({"exp": at(330)}))).is_ok());
    }

    #[test]
    fn an_nbf_or_iat_beyond_the_leeway_is_not_yet_valid() {
        for claims in [
            edited(json!({"nbf": at(31)})),
            edited(json!({"iat": at(60)})),
        ] {
            assert_eq!(
                verify_claims(&claims),
                Err(AssertionRejection::NotYetValid),
                "{claims}"
            );
        }
        assert!(verify_claims(&edited(json!({"nbf": at(30), "iat": at(30)}))).is_ok());
        assert!(verify_claims(&without("iat")).is_ok());
    }

    #[test]
    fn a_missing_empty_or_overlong_jti_is_refused() {
        for claims in [
            without("jti"),
            edited(json!({"jti": ""})),
            edited(json!({"jti": 42})),
            edited(json!({ "jti": "j".repeat(MAX_JTI_CHARS + 1) })),
        ] {
            assert_eq!(verify_claims(&claims), Err(AssertionRejection::MissingJti));
        }
        let longest = "j".repeat(MAX_JTI_CHARS);
        assert_eq!(
            verify_claims(&edited(json!({ "jti": longest })))
                .unwrap()
                .jti,
            longest
        );
    }

    #[test]
    fn a_fractional_exp_counts_in_whole_seconds() {
        let verified = verify_claims(&edited(json!({"exp": at(120) as f64 + 0.75}))).unwrap();
        assert_eq!(verified.expires_at.timestamp(), at(120));
    }

    #[test]
    fn every_rejection_has_its_own_audit_reason() {
        let all = [
            AssertionRejection::TooLarge,
            AssertionRejection::Malformed,
            AssertionRejection::AlgorithmNotAllowed,
            AssertionRejection::UnknownKey,
            AssertionRejection::BadSignature,
            AssertionRejection::WrongIssuerOrSubject,
            AssertionRejection::WrongAudience,
            AssertionRejection::MissingExpiry,
            AssertionRejection::Expired,
            AssertionRejection::LifetimeTooLong,
            AssertionRejection::NotYetValid,
            AssertionRejection::MissingJti,
        ];
        let reasons: std::collections::HashSet<&str> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons.len(), all.len());
        assert!(reasons.iter().all(|r| r.starts_with("assertion_")
            && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
        assert_eq!(AssertionRejection::Expired.as_str(), "assertion_expired");
        assert_eq!(
            AssertionRejection::BadSignature.as_str(),
            "assertion_bad_signature"
        );
    }

    #[test]
    fn the_claimed_client_id_is_the_sub_when_iss_equals_sub() {
        let claimed = |claims: &Value| {
            sign(&ED25519, Algorithm::EdDSA, Some("k1"), claims).claimed_client_id()
        };
        assert_eq!(claimed(&claims()).as_deref(), Some(CLIENT_ID));
        assert_eq!(claimed(&edited(json!({"iss": "someone-else"}))), None);
        assert_eq!(claimed(&without("sub")), None);
        assert_eq!(claimed(&edited(json!({"iss": 1, "sub": 1}))), None);
        assert_eq!(
            ClientAssertion::new("garbage".into()).claimed_client_id(),
            None
        );
        let unsigned = compact(&json!({"alg": "none"}), &claims(), b"");
        assert_eq!(
            unsigned.claimed_client_id().as_deref(),
            Some(CLIENT_ID),
            "read before any signature check"
        );
    }

    #[test]
    fn a_private_key_is_refused() {
        let private = with(
            &RSA.jwk,
            json!({"d": "AQAB", "p": "AQAB", "q": "AQAB", "dp": "AQAB", "dq": "AQAB", "qi": "AQAB"}),
        );
        let errors = refusals(vec![private]);
        for member in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                errors.contains(&FieldError::new(
                    format!("jwks.keys[0].{member}"),
                    "private key material is refused; send the public key only"
                )),
                "{member}: {errors:?}"
            );
        }
        let ec_private = with(&P256.jwk, json!({"d": "AQAB"}));
        assert_eq!(
            ClientKeySet::from_jwks(&json!({ "keys": [ec_private] }), "client.jwks").unwrap_err(),
            vec![FieldError::new(
                "client.jwks.keys[0].d",
                PRIVATE_KEY_REFUSED
            )]
        );
    }

    #[test]
    fn an_oct_key_is_refused() {
        let errors = refusals(vec![
            json!({"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}),
        ]);
        assert!(
            errors
                .iter()
                .any(|e| e.field == "jwks.keys[0].kty" && e.message.contains("symmetric"))
        );
        assert!(errors.contains(&FieldError::new("jwks.keys[0].k", PRIVATE_KEY_REFUSED)));
    }

    #[test]
    fn an_rsa_key_under_2048_bits_is_refused() {
        let mut modulus = vec![0xC5; 128];
        modulus[127] |= 1;
        let errors = refusals(vec![json!({"kty": "RSA", "n": b64(&modulus), "e": "AQAB"})]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "jwks.keys[0].n");
        assert!(
            errors[0].message.contains("at least 2048 bits"),
            "{errors:?}"
        );
        assert!(errors[0].message.contains("1024"), "{errors:?}");
    }

    #[test]
    fn duplicate_kids_are_refused() {
        let errors = refusals(vec![
            with(&RSA.jwk, json!({"kid": "same"})),
            with(&P256.jwk, json!({"kid": "same"})),
        ]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "jwks.keys[1].kid");
        assert!(errors[0].message.contains("jwks.keys[0].kid"));
    }

    #[test]
    fn keys_without_kid_are_refused_when_the_set_has_two() {
        let errors = refusals(vec![RSA.jwk.clone(), with(&P256.jwk, json!({"kid": "k2"}))]);
        assert_eq!(
            errors,
            vec![FieldError::new(
                "jwks.keys[0].kid",
                "is required when the set holds more than one key"
            )]
        );
    }

    #[test]
    fn an_alg_that_does_not_fit_the_key_type_is_refused() {
        for (jwk, alg) in [
            (&RSA.jwk, "ES256"),
            (&RSA.jwk, "HS256"),
            (&RSA.jwk, "RS512"),
            (&RSA.jwk, "none"),
            (&P256.jwk, "RS256"),
            (&P256.jwk, "ES384"),
            (&ED25519.jwk, "ES256"),
            (&RSA.jwk, "Ed25519"),
        ] {
            let errors = refusals(vec![with(jwk, json!({ "alg": alg }))]);
            assert_eq!(errors.len(), 1, "{alg}: {errors:?}");
            assert_eq!(errors[0].field, "jwks.keys[0].alg", "{alg}");
        }
        for (jwk, alg) in [
            (&RSA.jwk, "RS256"),
            (&RSA.jwk, "PS256"),
            (&P256.jwk, "ES256"),
            (&ED25519.jwk, "EdDSA"),
            (&ED25519.jwk, "Ed25519"),
        ] {
            assert!(
                ClientKeySet::from_jwks(
                    &json!({"keys": [with(jwk, json!({ "alg": alg }))]}),
                    "jwks"
                )
                .is_ok(),
                "{alg}"
            );
        }
    }

    #[test]
    fn other_curves_key_types_uses_and_operations_are_refused() {
        let off_curve = with(&P256.jwk, json!({"y": b64(&[7; 32])}));
        let cases = [
            (with(&P256.jwk, json!({"crv": "P-384"})), "jwks.keys[0].crv"),
            (
                with(&ED25519.jwk, json!({"crv": "X25519"})),
                "jwks.keys[0].crv",
            ),
            (
                with(&ED25519.jwk, json!({"crv": "Ed448"})),
                "jwks.keys[0].crv",
            ),
            (
                with(&P256.jwk, json!({"x": b64(&[1; 31])})),
                "jwks.keys[0].x",
            ),
            (
                with(&ED25519.jwk, json!({"x": "not base64!"})),
                "jwks.keys[0].x",
            ),
            (off_curve, "jwks.keys[0].x"),
            (with(&RSA.jwk, json!({"e": "AAEAAQ"})), "jwks.keys[0].e"),
            (with(&RSA.jwk, json!({"e": "Ag"})), "jwks.keys[0].e"),
            (with(&RSA.jwk, json!({"n": 12})), "jwks.keys[0].n"),
            (json!({"kty": "RSA", "e": "AQAB"}), "jwks.keys[0].n"),
            (json!({"kty": "PQC", "x": "AQAB"}), "jwks.keys[0].kty"),
            (json!({"x": "AQAB"}), "jwks.keys[0].kty"),
            (with(&P256.jwk, json!({"use": "enc"})), "jwks.keys[0].use"),
            (
                with(&P256.jwk, json!({"key_ops": ["sign"]})),
                "jwks.keys[0].key_ops",
            ),
            (
                with(&P256.jwk, json!({"key_ops": "verify"})),
                "jwks.keys[0].key_ops",
            ),
            (with(&P256.jwk, json!({"kid": ""})), "jwks.keys[0].kid"),
            (
                with(&P256.jwk, json!({"kid": "k".repeat(MAX_KID_CHARS + 1)})),
                "jwks.keys[0].kid",
            ),
            (json!("a key"), "jwks.keys[0]"),
        ];
        for (jwk, field) in cases {
            let errors = refusals(vec![jwk.clone()]);
            assert!(errors.iter().any(|e| e.field == field), "{jwk}: {errors:?}");
        }
        assert!(
            ClientKeySet::from_jwks(
                &json!({"keys": [with(&P256.jwk, json!({"use": "sig", "key_ops": ["verify"], "kid": "k".repeat(MAX_KID_CHARS)}))]}),
                "jwks"
            )
            .is_ok()
        );
    }

    #[test]
    fn a_jwks_that_is_not_one_to_ten_keys_is_refused() {
        let eleven: Vec<Value> = (0..=MAX_KEYS)
            .map(|i| with(&ED25519.jwk, json!({ "kid": format!("k{i}") })))
            .collect();
        for (jwks, field) in [
            (json!([]), "jwks"),
            (json!({}), "jwks.keys"),
            (json!({"keys": {}}), "jwks.keys"),
            (json!({"keys": []}), "jwks.keys"),
            (json!({ "keys": eleven }), "jwks.keys"),
        ] {
            let errors = ClientKeySet::from_jwks(&jwks, "jwks").unwrap_err();
            assert_eq!(errors.len(), 1, "{jwks}: {errors:?}");
            assert_eq!(errors[0].field, field, "{jwks}");
        }
        let ten: Vec<Value> = (0..MAX_KEYS)
            .map(|i| with(&ED25519.jwk, json!({ "kid": format!("k{i}") })))
            .collect();
        assert_eq!(set(ten).key_ids().len(), MAX_KEYS);
    }

    #[test]
    fn every_problem_of_every_key_is_reported() {
        let errors = refusals(vec![
            with(&RSA.jwk, json!({"kid": "k1", "d": "AQAB", "alg": "ES256"})),
            json!({"kty": "oct", "kid": "k2"}),
        ]);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["jwks.keys[0].d", "jwks.keys[0].alg", "jwks.keys[1].kty"]
        );
    }

    #[test]
    fn the_stored_form_round_trips_and_keeps_only_public_members() {
        let sent = json!({"keys": [
            with(&RSA.jwk, json!({
                "kid": "rsa", "alg": "PS256", "use": "sig", "key_ops": ["verify"],
                "x5t": "dGh1bWI", "ext": true, "custom": {"nested": 1},
            })),
            with(&ED25519.jwk, json!({"kid": "ed", "x5c": ["MIIB"]})),
        ], "other": "ignored"});
        let keys = ClientKeySet::from_jwks(&sent, "jwks").unwrap();
        let stored = keys.to_json();
        let again = ClientKeySet::from_json(&stored).unwrap();
        assert_eq!(again, keys);
        assert_eq!(again.to_json(), stored, "the stored form is canonical");
        assert_eq!(keys.jwks(), serde_json::from_str::<Value>(&stored).unwrap());
        assert_eq!(keys.key_ids(), ["rsa", "ed"]);
        let rsa = &keys.jwks()["keys"][0];
        let members: Vec<&str> = rsa
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(members, ["alg", "e", "kid", "kty", "n", "use"]);
        assert_eq!(rsa["n"], RSA.jwk["n"]);
        let ed = &keys.jwks()["keys"][1];
        assert_eq!(ed, &with(&ED25519.jwk, json!({"kid": "ed"})));
        assert!(
            stored.starts_with(r#"{"keys":[{"alg":"PS256","e":"#),
            "{stored}"
        );
        for dropped in ["key_ops", "x5t", "ext", "custom", "x5c", "other"] {
            assert!(!stored.contains(dropped), "{dropped}: {stored}");
        }
    }

    #[test]
    fn a_corrupt_stored_form_is_an_error() {
        assert!(ClientKeySet::from_json("not json").is_err());
        assert!(ClientKeySet::from_json(r#"{"keys":[]}"#).is_err());
        let with_private = json!({"keys": [with(&P256.jwk, json!({"d": "AQAB"}))]}).to_string();
        let error = ClientKeySet::from_json(&with_private).unwrap_err();
        assert!(error.contains("jwks.keys[0].d"), "{error}");
    }

    #[test]
    fn a_key_without_kid_is_listed_as_its_rfc_7638_thumbprint() {
        // RFC 7638 §3.1's example key and thumbprint.
        let keys = set(vec![json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
        })]);
        assert_eq!(
            keys.key_ids(),
            ["NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"]
        );
        assert!(
            keys.jwks()["keys"][0].get("kid").is_none(),
            "the thumbprint names the key; it is not stored as its kid"
        );
    }

    #[test]
    fn debug_prints_no_key_material_and_no_assertion() {
        let keys = set(vec![
            with(&RSA.jwk, json!({"kid": "rsa-key"})),
            with(&P256.jwk, json!({"kid": "ec-key"})),
        ]);
        let printed = format!("{keys:?}");
        assert_eq!(
            printed,
            r#"ClientKeySet {"rsa-key": "RSA", "ec-key": "EC"}"#
        );
        for material in [&RSA.jwk["n"], &P256.jwk["x"], &P256.jwk["y"]] {
            let material = material.as_str().unwrap();
            assert!(!printed.contains(&material[..16]), "{printed}");
        }
        let assertion = sign(&P256, Algorithm::ES256, Some("ec-key"), &claims());
        let [header, payload, signature] = jws_parts(assertion.expose()).unwrap();
        for printed in [format!("{assertion:?}"), format!("{assertion}")] {
            for part in [header, payload, signature] {
                assert!(!printed.contains(&part[..8]), "{printed}");
            }
        }
    }

    const CLUSTER: &str = "https://kubernetes.default.svc.cluster.local";
    const SERVICE_ACCOUNT: &str = "system:serviceaccount:agents:summarizer";

    fn workload_claims() -> Value {
        json!({
            "iss": CLUSTER,
            "sub": SERVICE_ACCOUNT,
            "aud": ["agentidp", "https://kubernetes.default.svc"],
            "iat": at(-60),
            "exp": at(3600),
        })
    }

    fn verify_workload(
        keys: &ClientKeySet,
        token: &ClientAssertion,
    ) -> Result<VerifiedFederation, AssertionRejection> {
        let expected = FederatedExpectations {
            issuer: CLUSTER,
            audience: "agentidp",
            subject: SERVICE_ACCOUNT,
            leeway_seconds: 30,
        };
        keys.verify_federated(token, &expected, now())
    }

    #[test]
    fn a_workload_token_of_the_trusted_issuer_about_the_subject_is_accepted_again_and_again() {
        let keys = set(vec![with(&RSA.jwk, json!({"kid": "sa-1"}))]);
        let token = sign(&RSA, Algorithm::RS256, Some("sa-1"), &workload_claims());
        let verified = verify_workload(&keys, &token).unwrap();
        assert_eq!(verified.subject, SERVICE_ACCOUNT);
        assert_eq!(verified.issuer, CLUSTER);
        assert_eq!(verified.key_id, "sa-1");
        // A platform token is no single-use assertion: no jti, and presented again.
        assert_eq!(verify_workload(&keys, &token).unwrap(), verified);
        // A token of an hour is the issuer's choice, not refused as a client assertion would be.
        assert_eq!(verified.expires_at.timestamp(), at(3600));
    }

    #[test]
    fn each_claim_a_workload_token_gets_wrong_has_its_own_reason() {
        let keys = set(vec![with(&P256.jwk, json!({"kid": "sa-1"}))]);
        let cases: [(&str, Value, AssertionRejection); 6] = [
            (
                "iss",
                json!("https://other-cluster.example"),
                AssertionRejection::UntrustedIssuer,
            ),
            (
                "sub",
                json!("system:serviceaccount:agents:intruder"),
                AssertionRejection::UnknownSubject,
            ),
            (
                "aud",
                json!("https://vault.example.com"),
                AssertionRejection::WrongAudience,
            ),
            (
                "aud",
                json!(["agentidp-other"]),
                AssertionRejection::WrongAudience,
            ),
            ("exp", json!(at(-31)), AssertionRejection::Expired),
            ("nbf", json!(at(600)), AssertionRejection::NotYetValid),
        ];
        for (claim, value, expected) in cases {
            let mut claims = workload_claims();
            claims[claim] = value;
            let token = sign(&P256, Algorithm::ES256, Some("sa-1"), &claims);
            assert_eq!(
                verify_workload(&keys, &token).unwrap_err(),
                expected,
                "{claim}"
            );
        }
        let mut claims = workload_claims();
        claims.as_object_mut().unwrap().remove("exp");
        let token = sign(&P256, Algorithm::ES256, Some("sa-1"), &claims);
        assert_eq!(
            verify_workload(&keys, &token).unwrap_err(),
            AssertionRejection::MissingExpiry
        );
        // Signed by another key under the issuer's kid.
        let forged = sign(&ED25519, Algorithm::EdDSA, Some("sa-1"), &workload_claims());
        assert!(verify_workload(&keys, &forged).is_err());
    }

    #[test]
    fn a_published_set_keeps_its_signing_keys_and_skips_what_it_cannot_use() {
        let published = json!({"keys": [
            with(&RSA.jwk, json!({"kid": "rsa-sig", "use": "sig"})),
            with(&P256.jwk, json!({"kid": "p256-enc", "use": "enc"})),
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AAAA", "y": "AAAA"},
            {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
            "not a key",
            with(&ED25519.jwk, json!({"kid": "ed"})),
        ]});
        let keys = ClientKeySet::from_published_jwks(&published).unwrap();
        assert_eq!(keys.key_ids(), ["rsa-sig", "ed"]);
        assert!(keys.has_key("ed") && !keys.has_key("p256-enc"));
    }

    #[test]
    fn a_published_set_is_refused_with_a_private_key_too_many_keys_or_none_usable() {
        let leaked = json!({"keys": [with(&P256.jwk, json!({"kid": "k", "d": "c2VjcmV0"}))]});
        assert!(
            ClientKeySet::from_published_jwks(&leaked)
                .unwrap_err()
                .contains("private")
        );
        let many: Vec<Value> = (0..=MAX_PUBLISHED_KEYS)
            .map(|i| with(&P256.jwk, json!({"kid": format!("k{i}")})))
            .collect();
        assert!(ClientKeySet::from_published_jwks(&json!({"keys": many})).is_err());
        let unusable = json!({"keys": [with(&P256.jwk, json!({"use": "enc"}))]});
        assert!(ClientKeySet::from_published_jwks(&unusable).is_err());
        assert!(ClientKeySet::from_published_jwks(&json!({"keys": "none"})).is_err());
        // Several keys without a kid cannot be told apart: only those with one are kept.
        let mixed = json!({"keys": [RSA.jwk.clone(), P256.jwk.clone(), with(&ED25519.jwk, json!({"kid": "ed"}))]});
        assert_eq!(
            ClientKeySet::from_published_jwks(&mixed).unwrap().key_ids(),
            ["ed"]
        );
    }

    #[test]
    fn a_malformed_or_disallowed_assertion_is_refused_before_any_key_is_needed() {
        let token = sign(&P256, Algorithm::ES256, Some("k1"), &claims());
        assert_eq!(token.precheck().unwrap(), Some("k1".to_owned()));
        assert_eq!(
            ClientAssertion::new("not.a.jwt".into())
                .precheck()
                .unwrap_err(),
            AssertionRejection::Malformed
        );
        let none = compact(&json!({"alg": "none"}), &claims(), b"");
        assert_eq!(
            none.precheck().unwrap_err(),
            AssertionRejection::AlgorithmNotAllowed
        );
        let huge = ClientAssertion::new("a".repeat(MAX_ASSERTION_BYTES + 1));
        assert_eq!(huge.precheck().unwrap_err(), AssertionRejection::TooLarge);
    }
}
