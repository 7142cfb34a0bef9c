//! The SQLite store against the shared conformance suite, plus what only a file can show.

mod conformance;

use agentidp_core::domain::{AuditAction, Outcome, Plan};
use agentidp_core::store::{
    AgentReader, AuditReader, Commit, CredentialReader, OrgReader, RevocationReader, Write,
};
use agentidp_store_sqlite::SqliteStore;
use chrono::Duration;
use uuid::Uuid;

mod in_memory {
    use super::*;
    crate::conformance::conformance_suite!(async {
        SqliteStore::in_memory().expect("an in-memory store opens")
    });
}

/// What the local server runs: a file, a writer connection and reader connections.
mod file_backed {
    use super::*;
    crate::conformance::conformance_suite!(async {
        // Kept under cargo's per-target scratch directory (target/tmp), which `cargo clean`
        // empties: the store must outlive this block, and its directory with it.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("a scratch directory")
            .keep();
        SqliteStore::open(&dir.join("agentidp.sqlite")).expect("a file-backed store opens")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_backed_store_keeps_its_data_across_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentidp.sqlite");
    let org = conformance::org(Plan::Free);
    let agent = conformance::agent(org.org_id, "durable", conformance::now_ms());
    let credential = conformance::credential(org.org_id, agent.agent_id, conformance::now_ms());
    let now = conformance::now_ms();
    let event = conformance::audit_event(
        org.org_id,
        now,
        AuditAction::AgentCreated,
        Outcome::Success,
        Some(agent.agent_id),
    );
    let jti = Uuid::new_v4().to_string();

    let store = SqliteStore::open(&path).unwrap();
    store
        .commit(vec![
            Write::CreateOrg(org.clone()),
            Write::PutAgent {
                agent: agent.clone(),
                expected_version: None,
            },
            Write::ClaimAgentName {
                org_id: org.org_id,
                name_key: "durable".into(),
                agent_id: agent.agent_id,
            },
            Write::PutCredential {
                credential: credential.clone(),
                expected_version: None,
            },
            Write::CountAgents {
                org_id: org.org_id,
                delta: 1,
                limit: 10,
            },
            Write::CountTokenRequest {
                org_id: org.org_id,
                month: "2026-03".into(),
                limit: 10,
            },
            Write::RevokeToken {
                jti: jti.clone(),
                org_id: org.org_id,
                expires_at: now + Duration::hours(1),
            },
            Write::Audit(event.clone()),
        ])
        .await
        .unwrap();
    drop(store);

    let reopened = SqliteStore::open(&path).unwrap();
    assert_eq!(
        reopened.get_org(org.org_id).await.unwrap(),
        Some(org.clone())
    );
    assert_eq!(
        reopened
            .get_agent(org.org_id, agent.agent_id)
            .await
            .unwrap(),
        Some(agent.clone())
    );
    assert_eq!(
        reopened
            .credential_by_client_id(credential.client_id)
            .await
            .unwrap(),
        Some(credential)
    );
    let usage = reopened.usage(org.org_id, "2026-03").await.unwrap();
    assert_eq!((usage.agents, usage.token_requests), (1, 1));
    assert!(reopened.is_token_revoked(&jti).await.unwrap());
    let got = reopened
        .get_audit_event(org.org_id, event.event_id, now - Duration::days(1), now)
        .await
        .unwrap();
    assert_eq!(got, Some(event));
    let claim_again = Write::ClaimAgentName {
        org_id: org.org_id,
        name_key: "durable".into(),
        agent_id: Uuid::new_v4(),
    };
    assert!(
        reopened.commit(vec![claim_again]).await.is_err(),
        "the name claim survived"
    );
}
