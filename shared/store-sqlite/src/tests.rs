//! The crate's unit tests, which reach into its private parts (the writer connection, the audit
//! page's SQL).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, TransactionBehavior};
use uuid::Uuid;

use agentidp_core::domain::{
    Actor, Agent, AgentStatus, AuditAction, AuditEvent, Credential, CredentialProof,
    CredentialStatus, Organization, Outcome, Plan,
};
use agentidp_core::store::{
    AgentReader, AuditPosition, AuditQuery, AuditReader, Commit, CredentialReader, OrgReader,
    RevocationReader, StoreError, ThrottleReader, Write,
};

use crate::SqliteStore;
use crate::codec::db;
use crate::purge::PURGE_KEYS_PER_FIND;
use crate::reads::audit_page_sql;
use crate::schema::SCHEMA_VERSION;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_share_transactions_and_a_failed_one_undoes_only_itself() {
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let org_id = Uuid::new_v4();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                // Every odd batch claims a name that an even one claims too.
                let name_key = format!("name-{}", i / 2);
                store
                    .commit(vec![
                        Write::Tally {
                            key: format!("k-{i}"),
                            expires_at: at(4_000_000_000_000),
                        },
                        Write::ClaimAgentName {
                            org_id,
                            name_key,
                            agent_id: Uuid::new_v4(),
                        },
                    ])
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::ConditionFailed {
                guard: agentidp_core::store::Guard::NameTaken,
                ..
            }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 20);
    let keys: Vec<String> = (0..40).map(|i| format!("k-{i}")).collect();
    let counts = store.tallies(&keys, at(1_000)).await.unwrap();
    assert_eq!(
        counts.iter().sum::<u64>(),
        20,
        "a lost batch's first write was undone with it"
    );
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

fn full_agent(org_id: Uuid) -> Agent {
    Agent {
        agent_id: Uuid::new_v4(),
        org_id,
        name: "Billing Bot ✓".into(),
        description: Some("pays \"invoices\"; DROP TABLE agents".into()),
        owner: Some("ops@example.com".into()),
        capabilities: vec!["pay".into(), "read".into()],
        scopes: vec!["invoices:write".into()],
        metadata: BTreeMap::from([
            ("team".into(), "finance".into()),
            ("empty".into(), String::new()),
        ]),
        status: AgentStatus::Decommissioned,
        created_at: at(1_700_000_000_123),
        updated_at: at(1_700_000_100_456),
        decommissioned_at: Some(at(1_700_000_100_456)),
        active_credentials: 3,
        delegation: None,
        tokens_not_before: None,
        require_dpop: true,
        version: u64::try_from(i64::MAX).unwrap(),
    }
}

fn bare_agent(org_id: Uuid) -> Agent {
    Agent {
        agent_id: Uuid::new_v4(),
        org_id,
        name: "x".into(),
        description: None,
        owner: None,
        capabilities: vec![],
        scopes: vec![],
        metadata: BTreeMap::new(),
        status: AgentStatus::Active,
        created_at: at(-1),
        updated_at: at(0),
        decommissioned_at: None,
        active_credentials: 0,
        delegation: None,
        tokens_not_before: None,
        require_dpop: false,
        version: 0,
    }
}

fn credential(org_id: Uuid, agent_id: Uuid, full: bool) -> Credential {
    Credential {
        credential_id: Uuid::new_v4(),
        client_id: Uuid::new_v4(),
        agent_id,
        org_id,
        proof: CredentialProof::Secret {
            hash: "$2b$04$abcdefghijklmnopqrstuv".into(),
        },
        status: if full {
            CredentialStatus::Revoked
        } else {
            CredentialStatus::Active
        },
        agent_status: if full {
            AgentStatus::Suspended
        } else {
            AgentStatus::Active
        },
        agent_scopes: if full {
            vec!["a:b".into(), "c".into()]
        } else {
            Vec::new()
        },
        agent_may_act: if full {
            vec![Uuid::from_u128(7), Uuid::from_u128(8)]
        } else {
            Vec::new()
        },
        agent_requires_dpop: full,
        created_at: at(1_700_000_000_001),
        expires_at: full.then(|| at(1_800_000_000_002)),
        revoked_at: full.then(|| at(1_700_000_000_003)),
        rotated_at: full.then(|| at(1_700_000_000_004)),
        version: 7,
    }
}

fn event(org_id: Uuid, full: bool) -> AuditEvent {
    let mut details = serde_json::Map::new();
    if full {
        details.insert("scopes".into(), serde_json::json!(["a", "b"]));
        details.insert(
            "nested".into(),
            serde_json::json!({"n": 1.5, "none": null, "yes": true}),
        );
    }
    AuditEvent {
        event_id: Uuid::new_v4(),
        org_id,
        timestamp: at(1_700_000_000_999),
        action: if full {
            AuditAction::TokenDenied
        } else {
            AuditAction::OrganizationCreated
        },
        outcome: if full {
            Outcome::Failure
        } else {
            Outcome::Success
        },
        actor: if full {
            Actor::agent(Uuid::new_v4(), Some(Uuid::new_v4()))
        } else {
            Actor::operator()
        },
        subject_agent_id: full.then(Uuid::new_v4),
        resource: "token/abc".into(),
        request_id: "req-1".into(),
        source_ip: full.then(|| "203.0.113.7".into()),
        user_agent: full.then(|| "curl/8".into()),
        details,
        expires_at: at(1_900_000_000_000),
    }
}

#[tokio::test]
async fn a_purge_deletes_only_what_has_expired_in_every_expiring_table() {
    // File-backed, as the local server runs it: the expired keys are found on a reader.
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("idp.sqlite")).unwrap();
    let org_id = Uuid::new_v4();
    let now = at(1_800_000_000_000);
    // Expiring exactly now counts as expired, as every read already treats it.
    let expiring_at = |expired: bool| {
        if expired {
            now
        } else {
            at(1_800_000_000_000 + 1)
        }
    };
    // More expired audit events than one find collects, so the second find starts where
    // the first stopped, with kept ones among them; some expire a millisecond before now.
    let audit: Vec<AuditEvent> = (0..PURGE_KEYS_PER_FIND + 407)
        .map(|i| AuditEvent {
            expires_at: match i % 50 {
                0 => expiring_at(false),
                n if n % 2 == 0 => expiring_at(true),
                _ => at(1_800_000_000_000 - 1),
            },
            ..event(org_id, false)
        })
        .collect();
    for batch in audit.chunks(100) {
        store
            .commit(batch.iter().cloned().map(Write::Audit).collect())
            .await
            .unwrap();
    }
    let kept_events: Vec<&AuditEvent> = audit.iter().filter(|e| e.expires_at > now).collect();
    assert!(audit.len() - kept_events.len() > PURGE_KEYS_PER_FIND);
    let mut writes = Vec::new();
    for expired in [true, false] {
        writes.push(Write::RevokeToken {
            jti: format!("jti-{expired}"),
            org_id,
            expires_at: expiring_at(expired),
        });
        writes.push(Write::Tally {
            key: format!("tally-{expired}"),
            expires_at: expiring_at(expired),
        });
        writes.push(Write::UseClientAssertion {
            client_id: org_id,
            jti: format!("assertion-{expired}"),
            expires_at: expiring_at(expired),
        });
        writes.push(Write::UseDpopProof {
            key_thumbprint: "thumbprint".into(),
            jti: format!("proof-{expired}"),
            expires_at: expiring_at(expired),
        });
    }
    store.commit(writes).await.unwrap();
    let expired_count = audit.len() - kept_events.len() + 4;

    assert_eq!(
        store.purge_expired(now).await.unwrap(),
        expired_count as u64
    );
    assert_eq!(
        store.purge_expired(now).await.unwrap(),
        0,
        "nothing is left to purge"
    );

    let rows = |table: &str| {
        let conn = store.conn.lock().unwrap();
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get::<_, i64>(0)
        })
        .unwrap()
    };
    assert_eq!(rows("audit_events"), kept_events.len() as i64);
    assert_eq!(
        (
            rows("revoked_tokens"),
            rows("tallies"),
            rows("used_assertions")
        ),
        (1, 1, 2)
    );
    // The kept proof is still used: a second use is refused.
    assert!(
        store
            .commit(vec![Write::UseDpopProof {
                key_thumbprint: "thumbprint".into(),
                jti: "proof-false".into(),
                expires_at: expiring_at(false),
            }])
            .await
            .is_err()
    );
    // The kept assertion is still used: a second use is refused.
    assert!(
        store
            .commit(vec![Write::UseClientAssertion {
                client_id: org_id,
                jti: "assertion-false".into(),
                expires_at: expiring_at(false),
            }])
            .await
            .is_err()
    );
    for kept in kept_events {
        assert!(
            store
                .get_audit_event(org_id, kept.event_id, at(0), at(1))
                .await
                .unwrap()
                .is_some()
        );
    }
    assert!(store.is_token_revoked("jti-false").await.unwrap());
    assert_eq!(
        store.tallies(&["tally-false".into()], at(0)).await.unwrap(),
        [1]
    );
}

#[tokio::test]
async fn every_record_reads_back_equal_to_what_was_written() {
    let store = SqliteStore::in_memory().unwrap();
    let org = Organization {
        org_id: Uuid::new_v4(),
        name: "Acme".into(),
        plan: Plan::Enterprise,
        created_at: at(5),
    };
    let agents = [full_agent(org.org_id), bare_agent(org.org_id)];
    let credentials = [
        credential(org.org_id, agents[0].agent_id, true),
        credential(org.org_id, agents[0].agent_id, false),
    ];
    let events = [event(org.org_id, true), event(org.org_id, false)];
    let mut writes = vec![Write::CreateOrg(org.clone())];
    writes.extend(agents.iter().map(|a| Write::PutAgent {
        agent: a.clone(),
        expected_version: None,
    }));
    writes.extend(credentials.iter().map(|c| Write::PutCredential {
        credential: c.clone(),
        expected_version: None,
    }));
    writes.extend(events.iter().cloned().map(Write::Audit));
    store.commit(writes).await.unwrap();

    assert_eq!(store.get_org(org.org_id).await.unwrap(), Some(org.clone()));
    for agent in &agents {
        assert_eq!(
            store
                .get_agent(org.org_id, agent.agent_id)
                .await
                .unwrap()
                .as_ref(),
            Some(agent)
        );
    }
    for c in &credentials {
        assert_eq!(
            store
                .credential_by_client_id(c.client_id)
                .await
                .unwrap()
                .as_ref(),
            Some(c)
        );
        assert_eq!(
            store
                .get_credential(org.org_id, c.agent_id, c.credential_id)
                .await
                .unwrap()
                .as_ref(),
            Some(c)
        );
    }
    for e in &events {
        assert_eq!(
            store
                .get_audit_event(org.org_id, e.event_id, at(0), at(1))
                .await
                .unwrap()
                .as_ref(),
            Some(e)
        );
    }
}

#[test]
fn every_combination_of_audit_filters_reads_one_index_in_page_order() {
    let store = SqliteStore::in_memory().unwrap();
    let conn = store.conn.lock().unwrap();
    let now = at(1_700_000_000_000);
    for combination in 0..32 {
        let set = |bit: u32| combination & (1 << bit) != 0;
        let query = AuditQuery {
            org_id: Uuid::new_v4(),
            agent_id: set(0).then(Uuid::new_v4),
            actor_agent_id: None,
            action: set(1).then_some(AuditAction::TokenIssued),
            outcome: set(2).then_some(Outcome::Failure),
            not_before: at(0),
            until: set(3).then_some(now),
            now,
            limit: 10,
            after: set(4).then(|| AuditPosition {
                timestamp: now,
                event_id: Uuid::new_v4(),
            }),
        };
        let (sql, values) = audit_page_sql(&query).unwrap();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(values), |row| row.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // One index search and no sort: the rows come out in page order and stop at the limit.
        assert_eq!(plan.len(), 1, "{query:?}: {plan:?}");
        assert!(
            plan[0].starts_with("SEARCH audit_events USING INDEX audit_by_"),
            "{query:?}: {plan:?}"
        );
        if query.after.is_some() {
            assert!(
                plan[0].contains("(timestamp_ms,event_id)<(?,?)"),
                "{query:?}: {plan:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_version_3_file_gets_the_column_for_public_keys_and_keeps_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idp.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    let org = Uuid::new_v4();
    let agent = Uuid::new_v4();
    // A version-3 build kept no copy of who may act for the agent.
    let old = Credential {
        agent_may_act: Vec::new(),
        agent_requires_dpop: false,
        ..credential(org, agent, true)
    };
    store
        .commit(vec![Write::PutCredential {
            credential: old.clone(),
            expected_version: None,
        }])
        .await
        .unwrap();
    drop(store);
    // What a version-3 build left: no column for public keys, no table of used assertions.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "ALTER TABLE credentials DROP COLUMN public_keys; DROP TABLE used_assertions; \
         ALTER TABLE agents DROP COLUMN delegation; \
         ALTER TABLE agents DROP COLUMN tokens_not_before_ms; \
         ALTER TABLE credentials DROP COLUMN agent_may_act; \
         ALTER TABLE agents DROP COLUMN require_dpop; \
         ALTER TABLE credentials DROP COLUMN agent_requires_dpop; PRAGMA user_version = 3;",
    )
    .unwrap();
    drop(conn);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.credential_by_client_id(old.client_id).await.unwrap(),
        Some(old.clone())
    );
    let keyed = Credential {
        credential_id: Uuid::new_v4(),
        client_id: Uuid::new_v4(),
        proof: CredentialProof::PublicKeys(agentidp_core::client_keys::PublicKeys::Inline(
            agentidp_core::client_keys::ClientKeySet::from_jwks(
                &serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519",
                    "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}),
                "jwks",
            )
            .unwrap(),
        )),
        ..old
    };
    store
        .commit(vec![
            Write::PutCredential {
                credential: keyed.clone(),
                expected_version: None,
            },
            Write::UseClientAssertion {
                client_id: keyed.client_id,
                jti: "first".into(),
                expires_at: at(1_900_000_000_000),
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        store
            .credential_by_client_id(keyed.client_id)
            .await
            .unwrap(),
        Some(keyed)
    );
}

#[tokio::test]
async fn reopening_keeps_the_schema_and_refuses_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idp.sqlite");
    drop(SqliteStore::open(&path).unwrap());
    drop(SqliteStore::open(&path).unwrap());

    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);

    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Internal { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::await_holding_lock,
    reason = "the test holds the writer's lock on purpose, as a long commit does"
)]
async fn reads_go_on_while_the_writer_connection_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("idp.sqlite")).unwrap();
    let org = Organization {
        org_id: Uuid::new_v4(),
        name: "Acme".into(),
        plan: Plan::Free,
        created_at: at(5),
    };
    store
        .commit(vec![Write::CreateOrg(org.clone())])
        .await
        .unwrap();
    // As when a group commit waits for its fsync.
    let writing = store.conn.lock().unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        (
            store.get_org(org.org_id).await.unwrap(),
            store.usage(org.org_id, "2026-11").await.unwrap(),
        )
    })
    .await
    .expect("reads do not wait for the writer");
    assert_eq!(read.0, Some(org));
    drop(writing);
}

#[tokio::test]
async fn reader_connections_refuse_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("idp.sqlite")).unwrap();
    let refused = store
        .read(|conn| conn.execute("DELETE FROM organizations", []).map_err(db))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Internal { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_write_blocked_by_another_connection_reports_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idp.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    store
        .conn
        .lock()
        .unwrap()
        .busy_timeout(Duration::from_millis(10))
        .unwrap();

    let mut other = Connection::open(&path).unwrap();
    let held = other
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .unwrap();
    let org = Organization {
        org_id: Uuid::new_v4(),
        name: "Acme".into(),
        plan: Plan::Free,
        created_at: at(5),
    };
    let result = store.commit(vec![Write::CreateOrg(org.clone())]).await;
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "{result:?}"
    );
    // SQLite's own error stays in the chain, for the log.
    let err = result.unwrap_err();
    let busy = std::iter::successors(Some(&err as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .find_map(|e| e.downcast_ref::<rusqlite::Error>());
    assert_eq!(
        busy.and_then(rusqlite::Error::sqlite_error_code),
        Some(rusqlite::ErrorCode::DatabaseBusy),
        "{err:?}"
    );
    held.rollback().unwrap();

    store
        .commit(vec![Write::CreateOrg(org.clone())])
        .await
        .unwrap();
    assert_eq!(store.get_org(org.org_id).await.unwrap(), Some(org));
}

#[tokio::test]
async fn a_version_5_file_gets_the_agents_delegation_kill_switch_and_dpop_flag_and_keeps_its_agents()
 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idp.sqlite");
    let store = SqliteStore::open(&path).unwrap();
    let agent = Agent {
        version: 1,
        require_dpop: false,
        ..full_agent(Uuid::new_v4())
    };
    store
        .commit(vec![Write::PutAgent {
            agent: agent.clone(),
            expected_version: None,
        }])
        .await
        .unwrap();
    drop(store);
    // What a version-5 build left: agents without the three columns.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "ALTER TABLE agents DROP COLUMN delegation; \
         ALTER TABLE agents DROP COLUMN tokens_not_before_ms; \
         ALTER TABLE agents DROP COLUMN require_dpop; \
         ALTER TABLE credentials DROP COLUMN agent_requires_dpop; \
         ALTER TABLE credentials DROP COLUMN agent_may_act; PRAGMA user_version = 5;",
    )
    .unwrap();
    drop(conn);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.get_agent(agent.org_id, agent.agent_id).await.unwrap(),
        Some(agent.clone())
    );
    let delegating = Agent {
        delegation: Some(agentidp_core::domain::agent::DelegationPolicy {
            may_act: vec![Uuid::new_v4()],
            scopes: Some(vec!["reports:read".into()]),
        }),
        tokens_not_before: Some(at(1_900_000_000_000)),
        require_dpop: true,
        version: agent.version + 1,
        ..agent.clone()
    };
    store
        .commit(vec![Write::PutAgent {
            agent: delegating.clone(),
            expected_version: Some(agent.version),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.get_agent(agent.org_id, agent.agent_id).await.unwrap(),
        Some(delegating)
    );
}
