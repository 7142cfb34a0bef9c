"""Delegation between agents (token exchange, RFC 8693) with clients written by others (issue 15).

One `agentidp-local` serves every test of this file (a fresh data directory, started by
test_mcp_interop.running_idp); each test makes a cast of its own in the default organization with
its bootstrap admin: an orchestrator (the subject, with `reports:read` and `reports:write`), a
sub-agent and a tool agent (actors, with no scopes of their own) that the orchestrator's delegation
policy names with `reports:read` only, a stranger that it does not name, and a resource (an MCP
server's URL) listing both scopes.

  - openid-client (npm, panva; tests/interop/token_exchange_client.mjs): the sub-agent discovers
    the organization's issuer and exchanges the orchestrator's token with `genericGrantRequest`
    for one bound to the resource; jose's `jwtVerify` checks it against the JWKS (`typ`, `iss`,
    `aud`, `sub` the orchestrator, an `act` claim required) and the script reads `act`;
    `tokenIntrospection` shows the same. The tool agent, with its own token as `actor_token`,
    exchanges the sub-agent's token in turn: `act` nests. The stranger is refused with
    invalid_grant. The same jose checks refuse a token without `act` and a token whose subject
    is not the one expected, so the checks that pass above are checks that can fail;
  - requests-oauth2client (PyPI): `OAuth2Client.token_exchange(subject_token=..., actor_token=...)`
    with the BearerTokens its own `client_credentials` returned (it names their types itself), the
    result's signature verified against the JWKS it fetched at discovery (jwskate), its claims and
    its introspection read; a chain; what is refused (an actor the policy does not name, an
    `actor_token` of another agent, a scope the policy does not delegate); and the kill switch
    (`POST /api/v1/agents/{id}/tokens/revoke`), after which the delegated token is inactive and
    the subject token cannot be exchanged any more.

scripts/interop.sh installs the packages (tests/interop/requirements.txt, package-lock.json),
builds the binaries and runs this file with the others.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import parse_qs

import httpx2
import pytest
import requests
from jwskate import SignedJwt
from requests_oauth2client import BearerToken, OAuth2Client
from requests_oauth2client.exceptions import InvalidGrant, InvalidScope

from test_mcp_interop import HTTP_TIMEOUT, Idp, Org, claims_of, running_idp
from test_private_key_jwt import NODE_TIMEOUT, audit_events, denial_reasons, issued_event, run_node_script

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
READ, WRITE = "reports:read", "reports:write"


# --- the cast ------------------------------------------------------------------------------------


@dataclass
class Party:
    """An agent of the default organization with a client_secret credential."""

    name: str
    agent_id: str
    client_id: str
    client_secret: str

    def actor(self) -> dict[str, str]:
        """The `act` claim of a token this agent got by exchange, as one actor."""
        return {"sub": self.agent_id, "client_id": self.client_id}


def actors(act):
    """The `act` claim without each actor's join time (`iat`: when it joined the chain, which
    its kill switch is compared with), after checking that each has one."""
    assert isinstance(act.get("iat"), int), act
    rest = {name: value for name, value in act.items() if name != "iat"}
    if "act" in rest:
        rest["act"] = actors(rest["act"])
    return rest

def party(org: Org, name: str, scopes: list[str]) -> Party:
    agent = org.api("POST", "/api/v1/agents", {"name": f"{name}-{uuid.uuid4().hex[:8]}", "scopes": scopes})
    credential = org.api("POST", f"/api/v1/agents/{agent['agentId']}/credentials", {})
    return Party(name, agent["agentId"], credential["clientId"], credential["clientSecret"])


@dataclass
class Cast:
    org: Org
    resource: str
    orchestrator: Party
    sub_agent: Party
    tool_agent: Party
    stranger: Party

    def subject_token(self) -> str:
        """A fresh token of the orchestrator (for the management API: any audience will do)."""
        return self.org.token(self.orchestrator.client_id, self.orchestrator.client_secret)

    def exchange_by_hand(self, actor: Party, subject_token: str, **params: str) -> httpx2.Response:
        """The token exchange as a plain form POST, for a step whose client is not under test."""
        return httpx2.post(
            f"{self.org.base}/api/v1/token",
            data={
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": subject_token,
                "subject_token_type": ACCESS_TOKEN,
                **params,
            },
            auth=(actor.client_id, actor.client_secret),
            timeout=HTTP_TIMEOUT,
        )

    def introspect(self, token: str) -> dict[str, Any]:
        response = httpx2.post(
            f"{self.org.base}/api/v1/token/introspect",
            data={"token": token},
            auth=(self.org.client_id, self.org.client_secret),
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    """One agentidp-local for the whole file: every test makes a cast of its own."""
    yield from running_idp(tmp_path_factory.mktemp("agentidp"))


@pytest.fixture
def cast(idp: Idp) -> Cast:
    org = idp.org
    resource = f"https://reports-{uuid.uuid4().hex[:8]}.example.com/mcp"
    org.register_resource(resource, [READ, WRITE])
    orchestrator = party(org, "orchestrator", [READ, WRITE])
    sub_agent = party(org, "sub-agent", [])
    tool_agent = party(org, "tool-agent", [])
    stranger = party(org, "stranger", [READ])
    policy = {"mayAct": [sub_agent.agent_id, tool_agent.agent_id], "scopes": [READ]}
    updated = org.api("PATCH", f"/api/v1/agents/{orchestrator.agent_id}", {"delegation": policy}, expect=200)
    assert updated["delegation"] == policy, updated
    return Cast(org, resource, orchestrator, sub_agent, tool_agent, stranger)


def assert_exchange_audited(cast: Cast, token: str, actors: list[Party]) -> None:
    """The `token.issued` event of an exchanged token: the orchestrator's, the actors nearest first,
    asked for by the nearest actor's client."""
    event = issued_event(cast.org, token)
    assert event["agentId"] == cast.orchestrator.agent_id, event
    assert event["actor"]["clientId"] == actors[0].client_id, event
    details = event["details"]
    assert details["grantType"] == TOKEN_EXCHANGE, details
    assert details["rootSubject"] == cast.orchestrator.agent_id, details
    assert details["actorChain"] == [actor.agent_id for actor in actors], details


# --- openid-client and jose (npm) ----------------------------------------------------------------


@dataclass
class NodeRun:
    returncode: int
    output: dict[str, Any]
    stderr: str

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        return [(r["method"], r["url"], r["status"]) for r in self.output["requests"]]

    def form(self, url: str) -> dict[str, str]:
        [form] = [r["form"] for r in self.output["requests"] if r["method"] == "POST" and r["url"] == url]
        return form

    @property
    def error(self) -> dict[str, Any]:
        assert self.returncode == 1 and "error" in self.output, f"{self.output}\n{self.stderr}"
        return self.output["error"]


def run_token_exchange_client(cast: Cast, actor: Party, **env: str) -> NodeRun:
    """tests/interop/token_exchange_client.mjs as `actor`, discovering the organization's issuer,
    with the TX_ settings `env` (TX_SUBJECT_TOKEN, TX_RESOURCE, TX_EXPECTED_SUBJECT, ...)."""
    settings = {
        "TX_ISSUER": cast.org.issuer,
        "TX_CLIENT_ID": actor.client_id,
        "TX_CLIENT_SECRET": actor.client_secret,
        "TX_TIMEOUT_MS": str(NODE_TIMEOUT * 1000),
        **env,
    }
    return NodeRun(*run_node_script("token_exchange_client.mjs", ("openid-client",), settings))


def test_openid_client_exchanges_the_subjects_token_and_jose_verifies_act(idp: Idp, cast: Cast):
    """The sub-agent, through openid-client's genericGrantRequest, gets a token of the
    orchestrator bound to the resource, with itself in `act`; jose verifies it against the JWKS as
    the resource server would, the orchestrator as `sub` and `act` required."""
    subject_token = cast.subject_token()
    run = run_token_exchange_client(
        cast,
        cast.sub_agent,
        TX_SUBJECT_TOKEN=subject_token,
        TX_SCOPE=READ,
        TX_RESOURCE=cast.resource,
        TX_EXPECTED_SUBJECT=cast.orchestrator.agent_id,
        TX_EXPECTED_ACTOR=cast.sub_agent.agent_id,
    )
    assert run.returncode == 0, f"{run.output}\n{run.stderr}\n{idp.log()}"
    output = run.output
    assert output["issuer"] == cast.org.issuer, output

    token = output["token"]
    assert token["issued_token_type"] == ACCESS_TOKEN, token
    assert token["token_type"].lower() == "bearer", token
    assert token["scope"] == READ, token
    subject = claims_of(subject_token)
    assert 0 < token["expires_in"] <= subject["exp"] - subject["iat"], token

    verified = output["verified"]
    assert verified["protectedHeader"]["typ"] == "at+jwt", verified
    payload = verified["payload"]
    assert payload == claims_of(token["access_token"]), payload
    assert payload["sub"] == cast.orchestrator.agent_id, payload
    assert actors(payload["act"]) == cast.sub_agent.actor(), payload
    assert payload["client_id"] == cast.sub_agent.client_id, payload
    assert payload["aud"] == cast.resource and payload["iss"] == cast.org.issuer, payload
    assert payload["scope"] == READ, payload
    assert payload["exp"] <= subject["exp"], (payload, subject)

    introspection = output["introspection"]
    assert introspection["active"] is True, introspection
    assert introspection["sub"] == cast.orchestrator.agent_id, introspection
    assert actors(introspection["act"]) == cast.sub_agent.actor(), introspection

    base = cast.org.base
    assert run.requests == [
        ("GET", f"{cast.org.issuer}/.well-known/openid-configuration", 200),
        ("POST", f"{base}/api/v1/token", 200),
        ("GET", f"{base}/.well-known/jwks.json", 200),
        ("POST", f"{base}/api/v1/token/introspect", 200),
    ], run.requests
    form = run.form(f"{base}/api/v1/token")
    assert form == {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN,
        "scope": READ,
        "resource": cast.resource,
    }, form
    assert_exchange_audited(cast, token["access_token"], [cast.sub_agent])


def test_openid_client_chain_with_an_actor_token_nests_act(idp: Idp, cast: Cast):
    """The tool agent, through openid-client, exchanges the sub-agent's delegated token, sending
    its own token as `actor_token`: the subject is still the orchestrator, the tool agent the
    outer `act`, the sub-agent nested in it."""
    first = cast.exchange_by_hand(cast.sub_agent, cast.subject_token(), resource=cast.resource)
    assert first.status_code == 200, first.text
    delegated = first.json()["access_token"]
    own_token = cast.org.token(cast.tool_agent.client_id, cast.tool_agent.client_secret)
    run = run_token_exchange_client(
        cast,
        cast.tool_agent,
        TX_SUBJECT_TOKEN=delegated,
        TX_ACTOR_TOKEN=own_token,
        TX_RESOURCE=cast.resource,
        TX_EXPECTED_SUBJECT=cast.orchestrator.agent_id,
        TX_EXPECTED_ACTOR=cast.tool_agent.agent_id,
    )
    assert run.returncode == 0, f"{run.output}\n{run.stderr}\n{idp.log()}"
    chained = {**cast.tool_agent.actor(), "act": cast.sub_agent.actor()}
    payload = run.output["verified"]["payload"]
    assert payload["sub"] == cast.orchestrator.agent_id, payload
    assert actors(payload["act"]) == chained, payload
    assert payload["scope"] == READ, payload
    assert actors(run.output["introspection"]["act"]) == chained, run.output["introspection"]
    form = run.form(f"{cast.org.base}/api/v1/token")
    assert form["actor_token"] == own_token and form["actor_token_type"] == ACCESS_TOKEN, form
    assert_exchange_audited(cast, run.output["token"]["access_token"], [cast.tool_agent, cast.sub_agent])


def test_jose_checks_refuse_a_token_without_act_or_of_another_subject(idp: Idp, cast: Cast):
    """The checks the tests above pass are checks that fail: with the same settings, jose refuses
    the orchestrator's own token for the resource (no `act`), and the delegated token when the
    subject expected is the actor (as if the server had made the actor the subject); the script
    refuses an `act` naming another actor than the one expected."""
    own = cast.org.token(cast.orchestrator.client_id, cast.orchestrator.client_secret, resource=cast.resource)
    assert claims_of(own)["iss"] == cast.org.issuer and claims_of(own)["aud"] == cast.resource
    no_act = run_token_exchange_client(
        cast,
        cast.sub_agent,
        TX_MODE="verify",
        TX_TOKEN=own,
        TX_RESOURCE=cast.resource,
        TX_EXPECTED_SUBJECT=cast.orchestrator.agent_id,
    )
    assert no_act.error["code"] == "ERR_JWT_CLAIM_VALIDATION_FAILED", no_act.error
    assert (no_act.error["claim"], no_act.error["reason"]) == ("act", "missing"), no_act.error

    exchanged = cast.exchange_by_hand(cast.sub_agent, cast.subject_token(), resource=cast.resource)
    assert exchanged.status_code == 200, exchanged.text
    delegated = exchanged.json()["access_token"]
    verify = {"TX_MODE": "verify", "TX_TOKEN": delegated, "TX_RESOURCE": cast.resource}
    wrong_subject = run_token_exchange_client(
        cast, cast.sub_agent, **verify, TX_EXPECTED_SUBJECT=cast.sub_agent.agent_id
    )
    assert wrong_subject.error["code"] == "ERR_JWT_CLAIM_VALIDATION_FAILED", wrong_subject.error
    assert (wrong_subject.error["claim"], wrong_subject.error["reason"]) == ("sub", "check_failed"), wrong_subject.error
    wrong_actor = run_token_exchange_client(
        cast,
        cast.sub_agent,
        **verify,
        TX_EXPECTED_SUBJECT=cast.orchestrator.agent_id,
        TX_EXPECTED_ACTOR=cast.tool_agent.agent_id,
    )
    assert wrong_actor.error["code"] == "ACTOR_MISMATCH", wrong_actor.error
    right = run_token_exchange_client(
        cast,
        cast.sub_agent,
        **verify,
        TX_EXPECTED_SUBJECT=cast.orchestrator.agent_id,
        TX_EXPECTED_ACTOR=cast.sub_agent.agent_id,
    )
    assert right.returncode == 0, f"{right.output}\n{right.stderr}"


def test_openid_client_is_refused_for_an_actor_the_policy_does_not_name(idp: Idp, cast: Cast):
    run = run_token_exchange_client(
        cast, cast.stranger, TX_SUBJECT_TOKEN=cast.subject_token(), TX_RESOURCE=cast.resource
    )
    error = run.error
    assert (error["status"], error["error"]) == (400, "invalid_grant"), error
    assert run.requests[-1] == ("POST", f"{cast.org.base}/api/v1/token", 400), run.requests
    assert denial_reasons(cast.org, cast.stranger.client_id) == ["actor_not_allowed"]


# --- requests-oauth2client (PyPI) ----------------------------------------------------------------


@dataclass
class Ro2cClient:
    """requests-oauth2client's OAuth2Client of one agent, from the organization's discovery
    document, and every form it posted (a response hook on its requests Session)."""

    client: OAuth2Client
    forms: list[tuple[str, int, dict[str, str]]]

    def posted(self, url: str) -> list[dict[str, str]]:
        return [form for posted_url, _, form in self.forms if posted_url == url]


def ro2c_client(cast: Cast, agent: Party) -> Ro2cClient:
    """`OAuth2Client.from_discovery_endpoint(issuer=...)`: the OpenID Connect discovery document
    of the organization's issuer, and the JWKS it names. `testing=True` lets it use plain http on
    loopback. Its client authentication is its default for a secret, client_secret_post."""
    forms: list[tuple[str, int, dict[str, str]]] = []
    session = requests.Session()

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        body = response.request.body or ""
        if isinstance(body, bytes):
            body = body.decode("utf-8")
        form = {name: values[0] for name, values in parse_qs(body).items()}
        forms.append((response.request.url, response.status_code, form))

    session.hooks["response"].append(record)
    client = OAuth2Client.from_discovery_endpoint(
        issuer=cast.org.issuer,
        client_id=agent.client_id,
        client_secret=agent.client_secret,
        session=session,
        testing=True,
    )
    return Ro2cClient(client, forms)


def verified_claims(client: OAuth2Client, token: BearerToken, cast: Cast) -> dict[str, Any]:
    """The token's claims once its signature verifies against the JWKS the client fetched at
    discovery (jwskate, which requests-oauth2client uses), with the issuer's, the audience's and
    the lifetime's checks a resource server makes."""
    jwt: SignedJwt = token.access_token_jwt
    assert jwt.headers["typ"] == "at+jwt", jwt.headers
    assert jwt.verify_signature(client.authorization_server_jwks, alg=jwt.alg), "the signature does not verify"
    assert jwt.issuer == cast.org.issuer, jwt.claims
    assert jwt.audiences == [cast.resource], jwt.claims
    assert not jwt.is_expired(), jwt.claims
    return jwt.claims


def test_requests_oauth2client_token_exchange_with_an_actor_token(idp: Idp, cast: Cast):
    """The orchestrator gets its token with requests-oauth2client's client_credentials; the
    sub-agent, with its own, calls `token_exchange(subject_token=..., actor_token=...)` with the
    two BearerTokens (the library names their types); then the tool agent exchanges the result."""
    orchestrator = ro2c_client(cast, cast.orchestrator)
    subject = orchestrator.client.client_credentials(scope=f"{READ} {WRITE}")
    assert subject.scope == f"{READ} {WRITE}", subject

    sub_agent = ro2c_client(cast, cast.sub_agent)
    own = sub_agent.client.client_credentials()
    delegated = sub_agent.client.token_exchange(
        subject_token=subject, actor_token=own, scope=READ, resource=cast.resource
    )
    assert delegated.scope == READ, delegated
    assert delegated.kwargs.get("issued_token_type") == ACCESS_TOKEN, delegated.as_dict()
    claims = verified_claims(sub_agent.client, delegated, cast)
    assert claims["sub"] == cast.orchestrator.agent_id, claims
    assert actors(claims["act"]) == cast.sub_agent.actor(), claims
    assert claims["client_id"] == cast.sub_agent.client_id, claims
    assert claims["exp"] <= claims_of(subject.access_token)["exp"], claims

    token_endpoint = sub_agent.client.token_endpoint
    [_, form] = sub_agent.posted(token_endpoint)
    assert form == {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject.access_token,
        "subject_token_type": ACCESS_TOKEN,
        "actor_token": own.access_token,
        "actor_token_type": ACCESS_TOKEN,
        "scope": READ,
        "resource": cast.resource,
        "client_id": cast.sub_agent.client_id,
        "client_secret": cast.sub_agent.client_secret,
    }, form
    introspection = sub_agent.client.introspect_token(delegated)
    assert introspection["active"] is True, introspection
    assert introspection["sub"] == cast.orchestrator.agent_id, introspection
    assert actors(introspection["act"]) == cast.sub_agent.actor(), introspection
    assert_exchange_audited(cast, delegated.access_token, [cast.sub_agent])

    tool_agent = ro2c_client(cast, cast.tool_agent)
    chained = tool_agent.client.token_exchange(subject_token=delegated, resource=cast.resource)
    claims = verified_claims(tool_agent.client, chained, cast)
    assert claims["sub"] == cast.orchestrator.agent_id, claims
    assert actors(claims["act"]) == {**cast.tool_agent.actor(), "act": cast.sub_agent.actor()}, claims
    assert claims["scope"] == READ, claims
    assert_exchange_audited(cast, chained.access_token, [cast.tool_agent, cast.sub_agent])


def test_requests_oauth2client_refusals(idp: Idp, cast: Cast):
    """Through requests-oauth2client, each raised as the library's exception for the error, with
    the reason in the audit trail: an actor the policy does not name (InvalidGrant), the
    sub-agent presenting another agent's token as its actor_token (InvalidGrant), and a scope the
    policy does not delegate (InvalidScope)."""
    subject = ro2c_client(cast, cast.orchestrator).client.client_credentials()

    stranger = ro2c_client(cast, cast.stranger).client
    with pytest.raises(InvalidGrant) as refused:
        stranger.token_exchange(subject_token=subject, resource=cast.resource)
    assert refused.value.response.status_code == 400
    assert denial_reasons(cast.org, cast.stranger.client_id) == ["actor_not_allowed"]

    sub_agent = ro2c_client(cast, cast.sub_agent).client
    strangers_token = stranger.client_credentials()
    with pytest.raises(InvalidGrant):
        sub_agent.token_exchange(subject_token=subject, actor_token=strangers_token)
    with pytest.raises(InvalidScope):
        sub_agent.token_exchange(subject_token=subject, scope=WRITE)
    assert denial_reasons(cast.org, cast.sub_agent.client_id) == ["actor_token_invalid", "scope_not_allowed"]
    issued = [
        e
        for e in audit_events(cast.org, "token.issued")
        if e["actor"].get("clientId") in (cast.stranger.client_id, cast.sub_agent.client_id)
        and e["details"].get("grantType") == TOKEN_EXCHANGE
    ]
    assert issued == [], issued


def test_requests_oauth2client_delegation_stops_at_the_kill_switch(idp: Idp, cast: Cast):
    """After the orchestrator's kill switch, the token the sub-agent got by exchange is inactive
    at introspection, and the orchestrator's token it came from cannot be exchanged again."""
    subject = ro2c_client(cast, cast.orchestrator).client.client_credentials()
    sub_agent = ro2c_client(cast, cast.sub_agent).client
    delegated = sub_agent.token_exchange(subject_token=subject, resource=cast.resource)
    assert sub_agent.introspect_token(delegated)["active"] is True

    killed = cast.org.api("POST", f"/api/v1/agents/{cast.orchestrator.agent_id}/tokens/revoke", expect=200)
    assert killed["agentId"] == cast.orchestrator.agent_id, killed
    assert sub_agent.introspect_token(delegated) == {"active": False}
    assert cast.introspect(subject.access_token) == {"active": False}
    with pytest.raises(InvalidGrant):
        sub_agent.token_exchange(subject_token=subject, resource=cast.resource)
    assert denial_reasons(cast.org, cast.sub_agent.client_id) == ["subject_token_invalid"]
