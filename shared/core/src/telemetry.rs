//! Structured logs: JSON on Lambda (CloudWatch parses it), readable text locally.
//!
//! Whatever the filter says, the crates that carry requests log at `info` at most: below that
//! they write what they carry. `lambda_runtime` logs each raw invocation event at `trace` (the
//! `Authorization` header with Basic secrets and bearer tokens, bodies with `client_secret` and
//! `token`), `aws_smithy_runtime` the DynamoDB requests and responses (bcrypt hashes), and
//! `aws_sigv4` each request it signs. A per-target directive in the filter cannot lift the cap,
//! because the cap is a second filter that every event must also pass.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{FilterExt, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Target prefixes held at `info` or less (a target matches a prefix it starts with, so
/// `hyper` covers `hyper_util` and `hyper_rustls`; `log` records keep their module path). Every crate in `Cargo.lock` that logs is here or reviewed in
/// `every_dependency_that_logs_is_capped_or_reviewed`.
const CAPPED: [&str; 8] = [
    // lambda_runtime (the raw event), lambda_http, lambda_runtime_api_client.
    "lambda_",
    // The SDK: aws_smithy_runtime (bodies), aws_sigv4 (signed requests), aws_runtime (request
    // chunks), aws_config (credential process commands), aws_smithy_http, aws_sdk_*.
    "aws_",
    // The HTTP and TLS stack under both: it carries every byte, whatever it logs today.
    "hyper", "h2", "rustls", "tower", "reqwest", "axum",
];

/// The levels a function accepts: the template's `LogLevel` allows these and nothing else.
const FUNCTION_LEVELS: [&str; 4] = ["error", "warn", "info", "debug"];

/// `AGENTIDP_LOG` (or `RUST_LOG`) sets the filter; `info` by default. With `json` (the Lambda
/// functions) it must be one of [`FUNCTION_LEVELS`]; locally any `tracing` filter is taken. A
/// refused setting logs at `info` and says so, rather than failing the cold start: the
/// template already refuses other values, so this is a hand-edited function configuration.
pub fn init(json: bool) {
    let setting = ["AGENTIDP_LOG", "RUST_LOG"]
        .into_iter()
        .find_map(|name| crate::config::process_env(name).filter(|v| !v.trim().is_empty()));
    let (filter, refused) = parse_setting(setting.as_deref(), json);
    // Logs go to stderr, so stdout carries only what a command prints on purpose (the local
    // server's one-time bootstrap credential, the CLI's JSON). A second init (tests) keeps the
    // first subscriber.
    drop(subscriber(json, filter, std::io::stderr).try_init());
    if let Some(setting) = refused {
        tracing::warn!(
            setting = %setting,
            allowed = if json { "error, warn, info, debug" } else { "a tracing filter" },
            "AGENTIDP_LOG is refused; logging at info"
        );
    }
}

/// The filter for a setting, and the setting if it was refused (then the filter is `info`).
fn parse_setting(setting: Option<&str>, function: bool) -> (EnvFilter, Option<String>) {
    let Some(setting) = setting.map(str::trim).filter(|s| !s.is_empty()) else {
        return (EnvFilter::new("info"), None);
    };
    let parsed = if function {
        FUNCTION_LEVELS
            .into_iter()
            .find(|level| level.eq_ignore_ascii_case(setting))
            .map(EnvFilter::new)
    } else {
        EnvFilter::try_new(setting).ok()
    };
    match parsed {
        Some(filter) => (filter, None),
        None => (EnvFilter::new("info"), Some(setting.to_owned())),
    }
}

fn subscriber<W>(json: bool, filter: EnvFilter, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let cap = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CAPPED.map(|target| (target, LevelFilter::INFO)));
    let layer = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer);
    let layer = if json {
        layer
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .without_time()
            .boxed()
    } else {
        layer.boxed()
    };
    tracing_subscriber::registry().with(layer.with_filter(filter.and(cap)))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    const SECRET: &str = "sk_live_00000000000000000000000000000042";

    /// A writer into a shared buffer, so a test reads what the subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;

        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// What the subscriber writes, with `filter` as the directives, while `emit` runs.
    fn written(json: bool, filter: &str, emit: impl FnOnce()) -> String {
        let captured = Captured::default();
        let subscriber = subscriber(json, EnvFilter::new(filter), captured.clone());
        tracing::subscriber::with_default(subscriber, emit);
        captured.text()
    }

    /// The same with the filter alone, as before the cap: the attack's baseline.
    fn written_uncapped(filter: &str, emit: impl FnOnce()) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(filter))
            .with_writer(captured.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        captured.text()
    }

    /// What the crates below write at `trace` and `debug`, from inside the span the runtime
    /// opens for an invocation, with the targets they log under (their module paths). `log`
    /// records (rustls 0.21) arrive with the same kind of target.
    fn the_dependencies_log_what_they_carry() {
        let span = tracing::info_span!(
            target: "lambda_runtime::layers::trace",
            "Lambda runtime invoke",
            requestId = "r-1"
        );
        let _entered = span.enter();
        tracing::trace!(target: "lambda_runtime::layers::api_response", body = SECRET, "raw JSON event received from Lambda");
        tracing::trace!(target: "aws_smithy_runtime::client::orchestrator", request = SECRET, "transmitting request");
        tracing::trace!(target: "aws_smithy_runtime::client::orchestrator::http", response = SECRET, "read HTTP response body");
        tracing::trace!(target: "aws_sigv4::http_request::sign", request = SECRET, "signing request");
        tracing::debug!(target: "aws_smithy_runtime_api::client::retries", "Retrying error {SECRET}");
        tracing::trace!(target: "hyper_util::client::legacy", "{SECRET}");
        tracing::trace!(target: "h2::codec", "{SECRET}");
        tracing::trace!(target: "rustls::client::hs", "{SECRET}");
        tracing::trace!(target: "tower::buffer", "{SECRET}");
    }

    /// Filters an operator, or an attacker who can change a function's configuration, might
    /// set: every level, per-crate and per-module directives, span and field directives. Each
    /// makes a plain filter write the secret.
    const HOSTILE: [&str; 9] = [
        "trace",
        "debug,lambda_runtime=trace",
        "lambda_runtime::layers::api_response=trace",
        "aws_smithy_runtime=trace,aws_sigv4=trace,aws_smithy_runtime_api=debug",
        "off,hyper_util=trace,h2=trace,rustls=trace,tower=trace",
        "aws=trace",
        "[Lambda runtime invoke]=trace",
        "[{requestId}]=trace",
        "lambda_runtime[Lambda runtime invoke]=trace",
    ];

    #[test]
    fn no_filter_makes_the_runtime_the_sdk_or_the_http_stack_log_what_they_carry() {
        for hostile in HOSTILE {
            let before = written_uncapped(hostile, the_dependencies_log_what_they_carry);
            assert!(
                before.contains(SECRET),
                "`{hostile}` is no attack: {before}"
            );
            for json in [true, false] {
                let out = written(json, hostile, the_dependencies_log_what_they_carry);
                assert!(
                    !out.contains(SECRET),
                    "`{hostile}` (json: {json}) let through:\n{out}"
                );
            }
        }
    }

    #[test]
    fn the_capped_crates_are_still_heard_at_info_and_above() {
        for filter in ["trace", "debug", "info"] {
            let out = written(true, filter, || {
                tracing::info!(target: "lambda_runtime::runtime", "runtime at info");
                tracing::error!(target: "aws_smithy_runtime::client", "sdk at error");
            });
            assert!(out.contains("runtime at info"), "{filter}: {out}");
            assert!(out.contains("sdk at error"), "{filter}: {out}");
        }
    }

    #[test]
    fn our_own_crates_log_at_the_level_the_filter_sets() {
        let out = written(true, "debug", || {
            tracing::debug!(target: "agentidp_http", "ours at debug");
            tracing::trace!(target: "agentidp_http", "ours at trace");
        });
        assert!(out.contains("ours at debug"), "{out}");
        assert!(!out.contains("ours at trace"), "{out}");
    }

    #[test]
    fn a_quieter_filter_also_quiets_the_capped_crates() {
        let out = written(true, "warn", || {
            tracing::info!(target: "aws_smithy_runtime::client", "sdk at info");
            tracing::warn!(target: "aws_smithy_runtime::client", "sdk at warn");
        });
        assert!(!out.contains("sdk at info"), "{out}");
        assert!(out.contains("sdk at warn"), "{out}");
    }

    #[test]
    fn a_function_takes_only_the_levels_the_template_allows() {
        for level in ["error", "warn", "info", "debug", "DEBUG", " debug "] {
            let (filter, refused) = parse_setting(Some(level), true);
            assert_eq!(refused, None, "{level}");
            assert_eq!(
                filter.max_level_hint(),
                Some(level.trim().parse::<LevelFilter>().unwrap()),
                "{level}"
            );
        }
        for setting in HOSTILE
            .into_iter()
            .chain(["off", "agentidp_core=debug", "verbose"])
        {
            let (filter, refused) = parse_setting(Some(setting), true);
            assert_eq!(refused.as_deref(), Some(setting), "{setting}");
            assert_eq!(
                filter.max_level_hint(),
                Some(LevelFilter::INFO),
                "{setting}"
            );
        }
        for unset in [None, Some(""), Some("  ")] {
            let (filter, refused) = parse_setting(unset, true);
            assert_eq!(refused, None);
            assert_eq!(filter.max_level_hint(), Some(LevelFilter::INFO));
        }
    }

    #[test]
    fn the_local_server_takes_any_filter_but_refuses_a_malformed_one() {
        let (filter, refused) = parse_setting(Some("info,agentidp_core=trace"), false);
        assert_eq!(refused, None);
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::TRACE));
        let (filter, refused) = parse_setting(Some("agentidp_core=loud"), false);
        assert_eq!(refused.as_deref(), Some("agentidp_core=loud"));
        assert_eq!(filter.max_level_hint(), Some(LevelFilter::INFO));
    }

    /// A new dependency that logs must be capped or read and listed here: the crates in
    /// `Cargo.lock` that depend on `tracing` or `log`, less ours, the capped ones and these.
    #[test]
    fn every_dependency_that_logs_is_capped_or_reviewed() {
        // Read: they log only the logging itself, or (iana-time-zone) the local time zone.
        const REVIEWED: [&str; 5] = [
            "tracing",
            "tracing-log",
            "tracing-serde",
            "tracing-subscriber",
            "iana-time-zone",
        ];
        // In Cargo.lock only: reqwest's rustls features name QUIC's TLS feature weakly
        // (`quinn?/rustls`), which puts quinn in the lock, but its `http3` feature is off, so
        // quinn is built for no target (`cargo tree -i quinn --target all` prints nothing).
        const NEVER_BUILT: [&str; 3] = ["quinn", "quinn-proto", "quinn-udp"];
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
                .unwrap();
        let mut unreviewed = Vec::new();
        let mut logging = 0;
        for package in lock.split("[[package]]").skip(1) {
            let name = package
                .lines()
                .find_map(|line| line.strip_prefix("name = \""))
                .and_then(|rest| rest.strip_suffix('"'))
                .unwrap();
            let logs = package
                .split_once("dependencies = [")
                .map(|(_, deps)| deps.split(']').next().unwrap_or_default())
                .is_some_and(|deps| {
                    deps.split(',').any(|dep| {
                        let dep = dep.trim().trim_matches('"');
                        let dep = dep.split(' ').next().unwrap_or_default();
                        dep == "tracing" || dep == "log"
                    })
                });
            if !logs {
                continue;
            }
            logging += 1;
            let target = name.replace('-', "_");
            if !(name.starts_with("agentidp-")
                || REVIEWED.contains(&name)
                || NEVER_BUILT.contains(&name)
                || CAPPED.iter().any(|prefix| target.starts_with(prefix)))
            {
                unreviewed.push(name.to_owned());
            }
        }
        assert!(
            logging > 10,
            "found only {logging} crates that log in Cargo.lock"
        );
        assert!(
            unreviewed.is_empty(),
            "these crates log and are neither capped in telemetry.rs nor reviewed: {unreviewed:?}"
        );
    }
}
