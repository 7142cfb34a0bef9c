//! Structured logs: JSON on Lambda (CloudWatch parses it), readable text locally.

use tracing_subscriber::EnvFilter;

/// `AGENTIDP_LOG` (or `RUST_LOG`) sets the filter; `info` by default.
pub fn init(json: bool) {
    let filter = std::env::var("AGENTIDP_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Logs go to stderr, so stdout carries only what a command prints on purpose (the local
    // server's one-time bootstrap credential, the CLI's JSON).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
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
