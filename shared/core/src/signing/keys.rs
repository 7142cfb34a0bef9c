//! Signing keys: the algorithms, the key-set document that stores the private keys (and makes a
//! rotation's next one), and the loaded [`KeySet`], whose first key signs and every key verifies.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};

use super::{ACCESS_TOKEN_TYPE, KeyError, PublicJwk};
use crate::domain::time::format_timestamp;

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

    pub(super) fn jwt_algorithm(self) -> Algorithm {
        match self {
            SigningAlgorithm::RS256 => Algorithm::RS256,
            SigningAlgorithm::ES256 => Algorithm::ES256,
            SigningAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
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

pub(super) struct LoadedKey {
    pub(super) kid: String,
    pub(super) alg: SigningAlgorithm,
    /// `None` in a set loaded from public keys: no private key ever reached this process.
    pub(super) signing: Option<SigningKey>,
    pub(super) decoding: DecodingKey,
    pub(super) jwk: PublicJwk,
}

pub(super) struct SigningKey {
    pub(super) signer: Signer,
    /// The JWS protected header, base64url, made once: it is the same in every token.
    pub(super) encoded_header: String,
    /// A secret derived from the private key (SHA-256 of a label and the key's DER): what DPoP
    /// nonces are made with, so that every instance holding the key makes and accepts the same
    /// ones, and no one without it can.
    pub(super) nonce_secret: aws_lc_rs::digest::Digest,
}

/// A private key parsed once when the key set loads. Signing through `jsonwebtoken` re-parses
/// the key's DER on every call, which for RSA cost more than the signature itself (685 µs against
/// 252 µs in `cargo bench --bench signing`).
pub(super) enum Signer {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    pub(super) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
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
            nonce_secret: {
                let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                context.update(b"agentidp dpop nonce key\0");
                context.update(&pkcs8);
                context.finish()
            },
        }),
        decoding,
        jwk,
    })
}

/// The keys in use: the first signs, all verify.
pub struct KeySet {
    pub(super) keys: Vec<LoadedKey>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.kid))
            .finish()
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

    pub(super) fn holds(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid == kid)
    }

    /// Whether `kid` could name a key made after this set's newest: key ids begin with their
    /// creation time (`20261128T120000Z-…`), so one that sorts before the newest key's time is
    /// not from a later rotation. A set whose newest id is not of that shape accepts any.
    pub(super) fn could_be_newer(&self, kid: &str) -> bool {
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

    pub(super) fn current(&self) -> Result<&LoadedKey, KeyError> {
        self.keys.first().ok_or(KeyError::Empty)
    }

    pub fn signing_algorithm(&self) -> Result<SigningAlgorithm, KeyError> {
        Ok(self.current()?.alg)
    }

    /// The DPoP nonces this set makes and accepts: the newest key makes them, every key
    /// accepts them. A set of public keys only makes none.
    pub fn dpop_nonces(&self) -> crate::dpop::DpopNonces {
        crate::dpop::DpopNonces::new(
            self.keys
                .iter()
                .filter_map(|k| k.signing.as_ref())
                .map(|signing| signing.nonce_secret.as_ref()),
        )
    }

    /// Every algorithm a token of ours may carry, for the discovery metadata.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut algs: Vec<&'static str> = self.keys.iter().map(|k| k.alg.as_str()).collect();
        algs.dedup();
        algs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::test_support::{claims, policy};

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
    fn an_empty_key_set_is_refused() {
        assert!(matches!(
            KeySet::from_document(&KeySetDocument { keys: vec![] }),
            Err(KeyError::Empty)
        ));
    }
}
