//! Retention: after ninety days an event is gone from every read.

use std::sync::Arc;

use agentidp_core::domain::time::format_timestamp;
use agentidp_core::store::Store;

use super::{ids, new_events, org};
use crate::support::TestServer;

async fn events_older_than_ninety_days_are_gone_from_list_and_get(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "retention").await;
    let agent = server
        .create_agent(&org.token, "old", &["weather:read"])
        .await;
    server.create_credential(&org.token, &agent).await;
    let old = server.audit_events(&org.token, "").await;
    assert!(old.len() >= 4, "{old:#?}");

    // Day 89: all still there.
    server.clock.advance(chrono::Duration::days(89));
    let token = server.admin_token(&org.admin).await;
    let listed = server.audit_events(&token, "").await;
    assert_eq!(
        new_events(&old, &listed).len(),
        1,
        "only the new token's event is new"
    );
    for event in &old {
        let id = event["eventId"].as_str().unwrap();
        let response = server.api(&token).audit_event(id).await;
        assert_eq!(response.status, 200, "{}", response.text);
    }
    let day_89 = new_events(&old, &listed);

    // Day 91: the old events are past retention, whatever the filters say.
    server.clock.advance(chrono::Duration::days(2));
    let token = server.admin_token(&org.admin).await;
    let listed = server.audit_events(&token, "").await;
    let old_ids = ids(&old);
    assert!(
        ids(&listed).iter().all(|id| !old_ids.contains(id)),
        "{listed:#?}"
    );
    assert_eq!(
        listed.len(),
        2,
        "the day-89 and day-91 token events remain: {listed:#?}"
    );
    assert!(listed.contains(&day_89[0]));
    for query in [
        format!("&agentId={agent}"),
        "&action=agent.created".to_owned(),
        "&from=2000-01-01T00:00:00Z".to_owned(),
        format!(
            "&to={}",
            format_timestamp(&(server.idp.now() - chrono::Duration::days(30)))
        ),
    ] {
        let filtered = server.audit_events(&token, &query).await;
        assert!(
            ids(&filtered).iter().all(|id| !old_ids.contains(id)),
            "{query}: {filtered:#?}"
        );
    }
    let missing = server
        .api(&token)
        .audit_event(&uuid::Uuid::new_v4().to_string())
        .await;
    assert_eq!(missing.status, 404);
    for id in &old_ids {
        let response = server.api(&token).audit_event(id).await;
        assert_eq!(response.status, 404, "{}", response.text);
        assert_eq!(response.code(), "AUDIT_EVENT_NOT_FOUND");
        assert_eq!(
            response.body, missing.body,
            "an expired event is answered as a missing one"
        );
    }
}

agentidp_testkit::per_store!(events_older_than_ninety_days_are_gone_from_list_and_get);
