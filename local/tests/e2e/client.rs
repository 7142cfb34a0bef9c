//! A typed client of the HTTP API: one method per operation, so a test names what it does
//! instead of building the request. Each method sends the request the tests used to build by
//! hand and asserts nothing: it returns the whole [`Response`], failures included, for the test
//! to judge.

use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use crate::support::{Response, TestServer};

/// How a caller authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// An access token, as the management API and the token endpoints take it.
    Bearer(&'a str),
    /// client_secret_basic: a client authenticating itself to introspect or revoke.
    Basic { client_id: &'a str, secret: &'a str },
}

/// The API as one caller sees it. A copy is cheap, and each call takes one, so the future of a
/// call borrows nothing of a temporary `Api`.
#[derive(Clone, Copy)]
pub struct Api<'a> {
    server: &'a TestServer,
    auth: Auth<'a>,
}

impl TestServer {
    /// The API called with the bearer access token `token`.
    pub fn api<'a>(&'a self, token: &'a str) -> Api<'a> {
        Api {
            server: self,
            auth: Auth::Bearer(token),
        }
    }

    /// The API called by the client `client_id`, authenticated with client_secret_basic.
    pub fn api_as_client<'a>(&'a self, client_id: &'a str, secret: &'a str) -> Api<'a> {
        Api {
            server: self,
            auth: Auth::Basic { client_id, secret },
        }
    }
}

/// `path`, with `?query` when there is one.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

impl Api<'_> {
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.server.request(method, path);
        match self.auth {
            Auth::Bearer(token) => request.bearer_auth(token),
            Auth::Basic { client_id, secret } => request.basic_auth(client_id, Some(secret)),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.server.send(request).await
    }

    /// `POST /api/v1/agents` with `body`.
    pub async fn create_agent(self, body: Value) -> Response {
        self.call(Method::POST, "/api/v1/agents", Some(body)).await
    }

    /// `GET /api/v1/agents`, with `query` (`status=active&limit=5`) if not empty.
    pub async fn list_agents(self, query: &str) -> Response {
        self.call(Method::GET, &with_query("/api/v1/agents", query), None)
            .await
    }

    pub async fn get_agent(self, agent_id: &str) -> Response {
        self.call(Method::GET, &format!("/api/v1/agents/{agent_id}"), None)
            .await
    }

    /// `PATCH /api/v1/agents/{agentId}` with `changes`.
    pub async fn update_agent(self, agent_id: &str, changes: Value) -> Response {
        self.call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent_id}"),
            Some(changes),
        )
        .await
    }

    pub async fn suspend(self, agent_id: &str) -> Response {
        self.update_agent(agent_id, json!({"status": "suspended"}))
            .await
    }

    pub async fn reactivate(self, agent_id: &str) -> Response {
        self.update_agent(agent_id, json!({"status": "active"}))
            .await
    }

    /// `DELETE /api/v1/agents/{agentId}`: decommissioning.
    pub async fn delete_agent(self, agent_id: &str) -> Response {
        self.call(Method::DELETE, &format!("/api/v1/agents/{agent_id}"), None)
            .await
    }

    /// `POST /api/v1/resources` with `body`.
    pub async fn create_resource(self, body: Value) -> Response {
        self.call(Method::POST, "/api/v1/resources", Some(body))
            .await
    }

    /// `GET /api/v1/resources`, with `query` (`page=2&limit=5`) if not empty.
    pub async fn list_resources(self, query: &str) -> Response {
        self.call(Method::GET, &with_query("/api/v1/resources", query), None)
            .await
    }

    pub async fn get_resource(self, resource_id: &str) -> Response {
        self.call(
            Method::GET,
            &format!("/api/v1/resources/{resource_id}"),
            None,
        )
        .await
    }

    /// `PATCH /api/v1/resources/{resourceId}` with `changes`.
    pub async fn update_resource(self, resource_id: &str, changes: Value) -> Response {
        self.call(
            Method::PATCH,
            &format!("/api/v1/resources/{resource_id}"),
            Some(changes),
        )
        .await
    }

    pub async fn delete_resource(self, resource_id: &str) -> Response {
        self.call(
            Method::DELETE,
            &format!("/api/v1/resources/{resource_id}"),
            None,
        )
        .await
    }

    /// `POST /api/v1/agents/{agentId}/credentials` with `body` (`{}`, or an `expiresAt`).
    pub async fn generate_credential(self, agent_id: &str, body: Value) -> Response {
        self.call(
            Method::POST,
            &format!("/api/v1/agents/{agent_id}/credentials"),
            Some(body),
        )
        .await
    }

    /// `GET /api/v1/agents/{agentId}/credentials`, with `query` if not empty.
    pub async fn list_credentials(self, agent_id: &str, query: &str) -> Response {
        self.call(
            Method::GET,
            &with_query(&format!("/api/v1/agents/{agent_id}/credentials"), query),
            None,
        )
        .await
    }

    pub async fn rotate(self, agent_id: &str, credential_id: &str) -> Response {
        self.call(
            Method::POST,
            &format!("/api/v1/agents/{agent_id}/credentials/{credential_id}/rotate"),
            Some(json!({})),
        )
        .await
    }

    pub async fn revoke_credential(self, agent_id: &str, credential_id: &str) -> Response {
        self.call(
            Method::DELETE,
            &format!("/api/v1/agents/{agent_id}/credentials/{credential_id}"),
            None,
        )
        .await
    }

    /// `POST /api/v1/token/introspect` of `token`.
    pub async fn introspect(self, token: &str) -> Response {
        self.server
            .send(
                self.request(Method::POST, "/api/v1/token/introspect")
                    .form(&[("token", token)]),
            )
            .await
    }

    /// `POST /api/v1/token/revoke` of `token`.
    pub async fn revoke_token(self, token: &str) -> Response {
        self.server
            .send(
                self.request(Method::POST, "/api/v1/token/revoke")
                    .form(&[("token", token)]),
            )
            .await
    }

    /// `GET /api/v1/audit`, with `query` (`limit=10&action=agent.updated`) if not empty: one
    /// page. [`TestServer::audit_events`] follows the cursors.
    pub async fn audit(self, query: &str) -> Response {
        self.call(Method::GET, &with_query("/api/v1/audit", query), None)
            .await
    }

    pub async fn audit_event(self, event_id: &str) -> Response {
        self.call(Method::GET, &format!("/api/v1/audit/{event_id}"), None)
            .await
    }
}
