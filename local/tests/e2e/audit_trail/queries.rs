//! Reading the trail: the filters select exactly the matching events, and the cursors page
//! through them once each, newest first, only under the query that made them.

use std::sync::Arc;

use agentidp_core::domain::time::format_timestamp;
use agentidp_core::store::Store;
use serde_json::{Value, json};

use super::{ids, org};
use crate::support::{Response, TestServer};

/// Each event of `all` the predicate keeps, in the same order.
fn keep(all: &[Value], predicate: impl Fn(&Value) -> bool) -> Vec<Value> {
    all.iter().filter(|e| predicate(e)).cloned().collect()
}

async fn the_filters_select_exactly_the_matching_events(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "filters").await;
    let t = org.token.as_str();
    let mut marks = Vec::new();
    let x = server.create_agent(t, "x", &["weather:read"]).await;
    server.clock.advance(chrono::Duration::seconds(10));
    let y = server.create_agent(t, "y", &["weather:read"]).await;
    for agent in [&x, &y] {
        server.clock.advance(chrono::Duration::seconds(10));
        marks.push(server.idp.now() - chrono::Duration::seconds(5));
        let (_, client_id, secret) = server.create_credential(t, agent).await;
        server.clock.advance(chrono::Duration::seconds(10));
        server.token(&client_id, &secret).await;
        server.clock.advance(chrono::Duration::seconds(10));
        assert_eq!(
            server.token_request(&client_id, "wrong", None).await.status,
            401
        );
        server.clock.advance(chrono::Duration::seconds(10));
        let patched = server
            .api(t)
            .update_agent(agent, json!({"owner": "ops"}))
            .await;
        assert_eq!(patched.status, 200);
    }
    server.clock.advance(chrono::Duration::seconds(10));
    marks.push(server.idp.now() - chrono::Duration::seconds(5));
    let all = server.audit_events(t, "").await;
    assert!(all.len() >= 12, "{all:#?}");

    let at = |e: &Value| {
        agentidp_core::domain::time::parse_timestamp(e["timestamp"].as_str().unwrap()).unwrap()
    };
    let checks: Vec<(String, Vec<Value>)> = vec![
        (
            format!("&agentId={x}"),
            keep(&all, |e| e["agentId"] == x.as_str()),
        ),
        (
            format!("&agentId={y}"),
            keep(&all, |e| e["agentId"] == y.as_str()),
        ),
        (
            "&action=token.issued".into(),
            keep(&all, |e| e["action"] == "token.issued"),
        ),
        (
            "&action=agent.updated".into(),
            keep(&all, |e| e["action"] == "agent.updated"),
        ),
        ("&action=token.revoked".into(), vec![]),
        (
            "&outcome=failure".into(),
            keep(&all, |e| e["outcome"] == "failure"),
        ),
        (
            "&outcome=success".into(),
            keep(&all, |e| e["outcome"] == "success"),
        ),
        (
            format!("&agentId={y}&action=token.denied&outcome=failure"),
            keep(&all, |e| {
                e["agentId"] == y.as_str() && e["action"] == "token.denied"
            }),
        ),
        (
            format!("&agentId={x}&outcome=success&action=token.denied"),
            vec![],
        ),
        (
            format!("&from={}", format_timestamp(&marks[1])),
            keep(&all, |e| at(e) >= marks[1]),
        ),
        (
            format!("&to={}", format_timestamp(&marks[1])),
            keep(&all, |e| at(e) <= marks[1]),
        ),
        (
            format!(
                "&from={}&to={}",
                format_timestamp(&marks[0]),
                format_timestamp(&marks[1])
            ),
            keep(&all, |e| at(e) >= marks[0] && at(e) <= marks[1]),
        ),
        (
            format!(
                "&from={}&to={}&action=token.issued",
                format_timestamp(&marks[0]),
                format_timestamp(&marks[1])
            ),
            keep(&all, |e| {
                at(e) >= marks[0] && at(e) <= marks[1] && e["action"] == "token.issued"
            }),
        ),
        (format!("&from={}", format_timestamp(&marks[2])), vec![]),
    ];
    for (query, expected) in checks {
        let got = server.audit_events(t, &query.replace('+', "%2B")).await;
        assert_eq!(got, expected, "{query}");
    }
    // The windows hold what the steps wrote: x's credential, token, denial and update.
    let window = keep(&all, |e| at(e) >= marks[0] && at(e) <= marks[1]);
    let actions: Vec<&str> = window
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "agent.updated",
            "token.denied",
            "token.issued",
            "credential.generated"
        ],
        "{window:#?}"
    );

    // Malformed filters are refused.
    for query in [
        "agentId=not-a-uuid",
        "action=agent.exploded",
        "outcome=maybe",
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
    ] {
        let response = server.api(t).audit(query).await;
        assert_eq!(response.status, 400, "{query}: {}", response.text);
        assert_eq!(
            response.code(),
            "VALIDATION_ERROR",
            "{query}: {}",
            response.text
        );
    }
    let backwards = format!(
        "from={}&to={}",
        format_timestamp(&marks[1]).replace('+', "%2B"),
        format_timestamp(&marks[0]).replace('+', "%2B")
    );
    let response = server.api(t).audit(&backwards).await;
    assert_eq!(response.status, 400, "{}", response.text);
    assert_eq!(response.code(), "VALIDATION_ERROR");
}

/// Follows `nextCursor` with `limit`, returning each page.
async fn pages(server: &TestServer, token: &str, query: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page = format!("limit={limit}{query}");
        if let Some(c) = &cursor {
            page.push_str(&format!("&cursor={c}"));
        }
        let response = server.api(token).audit(&page).await;
        assert_eq!(response.status, 200, "{page}: {}", response.text);
        assert_eq!(response.body["limit"], limit, "{}", response.text);
        let data = response.body["data"].as_array().unwrap().clone();
        assert!(data.len() <= limit);
        pages.push(data);
        match response.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 100, "the cursors never end");
    }
}

async fn cursor_pagination_yields_each_event_once_newest_first(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let org = org(&server, "pages").await;
    let t = org.token.as_str();
    let agent = server.create_agent(t, "subject", &[]).await;
    let (_, client_id, _) = server.create_credential(t, &agent).await;
    // 25 updates; some share an instant, so ties on the timestamp must page correctly too. Three
    // failures in between, for the filters that select few events among many.
    for i in 0..25 {
        if i % 3 != 0 {
            server.clock.advance(chrono::Duration::seconds(1));
        }
        let response = server
            .api(t)
            .update_agent(&agent, json!({"description": format!("v{i}")}))
            .await;
        assert_eq!(response.status, 200, "{}", response.text);
        if i % 8 == 4 {
            assert_eq!(
                server.token_request(&client_id, "wrong", None).await.status,
                401
            );
        }
    }
    let all = server.audit_events(t, "&action=agent.updated").await;
    assert_eq!(all.len(), 25);

    let paged = pages(&server, t, "&action=agent.updated", 10).await;
    assert_eq!(paged.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
    let flat: Vec<Value> = paged.concat();
    assert_eq!(flat, all, "paging gives the same sequence as one page");
    let mut unique = ids(&flat);
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 25, "an event appeared twice");
    let stamps: Vec<&str> = flat
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {stamps:?}"
    );
    assert!(stamps[0] > stamps[24]);

    // An exact multiple of the page size ends without an empty page.
    let paged = pages(&server, t, "&action=agent.updated", 5).await;
    assert_eq!(
        paged.iter().map(Vec::len).collect::<Vec<_>>(),
        [5, 5, 5, 5, 5]
    );
    assert_eq!(paged.concat(), all);

    // Unfiltered, over everything the organization has.
    let everything = server.audit_events(t, "").await;
    let paged = pages(&server, t, "", 10).await;
    assert_eq!(paged.concat(), everything);
    assert_eq!(paged.len(), everything.len().div_ceil(10));

    // Filters that select a few events among many, or many of one agent, page the same way.
    for (query, limit, sizes) in [
        ("&outcome=failure".to_owned(), 1, vec![1, 1, 1]),
        (format!("&agentId={agent}&outcome=failure"), 2, vec![2, 1]),
        (
            format!("&agentId={agent}&action=token.denied"),
            2,
            vec![2, 1],
        ),
        (format!("&agentId={agent}"), 7, vec![7, 7, 7, 7, 2]),
    ] {
        let whole = server.audit_events(t, &query).await;
        let paged = pages(&server, t, &query, limit).await;
        assert_eq!(
            paged.iter().map(Vec::len).collect::<Vec<_>>(),
            sizes,
            "{query}"
        );
        assert_eq!(paged.concat(), whole, "{query}");
    }

    // Events written while paging do not disturb the pages already promised.
    let first = server.api(t).audit("limit=10&action=agent.updated").await;
    server.clock.advance(chrono::Duration::seconds(1));
    let response = server
        .api(t)
        .update_agent(&agent, json!({"description": "late"}))
        .await;
    assert_eq!(response.status, 200);
    let cursor = first.str("nextCursor");
    let second = server
        .api(t)
        .audit(&format!("limit=10&action=agent.updated&cursor={cursor}"))
        .await;
    assert_eq!(second.body["data"].as_array().unwrap()[..], all[10..20]);
}

async fn a_cursor_from_another_organization_or_other_filters_is_refused(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let a = org(&server, "org-a").await;
    let b = org(&server, "org-b").await;
    for o in [&a, &b] {
        for i in 0..3 {
            server
                .create_agent(&o.token, &format!("agent-{i}"), &[])
                .await;
        }
    }
    let (as_a, as_b) = (server.api(&a.token), server.api(&b.token));
    let first = as_a.audit("limit=2").await;
    let cursor = first.str("nextCursor");
    let filtered = as_a.audit("limit=1&action=agent.created").await;
    let filtered_cursor = filtered.str("nextCursor");

    let assert_refused = |response: &Response, what: &str| {
        assert_eq!(response.status, 400, "{what}: {}", response.text);
        assert_eq!(
            response.code(),
            "VALIDATION_ERROR",
            "{what}: {}",
            response.text
        );
        assert_eq!(
            response.body["details"][0]["field"], "cursor",
            "{what}: {}",
            response.text
        );
    };
    // Another organization.
    let response = as_b.audit(&format!("limit=2&cursor={cursor}")).await;
    assert_refused(&response, "org B with org A's cursor");
    let response = as_b
        .audit(&format!(
            "limit=1&action=agent.created&cursor={filtered_cursor}"
        ))
        .await;
    assert_refused(&response, "org B with org A's filtered cursor");
    // Other filters.
    for query in [
        "&action=agent.created",
        "&outcome=success",
        &format!("&agentId={}", a.agent_id),
        "&from=2020-01-01T00:00:00Z",
    ] {
        let response = as_a.audit(&format!("limit=2{query}&cursor={cursor}")).await;
        assert_refused(&response, query);
    }
    let response = as_a
        .audit(&format!("limit=1&cursor={filtered_cursor}"))
        .await;
    assert_refused(&response, "a filtered cursor without its filter");
    let response = as_a
        .audit(&format!(
            "limit=1&action=agent.updated&cursor={filtered_cursor}"
        ))
        .await;
    assert_refused(&response, "a filtered cursor under another action");
    // Garbage.
    for garbage in ["x", "e30", "bm90IGpzb24", "%00"] {
        let response = as_a.audit(&format!("cursor={garbage}")).await;
        assert_refused(&response, garbage);
    }
    // With its own filters, in its own organization, the cursor works.
    let response = as_a.audit(&format!("limit=2&cursor={cursor}")).await;
    assert_eq!(response.status, 200, "{}", response.text);
    let response = as_a
        .audit(&format!(
            "limit=1&action=agent.created&cursor={filtered_cursor}"
        ))
        .await;
    assert_eq!(response.status, 200, "{}", response.text);
}

agentidp_testkit::per_store!(
    the_filters_select_exactly_the_matching_events,
    cursor_pagination_yields_each_event_once_newest_first,
    a_cursor_from_another_organization_or_other_filters_is_refused,
);
