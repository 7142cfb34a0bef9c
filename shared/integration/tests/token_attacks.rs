//! Forged and damaged access tokens are refused, each for its own reason.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use agentidp_core::signing::{
    AccessTokenClaims, KeySet, KeySetDocument, SigningAlgorithm, TokenPolicy, TokenRejection,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn policy() -> TokenPolicy {
    TokenPolicy {
        issuer: "https://idp.example.com".into(),
        audience: "https://idp.example.com".into(),
        lifetime_seconds: 3600,
    }
}

fn claims(now: DateTime<Utc>) -> AccessTokenClaims {
    AccessTokenClaims {
        iss: policy().issuer,
        sub: uuid::Uuid::new_v4().to_string(),
        aud: policy().audience,
        exp: now.timestamp() + 3600,
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: uuid::Uuid::new_v4().to_string(),
        client_id: uuid::Uuid::new_v4().to_string(),
        scope: "agents:write".into(),
        org_id: uuid::Uuid::new_v4().to_string(),
        act: None,
        may_act: None,
        chain_jtis: Vec::new(),
        chain_iat: None,
        cnf: None,
    }
}

fn keys() -> (KeySet, KeySetDocument) {
    let document = KeySetDocument::generate(SigningAlgorithm::RS256, Utc::now()).unwrap();
    (KeySet::from_document(&document).unwrap(), document)
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

#[test]
fn a_genuine_token_verifies() {
    let (keys, _) = keys();
    let now = Utc::now();
    assert!(
        keys.verify(&keys.sign(&claims(now)).unwrap(), &policy(), now)
            .is_ok()
    );
}

#[test]
fn alg_none_is_refused() {
    let (keys, _) = keys();
    let now = Utc::now();
    let kid = kid_of(&keys.sign(&claims(now)).unwrap());
    let header = b64(&json!({"alg": "none", "typ": "at+jwt", "kid": kid}));
    let payload = b64(&serde_json::to_value(claims(now)).unwrap());
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        assert!(keys.verify(&token, &policy(), now).is_err(), "{token}");
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let (keys, _) = keys();
    let now = Utc::now();
    let kid = kid_of(&keys.sign(&claims(now)).unwrap());
    let jwk = &keys.jwks().keys[0];
    // The classic confusion: the public key's bytes used as an HMAC secret.
    for secret in [
        jwk.n.clone().unwrap().into_bytes(),
        serde_json::to_vec(jwk).unwrap(),
    ] {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(kid.clone());
        let token = jsonwebtoken::encode(&header, &claims(now), &EncodingKey::from_secret(&secret))
            .unwrap();
        assert_eq!(
            keys.verify(&token, &policy(), now),
            Err(TokenRejection::WrongAlgorithm)
        );
    }
}

#[test]
fn an_unknown_kid_is_refused() {
    let (keys, _) = keys();
    let (other, _) = self::keys();
    let now = Utc::now();
    let token = other.sign(&claims(now)).unwrap();
    assert_eq!(
        keys.verify(&token, &policy(), now),
        Err(TokenRejection::UnknownKey)
    );
}

#[test]
fn a_token_signed_by_a_key_outside_the_set_under_a_known_kid_is_refused() {
    let (keys, _) = keys();
    let (_, mut foreign) = self::keys();
    let now = Utc::now();
    let kid = kid_of(&keys.sign(&claims(now)).unwrap());
    foreign.keys[0].kid = kid;
    let forged = KeySet::from_document(&foreign)
        .unwrap()
        .sign(&claims(now))
        .unwrap();
    assert_eq!(
        keys.verify(&forged, &policy(), now),
        Err(TokenRejection::Invalid)
    );
}

#[test]
fn expired_and_not_yet_valid_tokens_are_refused() {
    let (keys, _) = keys();
    let now = Utc::now();
    let token = keys.sign(&claims(now)).unwrap();
    assert_eq!(
        keys.verify(&token, &policy(), now + chrono::Duration::seconds(3600)),
        Err(TokenRejection::Expired)
    );
    assert_eq!(
        keys.verify(&token, &policy(), now - chrono::Duration::seconds(1)),
        Err(TokenRejection::NotYetValid)
    );
}

#[test]
fn a_wrong_issuer_or_audience_is_refused() {
    let (keys, _) = keys();
    let now = Utc::now();
    let mut wrong_iss = claims(now);
    wrong_iss.iss = "https://evil.example.com".into();
    let mut wrong_aud = claims(now);
    wrong_aud.aud = "https://other-service.example.com".into();
    for c in [wrong_iss, wrong_aud] {
        assert_eq!(
            keys.verify(&keys.sign(&c).unwrap(), &policy(), now),
            Err(TokenRejection::Invalid)
        );
    }
}

#[test]
fn a_tampered_payload_is_refused() {
    let (keys, _) = keys();
    let now = Utc::now();
    let token = keys.sign(&claims(now)).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["scope"] = json!("agents:read agents:write audit:read");
    let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    assert_eq!(
        keys.verify(&tampered, &policy(), now),
        Err(TokenRejection::Invalid)
    );
}

#[test]
fn truncated_and_oversized_tokens_are_refused() {
    let (keys, _) = keys();
    let now = Utc::now();
    let token = keys.sign(&claims(now)).unwrap();
    for cut in [1, 10, token.len() / 2, token.len() - 1] {
        assert!(
            keys.verify(&token[..cut], &policy(), now).is_err(),
            "cut at {cut}"
        );
    }
    let oversized = format!(
        "{token}{}",
        "A".repeat(agentidp_core::signing::MAX_TOKEN_BYTES)
    );
    assert_eq!(
        keys.verify(&oversized, &policy(), now),
        Err(TokenRejection::TooLarge)
    );
}

#[test]
fn a_token_without_the_at_jwt_type_is_refused() {
    let (keys, document) = keys();
    let now = Utc::now();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(document.keys[0].kid.clone());
    header.typ = Some("JWT".into());
    let key = EncodingKey::from_rsa_pem(document.keys[0].private_key_pem.as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims(now), &key).unwrap();
    assert_eq!(
        keys.verify(&token, &policy(), now),
        Err(TokenRejection::WrongType)
    );
}
