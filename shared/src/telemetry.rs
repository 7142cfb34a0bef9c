//! Structured logs: JSON on Lambda (CloudWatch parses it), readable text locally.

use tracing_subscriber::EnvFilter;

/// `AGENTIDP_LOG` (or `RUST_LOG`) sets the level; `info` by default.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_env("AGENTIDP_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .without_time()
            .try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}
