//! Writes: the group commit, and the statements each kind of write runs.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, named_params};

use agentidp_core::domain::{Agent, AuditEvent, Credential, Resource, TrustedIssuer};
use agentidp_core::store::{Commit, StoreError, StoreResult, Write};

use crate::codec::{db, millis, to_i64, to_json};
use crate::schema::{
    AGENT_COLUMNS, AUDIT_COLUMNS, CREDENTIAL_COLUMNS, RESOURCE_COLUMNS, TRUSTED_ISSUER_COLUMNS,
};
use crate::{CachedStatements, SqliteStore, poisoned};

/// Group commit: batches that arrive while a transaction is being written wait, and the next
/// transaction carries all of them, each in its own savepoint, so one fsync serves many callers
/// and a batch whose condition fails rolls back alone.
#[derive(Default)]
pub(crate) struct CommitQueue {
    waiting: Vec<(Vec<Write>, tokio::sync::oneshot::Sender<StoreResult<()>>)>,
    /// A writer task is running; new batches only need to join the queue.
    writing: bool,
}

#[async_trait]
impl Commit for SqliteStore {
    async fn commit(&self, writes: Vec<Write>) -> StoreResult<()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queue = self.commits.lock().map_err(|_| {
                StoreError::broken("sqlite commit queue poisoned by an earlier panic")
            })?;
            queue.waiting.push((writes, reply));
            !std::mem::replace(&mut queue.writing, true)
        };
        if lead {
            let (conn, commits) = (Arc::clone(&self.conn), Arc::clone(&self.commits));
            tokio::task::spawn_blocking(move || write_queued(&conn, &commits));
        }
        answer
            .await
            .map_err(|e| StoreError::internal("the sqlite writer stopped before answering", e))?
    }
}

/// Writes queued batches, a group per transaction, until the queue is empty.
fn write_queued(conn: &Mutex<Connection>, commits: &Mutex<CommitQueue>) {
    loop {
        let group = match commits.lock() {
            Ok(mut queue) if queue.waiting.is_empty() => {
                queue.writing = false;
                return;
            }
            Ok(mut queue) => std::mem::take(&mut queue.waiting),
            // Dropping the senders answers every waiter with an error.
            Err(_) => return,
        };
        let (batches, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let results = match conn.lock() {
            Ok(mut conn) => write_group(&mut conn, &batches),
            Err(_) => Err(poisoned()),
        };
        match results {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                // The group's one transaction failed every batch in it: each caller gets that
                // failure as the source of its own error, of the same kind.
                let unavailable = matches!(e, StoreError::Unavailable { .. });
                let failed = Arc::new(e);
                for reply in replies {
                    let context = "the group commit's transaction";
                    let source = Arc::clone(&failed);
                    let _ = reply.send(Err(if unavailable {
                        StoreError::unavailable(context, source)
                    } else {
                        StoreError::internal(context, source)
                    }));
                }
            }
        }
    }
}

/// One transaction for the group; each batch in a savepoint, so its failed condition undoes
/// only its own writes. `Err` when the transaction itself fails: then nothing was written.
fn write_group(conn: &mut Connection, batches: &[Vec<Write>]) -> StoreResult<Vec<StoreResult<()>>> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    let mut results = Vec::with_capacity(batches.len());
    for writes in batches {
        let savepoint = tx.savepoint().map_err(db)?;
        let mut outcome = Ok(());
        for (index, write) in writes.iter().enumerate() {
            match apply(&savepoint, write) {
                Ok(true) => {}
                Ok(false) => {
                    outcome = Err(write.condition_failed(index));
                    break;
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if outcome.is_ok() {
            savepoint.commit().map_err(db)?;
        }
        // A savepoint dropped without commit rolls back to where it began.
        results.push(outcome);
    }
    tx.commit().map_err(db)?;
    Ok(results)
}

/// Performs one write inside the batch's transaction; `false` when its condition does not hold.
fn apply(tx: &Connection, write: &Write) -> StoreResult<bool> {
    let changed = match write {
        Write::CreateOrg(org) => tx.cached_execute(
            "INSERT INTO organizations (org_id, name, plan, created_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            (org.org_id.to_string(), &org.name, org.plan.as_str(), millis(&org.created_at)),
        ).map_err(db)?,
        Write::SetPlan { org_id, plan } => tx.cached_execute(
            "UPDATE organizations SET plan = ?2 WHERE org_id = ?1",
            (org_id.to_string(), plan.as_str()),
        ).map_err(db)?,
        Write::PutAgent { agent, expected_version } => put_agent(tx, agent, *expected_version)?,
        Write::ClaimAgentName { org_id, name_key, agent_id } => tx.cached_execute(
            "INSERT INTO agent_names (org_id, name_key, agent_id) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            (org_id.to_string(), name_key, agent_id.to_string()),
        ).map_err(db)?,
        Write::ReleaseAgentName { org_id, name_key } => {
            tx.cached_execute("DELETE FROM agent_names WHERE org_id = ?1 AND name_key = ?2", (org_id.to_string(), name_key)).map_err(db)?;
            return Ok(true);
        }
        Write::PutCredential { credential, expected_version } => put_credential(tx, credential, *expected_version)?,
        Write::PutResource { resource, expected_version } => put_resource(tx, resource, *expected_version)?,
        Write::PutTrustedIssuer { issuer, expected_version } => put_trusted_issuer(tx, issuer, *expected_version)?,
        Write::DeleteTrustedIssuer { org_id, issuer_id, expected_version } => tx.cached_execute(
            "DELETE FROM trusted_issuers WHERE org_id = ?1 AND issuer_id = ?2 AND version = ?3",
            (org_id.to_string(), issuer_id.to_string(), to_i64(*expected_version)?),
        ).map_err(db)?,
        Write::CountTrustedIssuers { org_id, delta, limit } => count(
            tx,
            "SELECT issuers FROM trusted_issuer_counts WHERE org_id = ?1",
            "INSERT INTO trusted_issuer_counts (org_id, issuers) VALUES (?1, ?2)
             ON CONFLICT (org_id) DO UPDATE SET issuers = excluded.issuers",
            org_id.to_string(),
            *delta,
            *limit,
        )?,
        Write::DeleteResource { org_id, resource_id, expected_version } => tx.cached_execute(
            "DELETE FROM resources WHERE org_id = ?1 AND resource_id = ?2 AND version = ?3",
            (org_id.to_string(), resource_id.to_string(), to_i64(*expected_version)?),
        ).map_err(db)?,
        // Inserted, or rewritten when the claim is already this resource's; another resource's
        // claim leaves no row changed.
        Write::ClaimResourceIdentifier(target) => tx.cached_execute(
            "INSERT INTO resource_identifiers (org_id, identifier, resource_id, scopes) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (org_id, identifier) DO UPDATE SET scopes = excluded.scopes
             WHERE resource_id = excluded.resource_id",
            (target.org_id.to_string(), &target.identifier, target.resource_id.to_string(), to_json(&target.scopes)?),
        ).map_err(db)?,
        Write::ReleaseResourceIdentifier { org_id, identifier } => {
            tx.cached_execute(
                "DELETE FROM resource_identifiers WHERE org_id = ?1 AND identifier = ?2",
                (org_id.to_string(), identifier),
            ).map_err(db)?;
            return Ok(true);
        }
        Write::CountAgents { org_id, delta, limit } => count(
            tx,
            "SELECT agents FROM agent_counts WHERE org_id = ?1",
            "INSERT INTO agent_counts (org_id, agents) VALUES (?1, ?2)
             ON CONFLICT (org_id) DO UPDATE SET agents = excluded.agents",
            org_id.to_string(),
            *delta,
            *limit,
        )?,
        Write::CountResources { org_id, delta, limit } => count(
            tx,
            "SELECT resources FROM resource_counts WHERE org_id = ?1",
            "INSERT INTO resource_counts (org_id, resources) VALUES (?1, ?2)
             ON CONFLICT (org_id) DO UPDATE SET resources = excluded.resources",
            org_id.to_string(),
            *delta,
            *limit,
        )?,
        Write::CountTokenRequest { org_id, month, limit } => {
            let org_id = org_id.to_string();
            let before: i64 = tx
                .cached_row(
                    "SELECT requests FROM token_request_counts WHERE org_id = ?1 AND month = ?2",
                    (&org_id, month),
                    |row| row.get(0),
                )
                .optional().map_err(db)?
                .unwrap_or(0);
            if !below(before, *limit) {
                return Ok(false);
            }
            tx.cached_execute(
                "INSERT INTO token_request_counts (org_id, month, requests) VALUES (?1, ?2, ?3)
                 ON CONFLICT (org_id, month) DO UPDATE SET requests = excluded.requests",
                (&org_id, month, before.saturating_add(1)),
            ).map_err(db)?
        }
        Write::RevokeToken { jti, org_id, expires_at } => {
            tx.cached_execute(
                "INSERT INTO revoked_tokens (jti, org_id, expires_at_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                (jti, org_id.to_string(), millis(expires_at)),
            ).map_err(db)?;
            return Ok(true);
        }
        Write::UseClientAssertion {
            client_id,
            jti,
            expires_at,
        } => tx.cached_execute(
            "INSERT INTO used_assertions (key, expires_at_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            (format!("{client_id} {jti}"), millis(expires_at)),
        ).map_err(db)?,
        // Client ids are uuids, so the prefix keeps the two kinds of key apart.
        Write::UseDpopProof {
            key_thumbprint,
            jti,
            expires_at,
        } => tx.cached_execute(
            "INSERT INTO used_assertions (key, expires_at_ms) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            (format!("dpop {key_thumbprint} {jti}"), millis(expires_at)),
        ).map_err(db)?,
        Write::Audit(event) => insert_audit(tx, event)?,
        // Keys name their window, so a counter never outlives the window it counts.
        Write::Tally { key, expires_at } => tx.cached_execute(
            "INSERT INTO tallies (key, count, expires_at_ms) VALUES (?1, 1, ?2) \
             ON CONFLICT (key) DO UPDATE SET count = count + 1, expires_at_ms = excluded.expires_at_ms",
            (key, millis(expires_at)),
        ).map_err(db)?,
    };
    Ok(changed == 1)
}

/// Moves an organization's counter (read by `select`, written by `upsert`) by `delta`, never
/// below zero; an increase only while the count is below `limit`. Rows changed: 0 when refused.
fn count(
    tx: &Connection,
    select: &str,
    upsert: &str,
    org_id: String,
    delta: i64,
    limit: u64,
) -> StoreResult<usize> {
    let before: i64 = tx
        .cached_row(select, [&org_id], |row| row.get(0))
        .optional()
        .map_err(db)?
        .unwrap_or(0);
    if delta > 0 && !below(before, limit) {
        return Ok(0);
    }
    tx.cached_execute(upsert, (&org_id, before.saturating_add(delta).max(0)))
        .map_err(db)
}

fn below(count: i64, limit: u64) -> bool {
    !u64::try_from(count).is_ok_and(|count| count >= limit)
}

fn put_agent(tx: &Connection, agent: &Agent, expected_version: Option<u64>) -> StoreResult<usize> {
    let org_id = agent.org_id.to_string();
    let agent_id = agent.agent_id.to_string();
    let capabilities = to_json(&agent.capabilities)?;
    let scopes = to_json(&agent.scopes)?;
    let metadata = to_json(&agent.metadata)?;
    let active_credentials = to_i64(agent.active_credentials)?;
    let version = to_i64(agent.version)?;
    let delegation = agent.delegation.as_ref().map(to_json).transpose()?;
    let values = named_params! {
        ":org_id": org_id,
        ":agent_id": agent_id,
        ":name": agent.name,
        ":description": agent.description,
        ":owner": agent.owner,
        ":capabilities": capabilities,
        ":scopes": scopes,
        ":metadata": metadata,
        ":status": agent.status.as_str(),
        ":created_at_ms": millis(&agent.created_at),
        ":updated_at_ms": millis(&agent.updated_at),
        ":decommissioned_at_ms": agent.decommissioned_at.as_ref().map(millis),
        ":active_credentials": active_credentials,
        ":version": version,
        ":delegation": delegation,
        ":tokens_not_before_ms": agent.tokens_not_before.as_ref().map(millis),
        ":require_dpop": agent.require_dpop,
    };
    let Some(expected) = expected_version else {
        return tx.cached_execute(
            &format!(
                "INSERT INTO agents ({AGENT_COLUMNS}) VALUES (:org_id, :agent_id, :name, :description, :owner, \
                 :capabilities, :scopes, :metadata, :status, :created_at_ms, :updated_at_ms, :decommissioned_at_ms, \
                 :active_credentials, :version, :delegation, :tokens_not_before_ms, :require_dpop) ON CONFLICT DO NOTHING"
            ),
            values,
        ).map_err(db);
    };
    let expected = to_i64(expected)?;
    let mut with_expected = values.to_vec();
    with_expected.push((":expected_version", &expected));
    tx.cached_execute(
        "UPDATE agents SET name = :name, description = :description, owner = :owner, \
         capabilities = :capabilities, scopes = :scopes, metadata = :metadata, status = :status, \
         created_at_ms = :created_at_ms, updated_at_ms = :updated_at_ms, \
         decommissioned_at_ms = :decommissioned_at_ms, active_credentials = :active_credentials, version = :version, \
         delegation = :delegation, tokens_not_before_ms = :tokens_not_before_ms, \
         require_dpop = :require_dpop \
         WHERE org_id = :org_id AND agent_id = :agent_id AND version = :expected_version",
        with_expected.as_slice(),
    ).map_err(db)
}

fn put_resource(
    tx: &Connection,
    resource: &Resource,
    expected_version: Option<u64>,
) -> StoreResult<usize> {
    let org_id = resource.org_id.to_string();
    let resource_id = resource.resource_id.to_string();
    let scopes = to_json(&resource.scopes)?;
    let version = to_i64(resource.version)?;
    let values = named_params! {
        ":org_id": org_id,
        ":resource_id": resource_id,
        ":identifier": resource.identifier,
        ":name": resource.name,
        ":description": resource.description,
        ":scopes": scopes,
        ":created_at_ms": millis(&resource.created_at),
        ":updated_at_ms": millis(&resource.updated_at),
        ":version": version,
    };
    let Some(expected) = expected_version else {
        return tx
            .cached_execute(
                &format!(
                    "INSERT INTO resources ({RESOURCE_COLUMNS}) VALUES (:org_id, :resource_id, :identifier, \
                     :name, :description, :scopes, :created_at_ms, :updated_at_ms, :version) ON CONFLICT DO NOTHING"
                ),
                values,
            )
            .map_err(db);
    };
    let expected = to_i64(expected)?;
    let mut with_expected = values.to_vec();
    with_expected.push((":expected_version", &expected));
    tx.cached_execute(
        "UPDATE resources SET identifier = :identifier, name = :name, description = :description, \
         scopes = :scopes, created_at_ms = :created_at_ms, updated_at_ms = :updated_at_ms, version = :version \
         WHERE org_id = :org_id AND resource_id = :resource_id AND version = :expected_version",
        with_expected.as_slice(),
    )
    .map_err(db)
}

fn put_trusted_issuer(
    tx: &Connection,
    issuer: &TrustedIssuer,
    expected_version: Option<u64>,
) -> StoreResult<usize> {
    let org_id = issuer.org_id.to_string();
    let issuer_id = issuer.issuer_id.to_string();
    let public_keys = issuer.keys.to_json();
    let version = to_i64(issuer.version)?;
    let values = named_params! {
        ":org_id": org_id,
        ":issuer_id": issuer_id,
        ":issuer": issuer.issuer,
        ":audience": issuer.audience,
        ":public_keys": public_keys,
        ":description": issuer.description,
        ":created_at_ms": millis(&issuer.created_at),
        ":updated_at_ms": millis(&issuer.updated_at),
        ":version": version,
    };
    let Some(expected) = expected_version else {
        return tx
            .cached_execute(
                &format!(
                    "INSERT INTO trusted_issuers ({TRUSTED_ISSUER_COLUMNS}) VALUES (:org_id, :issuer_id, \
                     :issuer, :audience, :public_keys, :description, :created_at_ms, :updated_at_ms, :version) \
                     ON CONFLICT DO NOTHING"
                ),
                values,
            )
            .map_err(db);
    };
    let expected = to_i64(expected)?;
    let mut with_expected = values.to_vec();
    with_expected.push((":expected_version", &expected));
    tx.cached_execute(
        "UPDATE trusted_issuers SET issuer = :issuer, audience = :audience, public_keys = :public_keys, \
         description = :description, created_at_ms = :created_at_ms, updated_at_ms = :updated_at_ms, \
         version = :version WHERE org_id = :org_id AND issuer_id = :issuer_id AND version = :expected_version",
        with_expected.as_slice(),
    )
    .map_err(db)
}

fn put_credential(
    tx: &Connection,
    credential: &Credential,
    expected_version: Option<u64>,
) -> StoreResult<usize> {
    let credential_id = credential.credential_id.to_string();
    let client_id = credential.client_id.to_string();
    let agent_id = credential.agent_id.to_string();
    let org_id = credential.org_id.to_string();
    let version = to_i64(credential.version)?;
    let agent_scopes = to_json(&credential.agent_scopes)?;
    let public_keys = credential.proof.stored_document();
    let agent_may_act = if credential.agent_may_act.is_empty() {
        None
    } else {
        Some(to_json(&credential.agent_may_act)?)
    };
    let values = named_params! {
        ":credential_id": credential_id,
        ":client_id": client_id,
        ":agent_id": agent_id,
        ":org_id": org_id,
        ":secret_hash": credential.proof.secret_hash().unwrap_or_default(),
        ":status": credential.status.as_str(),
        ":agent_status": credential.agent_status.as_str(),
        ":created_at_ms": millis(&credential.created_at),
        ":expires_at_ms": credential.expires_at.as_ref().map(millis),
        ":revoked_at_ms": credential.revoked_at.as_ref().map(millis),
        ":rotated_at_ms": credential.rotated_at.as_ref().map(millis),
        ":version": version,
        ":agent_scopes": agent_scopes,
        ":public_keys": public_keys,
        ":agent_may_act": agent_may_act,
        ":agent_requires_dpop": credential.agent_requires_dpop,
    };
    let Some(expected) = expected_version else {
        // A client id already taken by another credential also leaves nothing inserted: the
        // token endpoint's lookup must find exactly one credential.
        return tx.cached_execute(
            &format!(
                "INSERT INTO credentials ({CREDENTIAL_COLUMNS}) VALUES (:credential_id, :client_id, :agent_id, \
                 :org_id, :secret_hash, :status, :agent_status, :created_at_ms, :expires_at_ms, :revoked_at_ms, \
                 :rotated_at_ms, :version, :agent_scopes, :public_keys, :agent_may_act, :agent_requires_dpop) ON CONFLICT DO NOTHING"
            ),
            values,
        ).map_err(db);
    };
    let expected = to_i64(expected)?;
    let mut with_expected = values.to_vec();
    with_expected.push((":expected_version", &expected));
    // UPDATE has no ON CONFLICT DO NOTHING; OR IGNORE turns a client id taken by another
    // credential into "no row changed", i.e. a failed condition, instead of an error.
    tx.cached_execute(
        "UPDATE OR IGNORE credentials SET client_id = :client_id, agent_id = :agent_id, org_id = :org_id, \
         secret_hash = :secret_hash, status = :status, agent_status = :agent_status, \
         created_at_ms = :created_at_ms, expires_at_ms = :expires_at_ms, revoked_at_ms = :revoked_at_ms, \
         rotated_at_ms = :rotated_at_ms, version = :version, agent_scopes = :agent_scopes, \
         public_keys = :public_keys, agent_may_act = :agent_may_act, \
         agent_requires_dpop = :agent_requires_dpop \
         WHERE credential_id = :credential_id AND version = :expected_version",
        with_expected.as_slice(),
    ).map_err(db)
}

fn insert_audit(tx: &Connection, event: &AuditEvent) -> StoreResult<usize> {
    let actor = to_json(&event.actor)?;
    let details = to_json(&event.details)?;
    tx.cached_execute(
        &format!(
            "INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES (:event_id, :org_id, :timestamp_ms, :action, \
             :outcome, :actor, :subject_agent_id, :resource, :request_id, :source_ip, :user_agent, :details, \
             :expires_at_ms)"
        ),
        named_params! {
            ":event_id": event.event_id.to_string(),
            ":org_id": event.org_id.to_string(),
            ":timestamp_ms": millis(&event.timestamp),
            ":action": event.action.as_str(),
            ":outcome": event.outcome.as_str(),
            ":actor": actor,
            ":subject_agent_id": event.subject_agent_id.map(|id| id.to_string()),
            ":resource": event.resource,
            ":request_id": event.request_id,
            ":source_ip": event.source_ip,
            ":user_agent": event.user_agent,
            ":details": details,
            ":expires_at_ms": millis(&event.expires_at),
        },
    ).map_err(db)
}
