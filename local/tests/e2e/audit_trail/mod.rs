//! Audit completeness: each state change leaves exactly its one event, reads leave none, the
//! filters and cursors work, retention ends visibility, and no secret or token is ever recorded.
//!
//! Each action that changes state has its own test, in the file of what it acts on
//! (organizations, agents, resources, credentials, tokens), so one failing action hides no other;
//! each also matches its whole event against a snapshot in `snapshots/`. This module holds what
//! they share.

mod agents;
mod credentials;
mod organizations;
mod queries;
mod reads;
mod resources;
mod retention;
mod secrets;
mod tokens;
mod trusted_issuers;

use agentidp_core::domain::time::format_timestamp;
use serde_json::{Value, json};

use crate::support::{Admin, Response, TestServer};

struct Org {
    admin: Admin,
    token: String,
    /// The bootstrap admin agent: the actor of every management call here.
    agent_id: String,
}

async fn org(server: &TestServer, name: &str) -> Org {
    let admin = server.new_org(name).await;
    let token = server.admin_token(&admin).await;
    let agent_id = server.introspect(&token, &token).await["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    Org {
        admin,
        token,
        agent_id,
    }
}

impl Org {
    fn actor(&self) -> Value {
        json!({"type": "agent", "agentId": self.agent_id, "clientId": self.admin.client_id})
    }
}

/// Asserts the whole of `event` against the snapshot `name`, in `snapshots/` beside this file.
/// Each id the test knows stands as the name `ids` gives it, wherever it occurs (a `resource`
/// holds one too), and so do the organization's own; the event's id, time and request id, new
/// on every run, are redacted. What is left is the same on both stores.
fn assert_event_snapshot(name: &str, org: &Org, event: &Value, ids: &[(&str, &str)]) {
    let mut names = vec![
        (org.admin.org_id.as_str(), "[org]"),
        (org.agent_id.as_str(), "[admin agent]"),
        (org.admin.client_id.as_str(), "[admin client]"),
        (org.admin.credential_id.as_str(), "[admin credential]"),
    ];
    names.extend_from_slice(ids);
    insta::assert_json_snapshot!(name, named(event, &names), {
        ".eventId" => "[eventId]",
        ".timestamp" => "[timestamp]",
        ".requestId" => "[requestId]",
    });
}

/// `value` with every occurrence of each id in `names` replaced by its name.
fn named(value: &Value, names: &[(&str, &str)]) -> Value {
    match value {
        Value::String(text) => Value::String(
            names
                .iter()
                .fold(text.clone(), |text, (id, name)| text.replace(id, name)),
        ),
        Value::Array(items) => items.iter().map(|item| named(item, names)).collect(),
        Value::Object(fields) => fields
            .iter()
            .map(|(key, field)| (key.clone(), named(field, names)))
            .collect(),
        other => other.clone(),
    }
}

fn client_actor(client_id: &str) -> Value {
    json!({"type": "client", "agentId": null, "clientId": client_id})
}

/// The events of `after` that are not in `before`; every event of `before` must still be there,
/// unchanged.
fn new_events(before: &[Value], after: &[Value]) -> Vec<Value> {
    for event in before {
        assert!(
            after.contains(event),
            "an earlier event changed or vanished: {event}"
        );
    }
    after
        .iter()
        .filter(|e| !before.contains(e))
        .cloned()
        .collect()
}

/// What the one event of a step must say.
struct Expected<'a> {
    action: &'a str,
    outcome: &'a str,
    actor: Value,
    agent_id: Option<&'a str>,
    resource: String,
}

/// The one event a step wrote since `before`, checked against `expected`, against the response
/// that caused it (its request id), and against `GET /api/v1/audit/{eventId}`.
async fn exactly_one_event(
    server: &TestServer,
    token: &str,
    before: &[Value],
    response: &Response,
    expected: Expected<'_>,
) -> Value {
    let after = server.audit_events(token, "").await;
    let written = new_events(before, &after);
    assert_eq!(
        written.len(),
        1,
        "{} wrote {} events: {written:#?}",
        expected.action,
        written.len()
    );
    let event = written.into_iter().next().unwrap();
    let what = format!("{}: {event:#}", expected.action);
    assert_eq!(event["action"], expected.action, "{what}");
    assert_eq!(event["outcome"], expected.outcome, "{what}");
    assert_eq!(event["actor"], expected.actor, "{what}");
    assert_eq!(
        event["agentId"],
        expected.agent_id.map_or(Value::Null, |id| json!(id)),
        "{what}"
    );
    assert_eq!(event["resource"], expected.resource, "{what}");
    assert_eq!(
        event["timestamp"],
        format_timestamp(&server.idp.now()),
        "{what}"
    );
    assert_eq!(event["sourceIp"], "127.0.0.1", "{what}");
    assert!(event["details"].is_object(), "{what}");
    // The event names the request that caused it.
    let request_id = response.header("x-request-id").expect("X-Request-Id");
    assert_eq!(event["requestId"], request_id, "{what}");
    // And it can be fetched on its own, identical.
    let id = event["eventId"].as_str().unwrap();
    let fetched = server.api(token).audit_event(id).await;
    assert_eq!(fetched.status, 200, "{}", fetched.text);
    assert_eq!(fetched.body, event);
    event
}

/// Moves the clock one second on, so each step has its own instant, and returns the trail so far.
async fn tick(server: &TestServer, token: &str) -> Vec<Value> {
    server.clock.advance(chrono::Duration::seconds(1));
    server.audit_events(token, "").await
}

async fn jti_of(server: &TestServer, caller: &str, token: &str) -> String {
    server.introspect(caller, token).await["jti"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_owned())
        .collect()
}
