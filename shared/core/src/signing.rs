//! Access tokens: RFC 9068 JWTs signed with a key set that keeps previous keys, so a rotation
//! never breaks a token already issued, and rendered as a JWKS (RFC 7517).

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::time::format_timestamp;

/// The `typ` header of RFC 9068 access tokens.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// Tokens larger than this are refused before any parsing. Ours are well under 2 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    RS256,
    ES256,
    EdDSA,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::RS256 => "RS256",
            SigningAlgorithm::ES256 => "ES256",
            SigningAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "RS256" => Some(Self::RS256),
            "ES256" => Some(Self::ES256),
            "EdDSA" => Some(Self::EdDSA),
            _ => None,
        }
    }

    fn jwt_algorithm(self) -> Algorithm {
        match self {
            SigningAlgorithm::RS256 => Algorithm::RS256,
            SigningAlgorithm::ES256 => Algorithm::ES256,
            SigningAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// The claims of an access token (RFC 9068 §2.2), plus the organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    /// The agent id.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    pub org_id: String,
}

impl AccessTokenClaims {
    pub fn agent_id(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.sub).ok()
    }

    pub fn org_uuid(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.org_id).ok()
    }

    pub fn client_uuid(&self) -> Option<Uuid> {
        Uuid::parse_str(&self.client_id).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key generation failed")]
    Generation,
    #[error("the key set is malformed: {0}")]
    Malformed(String),
    #[error("the key set holds no key")]
    Empty,
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("the key source is unavailable: {0}")]
    Unavailable(String),
    /// The set was loaded from public keys only (the functions that verify and never sign).
    #[error("this key set holds public keys only and cannot sign")]
    VerifyOnly,
}

/// Why a token was refused. Callers answer all of these the same way; the reason is for logs
/// and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("token too large")]
    TooLarge,
    #[error("token malformed")]
    Malformed,
    #[error("token type is not at+jwt")]
    WrongType,
    #[error("unknown key id")]
    UnknownKey,
    #[error("algorithm not accepted")]
    WrongAlgorithm,
    #[error("bad signature or claims")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
}

/// One private key as stored in the key-set document.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    pub kid: String,
    pub alg: SigningAlgorithm,
    /// PKCS#8, PEM.
    pub private_key_pem: String,
    pub created_at: String,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private_key_pem", &"[redacted]")
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// The JSON kept in Secrets Manager and in `<data-dir>/signing-keys.json`: newest key first;
/// the first key signs, every key verifies. See docs/signing-keys.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeySetDocument {
    pub keys: Vec<StoredKey>,
}

impl KeySetDocument {
    pub fn parse(json: &str) -> Result<Self, KeyError> {
        serde_json::from_str(json).map_err(|e| KeyError::Malformed(e.to_string()))
    }

    pub fn to_json(&self) -> Result<String, KeyError> {
        serde_json::to_string_pretty(self).map_err(|e| KeyError::Malformed(e.to_string()))
    }

    /// A new document whose signing key is freshly generated, keeping at most `keep_previous`
    /// of the current keys for verification.
    pub fn rotated(
        &self,
        alg: SigningAlgorithm,
        now: DateTime<Utc>,
        keep_previous: usize,
    ) -> Result<Self, KeyError> {
        let mut keys = vec![generate_key(alg, now)?];
        keys.extend(self.keys.iter().take(keep_previous).cloned());
        Ok(Self { keys })
    }

    pub fn generate(alg: SigningAlgorithm, now: DateTime<Utc>) -> Result<Self, KeyError> {
        Ok(Self {
            keys: vec![generate_key(alg, now)?],
        })
    }
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn pem_unwrap(pem: &str) -> Result<Vec<u8>, KeyError> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD
        .decode(body.trim())
        .map_err(|e| KeyError::Malformed(e.to_string()))
}

pub fn generate_key(alg: SigningAlgorithm, now: DateTime<Utc>) -> Result<StoredKey, KeyError> {
    let pkcs8: Vec<u8> = match alg {
        SigningAlgorithm::RS256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| KeyError::Generation)?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                pair.as_der().map_err(|_| KeyError::Generation)?;
            der.as_ref().to_vec()
        }
        SigningAlgorithm::ES256 => {
            let rng = SystemRandom::new();
            EcdsaKeyPair::generate_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rng,
            )
            .map_err(|_| KeyError::Generation)?
            .as_ref()
            .to_vec()
        }
        SigningAlgorithm::EdDSA => {
            let rng = SystemRandom::new();
            Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| KeyError::Generation)?
                .as_ref()
                .to_vec()
        }
    };
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).map_err(|_| KeyError::Generation)?;
    Ok(StoredKey {
        kid: format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), hex::encode(random)),
        alg,
        private_key_pem: pem_wrap("PRIVATE KEY", &pkcs8),
        created_at: format_timestamp(&now),
    })
}

/// A public key as JWKS members (RFC 7517 §4, RFC 7518 §6, RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
    pub kid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

struct LoadedKey {
    kid: String,
    alg: SigningAlgorithm,
    /// `None` in a set loaded from public keys: no private key ever reached this process.
    signing: Option<SigningKey>,
    decoding: DecodingKey,
    jwk: PublicJwk,
}

struct SigningKey {
    signer: Signer,
    /// The JWS protected header, base64url, made once: it is the same in every token.
    encoded_header: String,
}

/// A private key parsed once when the key set loads. Signing through `jsonwebtoken` re-parses
/// the key's DER on every call, which for RSA cost more than the signature itself (685 µs against
/// 252 µs in `cargo bench --bench signing`).
enum Signer {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let failed = |e: aws_lc_rs::error::Unspecified| KeyError::Signing(e.to_string());
        match self {
            Signer::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut signature,
                )
                .map_err(failed)?;
                Ok(signature)
            }
            // The FIXED encoding is r || s, which is what JWS (RFC 7518 §3.4) asks for.
            Signer::Ecdsa(pair) => Ok(pair
                .sign(&SystemRandom::new(), message)
                .map_err(failed)?
                .as_ref()
                .to_vec()),
            Signer::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
        }
    }
}

#[derive(Serialize)]
struct ProtectedHeader<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

fn load_key(stored: &StoredKey) -> Result<LoadedKey, KeyError> {
    let pkcs8 = pem_unwrap(&stored.private_key_pem)?;
    let malformed = |e: &dyn fmt::Display| KeyError::Malformed(format!("key {}: {e}", stored.kid));
    let base = PublicJwk {
        kty: String::new(),
        use_: "sig".into(),
        alg: stored.alg.as_str().into(),
        kid: stored.kid.clone(),
        n: None,
        e: None,
        crv: None,
        x: None,
        y: None,
    };
    let (signer, decoding, jwk) = match stored.alg {
        SigningAlgorithm::RS256 => {
            let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8).map_err(|e| malformed(&e))?;
            let components: aws_lc_rs::rsa::PublicKeyComponents<Vec<u8>> = pair.public_key().into();
            let decoding = DecodingKey::from_rsa_raw_components(&components.n, &components.e);
            let jwk = PublicJwk {
                kty: "RSA".into(),
                n: Some(URL_SAFE_NO_PAD.encode(&components.n)),
                e: Some(URL_SAFE_NO_PAD.encode(&components.e)),
                ..base
            };
            (Signer::Rsa(pair), decoding, jwk)
        }
        SigningAlgorithm::ES256 => {
            let pair = EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &pkcs8,
            )
            .map_err(|e| malformed(&e))?;
            // An uncompressed P-256 point: 0x04, then 32 bytes of x and 32 of y.
            let point = pair.public_key().as_ref();
            if point.len() != 65 {
                return Err(malformed(&"unexpected EC point length"));
            }
            let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
            let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
            let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| malformed(&e))?;
            let jwk = PublicJwk {
                kty: "EC".into(),
                crv: Some("P-256".into()),
                x: Some(x),
                y: Some(y),
                ..base
            };
            (Signer::Ecdsa(pair), decoding, jwk)
        }
        SigningAlgorithm::EdDSA => {
            let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| malformed(&e))?;
            let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
            let decoding = DecodingKey::from_ed_components(&x).map_err(|e| malformed(&e))?;
            let jwk = PublicJwk {
                kty: "OKP".into(),
                crv: Some("Ed25519".into()),
                x: Some(x),
                ..base
            };
            (Signer::Ed25519(pair), decoding, jwk)
        }
    };
    let header = serde_json::to_vec(&ProtectedHeader {
        alg: stored.alg.as_str(),
        typ: ACCESS_TOKEN_TYPE,
        kid: &stored.kid,
    })
    .map_err(|e| malformed(&e))?;
    Ok(LoadedKey {
        kid: stored.kid.clone(),
        alg: stored.alg,
        signing: Some(SigningKey {
            signer,
            encoded_header: URL_SAFE_NO_PAD.encode(header),
        }),
        decoding,
        jwk,
    })
}

/// A key of a published JWKS, for verifying only. Its members must be those this service
/// publishes for its algorithm, so a key meant for something else is refused rather than used.
fn load_public_key(jwk: &PublicJwk) -> Result<LoadedKey, KeyError> {
    let malformed = |e: &dyn fmt::Display| KeyError::Malformed(format!("key {}: {e}", jwk.kid));
    let alg = SigningAlgorithm::parse(&jwk.alg).ok_or_else(|| malformed(&"unknown alg"))?;
    if jwk.use_ != "sig" {
        return Err(malformed(&"not a signing key"));
    }
    let decoding = match (alg, jwk.kty.as_str(), jwk.crv.as_deref(), &jwk.x, &jwk.y) {
        (SigningAlgorithm::RS256, "RSA", None, None, None) => match (&jwk.n, &jwk.e) {
            (Some(n), Some(e)) => DecodingKey::from_rsa_components(n, e),
            _ => return Err(malformed(&"an RSA key needs `n` and `e`")),
        },
        (SigningAlgorithm::ES256, "EC", Some("P-256"), Some(x), Some(y)) => {
            DecodingKey::from_ec_components(x, y)
        }
        (SigningAlgorithm::EdDSA, "OKP", Some("Ed25519"), Some(x), None) => {
            DecodingKey::from_ed_components(x)
        }
        _ => return Err(malformed(&"its members do not match its alg")),
    }
    .map_err(|e| malformed(&e))?;
    Ok(LoadedKey {
        kid: jwk.kid.clone(),
        alg,
        signing: None,
        decoding,
        jwk: jwk.clone(),
    })
}

/// The keys in use: the first signs, all verify.
pub struct KeySet {
    keys: Vec<LoadedKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.kid))
            .finish()
    }
}

/// What a token needs besides the key: who issues it, for whom, and for how long.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub issuer: String,
    pub audience: String,
    pub lifetime_seconds: i64,
}

/// A JWKS (RFC 7517 §5): what `/.well-known/jwks.json` serves, and the document of the secret
/// that publishes the public keys to the functions that only verify (docs/signing-keys.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<PublicJwk>,
}

impl Jwks {
    pub fn parse(json: &str) -> Result<Self, KeyError> {
        serde_json::from_str(json).map_err(|e| KeyError::Malformed(e.to_string()))
    }

    pub fn to_json(&self) -> Result<String, KeyError> {
        serde_json::to_string(self).map_err(|e| KeyError::Malformed(e.to_string()))
    }
}

impl KeySet {
    pub fn from_document(document: &KeySetDocument) -> Result<Self, KeyError> {
        if document.keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let keys = document
            .keys
            .iter()
            .map(load_key)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    /// A set that verifies with the keys of `jwks` and cannot sign.
    pub fn from_jwks(jwks: &Jwks) -> Result<Self, KeyError> {
        if jwks.keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let keys = jwks
            .keys
            .iter()
            .map(load_public_key)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    fn holds(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid == kid)
    }

    /// Whether `kid` could name a key made after this set's newest: key ids begin with their
    /// creation time (`20261128T120000Z-…`), so one that sorts before the newest key's time is
    /// not from a later rotation. A set whose newest id is not of that shape accepts any.
    fn could_be_newer(&self, kid: &str) -> bool {
        let time = |id: &str| {
            id.split_once('-')
                .map(|(time, _)| time.to_owned())
                .filter(|t| t.len() == 16 && t.ends_with('Z'))
        };
        match self.keys.first().and_then(|newest| time(&newest.kid)) {
            Some(newest) => time(kid).is_some_and(|t| t >= newest),
            None => true,
        }
    }

    fn current(&self) -> Result<&LoadedKey, KeyError> {
        self.keys.first().ok_or(KeyError::Empty)
    }

    pub fn signing_algorithm(&self) -> Result<SigningAlgorithm, KeyError> {
        Ok(self.current()?.alg)
    }

    /// Every algorithm a token of ours may carry, for the discovery metadata.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut algs: Vec<&'static str> = self.keys.iter().map(|k| k.alg.as_str()).collect();
        algs.dedup();
        algs
    }

    /// A JWS compact serialization (RFC 7515 §7.1): header, claims and signature, base64url.
    pub fn sign(&self, claims: &AccessTokenClaims) -> Result<String, KeyError> {
        let key = self
            .current()?
            .signing
            .as_ref()
            .ok_or(KeyError::VerifyOnly)?;
        let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Signing(e.to_string()))?;
        let mut token = String::with_capacity(1024);
        token.push_str(&key.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = key.signer.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self.keys.iter().map(|k| k.jwk.clone()).collect(),
        }
    }

    /// Checks the signature with the key the `kid` names, pinned to that key's algorithm, then
    /// `typ`, `iss`, `aud`, and `exp`/`nbf` against `now` (the injected clock, not the system's).
    pub fn verify(
        &self,
        token: &str,
        policy: &TokenPolicy,
        now: DateTime<Utc>,
    ) -> Result<AccessTokenClaims, TokenRejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenRejection::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Malformed)?;
        if header
            .typ
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
            != Some(ACCESS_TOKEN_TYPE)
        {
            return Err(TokenRejection::WrongType);
        }
        let kid = header.kid.ok_or(TokenRejection::UnknownKey)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .ok_or(TokenRejection::UnknownKey)?;
        if header.alg != key.alg.jwt_algorithm() {
            return Err(TokenRejection::WrongAlgorithm);
        }
        let mut validation = Validation::new(key.alg.jwt_algorithm());
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]);
        validation.set_issuer(&[&policy.issuer]);
        validation.set_audience(&[&policy.audience]);
        let data = jsonwebtoken::decode::<AccessTokenClaims>(token, &key.decoding, &validation)
            .map_err(|_| TokenRejection::Invalid)?;
        let claims = data.claims;
        let now = now.timestamp();
        if claims.exp <= now {
            return Err(TokenRejection::Expired);
        }
        if claims.nbf > now {
            return Err(TokenRejection::NotYetValid);
        }
        Ok(claims)
    }
}

/// Where the key set comes from. A secret (Secrets Manager on AWS) is read lazily and re-read after
/// `refresh_after`, so a rotation reaches warm instances, and a failed read at cold start is
/// retried on the next call instead of needing a restart. A token whose `kid` the cached set
/// does not hold triggers an early re-read (see [`KeySource::keys_for_token`]).
pub enum KeySource {
    Fixed(Arc<KeySet>),
    /// Read from a secret that a rotation changes, and cached.
    Cached(CachedKeys),
}

/// A secret holding a key set, as a store of record outside this process (Secrets Manager on
/// AWS, in `agentidp-aws`) presents it: one read of its current text.
#[async_trait::async_trait]
pub trait KeySecret: Send + Sync {
    /// The secret's current text; [`KeyError::Unavailable`] when it cannot be read now.
    async fn read_current(&self) -> Result<String, KeyError>;
    /// How errors and logs name the secret.
    fn name(&self) -> &str;
}

/// What a secret holds, and so what the set loaded from it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretContents {
    /// A [`KeySetDocument`]: private keys, which sign.
    PrivateKeys,
    /// A [`Jwks`]: public keys, which only verify.
    PublicKeys,
}

/// A key set read from a [`KeySecret`], kept for `refresh_after`, re-read by one request at a
/// time, and re-read early when a token names a key the cached set lacks.
pub struct CachedKeys {
    secret: Box<dyn KeySecret>,
    contents: SecretContents,
    refresh_after: std::time::Duration,
    cached: tokio::sync::RwLock<Option<(Arc<KeySet>, std::time::Instant)>>,
    /// Held by the one request re-reading the secret on schedule.
    reading: tokio::sync::Mutex<()>,
    /// When an unknown `kid` last made this instance re-read the secret early.
    last_early_read: std::sync::Mutex<Option<std::time::Instant>>,
}

/// At most one early re-read per this interval per instance, so tokens with made-up key ids
/// cannot turn into a stream of Secrets Manager calls.
pub const UNKNOWN_KID_REREAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

impl CachedKeys {
    /// The private key set `secret` holds (a [`KeySetDocument`]): it signs and verifies.
    pub fn signing(secret: impl KeySecret + 'static, refresh_after: std::time::Duration) -> Self {
        Self::reading(Box::new(secret), SecretContents::PrivateKeys, refresh_after)
    }

    /// The public key set `secret` holds (a [`Jwks`], as the rotation publishes it): it
    /// verifies, and [`KeySet::sign`] refuses with [`KeyError::VerifyOnly`]. What the functions
    /// that only verify tokens use, so that they never hold a private key.
    pub fn verify_only(
        secret: impl KeySecret + 'static,
        refresh_after: std::time::Duration,
    ) -> Self {
        Self::reading(Box::new(secret), SecretContents::PublicKeys, refresh_after)
    }

    fn reading(
        secret: Box<dyn KeySecret>,
        contents: SecretContents,
        refresh_after: std::time::Duration,
    ) -> Self {
        Self {
            secret,
            contents,
            refresh_after,
            cached: tokio::sync::RwLock::new(None),
            reading: tokio::sync::Mutex::new(()),
            last_early_read: std::sync::Mutex::new(None),
        }
    }

    /// Re-reads the secret before `refresh_after` because a token names a key the cached set
    /// lacks: after a rotation, a new instance signs with the new key while warm instances still
    /// hold the set from before it. `None` when nothing newer could be had (not a plausible new
    /// key id, rate-limited, or the read failed), and the caller keeps the set it has.
    ///
    /// Anyone can present a token, so the checks come before any lock: the key id must not be
    /// older than the newest key held (ours begin with their creation time), and at most one early
    /// read per [`UNKNOWN_KID_REREAD_INTERVAL`] runs. The read itself holds no lock, so requests
    /// go on with the cached set meanwhile.
    async fn reread_for(&self, kid: &str, held: &KeySet) -> Option<Arc<KeySet>> {
        if !held.could_be_newer(kid) {
            return None;
        }
        {
            let mut last = self.last_early_read.lock().ok()?;
            if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_REREAD_INTERVAL) {
                return None;
            }
            *last = Some(std::time::Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                *self.cached.write().await = Some((keys.clone(), std::time::Instant::now()));
                Some(keys)
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the signing keys for an unknown key id failed");
                None
            }
        }
    }

    async fn fetch(&self) -> Result<Arc<KeySet>, KeyError> {
        let json = self.secret.read_current().await?;
        let json = json.as_str();
        let loaded = match self.contents {
            SecretContents::PrivateKeys => KeySet::from_document(&KeySetDocument::parse(json)?),
            SecretContents::PublicKeys => KeySet::from_jwks(&Jwks::parse(json)?),
        };
        match loaded {
            Ok(keys) => Ok(Arc::new(keys)),
            // A new stack's secrets hold no key until its first rotation, and the public one also
            // until a rotation after the upgrade that added it (docs/deploy.md): not ready yet
            // (503), rather than broken (500).
            Err(KeyError::Empty) => Err(KeyError::Unavailable(format!(
                "the key secret {} holds no key yet",
                self.secret.name()
            ))),
            Err(e) => Err(e),
        }
    }

    async fn get(&self) -> Result<Arc<KeySet>, KeyError> {
        let cached = self.cached.read().await.clone();
        let stale = match cached {
            Some((keys, loaded)) if loaded.elapsed() < self.refresh_after => return Ok(keys),
            Some((keys, _)) => Some(keys),
            None => None,
        };
        // One request re-reads the secret. While it waits for Secrets Manager, the others go on
        // with the set they have; only when there is none yet (a cold start) do they wait.
        let _reading = match (&stale, self.reading.try_lock()) {
            (_, Ok(reading)) => reading,
            (Some(keys), Err(_)) => return Ok(keys.clone()),
            (None, Err(_)) => self.reading.lock().await,
        };
        // Another request may have read it while this one waited.
        if let Some((keys, loaded)) = self.cached.read().await.as_ref()
            && loaded.elapsed() < self.refresh_after
        {
            return Ok(keys.clone());
        }
        match self.fetch().await {
            Ok(keys) => {
                *self.cached.write().await = Some((keys.clone(), std::time::Instant::now()));
                Ok(keys)
            }
            // A stale key set still verifies and signs correctly; keep serving it while the
            // secret cannot be read, and try again on the next call.
            Err(e) => match stale {
                Some(keys) => {
                    tracing::warn!(error = %e, "re-reading the signing keys failed; using the cached set");
                    Ok(keys)
                }
                None => Err(e),
            },
        }
    }
}

impl KeySource {
    pub async fn keys(&self) -> Result<Arc<KeySet>, KeyError> {
        match self {
            KeySource::Fixed(keys) => Ok(keys.clone()),
            KeySource::Cached(source) => source.get().await,
        }
    }

    /// The key set to verify `token` with: the cached one, or, when the token's `kid` is not in
    /// it, the secret's current set read again (at most once per
    /// [`UNKNOWN_KID_REREAD_INTERVAL`]), so a token signed by a key newer than this instance's
    /// cache verifies without waiting for the regular refresh.
    pub async fn keys_for_token(&self, token: &str) -> Result<Arc<KeySet>, KeyError> {
        let keys = self.keys().await?;
        let KeySource::Cached(source) = self else {
            return Ok(keys);
        };
        let kid = (token.len() <= MAX_TOKEN_BYTES)
            .then(|| jsonwebtoken::decode_header(token).ok())
            .flatten()
            .and_then(|header| header.kid);
        match kid {
            Some(kid) if !keys.holds(&kid) => {
                Ok(source.reread_for(&kid, &keys).await.unwrap_or(keys))
            }
            _ => Ok(keys),
        }
    }

    /// The local server's keys: `path` if it exists, else a new key written there (mode 0600).
    pub fn load_or_create_file(
        path: &std::path::Path,
        alg: SigningAlgorithm,
    ) -> Result<Self, KeyError> {
        let document = match std::fs::read_to_string(path) {
            Ok(json) => KeySetDocument::parse(&json)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let document = KeySetDocument::generate(alg, Utc::now())?;
                crate::files::write_private(path, document.to_json()?.as_bytes()).map_err(|e| {
                    KeyError::Unavailable(format!("writing {}: {e}", path.display()))
                })?;
                document
            }
            Err(e) => {
                return Err(KeyError::Unavailable(format!(
                    "reading {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(KeySource::Fixed(Arc::new(KeySet::from_document(
            &document,
        )?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "http://localhost:3000".into(),
            audience: "http://localhost:3000".into(),
            lifetime_seconds: 3600,
        }
    }

    fn claims(now: DateTime<Utc>) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: policy().issuer,
            sub: Uuid::new_v4().to_string(),
            aud: policy().audience,
            exp: now.timestamp() + 3600,
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: Uuid::new_v4().to_string(),
            client_id: Uuid::new_v4().to_string(),
            scope: "agents:read".into(),
            org_id: Uuid::new_v4().to_string(),
        }
    }

    #[test]
    fn each_algorithm_signs_tokens_that_verify_with_its_own_key_set() {
        for alg in [
            SigningAlgorithm::RS256,
            SigningAlgorithm::ES256,
            SigningAlgorithm::EdDSA,
        ] {
            let now = Utc::now();
            let keys = KeySet::from_document(&KeySetDocument::generate(alg, now).unwrap()).unwrap();
            let token = keys.sign(&claims(now)).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));
            assert!(header.kid.is_some());
            assert_eq!(
                keys.verify(&token, &policy(), now).unwrap().scope,
                "agents:read",
                "{alg:?}"
            );
            assert_eq!(keys.jwks().keys[0].alg, alg.as_str());
        }
    }

    #[test]
    fn a_token_signed_before_rotation_still_verifies_after_it() {
        let now = Utc::now();
        let before = KeySetDocument::generate(SigningAlgorithm::RS256, now).unwrap();
        let token = KeySet::from_document(&before)
            .unwrap()
            .sign(&claims(now))
            .unwrap();
        let after =
            KeySet::from_document(&before.rotated(SigningAlgorithm::RS256, now, 2).unwrap())
                .unwrap();
        assert!(after.verify(&token, &policy(), now).is_ok());
        assert_eq!(after.jwks().keys.len(), 2);
    }

    #[test]
    fn a_document_round_trips_through_json_and_redacts_in_debug() {
        let document = KeySetDocument::generate(SigningAlgorithm::RS256, Utc::now()).unwrap();
        let json = document.to_json().unwrap();
        let again = KeySetDocument::parse(&json).unwrap();
        assert_eq!(again.keys[0].kid, document.keys[0].kid);
        assert!(!format!("{document:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn a_key_set_loaded_from_its_jwks_verifies_its_tokens_and_cannot_sign() {
        for alg in [
            SigningAlgorithm::RS256,
            SigningAlgorithm::ES256,
            SigningAlgorithm::EdDSA,
        ] {
            let now = Utc::now();
            let keys = KeySet::from_document(&KeySetDocument::generate(alg, now).unwrap()).unwrap();
            let token = keys.sign(&claims(now)).unwrap();
            let json = keys.jwks().to_json().unwrap();
            let public = KeySet::from_jwks(&Jwks::parse(&json).unwrap()).unwrap();
            assert_eq!(
                public.verify(&token, &policy(), now).unwrap().scope,
                "agents:read",
                "{alg:?}"
            );
            assert!(matches!(
                public.sign(&claims(now)),
                Err(KeyError::VerifyOnly)
            ));
            assert_eq!(public.jwks(), keys.jwks());
        }
    }

    #[test]
    fn a_published_key_whose_members_do_not_fit_its_alg_is_refused() {
        let now = Utc::now();
        let jwk = |alg| {
            KeySet::from_document(&KeySetDocument::generate(alg, now).unwrap())
                .unwrap()
                .jwks()
                .keys
                .remove(0)
        };
        let (rsa, ec) = (jwk(SigningAlgorithm::RS256), jwk(SigningAlgorithm::ES256));
        let refused = [
            PublicJwk {
                alg: "ES256".into(),
                ..rsa.clone()
            },
            PublicJwk {
                alg: "none".into(),
                ..ec.clone()
            },
            PublicJwk {
                alg: "HS256".into(),
                ..ec.clone()
            },
            PublicJwk {
                use_: "enc".into(),
                ..ec.clone()
            },
            PublicJwk {
                crv: Some("P-384".into()),
                ..ec.clone()
            },
            PublicJwk {
                y: None,
                ..ec.clone()
            },
            PublicJwk {
                n: None,
                ..rsa.clone()
            },
            PublicJwk {
                x: Some("not base64!".into()),
                ..ec
            },
        ];
        for key in refused {
            let jwks = Jwks {
                keys: vec![key.clone()],
            };
            assert!(
                matches!(KeySet::from_jwks(&jwks), Err(KeyError::Malformed(_))),
                "{key:?}"
            );
        }
        assert!(matches!(
            KeySet::from_jwks(&Jwks { keys: vec![] }),
            Err(KeyError::Empty)
        ));
    }

    #[test]
    fn an_empty_key_set_is_refused() {
        assert!(matches!(
            KeySet::from_document(&KeySetDocument { keys: vec![] }),
            Err(KeyError::Empty)
        ));
    }
}
