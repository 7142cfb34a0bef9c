//! The one suite every store must pass, so the local server and Lambda behave alike.
//!
//! Each check is an async function over any [`Store`]; [`conformance_suite!`] turns them into one
//! test apiece for a backend. Every check makes its own organizations (random v4 ids) and reads
//! only those, so all checks may share a single backend instance, and nothing is cleaned up.

#![expect(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use agentidp_core::domain::{
    Actor, Agent, AgentStatus, AuditAction, AuditEvent, Credential, CredentialStatus, Organization,
    Outcome, Plan,
};
use agentidp_core::store::{
    AuditPosition, AuditQuery, Guard, Store, StoreError, StoreResult, Usage, Write,
};
use chrono::{DateTime, Duration, Utc};
use tokio::sync::Barrier;
use uuid::Uuid;

/// Expands, for an expression that evaluates to a future of a store, into one
/// `#[tokio::test]` per check. The future runs once per test.
macro_rules! conformance_suite {
    (@each $make:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let store = ::std::sync::Arc::new($make.await);
                $crate::conformance::$check(store).await;
            }
        )+
    };
    ($make:expr) => {
        $crate::conformance::conformance_suite!(@each $make;
            an_organization_reads_back_equal_and_appears_in_the_listing,
            failure_counters_add_up_per_key_and_read_zero_when_absent_or_expired,
            a_tokens_standing_reads_its_revocation_and_its_agent_together,
            adding_to_a_tally_returns_its_new_count_and_the_batch_form_agrees,
            a_clients_standing_reads_its_credential_and_counters_together,
            parallel_failures_are_all_counted,
            an_organization_cannot_be_created_twice,
            a_plan_can_be_set_only_on_an_existing_organization,
            an_agent_with_metadata_and_capabilities_reads_back_equal,
            an_agent_with_every_optional_field_empty_reads_back_equal,
            creating_an_agent_that_already_exists_fails,
            updating_an_agent_needs_the_version_that_is_stored,
            parallel_updates_of_one_agent_version_let_exactly_one_win,
            another_organizations_agent_is_invisible,
            agents_are_listed_oldest_first_with_ties_broken_by_id,
            a_claimed_agent_name_is_taken_until_released,
            parallel_claims_of_one_agent_name_let_exactly_one_win,
            a_credential_reads_back_equal_by_client_id_and_by_its_ids,
            creating_a_credential_that_already_exists_fails,
            updating_a_credential_needs_the_version_that_is_stored,
            parallel_updates_of_one_credential_version_let_exactly_one_win,
            a_credential_is_found_only_under_its_own_organization_and_agent,
            credentials_are_listed_oldest_first_and_only_for_their_agent,
            the_agent_count_stops_at_the_limit_and_moves_both_ways,
            the_agent_count_never_goes_below_zero,
            parallel_agent_counts_at_the_limit_never_exceed_it,
            token_requests_are_counted_per_organization_and_month_up_to_the_limit,
            parallel_token_requests_at_the_limit_never_exceed_it,
            an_organization_without_counters_has_zero_usage,
            a_revoked_token_is_reported_and_revoking_it_again_is_harmless,
            a_failed_name_claim_leaves_neither_the_agent_nor_the_audit_event,
            a_failed_last_write_undoes_every_kind_of_earlier_write,
            a_batch_of_every_kind_of_write_lands_together,
            the_first_failed_condition_is_reported_at_its_index,
            each_failed_condition_names_its_guard_wherever_it_stands,
            an_audit_event_with_details_and_actor_reads_back_equal,
            an_audit_event_with_every_optional_field_empty_reads_back_equal,
            audit_events_come_newest_first_with_ties_broken_by_event_id,
            paging_through_57_audit_events_ten_at_a_time_yields_each_exactly_once,
            paging_a_filtered_audit_query_skips_and_repeats_nothing,
            audit_queries_filter_by_agent_action_and_outcome,
            audit_queries_keep_to_the_not_before_and_until_window,
            audit_events_past_their_expiry_are_never_returned,
            another_organizations_audit_events_are_never_returned,
        );
    };
}
pub(crate) use conformance_suite;

// ----------------------------------------------------------------------------------------------
// Domain values. Timestamps are whole milliseconds, the precision every store keeps.

pub fn at_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap()
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
        version: 1,
    }
}

pub fn credential(org_id: Uuid, agent_id: Uuid, created_at: DateTime<Utc>) -> Credential {
    Credential {
        credential_id: Uuid::new_v4(),
        client_id: Uuid::new_v4(),
        agent_id,
        org_id,
        secret_hash: "$2b$04$abcdefghijklmnopqrstuuM4nbmC7/Ws9h7K4G0QwTX0xJ5T0Wv2".into(),
        status: CredentialStatus::Active,
        agent_status: AgentStatus::Active,
        agent_scopes: vec!["weather:read".into(), "agents:read".into()],
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

fn newest_first(events: &mut [AuditEvent]) {
    events.sort_by_key(|e| std::cmp::Reverse((e.timestamp, e.event_id)));
}

/// What `query` must return over every page, as the trait documents it.
fn expected_audit(events: &[AuditEvent], query: &AuditQuery) -> Vec<AuditEvent> {
    let mut matching: Vec<AuditEvent> = events
        .iter()
        .filter(|e| {
            e.org_id == query.org_id
                && query
                    .agent_id
                    .is_none_or(|id| e.subject_agent_id == Some(id))
                && query.action.is_none_or(|action| e.action == action)
                && query.outcome.is_none_or(|outcome| e.outcome == outcome)
                && e.timestamp >= query.not_before
                && query.until.is_none_or(|until| e.timestamp <= until)
                && e.expires_at > query.now
        })
        .cloned()
        .collect();
    newest_first(&mut matching);
    matching
}

async fn record_audit<S: Store>(store: &S, events: &[AuditEvent]) {
    // Small batches: a DynamoDB transaction holds at most 100 items.
    for chunk in events.chunks(20) {
        store
            .commit(chunk.iter().cloned().map(Write::Audit).collect())
            .await
            .unwrap();
    }
}

/// Follows `next` from the first page to the last, checking each page's shape on the way.
async fn walk_audit<S: Store>(store: &S, query: &AuditQuery) -> Vec<AuditEvent> {
    let mut query = query.clone();
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let page = store.query_audit(&query).await.unwrap();
        assert!(
            page.events.len() <= query.limit,
            "a page of {} exceeds the limit {}",
            page.events.len(),
            query.limit
        );
        seen.extend(page.events.iter().cloned());
        let Some(next) = page.next else {
            return seen;
        };
        let last = page.events.last().unwrap();
        assert_eq!(
            next,
            AuditPosition {
                timestamp: last.timestamp,
                event_id: last.event_id
            }
        );
        query.after = Some(next);
    }
    unreachable!("paging did not end")
}

// ----------------------------------------------------------------------------------------------
// Organizations.

pub async fn an_organization_reads_back_equal_and_appears_in_the_listing<S: Store + 'static>(
    store: Arc<S>,
) {
    let free = org(Plan::Free);
    let enterprise = org(Plan::Enterprise);
    store
        .commit(vec![
            Write::CreateOrg(free.clone()),
            Write::CreateOrg(enterprise.clone()),
        ])
        .await
        .unwrap();

    assert_eq!(
        store.get_org(free.org_id).await.unwrap(),
        Some(free.clone())
    );
    assert_eq!(
        store.get_org(enterprise.org_id).await.unwrap(),
        Some(enterprise.clone())
    );
    assert_eq!(store.get_org(Uuid::new_v4()).await.unwrap(), None);
    let listed = store.list_orgs().await.unwrap();
    assert!(listed.contains(&free) && listed.contains(&enterprise));
}

pub async fn an_organization_cannot_be_created_twice<S: Store + 'static>(store: Arc<S>) {
    let first = org(Plan::Free);
    store
        .commit(vec![Write::CreateOrg(first.clone())])
        .await
        .unwrap();

    let again = Organization {
        name: "Impostor".into(),
        plan: Plan::Enterprise,
        ..first.clone()
    };
    assert_condition_failed(&store.commit(vec![Write::CreateOrg(again)]).await, 0);
    assert_eq!(store.get_org(first.org_id).await.unwrap(), Some(first));
}

pub async fn a_plan_can_be_set_only_on_an_existing_organization<S: Store + 'static>(store: Arc<S>) {
    let missing = Uuid::new_v4();
    assert_condition_failed(
        &store
            .commit(vec![Write::SetPlan {
                org_id: missing,
                plan: Plan::Enterprise,
            }])
            .await,
        0,
    );
    assert_eq!(store.get_org(missing).await.unwrap(), None);

    let existing = org(Plan::Free);
    store
        .commit(vec![Write::CreateOrg(existing.clone())])
        .await
        .unwrap();
    store
        .commit(vec![Write::SetPlan {
            org_id: existing.org_id,
            plan: Plan::Enterprise,
        }])
        .await
        .unwrap();
    let expected = Organization {
        plan: Plan::Enterprise,
        ..existing
    };
    assert_eq!(
        store.get_org(expected.org_id).await.unwrap(),
        Some(expected)
    );
}

// ----------------------------------------------------------------------------------------------
// Agents.

pub async fn an_agent_with_metadata_and_capabilities_reads_back_equal<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let created = now_ms();
    let mut decommissioned = agent(org_id, "Billing Bot", created);
    decommissioned.status = AgentStatus::Decommissioned;
    decommissioned.updated_at = created + Duration::milliseconds(1234);
    decommissioned.decommissioned_at = Some(decommissioned.updated_at);
    decommissioned.active_credentials = 7;
    decommissioned.version = 12;
    let suspended = Agent {
        status: AgentStatus::Suspended,
        ..agent(org_id, "Ünïcödé 🤖", created)
    };
    store
        .commit(vec![new_agent(&decommissioned), new_agent(&suspended)])
        .await
        .unwrap();

    for expected in [decommissioned, suspended] {
        assert_eq!(
            store.get_agent(org_id, expected.agent_id).await.unwrap(),
            Some(expected)
        );
    }
}

pub async fn an_agent_with_every_optional_field_empty_reads_back_equal<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let bare = Agent {
        description: None,
        owner: None,
        capabilities: Vec::new(),
        scopes: Vec::new(),
        metadata: BTreeMap::new(),
        ..agent(org_id, "bare", now_ms())
    };
    store.commit(vec![new_agent(&bare)]).await.unwrap();
    assert_eq!(
        store.get_agent(org_id, bare.agent_id).await.unwrap(),
        Some(bare)
    );
}

pub async fn creating_an_agent_that_already_exists_fails<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    let first = agent(org_id, "first", now_ms());
    store.commit(vec![new_agent(&first)]).await.unwrap();

    let overwrite = Agent {
        name: "overwrite".into(),
        ..first.clone()
    };
    assert_condition_failed(&store.commit(vec![new_agent(&overwrite)]).await, 0);
    assert_eq!(
        store.get_agent(org_id, first.agent_id).await.unwrap(),
        Some(first)
    );
}

pub async fn updating_an_agent_needs_the_version_that_is_stored<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    let v1 = agent(org_id, "versioned", now_ms());
    store.commit(vec![new_agent(&v1)]).await.unwrap();

    let v2 = Agent {
        status: AgentStatus::Suspended,
        version: 2,
        ..v1.clone()
    };
    store
        .commit(vec![Write::PutAgent {
            agent: v2.clone(),
            expected_version: Some(1),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.get_agent(org_id, v1.agent_id).await.unwrap(),
        Some(v2.clone())
    );

    let stale = Agent {
        name: "stale".into(),
        version: 2,
        ..v1.clone()
    };
    assert_condition_failed(
        &store
            .commit(vec![Write::PutAgent {
                agent: stale,
                expected_version: Some(1),
            }])
            .await,
        0,
    );
    let ahead = Agent {
        name: "ahead".into(),
        version: 4,
        ..v1.clone()
    };
    assert_condition_failed(
        &store
            .commit(vec![Write::PutAgent {
                agent: ahead,
                expected_version: Some(3),
            }])
            .await,
        0,
    );
    assert_eq!(
        store.get_agent(org_id, v1.agent_id).await.unwrap(),
        Some(v2)
    );

    let missing = agent(org_id, "missing", now_ms());
    assert_condition_failed(
        &store
            .commit(vec![Write::PutAgent {
                agent: missing.clone(),
                expected_version: Some(1),
            }])
            .await,
        0,
    );
    assert_eq!(
        store.get_agent(org_id, missing.agent_id).await.unwrap(),
        None
    );
}

pub async fn parallel_updates_of_one_agent_version_let_exactly_one_win<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let v1 = agent(org_id, "contended", now_ms());
    store.commit(vec![new_agent(&v1)]).await.unwrap();

    let candidates: Vec<Agent> = (0..16)
        .map(|i| Agent {
            description: Some(format!("writer {i}")),
            version: 2,
            ..v1.clone()
        })
        .collect();
    let batches = candidates
        .iter()
        .map(|a| {
            vec![Write::PutAgent {
                agent: a.clone(),
                expected_version: Some(1),
            }]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 1);
    let winner = results.iter().position(Result::is_ok).unwrap();
    assert_eq!(
        store.get_agent(org_id, v1.agent_id).await.unwrap().as_ref(),
        Some(&candidates[winner])
    );
}

pub async fn another_organizations_agent_is_invisible<S: Store + 'static>(store: Arc<S>) {
    let owner = Uuid::new_v4();
    let stranger = Uuid::new_v4();
    let owned = agent(owner, "owned", now_ms());
    store.commit(vec![new_agent(&owned)]).await.unwrap();

    assert_eq!(
        store.get_agent(stranger, owned.agent_id).await.unwrap(),
        None
    );
    assert_eq!(store.list_agents(stranger).await.unwrap(), Vec::new());
    assert_eq!(store.get_agent(owner, Uuid::new_v4()).await.unwrap(), None);
    assert_eq!(store.list_agents(owner).await.unwrap(), vec![owned]);
}

pub async fn agents_are_listed_oldest_first_with_ties_broken_by_id<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let t = now_ms();
    let mut agents = vec![
        agent(org_id, "newest", t + Duration::seconds(2)),
        agent(org_id, "tie-a", t),
        agent(org_id, "middle", t + Duration::milliseconds(1)),
        agent(org_id, "tie-b", t),
        agent(org_id, "tie-c", t),
    ];
    store
        .commit(agents.iter().map(new_agent).collect())
        .await
        .unwrap();
    store
        .commit(vec![new_agent(&agent(Uuid::new_v4(), "elsewhere", t))])
        .await
        .unwrap();

    agents.sort_by_key(|a| (a.created_at, a.agent_id));
    assert_eq!(store.list_agents(org_id).await.unwrap(), agents);
}

// ----------------------------------------------------------------------------------------------
// Agent names.

pub async fn a_claimed_agent_name_is_taken_until_released<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    store
        .commit(vec![claim(org_id, "billing-bot")])
        .await
        .unwrap();
    assert_condition_failed(&store.commit(vec![claim(org_id, "billing-bot")]).await, 0);

    // The key is per organization.
    store
        .commit(vec![claim(Uuid::new_v4(), "billing-bot")])
        .await
        .unwrap();
    store
        .commit(vec![claim(org_id, "billing-bot-2")])
        .await
        .unwrap();

    let release = Write::ReleaseAgentName {
        org_id,
        name_key: "billing-bot".into(),
    };
    store.commit(vec![release.clone()]).await.unwrap();
    // Releasing is unconditional, so releasing a free name succeeds too.
    store.commit(vec![release]).await.unwrap();
    store
        .commit(vec![claim(org_id, "billing-bot")])
        .await
        .unwrap();
    assert_condition_failed(&store.commit(vec![claim(org_id, "billing-bot")]).await, 0);
}

pub async fn parallel_claims_of_one_agent_name_let_exactly_one_win<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let batches = (0..16)
        .map(|_| {
            let contender = agent(org_id, "Popular", now_ms());
            vec![
                Write::ClaimAgentName {
                    org_id,
                    name_key: Agent::name_key(&contender.name),
                    agent_id: contender.agent_id,
                },
                new_agent(&contender),
            ]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 1);
    assert_eq!(store.list_agents(org_id).await.unwrap().len(), 1);
}

// ----------------------------------------------------------------------------------------------
// Credentials.

pub async fn a_credential_reads_back_equal_by_client_id_and_by_its_ids<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let agent_id = Uuid::new_v4();
    let created = now_ms();
    let plain = Credential {
        expires_at: None,
        ..credential(org_id, agent_id, created)
    };
    let revoked = Credential {
        status: CredentialStatus::Revoked,
        agent_status: AgentStatus::Suspended,
        revoked_at: Some(created + Duration::milliseconds(5)),
        rotated_at: Some(created + Duration::milliseconds(3)),
        version: 9,
        ..credential(org_id, agent_id, created)
    };
    store
        .commit(vec![new_credential(&plain), new_credential(&revoked)])
        .await
        .unwrap();

    for expected in [plain, revoked] {
        assert_eq!(
            store
                .credential_by_client_id(expected.client_id)
                .await
                .unwrap()
                .as_ref(),
            Some(&expected)
        );
        assert_eq!(
            store
                .get_credential(org_id, agent_id, expected.credential_id)
                .await
                .unwrap()
                .as_ref(),
            Some(&expected)
        );
    }
}

pub async fn creating_a_credential_that_already_exists_fails<S: Store + 'static>(store: Arc<S>) {
    let first = credential(Uuid::new_v4(), Uuid::new_v4(), now_ms());
    store.commit(vec![new_credential(&first)]).await.unwrap();

    let overwrite = Credential {
        secret_hash: "$2b$04$other".into(),
        ..first.clone()
    };
    assert_condition_failed(&store.commit(vec![new_credential(&overwrite)]).await, 0);
    assert_eq!(
        store
            .credential_by_client_id(first.client_id)
            .await
            .unwrap(),
        Some(first)
    );
}

pub async fn updating_a_credential_needs_the_version_that_is_stored<S: Store + 'static>(
    store: Arc<S>,
) {
    let v1 = credential(Uuid::new_v4(), Uuid::new_v4(), now_ms());
    store.commit(vec![new_credential(&v1)]).await.unwrap();

    let rotated = Credential {
        secret_hash: "$2b$04$rotated".into(),
        rotated_at: Some(v1.created_at + Duration::minutes(1)),
        version: 2,
        ..v1.clone()
    };
    store
        .commit(vec![Write::PutCredential {
            credential: rotated.clone(),
            expected_version: Some(1),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.credential_by_client_id(v1.client_id).await.unwrap(),
        Some(rotated.clone())
    );

    let stale = Credential {
        status: CredentialStatus::Revoked,
        version: 2,
        ..v1.clone()
    };
    assert_condition_failed(
        &store
            .commit(vec![Write::PutCredential {
                credential: stale,
                expected_version: Some(1),
            }])
            .await,
        0,
    );
    assert_eq!(
        store.credential_by_client_id(v1.client_id).await.unwrap(),
        Some(rotated.clone())
    );

    let revoked = Credential {
        status: CredentialStatus::Revoked,
        revoked_at: Some(v1.created_at + Duration::minutes(2)),
        version: 3,
        ..rotated
    };
    store
        .commit(vec![Write::PutCredential {
            credential: revoked.clone(),
            expected_version: Some(2),
        }])
        .await
        .unwrap();
    assert_eq!(
        store.credential_by_client_id(v1.client_id).await.unwrap(),
        Some(revoked)
    );

    let missing = credential(Uuid::new_v4(), Uuid::new_v4(), now_ms());
    assert_condition_failed(
        &store
            .commit(vec![Write::PutCredential {
                credential: missing.clone(),
                expected_version: Some(1),
            }])
            .await,
        0,
    );
    assert_eq!(
        store
            .credential_by_client_id(missing.client_id)
            .await
            .unwrap(),
        None
    );
}

pub async fn parallel_updates_of_one_credential_version_let_exactly_one_win<S: Store + 'static>(
    store: Arc<S>,
) {
    let v1 = credential(Uuid::new_v4(), Uuid::new_v4(), now_ms());
    store.commit(vec![new_credential(&v1)]).await.unwrap();

    let candidates: Vec<Credential> = (0..16)
        .map(|i| Credential {
            secret_hash: format!("$2b$04$writer{i}"),
            version: 2,
            ..v1.clone()
        })
        .collect();
    let batches = candidates
        .iter()
        .map(|c| {
            vec![Write::PutCredential {
                credential: c.clone(),
                expected_version: Some(1),
            }]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 1);
    let winner = results.iter().position(Result::is_ok).unwrap();
    assert_eq!(
        store
            .credential_by_client_id(v1.client_id)
            .await
            .unwrap()
            .as_ref(),
        Some(&candidates[winner])
    );
}

pub async fn a_credential_is_found_only_under_its_own_organization_and_agent<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let agent_id = Uuid::new_v4();
    let owned = credential(org_id, agent_id, now_ms());
    store.commit(vec![new_credential(&owned)]).await.unwrap();

    let id = owned.credential_id;
    assert_eq!(
        store
            .get_credential(Uuid::new_v4(), agent_id, id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_credential(org_id, Uuid::new_v4(), id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_credential(org_id, agent_id, Uuid::new_v4())
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .list_credentials(Uuid::new_v4(), agent_id)
            .await
            .unwrap(),
        Vec::new()
    );
    assert_eq!(
        store.credential_by_client_id(Uuid::new_v4()).await.unwrap(),
        None
    );
    // The credential id is not a client id.
    assert_eq!(store.credential_by_client_id(id).await.unwrap(), None);
    assert_eq!(
        store.get_credential(org_id, agent_id, id).await.unwrap(),
        Some(owned)
    );
}

pub async fn credentials_are_listed_oldest_first_and_only_for_their_agent<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let agent_id = Uuid::new_v4();
    let other_agent = Uuid::new_v4();
    let t = now_ms();
    let mut mine = vec![
        credential(org_id, agent_id, t + Duration::seconds(1)),
        credential(org_id, agent_id, t),
        credential(org_id, agent_id, t),
        credential(org_id, agent_id, t + Duration::milliseconds(1)),
    ];
    let theirs = credential(org_id, other_agent, t);
    let mut writes: Vec<Write> = mine.iter().map(new_credential).collect();
    writes.push(new_credential(&theirs));
    store.commit(writes).await.unwrap();

    mine.sort_by_key(|c| (c.created_at, c.credential_id));
    assert_eq!(
        store.list_credentials(org_id, agent_id).await.unwrap(),
        mine
    );
    assert_eq!(
        store.list_credentials(org_id, other_agent).await.unwrap(),
        vec![theirs]
    );
    assert_eq!(
        store
            .list_credentials(org_id, Uuid::new_v4())
            .await
            .unwrap(),
        Vec::new()
    );
}

// ----------------------------------------------------------------------------------------------
// Counters.

pub async fn the_agent_count_stops_at_the_limit_and_moves_both_ways<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let count = |delta: i64, limit: u64| {
        vec![Write::CountAgents {
            org_id,
            delta,
            limit,
        }]
    };
    let agents =
        |store: Arc<S>| async move { store.usage(org_id, "2026-03").await.unwrap().agents };

    for _ in 0..3 {
        store.commit(count(1, 3)).await.unwrap();
    }
    assert_eq!(agents(Arc::clone(&store)).await, 3);
    assert_condition_failed(&store.commit(count(1, 3)).await, 0);
    assert_eq!(agents(Arc::clone(&store)).await, 3);

    store.commit(count(-1, 3)).await.unwrap();
    assert_eq!(agents(Arc::clone(&store)).await, 2);
    store.commit(count(1, 3)).await.unwrap();
    assert_eq!(agents(Arc::clone(&store)).await, 3);

    // A lowered limit (a downgraded plan) blocks growth but never a decrement.
    assert_condition_failed(&store.commit(count(1, 2)).await, 0);
    store.commit(count(-1, 2)).await.unwrap();
    assert_eq!(agents(Arc::clone(&store)).await, 2);
    assert_condition_failed(&store.commit(count(1, 2)).await, 0);
    store.commit(count(-1, 0)).await.unwrap();
    store.commit(count(1, 2)).await.unwrap();
    assert_eq!(agents(Arc::clone(&store)).await, 2);
}

pub async fn the_agent_count_never_goes_below_zero<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    store
        .commit(vec![Write::CountAgents {
            org_id,
            delta: -1,
            limit: 10,
        }])
        .await
        .unwrap();
    assert_eq!(store.usage(org_id, "2026-03").await.unwrap().agents, 0);

    store
        .commit(vec![Write::CountAgents {
            org_id,
            delta: 1,
            limit: 10,
        }])
        .await
        .unwrap();
    store
        .commit(vec![Write::CountAgents {
            org_id,
            delta: -1,
            limit: 10,
        }])
        .await
        .unwrap();
    store
        .commit(vec![Write::CountAgents {
            org_id,
            delta: -1,
            limit: 10,
        }])
        .await
        .unwrap();
    assert_eq!(store.usage(org_id, "2026-03").await.unwrap().agents, 0);
    store
        .commit(vec![Write::CountAgents {
            org_id,
            delta: 1,
            limit: 10,
        }])
        .await
        .unwrap();
    assert_eq!(store.usage(org_id, "2026-03").await.unwrap().agents, 1);
}

pub async fn parallel_agent_counts_at_the_limit_never_exceed_it<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    let batches = (0..20)
        .map(|_| {
            vec![Write::CountAgents {
                org_id,
                delta: 1,
                limit: 5,
            }]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 5);
    assert_eq!(
        store.usage(org_id, "2026-03").await.unwrap(),
        Usage {
            agents: 5,
            token_requests: 0
        }
    );
}

pub async fn token_requests_are_counted_per_organization_and_month_up_to_the_limit<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let request = |org_id: Uuid, month: &str| {
        vec![Write::CountTokenRequest {
            org_id,
            month: month.to_owned(),
            limit: 3,
        }]
    };

    for _ in 0..3 {
        store.commit(request(org_id, "2026-03")).await.unwrap();
    }
    assert_condition_failed(&store.commit(request(org_id, "2026-03")).await, 0);
    store.commit(request(org_id, "2026-04")).await.unwrap();
    let other_org = Uuid::new_v4();
    store.commit(request(other_org, "2026-03")).await.unwrap();

    assert_eq!(
        store.usage(org_id, "2026-03").await.unwrap(),
        Usage {
            agents: 0,
            token_requests: 3
        }
    );
    assert_eq!(
        store.usage(org_id, "2026-04").await.unwrap(),
        Usage {
            agents: 0,
            token_requests: 1
        }
    );
    assert_eq!(
        store.usage(org_id, "2026-05").await.unwrap(),
        Usage {
            agents: 0,
            token_requests: 0
        }
    );
    assert_eq!(
        store.usage(other_org, "2026-03").await.unwrap(),
        Usage {
            agents: 0,
            token_requests: 1
        }
    );
}

pub async fn parallel_token_requests_at_the_limit_never_exceed_it<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let batches = (0..20)
        .map(|_| {
            vec![Write::CountTokenRequest {
                org_id,
                month: "2026-03".into(),
                limit: 5,
            }]
        })
        .collect();
    let results = race(&store, batches).await;

    assert_winners(&results, 5);
    assert_eq!(
        store.usage(org_id, "2026-03").await.unwrap(),
        Usage {
            agents: 0,
            token_requests: 5
        }
    );
}

pub async fn an_organization_without_counters_has_zero_usage<S: Store + 'static>(store: Arc<S>) {
    let created = org(Plan::Free);
    store
        .commit(vec![Write::CreateOrg(created.clone())])
        .await
        .unwrap();
    assert_eq!(
        store.usage(created.org_id, "2026-03").await.unwrap(),
        Usage::default()
    );
    assert_eq!(
        store.usage(Uuid::new_v4(), "2026-03").await.unwrap(),
        Usage::default()
    );
}

// ----------------------------------------------------------------------------------------------
// Revoked tokens.

pub async fn a_revoked_token_is_reported_and_revoking_it_again_is_harmless<S: Store + 'static>(
    store: Arc<S>,
) {
    let jti = Uuid::new_v4().to_string();
    let revoke = Write::RevokeToken {
        jti: jti.clone(),
        org_id: Uuid::new_v4(),
        expires_at: now_ms() + Duration::hours(1),
    };
    assert!(!store.is_token_revoked(&jti).await.unwrap());

    store.commit(vec![revoke.clone()]).await.unwrap();
    assert!(store.is_token_revoked(&jti).await.unwrap());
    store.commit(vec![revoke]).await.unwrap();
    assert!(store.is_token_revoked(&jti).await.unwrap());
    assert!(
        !store
            .is_token_revoked(&Uuid::new_v4().to_string())
            .await
            .unwrap()
    );
}

pub async fn a_tokens_standing_reads_its_revocation_and_its_agent_together<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let agent = self::agent(org_id, "standing", now_ms());
    store
        .commit(vec![Write::PutAgent {
            agent: agent.clone(),
            expected_version: None,
        }])
        .await
        .unwrap();
    let jti = Uuid::new_v4().to_string();
    assert_eq!(
        store
            .token_standing(&jti, org_id, agent.agent_id)
            .await
            .unwrap(),
        (false, Some(agent.clone()))
    );
    store
        .commit(vec![Write::RevokeToken {
            jti: jti.clone(),
            org_id,
            expires_at: now_ms() + Duration::hours(1),
        }])
        .await
        .unwrap();
    assert_eq!(
        store
            .token_standing(&jti, org_id, agent.agent_id)
            .await
            .unwrap(),
        (true, Some(agent.clone()))
    );
    assert_eq!(
        store
            .token_standing(&jti, Uuid::new_v4(), agent.agent_id)
            .await
            .unwrap(),
        (true, None),
        "another organization's agent is not found"
    );
}

// ----------------------------------------------------------------------------------------------
// Atomic batches.

pub async fn a_failed_name_claim_leaves_neither_the_agent_nor_the_audit_event<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    store.commit(vec![claim(org_id, "taken")]).await.unwrap();

    let late = agent(org_id, "Taken", now_ms());
    let event = audit_event(
        org_id,
        late.created_at,
        AuditAction::AgentCreated,
        Outcome::Success,
        Some(late.agent_id),
    );
    let result = store
        .commit(vec![
            new_agent(&late),
            Write::ClaimAgentName {
                org_id,
                name_key: Agent::name_key(&late.name),
                agent_id: late.agent_id,
            },
            Write::Audit(event.clone()),
        ])
        .await;

    assert_condition_failed(&result, 1);
    assert_eq!(store.get_agent(org_id, late.agent_id).await.unwrap(), None);
    assert_eq!(store.list_agents(org_id).await.unwrap(), Vec::new());
    let now = now_ms();
    let not_before = now - Duration::days(1);
    assert_eq!(
        store
            .get_audit_event(org_id, event.event_id, not_before, now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .query_audit(&audit_query(org_id, now))
            .await
            .unwrap()
            .events,
        Vec::new()
    );
}

/// State with one of everything, and a batch that touches all of it with every kind of write.
struct Fixture {
    org: Organization,
    agent: Agent,
    credential: Credential,
    new_credential: Credential,
    event: AuditEvent,
    jti: String,
    batch: Vec<Write>,
}

async fn fixture<S: Store>(store: &S) -> Fixture {
    let org = org(Plan::Free);
    let agent = agent(org.org_id, "held", now_ms());
    let credential = credential(org.org_id, agent.agent_id, now_ms());
    store
        .commit(vec![
            Write::CreateOrg(org.clone()),
            new_agent(&agent),
            claim(org.org_id, "held"),
            new_credential(&credential),
        ])
        .await
        .unwrap();

    let new_credential = self::credential(org.org_id, agent.agent_id, now_ms());
    let event = audit_event(
        org.org_id,
        now_ms(),
        AuditAction::AgentUpdated,
        Outcome::Success,
        Some(agent.agent_id),
    );
    let jti = Uuid::new_v4().to_string();
    let batch = vec![
        Write::SetPlan {
            org_id: org.org_id,
            plan: Plan::Enterprise,
        },
        Write::PutAgent {
            agent: Agent {
                name: "renamed".into(),
                version: 2,
                ..agent.clone()
            },
            expected_version: Some(1),
        },
        claim(org.org_id, "renamed"),
        Write::ReleaseAgentName {
            org_id: org.org_id,
            name_key: "held".into(),
        },
        Write::PutCredential {
            credential: Credential {
                status: CredentialStatus::Revoked,
                version: 2,
                ..credential.clone()
            },
            expected_version: Some(1),
        },
        self::new_credential(&new_credential),
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
            expires_at: now_ms() + Duration::hours(1),
        },
        Write::Audit(event.clone()),
    ];
    Fixture {
        org,
        agent,
        credential,
        new_credential,
        event,
        jti,
        batch,
    }
}

pub async fn a_failed_last_write_undoes_every_kind_of_earlier_write<S: Store + 'static>(
    store: Arc<S>,
) {
    let Fixture {
        org,
        agent,
        credential,
        new_credential,
        event,
        jti,
        mut batch,
    } = fixture(&*store).await;
    // A write on an item the batch has not touched (a batch touches each item at most once),
    // whose condition fails: an agent that does not exist at version 1.
    batch.push(Write::PutAgent {
        agent: self::agent(org.org_id, "ghost", now_ms()),
        expected_version: Some(1),
    });
    let last = batch.len() - 1;

    assert_condition_failed(&store.commit(batch).await, last);

    let org_id = org.org_id;
    assert_eq!(store.get_org(org_id).await.unwrap(), Some(org));
    assert_eq!(
        store.get_agent(org_id, agent.agent_id).await.unwrap(),
        Some(agent)
    );
    assert_eq!(
        store
            .credential_by_client_id(credential.client_id)
            .await
            .unwrap(),
        Some(credential)
    );
    assert_eq!(
        store
            .credential_by_client_id(new_credential.client_id)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.usage(org_id, "2026-03").await.unwrap(),
        Usage::default()
    );
    assert!(!store.is_token_revoked(&jti).await.unwrap());
    let now = now_ms();
    assert_eq!(
        store
            .get_audit_event(org_id, event.event_id, now - Duration::days(1), now)
            .await
            .unwrap(),
        None
    );
    // The claim made by the batch is free, and the one it released is still held.
    store.commit(vec![claim(org_id, "renamed")]).await.unwrap();
    assert_condition_failed(&store.commit(vec![claim(org_id, "held")]).await, 0);
}

pub async fn a_batch_of_every_kind_of_write_lands_together<S: Store + 'static>(store: Arc<S>) {
    let Fixture {
        org,
        agent,
        credential,
        new_credential,
        event,
        jti,
        batch,
    } = fixture(&*store).await;

    store.commit(batch).await.unwrap();

    let org_id = org.org_id;
    assert_eq!(
        store.get_org(org_id).await.unwrap().map(|o| o.plan),
        Some(Plan::Enterprise)
    );
    let renamed = Agent {
        name: "renamed".into(),
        version: 2,
        ..agent.clone()
    };
    assert_eq!(
        store.get_agent(org_id, agent.agent_id).await.unwrap(),
        Some(renamed)
    );
    let revoked = Credential {
        status: CredentialStatus::Revoked,
        version: 2,
        ..credential.clone()
    };
    assert_eq!(
        store
            .credential_by_client_id(credential.client_id)
            .await
            .unwrap(),
        Some(revoked)
    );
    assert_eq!(
        store
            .credential_by_client_id(new_credential.client_id)
            .await
            .unwrap(),
        Some(new_credential)
    );
    assert_eq!(
        store.usage(org_id, "2026-03").await.unwrap(),
        Usage {
            agents: 1,
            token_requests: 1
        }
    );
    assert!(store.is_token_revoked(&jti).await.unwrap());
    let now = now_ms();
    assert_eq!(
        store
            .get_audit_event(org_id, event.event_id, now - Duration::days(1), now)
            .await
            .unwrap(),
        Some(event)
    );
    assert_condition_failed(&store.commit(vec![claim(org_id, "renamed")]).await, 0);
    store.commit(vec![claim(org_id, "held")]).await.unwrap();
}

pub async fn the_first_failed_condition_is_reported_at_its_index<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    store.commit(vec![claim(org_id, "taken")]).await.unwrap();
    let harmless = || Write::RevokeToken {
        jti: Uuid::new_v4().to_string(),
        org_id,
        expires_at: now_ms(),
    };

    for failing in 0..4 {
        let mut batch: Vec<Write> = (0..4).map(|_| harmless()).collect();
        batch[failing] = claim(org_id, "taken");
        assert_condition_failed(&store.commit(batch).await, failing);
    }
    let two_failures = vec![
        harmless(),
        Write::SetPlan {
            org_id: Uuid::new_v4(),
            plan: Plan::Free,
        },
        claim(org_id, "taken"),
    ];
    assert_condition_failed(&store.commit(two_failures).await, 1);
}

pub async fn each_failed_condition_names_its_guard_wherever_it_stands<S: Store + 'static>(
    store: Arc<S>,
) {
    let org = org(Plan::Free);
    let org_id = org.org_id;
    let existing = agent(org_id, "existing", now_ms());
    let existing_credential = credential(org_id, existing.agent_id, now_ms());
    store
        .commit(vec![
            Write::CreateOrg(org.clone()),
            new_agent(&existing),
            new_credential(&existing_credential),
            claim(org_id, "taken"),
            Write::CountAgents {
                org_id,
                delta: 1,
                limit: 1,
            },
            Write::CountTokenRequest {
                org_id,
                month: "2026-03".into(),
                limit: 1,
            },
        ])
        .await
        .unwrap();
    let mut stale = existing.clone();
    stale.version += 1;
    let mut stale_credential = existing_credential.clone();
    stale_credential.version += 1;
    let failing: Vec<(Write, Guard)> = vec![
        (Write::CreateOrg(org.clone()), Guard::OrgIsNew),
        (
            Write::SetPlan {
                org_id: Uuid::new_v4(),
                plan: Plan::Enterprise,
            },
            Guard::OrgExists,
        ),
        (
            Write::PutAgent {
                agent: stale,
                expected_version: Some(7),
            },
            Guard::StaleVersion,
        ),
        (
            Write::PutCredential {
                credential: stale_credential,
                expected_version: Some(7),
            },
            Guard::StaleVersion,
        ),
        (claim(org_id, "taken"), Guard::NameTaken),
        (
            Write::CountAgents {
                org_id,
                delta: 1,
                limit: 1,
            },
            Guard::AgentLimit,
        ),
        (
            Write::CountTokenRequest {
                org_id,
                month: "2026-03".into(),
                limit: 1,
            },
            Guard::TokenQuota,
        ),
    ];
    for (write, guard) in failing {
        assert_eq!(write.guard(), Some(guard));
        // First, and behind an unconditional write: the guard, not the place, says what failed.
        for batch in [
            vec![write.clone()],
            vec![
                Write::RevokeToken {
                    jti: Uuid::new_v4().to_string(),
                    org_id,
                    expires_at: now_ms(),
                },
                write.clone(),
            ],
        ] {
            let result = store.commit(batch).await;
            assert!(
                matches!(result, Err(StoreError::ConditionFailed { guard: failed, .. }) if failed == guard),
                "expected {guard:?} to fail, got {result:?}"
            );
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Audit.

pub async fn an_audit_event_with_details_and_actor_reads_back_equal<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let now = now_ms();
    let event = audit_event(
        org_id,
        now - Duration::minutes(1),
        AuditAction::TokenDenied,
        Outcome::Failure,
        Some(Uuid::new_v4()),
    );
    record_audit(&*store, std::slice::from_ref(&event)).await;

    let got = store
        .get_audit_event(org_id, event.event_id, now - Duration::days(1), now)
        .await
        .unwrap();
    assert_eq!(got.as_ref(), Some(&event));
    assert_eq!(
        store
            .query_audit(&audit_query(org_id, now))
            .await
            .unwrap()
            .events,
        vec![event]
    );
}

pub async fn an_audit_event_with_every_optional_field_empty_reads_back_equal<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let now = now_ms();
    let event = AuditEvent {
        actor: Actor::operator(),
        source_ip: None,
        user_agent: None,
        details: serde_json::Map::new(),
        resource: format!("organization/{org_id}"),
        ..audit_event(
            org_id,
            now - Duration::minutes(1),
            AuditAction::OrganizationCreated,
            Outcome::Success,
            None,
        )
    };
    let client = AuditEvent {
        actor: Actor::client(None),
        ..audit_event(
            org_id,
            now - Duration::minutes(2),
            AuditAction::TokenDenied,
            Outcome::Failure,
            None,
        )
    };
    record_audit(&*store, &[event.clone(), client.clone()]).await;

    for expected in [event, client] {
        let got = store
            .get_audit_event(org_id, expected.event_id, now - Duration::days(1), now)
            .await
            .unwrap();
        assert_eq!(got, Some(expected));
    }
}

pub async fn audit_events_come_newest_first_with_ties_broken_by_event_id<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let now = now_ms();
    let t = now - Duration::hours(1);
    let events: Vec<AuditEvent> = [0, 5, 5, 5, 1, 3, 5, 0]
        .into_iter()
        .map(|ms| {
            audit_event(
                org_id,
                t + Duration::milliseconds(ms),
                AuditAction::TokenIssued,
                Outcome::Success,
                None,
            )
        })
        .collect();
    record_audit(&*store, &events).await;

    let page = store.query_audit(&audit_query(org_id, now)).await.unwrap();
    let mut expected = events;
    newest_first(&mut expected);
    assert_eq!(page.events, expected);
    assert_eq!(page.next, None);
}

pub async fn paging_through_57_audit_events_ten_at_a_time_yields_each_exactly_once<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let now = now_ms();
    // Three events per instant, so pages split ties and the event id must resume the order.
    let events: Vec<AuditEvent> = (0..57)
        .map(|i| {
            let at = now - Duration::minutes(10) + Duration::milliseconds(i / 3);
            audit_event(org_id, at, AuditAction::TokenIssued, Outcome::Success, None)
        })
        .collect();
    record_audit(&*store, &events).await;

    let query = AuditQuery {
        limit: 10,
        ..audit_query(org_id, now)
    };
    let first = store.query_audit(&query).await.unwrap();
    assert_eq!(first.events.len(), 10);
    assert!(first.next.is_some());

    let walked = walk_audit(&*store, &query).await;
    assert_eq!(walked, expected_audit(&events, &query));
    assert_eq!(walked.len(), 57);
}

pub async fn paging_a_filtered_audit_query_skips_and_repeats_nothing<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let now = now_ms();
    let watched = Uuid::new_v4();
    let other = Uuid::new_v4();
    let actions = [
        AuditAction::TokenIssued,
        AuditAction::TokenDenied,
        AuditAction::AgentUpdated,
    ];
    let events: Vec<AuditEvent> = (0..60)
        .map(|i| {
            let at = now - Duration::minutes(10) + Duration::milliseconds(i / 4);
            let subject = if i % 2 == 0 { watched } else { other };
            let outcome = if i % 5 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            audit_event(org_id, at, actions[i as usize % 3], outcome, Some(subject))
        })
        .collect();
    record_audit(&*store, &events).await;

    let base = AuditQuery {
        limit: 4,
        ..audit_query(org_id, now)
    };
    let queries = [
        AuditQuery {
            agent_id: Some(watched),
            ..base.clone()
        },
        AuditQuery {
            action: Some(AuditAction::TokenDenied),
            ..base.clone()
        },
        AuditQuery {
            outcome: Some(Outcome::Failure),
            limit: 3,
            ..base.clone()
        },
        AuditQuery {
            agent_id: Some(other),
            action: Some(AuditAction::TokenIssued),
            ..base.clone()
        },
    ];
    for query in queries {
        let expected = expected_audit(&events, &query);
        assert!(
            expected.len() > query.limit,
            "the filter must span several pages"
        );
        assert_eq!(walk_audit(&*store, &query).await, expected, "{query:?}");
    }
}

pub async fn audit_queries_filter_by_agent_action_and_outcome<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    let now = now_ms();
    let agents = [Some(Uuid::new_v4()), Some(Uuid::new_v4()), None];
    let actions = [
        AuditAction::AgentCreated,
        AuditAction::TokenIssued,
        AuditAction::TokenDenied,
    ];
    let outcomes = [Outcome::Success, Outcome::Failure];
    let mut events = Vec::new();
    let mut at = now - Duration::hours(1);
    for subject in agents {
        for action in actions {
            for outcome in outcomes {
                at += Duration::seconds(1);
                events.push(audit_event(org_id, at, action, outcome, subject));
            }
        }
    }
    record_audit(&*store, &events).await;

    let base = audit_query(org_id, now);
    let mut queries = vec![base.clone()];
    for subject in agents.iter().flatten() {
        queries.push(AuditQuery {
            agent_id: Some(*subject),
            ..base.clone()
        });
    }
    for action in actions {
        queries.push(AuditQuery {
            action: Some(action),
            ..base.clone()
        });
    }
    for outcome in outcomes {
        queries.push(AuditQuery {
            outcome: Some(outcome),
            ..base.clone()
        });
    }
    queries.push(AuditQuery {
        agent_id: agents[0],
        action: Some(AuditAction::TokenIssued),
        outcome: Some(Outcome::Failure),
        ..base.clone()
    });
    queries.push(AuditQuery {
        agent_id: Some(Uuid::new_v4()),
        ..base.clone()
    });
    queries.push(AuditQuery {
        action: Some(AuditAction::CredentialRotated),
        ..base.clone()
    });

    for query in queries {
        let page = store.query_audit(&query).await.unwrap();
        assert_eq!(page.events, expected_audit(&events, &query), "{query:?}");
        assert_eq!(page.next, None);
    }
}

pub async fn audit_queries_keep_to_the_not_before_and_until_window<S: Store + 'static>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let now = now_ms();
    let t = now - Duration::hours(1);
    let events: Vec<AuditEvent> = (-2..=2)
        .map(|s| {
            audit_event(
                org_id,
                t + Duration::seconds(s),
                AuditAction::TokenIssued,
                Outcome::Success,
                None,
            )
        })
        .collect();
    record_audit(&*store, &events).await;

    let window = AuditQuery {
        not_before: t - Duration::seconds(1),
        until: Some(t + Duration::seconds(1)),
        ..audit_query(org_id, now)
    };
    let got = store.query_audit(&window).await.unwrap().events;
    assert_eq!(got, expected_audit(&events, &window));
    assert_eq!(got.len(), 3, "both ends of the window are inclusive");

    let open_ended = AuditQuery {
        not_before: t,
        ..audit_query(org_id, now)
    };
    assert_eq!(
        store.query_audit(&open_ended).await.unwrap().events,
        expected_audit(&events, &open_ended)
    );
    let upper = AuditQuery {
        until: Some(t),
        ..audit_query(org_id, now)
    };
    assert_eq!(
        store.query_audit(&upper).await.unwrap().events,
        expected_audit(&events, &upper)
    );
    let paged = AuditQuery { limit: 1, ..window };
    assert_eq!(
        walk_audit(&*store, &paged).await,
        expected_audit(&events, &paged)
    );

    let before_retention = events[1].event_id;
    assert_eq!(
        store
            .get_audit_event(org_id, before_retention, t, now)
            .await
            .unwrap(),
        None
    );
    let at_retention_start = &events[2];
    assert_eq!(
        store
            .get_audit_event(org_id, at_retention_start.event_id, t, now)
            .await
            .unwrap()
            .as_ref(),
        Some(at_retention_start)
    );
}

pub async fn audit_events_past_their_expiry_are_never_returned<S: Store + 'static>(store: Arc<S>) {
    let org_id = Uuid::new_v4();
    let now = now_ms();
    let expiring_at = |expires_at: DateTime<Utc>| AuditEvent {
        expires_at,
        ..audit_event(
            org_id,
            now - Duration::days(2),
            AuditAction::TokenIssued,
            Outcome::Success,
            None,
        )
    };
    let expired = expiring_at(now - Duration::milliseconds(1));
    let expiring_now = expiring_at(now);
    let kept = expiring_at(now + Duration::milliseconds(1));
    record_audit(
        &*store,
        &[expired.clone(), expiring_now.clone(), kept.clone()],
    )
    .await;

    let query = audit_query(org_id, now);
    assert_eq!(
        store.query_audit(&query).await.unwrap().events,
        vec![kept.clone()]
    );
    let not_before = now - Duration::days(30);
    assert_eq!(
        store
            .get_audit_event(org_id, expired.event_id, not_before, now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_audit_event(org_id, expiring_now.event_id, not_before, now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_audit_event(org_id, kept.event_id, not_before, now)
            .await
            .unwrap(),
        Some(kept.clone())
    );

    // Seen from before the expiry, the same events are all there.
    let earlier = now - Duration::days(1);
    let from_earlier = audit_query(org_id, earlier);
    assert_eq!(
        store.query_audit(&from_earlier).await.unwrap().events.len(),
        3
    );
    assert_eq!(
        store
            .get_audit_event(org_id, expired.event_id, not_before, earlier)
            .await
            .unwrap(),
        Some(expired)
    );
}

pub async fn another_organizations_audit_events_are_never_returned<S: Store + 'static>(
    store: Arc<S>,
) {
    let mine = Uuid::new_v4();
    let theirs = Uuid::new_v4();
    let now = now_ms();
    let subject = Uuid::new_v4();
    let at = now - Duration::minutes(5);
    let my_event = audit_event(
        mine,
        at,
        AuditAction::TokenIssued,
        Outcome::Success,
        Some(subject),
    );
    let their_event = audit_event(
        theirs,
        at,
        AuditAction::TokenIssued,
        Outcome::Success,
        Some(subject),
    );
    record_audit(&*store, &[my_event.clone(), their_event.clone()]).await;

    let not_before = now - Duration::days(1);
    assert_eq!(
        store
            .get_audit_event(mine, their_event.event_id, not_before, now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_audit_event(theirs, my_event.event_id, not_before, now)
            .await
            .unwrap(),
        None
    );
    let by_agent = AuditQuery {
        agent_id: Some(subject),
        ..audit_query(mine, now)
    };
    assert_eq!(
        store.query_audit(&by_agent).await.unwrap().events,
        vec![my_event.clone()]
    );
    let by_action = AuditQuery {
        action: Some(AuditAction::TokenIssued),
        ..audit_query(mine, now)
    };
    assert_eq!(
        store.query_audit(&by_action).await.unwrap().events,
        vec![my_event]
    );
    let nobody = audit_query(Uuid::new_v4(), now);
    assert_eq!(store.query_audit(&nobody).await.unwrap().events, Vec::new());
}

pub async fn failure_counters_add_up_per_key_and_read_zero_when_absent_or_expired<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let now = now_ms();
    let (a, b, gone, never) = (
        format!("client:{}", Uuid::new_v4()),
        format!("ip:{}", Uuid::new_v4()),
        format!("client:{}", Uuid::new_v4()),
        format!("client:{}", Uuid::new_v4()),
    );
    let later = now + Duration::minutes(15);
    for _ in 0..3 {
        store
            .commit(vec![Write::Tally {
                key: a.clone(),
                expires_at: later,
            }])
            .await
            .unwrap();
    }
    store
        .commit(vec![
            Write::Tally {
                key: b.clone(),
                expires_at: later,
            },
            Write::Tally {
                key: gone.clone(),
                expires_at: now - Duration::seconds(1),
            },
        ])
        .await
        .unwrap();
    let counts = store
        .tallies(&[never.clone(), a.clone(), gone, b.clone()], now)
        .await
        .unwrap();
    assert_eq!(counts, vec![0, 3, 0, 1]);
    assert_eq!(
        store.tallies(&[a], later).await.unwrap(),
        vec![0],
        "a counter ends with its window"
    );
}

pub async fn adding_to_a_tally_returns_its_new_count_and_the_batch_form_agrees<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let key = format!("org-requests#{}", Uuid::new_v4());
    let expires_at = now_ms() + Duration::minutes(1);
    assert_eq!(store.add_tally(&key, expires_at).await.unwrap(), 1);
    assert_eq!(store.add_tally(&key, expires_at).await.unwrap(), 2);
    store
        .commit(vec![Write::Tally {
            key: key.clone(),
            expires_at,
        }])
        .await
        .unwrap();
    assert_eq!(store.add_tally(&key, expires_at).await.unwrap(), 4);
    assert_eq!(store.tallies(&[key], now_ms()).await.unwrap(), vec![4]);
}

pub async fn a_clients_standing_reads_its_credential_and_counters_together<S: Store + 'static>(
    store: Arc<S>,
) {
    let (org_id, agent_id) = (Uuid::new_v4(), Uuid::new_v4());
    let credential = self::credential(org_id, agent_id, now_ms());
    store
        .commit(vec![Write::PutCredential {
            credential: credential.clone(),
            expected_version: None,
        }])
        .await
        .unwrap();
    let key = format!("auth-client#{}", Uuid::new_v4());
    store
        .commit(vec![Write::Tally {
            key: key.clone(),
            expires_at: now_ms() + Duration::minutes(5),
        }])
        .await
        .unwrap();
    let absent = format!("auth-address#{}", Uuid::new_v4());
    let (found, counts) = store
        .client_standing(
            Some(credential.client_id),
            &[key.clone(), absent.clone()],
            now_ms(),
        )
        .await
        .unwrap();
    assert_eq!((found, counts), (Some(credential), vec![1, 0]));
    let (found, counts) = store
        .client_standing(Some(Uuid::new_v4()), &[absent], now_ms())
        .await
        .unwrap();
    assert_eq!((found, counts), (None, vec![0]));
    assert_eq!(
        store.client_standing(None, &[], now_ms()).await.unwrap(),
        (None, vec![])
    );
}

pub async fn parallel_failures_are_all_counted<S: Store + 'static>(store: Arc<S>) {
    let key = format!("client:{}", Uuid::new_v4());
    let expires_at = now_ms() + Duration::minutes(15);
    let barrier = Arc::new(Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.commit(vec![Write::Tally { key, expires_at }]).await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(store.tallies(&[key], now_ms()).await.unwrap(), vec![20]);
}
