//! Reads: the store's reader traits.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use uuid::Uuid;

use agentidp_core::domain::{
    Agent, AuditEvent, Credential, Organization, Resource, ResourceTarget, TrustedIssuer,
};
use agentidp_core::store::{
    AgentReader, AuditPage, AuditPosition, AuditQuery, AuditReader, ClientStanding,
    CredentialReader, OrgReader, ResourceReader, RevocationReader, StoreResult, ThrottleReader,
    TrustedIssuerReader, Usage,
};

use crate::codec::{
    RawAgent, RawAuditEvent, RawCredential, RawOrg, RawResource, RawTarget, RawTrustedIssuer, db,
    millis, raw_agent, raw_audit, raw_credential, raw_org, raw_resource, raw_target,
    raw_trusted_issuer, to_i64, to_u64,
};
use crate::schema::{
    AGENT_COLUMNS, AUDIT_COLUMNS, CREDENTIAL_COLUMNS, RESOURCE_COLUMNS, TRUSTED_ISSUER_COLUMNS,
};
use crate::{CachedStatements, SqliteStore};

#[async_trait]
impl OrgReader for SqliteStore {
    async fn get_org(&self, org_id: Uuid) -> StoreResult<Option<Organization>> {
        self.read_point(move |conn| {
            conn.cached_row(
                "SELECT org_id, name, plan, created_at_ms FROM organizations WHERE org_id = ?1",
                [org_id.to_string()],
                raw_org,
            )
            .optional()
            .map_err(db)?
            .map(RawOrg::decode)
            .transpose()
        })
        .await
    }

    async fn list_orgs(&self) -> StoreResult<Vec<Organization>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT org_id, name, plan, created_at_ms FROM organizations ORDER BY created_at_ms, org_id").map_err(db)?;
            let rows = stmt.query_map([], raw_org).map_err(db)?;
            rows.map(|row| row.map_err(db)?.decode()).collect()
        })
        .await
    }

    async fn usage(&self, org_id: Uuid, month: &str) -> StoreResult<Usage> {
        let month = month.to_owned();
        self.read_point(move |conn| {
            let org_id = org_id.to_string();
            let agents: i64 = conn
                .cached_row(
                    "SELECT agents FROM agent_counts WHERE org_id = ?1",
                    [&org_id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db)?
                .unwrap_or(0);
            let resources: i64 = conn
                .cached_row(
                    "SELECT resources FROM resource_counts WHERE org_id = ?1",
                    [&org_id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db)?
                .unwrap_or(0);
            let trusted_issuers: i64 = conn
                .cached_row(
                    "SELECT issuers FROM trusted_issuer_counts WHERE org_id = ?1",
                    [&org_id],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db)?
                .unwrap_or(0);
            let token_requests: i64 = conn
                .cached_row(
                    "SELECT requests FROM token_request_counts WHERE org_id = ?1 AND month = ?2",
                    (&org_id, &month),
                    |row| row.get(0),
                )
                .optional()
                .map_err(db)?
                .unwrap_or(0);
            Ok(Usage {
                agents: to_u64(agents)?,
                token_requests: to_u64(token_requests)?,
                resources: to_u64(resources)?,
                trusted_issuers: to_u64(trusted_issuers)?,
            })
        })
        .await
    }
}

#[async_trait]
impl AgentReader for SqliteStore {
    async fn get_agent(&self, org_id: Uuid, agent_id: Uuid) -> StoreResult<Option<Agent>> {
        self.read_point(move |conn| {
            conn.cached_row(
                &format!("SELECT {AGENT_COLUMNS} FROM agents WHERE org_id = ?1 AND agent_id = ?2"),
                (org_id.to_string(), agent_id.to_string()),
                raw_agent,
            )
            .optional()
            .map_err(db)?
            .map(RawAgent::decode)
            .transpose()
        })
        .await
    }

    async fn list_agents(&self, org_id: Uuid) -> StoreResult<Vec<Agent>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE org_id = ?1 ORDER BY created_at_ms, agent_id"
            )).map_err(db)?;
            let rows = stmt.query_map([org_id.to_string()], raw_agent).map_err(db)?;
            rows.map(|row| row.map_err(db)?.decode()).collect()
        })
        .await
    }
}

#[async_trait]
impl TrustedIssuerReader for SqliteStore {
    async fn get_trusted_issuer(
        &self,
        org_id: Uuid,
        issuer_id: Uuid,
    ) -> StoreResult<Option<TrustedIssuer>> {
        self.read_point(move |conn| {
            conn.cached_row(
                &format!(
                    "SELECT {TRUSTED_ISSUER_COLUMNS} FROM trusted_issuers WHERE org_id = ?1 AND issuer_id = ?2"
                ),
                (org_id.to_string(), issuer_id.to_string()),
                raw_trusted_issuer,
            )
            .optional()
            .map_err(db)?
            .map(RawTrustedIssuer::decode)
            .transpose()
        })
        .await
    }

    async fn list_trusted_issuers(&self, org_id: Uuid) -> StoreResult<Vec<TrustedIssuer>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {TRUSTED_ISSUER_COLUMNS} FROM trusted_issuers WHERE org_id = ?1 \
                     ORDER BY created_at_ms, issuer_id"
                ))
                .map_err(db)?;
            let rows = stmt
                .query_map([org_id.to_string()], raw_trusted_issuer)
                .map_err(db)?;
            rows.map(|row| row.map_err(db)?.decode()).collect()
        })
        .await
    }
}

#[async_trait]
impl ResourceReader for SqliteStore {
    async fn get_resource(&self, org_id: Uuid, resource_id: Uuid) -> StoreResult<Option<Resource>> {
        self.read_point(move |conn| {
            conn.cached_row(
                &format!(
                    "SELECT {RESOURCE_COLUMNS} FROM resources WHERE org_id = ?1 AND resource_id = ?2"
                ),
                (org_id.to_string(), resource_id.to_string()),
                raw_resource,
            )
            .optional()
            .map_err(db)?
            .map(RawResource::decode)
            .transpose()
        })
        .await
    }

    async fn list_resources(&self, org_id: Uuid) -> StoreResult<Vec<Resource>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {RESOURCE_COLUMNS} FROM resources WHERE org_id = ?1 \
                     ORDER BY created_at_ms, resource_id"
                ))
                .map_err(db)?;
            let rows = stmt
                .query_map([org_id.to_string()], raw_resource)
                .map_err(db)?;
            rows.map(|row| row.map_err(db)?.decode()).collect()
        })
        .await
    }

    async fn resource_by_identifier(
        &self,
        org_id: Uuid,
        identifier: &str,
    ) -> StoreResult<Option<ResourceTarget>> {
        let identifier = identifier.to_owned();
        self.read_point(move |conn| read_resource_target(conn, org_id, &identifier))
            .await
    }
}

#[async_trait]
impl CredentialReader for SqliteStore {
    async fn credential_by_client_id(&self, client_id: Uuid) -> StoreResult<Option<Credential>> {
        self.read_point(move |conn| read_credential_by_client_id(conn, client_id))
            .await
    }

    async fn get_credential(
        &self,
        org_id: Uuid,
        agent_id: Uuid,
        credential_id: Uuid,
    ) -> StoreResult<Option<Credential>> {
        self.read_point(move |conn| {
            conn.cached_row(
                &format!(
                    "SELECT {CREDENTIAL_COLUMNS} FROM credentials
                     WHERE credential_id = ?1 AND org_id = ?2 AND agent_id = ?3"
                ),
                (
                    credential_id.to_string(),
                    org_id.to_string(),
                    agent_id.to_string(),
                ),
                raw_credential,
            )
            .optional()
            .map_err(db)?
            .map(RawCredential::decode)
            .transpose()
        })
        .await
    }

    async fn list_credentials(&self, org_id: Uuid, agent_id: Uuid) -> StoreResult<Vec<Credential>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE org_id = ?1 AND agent_id = ?2
                 ORDER BY created_at_ms, credential_id"
            ))
                .map_err(db)?;
            let rows = stmt
                .query_map((org_id.to_string(), agent_id.to_string()), raw_credential)
                .map_err(db)?;
            rows.map(|row| row.map_err(db)?.decode()).collect()
        })
        .await
    }
}

#[async_trait]
impl RevocationReader for SqliteStore {
    async fn token_standing(
        &self,
        jtis: &[String],
        org_id: Uuid,
        agents: &[Uuid],
    ) -> StoreResult<(bool, Vec<Option<Agent>>)> {
        let mut revoked = false;
        for jti in jtis {
            revoked |= self.is_token_revoked(jti).await?;
        }
        let mut found = Vec::with_capacity(agents.len());
        for agent_id in agents {
            found.push(self.get_agent(org_id, *agent_id).await?);
        }
        Ok((revoked, found))
    }

    async fn is_token_revoked(&self, jti: &str) -> StoreResult<bool> {
        let jti = jti.to_owned();
        self.read_point(move |conn| {
            conn.cached_row(
                "SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = ?1)",
                [&jti],
                |row| row.get(0),
            )
            .map_err(db)
        })
        .await
    }
}

#[async_trait]
impl ThrottleReader for SqliteStore {
    async fn client_standing(
        &self,
        client_id: Option<Uuid>,
        keys: &[String],
        resource: Option<(Uuid, &str)>,
        now: DateTime<Utc>,
    ) -> StoreResult<ClientStanding> {
        let keys = keys.to_vec();
        let resource = resource.map(|(org_id, identifier)| (org_id, identifier.to_owned()));
        // One trip to the blocking pool for all three, as a token request makes this read first.
        self.read_point(move |conn| {
            let credential = match client_id {
                Some(id) => read_credential_by_client_id(conn, id)?,
                None => None,
            };
            let resource = match &resource {
                Some((org_id, identifier)) => read_resource_target(conn, *org_id, identifier)?,
                None => None,
            };
            Ok(ClientStanding {
                credential,
                tallies: read_tallies(conn, &keys, now)?,
                resource,
            })
        })
        .await
    }

    async fn add_tally(&self, key: &str, expires_at: DateTime<Utc>) -> StoreResult<u64> {
        let key = key.to_owned();
        self.run_on_writer(move |conn| {
            let count: i64 = conn.cached_row(
                "INSERT INTO tallies (key, count, expires_at_ms) VALUES (?1, 1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET count = count + 1, expires_at_ms = excluded.expires_at_ms \
                 RETURNING count",
                (&key, millis(&expires_at)),
                |row| row.get(0),
            ).map_err(db)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    async fn tallies(&self, keys: &[String], now: DateTime<Utc>) -> StoreResult<Vec<u64>> {
        let keys = keys.to_vec();
        self.read_point(move |conn| read_tallies(conn, &keys, now))
            .await
    }
}

fn read_resource_target(
    conn: &Connection,
    org_id: Uuid,
    identifier: &str,
) -> StoreResult<Option<ResourceTarget>> {
    conn.cached_row(
        "SELECT org_id, identifier, resource_id, scopes FROM resource_identifiers \
         WHERE org_id = ?1 AND identifier = ?2",
        (org_id.to_string(), identifier),
        raw_target,
    )
    .optional()
    .map_err(db)?
    .map(RawTarget::decode)
    .transpose()
}

fn read_credential_by_client_id(
    conn: &Connection,
    client_id: Uuid,
) -> StoreResult<Option<Credential>> {
    conn.cached_row(
        &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE client_id = ?1"),
        [client_id.to_string()],
        raw_credential,
    )
    .optional()
    .map_err(db)?
    .map(RawCredential::decode)
    .transpose()
}

fn read_tallies(conn: &Connection, keys: &[String], now: DateTime<Utc>) -> StoreResult<Vec<u64>> {
    let mut stmt = conn
        .prepare_cached("SELECT count FROM tallies WHERE key = ?1 AND expires_at_ms > ?2")
        .map_err(db)?;
    keys.iter()
        .map(|key| {
            let count: Option<i64> = stmt
                .query_row((key, millis(&now)), |row| row.get(0))
                .optional()
                .map_err(db)?;
            Ok(count.map_or(0, |c| u64::try_from(c).unwrap_or(0)))
        })
        .collect()
}

#[async_trait]
impl AuditReader for SqliteStore {
    async fn query_audit(&self, query: &AuditQuery) -> StoreResult<AuditPage> {
        let query = query.clone();
        self.read(move |conn| {
            let (sql, values) = audit_page_sql(&query)?;
            let mut stmt = conn.prepare_cached(&sql).map_err(db)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(values), raw_audit)
                .map_err(db)?;
            let mut events = rows
                .map(|row| row.map_err(db)?.decode())
                .collect::<StoreResult<Vec<_>>>()?;
            let more = events.len() > query.limit;
            events.truncate(query.limit);
            let next = if more {
                events.last().map(|last| AuditPosition {
                    timestamp: last.timestamp,
                    event_id: last.event_id,
                })
            } else {
                None
            };
            Ok(AuditPage { events, next })
        })
        .await
    }

    async fn get_audit_event(
        &self,
        org_id: Uuid,
        event_id: Uuid,
        not_before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<AuditEvent>> {
        self.read_point(move |conn| {
            conn.cached_row(
                &format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_events
                     WHERE event_id = ?1 AND org_id = ?2 AND timestamp_ms >= ?3 AND expires_at_ms > ?4"
                ),
                (event_id.to_string(), org_id.to_string(), millis(&not_before), millis(&now)),
                raw_audit,
            )
            .optional().map_err(db)?
            .map(RawAuditEvent::decode)
            .transpose()
        })
        .await
    }
}

/// The SQL for one page of `query`, fetching one row beyond the page, which tells exactly whether
/// another page exists.
pub(crate) fn audit_page_sql(query: &AuditQuery) -> StoreResult<(String, Vec<Value>)> {
    // Without statistics the planner prefers the plain time index even when a filter narrows far
    // more, scanning the whole organization's history for a rare agent; so the index is named.
    // `INDEXED BY` also turns an unusable index into an error rather than a silent scan.
    let index = if query.agent_id.is_some() {
        "audit_by_agent"
    } else if query.action.is_some() {
        "audit_by_action"
    } else {
        "audit_by_time"
    };
    // Only the filters that are set become SQL; `(? IS NULL OR col = ?)` would defeat the index.
    let mut sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events INDEXED BY {index}
         WHERE org_id = ? AND timestamp_ms >= ? AND expires_at_ms > ?"
    );
    let mut values = vec![
        Value::Text(query.org_id.to_string()),
        Value::Integer(millis(&query.not_before)),
        Value::Integer(millis(&query.now)),
    ];
    let until = match (&query.until, &query.after) {
        // A later page is bounded by its position, which lies inside the window already; two
        // upper bounds would let the planner pick the looser one and rescan earlier pages.
        (Some(until), Some(after)) if after.timestamp <= *until => None,
        (until, _) => until.as_ref(),
    };
    if let Some(until) = until {
        sql.push_str(" AND timestamp_ms <= ?");
        values.push(Value::Integer(millis(until)));
    }
    if let Some(agent_id) = query.agent_id {
        sql.push_str(" AND subject_agent_id = ?");
        values.push(Value::Text(agent_id.to_string()));
    }
    if let Some(action) = query.action {
        sql.push_str(" AND action = ?");
        values.push(Value::Text(action.as_str().to_owned()));
    }
    if let Some(outcome) = query.outcome {
        sql.push_str(" AND outcome = ?");
        values.push(Value::Text(outcome.as_str().to_owned()));
    }
    if let Some(actor) = query.actor_agent_id {
        // No index: the actor is JSON in the row. The other filters and the time window narrow
        // the rows it is checked on.
        sql.push_str(
            " AND (json_extract(actor, '$.agentId') = ? \
             OR EXISTS (SELECT 1 FROM json_each(actor, '$.actorChain') WHERE value = ?))",
        );
        values.push(Value::Text(actor.to_string()));
        values.push(Value::Text(actor.to_string()));
    }
    if let Some(after) = &query.after {
        sql.push_str(" AND (timestamp_ms, event_id) < (?, ?)");
        values.push(Value::Integer(millis(&after.timestamp)));
        values.push(Value::Text(after.event_id.to_string()));
    }
    sql.push_str(" ORDER BY timestamp_ms DESC, event_id DESC LIMIT ?");
    values.push(Value::Integer(to_i64(query.limit.saturating_add(1))?));
    Ok((sql, values))
}
