//! The public keys as a JWKS (RFC 7517): what `/.well-known/jwks.json` serves, what a rotation
//! publishes to the functions that only verify, and the verify-only [`KeySet`] loaded from it.

use std::fmt;

use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};

use super::keys::LoadedKey;
use super::{KeyError, KeySet, SigningAlgorithm};

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

impl KeySet {
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

    pub fn jwks(&self) -> Jwks {
        Jwks {
            keys: self.keys.iter().map(|k| k.jwk.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::signing::KeySetDocument;
    use crate::signing::test_support::{claims, policy};

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
}
