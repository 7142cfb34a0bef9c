//! Records ⇄ items. Optional fields are left out of the item when absent. Timestamps are stored
//! as RFC 3339 strings at full precision, so that a record reads back exactly as written.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, SecondsFormat, Utc};
use uuid::Uuid;

use agentidp_core::client_keys::PublicKeys;
use agentidp_core::domain::{
    Actor, Agent, AgentStatus, AuditAction, AuditEvent, Credential, CredentialProof,
    CredentialStatus, Organization, Outcome, Plan, Resource, ResourceTarget, TrustedIssuer,
};
use agentidp_core::store::{StoreError, StoreResult};

use crate::keys::{
    Item, ORG_SK, action_key, agent_key, agent_sk, audit_sk, identifier_sk, pk_sk, resource_sk,
    trusted_issuer_sk, ttl_seconds,
};
use crate::schema::{ACTION_KEY, AGENT_KEY, CREDENTIAL_ID, EVENT_ID, EXPIRES_AT, PK};

// Attributes that expressions name.
pub(crate) const VERSION: &str = "version";
pub(crate) const COUNT: &str = "count";
pub(crate) const PLAN: &str = "plan";
pub(crate) const ACTION: &str = "action";
pub(crate) const OUTCOME: &str = "outcome";
pub(crate) const RESOURCE_ID: &str = "resourceId";

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

pub(crate) fn time(at: &DateTime<Utc>) -> AttributeValue {
    s(at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn string_list(values: &[String]) -> AttributeValue {
    AttributeValue::L(values.iter().map(|value| s(value.clone())).collect())
}

fn insert_opt(item: &mut Item, name: &str, value: Option<AttributeValue>) {
    if let Some(value) = value {
        item.insert(name.to_owned(), value);
    }
}

pub(crate) fn org_item(org: &Organization) -> Item {
    let mut item = pk_sk(org.org_id.to_string(), ORG_SK);
    item.insert("name".into(), s(org.name.clone()));
    item.insert(PLAN.into(), s(org.plan.as_str()));
    item.insert("createdAt".into(), time(&org.created_at));
    item
}

pub(crate) fn org_from(item: &Item) -> StoreResult<Organization> {
    let r = ItemReader::new(item, "organization");
    Ok(Organization {
        org_id: r.uuid(PK)?,
        name: r.s("name")?.to_owned(),
        plan: r.parse(PLAN, Plan::parse)?,
        created_at: r.time("createdAt")?,
    })
}

pub(crate) fn agent_item(agent: &Agent) -> Item {
    let mut item = pk_sk(agent.org_id.to_string(), &agent_sk(agent.agent_id));
    item.insert("agentId".into(), s(agent.agent_id.to_string()));
    item.insert("name".into(), s(agent.name.clone()));
    insert_opt(&mut item, "description", agent.description.clone().map(s));
    insert_opt(&mut item, "owner", agent.owner.clone().map(s));
    item.insert("capabilities".into(), string_list(&agent.capabilities));
    item.insert("scopes".into(), string_list(&agent.scopes));
    item.insert(
        "metadata".into(),
        AttributeValue::M(
            agent
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), s(v.clone())))
                .collect(),
        ),
    );
    item.insert("status".into(), s(agent.status.as_str()));
    item.insert("createdAt".into(), time(&agent.created_at));
    item.insert("updatedAt".into(), time(&agent.updated_at));
    insert_opt(
        &mut item,
        "decommissionedAt",
        agent.decommissioned_at.as_ref().map(time),
    );
    item.insert("activeCredentials".into(), n(agent.active_credentials));
    insert_opt(
        &mut item,
        "delegation",
        agent
            .delegation
            .as_ref()
            .and_then(|policy| serde_json::to_string(policy).ok())
            .map(s),
    );
    insert_opt(
        &mut item,
        "tokensNotBefore",
        agent.tokens_not_before.as_ref().map(time),
    );
    if agent.require_dpop {
        item.insert(REQUIRE_DPOP.into(), AttributeValue::Bool(true));
    }
    item.insert(VERSION.into(), n(agent.version));
    item
}

pub(crate) fn agent_from(item: &Item) -> StoreResult<Agent> {
    let r = ItemReader::new(item, "agent");
    Ok(Agent {
        agent_id: r.uuid("agentId")?,
        org_id: r.uuid(PK)?,
        name: r.s("name")?.to_owned(),
        description: r.opt_s("description")?.map(str::to_owned),
        owner: r.opt_s("owner")?.map(str::to_owned),
        capabilities: r.string_list("capabilities")?,
        scopes: r.string_list("scopes")?,
        metadata: r.string_map("metadata")?,
        status: r.parse("status", AgentStatus::parse)?,
        created_at: r.time("createdAt")?,
        updated_at: r.time("updatedAt")?,
        decommissioned_at: r.opt_time("decommissionedAt")?,
        active_credentials: r.u64("activeCredentials")?,
        delegation: r
            .opt_s("delegation")?
            .map(|text| serde_json::from_str(text).map_err(|_| r.malformed("delegation")))
            .transpose()?,
        tokens_not_before: r.opt_time("tokensNotBefore")?,
        require_dpop: r.flag(REQUIRE_DPOP)?,
        version: r.u64(VERSION)?,
    })
}

pub(crate) fn resource_item(resource: &Resource) -> Item {
    let mut item = pk_sk(
        resource.org_id.to_string(),
        &resource_sk(resource.resource_id),
    );
    item.insert("resourceId".into(), s(resource.resource_id.to_string()));
    item.insert("identifier".into(), s(resource.identifier.clone()));
    item.insert("name".into(), s(resource.name.clone()));
    insert_opt(
        &mut item,
        "description",
        resource.description.clone().map(s),
    );
    item.insert("scopes".into(), string_list(&resource.scopes));
    item.insert("createdAt".into(), time(&resource.created_at));
    item.insert("updatedAt".into(), time(&resource.updated_at));
    item.insert(VERSION.into(), n(resource.version));
    item
}

pub(crate) fn resource_from(item: &Item) -> StoreResult<Resource> {
    let r = ItemReader::new(item, "resource");
    Ok(Resource {
        resource_id: r.uuid("resourceId")?,
        org_id: r.uuid(PK)?,
        identifier: r.s("identifier")?.to_owned(),
        name: r.s("name")?.to_owned(),
        description: r.opt_s("description")?.map(str::to_owned),
        scopes: r.string_list("scopes")?,
        created_at: r.time("createdAt")?,
        updated_at: r.time("updatedAt")?,
        version: r.u64(VERSION)?,
    })
}

pub(crate) fn trusted_issuer_item(issuer: &TrustedIssuer) -> Item {
    let mut item = pk_sk(
        issuer.org_id.to_string(),
        &trusted_issuer_sk(issuer.issuer_id),
    );
    item.insert("issuerId".into(), s(issuer.issuer_id.to_string()));
    item.insert("issuer".into(), s(issuer.issuer.clone()));
    item.insert("audience".into(), s(issuer.audience.clone()));
    item.insert(PUBLIC_KEYS.into(), s(issuer.keys.to_json()));
    insert_opt(&mut item, "description", issuer.description.clone().map(s));
    item.insert("createdAt".into(), time(&issuer.created_at));
    item.insert("updatedAt".into(), time(&issuer.updated_at));
    item.insert(VERSION.into(), n(issuer.version));
    item
}

pub(crate) fn trusted_issuer_from(item: &Item) -> StoreResult<TrustedIssuer> {
    let r = ItemReader::new(item, "trusted issuer");
    Ok(TrustedIssuer {
        issuer_id: r.uuid("issuerId")?,
        org_id: r.uuid(PK)?,
        issuer: r.s("issuer")?.to_owned(),
        audience: r.s("audience")?.to_owned(),
        keys: PublicKeys::from_json(r.s(PUBLIC_KEYS)?).map_err(|_| r.malformed(PUBLIC_KEYS))?,
        description: r.opt_s("description")?.map(str::to_owned),
        created_at: r.time("createdAt")?,
        updated_at: r.time("updatedAt")?,
        version: r.u64(VERSION)?,
    })
}

/// The claim of an identifier: what a token request for the resource reads.
pub(crate) fn target_item(target: &ResourceTarget) -> Item {
    let mut item = pk_sk(
        target.org_id.to_string(),
        &identifier_sk(&target.identifier),
    );
    item.insert(RESOURCE_ID.into(), s(target.resource_id.to_string()));
    item.insert("identifier".into(), s(target.identifier.clone()));
    item.insert("scopes".into(), string_list(&target.scopes));
    item
}

pub(crate) fn target_from(item: &Item) -> StoreResult<ResourceTarget> {
    let r = ItemReader::new(item, "resource identifier claim");
    Ok(ResourceTarget {
        org_id: r.uuid(PK)?,
        resource_id: r.uuid(RESOURCE_ID)?,
        identifier: r.s("identifier")?.to_owned(),
        scopes: r.string_list("scopes")?,
    })
}

pub(crate) fn credential_item(credential: &Credential) -> Item {
    let mut item = HashMap::from([(PK.to_owned(), s(credential.client_id.to_string()))]);
    item.insert(
        AGENT_KEY.into(),
        s(agent_key(credential.org_id, credential.agent_id)),
    );
    item.insert(
        CREDENTIAL_ID.into(),
        s(credential.credential_id.to_string()),
    );
    item.insert("orgId".into(), s(credential.org_id.to_string()));
    item.insert("agentId".into(), s(credential.agent_id.to_string()));
    // Exactly one of the two: a secret's hash, or the other proof's JSON (the attribute's name
    // is older than federated identities, which it holds too).
    match (&credential.proof, credential.proof.stored_document()) {
        (CredentialProof::Secret { hash }, _) => {
            item.insert("secretHash".into(), s(hash.clone()));
        }
        (_, document) => insert_opt(&mut item, PUBLIC_KEYS, document.map(s)),
    }
    item.insert("status".into(), s(credential.status.as_str()));
    item.insert("agentStatus".into(), s(credential.agent_status.as_str()));
    item.insert("agentScopes".into(), string_list(&credential.agent_scopes));
    if !credential.agent_may_act.is_empty() {
        let may_act: Vec<String> = credential
            .agent_may_act
            .iter()
            .map(Uuid::to_string)
            .collect();
        item.insert(AGENT_MAY_ACT.into(), string_list(&may_act));
    }
    if credential.agent_requires_dpop {
        item.insert(AGENT_REQUIRES_DPOP.into(), AttributeValue::Bool(true));
    }
    item.insert("createdAt".into(), time(&credential.created_at));
    // A string, so that it could never be taken for a TTL attribute: an expired credential must
    // stay listable as `expired`.
    insert_opt(
        &mut item,
        "expiresAt",
        credential.expires_at.as_ref().map(time),
    );
    insert_opt(
        &mut item,
        "revokedAt",
        credential.revoked_at.as_ref().map(time),
    );
    insert_opt(
        &mut item,
        "rotatedAt",
        credential.rotated_at.as_ref().map(time),
    );
    item.insert(VERSION.into(), n(credential.version));
    item
}

const PUBLIC_KEYS: &str = "publicKeys";
/// A copy of the agent's delegation policy's actors, absent when it names none.
const AGENT_MAY_ACT: &str = "agentMayAct";
/// Whether the agent's tokens must be DPoP-bound, and the credential's copy of it: present only
/// when true, so items written before DPoP read as false.
const REQUIRE_DPOP: &str = "requireDpop";
const AGENT_REQUIRES_DPOP: &str = "agentRequiresDpop";

pub(crate) fn credential_from(item: &Item) -> StoreResult<Credential> {
    let r = ItemReader::new(item, "credential");
    Ok(Credential {
        credential_id: r.uuid(CREDENTIAL_ID)?,
        client_id: r.uuid(PK)?,
        agent_id: r.uuid("agentId")?,
        org_id: r.uuid("orgId")?,
        proof: match r.opt_s(PUBLIC_KEYS)? {
            None => CredentialProof::Secret {
                hash: r.s("secretHash")?.to_owned(),
            },
            Some(document) => CredentialProof::from_stored(String::new(), Some(document))
                .map_err(|_| r.malformed(PUBLIC_KEYS))?,
        },
        status: r.parse("status", CredentialStatus::parse)?,
        agent_status: r.parse("agentStatus", AgentStatus::parse)?,
        agent_scopes: r.string_list("agentScopes")?,
        agent_may_act: match item.get(AGENT_MAY_ACT) {
            None => Vec::new(),
            Some(_) => r
                .string_list(AGENT_MAY_ACT)?
                .iter()
                .map(|id| Uuid::parse_str(id).map_err(|_| r.malformed(AGENT_MAY_ACT)))
                .collect::<StoreResult<_>>()?,
        },
        agent_requires_dpop: r.flag(AGENT_REQUIRES_DPOP)?,
        created_at: r.time("createdAt")?,
        expires_at: r.opt_time("expiresAt")?,
        revoked_at: r.opt_time("revokedAt")?,
        rotated_at: r.opt_time("rotatedAt")?,
        version: r.u64(VERSION)?,
    })
}

pub(crate) fn audit_item(event: &AuditEvent) -> Item {
    let mut item = pk_sk(
        event.org_id.to_string(),
        &audit_sk(&event.timestamp, event.event_id),
    );
    item.insert(EVENT_ID.into(), s(event.event_id.to_string()));
    insert_opt(
        &mut item,
        AGENT_KEY,
        event
            .subject_agent_id
            .map(|agent| s(agent_key(event.org_id, agent))),
    );
    item.insert(ACTION_KEY.into(), s(action_key(event.org_id, event.action)));
    item.insert("timestamp".into(), time(&event.timestamp));
    item.insert(ACTION.into(), s(event.action.as_str()));
    item.insert(OUTCOME.into(), s(event.outcome.as_str()));
    let mut actor = HashMap::from([("type".to_owned(), s(event.actor.kind.clone()))]);
    insert_opt(
        &mut actor,
        "agentId",
        event.actor.agent_id.map(|id| s(id.to_string())),
    );
    insert_opt(
        &mut actor,
        "clientId",
        event.actor.client_id.map(|id| s(id.to_string())),
    );
    insert_opt(
        &mut actor,
        ACTING_FOR,
        event.actor.acting_for.map(|id| s(id.to_string())),
    );
    if !event.actor.actor_chain.is_empty() {
        let chain: Vec<String> = event
            .actor
            .actor_chain
            .iter()
            .map(Uuid::to_string)
            .collect();
        actor.insert(ACTOR_CHAIN.into(), string_list(&chain));
    }
    item.insert("actor".into(), AttributeValue::M(actor));
    insert_opt(
        &mut item,
        "subjectAgentId",
        event.subject_agent_id.map(|id| s(id.to_string())),
    );
    item.insert("resource".into(), s(event.resource.clone()));
    item.insert("requestId".into(), s(event.request_id.clone()));
    insert_opt(&mut item, "sourceIp", event.source_ip.clone().map(s));
    insert_opt(&mut item, "userAgent", event.user_agent.clone().map(s));
    // JSON text: DynamoDB numbers and maps would not give back every JSON value unchanged.
    item.insert(
        "details".into(),
        s(serde_json::Value::Object(event.details.clone()).to_string()),
    );
    item.insert(EXPIRES_AT.into(), n(ttl_seconds(&event.expires_at)));
    item.insert("expiresAtTime".into(), time(&event.expires_at));
    item
}

/// An audit event's actor's members for a delegated token (the audit filter by actor reads
/// them too).
pub(crate) const ACTING_FOR: &str = "actingFor";
pub(crate) const ACTOR_CHAIN: &str = "actorChain";

pub(crate) fn audit_from(item: &Item) -> StoreResult<AuditEvent> {
    let r = ItemReader::new(item, "audit event");
    let actor = r.map("actor")?;
    let actor_reader = ItemReader::new(actor, "audit event actor");
    let details = match serde_json::from_str::<serde_json::Value>(r.s("details")?) {
        Ok(serde_json::Value::Object(details)) => details,
        _ => return Err(r.malformed("details")),
    };
    Ok(AuditEvent {
        event_id: r.uuid(EVENT_ID)?,
        org_id: r.uuid(PK)?,
        timestamp: r.time("timestamp")?,
        action: r.parse(ACTION, AuditAction::parse)?,
        outcome: r.parse(OUTCOME, Outcome::parse)?,
        actor: Actor {
            kind: actor_reader.s("type")?.to_owned(),
            agent_id: actor_reader.opt_uuid("agentId")?,
            client_id: actor_reader.opt_uuid("clientId")?,
            acting_for: actor_reader.opt_uuid(ACTING_FOR)?,
            actor_chain: match actor.get(ACTOR_CHAIN) {
                None => Vec::new(),
                Some(_) => actor_reader
                    .string_list(ACTOR_CHAIN)?
                    .iter()
                    .map(|id| Uuid::parse_str(id).map_err(|_| actor_reader.malformed(ACTOR_CHAIN)))
                    .collect::<StoreResult<_>>()?,
            },
        },
        subject_agent_id: r.opt_uuid("subjectAgentId")?,
        resource: r.s("resource")?.to_owned(),
        request_id: r.s("requestId")?.to_owned(),
        source_ip: r.opt_s("sourceIp")?.map(str::to_owned),
        user_agent: r.opt_s("userAgent")?.map(str::to_owned),
        details,
        expires_at: r.time("expiresAtTime")?,
    })
}

/// Typed access to an item's attributes; errors name the record kind and attribute, never the
/// value.
pub(crate) struct ItemReader<'a> {
    item: &'a Item,
    what: &'static str,
}

impl<'a> ItemReader<'a> {
    pub(crate) fn new(item: &'a Item, what: &'static str) -> Self {
        Self { item, what }
    }

    fn malformed(&self, name: &str) -> StoreError {
        StoreError::broken(format!(
            "{} item: attribute {name} is missing or malformed",
            self.what
        ))
    }

    fn get(&self, name: &str) -> Option<&'a AttributeValue> {
        self.item
            .get(name)
            .filter(|value| !matches!(value, AttributeValue::Null(_)))
    }

    pub(crate) fn s(&self, name: &str) -> StoreResult<&'a str> {
        self.opt_s(name)?.ok_or_else(|| self.malformed(name))
    }

    fn opt_s(&self, name: &str) -> StoreResult<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(AttributeValue::S(text)) => Ok(Some(text)),
            Some(_) => Err(self.malformed(name)),
        }
    }

    /// A boolean attribute that is absent when false.
    fn flag(&self, name: &str) -> StoreResult<bool> {
        match self.get(name) {
            None => Ok(false),
            Some(AttributeValue::Bool(value)) => Ok(*value),
            Some(_) => Err(self.malformed(name)),
        }
    }

    fn parse<T>(&self, name: &str, parse: impl Fn(&str) -> Option<T>) -> StoreResult<T> {
        parse(self.s(name)?).ok_or_else(|| self.malformed(name))
    }

    pub(crate) fn uuid(&self, name: &str) -> StoreResult<Uuid> {
        self.parse(name, |text| Uuid::parse_str(text).ok())
    }

    fn opt_uuid(&self, name: &str) -> StoreResult<Option<Uuid>> {
        self.opt_s(name)?
            .map(|text| Uuid::parse_str(text).map_err(|_| self.malformed(name)))
            .transpose()
    }

    pub(crate) fn time(&self, name: &str) -> StoreResult<DateTime<Utc>> {
        self.opt_time(name)?.ok_or_else(|| self.malformed(name))
    }

    fn opt_time(&self, name: &str) -> StoreResult<Option<DateTime<Utc>>> {
        self.opt_s(name)?
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| self.malformed(name))
            })
            .transpose()
    }

    fn number(&self, name: &str) -> StoreResult<&'a str> {
        match self.get(name) {
            Some(AttributeValue::N(number)) => Ok(number),
            _ => Err(self.malformed(name)),
        }
    }

    fn u64(&self, name: &str) -> StoreResult<u64> {
        self.number(name)?.parse().map_err(|_| self.malformed(name))
    }

    pub(crate) fn i64(&self, name: &str) -> StoreResult<i64> {
        self.number(name)?.parse().map_err(|_| self.malformed(name))
    }

    fn map(&self, name: &str) -> StoreResult<&'a Item> {
        match self.get(name) {
            Some(AttributeValue::M(map)) => Ok(map),
            _ => Err(self.malformed(name)),
        }
    }

    fn string_list(&self, name: &str) -> StoreResult<Vec<String>> {
        match self.get(name) {
            Some(AttributeValue::L(values)) => values
                .iter()
                .map(|value| value.as_s().cloned().map_err(|_| self.malformed(name)))
                .collect(),
            _ => Err(self.malformed(name)),
        }
    }

    fn string_map(&self, name: &str) -> StoreResult<BTreeMap<String, String>> {
        self.map(name)?
            .iter()
            .map(|(key, value)| {
                Ok((
                    key.clone(),
                    value.as_s().map_err(|_| self.malformed(name))?.clone(),
                ))
            })
            .collect()
    }
}
