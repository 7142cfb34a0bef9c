//! OAuth 2.0: the client credentials grant (RFC 6749 §4.4), introspection (RFC 7662),
//! revocation (RFC 7009), and the bearer check of the management API.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::{
    Caller, EventDraft, Idp, LimitExceeded, ServiceError, ServiceResult, Unauthenticated, details,
};
use crate::domain::audit::RequestContext;
use crate::domain::time::usage_month;
use crate::domain::{Actor, Agent, AuditAction, Credential, Outcome, ResourceTarget, ScopeSet};

use crate::client_keys::{
    AssertionExpectations, AssertionRejection, ClientAssertion, ClientKeySet,
    FederatedExpectations, PublicKeys, VerifiedAssertion, VerifiedFederation,
};
use crate::domain::{CredentialProof, TrustedIssuer};
use crate::dpop::{DpopExpectations, DpopNonces, DpopProof, DpopRejection, VerifiedDpopProof};
use crate::secret::ClientSecret;
use crate::signing::{AccessTokenClaims, ActorClaim, Confirmation, TokenPolicy};
use crate::store::{
    AgentReader, Commit, CredentialReader, OrgReader, ResourceReader, RevocationReader,
    ThrottleReader, TrustedIssuerReader,
};
use crate::store::{Guard, StoreError, Write};

/// How the client presented its credentials: a secret (RFC 6749 §2.3.1) in the header or the
/// body, or a signed assertion (RFC 7523 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    Basic,
    Post,
    PrivateKeyJwt,
    /// No client authentication: the jwt-bearer grant's assertion from a trusted issuer.
    Federated,
}

impl ClientAuthMethod {
    /// Its name in the metadata's `token_endpoint_auth_methods_supported`, as audited.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::Basic => "client_secret_basic",
            ClientAuthMethod::Post => "client_secret_post",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
            ClientAuthMethod::Federated => "federated",
        }
    }
}

/// What the client presented to prove who it is.
#[derive(Debug)]
pub enum ClientProofPresented {
    Secret(ClientSecret),
    Assertion(ClientAssertion),
    /// A token a trusted issuer gave the workload (RFC 7523 §2.1 `assertion`).
    Federated(ClientAssertion),
}

#[derive(Debug)]
pub struct ClientAuthentication {
    pub client_id: String,
    pub presented: ClientProofPresented,
    pub method: ClientAuthMethod,
}

/// Clock skew allowed between a client's clock and ours on an assertion's times.
const ASSERTION_LEEWAY_SECONDS: i64 = 30;

pub use super::oauth_error::OAuthError;

/// How many clients' organizations an instance keeps: about 5 MB at most.
const KNOWN_CLIENT_ORGS: usize = 65_536;

#[derive(Debug)]
pub struct TokenGrant {
    pub access_token: String,
    pub expires_in: i64,
    pub scope: String,
    /// `DPoP` for a token bound to a key (RFC 9449 §5), else `Bearer`.
    pub token_type: &'static str,
    /// A fresh server nonce, when proofs must carry one: the client's next proof uses it.
    pub dpop_nonce: Option<String>,
}

/// The token endpoint's path: what a proof sent there names in `htu`, after the public URL.
pub const TOKEN_ENDPOINT_PATH: &str = "/api/v1/token";

/// How an access token was presented (RFC 6750 §2.1, RFC 9449 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScheme {
    Bearer,
    Dpop,
}

/// An access token as a request presents it: the scheme, the DPoP proof beside it if any, and
/// the request the proof must name.
pub struct PresentedToken {
    pub token: String,
    pub scheme: TokenScheme,
    pub proof: Option<DpopProof>,
    pub method: String,
    /// The request's path, which follows the public URL in the proof's `htu`.
    pub path: String,
}

/// The token is a credential for as long as it lives: never in `Debug` output.
impl std::fmt::Debug for PresentedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedToken")
            .field("token", &"[redacted]")
            .field("scheme", &self.scheme)
            .field("proof", &self.proof)
            .field("method", &self.method)
            .field("path", &self.path)
            .finish()
    }
}

/// A client that proved who it is: its credential, its organization's claim of the requested
/// resource (if any), and how it proved it.
#[derive(Debug)]
struct Authenticated {
    credential: Credential,
    target: Option<ResourceTarget>,
    proof: Proof,
}

/// What a client proved itself with, beyond a secret: what the audit trail records of it.
#[derive(Debug)]
enum Proof {
    Secret,
    /// Its single use is still to be recorded.
    Assertion(VerifiedAssertion),
    Federation(VerifiedFederation),
}

impl Proof {
    fn audit_details(&self) -> Vec<(&'static str, serde_json::Value)> {
        match self {
            Proof::Secret => Vec::new(),
            Proof::Assertion(assertion) => vec![("keyId", json!(assertion.key_id))],
            Proof::Federation(federation) => vec![
                ("issuer", json!(federation.issuer)),
                ("externalSubject", json!(federation.subject)),
                ("keyId", json!(federation.key_id)),
            ],
        }
    }

    fn assertion(&self) -> Option<&VerifiedAssertion> {
        match self {
            Proof::Assertion(assertion) => Some(assertion),
            Proof::Secret | Proof::Federation(_) => None,
        }
    }
}

/// Who asks for a token, what for, and what it may have: what every grant hands [`Idp::grant`].
struct GrantBasis {
    /// The client that asked.
    credential: Credential,
    target: Option<ResourceTarget>,
    proof: Proof,
    method: ClientAuthMethod,
    /// The scopes the token may carry at most.
    allowed: ScopeSet,
    /// For a token exchanged for another agent (RFC 8693): whose it is, and the chain.
    delegation: Option<Delegated>,
    /// The DPoP proof the token is to be bound to; its single use commits with the token.
    binding: Option<VerifiedDpopProof>,
    /// Whether the token must be bound: a request without a proof is refused.
    binding_required: bool,
}

/// A delegated token's subject and chain, from its subject and actor tokens.
#[derive(Debug, Clone)]
struct Delegated {
    subject: Uuid,
    act: ActorClaim,
    may_act: Option<serde_json::Value>,
    chain_jtis: Vec<String>,
    chain_iat: i64,
    /// The subject token's `exp`: the delegated token never outlives it.
    not_after: i64,
    subject_token_id: String,
}

impl Delegated {
    /// What a `token.issued` event records of the delegation: the root subject (the token's own
    /// subject: it never changes along a chain), the actors (nearest first), and the token it
    /// was exchanged from.
    fn audit_details(&self) -> serde_json::Map<String, serde_json::Value> {
        let actors: Vec<&str> = self.act.chain().iter().map(|a| a.sub.as_str()).collect();
        details([
            ("grantType", json!(TOKEN_EXCHANGE_GRANT)),
            ("rootSubject", json!(self.subject)),
            ("actorChain", json!(actors)),
            ("subjectTokenId", json!(self.subject_token_id)),
        ])
    }
}

/// What a refused token exchange is told: not which check failed.
const EXCHANGE_REFUSED: &str =
    "the subject token, or this client acting for its subject, is not accepted";

/// The keys an assertion is checked with: the credential's own, borrowed (no copy on the token
/// endpoint's path), or a published set from the fetcher's cache.
enum KeysInHand<'a> {
    Held(&'a ClientKeySet),
    Fetched(Arc<ClientKeySet>),
}

impl std::ops::Deref for KeysInHand<'_> {
    type Target = ClientKeySet;

    fn deref(&self) -> &ClientKeySet {
        match self {
            KeysInHand::Held(set) => set,
            KeysInHand::Fetched(set) => set,
        }
    }
}

/// RFC 8693's grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// The parameters of a token exchange (RFC 8693 §2.1) beyond the client's authentication.
#[derive(Debug)]
pub struct ExchangeRequest<'a> {
    pub subject_token: &'a str,
    pub actor_token: Option<&'a str>,
    pub scope: Option<&'a str>,
    /// A normalised resource identifier (`resource` or `audience`).
    pub resource: Option<&'a str>,
}

/// The `may_act` claim (RFC 8693 §4.4) of the agents a delegation policy names: one object per
/// agent that may act, as an object when it is one.
fn may_act_claim(may_act: &[Uuid]) -> Option<serde_json::Value> {
    let parties: Vec<serde_json::Value> = may_act
        .iter()
        .map(|agent| json!({ "sub": agent }))
        .collect();
    match parties.len() {
        0 => None,
        1 => parties.into_iter().next(),
        _ => Some(serde_json::Value::Array(parties)),
    }
}

/// What introspection reports for an active token.
#[derive(Debug, Clone)]
pub struct ActiveToken {
    pub claims: AccessTokenClaims,
    pub org_id: Uuid,
    pub agent_id: Uuid,
    pub client_id: Option<Uuid>,
    /// The agent's scopes now, which may be fewer than when the token was issued.
    pub agent_scopes: ScopeSet,
    /// The subject agent's record, as read with the token's standing.
    pub subject: Agent,
}

/// Which tokens a check accepts: the management API only its own (a token for a resource must
/// never work there), introspection and revocation any of the organization's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAudience {
    ManagementApi,
    Any,
}

impl ActiveToken {
    /// What the token may do now: the scopes it was issued with that the agent still holds. A
    /// scope taken from the agent stops working at once, not when the token expires; the token
    /// never grants more than it was issued with.
    pub fn honoured_scopes(&self) -> ScopeSet {
        ScopeSet::parse(&self.claims.scope).intersection(&self.agent_scopes)
    }
}

/// How an introspection or revocation caller proves who it is.
#[derive(Debug)]
pub enum EndpointAuth {
    Client(ClientAuthentication),
    Token(PresentedToken),
}

/// Why a client authentication failed, for the audit trail. The client is never told.
#[derive(Debug, Clone, Copy)]
enum Denial {
    UnknownClient,
    WrongSecret,
    /// An assertion for a credential with a secret, a secret for one with keys, and so on.
    WrongMethod,
    Assertion(AssertionRejection),
    /// The keys to check an assertion with could not be fetched (the audit reason).
    KeysUnavailable(&'static str),
    CredentialRevoked,
    CredentialExpired,
    AgentNotActive,
}

/// Why a client authentication was refused, as far as the caller is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientRefusal {
    Denied,
    /// A jwt-bearer grant's assertion failed (RFC 7523 §3.1: `invalid_grant`).
    GrantRefused,
    Locked {
        retry_after: u64,
    },
}

impl ClientRefusal {
    fn into_oauth(self, basic: bool) -> OAuthError {
        match self {
            ClientRefusal::Denied => OAuthError::InvalidClient { basic },
            ClientRefusal::GrantRefused => {
                OAuthError::InvalidGrant("the assertion is not valid for this client")
            }
            ClientRefusal::Locked { retry_after } => OAuthError::RateLimited { retry_after },
        }
    }
}

impl Denial {
    fn is_guess(self) -> bool {
        matches!(
            self,
            Denial::UnknownClient
                | Denial::WrongSecret
                | Denial::WrongMethod
                | Denial::Assertion(_)
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            Denial::UnknownClient => "unknown_client",
            Denial::WrongSecret => "invalid_client_secret",
            Denial::WrongMethod => "authentication_method_not_allowed",
            Denial::Assertion(rejection) => rejection.as_str(),
            Denial::KeysUnavailable(reason) => reason,
            Denial::CredentialRevoked => "credential_revoked",
            Denial::CredentialExpired => "credential_expired",
            Denial::AgentNotActive => "agent_not_active",
        }
    }
}

/// The write that records an assertion's single use. The record outlives the last instant the
/// assertion is accepted (its `exp` plus the skew allowed), or a replay in between would find
/// it purged.
fn used_assertion(credential: &Credential, used: &VerifiedAssertion) -> Write {
    Write::UseClientAssertion {
        client_id: credential.client_id,
        jti: used.jti.clone(),
        expires_at: used.expires_at + chrono::Duration::seconds(ASSERTION_LEEWAY_SECONDS + 60),
    }
}

impl<
    S: OrgReader
        + AgentReader
        + CredentialReader
        + ResourceReader
        + TrustedIssuerReader
        + RevocationReader
        + ThrottleReader
        + Commit
        + ?Sized
        + 'static,
> Idp<S>
{
    pub fn token_policy(&self) -> TokenPolicy {
        TokenPolicy {
            issuer: self.config.issuer.clone(),
            audience: self.config.audience.clone(),
            lifetime_seconds: self.config.token_lifetime_seconds,
        }
    }

    /// The issuer of an organization's resource tokens, if the organization exists: what its
    /// discovery documents name, and so what its resource servers are configured with.
    pub async fn organization_issuer(&self, org_id: Uuid) -> ServiceResult<Option<String>> {
        let org = self.store.get_org(org_id).await?;
        Ok(org.map(|org| {
            self.token_policy()
                .organization_issuer(&org.org_id.to_string())
        }))
    }

    /// Whether this instance has verified exactly this secret for this credential: a check
    /// that costs no bcrypt and tells a caller nothing it did not know.
    fn secret_recently_verified(
        &self,
        secret: &ClientSecret,
        credential: Option<&Credential>,
    ) -> bool {
        credential.is_some_and(|c| {
            c.proof
                .secret_hash()
                .is_some_and(|hash| self.hasher.recently_verified(c.credential_id, secret, hash))
        })
    }

    /// Runs bcrypt off the async workers: it takes tens of milliseconds by design.
    async fn secret_matches(
        self: &Arc<Self>,
        client_id: &str,
        secret: &ClientSecret,
        credential: Option<&Credential>,
    ) -> ServiceResult<bool> {
        let key = self.hasher.verification_key(
            client_id,
            credential.and_then(|c| c.proof.secret_hash()),
            secret,
        );
        let verify = || {
            let idp = self.clone();
            let presented = ClientSecret::presented(secret.expose().to_owned());
            let stored =
                credential.and_then(|c| Some((c.credential_id, c.proof.secret_hash()?.to_owned())));
            async move {
                tokio::task::spawn_blocking(move || match stored {
                    Some((id, hash)) => idp.hasher.verify_and_remember(id, &presented, &hash),
                    None => idp.hasher.verify_against_dummy(&presented),
                })
                .await
                .map_err(|e| ServiceError::internal("the verification task failed", e))
            }
        };
        self.hasher.in_flight.share(key, verify).await
    }

    /// Checks a client's credentials. An unknown client costs one bcrypt verification against a
    /// dummy hash, the same as a known client with a wrong secret. With `resource` (a normalised
    /// identifier), an authenticated client also gets its organization's claim of it, if there
    /// is one: read with the credential when this instance knows the client's organization,
    /// else in a second read.
    async fn authenticate_client(
        self: &Arc<Self>,
        auth: &ClientAuthentication,
        context: &RequestContext,
        resource: Option<&str>,
    ) -> ServiceResult<Result<Authenticated, ClientRefusal>> {
        let client_id = Uuid::parse_str(&auth.client_id).ok();
        let counters = self.auth_counters(&auth.client_id, context.source_ip.as_deref());
        let known_org = client_id.and_then(|id| self.known_client_org(id));
        let joined = resource
            .zip(known_org)
            .map(|(identifier, org)| (org, identifier));
        let (credential, lock, joined_target) =
            self.client_standing(client_id, &counters, joined).await?;
        let now = self.now();
        // An assertion costs one signature check, no bcrypt: checked before any lockout.
        let assertion_checked = match (&auth.presented, &credential) {
            (ClientProofPresented::Secret(_), _) => None,
            (ClientProofPresented::Assertion(_) | ClientProofPresented::Federated(_), None) => {
                Some(Err(Denial::UnknownClient))
            }
            (ClientProofPresented::Assertion(assertion), Some(c)) => {
                Some(self.check_assertion(c, assertion, now).await)
            }
            (ClientProofPresented::Federated(token), Some(c)) => {
                Some(self.check_federated(c, token, now).await?)
            }
        };
        // A secret this instance has verified, or a valid assertion, passes every lockout:
        // lockouts stop bcrypt from being spent on guesses, and these cost none; refusing them
        // would only let whoever knows the (public) client id lock the client out.
        let verified = match &auth.presented {
            ClientProofPresented::Secret(secret) => {
                self.secret_recently_verified(secret, credential.as_ref())
            }
            ClientProofPresented::Assertion(_) | ClientProofPresented::Federated(_) => {
                matches!(assertion_checked, Some(Ok(_)))
            }
        };
        if let Some(lock) = lock.filter(|_| !verified) {
            // A refusal costs a read, never bcrypt. Only the first of a window writes: its audit
            // event, and a tally so the next refusal knows it is not the first.
            if let (true, Some(reason), Some(credential)) =
                (lock.first, lock.kind.audit_reason(), credential.as_ref())
            {
                let until = crate::domain::time::format_timestamp(&lock.until);
                let event = self
                    .denial_event(
                        credential,
                        auth.method,
                        reason,
                        context,
                        [
                            ("lockedUntil", json!(until)),
                            ("failures", json!(lock.limit)),
                        ],
                    )
                    .await?;
                self.store
                    .commit(vec![lock.first_refusal(), Write::Audit(event)])
                    .await?;
            }
            return Ok(Err(ClientRefusal::Locked {
                retry_after: lock.retry_after,
            }));
        }
        let proved = match (&auth.presented, assertion_checked) {
            (_, Some(checked)) => checked,
            (ClientProofPresented::Secret(secret), None) => {
                let matches = verified
                    || self
                        .secret_matches(&auth.client_id, secret, credential.as_ref())
                        .await?;
                match credential.as_ref().map(|c| &c.proof) {
                    // A credential without a secret has no hash: bcrypt ran against the dummy.
                    Some(CredentialProof::PublicKeys(_) | CredentialProof::Federated(_)) => {
                        Err(Denial::WrongMethod)
                    }
                    _ if matches => Ok(Proof::Secret),
                    _ => Err(Denial::WrongSecret),
                }
            }
            (ClientProofPresented::Assertion(_) | ClientProofPresented::Federated(_), None) => {
                return Err(ServiceError::broken("an assertion was not checked"));
            }
        };
        let denial = match (&credential, &proved) {
            (None, _) => Some(Denial::UnknownClient),
            (Some(_), Err(denial)) => Some(*denial),
            (Some(c), _) if c.status == crate::domain::CredentialStatus::Revoked => {
                Some(Denial::CredentialRevoked)
            }
            (Some(c), _) if c.is_expired_at(now) => Some(Denial::CredentialExpired),
            (Some(c), _) if !c.agent_status.may_obtain_tokens() => Some(Denial::AgentNotActive),
            (Some(_), Ok(_)) => None,
        };
        let denial = match (denial, credential) {
            (None, Some(credential)) => {
                self.remember_client_org(&credential);
                let target = match resource {
                    None => None,
                    Some(_) if joined.is_some_and(|(org, _)| org == credential.org_id) => {
                        joined_target
                    }
                    Some(identifier) => {
                        self.store
                            .resource_by_identifier(credential.org_id, identifier)
                            .await?
                    }
                };
                let proof = proved
                    .map_err(|_| ServiceError::broken("a denied client passed authentication"))?;
                return Ok(Ok(Authenticated {
                    credential,
                    target,
                    proof,
                }));
            }
            (None, None) => {
                return Err(ServiceError::broken(
                    "a client without a credential passed authentication",
                ));
            }
            (Some(denial), credential) => (denial, credential),
        };
        let (denial, credential) = denial;
        // Guesses count towards a lockout; a right secret for a credential that may not be
        // used is no guess.
        let mut writes = if denial.is_guess() {
            counters.tallies()
        } else {
            Vec::new()
        };
        match credential {
            Some(credential) => writes.push(Write::Audit(
                self.denial_event(&credential, auth.method, denial.as_str(), context, [])
                    .await?,
            )),
            // No organization to file it under: an unknown client id goes to the log only.
            None => tracing::info!(reason = denial.as_str(), "client authentication denied"),
        }
        self.store.commit(writes).await?;
        // RFC 7523 §3.1: a jwt-bearer grant whose assertion fails is `invalid_grant`; a client
        // that is unknown, revoked or not allowed this grant is `invalid_client` as elsewhere.
        let grant_refused = auth.method == ClientAuthMethod::Federated
            && matches!(denial, Denial::Assertion(_) | Denial::KeysUnavailable(_));
        Ok(Err(if grant_refused {
            ClientRefusal::GrantRefused
        } else {
            ClientRefusal::Denied
        }))
    }

    /// The key set to check an assertion with: the one held, or the one published at the URL,
    /// fetched or from the cache; `wanted_key` is the kid the assertion names.
    async fn key_set_of<'a>(
        &self,
        keys: &'a PublicKeys,
        wanted_key: Option<&str>,
    ) -> Result<KeysInHand<'a>, Denial> {
        match keys {
            PublicKeys::Inline(set) => Ok(KeysInHand::Held(set)),
            PublicKeys::Published(uri) => {
                self.remote_keys
                    .key_set(uri, wanted_key)
                    .await
                    .map(KeysInHand::Fetched)
                    .map_err(|e| {
                        tracing::warn!(jwks_uri = %uri, error = %e, "a published key set could not be had");
                        Denial::KeysUnavailable(e.as_str())
                    })
            }
        }
    }

    /// An assertion's signature and claims against the credential's keys. Its `jti` is not
    /// checked here: its single use is a condition of the write that issues the token.
    async fn check_assertion(
        &self,
        credential: &Credential,
        assertion: &ClientAssertion,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Proof, Denial> {
        let CredentialProof::PublicKeys(keys) = &credential.proof else {
            return Err(Denial::WrongMethod);
        };
        let issuer = &self.config.issuer;
        // RFC 7523 §3: the authorization server's identity or the endpoint's URL. The
        // organization's own issuer too, which a client that discovered it there names.
        let public_url = &self.config.public_url;
        let audiences = [
            issuer.clone(),
            format!("{issuer}/api/v1/token"),
            format!("{public_url}/api/v1/token"),
            format!("{issuer}/api/v1/token/introspect"),
            format!("{issuer}/api/v1/token/revoke"),
            self.token_policy()
                .organization_issuer(&credential.org_id.to_string()),
        ];
        let expected = AssertionExpectations {
            client_id: &credential.client_id.to_string(),
            audiences: &audiences,
            max_lifetime_seconds: self.config.client_assertion_max_lifetime_seconds,
            leeway_seconds: ASSERTION_LEEWAY_SECONDS,
        };
        let kid = assertion.precheck().map_err(Denial::Assertion)?;
        let keys = self.key_set_of(keys, kid.as_deref()).await?;
        keys.verify_assertion(assertion, &expected, now)
            .map(Proof::Assertion)
            .map_err(Denial::Assertion)
    }

    /// A trusted issuer's token for a federated credential: the issuer must still be trusted
    /// by the credential's organization, and the token signed by its keys, for its audience,
    /// about the credential's subject, and unexpired. One read more than a secret: the issuer.
    async fn check_federated(
        &self,
        credential: &Credential,
        token: &ClientAssertion,
        now: chrono::DateTime<chrono::Utc>,
    ) -> ServiceResult<Result<Proof, Denial>> {
        let Some(identity) = credential.proof.federated() else {
            return Ok(Err(Denial::WrongMethod));
        };
        let kid = match token.precheck() {
            Ok(kid) => kid,
            Err(rejection) => return Ok(Err(Denial::Assertion(rejection))),
        };
        let issuer_id = TrustedIssuer::id_for(credential.org_id, &identity.issuer);
        let Some(trusted) = self
            .store
            .get_trusted_issuer(credential.org_id, issuer_id)
            .await?
        else {
            return Ok(Err(Denial::Assertion(AssertionRejection::UntrustedIssuer)));
        };
        let keys = match self.key_set_of(&trusted.keys, kid.as_deref()).await {
            Ok(keys) => keys,
            Err(denial) => return Ok(Err(denial)),
        };
        let expected = FederatedExpectations {
            issuer: &trusted.issuer,
            audience: &trusted.audience,
            subject: &identity.subject,
            leeway_seconds: ASSERTION_LEEWAY_SECONDS,
        };
        Ok(keys
            .verify_federated(token, &expected, now)
            .map(Proof::Federation)
            .map_err(Denial::Assertion))
    }

    /// The DPoP nonces, when proofs at the token endpoint must carry one.
    async fn required_nonces(&self) -> Result<Option<DpopNonces>, OAuthError> {
        if !self.config.dpop.nonces {
            return Ok(None);
        }
        Ok(Some(
            self.keys
                .keys()
                .await
                .map_err(OAuthError::from)?
                .dpop_nonces(),
        ))
    }

    /// A nonce for the client's next proof, when proofs must carry one.
    async fn fresh_dpop_nonce(&self) -> Result<Option<String>, OAuthError> {
        Ok(self
            .required_nonces()
            .await?
            .and_then(|nonces| nonces.issue(self.now())))
    }

    /// A token request's DPoP proof, checked before the client authenticates: it costs no read
    /// and no bcrypt, so a proof that fails, or lacks the server's nonce, is answered without
    /// either. Not audited, as a malformed parameter is not: no client is known yet.
    async fn token_request_proof(
        &self,
        dpop: Option<&DpopProof>,
    ) -> Result<Option<VerifiedDpopProof>, OAuthError> {
        let Some(proof) = dpop else {
            return Ok(None);
        };
        let nonces = self.required_nonces().await?;
        let url = format!("{}{TOKEN_ENDPOINT_PATH}", self.config.public_url);
        let expected = DpopExpectations {
            method: "POST",
            url: &url,
            access_token: None,
            max_age_seconds: self.config.dpop.proof_max_age_seconds,
            nonces: nonces.as_ref(),
        };
        let now = self.now();
        proof.verify(&expected, now).map(Some).map_err(|rejection| {
            tracing::info!(
                reason = rejection.as_str(),
                "a DPoP proof was refused at the token endpoint"
            );
            match (rejection, nonces.as_ref().and_then(|n| n.issue(now))) {
                (DpopRejection::NonceRequired, Some(nonce)) => OAuthError::UseDpopNonce { nonce },
                _ => OAuthError::InvalidDpopProof(rejection.to_string()),
            }
        })
    }

    /// The write that records a proof's single use, until it is too old to be accepted anyway.
    fn used_dpop_proof(&self, used: &VerifiedDpopProof) -> Write {
        Write::UseDpopProof {
            key_thumbprint: used.thumbprint.clone(),
            jti: used.jti.clone(),
            expires_at: used.replay_window_end(self.config.dpop.proof_max_age_seconds),
        }
    }

    /// A replayed assertion is a failed authentication like a wrong secret: audited, and
    /// counted towards the client's lockout.
    async fn refuse_replayed_assertion(
        &self,
        credential: &Credential,
        context: &RequestContext,
    ) -> ServiceResult<()> {
        let counters = self.auth_counters(
            &credential.client_id.to_string(),
            context.source_ip.as_deref(),
        );
        let mut writes = counters.tallies();
        writes.push(Write::Audit(
            self.denial_event(
                credential,
                ClientAuthMethod::PrivateKeyJwt,
                "assertion_replayed",
                context,
                [],
            )
            .await?,
        ));
        self.store.commit(writes).await?;
        Ok(())
    }

    fn known_client_org(&self, client_id: Uuid) -> Option<Uuid> {
        self.client_orgs
            .lock()
            .ok()
            .and_then(|orgs| orgs.get(&client_id).copied())
    }

    fn remember_client_org(&self, credential: &Credential) {
        if let Ok(mut orgs) = self.client_orgs.lock() {
            // Bounded: a fresh start costs each client one extra read on its next resource.
            if orgs.len() >= KNOWN_CLIENT_ORGS {
                orgs.clear();
            }
            orgs.insert(credential.client_id, credential.org_id);
        }
    }

    /// A `token.denied` event: why, for which client, and how it authenticated.
    async fn denial_event<const N: usize>(
        &self,
        credential: &Credential,
        method: ClientAuthMethod,
        reason: &str,
        context: &RequestContext,
        extra: [(&str, serde_json::Value); N],
    ) -> ServiceResult<crate::domain::AuditEvent> {
        let limits = self.limits(credential.org_id).await?;
        let mut detail = details([
            ("reason", json!(reason)),
            ("clientId", json!(credential.client_id)),
            ("clientAuthMethod", json!(method.as_str())),
        ]);
        for (k, v) in extra {
            detail.insert(k.to_owned(), v);
        }
        Ok(EventDraft {
            org_id: credential.org_id,
            action: AuditAction::TokenDenied,
            outcome: Outcome::Failure,
            actor: Actor::client(Some(credential.client_id)),
            subject_agent_id: Some(credential.agent_id),
            resource: format!("credential/{}", credential.credential_id),
            details: detail,
        }
        .at(self.now(), &limits, context))
    }

    async fn audit_denial<const N: usize>(
        &self,
        credential: &Credential,
        method: ClientAuthMethod,
        reason: &str,
        context: &RequestContext,
        extra: [(&str, serde_json::Value); N],
    ) -> ServiceResult<()> {
        let event = self
            .denial_event(credential, method, reason, context, extra)
            .await?;
        self.store.commit(vec![Write::Audit(event)]).await?;
        Ok(())
    }

    /// Who asks for a token, and the key it is to be bound to: the DPoP proof first (no read,
    /// no bcrypt), then the client's authentication, as every grant with a client does.
    async fn token_requester(
        self: &Arc<Self>,
        auth: &ClientAuthentication,
        resource: Option<&str>,
        dpop: Option<&DpopProof>,
        context: &RequestContext,
    ) -> Result<(Authenticated, Option<VerifiedDpopProof>), OAuthError> {
        let binding = self.token_request_proof(dpop).await?;
        match self.authenticate_client(auth, context, resource).await? {
            Ok(authenticated) => Ok((authenticated, binding)),
            Err(refusal) => Err(refusal.into_oauth(auth.method == ClientAuthMethod::Basic)),
        }
    }

    /// `POST /token`, grant type `client_credentials`. With `resource` (a normalised identifier,
    /// RFC 8707), the token is for that resource of the client's organization: its `aud` is the
    /// identifier and its scopes are those granted that the resource has (none of them
    /// management scopes). Without, it is for the management API, as before resources existed.
    pub async fn issue_token(
        self: &Arc<Self>,
        auth: ClientAuthentication,
        requested_scope: Option<&str>,
        resource: Option<&str>,
        dpop: Option<&DpopProof>,
        context: &RequestContext,
    ) -> Result<TokenGrant, OAuthError> {
        let (
            Authenticated {
                credential,
                target,
                proof,
            },
            binding,
        ) = self.token_requester(&auth, resource, dpop, context).await?;
        // The credential carries the agent's status (checked above) and scopes, kept in step on
        // every change of the agent, so the agent record need not be read here.
        let allowed = ScopeSet::from_list(credential.agent_scopes.iter().cloned());
        let binding_required = credential.agent_requires_dpop;
        let basis = GrantBasis {
            credential,
            target,
            proof,
            method: auth.method,
            allowed,
            delegation: None,
            binding,
            binding_required,
        };
        self.grant(basis, requested_scope, resource, context).await
    }

    /// `POST /token`, grant type token-exchange (RFC 8693): the authenticated client's agent,
    /// the actor, gets a token of the subject token's agent with itself in `act`, if the
    /// subject's delegation policy names it. The token's scopes are within the subject token's
    /// (as honoured now) and the policy's; it never outlives the subject token; revoking any
    /// token it came from, or a kill switch or suspension of any agent of its chain, stops it.
    pub async fn exchange_token(
        self: &Arc<Self>,
        auth: ClientAuthentication,
        request: ExchangeRequest<'_>,
        dpop: Option<&DpopProof>,
        context: &RequestContext,
    ) -> Result<TokenGrant, OAuthError> {
        let (
            Authenticated {
                credential,
                target,
                proof,
            },
            binding,
        ) = self
            .token_requester(&auth, request.resource, dpop, context)
            .await?;
        let actor = credential.agent_id;
        let org_id = credential.org_id;
        let subject = self
            .active_token(request.subject_token, TokenAudience::Any)
            .await?
            .filter(|t| t.org_id == org_id);
        let Some(subject) = subject else {
            self.audit_denial(
                &credential,
                auth.method,
                "subject_token_invalid",
                context,
                [],
            )
            .await?;
            return Err(OAuthError::InvalidGrant(EXCHANGE_REFUSED));
        };
        let actor_token = match request.actor_token {
            None => None,
            Some(token) => {
                let own = self
                    .active_token(token, TokenAudience::Any)
                    .await?
                    .filter(|t| {
                        t.org_id == org_id && t.agent_id == actor && t.claims.act.is_none()
                    });
                if own.is_none() {
                    self.audit_denial(&credential, auth.method, "actor_token_invalid", context, [])
                        .await?;
                    return Err(OAuthError::InvalidGrant(EXCHANGE_REFUSED));
                }
                own
            }
        };
        let Some(policy) = subject
            .subject
            .delegation
            .as_ref()
            .filter(|policy| policy.permits(actor))
        else {
            self.audit_denial(
                &credential,
                auth.method,
                "actor_not_allowed",
                context,
                [("subjectAgentId", json!(subject.agent_id))],
            )
            .await?;
            return Err(OAuthError::InvalidGrant(EXCHANGE_REFUSED));
        };
        let depth = subject.claims.delegation_depth() + 1;
        if depth > self.config.max_delegation_depth {
            self.audit_denial(
                &credential,
                auth.method,
                "delegation_too_deep",
                context,
                [("depth", json!(depth))],
            )
            .await?;
            return Err(OAuthError::InvalidRequest(format!(
                "the chain of actors would be {depth} long; at most {} are allowed",
                self.config.max_delegation_depth
            )));
        }
        let mut allowed = subject.honoured_scopes();
        if let Some(scopes) = &policy.scopes {
            allowed = allowed.intersection(&ScopeSet::from_list(scopes.iter().cloned()));
        }
        let mut chain_jtis: Vec<String> = subject.claims.chain_token_ids();
        let mut actor_start = self.now().timestamp();
        if let Some(own) = &actor_token {
            chain_jtis.extend(own.claims.chain_token_ids());
            actor_start = actor_start.min(own.claims.origin_iat());
        }
        let chain_iat = subject.claims.origin_iat();
        let delegation = Delegated {
            subject: subject.agent_id,
            act: ActorClaim {
                sub: actor.to_string(),
                client_id: credential.client_id.to_string(),
                iat: Some(actor_start),
                act: subject.claims.act.clone().map(Box::new),
            },
            may_act: may_act_claim(&policy.may_act),
            chain_jtis,
            chain_iat,
            not_after: subject.claims.exp,
            subject_token_id: subject.claims.jti.clone(),
        };
        // A binding is never dropped along a chain: a bound subject or actor token, or an agent
        // of the exchange whose tokens must be bound, makes the new token need a proof too. It
        // is bound to the actor's key, the one whose holder presents it (RFC 9449 §6).
        let binding_required = credential.agent_requires_dpop
            || subject.subject.require_dpop
            || subject.claims.cnf.is_some()
            || actor_token
                .as_ref()
                .is_some_and(|own| own.claims.cnf.is_some());
        let basis = GrantBasis {
            credential,
            target,
            proof,
            method: auth.method,
            allowed,
            delegation: Some(delegation),
            binding,
            binding_required,
        };
        self.grant(basis, request.scope, request.resource, context)
            .await
    }

    /// What every grant does once it knows who asks and for whom: the scope asked for against
    /// what is allowed, the resource, the claims, and the commit of the count and the event
    /// with the signature.
    async fn grant(
        self: &Arc<Self>,
        basis: GrantBasis,
        requested_scope: Option<&str>,
        resource: Option<&str>,
        context: &RequestContext,
    ) -> Result<TokenGrant, OAuthError> {
        let GrantBasis {
            credential,
            target,
            proof,
            method,
            allowed,
            delegation,
            binding,
            binding_required,
        } = basis;
        let basic = method == ClientAuthMethod::Basic;
        if binding_required && binding.is_none() {
            self.audit_denial(&credential, method, "dpop_required", context, [])
                .await?;
            return Err(OAuthError::InvalidDpopProof(
                "this token must be DPoP-bound: send a DPoP proof with the request".into(),
            ));
        }
        let granted = match requested_scope {
            None => allowed,
            Some(text) => {
                let requested = ScopeSet::parse(text);
                if !requested.is_subset_of(&allowed) {
                    self.audit_denial(
                        &credential,
                        method,
                        "scope_not_allowed",
                        context,
                        [("requestedScope", json!(requested.to_string()))],
                    )
                    .await?;
                    return Err(OAuthError::InvalidScope(
                        if delegation.is_some() {
                            "the requested scope exceeds what the subject token and its \
                             delegation policy allow"
                        } else {
                            "the requested scope exceeds the scopes registered for this agent"
                        }
                        .into(),
                    ));
                }
                requested
            }
        };
        let (audience, granted) = match (resource, target) {
            (None, _) => (self.config.audience.clone(), granted),
            (Some(identifier), None) => {
                self.audit_denial(
                    &credential,
                    method,
                    "resource_not_registered",
                    context,
                    [("resource", json!(identifier))],
                )
                .await?;
                return Err(OAuthError::InvalidTarget(
                    "the resource is not one registered in the client's organization".into(),
                ));
            }
            (Some(_), Some(target)) => {
                let resource_scopes = ScopeSet::from_list(target.scopes.iter().cloned());
                let narrowed = granted.intersection(&resource_scopes);
                // A resource with no scopes takes tokens that only say who they are for.
                if narrowed.is_empty() && !resource_scopes.is_empty() {
                    self.audit_denial(
                        &credential,
                        method,
                        "scope_not_allowed",
                        context,
                        [
                            ("requestedScope", json!(granted.to_string())),
                            ("resource", json!(target.identifier)),
                        ],
                    )
                    .await?;
                    return Err(OAuthError::InvalidScope(
                        "none of the scopes granted is one the resource accepts".into(),
                    ));
                }
                (target.identifier, narrowed)
            }
        };
        let limits = self.limits(credential.org_id).await?;
        let now = self.now();
        let policy = self.token_policy();
        let org_id = credential.org_id.to_string();
        let mut claims = AccessTokenClaims {
            iss: policy.issuer_for(&audience, &org_id),
            sub: credential.agent_id.to_string(),
            aud: audience,
            exp: now.timestamp() + policy.lifetime_seconds,
            iat: now.timestamp(),
            nbf: now.timestamp(),
            jti: Uuid::new_v4().to_string(),
            client_id: credential.client_id.to_string(),
            scope: granted.to_string(),
            org_id,
            act: None,
            may_act: None,
            chain_jtis: Vec::new(),
            chain_iat: None,
            cnf: binding.as_ref().map(|proof| Confirmation {
                jkt: proof.thumbprint.clone(),
            }),
        };
        let subject_agent = match &delegation {
            None => {
                claims.may_act = may_act_claim(&credential.agent_may_act);
                credential.agent_id
            }
            Some(delegated) => {
                claims.sub = delegated.subject.to_string();
                // Never outlives the token it was exchanged from; one expiring this very
                // second leaves nothing to issue.
                claims.exp = claims.exp.min(delegated.not_after);
                if claims.exp <= claims.iat {
                    self.audit_denial(&credential, method, "subject_token_invalid", context, [])
                        .await?;
                    return Err(OAuthError::InvalidGrant(EXCHANGE_REFUSED));
                }
                claims.act = Some(delegated.act.clone());
                claims.may_act = delegated.may_act.clone();
                claims.chain_jtis = delegated.chain_jtis.clone();
                claims.chain_iat = Some(delegated.chain_iat);
                delegated.subject
            }
        };
        let expires_in = claims.exp - claims.iat;
        let keys = self.keys.keys().await.map_err(OAuthError::from)?;
        let month = usage_month(&now);
        let event = EventDraft {
            org_id: credential.org_id,
            action: AuditAction::TokenIssued,
            outcome: Outcome::Success,
            actor: match &delegation {
                None => Actor::client(Some(credential.client_id)),
                Some(delegated) => Actor::client(Some(credential.client_id))
                    .delegated(delegated.subject, delegated.act.agents()),
            },
            subject_agent_id: Some(subject_agent),
            resource: format!("token/{}", claims.jti),
            details: {
                let mut issued = details([
                    ("scope", json!(claims.scope)),
                    ("expiresIn", json!(expires_in)),
                    ("clientAuthMethod", json!(method.as_str())),
                ]);
                if resource.is_some() {
                    issued.insert("resource".to_owned(), json!(claims.aud));
                }
                for (name, value) in proof.audit_details() {
                    issued.insert(name.to_owned(), value);
                }
                if let Some(delegated) = &delegation {
                    issued.extend(delegated.audit_details());
                }
                if let Some(proof) = &binding {
                    issued.insert("dpopKeyThumbprint".to_owned(), json!(proof.thumbprint));
                }
                issued
            },
        }
        .at(now, &limits, context);
        let mut writes = vec![
            Write::CountTokenRequest {
                org_id: credential.org_id,
                month: month.clone(),
                limit: limits.monthly_token_requests,
            },
            Write::Audit(event),
        ];
        // Its single use commits with the token's count and event, or none of them does.
        writes.extend(
            proof
                .assertion()
                .map(|used| used_assertion(&credential, used)),
        );
        writes.extend(binding.as_ref().map(|used| self.used_dpop_proof(used)));
        let token_type = if binding.is_some() { "DPoP" } else { "Bearer" };
        let dpop_nonce = self.fresh_dpop_nonce().await?;
        // The signature (a quarter of a millisecond of CPU for RS256) is made while the commit
        // waits for its fsync: `biased` polls the commit first, so it is queued before signing
        // starts. The token is returned only once both succeeded, so no token ever goes out
        // without its count and audit event. Should signing fail after the commit (the key is
        // already parsed, so only an allocation or random-number failure could do it), the
        // count and a `token.issued` event stand for a token the client did not receive, as
        // when a response is lost on the way.
        let (committed, signed) =
            tokio::join!(biased; self.store.commit(writes), async { keys.sign(&claims) });
        match committed {
            Ok(()) => Ok(TokenGrant {
                access_token: signed.map_err(OAuthError::from)?,
                expires_in,
                scope: claims.scope,
                token_type,
                dpop_nonce,
            }),
            Err(StoreError::ConditionFailed {
                guard: Guard::TokenQuota,
                ..
            }) => {
                let usage = self.store.usage(credential.org_id, &month).await?;
                self.audit_denial(
                    &credential,
                    method,
                    "monthly_token_quota_exceeded",
                    context,
                    [],
                )
                .await?;
                Err(OAuthError::QuotaExceeded {
                    limit: LimitExceeded {
                        limit: "monthlyTokenRequests",
                        max: limits.monthly_token_requests,
                        current: usage.token_requests,
                    },
                    retry_after: crate::domain::time::seconds_until_next_month(self.now()),
                })
            }
            Err(StoreError::ConditionFailed {
                guard: Guard::AssertionReplayed,
                ..
            }) => {
                self.refuse_replayed_assertion(&credential, context).await?;
                Err(OAuthError::InvalidClient { basic })
            }
            Err(StoreError::ConditionFailed {
                guard: Guard::DpopProofReplayed,
                ..
            }) => {
                self.audit_denial(&credential, method, "dpop_proof_replayed", context, [])
                    .await?;
                Err(OAuthError::InvalidDpopProof(
                    DpopRejection::Replayed.to_string(),
                ))
            }
            // Another guard failing here is a bug: the conversion makes it an internal error.
            Err(
                e @ (StoreError::ConditionFailed { .. }
                | StoreError::Unavailable { .. }
                | StoreError::Internal { .. }),
            ) => Err(e.into()),
        }
    }

    /// An access token that is valid now for `audience`: signature, claims, not revoked, and
    /// its agent active. `Ok(None)` for every kind of invalid token; `Err` only when a
    /// dependency failed.
    pub async fn active_token(
        &self,
        token: &str,
        audience: TokenAudience,
    ) -> ServiceResult<Option<ActiveToken>> {
        let keys = self.keys.keys_for_token(token).await?;
        let (policy, now) = (self.token_policy(), self.now());
        let verified = match audience {
            TokenAudience::ManagementApi => keys.verify(token, &policy, now),
            TokenAudience::Any => keys.verify_any_audience(token, &policy, now),
        };
        let Ok(claims) = verified else {
            return Ok(None);
        };
        let (Some(org_id), Some(chain)) = (claims.org_uuid(), claims.chain_agents()) else {
            return Ok(None);
        };
        let (revoked, agents) = self
            .store
            .token_standing(&claims.chain_token_ids(), org_id, &chain)
            .await?;
        // Every agent of the chain must still be honoured and not have pulled its kill
        // switch since it joined the chain: the subject since the chain began, each actor since
        // its exchange.
        let standing: Option<Vec<Agent>> = agents
            .into_iter()
            .zip(claims.chain_starts())
            .map(|(agent, start)| {
                agent.filter(|a| a.status.tokens_are_honoured() && !a.stopped_tokens_from(start))
            })
            .collect();
        match (revoked, standing) {
            (false, Some(mut agents)) if !agents.is_empty() => {
                // An agent whose tokens must be bound honours none of its chains unbound: not
                // the subject's own tokens, nor those an actor holds, issued before it was set.
                if claims.cnf.is_none() && agents.iter().any(|agent| agent.require_dpop) {
                    return Ok(None);
                }
                let subject = agents.swap_remove(0);
                let client_id = claims.client_uuid();
                Ok(Some(ActiveToken {
                    claims,
                    org_id,
                    agent_id: subject.agent_id,
                    client_id,
                    agent_scopes: ScopeSet::from_list(subject.scopes.clone()),
                    subject,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The management API's check of the access token a request presents (RFC 6750, and RFC
    /// 9449 §7 for a DPoP-bound token: the proof must name this request and token, be made with
    /// the key the token is bound to, and be used once).
    pub async fn authenticate_caller(
        &self,
        presented: Option<&PresentedToken>,
        context: RequestContext,
    ) -> ServiceResult<Caller> {
        let presented = presented.ok_or(ServiceError::Unauthenticated(Unauthenticated::NoToken))?;
        let invalid_token = match presented.scheme {
            TokenScheme::Bearer => Unauthenticated::InvalidToken,
            TokenScheme::Dpop => Unauthenticated::InvalidDpopToken,
        };
        let active = self
            .active_token(&presented.token, TokenAudience::ManagementApi)
            .await?
            .ok_or(ServiceError::Unauthenticated(invalid_token))?;
        match (presented.scheme, &active.claims.cnf) {
            (TokenScheme::Bearer, None) => {}
            // RFC 9449 §7.2: a bound token is never accepted as a bearer token.
            (TokenScheme::Bearer, Some(_)) => {
                return Err(ServiceError::Unauthenticated(
                    Unauthenticated::BoundTokenAsBearer,
                ));
            }
            (TokenScheme::Dpop, None) => {
                return Err(ServiceError::Unauthenticated(
                    Unauthenticated::InvalidDpopToken,
                ));
            }
            (TokenScheme::Dpop, Some(confirmation)) => {
                let proof = self.check_resource_proof(presented, confirmation)?;
                match self.store.commit(vec![self.used_dpop_proof(&proof)]).await {
                    Ok(()) => {}
                    Err(StoreError::ConditionFailed {
                        guard: Guard::DpopProofReplayed,
                        ..
                    }) => {
                        return Err(ServiceError::Unauthenticated(
                            Unauthenticated::InvalidDpopProof(DpopRejection::Replayed),
                        ));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(Caller {
            org_id: active.org_id,
            agent_id: active.agent_id,
            client_id: active.client_id,
            scopes: active.honoured_scopes(),
            actor_chain: active.claims.actor_agents(),
            context,
        })
    }

    /// The proof beside a bound token at a protected resource: made with the token's key, for
    /// this request and this token (`ath`).
    fn check_resource_proof(
        &self,
        presented: &PresentedToken,
        confirmation: &Confirmation,
    ) -> ServiceResult<VerifiedDpopProof> {
        let refused =
            |rejection| ServiceError::Unauthenticated(Unauthenticated::InvalidDpopProof(rejection));
        let proof = presented
            .proof
            .as_ref()
            .ok_or(refused(DpopRejection::Missing))?;
        let url = format!("{}{}", self.config.public_url, presented.path);
        let expected = DpopExpectations {
            method: &presented.method,
            url: &url,
            access_token: Some(&presented.token),
            max_age_seconds: self.config.dpop.proof_max_age_seconds,
            nonces: None,
        };
        let verified = proof.verify(&expected, self.now()).map_err(refused)?;
        if !crate::secret::constant_time_eq(
            verified.thumbprint.as_bytes(),
            confirmation.jkt.as_bytes(),
        ) {
            return Err(refused(DpopRejection::WrongKey));
        }
        Ok(verified)
    }

    /// The organization and identity of an introspection or revocation caller.
    async fn endpoint_caller(
        self: &Arc<Self>,
        auth: &EndpointAuth,
        context: &RequestContext,
    ) -> Result<Caller, OAuthError> {
        match auth {
            EndpointAuth::Client(client) => {
                let basic = client.method == ClientAuthMethod::Basic;
                let Authenticated {
                    credential, proof, ..
                } = match self.authenticate_client(client, context, None).await? {
                    Ok(authenticated) => authenticated,
                    Err(refusal) => return Err(refusal.into_oauth(basic)),
                };
                // These endpoints write nothing else: the assertion's use is a write of its own.
                if let Some(used) = proof.assertion() {
                    match self
                        .store
                        .commit(vec![used_assertion(&credential, used)])
                        .await
                    {
                        Ok(()) => {}
                        Err(StoreError::ConditionFailed {
                            guard: Guard::AssertionReplayed,
                            ..
                        }) => {
                            self.refuse_replayed_assertion(&credential, context).await?;
                            return Err(OAuthError::InvalidClient { basic });
                        }
                        Err(e) => return Err(ServiceError::from(e).into()),
                    }
                }
                Ok(Caller {
                    org_id: credential.org_id,
                    agent_id: credential.agent_id,
                    client_id: Some(credential.client_id),
                    scopes: ScopeSet::default(),
                    context: context.clone(),
                    actor_chain: Vec::new(),
                })
            }
            EndpointAuth::Token(presented) => self
                .authenticate_caller(Some(presented), context.clone())
                .await
                .map_err(|e| match e {
                    ServiceError::Unauthenticated(_) => OAuthError::InvalidClient { basic: false },
                    ServiceError::Validation(_)
                    | ServiceError::InsufficientScope { .. }
                    | ServiceError::AgentNotFound
                    | ServiceError::CredentialNotFound
                    | ServiceError::AuditEventNotFound
                    | ServiceError::ResourceNotFound
                    | ServiceError::TrustedIssuerNotFound
                    | ServiceError::IssuerAlreadyTrusted
                    | ServiceError::AgentNotActive(_)
                    | ServiceError::CredentialRevoked
                    | ServiceError::AgentNameTaken
                    | ServiceError::ResourceIdentifierTaken
                    | ServiceError::InvalidStatusTransition { .. }
                    | ServiceError::PlanLimit(_)
                    | ServiceError::RateLimited { .. }
                    | ServiceError::Contended
                    | ServiceError::Unavailable { .. }
                    | ServiceError::Internal { .. } => e.into(),
                }),
        }
    }

    /// `POST /token/introspect`: `None` means `{"active": false}`, whatever the reason. The
    /// claims' `scope` is the one honoured now, as the management API honours it, so a resource
    /// server stops accepting a scope the moment it is taken from the agent.
    pub async fn introspect(
        self: &Arc<Self>,
        auth: &EndpointAuth,
        token: &str,
        context: &RequestContext,
    ) -> Result<Option<ActiveToken>, OAuthError> {
        let caller = self.endpoint_caller(auth, context).await?;
        Ok(self
            .active_token(token, TokenAudience::Any)
            .await?
            .filter(|t| t.org_id == caller.org_id)
            .map(|mut t| {
                t.claims.scope = t.honoured_scopes().to_string();
                t
            }))
    }

    /// `POST /token/revoke`. Unknown, invalid and foreign tokens are answered the same as a
    /// revoked one (RFC 7009 §2.2), and change nothing.
    pub async fn revoke_token(
        self: &Arc<Self>,
        auth: &EndpointAuth,
        token: &str,
        context: &RequestContext,
    ) -> Result<(), OAuthError> {
        let caller = self.endpoint_caller(auth, context).await?;
        if let EndpointAuth::Token(_) = auth
            && !caller.scopes.permits(crate::domain::Scope::AgentsWrite)
        {
            return Err(OAuthError::InvalidClient { basic: false });
        }
        let keys = self
            .keys
            .keys_for_token(token)
            .await
            .map_err(OAuthError::from)?;
        // An expired token needs no revocation; signature and claims still must check out. A
        // token for a resource is revoked like one for the management API.
        let Ok(claims) = keys.verify_any_audience(token, &self.token_policy(), self.now()) else {
            return Ok(());
        };
        let may_revoke = match auth {
            EndpointAuth::Client(_) => claims.client_uuid() == caller.client_id,
            EndpointAuth::Token(_) => claims.org_uuid() == Some(caller.org_id),
        };
        if !may_revoke || self.store.is_token_revoked(&claims.jti).await? {
            return Ok(());
        }
        let limits = self.limits(caller.org_id).await?;
        // The revocation must outlive the token, or TTL and the embedded store's purge would
        // delete it while the token still verifies: an `exp` beyond chrono's range keeps it.
        let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let event = EventDraft {
            org_id: caller.org_id,
            action: AuditAction::TokenRevoked,
            outcome: Outcome::Success,
            actor: caller.actor(),
            subject_agent_id: claims.agent_id(),
            resource: format!("token/{}", claims.jti),
            details: details([("clientId", json!(claims.client_id))]),
        }
        .at(self.now(), &limits, context);
        self.store
            .commit(vec![
                Write::RevokeToken {
                    jti: claims.jti.clone(),
                    org_id: caller.org_id,
                    expires_at,
                },
                Write::Audit(event),
            ])
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AgentStatus, CredentialStatus};
    use chrono::{Duration, Utc};

    #[test]
    fn the_record_of_a_used_assertion_outlives_the_last_instant_it_is_accepted() {
        let now = Utc::now();
        let credential = Credential {
            credential_id: Uuid::new_v4(),
            client_id: Uuid::new_v4(),
            agent_id: Uuid::new_v4(),
            org_id: Uuid::new_v4(),
            proof: CredentialProof::Secret {
                hash: String::new(),
            },
            status: CredentialStatus::Active,
            agent_status: AgentStatus::Active,
            agent_scopes: Vec::new(),
            agent_may_act: Vec::new(),
            agent_requires_dpop: false,
            created_at: now,
            expires_at: None,
            revoked_at: None,
            rotated_at: None,
            version: 1,
        };
        let used = VerifiedAssertion {
            jti: "once".into(),
            expires_at: now,
            key_id: "k1".into(),
        };
        let Write::UseClientAssertion { expires_at, .. } = used_assertion(&credential, &used)
        else {
            panic!("not the use of an assertion");
        };
        // Still accepted until exp + the skew: a record purged before then would let it replay.
        assert!(expires_at > now + Duration::seconds(ASSERTION_LEEWAY_SECONDS));
    }

    #[test]
    fn a_presented_token_and_its_proof_never_show_in_debug_output() {
        let presented = PresentedToken {
            token: "eyJ.the-token.sig".into(),
            scheme: TokenScheme::Dpop,
            proof: Some(DpopProof::new("eyJ.the-proof.sig".into())),
            method: "GET".into(),
            path: "/api/v1/agents".into(),
        };
        let shown = format!("{:?}", EndpointAuth::Token(presented));
        assert!(
            !shown.contains("the-token") && !shown.contains("the-proof"),
            "{shown}"
        );
    }
}
