//! The reader traits: organizations and usage, agents, credentials, revocations, throttle
//! counters, and audit queries.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::KeysAndAttributes;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use agentidp_core::domain::{
    Agent, AuditEvent, Credential, Organization, Resource, ResourceTarget, TrustedIssuer,
};
use agentidp_core::store::{
    AgentReader, AuditPage, AuditPosition, AuditQuery, AuditReader, ClientStanding,
    CredentialReader, OrgReader, ResourceReader, RevocationReader, StoreResult, ThrottleReader,
    TrustedIssuerReader, Usage,
};

use crate::DynamoStore;
use crate::codec::{
    ACTION, ACTOR_CHAIN, COUNT, ItemReader, OUTCOME, agent_from, audit_from, credential_from, n,
    org_from, resource_from, s, target_from, time, trusted_issuer_from,
};
use crate::commit::Expressions;
use crate::errors::{build_error, sdk_error};
use crate::keys::{
    AGENT_COUNTER_SK, AGENT_SK_PREFIX, ORG_SK, RESOURCE_COUNTER_SK, RESOURCE_SK_PREFIX,
    TRUSTED_ISSUER_COUNTER_SK, TRUSTED_ISSUER_SK_PREFIX, action_key, agent_key, agent_sk, audit_sk,
    audit_sk_ceiling, audit_sk_floor, identifier_sk, pk_sk, resource_sk, token_counter_sk,
    trusted_issuer_sk, ttl_seconds,
};
use crate::schema::{
    ACTION_KEY, AGENT_KEY, AUDIT_BY_ACTION_INDEX, AUDIT_BY_AGENT_INDEX, AUDIT_BY_EVENT_ID_INDEX,
    CREDENTIAL_ID, CREDENTIALS_BY_AGENT_INDEX, EVENT_ID, EXPIRES_AT, JTI, PK, SK,
};

/// Items a single audit query may evaluate; DynamoDB's own 1 MB page bounds it further.
const MAX_AUDIT_QUERY_LIMIT: usize = 1000;

#[async_trait]
impl OrgReader for DynamoStore {
    /// One consistent `GetItem`.
    async fn get_org(&self, org_id: Uuid) -> StoreResult<Option<Organization>> {
        let key = pk_sk(org_id.to_string(), ORG_SK);
        self.get_item(&self.tables.orgs, key)
            .await?
            .map(|item| org_from(&item))
            .transpose()
    }

    /// A consistent `Scan` of the orgs table, one request per 1 MB page, keeping the `ORG`
    /// records. Operator use only.
    async fn list_orgs(&self) -> StoreResult<Vec<Organization>> {
        let items = self
            .client
            .scan()
            .table_name(&self.tables.orgs)
            .consistent_read(true)
            .filter_expression("#sk = :org")
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":org", s(ORG_SK))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|err| sdk_error("Scan", err))?;
        let mut orgs = items
            .iter()
            .map(org_from)
            .collect::<StoreResult<Vec<_>>>()?;
        orgs.sort_by_key(|org| (org.created_at, org.org_id));
        Ok(orgs)
    }

    /// One consistent `BatchGetItem` of the four counters (repeated only for keys DynamoDB
    /// returns unprocessed under throttling). A counter never written counts zero.
    async fn usage(&self, org_id: Uuid, month: &str) -> StoreResult<Usage> {
        let table = &self.tables.orgs;
        let agents_sk = AGENT_COUNTER_SK.to_owned();
        let resources_sk = RESOURCE_COUNTER_SK.to_owned();
        let issuers_sk = TRUSTED_ISSUER_COUNTER_SK.to_owned();
        let tokens_sk = token_counter_sk(month);
        let keys = KeysAndAttributes::builder()
            .keys(pk_sk(org_id.to_string(), &agents_sk))
            .keys(pk_sk(org_id.to_string(), &resources_sk))
            .keys(pk_sk(org_id.to_string(), &issuers_sk))
            .keys(pk_sk(org_id.to_string(), &tokens_sk))
            .consistent_read(true)
            .build()
            .map_err(build_error)?;
        let mut found = self
            .batch_get(HashMap::from([(table.clone(), keys)]))
            .await?;
        let mut usage = Usage::default();
        for item in found.remove(table).unwrap_or_default() {
            let reader = ItemReader::new(&item, "usage counter");
            // A decrement that ran before its increment could leave -1 for a moment; the usage
            // shown never goes below zero.
            let count = u64::try_from(reader.i64(COUNT)?).unwrap_or(0);
            let sk = reader.s(SK)?;
            if sk == agents_sk {
                usage.agents = count;
            } else if sk == resources_sk {
                usage.resources = count;
            } else if sk == issuers_sk {
                usage.trusted_issuers = count;
            } else if sk == tokens_sk {
                usage.token_requests = count;
            }
        }
        Ok(usage)
    }
}

#[async_trait]
impl AgentReader for DynamoStore {
    /// One consistent `GetItem`.
    async fn get_agent(&self, org_id: Uuid, agent_id: Uuid) -> StoreResult<Option<Agent>> {
        let key = pk_sk(org_id.to_string(), &agent_sk(agent_id));
        self.get_item(&self.tables.agents, key)
            .await?
            .map(|item| agent_from(&item))
            .transpose()
    }

    /// A consistent `Query` (begins_with `AGENT#`), one request per 1 MB page.
    async fn list_agents(&self, org_id: Uuid) -> StoreResult<Vec<Agent>> {
        let query = self
            .client
            .query()
            .table_name(&self.tables.agents)
            .consistent_read(true)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(org_id.to_string()))
            .expression_attribute_values(":prefix", s(AGENT_SK_PREFIX));
        let items = Self::query_all(query).await?;
        let mut agents = items
            .iter()
            .map(agent_from)
            .collect::<StoreResult<Vec<_>>>()?;
        agents.sort_by_key(|agent| (agent.created_at, agent.agent_id));
        Ok(agents)
    }
}

impl DynamoStore {
    /// The items of the organization's partition of the orgs table whose sort key starts with
    /// `prefix`: a consistent `Query`, one request per 1 MB page.
    async fn org_items_by_prefix(
        &self,
        org_id: Uuid,
        prefix: &str,
    ) -> StoreResult<Vec<crate::keys::Item>> {
        let query = self
            .client
            .query()
            .table_name(&self.tables.orgs)
            .consistent_read(true)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#sk", SK)
            .expression_attribute_values(":pk", s(org_id.to_string()))
            .expression_attribute_values(":prefix", s(prefix));
        Self::query_all(query).await
    }
}

#[async_trait]
impl TrustedIssuerReader for DynamoStore {
    /// One consistent `GetItem`.
    async fn get_trusted_issuer(
        &self,
        org_id: Uuid,
        issuer_id: Uuid,
    ) -> StoreResult<Option<TrustedIssuer>> {
        let key = pk_sk(org_id.to_string(), &trusted_issuer_sk(issuer_id));
        self.get_item(&self.tables.orgs, key)
            .await?
            .map(|item| trusted_issuer_from(&item))
            .transpose()
    }

    /// A consistent `Query` of the orgs table (begins_with `TRUSTED_ISSUER#`).
    async fn list_trusted_issuers(&self, org_id: Uuid) -> StoreResult<Vec<TrustedIssuer>> {
        let items = self
            .org_items_by_prefix(org_id, TRUSTED_ISSUER_SK_PREFIX)
            .await?;
        let mut issuers = items
            .iter()
            .map(trusted_issuer_from)
            .collect::<StoreResult<Vec<_>>>()?;
        issuers.sort_by_key(|issuer| (issuer.created_at, issuer.issuer_id));
        Ok(issuers)
    }
}

#[async_trait]
impl ResourceReader for DynamoStore {
    /// One consistent `GetItem`.
    async fn get_resource(&self, org_id: Uuid, resource_id: Uuid) -> StoreResult<Option<Resource>> {
        let key = pk_sk(org_id.to_string(), &resource_sk(resource_id));
        self.get_item(&self.tables.orgs, key)
            .await?
            .map(|item| resource_from(&item))
            .transpose()
    }

    /// A consistent `Query` of the orgs table (begins_with `RESOURCE#`), one request per 1 MB
    /// page.
    async fn list_resources(&self, org_id: Uuid) -> StoreResult<Vec<Resource>> {
        let items = self.org_items_by_prefix(org_id, RESOURCE_SK_PREFIX).await?;
        let mut resources = items
            .iter()
            .map(resource_from)
            .collect::<StoreResult<Vec<_>>>()?;
        resources.sort_by_key(|resource| (resource.created_at, resource.resource_id));
        Ok(resources)
    }

    /// One consistent `GetItem` of the claim (`IDENTIFIER#<identifier>`).
    async fn resource_by_identifier(
        &self,
        org_id: Uuid,
        identifier: &str,
    ) -> StoreResult<Option<ResourceTarget>> {
        let key = pk_sk(org_id.to_string(), &identifier_sk(identifier));
        self.get_item(&self.tables.orgs, key)
            .await?
            .map(|item| target_from(&item))
            .transpose()
    }
}

#[async_trait]
impl CredentialReader for DynamoStore {
    /// One consistent `GetItem` by client id.
    async fn credential_by_client_id(&self, client_id: Uuid) -> StoreResult<Option<Credential>> {
        let key = HashMap::from([(PK.to_owned(), s(client_id.to_string()))]);
        self.get_item(&self.tables.credentials, key)
            .await?
            .map(|item| credential_from(&item))
            .transpose()
    }

    /// Two round trips: a `Query` of the agent index finds the client id (eventually
    /// consistent), then a consistent `GetItem` reads the authoritative record.
    async fn get_credential(
        &self,
        org_id: Uuid,
        agent_id: Uuid,
        credential_id: Uuid,
    ) -> StoreResult<Option<Credential>> {
        let found = self
            .client
            .query()
            .table_name(&self.tables.credentials)
            .index_name(CREDENTIALS_BY_AGENT_INDEX)
            .key_condition_expression("#agent = :agent AND #credential = :credential")
            .expression_attribute_names("#agent", AGENT_KEY)
            .expression_attribute_names("#credential", CREDENTIAL_ID)
            .expression_attribute_values(":agent", s(agent_key(org_id, agent_id)))
            .expression_attribute_values(":credential", s(credential_id.to_string()))
            .send()
            .await
            .map_err(|err| sdk_error("Query", err))?;
        let Some(indexed) = found.items().first() else {
            return Ok(None);
        };
        let client_id = ItemReader::new(indexed, "credential").uuid(PK)?;
        let credential = self.credential_by_client_id(client_id).await?;
        Ok(credential.filter(|c| {
            c.org_id == org_id && c.agent_id == agent_id && c.credential_id == credential_id
        }))
    }

    /// A `Query` of the agent index, one request per 1 MB page. Eventually consistent: a
    /// credential written a moment ago may be missing or show its previous version.
    async fn list_credentials(&self, org_id: Uuid, agent_id: Uuid) -> StoreResult<Vec<Credential>> {
        let query = self
            .client
            .query()
            .table_name(&self.tables.credentials)
            .index_name(CREDENTIALS_BY_AGENT_INDEX)
            .key_condition_expression("#agent = :agent")
            .expression_attribute_names("#agent", AGENT_KEY)
            .expression_attribute_values(":agent", s(agent_key(org_id, agent_id)));
        let items = Self::query_all(query).await?;
        let mut credentials = items
            .iter()
            .map(credential_from)
            .collect::<StoreResult<Vec<_>>>()?;
        credentials.sort_by_key(|c| (c.created_at, c.credential_id));
        Ok(credentials)
    }
}

#[async_trait]
impl RevocationReader for DynamoStore {
    /// One consistent `BatchGetItem` over the revoked-tokens and agents tables (repeated only
    /// for keys DynamoDB returns unprocessed under throttling).
    async fn token_standing(
        &self,
        jtis: &[String],
        org_id: Uuid,
        agents: &[Uuid],
    ) -> StoreResult<(bool, Vec<Option<Agent>>)> {
        let revoked_table = &self.tables.revoked_tokens;
        let agents_table = &self.tables.agents;
        // A batch may not name a key twice; a chain may (an agent acting for itself further
        // up, a token exchanged twice from one subject token).
        let unique_jtis: std::collections::BTreeSet<&String> = jtis.iter().collect();
        let unique_agents: std::collections::BTreeSet<&Uuid> = agents.iter().collect();
        let revoked_keys = unique_jtis
            .into_iter()
            .fold(KeysAndAttributes::builder(), |keys, jti| {
                keys.keys(HashMap::from([(JTI.to_owned(), s(jti.clone()))]))
            })
            .consistent_read(true)
            .build()
            .map_err(build_error)?;
        let agent_keys = unique_agents
            .into_iter()
            .fold(KeysAndAttributes::builder(), |keys, agent_id| {
                keys.keys(pk_sk(org_id.to_string(), &agent_sk(*agent_id)))
            })
            .consistent_read(true)
            .build()
            .map_err(build_error)?;
        let mut found = self
            .batch_get(HashMap::from([
                (revoked_table.clone(), revoked_keys),
                (agents_table.clone(), agent_keys),
            ]))
            .await?;
        let revoked = found
            .remove(revoked_table)
            .is_some_and(|items| !items.is_empty());
        let read: Vec<Agent> = found
            .remove(agents_table)
            .unwrap_or_default()
            .iter()
            .map(agent_from)
            .collect::<StoreResult<_>>()?;
        let in_order = agents
            .iter()
            .map(|id| read.iter().find(|agent| agent.agent_id == *id).cloned())
            .collect();
        Ok((revoked, in_order))
    }

    /// One consistent `GetItem` that projects only the key.
    async fn is_token_revoked(&self, jti: &str) -> StoreResult<bool> {
        let output = self
            .client
            .get_item()
            .table_name(&self.tables.revoked_tokens)
            .key(JTI, s(jti))
            .consistent_read(true)
            .projection_expression("#jti")
            .expression_attribute_names("#jti", JTI)
            .send()
            .await
            .map_err(|err| sdk_error("GetItem", err))?;
        Ok(output.item.is_some())
    }
}

#[async_trait]
impl ThrottleReader for DynamoStore {
    /// One `UpdateItem` that adds and returns the new count.
    async fn add_tally(&self, key: &str, expires_at: DateTime<Utc>) -> StoreResult<u64> {
        let output = self
            .client
            .update_item()
            .table_name(&self.tables.throttle)
            .key(PK, s(key))
            .update_expression("ADD #count :one SET #ttl = :ttl, #time = :time")
            .expression_attribute_names("#count", COUNT)
            .expression_attribute_names("#ttl", EXPIRES_AT)
            .expression_attribute_names("#time", "expiresAtTime")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":ttl", n(ttl_seconds(&expires_at)))
            .expression_attribute_values(":time", time(&expires_at))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|err| sdk_error("UpdateItem", err))?;
        let attributes = output.attributes.unwrap_or_default();
        let reader = ItemReader::new(&attributes, "throttle counter");
        Ok(u64::try_from(reader.i64(COUNT)?).unwrap_or(0))
    }

    /// As [`ThrottleReader::client_standing`] without a credential.
    async fn tallies(&self, keys: &[String], now: DateTime<Utc>) -> StoreResult<Vec<u64>> {
        Ok(self.client_standing(None, keys, None, now).await?.tallies)
    }

    /// One consistent `BatchGetItem` over the credentials, throttle and orgs tables (repeated
    /// only for keys DynamoDB returns unprocessed under throttling). TTL deletes lazily, so
    /// expired counters are skipped here.
    async fn client_standing(
        &self,
        client_id: Option<Uuid>,
        keys: &[String],
        resource: Option<(Uuid, &str)>,
        now: DateTime<Utc>,
    ) -> StoreResult<ClientStanding> {
        let throttle_table = &self.tables.throttle;
        let credentials_table = &self.tables.credentials;
        let orgs_table = &self.tables.orgs;
        let mut unique: Vec<&String> = keys.iter().collect();
        unique.sort();
        unique.dedup();
        let mut request = HashMap::new();
        if !unique.is_empty() {
            let mut throttle_keys = KeysAndAttributes::builder().consistent_read(true);
            for key in unique {
                throttle_keys =
                    throttle_keys.keys(HashMap::from([(PK.to_owned(), s(key.clone()))]));
            }
            request.insert(
                throttle_table.clone(),
                throttle_keys.build().map_err(build_error)?,
            );
        }
        if let Some(id) = client_id {
            let credential_keys = KeysAndAttributes::builder()
                .keys(HashMap::from([(PK.to_owned(), s(id.to_string()))]))
                .consistent_read(true)
                .build()
                .map_err(build_error)?;
            request.insert(credentials_table.clone(), credential_keys);
        }
        if let Some((org_id, identifier)) = resource {
            let claim_keys = KeysAndAttributes::builder()
                .keys(pk_sk(org_id.to_string(), &identifier_sk(identifier)))
                .consistent_read(true)
                .build()
                .map_err(build_error)?;
            request.insert(orgs_table.clone(), claim_keys);
        }
        if request.is_empty() {
            return Ok(ClientStanding {
                credential: None,
                tallies: vec![0; keys.len()],
                resource: None,
            });
        }
        let mut found = self.batch_get(request).await?;
        let mut counts: HashMap<String, u64> = HashMap::new();
        for item in found.remove(throttle_table).unwrap_or_default() {
            let reader = ItemReader::new(&item, "throttle counter");
            if reader.time("expiresAtTime")? > now {
                counts.insert(
                    reader.s(PK)?.to_owned(),
                    u64::try_from(reader.i64(COUNT)?).unwrap_or(0),
                );
            }
        }
        let credential = found
            .remove(credentials_table)
            .and_then(|items| items.into_iter().next())
            .map(|item| credential_from(&item))
            .transpose()?;
        let resource = found
            .remove(orgs_table)
            .and_then(|items| items.into_iter().next())
            .map(|item| target_from(&item))
            .transpose()?;
        Ok(ClientStanding {
            credential,
            tallies: keys
                .iter()
                .map(|k| counts.get(k).copied().unwrap_or(0))
                .collect(),
            resource,
        })
    }
}

#[async_trait]
impl AuditReader for DynamoStore {
    /// `Query` requests, newest first, on the table (consistent) or on the agent or action index
    /// (eventually consistent). The window and the cursor are key conditions; outcome, TTL and
    /// the second of agent and action are filters. The first request asks for `limit + 1` items,
    /// the one extra deciding `next`; if filters drop items, further requests continue from
    /// `LastEvaluatedKey` with a limit that doubles each time (at most 1000), so a selective
    /// filter costs few round trips and a page never reads more than about twice what it
    /// evaluates. Usually one round trip.
    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<AuditPage> {
        let empty = AuditPage {
            events: Vec::new(),
            next: None,
        };
        if query.limit == 0 {
            return Ok(empty);
        }
        let org = query.org_id;
        let (index, partition_attribute, partition) = match (query.agent_id, query.action) {
            (Some(agent_id), _) => (
                Some(AUDIT_BY_AGENT_INDEX),
                AGENT_KEY,
                agent_key(org, agent_id),
            ),
            (None, Some(action)) => (
                Some(AUDIT_BY_ACTION_INDEX),
                ACTION_KEY,
                action_key(org, action),
            ),
            (None, None) => (None, PK, org.to_string()),
        };
        let low = audit_sk_floor(&query.not_before);
        // Upper bound, inclusive (BETWEEN is the only two-sided key condition): the last key of
        // the `until` millisecond, or the cursor's own key, which the loop below skips.
        let after_key = query
            .after
            .map(|after| audit_sk(&after.timestamp, after.event_id));
        let high = [
            query.until.as_ref().map(audit_sk_ceiling),
            after_key.clone(),
        ]
        .into_iter()
        .flatten()
        .min();

        let mut expressions = Expressions::condition(match high {
            Some(_) => "#p = :p AND #sk BETWEEN :low AND :high",
            None => "#p = :p AND #sk >= :low",
        })
        .name("#p", partition_attribute)
        .name("#sk", SK)
        .value(":p", s(partition))
        .value(":low", s(low.clone()));
        if let Some(high) = &high {
            if *high < low {
                return Ok(empty);
            }
            expressions = expressions.value(":high", s(high.clone()));
        }
        // TTL deletes lazily, so expired events are filtered out here; the exact check below
        // compares the full-precision expiry.
        let mut filters = vec!["#expiresAt > :now"];
        expressions = expressions
            .name("#expiresAt", EXPIRES_AT)
            .value(":now", n(query.now.timestamp()));
        if let Some(outcome) = query.outcome {
            filters.push("#outcome = :outcome");
            expressions = expressions
                .name("#outcome", OUTCOME)
                .value(":outcome", s(outcome.as_str()));
        }
        if let Some(actor) = query.actor_agent_id {
            filters.push(
                "(#actor.#actorAgent = :actorAgent OR contains(#actor.#actorChain, :actorAgent))",
            );
            expressions = expressions
                .name("#actor", "actor")
                .name("#actorAgent", "agentId")
                .name("#actorChain", ACTOR_CHAIN)
                .value(":actorAgent", s(actor.to_string()));
        }
        if let (Some(_), Some(action)) = (query.agent_id, query.action) {
            filters.push("#action = :action");
            expressions = expressions
                .name("#action", ACTION)
                .value(":action", s(action.as_str()));
        }

        let want = query.limit.saturating_add(1);
        let mut found: Vec<AuditEvent> = Vec::with_capacity(want.min(MAX_AUDIT_QUERY_LIMIT));
        let mut start_key = None;
        // With a cursor, the cursor's own item is read and skipped: one more item, so that a page
        // after the first still takes one request.
        let mut request_limit = want
            .saturating_add(usize::from(after_key.is_some()))
            .min(MAX_AUDIT_QUERY_LIMIT);
        'pages: loop {
            let output = self
                .client
                .query()
                .table_name(&self.tables.audit)
                .set_index_name(index.map(str::to_owned))
                .consistent_read(index.is_none())
                .scan_index_forward(false)
                .key_condition_expression(expressions.condition.clone().unwrap_or_default())
                .filter_expression(filters.join(" AND "))
                .set_expression_attribute_names(Some(expressions.names.clone()))
                .set_expression_attribute_values(Some(expressions.values.clone()))
                .limit(i32::try_from(request_limit).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start_key)
                .send()
                .await
                .map_err(|err| sdk_error("Query", err))?;
            for item in output.items() {
                let event = audit_from(item)?;
                if after_key.as_deref() == Some(audit_sk(&event.timestamp, event.event_id).as_str())
                {
                    continue;
                }
                if event_matches(query, &event) {
                    found.push(event);
                    if found.len() == want {
                        break 'pages;
                    }
                }
            }
            match output.last_evaluated_key.filter(|key| !key.is_empty()) {
                Some(key) => start_key = Some(key),
                None => break,
            }
            request_limit = (request_limit * 2)
                .max(want - found.len())
                .min(MAX_AUDIT_QUERY_LIMIT);
        }

        let next = if found.len() > query.limit {
            found.truncate(query.limit);
            found.last().map(|event| AuditPosition {
                timestamp: event.timestamp,
                event_id: event.event_id,
            })
        } else {
            None
        };
        Ok(AuditPage {
            events: found,
            next,
        })
    }

    /// One `Query` of the event-id index (eventually consistent: events never change, so only
    /// an event written a moment ago can be missed).
    async fn get_audit_event(
        &self,
        org_id: Uuid,
        event_id: Uuid,
        not_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<AuditEvent>> {
        let output = self
            .client
            .query()
            .table_name(&self.tables.audit)
            .index_name(AUDIT_BY_EVENT_ID_INDEX)
            .key_condition_expression("#event = :event")
            .expression_attribute_names("#event", EVENT_ID)
            .expression_attribute_values(":event", s(event_id.to_string()))
            .send()
            .await
            .map_err(|err| sdk_error("Query", err))?;
        for item in output.items() {
            let event = audit_from(item)?;
            if event.org_id == org_id && event.timestamp >= not_before && event.expires_at > now {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }
}

/// The exact filter, at full timestamp precision; the key conditions and filter expression only
/// narrow what is read.
fn event_matches(query: &AuditQuery, event: &AuditEvent) -> bool {
    event.org_id == query.org_id
        && event.expires_at > query.now
        && event.timestamp >= query.not_before
        && query.until.is_none_or(|until| event.timestamp <= until)
        && query
            .agent_id
            .is_none_or(|agent| event.subject_agent_id == Some(agent))
        && query.action.is_none_or(|action| event.action == action)
        && query.outcome.is_none_or(|outcome| event.outcome == outcome)
        && query
            .actor_agent_id
            .is_none_or(|actor| event.actor.involves(actor))
}
