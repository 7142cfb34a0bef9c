//! Rotation of the signing-key secret: the four steps Secrets Manager asks a rotation function
//! for (`createSecret`, `setSecret`, `testSecret`, `finishSecret`), on the key-set document of
//! [`agentidp_core::signing`]. The `agentidp-key-rotation` Lambda function only parses the event and
//! calls [`Rotator::run`]; everything that can be tested without Lambda lives here.
//!
//! A rotation puts a new signing key first and keeps the newest [`KEEP_PREVIOUS_KEYS`] of the
//! current keys for verification, so a token signed before the rotation keeps verifying until it
//! expires, and the JWKS never grows past `1 + KEEP_PREVIOUS_KEYS` keys.
//!
//! It also publishes the public keys, as a JWKS, to a second secret: the functions that only
//! verify tokens read that one and may not read the private keys. `setSecret` publishes the
//! pending keys together with the current ones, before any token can be signed with the new key;
//! `finishSecret` publishes the pending keys alone, just before they become current, so a key the
//! rotation drops stops being accepted by the verifying functions when the token function drops
//! it. The timeline is in docs/signing-keys.md.
//!
//! Every step is idempotent: Secrets Manager retries a step whose invocation failed or timed
//! out, and a repeated step finds its work done and returns `Ok`.

use agentidp_core::error::Cause;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::SdkError;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use agentidp_core::signing::{
    AccessTokenClaims, Jwks, KeyError, KeySet, KeySetDocument, SigningAlgorithm, TokenPolicy,
};

pub const AWSCURRENT: &str = "AWSCURRENT";
pub const AWSPENDING: &str = "AWSPENDING";

/// Keys kept besides the new one. Tokens live at most a day (`AGENTIDP_TOKEN_LIFETIME_SECONDS`
/// is capped at 86,400) and rotations are days apart, so one previous key would cover every
/// token still alive; two also cover a manual rotation run right after a scheduled one.
pub const KEEP_PREVIOUS_KEYS: usize = 2;

/// The four steps, by the names Secrets Manager sends in `Step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    CreateSecret,
    SetSecret,
    TestSecret,
    FinishSecret,
}

impl RotationStep {
    pub const ALL: [RotationStep; 4] = [
        RotationStep::CreateSecret,
        RotationStep::SetSecret,
        RotationStep::TestSecret,
        RotationStep::FinishSecret,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "createSecret" => Some(Self::CreateSecret),
            "setSecret" => Some(Self::SetSecret),
            "testSecret" => Some(Self::TestSecret),
            "finishSecret" => Some(Self::FinishSecret),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateSecret => "createSecret",
            Self::SetSecret => "setSecret",
            Self::TestSecret => "testSecret",
            Self::FinishSecret => "finishSecret",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("unknown rotation step `{0}`")]
    UnknownStep(String),
    /// The version named by the request token is in a state this step cannot start from.
    #[error("version {token} of the secret: {problem}")]
    VersionState { token: String, problem: String },
    /// A Secrets Manager call failed; Secrets Manager retries the step. `kind` is the SDK
    /// error's own summary ("service error", "dispatch failure"…) and `source` the error
    /// beneath it: never the raw response, which may be one the SDK could not parse, holding
    /// the secret.
    #[error("Secrets Manager {operation} failed: {kind}")]
    SecretsManager {
        operation: &'static str,
        kind: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("key set")]
    Keys(#[from] KeyError),
    /// The pending key set failed its test; finishSecret is not reached and AWSCURRENT stays.
    #[error("the pending key set failed its test: {0}")]
    TestFailed(String),
}

/// What a step did, for the log and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// createSecret stored a new AWSPENDING version holding these key ids, newest first.
    Created { kids: Vec<String> },
    /// createSecret found the AWSPENDING version already there (a retried step).
    AlreadyCreated,
    /// setSecret, with no public-key secret to publish to: nothing outside the secret changes.
    NothingToSet,
    /// setSecret tested the pending set (as testSecret does) and published the public keys of it
    /// and of the current set: these key ids, newest first.
    Published { kids: Vec<String> },
    /// testSecret signed with the pending set and verified with it, including a token of the
    /// current signing key.
    Tested { kids: Vec<String> },
    /// finishSecret published the pending set's public keys (`published`, unless there is no
    /// public-key secret), then moved AWSCURRENT to the token's version, away from `previous`.
    Finished {
        previous: Option<String>,
        published: Option<Vec<String>>,
    },
    /// The token's version already holds AWSCURRENT: this rotation is complete.
    AlreadyCurrent,
}

fn sdk_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> RotationError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    RotationError::SecretsManager {
        operation,
        kind: err.to_string(),
        source: err.into_source().ok(),
    }
}

/// Runs the rotation steps on one secret store.
#[derive(Debug, Clone)]
pub struct Rotator {
    client: Client,
    algorithm: SigningAlgorithm,
    keep_previous: usize,
    /// Where the public keys are published; `None` publishes nothing.
    public_keys_secret: Option<String>,
}

impl Rotator {
    /// `algorithm` is that of the keys this rotator generates; older keys keep theirs. It
    /// publishes no public keys until [`Rotator::publishing_to`] names where.
    pub fn new(client: Client, algorithm: SigningAlgorithm) -> Self {
        Self {
            client,
            algorithm,
            keep_previous: KEEP_PREVIOUS_KEYS,
            public_keys_secret: None,
        }
    }

    /// Publishes the public keys to the secret `secret_id` at setSecret and finishSecret.
    pub fn publishing_to(self, secret_id: String) -> Self {
        Self {
            public_keys_secret: Some(secret_id),
            ..self
        }
    }

    /// Runs one step, by the name Secrets Manager sends, for the version `token`.
    pub async fn run(
        &self,
        step: &str,
        secret_id: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<StepOutcome, RotationError> {
        let step =
            RotationStep::parse(step).ok_or_else(|| RotationError::UnknownStep(step.to_owned()))?;
        self.run_step(step, secret_id, token, now).await
    }

    pub async fn run_step(
        &self,
        step: RotationStep,
        secret_id: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<StepOutcome, RotationError> {
        let versions = self.versions(secret_id).await?;
        match versions.iter().find(|(id, _)| id == token) {
            Some((_, stages)) if stages.iter().any(|s| s == AWSCURRENT) => {
                return Ok(StepOutcome::AlreadyCurrent);
            }
            Some((_, stages)) if !stages.iter().any(|s| s == AWSPENDING) => {
                return Err(RotationError::VersionState {
                    token: token.to_owned(),
                    problem: "it is neither AWSPENDING nor AWSCURRENT, so it is not being rotated"
                        .into(),
                });
            }
            Some(_) => {}
            // Secrets Manager stages the token as AWSPENDING (without a value) before it calls
            // createSecret. A createSecret for a token it has not staged still works, so that the
            // steps can be driven by hand (and by tests on moto, whose RotateSecret needs a
            // Lambda function of its own); every later step needs the version createSecret made.
            None if step == RotationStep::CreateSecret => {}
            None => {
                return Err(RotationError::VersionState {
                    token: token.to_owned(),
                    problem: "the secret has no such version".into(),
                });
            }
        }
        match step {
            RotationStep::CreateSecret => self.create(secret_id, token, now).await,
            RotationStep::SetSecret => self.set(secret_id, token, now).await,
            RotationStep::TestSecret => {
                let (pending, current) = self.pending_and_current(secret_id, token).await?;
                let kids = self.check(&pending, &current, now)?;
                Ok(StepOutcome::Tested { kids })
            }
            RotationStep::FinishSecret => self.finish(secret_id, token, &versions).await,
        }
    }

    /// Every version id of the secret with its staging labels.
    async fn versions(&self, secret_id: &str) -> Result<Vec<(String, Vec<String>)>, RotationError> {
        let described = self
            .client
            .describe_secret()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeSecret", e))?;
        Ok(described
            .version_ids_to_stages()
            .map(|map| {
                map.iter()
                    .map(|(id, stages)| (id.clone(), stages.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The document at `stage` (and `version`, if given). `None` when there is no such version
    /// or it holds no value yet.
    async fn document(
        &self,
        secret_id: &str,
        stage: &str,
        version: Option<&str>,
    ) -> Result<Option<KeySetDocument>, RotationError> {
        let result = self
            .client
            .get_secret_value()
            .secret_id(secret_id)
            .version_stage(stage)
            .set_version_id(version.map(str::to_owned))
            .send()
            .await;
        match result {
            Ok(out) => match out.secret_string() {
                Some(json) => Ok(Some(KeySetDocument::parse(json)?)),
                None => Err(KeyError::Malformed("the secret holds no string".into()).into()),
            },
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(err) => Err(sdk_error("GetSecretValue", err)),
        }
    }

    async fn current(&self, secret_id: &str) -> Result<KeySetDocument, RotationError> {
        self.document(secret_id, AWSCURRENT, None)
            .await?
            .ok_or_else(|| RotationError::VersionState {
                token: AWSCURRENT.into(),
                problem: "the secret has no AWSCURRENT value; create it with {\"keys\": []}".into(),
            })
    }

    /// createSecret: AWSPENDING = the current document rotated (a new key first, the newest
    /// previous keys kept). The current document may hold no key: the first rotation, right
    /// after the stack created the secret, makes the first key.
    async fn create(
        &self,
        secret_id: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<StepOutcome, RotationError> {
        let current = self.current(secret_id).await?;
        if self
            .document(secret_id, AWSPENDING, Some(token))
            .await?
            .is_some()
        {
            return Ok(StepOutcome::AlreadyCreated);
        }
        let pending = current.rotated(self.algorithm, now, self.keep_previous)?;
        // Loading it here refuses a document the functions could not load, before it is stored.
        KeySet::from_document(&pending)?;
        let put = self
            .client
            .put_secret_value()
            .secret_id(secret_id)
            .client_request_token(token)
            .secret_string(pending.to_json()?)
            .version_stages(AWSPENDING)
            .send()
            .await;
        match put {
            Ok(_) => {}
            // Another invocation of this step stored the version first (Secrets Manager retries
            // a step that timed out): a version id holds one value forever, so that one stays.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_resource_exists_exception()) =>
            {
                return Ok(StepOutcome::AlreadyCreated);
            }
            Err(err) => return Err(sdk_error("PutSecretValue", err)),
        }
        Ok(StepOutcome::Created {
            kids: pending.keys.iter().map(|k| k.kid.clone()).collect(),
        })
    }

    /// The AWSPENDING document of `token`.
    async fn pending(&self, secret_id: &str, token: &str) -> Result<KeySetDocument, RotationError> {
        self.document(secret_id, AWSPENDING, Some(token))
            .await?
            .ok_or_else(|| RotationError::VersionState {
                token: token.to_owned(),
                problem: "AWSPENDING holds no value; createSecret has not run".into(),
            })
    }

    /// The AWSPENDING document of `token`, and the AWSCURRENT one.
    async fn pending_and_current(
        &self,
        secret_id: &str,
        token: &str,
    ) -> Result<(KeySetDocument, KeySetDocument), RotationError> {
        Ok((
            self.pending(secret_id, token).await?,
            self.current(secret_id).await?,
        ))
    }

    /// testSecret's test, which setSecret also passes before it publishes anything: the pending
    /// set loads, signs a token that it verifies, keeps every key that may have signed a live
    /// token, and verifies a token of the current signing key. The pending key ids, newest first.
    fn check(
        &self,
        pending: &KeySetDocument,
        current: &KeySetDocument,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, RotationError> {
        let pending_keys = KeySet::from_document(pending)?;
        let policy = TokenPolicy {
            issuer: "urn:agentidp:key-rotation-test".into(),
            audience: "urn:agentidp:key-rotation-test".into(),
            lifetime_seconds: 60,
        };
        let claims = test_claims(&policy, now);
        let signed = pending_keys
            .sign(&claims)
            .map_err(|e| RotationError::TestFailed(format!("signing: {e}")))?;
        pending_keys
            .verify(&signed, &policy, now)
            .map_err(|e| RotationError::TestFailed(format!("verifying its own token: {e}")))?;
        let new_kid = pending.keys.first().map(|k| k.kid.as_str());
        if current.keys.iter().any(|k| Some(k.kid.as_str()) == new_kid) {
            return Err(RotationError::TestFailed(
                "its signing key is already in the current set; nothing would rotate".into(),
            ));
        }
        // The current signing key has signed tokens that are still alive: it must stay.
        if let Some(signing) = current.keys.first() {
            let current_keys = KeySet::from_document(current)?;
            let old = current_keys.sign(&claims).map_err(|e| {
                RotationError::TestFailed(format!("signing with {}: {e}", signing.kid))
            })?;
            pending_keys.verify(&old, &policy, now).map_err(|e| {
                RotationError::TestFailed(format!(
                    "a token of the current key {} does not verify: {e}",
                    signing.kid
                ))
            })?;
        }
        if pending.keys.len() > 1 + self.keep_previous {
            return Err(RotationError::TestFailed(format!(
                "it holds {} keys, more than {}",
                pending.keys.len(),
                1 + self.keep_previous
            )));
        }
        Ok(pending.keys.iter().map(|k| k.kid.clone()).collect())
    }

    /// setSecret: the service outside the secret is the verifying functions, which must hold the
    /// new key's public half before any token is signed with it (at finishSecret at the
    /// earliest). So a pending set that passes the test is published together with the current
    /// one: tokens of either verify until finishSecret publishes the pending set alone.
    async fn set(
        &self,
        secret_id: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<StepOutcome, RotationError> {
        let Some(public) = &self.public_keys_secret else {
            return Ok(StepOutcome::NothingToSet);
        };
        let (pending, current) = self.pending_and_current(secret_id, token).await?;
        self.check(&pending, &current, now)?;
        let kids = self.publish(public, &[&pending, &current]).await?;
        Ok(StepOutcome::Published { kids })
    }

    /// Makes the public keys of `documents` (in that order, each key once) the AWSCURRENT value
    /// of the secret `public`, unless they already are, so a retried step writes nothing. The
    /// published key ids, newest first.
    async fn publish(
        &self,
        public: &str,
        documents: &[&KeySetDocument],
    ) -> Result<Vec<String>, RotationError> {
        let mut jwks = Jwks { keys: Vec::new() };
        // The current set is empty before the first rotation, and a set that cannot load has
        // failed the test already.
        for document in documents.iter().filter(|d| !d.keys.is_empty()) {
            for key in KeySet::from_document(document)?.jwks().keys {
                if !jwks.keys.iter().any(|k| k.kid == key.kid) {
                    jwks.keys.push(key);
                }
            }
        }
        let kids = jwks.keys.iter().map(|k| k.kid.clone()).collect();
        let published = self
            .client
            .get_secret_value()
            .secret_id(public)
            .version_stage(AWSCURRENT)
            .send()
            .await
            .map_err(|e| sdk_error("GetSecretValue", e))?;
        // Anything else there (the stack's `{"keys":[]}`, a damaged value) is replaced.
        if published
            .secret_string()
            .and_then(|json| Jwks::parse(json).ok())
            .as_ref()
            == Some(&jwks)
        {
            return Ok(kids);
        }
        self.client
            .put_secret_value()
            .secret_id(public)
            .secret_string(jwks.to_json()?)
            .send()
            .await
            .map_err(|e| sdk_error("PutSecretValue", e))?;
        Ok(kids)
    }

    /// finishSecret: the pending set's public keys are published, then AWSCURRENT moves to the
    /// token's version (Secrets Manager then labels the version it left AWSPREVIOUS). Publishing
    /// first keeps a retry possible: once the version is current, a retried step ends at
    /// [`StepOutcome::AlreadyCurrent`] before it gets here.
    async fn finish(
        &self,
        secret_id: &str,
        token: &str,
        versions: &[(String, Vec<String>)],
    ) -> Result<StepOutcome, RotationError> {
        let published = match &self.public_keys_secret {
            Some(public) => {
                let pending = self.pending(secret_id, token).await?;
                Some(self.publish(public, &[&pending]).await?)
            }
            None => None,
        };
        let previous = versions
            .iter()
            .find(|(_, stages)| stages.iter().any(|s| s == AWSCURRENT))
            .map(|(id, _)| id.clone());
        self.client
            .update_secret_version_stage()
            .secret_id(secret_id)
            .version_stage(AWSCURRENT)
            .move_to_version_id(token)
            .set_remove_from_version_id(previous.clone())
            .send()
            .await
            .map_err(|e| sdk_error("UpdateSecretVersionStage", e))?;
        Ok(StepOutcome::Finished {
            previous,
            published,
        })
    }
}

fn test_claims(policy: &TokenPolicy, now: DateTime<Utc>) -> AccessTokenClaims {
    let id = Uuid::new_v4().to_string();
    AccessTokenClaims {
        iss: policy.issuer.clone(),
        sub: id.clone(),
        aud: policy.audience.clone(),
        exp: now.timestamp() + policy.lifetime_seconds,
        iat: now.timestamp(),
        nbf: now.timestamp(),
        jti: id.clone(),
        client_id: id.clone(),
        scope: String::new(),
        org_id: id,
        act: None,
        may_act: None,
        chain_jtis: Vec::new(),
        chain_iat: None,
        cnf: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_round_trip() {
        for step in RotationStep::ALL {
            assert_eq!(RotationStep::parse(step.as_str()), Some(step));
        }
        assert_eq!(RotationStep::parse("CreateSecret"), None);
    }
}
