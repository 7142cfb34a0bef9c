//! Times bcrypt verifications at a cost, as the token endpoint runs them (one per cold client).
//! `bench/lambda-memory.sh` runs it under CPU quotas matching Lambda memory sizes.
//!
//! `cargo run --example bcrypt_cost -p agentidp-integration -- [COST] [ROUNDS]`

use std::time::Instant;

use agentidp_core::secret::{ClientSecret, SecretHasher};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let cost: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(agentidp_core::config::DEFAULT_BCRYPT_COST);
    let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let hasher = SecretHasher::new(cost)?;
    let secret = ClientSecret::generate()?;
    let hash = hasher.hash(&secret)?;
    let started = Instant::now();
    for _ in 0..rounds {
        if !hasher.verify(&secret, &hash) {
            return Err("the secret did not verify".into());
        }
    }
    let mean = started.elapsed().as_secs_f64() * 1000.0 / f64::from(rounds);
    println!("cost {cost}: {mean:.1} ms per verification ({rounds} rounds)");
    Ok(())
}
