//! Typed configuration from the environment. An error names the variable at fault.

use crate::domain::PlanLimits;
use crate::remote_keys::KeyFetchNetwork;
use crate::signing::SigningAlgorithm;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    #[error("environment variable {name} is malformed: {problem}")]
    Malformed { name: &'static str, problem: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `iss` of every token, and the base of the discovery metadata's URLs.
    pub issuer: String,
    /// `aud` of every token.
    pub audience: String,
    pub token_lifetime_seconds: i64,
    /// How far ahead a client assertion's `exp` may be (private_key_jwt): how long a captured
    /// assertion could be replayed, were its `jti` not single use.
    pub client_assertion_max_lifetime_seconds: i64,
    pub bcrypt_cost: u32,
    pub signing_algorithm: SigningAlgorithm,
    pub free_limits: PlanLimits,
    pub throttle: ThrottleLimits,
    /// Where published key sets (`jwksUri`) may be fetched from.
    pub key_fetch_network: KeyFetchNetwork,
    /// How many actors a delegated token's chain may hold (token exchange, RFC 8693).
    pub max_delegation_depth: usize,
    /// The URL clients reach the API at, without a trailing slash: the base of the discovery
    /// metadata's endpoints and of the `htu` a DPoP proof must name. Behind API Gateway or a
    /// custom domain a function never sees it, so it is configured; the issuer by default.
    pub public_url: String,
    pub dpop: DpopSettings,
}

/// How DPoP proofs (RFC 9449) are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DpopSettings {
    /// How far a proof's `iat` may be from now, either way: how long a captured proof could be
    /// replayed, were its `jti` not single use.
    pub proof_max_age_seconds: i64,
    /// Whether the token endpoint requires a server nonce in every proof (RFC 9449 §8), which
    /// bounds a proof's life by the server's clock rather than the client's.
    pub nonces: bool,
}

pub const DEFAULT_DPOP_PROOF_MAX_AGE_SECONDS: i64 = 60;

/// Brute-force and rate limits, counted in the store so they hold across instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// The fixed window failed authentications are counted in; a lockout lifts when it ends.
    pub lockout_window_seconds: i64,
    /// Failed authentications of one client id from one source address in a window before the
    /// client is locked out at that address. Other addresses are not affected: the client id is
    /// public, so a lockout anyone could cause everywhere would be a denial of service.
    pub client_failures: u64,
    /// Failed authentications of one client id in a minute, from every address together, past
    /// which its client authentications are refused until the minute ends: what slows guessing
    /// spread over many addresses, without locking the client out for a whole window.
    pub client_failures_per_minute: u64,
    /// Failed authentications from one source address in a window before it is locked out.
    pub address_failures: u64,
    /// Management requests of one organization per minute.
    pub org_requests_per_minute: u64,
}

impl ThrottleLimits {
    pub const DEFAULT: ThrottleLimits = ThrottleLimits {
        lockout_window_seconds: 900,
        client_failures: 10,
        client_failures_per_minute: 30,
        address_failures: 100,
        org_requests_per_minute: 600,
    };
}

/// bcrypt cost 10 takes about 55 ms per verify on one core here: OWASP's floor, and slow enough
/// to make offline guessing of a leaked hash expensive. Secrets are 128-bit random, so a higher
/// cost buys little and would cost every cold token request 4x more.
pub const DEFAULT_BCRYPT_COST: u32 = 10;
pub const DEFAULT_TOKEN_LIFETIME_SECONDS: i64 = 3600;
/// Five minutes: RFC 7523 asks for a short lifetime, and the MCP SDK signs for exactly this.
pub const DEFAULT_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS: i64 = 300;

/// Three actors: an orchestrator's sub-agent's tool. Each link is one more agent whose kill
/// switch and status every use of the token checks, in the same read.
pub const DEFAULT_MAX_DELEGATION_DEPTH: usize = 3;

/// The process environment: the one place AgentIdP reads it. Every setting, in every crate, is
/// parsed from a lookup like this one, so a test passes a map instead.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A variable that must be set; blank counts as unset.
pub fn required(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<String, ConfigError> {
    lookup(name)
        .filter(|value| !value.trim().is_empty())
        .ok_or(ConfigError::Missing(name))
}

/// The algorithm of new signing keys: `AGENTIDP_SIGNING_ALG`, RS256 when unset.
pub fn signing_algorithm(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<SigningAlgorithm, ConfigError> {
    match lookup("AGENTIDP_SIGNING_ALG") {
        None => Ok(SigningAlgorithm::RS256),
        Some(text) => SigningAlgorithm::parse(&text).ok_or(ConfigError::Malformed {
            name: "AGENTIDP_SIGNING_ALG",
            problem: format!("`{text}` is not RS256, ES256 or EdDSA"),
        }),
    }
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// Like [`Config::from_env`], reading variables through `lookup` (tests, and the local
    /// server, which supplies defaults the Lambda functions must be given).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let issuer = required(&lookup, "AGENTIDP_ISSUER")?;
        let issuer = issuer.trim_end_matches('/').to_owned();
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err(ConfigError::Malformed {
                name: "AGENTIDP_ISSUER",
                problem: "must be an http(s) URL".into(),
            });
        }
        let audience = lookup("AGENTIDP_AUDIENCE").unwrap_or_else(|| issuer.clone());
        let free = PlanLimits::FREE_DEFAULT;
        Ok(Self {
            token_lifetime_seconds: number(
                &lookup,
                "AGENTIDP_TOKEN_LIFETIME_SECONDS",
                DEFAULT_TOKEN_LIFETIME_SECONDS,
                60,
                86_400,
            )?,
            client_assertion_max_lifetime_seconds: number(
                &lookup,
                "AGENTIDP_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS",
                DEFAULT_CLIENT_ASSERTION_MAX_LIFETIME_SECONDS,
                30,
                3600,
            )?,
            bcrypt_cost: number(&lookup, "AGENTIDP_BCRYPT_COST", DEFAULT_BCRYPT_COST, 4, 31)?,
            signing_algorithm: signing_algorithm(&lookup)?,
            free_limits: PlanLimits {
                max_agents: number(
                    &lookup,
                    "AGENTIDP_FREE_MAX_AGENTS",
                    free.max_agents,
                    1,
                    u64::MAX,
                )?,
                max_active_credentials_per_agent: number(
                    &lookup,
                    "AGENTIDP_FREE_MAX_ACTIVE_CREDENTIALS",
                    free.max_active_credentials_per_agent,
                    1,
                    PlanLimits::ENTERPRISE.max_active_credentials_per_agent,
                )?,
                monthly_token_requests: number(
                    &lookup,
                    "AGENTIDP_FREE_MONTHLY_TOKEN_REQUESTS",
                    free.monthly_token_requests,
                    1,
                    u64::MAX,
                )?,
                audit_retention_days: number(
                    &lookup,
                    "AGENTIDP_FREE_AUDIT_RETENTION_DAYS",
                    free.audit_retention_days,
                    1,
                    3650,
                )?,
                max_resources: number(
                    &lookup,
                    "AGENTIDP_FREE_MAX_RESOURCES",
                    free.max_resources,
                    1,
                    u64::MAX,
                )?,
                max_trusted_issuers: number(
                    &lookup,
                    "AGENTIDP_FREE_MAX_TRUSTED_ISSUERS",
                    free.max_trusted_issuers,
                    1,
                    u64::MAX,
                )?,
            },
            throttle: ThrottleLimits {
                lockout_window_seconds: number(
                    &lookup,
                    "AGENTIDP_LOCKOUT_WINDOW_SECONDS",
                    ThrottleLimits::DEFAULT.lockout_window_seconds,
                    1,
                    86_400,
                )?,
                client_failures: number(
                    &lookup,
                    "AGENTIDP_LOCKOUT_CLIENT_FAILURES",
                    ThrottleLimits::DEFAULT.client_failures,
                    1,
                    1_000_000,
                )?,
                client_failures_per_minute: number(
                    &lookup,
                    "AGENTIDP_LOCKOUT_CLIENT_FAILURES_PER_MINUTE",
                    ThrottleLimits::DEFAULT.client_failures_per_minute,
                    1,
                    1_000_000,
                )?,
                address_failures: number(
                    &lookup,
                    "AGENTIDP_LOCKOUT_ADDRESS_FAILURES",
                    ThrottleLimits::DEFAULT.address_failures,
                    1,
                    1_000_000,
                )?,
                org_requests_per_minute: number(
                    &lookup,
                    "AGENTIDP_ORG_REQUESTS_PER_MINUTE",
                    ThrottleLimits::DEFAULT.org_requests_per_minute,
                    1,
                    10_000_000,
                )?,
            },
            max_delegation_depth: number(
                &lookup,
                "AGENTIDP_MAX_DELEGATION_DEPTH",
                DEFAULT_MAX_DELEGATION_DEPTH,
                1,
                10,
            )?,
            // Blank is unset: `sam local` passes a template's `AWS::NoValue` as "".
            public_url: match lookup("AGENTIDP_PUBLIC_URL").filter(|url| !url.trim().is_empty()) {
                None => issuer.clone(),
                Some(url) => {
                    let url = url.trim_end_matches('/').to_owned();
                    if !(url.starts_with("https://") || url.starts_with("http://"))
                        || url::Url::parse(&url).is_err()
                    {
                        return Err(ConfigError::Malformed {
                            name: "AGENTIDP_PUBLIC_URL",
                            problem: "must be an http(s) URL".into(),
                        });
                    }
                    url
                }
            },
            dpop: DpopSettings {
                proof_max_age_seconds: number(
                    &lookup,
                    "AGENTIDP_DPOP_PROOF_MAX_AGE_SECONDS",
                    DEFAULT_DPOP_PROOF_MAX_AGE_SECONDS,
                    5,
                    600,
                )?,
                nonces: match lookup("AGENTIDP_DPOP_NONCES").as_deref().map(str::trim) {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(text) => {
                        return Err(ConfigError::Malformed {
                            name: "AGENTIDP_DPOP_NONCES",
                            problem: format!("`{text}` is not true or false"),
                        });
                    }
                },
            },
            key_fetch_network: match lookup("AGENTIDP_KEY_FETCH_NETWORK") {
                None => KeyFetchNetwork::Public,
                Some(text) => KeyFetchNetwork::parse(&text).ok_or(ConfigError::Malformed {
                    name: "AGENTIDP_KEY_FETCH_NETWORK",
                    problem: format!("`{text}` is not public or development"),
                })?,
            },
            issuer,
            audience,
        })
    }

    pub fn limits(&self, plan: crate::domain::Plan) -> PlanLimits {
        match plan {
            crate::domain::Plan::Free => self.free_limits,
            crate::domain::Plan::Enterprise => PlanLimits::ENTERPRISE,
        }
    }
}

fn number<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(text) = lookup(name) else {
        return Ok(default);
    };
    let value: T = text.trim().parse().map_err(|_| ConfigError::Malformed {
        name,
        problem: format!("`{text}` is not a number"),
    })?;
    if value < min || value > max {
        return Err(ConfigError::Malformed {
            name,
            problem: format!("{value} is outside {min}..={max}"),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn a_missing_issuer_is_named() {
        assert_eq!(
            Config::from_lookup(lookup(&[])),
            Err(ConfigError::Missing("AGENTIDP_ISSUER"))
        );
    }

    #[test]
    fn defaults_apply_when_only_the_issuer_is_given() {
        let config =
            Config::from_lookup(lookup(&[("AGENTIDP_ISSUER", "https://idp.example.com/")]))
                .unwrap();
        assert_eq!(config.issuer, "https://idp.example.com");
        assert_eq!(config.audience, config.issuer);
        assert_eq!(config.token_lifetime_seconds, 3600);
        assert_eq!(config.bcrypt_cost, 10);
        assert_eq!(config.signing_algorithm, SigningAlgorithm::RS256);
        assert_eq!(config.free_limits, PlanLimits::FREE_DEFAULT);
        assert_eq!(config.key_fetch_network, KeyFetchNetwork::Public);
        assert_eq!(config.public_url, config.issuer);
        assert_eq!(config.dpop.proof_max_age_seconds, 60);
        assert!(!config.dpop.nonces);
    }

    #[test]
    fn a_public_url_and_dpop_settings_are_read_and_a_bad_one_is_named() {
        let config = Config::from_lookup(lookup(&[
            ("AGENTIDP_ISSUER", "https://idp.example.com"),
            ("AGENTIDP_PUBLIC_URL", "https://api.example.com/idp/"),
            ("AGENTIDP_DPOP_PROOF_MAX_AGE_SECONDS", "30"),
            ("AGENTIDP_DPOP_NONCES", "true"),
        ]))
        .unwrap();
        assert_eq!(config.public_url, "https://api.example.com/idp");
        let blank = Config::from_lookup(lookup(&[
            ("AGENTIDP_ISSUER", "https://idp.example.com"),
            ("AGENTIDP_PUBLIC_URL", ""),
        ]))
        .unwrap();
        assert_eq!(
            blank.public_url, "https://idp.example.com",
            "blank is unset"
        );
        assert_eq!(config.dpop.proof_max_age_seconds, 30);
        assert!(config.dpop.nonces);
        for (name, value) in [
            ("AGENTIDP_PUBLIC_URL", "ftp://x"),
            ("AGENTIDP_DPOP_NONCES", "yes"),
            ("AGENTIDP_DPOP_PROOF_MAX_AGE_SECONDS", "3600"),
        ] {
            let err =
                Config::from_lookup(lookup(&[("AGENTIDP_ISSUER", "http://x"), (name, value)]))
                    .unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn a_malformed_number_is_named_with_its_value() {
        let err = Config::from_lookup(lookup(&[
            ("AGENTIDP_ISSUER", "http://x"),
            ("AGENTIDP_BCRYPT_COST", "ten"),
        ]))
        .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Malformed {
                    name: "AGENTIDP_BCRYPT_COST",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn an_out_of_range_cost_is_refused() {
        let err = Config::from_lookup(lookup(&[
            ("AGENTIDP_ISSUER", "http://x"),
            ("AGENTIDP_BCRYPT_COST", "3"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("AGENTIDP_BCRYPT_COST"));
    }

    #[test]
    fn free_plan_limits_are_configurable() {
        let config = Config::from_lookup(lookup(&[
            ("AGENTIDP_ISSUER", "http://x"),
            ("AGENTIDP_FREE_MAX_AGENTS", "3"),
        ]))
        .unwrap();
        assert_eq!(config.free_limits.max_agents, 3);
        let config = Config::from_lookup(lookup(&[
            ("AGENTIDP_ISSUER", "http://x"),
            ("AGENTIDP_FREE_MAX_RESOURCES", "2"),
        ]))
        .unwrap();
        assert_eq!(config.free_limits.max_resources, 2);
    }
}
