//! The one suite every store must pass, so the local server and Lambda behave alike.
//!
//! Each check is an async function over any [`Store`]; [`conformance_suite!`] turns them into one
//! test apiece for a backend. Every check makes its own organizations (random v4 ids) and reads
//! only those, so all checks may share a single backend instance, and nothing is cleaned up.
//!
//! The checks live in one submodule per resource; this module holds the macro and the domain
//! values and helpers they share.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use agentidp_core::domain::{
    Actor, Agent, AgentStatus, AuditAction, AuditEvent, Credential, CredentialProof,
    CredentialStatus, Organization, Outcome, Plan,
};
use agentidp_core::store::{AuditQuery, Store, StoreError, StoreResult, Write};
use chrono::{DateTime, Duration, Utc};
use tokio::sync::Barrier;
use uuid::Uuid;

pub mod agents;
pub mod audit;
pub mod batches;
pub mod counters;
pub mod credentials;
pub mod orgs;
pub mod resources;
pub mod revocations;
pub mod trusted_issuers;

/// Expands, for an expression that evaluates to a future of a store, into one
/// `#[tokio::test]` per check. The future runs once per test. Each check is listed with its
/// module, but the test is named after the check alone, so test names do not depend on which
/// file holds the check.
macro_rules! conformance_suite {
    (@each $make:expr; $($module:ident :: $check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let store = ::std::sync::Arc::new($make.await);
                $crate::conformance::$module::$check(store).await;
            }
        )+
    };
    ($make:expr) => {
        $crate::conformance::conformance_suite!(@each $make;
            orgs::an_organization_reads_back_equal_and_appears_in_the_listing,
            orgs::an_organization_cannot_be_created_twice,
            orgs::a_plan_can_be_set_only_on_an_existing_organization,
            agents::an_agent_with_metadata_and_capabilities_reads_back_equal,
            agents::an_agent_with_every_optional_field_empty_reads_back_equal,
            agents::creating_an_agent_that_already_exists_fails,
            agents::updating_an_agent_needs_the_version_that_is_stored,
            agents::parallel_updates_of_one_agent_version_let_exactly_one_win,
            agents::another_organizations_agent_is_invisible,
            agents::agents_are_listed_oldest_first_with_ties_broken_by_id,
            agents::a_claimed_agent_name_is_taken_until_released,
            agents::parallel_claims_of_one_agent_name_let_exactly_one_win,
            resources::a_resource_reads_back_equal_by_id_and_its_claim_by_identifier,
            resources::resources_are_listed_oldest_first_with_ties_broken_by_id,
            resources::updating_or_deleting_a_resource_needs_the_version_that_is_stored,
            resources::an_identifier_is_claimed_by_one_resource_which_alone_may_rewrite_its_claim,
            resources::moving_a_resource_to_a_new_identifier_moves_its_claim,
            resources::deleting_a_resource_frees_its_identifier,
            resources::another_organizations_resources_and_identifiers_are_invisible,
            resources::the_resource_count_stops_at_the_limit_and_never_goes_below_zero,
            resources::parallel_claims_of_one_identifier_let_exactly_one_win,
            resources::parallel_resource_counts_at_the_limit_never_exceed_it,
            credentials::a_credential_reads_back_equal_by_client_id_and_by_its_ids,
            credentials::creating_a_credential_that_already_exists_fails,
            credentials::updating_a_credential_needs_the_version_that_is_stored,
            credentials::parallel_updates_of_one_credential_version_let_exactly_one_win,
            credentials::a_credential_is_found_only_under_its_own_organization_and_agent,
            credentials::credentials_are_listed_oldest_first_and_only_for_their_agent,
            credentials::a_credential_with_public_keys_reads_back_equal_and_is_rotated_to_new_keys,
            credentials::a_client_assertion_is_used_once_and_its_batch_fails_with_it,
            credentials::parallel_uses_of_one_assertion_let_exactly_one_win,
            credentials::a_dpop_proof_is_used_once_per_key_and_its_batch_fails_with_it,
            credentials::every_kind_of_proof_reads_back_equal,
            trusted_issuers::a_trusted_issuer_reads_back_equal_by_id_and_in_the_listing,
            trusted_issuers::an_issuer_is_trusted_once_per_organization,
            trusted_issuers::changing_or_deleting_a_trusted_issuer_needs_the_version_that_is_stored,
            trusted_issuers::another_organizations_trusted_issuers_are_invisible,
            trusted_issuers::the_trusted_issuer_count_stops_at_the_limit_and_is_its_own,
            counters::the_agent_count_stops_at_the_limit_and_moves_both_ways,
            counters::the_agent_count_never_goes_below_zero,
            counters::parallel_agent_counts_at_the_limit_never_exceed_it,
            counters::token_requests_are_counted_per_organization_and_month_up_to_the_limit,
            counters::parallel_token_requests_at_the_limit_never_exceed_it,
            counters::an_organization_without_counters_has_zero_usage,
            counters::failure_counters_add_up_per_key_and_read_zero_when_absent_or_expired,
            counters::adding_to_a_tally_returns_its_new_count_and_the_batch_form_agrees,
            counters::a_clients_standing_reads_its_credential_counters_and_resource_together,
            counters::parallel_failures_are_all_counted,
            revocations::a_revoked_token_is_reported_and_revoking_it_again_is_harmless,
            revocations::a_tokens_standing_reads_its_revocation_and_its_agent_together,
            revocations::a_chains_standing_reads_every_token_id_and_agent_in_one_go,
            batches::a_failed_name_claim_leaves_neither_the_agent_nor_the_audit_event,
            batches::a_failed_last_write_undoes_every_kind_of_earlier_write,
            batches::a_batch_of_every_kind_of_write_lands_together,
            batches::the_first_failed_condition_is_reported_at_its_index,
            batches::each_failed_condition_names_its_guard_wherever_it_stands,
            audit::an_audit_event_with_details_and_actor_reads_back_equal,
            audit::an_audit_event_with_every_optional_field_empty_reads_back_equal,
            audit::audit_events_come_newest_first_with_ties_broken_by_event_id,
            audit::paging_through_57_audit_events_ten_at_a_time_yields_each_exactly_once,
            audit::paging_a_filtered_audit_query_skips_and_repeats_nothing,
            audit::audit_queries_filter_by_agent_action_and_outcome,
            audit::audit_queries_filter_by_actor_directly_or_anywhere_in_a_delegation_chain,
            audit::audit_queries_keep_to_the_not_before_and_until_window,
            audit::audit_events_past_their_expiry_are_never_returned,
            audit::another_organizations_audit_events_are_never_returned,
        );
    };
}
pub(crate) use conformance_suite;

// ----------------------------------------------------------------------------------------------
// Domain values. Timestamps are whole milliseconds, the precision every store keeps.

pub fn at_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
}

/// The batch failed on exactly this guard.
pub fn assert_guard(result: &StoreResult<()>, expected: agentidp_core::store::Guard) {
    assert!(
        matches!(result, Err(StoreError::ConditionFailed { guard, .. }) if *guard == expected),
        "expected {expected:?} to fail, got {result:?}"
    );
}

pub fn now_ms() -> DateTime<Utc> {
    at_ms(Utc::now().timestamp_millis())
}

pub fn org(plan: Plan) -> Organization {
    Organization {
        org_id: Uuid::new_v4(),
        name: format!("Org ✓ {}", Uuid::new_v4()),
        plan,
        created_at: now_ms(),
    }
}

pub fn agent(org_id: Uuid, name: &str, created_at: DateTime<Utc>) -> Agent {
    Agent {
        agent_id: Uuid::new_v4(),
        org_id,
        name: name.to_owned(),
        description: Some("Pays \"invoices\"; O'Brien's bot".into()),
        owner: Some("ops@example.com".into()),
        capabilities: vec!["invoices.pay".into(), "invoices.read".into()],
        scopes: vec!["invoices:read".into(), "invoices:write".into()],
        metadata: BTreeMap::from([
            ("team".to_owned(), "finance".to_owned()),
            ("cost-centre".to_owned(), "42".to_owned()),
            ("empty".to_owned(), String::new()),
        ]),
        status: AgentStatus::Active,
        created_at,
        updated_at: created_at,
        decommissioned_at: None,
        active_credentials: 0,
        delegation: None,
        tokens_not_before: None,
        require_dpop: true,
        version: 1,
    }
}

pub fn credential(org_id: Uuid, agent_id: Uuid, created_at: DateTime<Utc>) -> Credential {
    Credential {
        credential_id: Uuid::new_v4(),
        client_id: Uuid::new_v4(),
        agent_id,
        org_id,
        proof: CredentialProof::Secret {
            hash: "$2b$04$abcdefghijklmnopqrstuuM4nbmC7/Ws9h7K4G0QwTX0xJ5T0Wv2".into(),
        },
        status: CredentialStatus::Active,
        agent_status: AgentStatus::Active,
        agent_scopes: vec!["weather:read".into(), "agents:read".into()],
        agent_may_act: vec![Uuid::new_v4()],
        agent_requires_dpop: true,
        created_at,
        expires_at: Some(created_at + Duration::days(30)),
        revoked_at: None,
        rotated_at: None,
        version: 1,
    }
}

pub fn audit_event(
    org_id: Uuid,
    timestamp: DateTime<Utc>,
    action: AuditAction,
    outcome: Outcome,
    subject_agent_id: Option<Uuid>,
) -> AuditEvent {
    let mut details = serde_json::Map::new();
    details.insert("scopes".into(), serde_json::json!(["invoices:read"]));
    details.insert(
        "reason".into(),
        serde_json::json!({"code": "quota", "remaining": 0, "note": null}),
    );
    AuditEvent {
        event_id: Uuid::new_v4(),
        org_id,
        timestamp,
        action,
        outcome,
        actor: Actor::agent(Uuid::new_v4(), Some(Uuid::new_v4())),
        subject_agent_id,
        resource: format!("agent/{}", subject_agent_id.unwrap_or_default()),
        request_id: format!("req-{}", Uuid::new_v4()),
        source_ip: Some("203.0.113.7".into()),
        user_agent: Some("agent-sdk/1.2 (+https://example.com)".into()),
        details,
        expires_at: timestamp + Duration::days(90),
    }
}

/// A query over the whole retention of `org_id` with no filter, as seen at `now`.
pub fn audit_query(org_id: Uuid, now: DateTime<Utc>) -> AuditQuery {
    AuditQuery {
        org_id,
        agent_id: None,
        actor_agent_id: None,
        action: None,
        outcome: None,
        not_before: now - Duration::days(365),
        until: None,
        now,
        limit: 1000,
        after: None,
    }
}

// ----------------------------------------------------------------------------------------------
// Helpers.

fn new_agent(agent: &Agent) -> Write {
    Write::PutAgent {
        agent: agent.clone(),
        expected_version: None,
    }
}

fn new_credential(credential: &Credential) -> Write {
    Write::PutCredential {
        credential: credential.clone(),
        expected_version: None,
    }
}

fn claim(org_id: Uuid, name_key: &str) -> Write {
    Write::ClaimAgentName {
        org_id,
        name_key: name_key.to_owned(),
        agent_id: Uuid::new_v4(),
    }
}

fn assert_condition_failed(result: &StoreResult<()>, index: usize) {
    assert!(
        matches!(result, Err(StoreError::ConditionFailed { index: failed, .. }) if *failed == index),
        "expected write {index} to fail its condition, got {result:?}"
    );
}

/// Starts every batch at once and returns their results in the given order.
async fn race<S: Store + 'static>(
    store: &Arc<S>,
    batches: Vec<Vec<Write>>,
) -> Vec<StoreResult<()>> {
    let barrier = Arc::new(Barrier::new(batches.len()));
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|writes| {
            let store = Arc::clone(store);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                store.commit(writes).await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

/// Asserts that `winners` commits succeeded and every other one failed its only condition.
fn assert_winners(results: &[StoreResult<()>], winners: usize) {
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        winners,
        "{results:?}"
    );
    for result in results.iter().filter(|r| r.is_err()) {
        assert_condition_failed(result, 0);
    }
}
