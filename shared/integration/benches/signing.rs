//! Access tokens: signing and verifying one token per algorithm, with a freshly generated key set.
//!
//! `cargo bench -p agentidp-integration --bench signing`

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark stops on its first surprise"
)]

use std::hint::black_box;

use agentidp_core::signing::{
    AccessTokenClaims, KeySet, KeySetDocument, SigningAlgorithm, TokenPolicy,
};
use chrono::Utc;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use uuid::Uuid;

fn policy() -> TokenPolicy {
    TokenPolicy {
        issuer: "http://127.0.0.1:3000".into(),
        audience: "http://127.0.0.1:3000".into(),
        lifetime_seconds: 3600,
    }
}

/// Claims shaped like the token endpoint's.
fn claims() -> AccessTokenClaims {
    let now = Utc::now().timestamp();
    AccessTokenClaims {
        iss: policy().issuer,
        sub: Uuid::new_v4().to_string(),
        aud: policy().audience,
        exp: now + 3600,
        iat: now,
        nbf: now,
        jti: Uuid::new_v4().to_string(),
        client_id: Uuid::new_v4().to_string(),
        scope: "agents:read agents:write audit:read".into(),
        org_id: Uuid::new_v4().to_string(),
        act: None,
        may_act: None,
        chain_jtis: Vec::new(),
        chain_iat: None,
        cnf: None,
    }
}

fn sign_and_verify(c: &mut Criterion) {
    let mut group = c.benchmark_group("token");
    for alg in [
        SigningAlgorithm::RS256,
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
    ] {
        let keys =
            KeySet::from_document(&KeySetDocument::generate(alg, Utc::now()).unwrap()).unwrap();
        let claims = claims();
        let token = keys.sign(&claims).unwrap();
        let policy = policy();
        group.bench_with_input(BenchmarkId::new("sign", alg.as_str()), &alg, |b, _| {
            b.iter(|| keys.sign(black_box(&claims)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("verify", alg.as_str()), &alg, |b, _| {
            b.iter(|| keys.verify(black_box(&token), &policy, Utc::now()).unwrap())
        });
    }
    group.finish();
}

/// What an RS256 signature costs by itself, against parsing the private key first. jsonwebtoken
/// (10.x, aws-lc backend) parses the key from its DER bytes on every `encode`, which is why
/// `KeySet` keeps the parsed key and builds the JWS itself; these show the difference.
fn rsa_parts(c: &mut Criterion) {
    use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    use base64::Engine;

    let document = KeySetDocument::generate(SigningAlgorithm::RS256, Utc::now()).unwrap();
    let pem = &document.keys[0].private_key_pem;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let pkcs8 = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let pair = RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    // A signing input of a token's size.
    let message = vec![b'a'; 600];
    let mut signature = vec![0; pair.public_modulus_len()];
    let mut group = c.benchmark_group("rsa2048");
    // The bytes jsonwebtoken keeps for this PEM, parsed the way it parses them for each token.
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    group.bench_function("parse_private_key_as_jsonwebtoken_does", |b| {
        b.iter(|| RsaKeyPair::from_der(black_box(encoding.inner())).unwrap())
    });
    group.bench_function("parse_then_sign", |b| {
        b.iter(|| {
            let fresh = RsaKeyPair::from_der(black_box(encoding.inner())).unwrap();
            fresh
                .sign(&RSA_PKCS1_SHA256, &rng, black_box(&message), &mut signature)
                .unwrap()
        })
    });
    group.bench_function("sign_with_parsed_key", |b| {
        b.iter(|| {
            pair.sign(&RSA_PKCS1_SHA256, &rng, black_box(&message), &mut signature)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, sign_and_verify, rsa_parts);
criterion_main!(benches);
