//! Client secrets: bcrypt at the production cost (10) and the test cost (4), and the verified-secret
//! cache that lets a warm instance skip bcrypt for a client it has already verified.
//!
//! `cargo bench -p agentidp-integration --bench secrets`

#![expect(
    clippy::unwrap_used,
    reason = "a benchmark stops on its first surprise"
)]

use std::hint::black_box;
use std::time::Duration;

use agentidp_core::config::DEFAULT_BCRYPT_COST;
use agentidp_core::secret::{ClientSecret, SecretHasher};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use uuid::Uuid;

/// The cost the test suites use.
const TEST_COST: u32 = 4;

fn bcrypt(c: &mut Criterion) {
    let mut group = c.benchmark_group("bcrypt");
    // Cost 10 is tens of milliseconds an iteration: ten samples are enough to see its spread.
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for cost in [TEST_COST, DEFAULT_BCRYPT_COST] {
        let hasher = SecretHasher::new(cost).unwrap();
        let secret = ClientSecret::generate().unwrap();
        let hash = hasher.hash(&secret).unwrap();
        group.bench_with_input(BenchmarkId::new("hash", cost), &cost, |b, _| {
            b.iter(|| hasher.hash(black_box(&secret)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("verify", cost), &cost, |b, _| {
            b.iter(|| assert!(hasher.verify(black_box(&secret), black_box(&hash))))
        });
    }
    group.finish();
}

fn verified_cache(c: &mut Criterion) {
    let mut group = c.benchmark_group("verified_cache");
    let hasher = SecretHasher::new(TEST_COST).unwrap();
    let id = Uuid::new_v4();
    let secret = ClientSecret::generate().unwrap();
    let hash = hasher.hash(&secret).unwrap();
    assert!(hasher.verify_and_remember(id, &secret, &hash));
    let wrong = ClientSecret::generate().unwrap();
    group.bench_function("recently_verified_hit", |b| {
        b.iter(|| {
            assert!(hasher.recently_verified(black_box(id), black_box(&secret), black_box(&hash)))
        })
    });
    group.bench_function("recently_verified_miss_wrong_secret", |b| {
        b.iter(|| {
            assert!(!hasher.recently_verified(black_box(id), black_box(&wrong), black_box(&hash)))
        })
    });
    group.finish();
}

criterion_group!(benches, bcrypt, verified_cache);
criterion_main!(benches);
