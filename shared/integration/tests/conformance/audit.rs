//! The audit trail: reads, order, paging, filters, the time window, expiry and isolation.

use std::sync::Arc;

use agentidp_core::domain::{Actor, AuditAction, AuditEvent, Outcome};
use agentidp_core::store::{AuditPosition, AuditQuery, Store, Write};
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::{audit_event, audit_query, now_ms};

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

pub async fn audit_queries_filter_by_actor_directly_or_anywhere_in_a_delegation_chain<
    S: Store + 'static,
>(
    store: Arc<S>,
) {
    let org_id = Uuid::new_v4();
    let now = now_ms();
    let (subject, actor, inner) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let event = |offset: i64, by: Actor| AuditEvent {
        actor: by,
        ..audit_event(
            org_id,
            now - Duration::seconds(offset),
            AuditAction::AgentUpdated,
            Outcome::Success,
            Some(subject),
        )
    };
    let direct = event(3, Actor::agent(actor, Some(Uuid::new_v4())));
    let outermost = event(
        2,
        Actor::agent(subject, None).delegated(subject, vec![actor, inner]),
    );
    let innermost = event(
        1,
        Actor::client(Some(Uuid::new_v4())).delegated(subject, vec![inner, actor]),
    );
    let unrelated = event(0, Actor::agent(subject, Some(Uuid::new_v4())));
    let all = [&direct, &outermost, &innermost, &unrelated];
    store
        .commit(all.iter().map(|e| Write::Audit((*e).clone())).collect())
        .await
        .unwrap();
    let by_actor = |agent: Uuid| AuditQuery {
        actor_agent_id: Some(agent),
        ..audit_query(org_id, now + Duration::seconds(1))
    };
    let page = store.query_audit(&by_actor(actor)).await.unwrap();
    assert_eq!(
        page.events,
        vec![innermost.clone(), outermost.clone(), direct.clone()],
        "newest first; the delegated events read back with their chain"
    );
    let page = store.query_audit(&by_actor(inner)).await.unwrap();
    assert_eq!(page.events, vec![innermost.clone(), outermost.clone()]);
    let page = store
        .query_audit(&AuditQuery {
            agent_id: Some(subject),
            limit: 2,
            ..by_actor(actor)
        })
        .await
        .unwrap();
    assert_eq!(
        page.events,
        vec![innermost, outermost],
        "with the subject filter, paged"
    );
    assert!(page.next.is_some());
}
