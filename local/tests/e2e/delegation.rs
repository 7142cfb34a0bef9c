//! Delegation between agents (RFC 8693 token exchange): an actor the subject's policy names
//! gets a token of the subject with itself in `act`; the chain is bounded, its scopes only
//! narrow, and revoking any token of the chain, suspending any agent in it, or pulling a kill
//! switch stops every token derived from it, at introspection and at the management API.

use std::sync::Arc;

use agentidp_core::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Response, TestServer};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An agent with a credential: its id, client id and secret.
struct Party {
    agent: String,
    client_id: String,
    secret: String,
}

async fn party(server: &TestServer, admin_token: &str, name: &str, scopes: &[&str]) -> Party {
    let agent = server.create_agent(admin_token, name, scopes).await;
    let (_, client_id, secret) = server.create_credential(admin_token, &agent).await;
    Party {
        agent,
        client_id,
        secret,
    }
}

impl Party {
    async fn token(&self, server: &TestServer) -> String {
        server.token(&self.client_id, &self.secret).await
    }
}

/// The actor's token exchange of `subject_token`, with `extra` parameters.
async fn exchange(
    server: &TestServer,
    actor: &Party,
    subject_token: &str,
    extra: &[(&str, &str)],
) -> Response {
    let mut form = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", subject_token),
        ("subject_token_type", ACCESS_TOKEN),
    ];
    form.extend_from_slice(extra);
    server
        .send(
            server
                .request(Method::POST, "/api/v1/token")
                .basic_auth(&actor.client_id, Some(&actor.secret))
                .form(&form),
        )
        .await
}

async fn set_policy(server: &TestServer, admin_token: &str, agent: &str, policy: Value) {
    let changed = server
        .api(admin_token)
        .update_agent(agent, json!({ "delegation": policy }))
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);
}

/// Pulls the agent's kill switch, as its administrator.
async fn kill_switch(server: &TestServer, admin_token: &str, agent: &str) {
    let killed = server
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/tokens/revoke"),
            Some(admin_token),
            None,
        )
        .await;
    assert_eq!(killed.status, 200, "{}", killed.text);
}

fn active(server_introspection: &Value) -> bool {
    server_introspection["active"] == true
}

/// An organization with a subject agent (`reports:read`, `agents:read`) whose policy lets
/// `actors` act for it with `reports:read` only.
async fn organization(
    server: &TestServer,
    name: &str,
    actors: usize,
) -> (String, Party, Vec<Party>) {
    let admin = server.new_org(name).await;
    let admin_token = server.admin_token(&admin).await;
    let subject = party(
        server,
        &admin_token,
        "orchestrator",
        &["agents:read", "reports:read"],
    )
    .await;
    let mut acting = Vec::new();
    for index in 0..actors {
        acting.push(
            party(
                server,
                &admin_token,
                &format!("sub-agent-{index}"),
                &["tools:call"],
            )
            .await,
        );
    }
    let may_act: Vec<&str> = acting.iter().map(|a| a.agent.as_str()).collect();
    set_policy(
        server,
        &admin_token,
        &subject.agent,
        json!({ "mayAct": may_act, "scopes": ["reports:read", "agents:read"] }),
    )
    .await;
    (admin_token, subject, acting)
}

async fn an_actor_the_policy_names_gets_the_subjects_token_with_itself_in_act(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let (admin_token, subject, actors) = organization(&server, "delegation", 1).await;
    let actor = &actors[0];
    let subject_token = subject.token(&server).await;
    // The subject's own tokens say who may act for it (the credential keeps a copy of the
    // policy, as it does of the scopes).
    let own = server.introspect(&admin_token, &subject_token).await;
    assert_eq!(own["may_act"], json!({ "sub": actor.agent }), "{own}");
    assert!(own.get("act").is_none());
    let exchanged = exchange(&server, actor, &subject_token, &[("scope", "reports:read")]).await;
    assert_eq!(exchanged.status, 200, "{}", exchanged.text);
    assert_eq!(exchanged.body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(exchanged.body["token_type"], "Bearer");
    assert_eq!(exchanged.body["scope"], "reports:read");
    let delegated = exchanged.str("access_token");

    let seen = server.introspect(&admin_token, &delegated).await;
    assert!(active(&seen), "{seen}");
    assert_eq!(seen["sub"], subject.agent, "the subject stays the subject");
    assert_eq!(seen["act"]["sub"], actor.agent);
    assert_eq!(seen["act"]["client_id"], actor.client_id);
    assert!(seen["act"].get("act").is_none(), "one actor: {seen}");
    assert_eq!(seen["may_act"], json!({ "sub": actor.agent }));
    // The actor acts as the subject at the management API, within what was delegated.
    let listed = server.api(&delegated).list_agents("").await;
    assert_eq!(listed.status, 403, "reports:read only: {}", listed.text);
    let broader = exchange(&server, actor, &subject_token, &[]).await;
    assert_eq!(
        broader.body["scope"], "agents:read reports:read",
        "{}",
        broader.text
    );
    assert_eq!(
        server
            .api(&broader.str("access_token"))
            .list_agents("")
            .await
            .status,
        200
    );

    let issued = server
        .audit_events(
            &admin_token,
            &format!("&action=token.issued&agentId={}", subject.agent),
        )
        .await;
    let exchanged_event = issued
        .iter()
        .find(|e| e["details"]["grantType"] == TOKEN_EXCHANGE)
        .unwrap();
    assert_eq!(exchanged_event["details"]["rootSubject"], subject.agent);
    assert_eq!(
        exchanged_event["details"]["actorChain"],
        json!([actor.agent])
    );
    assert_eq!(exchanged_event["actor"]["clientId"], actor.client_id);
}

async fn chains_nest_up_to_the_maximum_depth_and_no_further(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (admin_token, subject, actors) = organization(&server, "chains", 4).await;
    let mut token = subject.token(&server).await;
    for (depth, actor) in actors.iter().enumerate().take(3) {
        let exchanged = exchange(&server, actor, &token, &[]).await;
        assert_eq!(
            exchanged.status,
            200,
            "depth {}: {}",
            depth + 1,
            exchanged.text
        );
        token = exchanged.str("access_token");
        let seen = server.introspect(&admin_token, &token).await;
        assert!(active(&seen));
        // The newest actor outermost, the first innermost.
        let mut chain = Vec::new();
        let mut act = &seen["act"];
        while act.is_object() {
            chain.push(act["sub"].as_str().unwrap().to_owned());
            act = &act["act"];
        }
        let expected: Vec<String> = actors[..=depth]
            .iter()
            .rev()
            .map(|a| a.agent.clone())
            .collect();
        assert_eq!(chain, expected);
    }
    let too_deep = exchange(&server, &actors[3], &token, &[]).await;
    assert_eq!(too_deep.status, 400, "{}", too_deep.text);
    assert_eq!(too_deep.oauth_error(), "invalid_request");
    let denied = server
        .audit_events(&admin_token, "&action=token.denied")
        .await;
    assert_eq!(denied[0]["details"]["reason"], "delegation_too_deep");
}

async fn a_delegation_never_widens_or_outlives_what_it_came_from(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (_, subject, actors) = organization(&server, "narrowing", 2).await;
    let subject_token = subject.token(&server).await;
    let actor = &actors[0];
    // Beyond the policy: tools:call is the actor's own scope, not delegated.
    for scope in ["tools:call", "reports:read reports:write", "agents:write"] {
        let widened = exchange(&server, actor, &subject_token, &[("scope", scope)]).await;
        assert_eq!(widened.status, 400, "{scope}: {}", widened.text);
        assert_eq!(widened.oauth_error(), "invalid_scope");
    }
    // A narrower token cannot be exchanged back into a wider one.
    let narrow = exchange(&server, actor, &subject_token, &[("scope", "reports:read")]).await;
    let second = exchange(
        &server,
        &actors[1],
        &narrow.str("access_token"),
        &[("scope", "agents:read")],
    )
    .await;
    assert_eq!(second.oauth_error(), "invalid_scope", "{}", second.text);
    // Never past the subject token's own expiry.
    server.clock.advance(chrono::Duration::seconds(3000));
    let late = exchange(&server, actor, &subject_token, &[]).await;
    assert_eq!(late.status, 200, "{}", late.text);
    assert!(
        late.body["expires_in"].as_i64().unwrap() <= 600,
        "{}",
        late.text
    );
    server.clock.advance(chrono::Duration::seconds(601));
    let expired = exchange(&server, actor, &subject_token, &[]).await;
    assert_eq!(expired.oauth_error(), "invalid_grant", "{}", expired.text);
}

async fn no_one_acts_for_an_agent_whose_policy_does_not_name_them(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (admin_token, subject, actors) = organization(&server, "consent", 1).await;
    let stranger = party(&server, &admin_token, "stranger", &["agents:read"]).await;
    let subject_token = subject.token(&server).await;
    let refused = exchange(&server, &stranger, &subject_token, &[]).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert_eq!(refused.oauth_error(), "invalid_grant");
    // An agent without a policy: no one may act for it, not even itself.
    let lone = party(&server, &admin_token, "lone", &["agents:read"]).await;
    let lone_token = lone.token(&server).await;
    assert_eq!(
        exchange(&server, &actors[0], &lone_token, &[])
            .await
            .oauth_error(),
        "invalid_grant"
    );
    assert_eq!(
        exchange(&server, &lone, &lone_token, &[])
            .await
            .oauth_error(),
        "invalid_grant"
    );
    // Withdrawing the policy applies to the next exchange, and to the subject's next tokens.
    set_policy(&server, &admin_token, &subject.agent, Value::Null).await;
    let after = server
        .introspect(&admin_token, &subject.token(&server).await)
        .await;
    assert!(after.get("may_act").is_none(), "{after}");
    assert_eq!(
        exchange(&server, &actors[0], &subject_token, &[])
            .await
            .oauth_error(),
        "invalid_grant"
    );
    // A subject token of another organization, whatever its policy says.
    let (_, foreign_subject, _) = organization(&server, "foreign", 1).await;
    let foreign_token = foreign_subject.token(&server).await;
    assert_eq!(
        exchange(&server, &actors[0], &foreign_token, &[])
            .await
            .oauth_error(),
        "invalid_grant"
    );
    // Garbage and the wrong token types.
    assert_eq!(
        exchange(&server, &actors[0], "not-a-token", &[])
            .await
            .oauth_error(),
        "invalid_grant"
    );
    let wrong_type = server
        .send(
            server
                .request(Method::POST, "/api/v1/token")
                .basic_auth(&actors[0].client_id, Some(&actors[0].secret))
                .form(&[
                    ("grant_type", TOKEN_EXCHANGE),
                    ("subject_token", subject_token.as_str()),
                    (
                        "subject_token_type",
                        "urn:ietf:params:oauth:token-type:id_token",
                    ),
                ]),
        )
        .await;
    assert_eq!(
        wrong_type.oauth_error(),
        "invalid_request",
        "{}",
        wrong_type.text
    );
    let reasons: Vec<String> = server
        .audit_events(&admin_token, "&action=token.denied")
        .await
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "actor_not_allowed"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "subject_token_invalid"),
        "{reasons:?}"
    );
}

/// The privilege escalation to guard against: writing oneself into a more privileged agent's
/// policy, then acting for it.
async fn a_caller_cannot_name_itself_in_a_more_privileged_agents_policy(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("escalation").await;
    let admin_token = server.admin_token(&admin).await;
    let admin_agent = server.introspect(&admin_token, &admin_token).await["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    let (manager, manager_token) = server
        .agent_with_token(&admin_token, "manager", &["agents:read", "agents:write"])
        .await;
    let refused = server
        .api(&manager_token)
        .update_agent(
            &admin_agent,
            json!({ "delegation": { "mayAct": [manager] } }),
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.code(), "INSUFFICIENT_SCOPE");
    let admin_view = server.api(&admin_token).get_agent(&admin_agent).await;
    assert!(
        admin_view.body.get("delegation").is_none(),
        "{}",
        admin_view.text
    );
    // Nor stop a more privileged agent's tokens with its kill switch.
    let stopped = server
        .call(
            Method::POST,
            &format!("/api/v1/agents/{admin_agent}/tokens/revoke"),
            Some(&manager_token),
            None,
        )
        .await;
    assert_eq!(stopped.status, 403, "{}", stopped.text);
    assert!(active(&server.introspect(&admin_token, &admin_token).await));
}

async fn revoking_or_stopping_any_link_stops_every_token_derived_from_it(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (admin_token, subject, actors) = organization(&server, "cascade", 2).await;
    let is_active = |token: String| {
        let (server, admin_token) = (&server, admin_token.clone());
        async move {
            let introspected = active(&server.introspect(&admin_token, &token).await);
            let at_api = server.api(&token).list_agents("").await.status;
            assert_eq!(introspected, at_api == 200, "introspection and API agree");
            introspected
        }
    };
    let chain = |subject_token: String| {
        let (server, actors) = (&server, &actors);
        async move {
            let first = exchange(server, &actors[0], &subject_token, &[])
                .await
                .str("access_token");
            let second = exchange(server, &actors[1], &first, &[])
                .await
                .str("access_token");
            (first, second)
        }
    };

    // Revoking the subject token (RFC 7009) stops both links.
    let subject_token = subject.token(&server).await;
    let (first, second) = chain(subject_token.clone()).await;
    assert!(is_active(second.clone()).await);
    let revoked = server.api(&admin_token).revoke_token(&subject_token).await;
    assert_eq!(revoked.status, 200, "{}", revoked.text);
    assert!(!is_active(first).await);
    assert!(!is_active(second).await);

    // Suspending an actor stops what it took part in, and only while it is suspended.
    let (first, second) = chain(subject.token(&server).await).await;
    server.api(&admin_token).suspend(&actors[0].agent).await;
    assert!(!is_active(first.clone()).await);
    assert!(!is_active(second.clone()).await);
    server.api(&admin_token).reactivate(&actors[0].agent).await;
    assert!(is_active(second.clone()).await);

    // The subject's kill switch: every token it holds, and all derived, without knowing them.
    let fresh_subject = subject.token(&server).await;
    server.clock.advance(chrono::Duration::seconds(1));
    kill_switch(&server, &admin_token, &subject.agent).await;
    for token in [fresh_subject, first, second] {
        assert!(!is_active(token).await);
    }
    // The agent itself goes on: a new token works.
    server.clock.advance(chrono::Duration::seconds(1));
    let (_, after) = chain(subject.token(&server).await).await;
    assert!(is_active(after.clone()).await);

    // An actor's kill switch stops the chains it is in, too.
    server.clock.advance(chrono::Duration::seconds(1));
    kill_switch(&server, &admin_token, &actors[1].agent).await;
    assert!(!is_active(after).await);

    // Revoking a credential keeps its tokens valid, as the credential guide says, unless asked.
    server.clock.advance(chrono::Duration::seconds(1));
    let (credential, client_id, secret) =
        server.create_credential(&admin_token, &subject.agent).await;
    let kept = server.token(&client_id, &secret).await;
    let path = format!("/api/v1/agents/{}/credentials/{credential}", subject.agent);
    let plain = server
        .call(Method::DELETE, &path, Some(&admin_token), None)
        .await;
    assert_eq!(plain.status, 204, "{}", plain.text);
    assert!(is_active(kept.clone()).await);
    let (credential, client_id, secret) =
        server.create_credential(&admin_token, &subject.agent).await;
    let leaked = server.token(&client_id, &secret).await;
    let (_, derived) = chain(leaked.clone()).await;
    let path = format!(
        "/api/v1/agents/{}/credentials/{credential}?revokeTokens=true",
        subject.agent
    );
    let revoked = server
        .call(Method::DELETE, &path, Some(&admin_token), None)
        .await;
    assert_eq!(revoked.status, 204, "{}", revoked.text);
    assert!(!is_active(leaked).await);
    assert!(!is_active(derived).await);
    assert!(!is_active(kept).await, "every token of the agent stops");

    let actions: Vec<String> = server
        .audit_events(&admin_token, "&action=agent.tokens_revoked")
        .await
        .iter()
        .map(|e| e["agentId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions.len(), 2, "{actions:?}");
}

/// The race a kill switch must win: exchanges in flight while it is pulled. Every token
/// issued, before or after it, stands on a subject token older than the switch, so none of
/// them may be active once it has answered.
async fn a_kill_switch_during_a_burst_of_exchanges_leaves_none_of_them_active(
    store: Arc<dyn Store>,
) {
    let server = Arc::new(TestServer::start(store).await);
    let (admin_token, subject, actors) = organization(&server, "burst", 1).await;
    let subject_token = subject.token(&server).await;
    server.clock.advance(chrono::Duration::seconds(1));
    let actor = Arc::new(Party {
        agent: actors[0].agent.clone(),
        client_id: actors[0].client_id.clone(),
        secret: actors[0].secret.clone(),
    });
    let mut burst = Vec::new();
    for _ in 0..12 {
        let (server, actor, subject_token) = (
            Arc::clone(&server),
            Arc::clone(&actor),
            subject_token.clone(),
        );
        burst.push(tokio::spawn(async move {
            exchange(&server, &actor, &subject_token, &[]).await
        }));
    }
    kill_switch(&server, &admin_token, &subject.agent).await;
    let mut issued = 0;
    for exchange in burst {
        let response = exchange.await.unwrap();
        if response.status == 200 {
            issued += 1;
            let seen = server
                .introspect(&admin_token, &response.str("access_token"))
                .await;
            assert!(!active(&seen), "a token outlived the kill switch: {seen}");
        } else {
            assert_eq!(response.oauth_error(), "invalid_grant", "{}", response.text);
        }
    }
    println!("{issued} of 12 exchanges were issued around the kill switch");
}

async fn what_an_actor_does_for_its_subject_is_audited_as_its_own_and_found_by_actor(
    store: Arc<dyn Store>,
) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("accountable").await;
    let admin_token = server.admin_token(&admin).await;
    let subject = party(
        &server,
        &admin_token,
        "orchestrator",
        &["agents:read", "agents:write"],
    )
    .await;
    let actor = party(&server, &admin_token, "sub-agent", &[]).await;
    let target = server.create_agent(&admin_token, "worker", &[]).await;
    set_policy(
        &server,
        &admin_token,
        &subject.agent,
        json!({ "mayAct": [actor.agent] }),
    )
    .await;
    let delegated = exchange(&server, &actor, &subject.token(&server).await, &[])
        .await
        .str("access_token");
    let changed = server
        .api(&delegated)
        .update_agent(
            &target,
            json!({ "description": "changed for the orchestrator" }),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.text);

    let by_actor = server
        .audit_events(&admin_token, &format!("&actorAgentId={}", actor.agent))
        .await;
    let mut actions: Vec<&str> = by_actor
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    actions.sort_unstable();
    assert_eq!(actions, ["agent.updated", "token.issued"], "{by_actor:#?}");
    let update = by_actor
        .iter()
        .find(|e| e["action"] == "agent.updated")
        .unwrap();
    assert_eq!(update["actor"]["agentId"], actor.agent, "the actor acted");
    assert_eq!(update["actor"]["actingFor"], subject.agent);
    assert_eq!(update["actor"]["actorChain"], json!([actor.agent]));
    assert_eq!(update["agentId"], target);
    // Everything done on the subject's behalf is one query too.
    let for_subject = server
        .audit_events(&admin_token, &format!("&actorAgentId={}", subject.agent))
        .await;
    assert!(
        for_subject
            .iter()
            .all(|e| e["actor"]["actingFor"] != subject.agent),
        "the subject did not act: {for_subject:#?}"
    );
}

/// Tokens carry `iat` in whole seconds: the switch answers once its second is over, so a token
/// the agent asks for after the answer is not mistaken for one from before it.
async fn a_token_asked_for_after_the_kill_switch_answers_is_honoured(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let admin = server.new_org("after-the-switch").await;
    let admin_token = server.admin_token(&admin).await;
    let agent = party(&server, &admin_token, "worker", &["agents:read"]).await;
    let before = agent.token(&server).await;
    // Half way through a second, as a real switch would mostly be.
    server.clock.advance(chrono::Duration::milliseconds(500));
    kill_switch(&server, &admin_token, &agent.agent).await;
    let after = agent.token(&server).await;
    assert!(!active(&server.introspect(&admin_token, &before).await));
    assert!(
        active(&server.introspect(&admin_token, &after).await),
        "a token issued after the switch answered"
    );
    assert_eq!(server.api(&after).list_agents("").await.status, 200);
}

/// Each agent of a chain is checked against its own start: an actor's kill switch stops what it
/// held, not what it is given after, even for a subject token older than the switch.
async fn an_actors_kill_switch_stops_what_it_held_not_what_it_gets_after(store: Arc<dyn Store>) {
    let server = TestServer::start(store).await;
    let (admin_token, subject, actors) = organization(&server, "actor-switch", 1).await;
    let actor = &actors[0];
    let subject_token = subject.token(&server).await;
    server.clock.advance(chrono::Duration::seconds(1));
    let held = exchange(&server, actor, &subject_token, &[])
        .await
        .str("access_token");
    server.clock.advance(chrono::Duration::milliseconds(300));
    kill_switch(&server, &admin_token, &actor.agent).await;
    assert!(!active(&server.introspect(&admin_token, &held).await));
    assert!(
        active(&server.introspect(&admin_token, &subject_token).await),
        "the subject's own token is not the actor's"
    );
    let given_after = exchange(&server, actor, &subject_token, &[]).await;
    assert_eq!(given_after.status, 200, "{}", given_after.text);
    let seen = server
        .introspect(&admin_token, &given_after.str("access_token"))
        .await;
    assert!(active(&seen), "issued after the switch: {seen}");
}

agentidp_testkit::per_store!(
    an_actors_kill_switch_stops_what_it_held_not_what_it_gets_after,
    a_token_asked_for_after_the_kill_switch_answers_is_honoured,
    what_an_actor_does_for_its_subject_is_audited_as_its_own_and_found_by_actor,
    an_actor_the_policy_names_gets_the_subjects_token_with_itself_in_act,
    chains_nest_up_to_the_maximum_depth_and_no_further,
    a_delegation_never_widens_or_outlives_what_it_came_from,
    no_one_acts_for_an_agent_whose_policy_does_not_name_them,
    a_caller_cannot_name_itself_in_a_more_privileged_agents_policy,
    revoking_or_stopping_any_link_stops_every_token_derived_from_it,
    a_kill_switch_during_a_burst_of_exchanges_leaves_none_of_them_active,
);
