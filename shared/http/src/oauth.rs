//! The OAuth endpoints: token (RFC 6749 §4.4), introspection (RFC 7662), revocation
//! (RFC 7009), JWKS (RFC 7517), authorization server metadata (RFC 8414, also at the OpenID
//! Connect discovery path) and an authorization endpoint that supports no response type.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::errors::ApiError;
use crate::{ApiRequest, ApiResponse, Endpoint, json_response, media_type};
use agentidp_core::client_keys::{ASSERTION_ALGORITHMS, ClientAssertion};
use agentidp_core::domain::scope::MANAGEMENT_SCOPES;
use agentidp_core::dpop::DpopProof;
use agentidp_core::secret::ClientSecret;
use agentidp_core::service::Idp;
use agentidp_core::service::tokens::{
    ClientAuthMethod, ClientAuthentication, ClientProofPresented, EndpointAuth, ExchangeRequest,
    OAuthError, TOKEN_EXCHANGE_GRANT, TokenGrant,
};

/// The header a server nonce is sent in (RFC 9449 §8).
pub(crate) const DPOP_NONCE: &str = "dpop-nonce";

/// How long clients may cache the JWKS and metadata. Short, so a new key is picked up soon
/// after rotation; the previous key stays published well beyond this.
const PUBLIC_CACHE_CONTROL: &str = "public, max-age=300";

/// How clients authenticate at the token, introspection and revocation endpoints.
const CLIENT_AUTH_METHODS: [&str; 3] = [
    ClientAuthMethod::Basic.as_str(),
    ClientAuthMethod::Post.as_str(),
    ClientAuthMethod::PrivateKeyJwt.as_str(),
];

fn invalid(description: impl Into<String>) -> ApiError {
    ApiError::OAuth(OAuthError::InvalidRequest(description.into()))
}

/// Where `resource` is an RFC 8707 resource indicator: at the token endpoint only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ResourceIndicators {
    Accepted,
    NotHere,
}

fn repeated(name: &str, indicators: ResourceIndicators) -> ApiError {
    if name == "resource" && indicators == ResourceIndicators::Accepted {
        ApiError::OAuth(OAuthError::InvalidTarget(
            "one resource per token request: ask for a token for each".into(),
        ))
    } else {
        invalid(format!("the parameter {name} is repeated"))
    }
}

/// A JSON object's members in order, repeats included: a map type would keep only the last of
/// two `client_secret`s, where a repeated parameter must be refused.
struct JsonMembers(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for JsonMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = JsonMembers;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonMembers, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(JsonMembers(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// The request parameters, from a form (RFC 6749) or a JSON object of strings. A parameter
/// given twice is refused (RFC 6749 §3.2); where resource indicators are accepted, `resource`
/// twice with `invalid_target`, as RFC 8707 allows several but one token here is for one
/// resource: a token every one of several audiences accepts is replayable at each of them.
fn parameters(
    request: &ApiRequest,
    indicators: ResourceIndicators,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    match media_type(&request.headers).as_deref() {
        Some("application/x-www-form-urlencoded") => {
            for (name, value) in form_urlencoded::parse(&request.body) {
                if params
                    .insert(name.to_string(), value.into_owned())
                    .is_some()
                {
                    return Err(repeated(&name, indicators));
                }
            }
        }
        Some("application/json") => {
            let members: JsonMembers = serde_json::from_slice(&request.body).map_err(|e| {
                if e.is_data() {
                    invalid("the body must be a JSON object")
                } else {
                    invalid("the body is not valid JSON")
                }
            })?;
            for (name, value) in members.0 {
                let Value::String(text) = value else {
                    return Err(invalid(format!("the parameter {name} must be a string")));
                };
                if params.insert(name.clone(), text).is_some() {
                    return Err(repeated(&name, indicators));
                }
            }
        }
        _ => {
            return Err(ApiError::OAuthHttp {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                description: "send application/x-www-form-urlencoded (or application/json)".into(),
            });
        }
    }
    Ok(params)
}

/// `client_secret_basic`: the id and secret are each form-encoded before base64 (RFC 6749 §2.3.1).
fn basic_credentials(request: &ApiRequest) -> Result<Option<(String, String)>, ApiError> {
    let Some(value) = request.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let Some((scheme, encoded)) = value.to_str().ok().and_then(|v| v.split_once(' ')) else {
        return Err(ApiError::OAuth(OAuthError::InvalidClient { basic: true }));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .map_err(|_| ApiError::OAuth(OAuthError::InvalidClient { basic: true }))?;
    let text = String::from_utf8(decoded)
        .map_err(|_| ApiError::OAuth(OAuthError::InvalidClient { basic: true }))?;
    let (id, secret) = text
        .split_once(':')
        .ok_or(ApiError::OAuth(OAuthError::InvalidClient { basic: true }))?;
    let unescape = |s: &str| {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
const JWT_BEARER_CLIENT_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The client's credentials, by exactly one method. `None` when it sent none.
fn client_authentication(
    request: &ApiRequest,
    params: &mut BTreeMap<String, String>,
) -> Result<Option<ClientAuthentication>, ApiError> {
    let basic = basic_credentials(request)?;
    let post_id = params.remove("client_id");
    let post_secret = params.remove("client_secret");
    let assertion_type = params.remove("client_assertion_type");
    let assertion = params.remove("client_assertion");
    match (assertion_type, assertion) {
        (None, None) => {}
        (Some(kind), Some(assertion)) => {
            if basic.is_some() || post_secret.is_some() {
                return Err(invalid("use one client authentication method, not two"));
            }
            // RFC 7521 §4.2.1: an assertion type the server does not support is invalid_client.
            if kind != JWT_BEARER_CLIENT_ASSERTION {
                return Err(ApiError::OAuth(OAuthError::InvalidClient { basic: false }));
            }
            let assertion = ClientAssertion::new(assertion);
            // The client is the assertion's `sub`; a `client_id` sent beside it must be the same.
            let client_id = match (post_id, assertion.claimed_client_id()) {
                (Some(sent), Some(claimed)) if sent == claimed => claimed,
                (None, Some(claimed)) => claimed,
                _ => return Err(ApiError::OAuth(OAuthError::InvalidClient { basic: false })),
            };
            return Ok(Some(ClientAuthentication {
                client_id,
                presented: ClientProofPresented::Assertion(assertion),
                method: ClientAuthMethod::PrivateKeyJwt,
            }));
        }
        _ => {
            return Err(invalid(
                "client_assertion and client_assertion_type are sent together",
            ));
        }
    }
    match (basic, post_id, post_secret) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err(invalid("use one client authentication method, not two"))
        }
        (Some((client_id, secret)), None, None) => Ok(Some(ClientAuthentication {
            client_id,
            presented: ClientProofPresented::Secret(ClientSecret::presented(secret)),
            method: ClientAuthMethod::Basic,
        })),
        (None, Some(client_id), Some(secret)) => Ok(Some(ClientAuthentication {
            client_id,
            presented: ClientProofPresented::Secret(ClientSecret::presented(secret)),
            method: ClientAuthMethod::Post,
        })),
        // A client id without a secret would be a public client; there are none here.
        (None, Some(_), None) | (None, None, Some(_)) => {
            Err(ApiError::OAuth(OAuthError::InvalidClient { basic: false }))
        }
        (None, None, None) => Ok(None),
    }
}

/// RFC 8693 §3: the only token type issued or accepted here.
const ACCESS_TOKEN_TYPE_URN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A parameter that, when sent, must be exactly `expected` (a token type).
fn token_type_parameter(
    params: &BTreeMap<String, String>,
    name: &str,
    required: bool,
) -> Result<(), ApiError> {
    match params.get(name).map(String::as_str) {
        None if !required => Ok(()),
        None => Err(invalid(format!("the {name} parameter is required"))),
        Some(ACCESS_TOKEN_TYPE_URN) => Ok(()),
        Some(_) => Err(invalid(format!(
            "{name} must be {ACCESS_TOKEN_TYPE_URN}: AgentIdP exchanges and issues access tokens only"
        ))),
    }
}

/// The token request's `scope`, when it is well formed (RFC 6749 §3.3).
fn scope_parameter(params: &BTreeMap<String, String>) -> Result<Option<&str>, ApiError> {
    let scope = params.get("scope").map(String::as_str);
    if scope.is_some_and(|s| {
        s.split(' ')
            .any(|t| !t.is_empty() && !agentidp_core::validation::is_scope_token(t))
    }) {
        return Err(ApiError::OAuth(OAuthError::InvalidScope(
            "the scope parameter is malformed".into(),
        )));
    }
    Ok(scope)
}

/// The token request's `resource` (RFC 8707), normalised; RFC 8693's `audience` is taken as
/// the same, since AgentIdP's audiences are its organizations' resource identifiers.
fn resource_parameter(params: &BTreeMap<String, String>) -> Result<Option<String>, ApiError> {
    let normalise = |text: &String| {
        agentidp_core::validation::resource_identifier(text).map_err(|problem| {
            ApiError::OAuth(OAuthError::InvalidTarget(format!("resource {problem}")))
        })
    };
    let resource = params.get("resource").map(normalise).transpose()?;
    let audience = params.get("audience").map(normalise).transpose()?;
    match (resource, audience) {
        (Some(resource), Some(audience)) if resource != audience => Err(ApiError::OAuth(
            OAuthError::InvalidTarget("resource and audience name different targets".into()),
        )),
        (resource, audience) => Ok(resource.or(audience)),
    }
}

/// Token exchange (RFC 8693 §2): the client is the actor, `subject_token` the token of the
/// agent it acts for, `actor_token` (optional) its own.
async fn exchange(
    idp: &Arc<Idp>,
    auth: ClientAuthentication,
    params: &BTreeMap<String, String>,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    let required = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| invalid(format!("the {name} parameter is required")))
    };
    let subject_token = required("subject_token")?;
    token_type_parameter(params, "subject_token_type", true)?;
    let actor_token = params.get("actor_token").map(String::as_str);
    token_type_parameter(params, "actor_token_type", actor_token.is_some())?;
    if actor_token.is_none() && params.contains_key("actor_token_type") {
        return Err(invalid("actor_token_type is sent only with an actor_token"));
    }
    token_type_parameter(params, "requested_token_type", false)?;
    let resource = resource_parameter(params)?;
    let exchange = ExchangeRequest {
        subject_token,
        actor_token,
        scope: scope_parameter(params)?,
        resource: resource.as_deref(),
    };
    let dpop = token_request_proof(request)?;
    let grant = idp
        .exchange_token(auth, exchange, dpop.as_ref(), &request.context)
        .await?;
    Ok(granted(
        &grant,
        json!({ "issued_token_type": ACCESS_TOKEN_TYPE_URN }),
    ))
}

/// A token request's DPoP proof, if it sent one.
fn token_request_proof(request: &ApiRequest) -> Result<Option<DpopProof>, ApiError> {
    crate::dpop_proof(request)
        .map_err(|rejection| ApiError::OAuth(OAuthError::InvalidDpopProof(rejection.to_string())))
}

/// The token response (RFC 6749 §5.1), with `extra` members, and the next DPoP nonce when proofs
/// must carry one (RFC 9449 §8).
fn granted(grant: &TokenGrant, extra: Value) -> ApiResponse {
    let mut body = json!({
        "access_token": grant.access_token,
        "token_type": grant.token_type,
        "expires_in": grant.expires_in,
        "scope": grant.scope,
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let mut response = no_store(json_response(StatusCode::OK, &body));
    if let Some(nonce) = grant
        .dpop_nonce
        .as_deref()
        .and_then(|nonce| HeaderValue::from_str(nonce).ok())
    {
        response.headers_mut().insert(DPOP_NONCE, nonce);
    }
    response
}

/// The grant of RFC 7523 §2.1: a token another issuer gave the workload, as `assertion`.
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A jwt-bearer grant: the assertion proves who the client is, for the federated credential
/// `client_id` names (RFC 6749 §2.3: a client without credentials of its own sends its id).
/// Another client authentication beside it is refused, so that no request is two at once.
fn federated_authentication(
    request: &ApiRequest,
    params: &mut BTreeMap<String, String>,
) -> Result<ClientAuthentication, ApiError> {
    let other_authentication = request.headers.contains_key(header::AUTHORIZATION)
        || ["client_secret", "client_assertion", "client_assertion_type"]
            .iter()
            .any(|name| params.contains_key(*name));
    if other_authentication {
        return Err(invalid(
            "a jwt-bearer grant is authenticated by its assertion: send client_id and assertion \
             only",
        ));
    }
    let client_id = params
        .remove("client_id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            invalid("the client_id parameter is required: the federated credential's")
        })?;
    let assertion = params
        .remove("assertion")
        .filter(|assertion| !assertion.is_empty())
        .ok_or_else(|| invalid("the assertion parameter is required"))?;
    Ok(ClientAuthentication {
        client_id,
        presented: ClientProofPresented::Federated(ClientAssertion::new(assertion)),
        method: ClientAuthMethod::Federated,
    })
}

fn token_parameter(params: &BTreeMap<String, String>) -> Result<&str, ApiError> {
    params
        .get("token")
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid("the token parameter is required"))
}

/// Introspection and revocation accept client authentication or a bearer token.
fn endpoint_auth(
    request: &ApiRequest,
    params: &mut BTreeMap<String, String>,
) -> Result<EndpointAuth, ApiError> {
    if let Some(client) = client_authentication(request, params)? {
        return Ok(EndpointAuth::Client(client));
    }
    match crate::management::presented_token(request) {
        Ok(Some(presented)) => Ok(EndpointAuth::Token(presented)),
        Ok(None) | Err(_) => Err(ApiError::OAuth(OAuthError::InvalidClient { basic: true })),
    }
}

fn public_json(body: &impl serde::Serialize) -> ApiResponse {
    let mut response = json_response(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(PUBLIC_CACHE_CONTROL),
    );
    response
}

fn no_store(mut response: ApiResponse) -> ApiResponse {
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

pub(super) async fn serve(
    idp: &Arc<Idp>,
    endpoint: Endpoint,
    path_params: &[String],
    request: ApiRequest,
) -> Result<ApiResponse, ApiError> {
    match endpoint {
        Endpoint::Token => {
            let mut params = parameters(&request, ResourceIndicators::Accepted)?;
            let auth = match params.get("grant_type").map(String::as_str) {
                None => return Err(invalid("the grant_type parameter is required")),
                Some("client_credentials") => client_authentication(&request, &mut params)?
                    .ok_or(ApiError::OAuth(OAuthError::InvalidClient { basic: true }))?,
                Some(JWT_BEARER_GRANT) => federated_authentication(&request, &mut params)?,
                Some(TOKEN_EXCHANGE_GRANT) => {
                    let auth = client_authentication(&request, &mut params)?
                        .ok_or(ApiError::OAuth(OAuthError::InvalidClient { basic: true }))?;
                    return exchange(idp, auth, &params, &request).await;
                }
                Some(_) => return Err(ApiError::OAuth(OAuthError::UnsupportedGrantType)),
            };
            let scope = scope_parameter(&params)?;
            let resource = params
                .get("resource")
                .map(|text| {
                    agentidp_core::validation::resource_identifier(text).map_err(|problem| {
                        ApiError::OAuth(OAuthError::InvalidTarget(format!("resource {problem}")))
                    })
                })
                .transpose()?;
            let dpop = token_request_proof(&request)?;
            let grant = idp
                .issue_token(
                    auth,
                    scope,
                    resource.as_deref(),
                    dpop.as_ref(),
                    &request.context,
                )
                .await?;
            Ok(granted(&grant, json!({})))
        }
        Endpoint::Introspect => {
            let mut params = parameters(&request, ResourceIndicators::NotHere)?;
            let auth = endpoint_auth(&request, &mut params)?;
            let token = token_parameter(&params)?;
            let body = match idp.introspect(&auth, token, &request.context).await? {
                Some(active) => {
                    let c = active.claims;
                    let mut body = json!({
                        "active": true,
                        "scope": c.scope,
                        "client_id": c.client_id,
                        "sub": c.sub,
                        "aud": c.aud,
                        "iss": c.iss,
                        "exp": c.exp,
                        "iat": c.iat,
                        "nbf": c.nbf,
                        "jti": c.jti,
                        "token_type": if c.cnf.is_some() { "DPoP" } else { "Bearer" },
                        "org_id": c.org_id,
                    });
                    if let Some(cnf) = &c.cnf {
                        body["cnf"] = json!(cnf);
                    }
                    if let Some(act) = &c.act {
                        body["act"] = json!(act);
                    }
                    if let Some(may_act) = &c.may_act {
                        body["may_act"] = may_act.clone();
                    }
                    body
                }
                None => json!({ "active": false }),
            };
            Ok(no_store(json_response(StatusCode::OK, &body)))
        }
        Endpoint::Revoke => {
            let mut params = parameters(&request, ResourceIndicators::NotHere)?;
            let auth = endpoint_auth(&request, &mut params)?;
            let token = token_parameter(&params)?;
            idp.revoke_token(&auth, token, &request.context).await?;
            Ok(no_store(json_response(StatusCode::OK, &json!({}))))
        }
        Endpoint::Jwks => {
            let keys = idp.published_keys().await.map_err(OAuthError::from)?;
            Ok(public_json(&keys.jwks()))
        }
        Endpoint::Metadata | Endpoint::OpenIdConfiguration => metadata(idp, None).await,
        Endpoint::OrganizationMetadata => {
            let org_id = path_params
                .first()
                .and_then(|id| uuid::Uuid::parse_str(id).ok());
            let Some(org_id) = org_id else {
                return Err(ApiError::UnknownIssuer);
            };
            let issuer = idp
                .organization_issuer(org_id)
                .await?
                .ok_or(ApiError::UnknownIssuer)?;
            metadata(idp, Some(issuer)).await
        }
        Endpoint::Authorize => Err(authorize(&request)),
        _ => Err(ApiError::RouteNotFound),
    }
}

/// RFC 8414 metadata: the platform's, or an organization's issuer's (the issuer of its resource
/// tokens). The endpoints are the platform's either way. An organization's document lists no
/// `scopes_supported`: its tokens carry the scopes of its resources, which are its own to name,
/// never the management scopes, and a client that finds none asks for none. Served at both
/// discovery paths with
/// the same issuer: some verifiers (AWS Bedrock AgentCore's, AGNTCY's) only look at
/// `openid-configuration`. We are not an OpenID Provider (no ID tokens), so the document has no
/// `id_token_*` or `subject_types_supported`. `authorization_endpoint` is listed because the
/// MCP SDKs' metadata models require it; `response_types_supported` is empty, as that endpoint
/// supports none.
async fn metadata(idp: &Idp, organization_issuer: Option<String>) -> Result<ApiResponse, ApiError> {
    let keys = idp.published_keys().await.map_err(OAuthError::from)?;
    let config = idp.config();
    let base = &config.public_url;
    let mut document = json!({
        "issuer": organization_issuer.as_deref().unwrap_or(&config.issuer),
        "authorization_endpoint": format!("{base}/api/v1/authorize"),
        "token_endpoint": format!("{base}/api/v1/token"),
        "introspection_endpoint": format!("{base}/api/v1/token/introspect"),
        "revocation_endpoint": format!("{base}/api/v1/token/revoke"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "grant_types_supported": ["client_credentials", JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "introspection_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "access_token_signing_alg_values_supported": keys.algorithms(),
        "dpop_signing_alg_values_supported": ASSERTION_ALGORITHMS,
    });
    if organization_issuer.is_none() {
        document["scopes_supported"] = json!(MANAGEMENT_SCOPES);
    }
    Ok(public_json(&document))
}

/// The authorization endpoint. Agents get tokens from the token endpoint, with no user and no
/// browser, so no response type is supported: every request is answered with an error in the
/// body, never by redirecting, as RFC 6749 §4.1.2.1 requires when the redirection URI cannot be
/// checked (no client has one registered). `response_type` missing is `invalid_request`, any
/// value `unsupported_response_type`; no parameter value is echoed back.
fn authorize(request: &ApiRequest) -> ApiError {
    let params = if request.method == http::Method::POST {
        parameters(request, ResourceIndicators::NotHere)
    } else {
        query_parameters(&request.query)
    };
    let params = match params {
        Ok(params) => params,
        Err(refused) => return refused,
    };
    if params.contains_key("response_type") {
        ApiError::Unauthorizable {
            error: "unsupported_response_type",
            description: "AgentIdP supports no response type at this endpoint: agents obtain tokens from the token endpoint (client_credentials)".into(),
        }
    } else {
        ApiError::Unauthorizable {
            error: "invalid_request",
            description: "response_type is required".into(),
        }
    }
}

/// The parameters of a query string, a repeated one refused as in a body (RFC 6749 §3.1).
fn query_parameters(query: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if params
            .insert(name.to_string(), value.into_owned())
            .is_some()
        {
            return Err(invalid(format!("the parameter {name} is repeated")));
        }
    }
    Ok(params)
}
