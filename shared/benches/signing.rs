//! Access tokens: signing and verifying one token per algorithm, with a freshly generated key set.
//!
//! `cargo bench -p agentidp-shared --bench signing`

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark stops on its first surprise"
)]

use std::hint::black_box;

use agentidp_shared::signing::{
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

criterion_group!(benches, sign_and_verify);
criterion_main!(benches);
