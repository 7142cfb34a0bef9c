"""DPoP (RFC 9449) with clients written by others (issue 16).

Two `agentidp-local` servers serve this file, each on a fresh data directory (started as
test_mcp_interop.running_idp starts one): one with the defaults (no server nonces) and one with
AGENTIDP_DPOP_NONCES=true. Their issuer, and so their public URL (the base of every `htu`), is
`http://127.0.0.1:PORT`, the URL the clients call. Each test registers its own agent with
`agents:read` and a client_secret credential, with the bootstrap admin of the default
organization; the clients make their own key pairs, with their own APIs:

  - oauth4webapi (npm, panva; tests/interop/dpop_client.mjs): RFC 8414 discovery, a key pair from
    its `generateKeyPair` (ES256, Ed25519, PS256), the handle `DPoP(client, keyPair)` as the `DPoP`
    option of `clientCredentialsGrantRequest` and `protectedResourceRequest`; the token verified
    with jose against the JWKS and its `cnf.jkt` compared with the key's thumbprint; the agent's
    own record and the agent list (with a query, which `htu` leaves out) read with it;
  - openid-client (npm): `randomDPoPKeyPair`, `getDPoPHandle`, `clientCredentialsGrant` and
    `fetchProtectedResource`;
  - the npm `dpop` package alone (`generateKeyPair`, `generateProof`): proofs made by hand for the
    token request and, with `ath`, for each management API call; a proof sent twice is refused;
  - requests-oauth2client (PyPI): `OAuth2Client(dpop_bound_access_tokens=True)` from OpenID
    Connect discovery, whose `client_credentials` returns a `DPoPToken`, used as the auth handler
    of the management API calls (directly and through `OAuth2ClientCredentialsAuth` on an
    `ApiClient`), with ES256, EdDSA and PS256 keys; an agent with `requireDpop` refuses its
    unproofed token request;
  - server nonces: openid-client and requests-oauth2client each retry a token request refused with
    `use_dpop_nonce` by themselves, with the nonce of the DPoP-Nonce header; oauth4webapi
    retries as its documentation shows (`isDPoPNonceError`), the `dpop` package by hand;
  - what a library user sees of a refusal at the management API: the bound token sent as a
    Bearer token (401, a `DPoP` challenge with error="invalid_token"), a proof made with another
    key (401, error="invalid_dpop_proof"), a token that is not one (both challenges), each
    parsed by oauth4webapi (`WWWAuthenticateChallengeError`) or read through requests-oauth2client.

scripts/interop.sh installs the packages (tests/interop/requirements.txt, package-lock.json),
builds the binaries and runs this file with the others.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx2
import pytest
import requests
from jwskate import SignedJwt
from requests_oauth2client import ApiClient, BearerToken, OAuth2Client, OAuth2ClientCredentialsAuth
from requests_oauth2client.dpop import DPoPKey, DPoPToken, MissingDPoPNonce
from requests_oauth2client.exceptions import UnknownTokenEndpointError

from test_mcp_interop import HTTP_TIMEOUT, Idp, Org, agentidp_local, binary, server_environment
from test_private_key_jwt import NODE_TIMEOUT, denial_reasons, issued_event, run_node_script

READ = "agents:read"
DPOP_ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA", "Ed25519"]


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ath(token: str) -> str:
    """RFC 9449 §4.2: base64url(SHA-256(the token's ASCII))."""
    return b64u(hashlib.sha256(token.encode("ascii")).digest())


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638, computed here from a proof's `jwk` header (independently of the clients)."""
    required = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in required}, sort_keys=True, separators=(",", ":"))
    return b64u(hashlib.sha256(canonical.encode("utf-8")).digest())


def challenges(header: str | None) -> list[tuple[str, dict[str, str]]]:
    """WWW-Authenticate challenges (several header lines joined with ", " by the HTTP clients, as
    RFC 9110 §5.3 allows) as (scheme, parameters): a bare token starts a challenge, each
    name="value" after it is one of its parameters (AgentIdP quotes every value)."""
    found: list[tuple[str, dict[str, str]]] = []
    for match in re.finditer(r'([A-Za-z0-9_-]+)(?:\s*=\s*"((?:[^"\\]|\\.)*)")?', header or ""):
        name, value = match.group(1), match.group(2)
        if value is None:
            found.append((name, {}))
        else:
            assert found, f"a parameter before any scheme: {header}"
            found[-1][1][name.lower()] = value
    return found


# --- AgentIdP ------------------------------------------------------------------------------------


@dataclass
class DpopAgent:
    """An agent of the default organization with `agents:read` and a client_secret credential."""

    agent_id: str
    client_id: str
    client_secret: str

    @property
    def own_path(self) -> str:
        return f"/api/v1/agents/{self.agent_id}"


def dpop_agent(org: Org, name: str, **fields: Any) -> DpopAgent:
    agent = org.api("POST", "/api/v1/agents", {"name": f"{name}-{uuid.uuid4().hex[:8]}", "scopes": [READ], **fields})
    credential = org.api("POST", f"/api/v1/agents/{agent['agentId']}/credentials", {})
    return DpopAgent(agent["agentId"], credential["clientId"], credential["clientSecret"])


def running_idp_with(workdir: Path, **settings: str) -> Iterator[Idp]:
    """agentidp-local as test_mcp_interop.running_idp starts it, with these AGENTIDP_ settings."""
    server = agentidp_local.start(
        binary("agentidp-local"),
        workdir / "data",
        workdir / "agentidp-local.log",
        env={**server_environment(), **settings},
        cwd=workdir,
    )
    try:
        yield Idp(server, Org(server.url, server.client_id, server.client_secret))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    """The defaults: DPoP accepted on every grant, no server nonces."""
    yield from running_idp_with(tmp_path_factory.mktemp("agentidp"))


@pytest.fixture(scope="module")
def nonce_idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    """Server nonces on (RFC 9449 §8): a token request's proof must carry one."""
    yield from running_idp_with(tmp_path_factory.mktemp("agentidp-nonces"), AGENTIDP_DPOP_NONCES="true")


def introspect(org: Org, token: str) -> dict[str, Any]:
    response = httpx2.post(
        f"{org.base}/api/v1/token/introspect",
        data={"token": token},
        auth=(org.client_id, org.client_secret),
        timeout=HTTP_TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return response.json()


def assert_bound(org: Org, agent: DpopAgent, access_token: str, jkt: str) -> None:
    """What AgentIdP says of a token bound to the key `jkt`: introspection (token_type DPoP,
    cnf.jkt) and the `token.issued` audit event (dpopKeyThumbprint)."""
    introspection = introspect(org, access_token)
    assert introspection["active"] is True, introspection
    assert introspection["token_type"] == "DPoP", introspection
    assert introspection["cnf"] == {"jkt": jkt}, introspection
    assert introspection["sub"] == agent.agent_id, introspection
    details = issued_event(org, access_token)["details"]
    assert details["dpopKeyThumbprint"] == jkt, details


def test_metadata_advertises_dpop(idp: Idp):
    """RFC 9449 §5.1 in each metadata document the clients read: the platform's RFC 8414 and
    OpenID Connect documents and the organization's; its endpoints at the public URL."""
    org_id = idp.org.org_id
    for path in (
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        f"/.well-known/oauth-authorization-server/orgs/{org_id}",
    ):
        response = httpx2.get(f"{idp.base}{path}", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        document = response.json()
        assert sorted(document["dpop_signing_alg_values_supported"]) == sorted(DPOP_ALGORITHMS), document
        assert document["token_endpoint"] == f"{idp.base}/api/v1/token", document


# --- oauth4webapi, openid-client and dpop (npm) --------------------------------------------------


@dataclass
class NodeRun:
    returncode: int
    output: dict[str, Any]
    stderr: str

    @property
    def token(self) -> dict[str, Any]:
        return self.output["token"]

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.output["requests"]

    def sent_to(self, url: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["url"] == url]


def run_dpop_client(idp: Idp, mode: str, agent: DpopAgent, **env: str) -> NodeRun:
    """tests/interop/dpop_client.mjs in `mode` as `agent`, against the platform's issuer, reading
    the agent's own record and the agent list, with the DPOP_ settings `env`."""
    settings = {
        "DPOP_MODE": mode,
        "DPOP_ISSUER": idp.base,
        "DPOP_CLIENT_ID": agent.client_id,
        "DPOP_CLIENT_SECRET": agent.client_secret,
        "DPOP_SCOPE": READ,
        "DPOP_PATHS": f"{agent.own_path},/api/v1/agents?limit=50",
        "DPOP_TIMEOUT_MS": str(NODE_TIMEOUT * 1000),
        **env,
    }
    packages = ("oauth4webapi", "openid-client", "dpop", "jose")
    run = NodeRun(*run_node_script("dpop_client.mjs", packages, settings))
    output = run.output
    assert run.returncode == 0, (
        f"dpop_client.mjs ({mode}) exited {run.returncode}: {output.get('error')}\n"
        f"{json.dumps(output.get('requests'), indent=1)}\n{run.stderr}\n{idp.log()}"
    )
    return run


def assert_node_run(idp: Idp, run: NodeRun, agent: DpopAgent, proof_alg: str) -> str:
    """A run that got a DPoP-bound token and read the management API with it; returns the key's
    thumbprint."""
    out = run.output
    token_endpoint = f"{idp.base}/api/v1/token"
    assert out["issuer"] == idp.base and out["tokenEndpoint"] == token_endpoint, out
    assert sorted(out["dpopAlgs"]) == sorted(DPOP_ALGORITHMS), out["dpopAlgs"]

    # The token: bound to the client's key, as the library, jose and this test compute its thumbprint.
    token = run.token
    assert token["token_type"].lower() == "dpop", token
    jkt = out["thumbprint"]
    assert out["joseThumbprint"] == jkt, out
    payload = out["verified"]["payload"]
    assert payload["cnf"] == {"jkt": jkt}, payload
    assert payload["sub"] == agent.agent_id and payload["client_id"] == agent.client_id, payload
    assert payload["iss"] == idp.base and payload["scope"] == READ, payload
    assert out["verified"]["protectedHeader"]["typ"] == "at+jwt", out["verified"]

    token_requests = [r for r in run.sent_to(token_endpoint) if r["status"] == 200]
    assert len(token_requests) == 1, run.requests
    [granted] = token_requests
    assert granted["authorization"] == "Basic", granted
    assert granted["proof"]["header"]["typ"] == "dpop+jwt", granted
    assert granted["proof"]["header"]["alg"] == proof_alg, granted
    assert "d" not in granted["proof"]["header"]["jwk"], granted
    assert thumbprint(granted["proof"]["header"]["jwk"]) == jkt, granted
    assert granted["proof"]["payload"]["htm"] == "POST", granted
    assert granted["proof"]["payload"]["htu"] == token_endpoint, granted
    assert "ath" not in granted["proof"]["payload"], granted

    # The management API, called with the token in the DPoP scheme and a fresh proof each time.
    [own, listed] = out["resources"]
    assert own["status"] == 200 and own["body"]["agentId"] == agent.agent_id, own
    assert listed["status"] == 200, listed
    assert agent.agent_id in [a["agentId"] for a in listed["body"]["data"]], listed
    jtis = {granted["proof"]["payload"]["jti"]}
    for resource in out["resources"]:
        url = f"{idp.base}{resource['path']}"
        [sent] = [r for r in run.sent_to(url) if r["status"] == 200]
        assert sent["authorization"] == "DPoP", sent
        proof = sent["proof"]
        assert thumbprint(proof["header"]["jwk"]) == jkt, sent
        assert proof["payload"]["htm"] == "GET", sent
        # RFC 9449 §4.2: htu without the query.
        assert proof["payload"]["htu"] == f"{idp.base}{urlsplit(url).path}", sent
        assert proof["payload"]["ath"] == ath(token["access_token"]), sent
        jtis.add(proof["payload"]["jti"])
    assert len(jtis) == 3, "each proof has a jti of its own"

    assert_bound(idp.org, agent, token["access_token"], jkt)
    return jkt


@pytest.mark.parametrize("alg", ["ES256", "Ed25519", "PS256"])
def test_oauth4webapi_gets_a_dpop_token_and_calls_the_management_api(idp: Idp, alg: str):
    """oauth4webapi's own DPoP: `generateKeyPair(alg)`, `DPoP(client, keyPair)` as the `DPoP`
    option of clientCredentialsGrantRequest and protectedResourceRequest. oauth4webapi names
    an Ed25519 proof's algorithm `Ed25519` (RFC 9864), which AgentIdP accepts beside EdDSA."""
    agent = dpop_agent(idp.org, f"oauth4webapi-{alg.lower()}")
    run = run_dpop_client(idp, "oauth4webapi", agent, DPOP_ALG=alg)
    assert_node_run(idp, run, agent, alg)
    assert run.output["nonceRetries"] == 0, run.requests
    assert all(r["dpopNonce"] is None for r in run.requests), "no nonces unless configured"


def test_openid_client_gets_a_dpop_token_and_calls_the_management_api(idp: Idp):
    """openid-client's DPoP: randomDPoPKeyPair, getDPoPHandle, clientCredentialsGrant and
    fetchProtectedResource with the handle."""
    agent = dpop_agent(idp.org, "openid-client")
    run = run_dpop_client(idp, "openid-client", agent)
    assert_node_run(idp, run, agent, "ES256")


def test_dpop_package_proofs_by_hand(idp: Idp):
    """panva's `dpop` package alone: `generateProof` for the token request, then for each
    management API call with the access token (`ath`). The last call's proof, sent again, is
    refused: a proof is single use (401, invalid_dpop_proof)."""
    agent = dpop_agent(idp.org, "dpop-package")
    run = run_dpop_client(idp, "dpop", agent, DPOP_ALG="ES256", DPOP_REFUSALS="1")
    assert_node_run(idp, run, agent, "ES256")
    replay = run.output["refusals"]["replay"]
    assert replay["status"] == 401, replay
    assert replay["body"]["code"] == "UNAUTHORIZED", replay
    [(scheme, params)] = challenges(replay["wwwAuthenticate"])
    assert scheme == "DPoP" and params["error"] == "invalid_dpop_proof", replay
    assert "used before" in params["error_description"], replay


def test_oauth4webapi_sees_the_refusals_as_dpop_challenges(idp: Idp):
    """What oauth4webapi makes of AgentIdP's refusals (WWWAuthenticateChallengeError, whose
    challenges it parsed from the response): the bound token sent as a Bearer token (no DPoP
    option) gets a DPoP challenge with error="invalid_token"; the token with the DPoP handle of
    another key pair gets error="invalid_dpop_proof"; a string that is not a token, as a Bearer
    token, gets the Bearer challenge with error="invalid_token" and the DPoP challenge with the
    algorithms."""
    agent = dpop_agent(idp.org, "oauth4webapi-refusals")
    run = run_dpop_client(idp, "oauth4webapi", agent, DPOP_REFUSALS="1")
    jkt = assert_node_run(idp, run, agent, "ES256")
    refusals = run.output["refusals"]
    algs = " ".join(DPOP_ALGORITHMS)
    url = f"{idp.base}{agent.own_path}"
    unauthorized = {
        "code": "UNAUTHORIZED",
        "message": "A valid DPoP-bound access token, with a DPoP proof for this request, is required.",
        "details": [],
    }

    bearer = refusals["bearer"]
    assert bearer["refused"] and bearer["name"] == "WWWAuthenticateChallengeError", bearer
    assert bearer["status"] == 401 and bearer["body"] == unauthorized, bearer
    [challenge] = bearer["challenges"]
    assert challenge["scheme"] == "dpop", challenge
    assert challenge["parameters"]["error"] == "invalid_token", challenge
    assert challenge["parameters"]["algs"] == algs, challenge

    other_key = refusals["otherKey"]
    assert other_key["refused"] and other_key["name"] == "WWWAuthenticateChallengeError", other_key
    assert other_key["status"] == 401 and other_key["body"] == unauthorized, other_key
    [challenge] = other_key["challenges"]
    assert challenge["scheme"] == "dpop", challenge
    assert challenge["parameters"]["error"] == "invalid_dpop_proof", challenge
    assert "not the one the access token is bound to" in challenge["parameters"]["error_description"], challenge
    [sent] = [r for r in run.sent_to(url) if r["status"] == 401 and r["authorization"] == "DPoP"]
    assert thumbprint(sent["proof"]["header"]["jwk"]) != jkt, sent
    assert sent["proof"]["payload"]["ath"] == ath(run.token["access_token"]), sent

    not_a_token = refusals["notAToken"]
    assert not_a_token["refused"] and not_a_token["status"] == 401, not_a_token
    assert [c["scheme"] for c in not_a_token["challenges"]] == ["bearer", "dpop"], not_a_token
    bearer_challenge, dpop_challenge = not_a_token["challenges"]
    assert bearer_challenge["parameters"]["error"] == "invalid_token", not_a_token
    assert dpop_challenge["parameters"] == {"realm": "agentidp", "algs": algs}, not_a_token

    # The token is still good with its own key (the refusals spent nothing of it).
    assert introspect(idp.org, run.token["access_token"])["active"] is True


# --- requests-oauth2client (PyPI) ----------------------------------------------------------------


@dataclass
class Sent:
    """One HTTP exchange seen by a requests Session hook."""

    method: str
    url: str
    status: int
    authorization: str | None
    proof: SignedJwt | None
    dpop_nonce: str | None
    www_authenticate: str | None
    error: str | None


@dataclass
class Ro2c:
    """requests-oauth2client's OAuth2Client of one agent, with DPoP on by default, and every
    exchange of its requests Session."""

    client: OAuth2Client
    session: requests.Session
    sent: list[Sent] = field(default_factory=list)

    def to(self, url: str) -> list[Sent]:
        return [s for s in self.sent if s.url == url]


def ro2c_client(idp: Idp, agent: DpopAgent, alg: str = "ES256") -> Ro2c:
    """`OAuth2Client.from_discovery_endpoint(issuer=...)` with `dpop_bound_access_tokens=True`
    and `dpop_alg` (its DPoPKey.generate makes a key for it on each token request). `testing=True`
    lets it use plain http on loopback; its client authentication is its default,
    client_secret_post."""
    session = requests.Session()
    sent: list[Sent] = []

    def record(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        request = response.request
        proof = request.headers.get("DPoP")
        error = None
        if response.status_code >= 400:
            try:
                error = response.json().get("error")
            except ValueError:
                error = None
        sent.append(
            Sent(
                request.method,
                request.url,
                response.status_code,
                (request.headers.get("Authorization") or "").split(" ")[0] or None,
                SignedJwt(proof) if proof else None,
                response.headers.get("DPoP-Nonce"),
                response.headers.get("WWW-Authenticate"),
                error,
            )
        )

    session.hooks["response"].append(record)
    client = OAuth2Client.from_discovery_endpoint(
        issuer=idp.base,
        client_id=agent.client_id,
        client_secret=agent.client_secret,
        session=session,
        dpop_bound_access_tokens=True,
        dpop_alg=alg,
        testing=True,
    )
    return Ro2c(client, session, sent)


def assert_ro2c_token(idp: Idp, ro2c: Ro2c, agent: DpopAgent, token: BearerToken, alg: str) -> str:
    """A DPoPToken bound to its DPoPKey, whose signature verifies against the JWKS the client
    fetched at discovery; returns the key's thumbprint."""
    assert isinstance(token, DPoPToken), type(token)
    assert token.token_type == "DPoP", token
    jkt = token.dpop_key.dpop_jkt
    jwt = token.access_token_jwt
    assert jwt.headers["typ"] == "at+jwt", jwt.headers
    assert jwt.verify_signature(ro2c.client.authorization_server_jwks, alg=jwt.alg), "the signature does not verify"
    assert jwt.issuer == idp.base and jwt.subject == agent.agent_id, jwt.claims
    assert jwt.claims["cnf"] == {"jkt": jkt}, jwt.claims

    token_endpoint = f"{idp.base}/api/v1/token"
    assert ro2c.client.token_endpoint == token_endpoint
    [granted] = [s for s in ro2c.to(token_endpoint) if s.status == 200]
    assert granted.proof is not None, granted
    assert granted.proof.alg == alg and granted.proof.headers["typ"] == "dpop+jwt", granted.proof.headers
    assert thumbprint(granted.proof.headers["jwk"]) == jkt, granted.proof.headers
    assert granted.proof.claims["htm"] == "POST" and granted.proof.claims["htu"] == token_endpoint, granted.proof
    return jkt


def assert_ro2c_resource_calls(idp: Idp, ro2c: Ro2c, token: DPoPToken, urls: list[str]) -> None:
    jkt = token.dpop_key.dpop_jkt
    for url in urls:
        [sent] = ro2c.to(url)
        assert sent.status == 200, sent
        assert sent.authorization == "DPoP", sent
        assert sent.proof is not None and thumbprint(sent.proof.headers["jwk"]) == jkt, sent
        assert sent.proof.claims["htm"] == "GET", sent.proof.claims
        assert sent.proof.claims["htu"] == f"{idp.base}{urlsplit(url).path}", sent.proof.claims
        assert sent.proof.claims["ath"] == ath(token.access_token), sent.proof.claims


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "PS256"])
def test_requests_oauth2client_gets_a_dpop_token_and_calls_the_management_api(idp: Idp, alg: str):
    """`client_credentials()` of a client with dpop_bound_access_tokens returns a DPoPToken;
    the token is the requests auth handler of the management API calls (it adds the DPoP
    scheme and a proof with `ath` to each)."""
    agent = dpop_agent(idp.org, f"ro2c-{alg.lower()}")
    ro2c = ro2c_client(idp, agent, alg)
    token = ro2c.client.client_credentials(scope=READ)
    jkt = assert_ro2c_token(idp, ro2c, agent, token, alg)

    own = ro2c.session.get(f"{idp.base}{agent.own_path}", auth=token, timeout=HTTP_TIMEOUT)
    assert own.status_code == 200 and own.json()["agentId"] == agent.agent_id, own.text
    listed = ro2c.session.get(f"{idp.base}/api/v1/agents", params={"limit": 50}, auth=token, timeout=HTTP_TIMEOUT)
    assert listed.status_code == 200, listed.text
    assert agent.agent_id in [a["agentId"] for a in listed.json()["data"]], listed.json()
    assert_ro2c_resource_calls(
        idp, ro2c, token, [f"{idp.base}{agent.own_path}", f"{idp.base}/api/v1/agents?limit=50"]
    )
    assert_bound(idp.org, agent, token.access_token, jkt)


def test_requests_oauth2client_client_credentials_auth_on_an_api_client(idp: Idp):
    """The library's own pairing: an ApiClient for the management API whose auth handler is
    OAuth2ClientCredentialsAuth; it gets its DPoP token on the first call and proofs each call."""
    agent = dpop_agent(idp.org, "ro2c-api-client")
    ro2c = ro2c_client(idp, agent)
    auth = OAuth2ClientCredentialsAuth(ro2c.client, scope=READ)
    api = ApiClient(f"{idp.base}/api/v1", auth=auth, session=ro2c.session, timeout=HTTP_TIMEOUT)

    own = api.get(f"agents/{agent.agent_id}")
    assert own.json()["agentId"] == agent.agent_id, own.text
    listed = api.get("agents", params={"limit": 50})
    assert agent.agent_id in [a["agentId"] for a in listed.json()["data"]], listed.json()

    token = auth.token
    jkt = assert_ro2c_token(idp, ro2c, agent, token, "ES256")
    assert_ro2c_resource_calls(
        idp, ro2c, token, [f"{idp.base}{agent.own_path}", f"{idp.base}/api/v1/agents?limit=50"]
    )
    assert len(ro2c.to(f"{idp.base}/api/v1/token")) == 1, "one token for both calls"
    assert_bound(idp.org, agent, token.access_token, jkt)


def test_requests_oauth2client_refusals(idp: Idp):
    """Through requests-oauth2client: the DPoP token's value as a BearerToken (the library's
    Bearer auth handler) gets 401 with a DPoP challenge, error="invalid_token"; the token with a
    DPoPKey of another key (the library's DPoPToken and DPoPKey.generate) gets 401 with
    error="invalid_dpop_proof". requests-oauth2client reads every 401 carrying a DPoP challenge
    as a resource server's nonce request (DPoPToken._response_hook), so it raises
    MissingDPoPNonce for the second, with AgentIdP's response attached."""
    agent = dpop_agent(idp.org, "ro2c-refusals")
    ro2c = ro2c_client(idp, agent)
    token = ro2c.client.client_credentials(scope=READ)
    url = f"{idp.base}{agent.own_path}"

    as_bearer = ro2c.session.get(url, auth=BearerToken(token.access_token), timeout=HTTP_TIMEOUT)
    assert as_bearer.status_code == 401, as_bearer.text
    assert as_bearer.json()["code"] == "UNAUTHORIZED", as_bearer.text
    assert as_bearer.request.headers["Authorization"] == f"Bearer {token.access_token}"
    [(scheme, params)] = challenges(as_bearer.headers["WWW-Authenticate"])
    assert scheme == "DPoP" and params["error"] == "invalid_token", as_bearer.headers
    assert params["algs"] == " ".join(DPOP_ALGORITHMS), params

    other_key = DPoPKey.generate(alg="ES256")
    stolen = DPoPToken(token.access_token, _dpop_key=other_key, expires_in=token.expires_in, scope=token.scope)
    with pytest.raises(MissingDPoPNonce) as raised:
        ro2c.session.get(url, auth=stolen, timeout=HTTP_TIMEOUT)
    response = raised.value.response
    assert response.status_code == 401, response.text
    assert response.request.headers["Authorization"] == f"DPoP {token.access_token}"
    [(scheme, params)] = challenges(response.headers["WWW-Authenticate"])
    assert scheme == "DPoP" and params["error"] == "invalid_dpop_proof", response.headers
    assert "not the one the access token is bound to" in params["error_description"], params
    # (The library's hook raised before the session's recording hook saw this response.)
    proof = SignedJwt(response.request.headers["DPoP"])
    assert thumbprint(proof.headers["jwk"]) == other_key.dpop_jkt != token.dpop_key.dpop_jkt
    assert proof.claims["ath"] == ath(token.access_token), proof.claims

    # The token still works with its own key.
    own = ro2c.session.get(url, auth=token, timeout=HTTP_TIMEOUT)
    assert own.status_code == 200, own.text


def test_requests_oauth2client_for_an_agent_that_requires_dpop(idp: Idp):
    """An agent with requireDpop: the library's token request without DPoP (dpop=False) is
    refused with invalid_dpop_proof (UnknownTokenEndpointError, the library has no class of its
    own for it), audited as dpop_required; its default, DPoP, gets a token."""
    agent = dpop_agent(idp.org, "ro2c-require-dpop", requireDpop=True)
    ro2c = ro2c_client(idp, agent)
    with pytest.raises(UnknownTokenEndpointError) as raised:
        ro2c.client.client_credentials(scope=READ, dpop=False)
    assert raised.value.error == "invalid_dpop_proof", raised.value
    assert raised.value.response.status_code == 400, raised.value.response.text
    assert "must be DPoP-bound" in raised.value.description, raised.value.description
    assert denial_reasons(idp.org, agent.client_id) == ["dpop_required"]

    token = ro2c.client.client_credentials(scope=READ)
    assert_ro2c_token(idp, ro2c, agent, token, "ES256")
    own = ro2c.session.get(f"{idp.base}{agent.own_path}", auth=token, timeout=HTTP_TIMEOUT)
    assert own.status_code == 200, own.text


# --- server nonces ---------------------------------------------------------------------------------


def assert_nonce_dance(token_requests: list[tuple[int, str | None, str | None, str | None]]) -> str:
    """The token requests of a client meeting server nonces, each (status, error, the DPoP-Nonce
    the response carried, the nonce its proof carried): refused with use_dpop_nonce and a nonce,
    then granted with that nonce in the proof (and a nonce for the next proof). Returns it."""
    assert len(token_requests) == 2, token_requests
    (refused_status, error, nonce, sent_nonce), (granted_status, _, next_nonce, retried_with) = token_requests
    assert (refused_status, error, sent_nonce) == (400, "use_dpop_nonce", None), token_requests
    assert nonce, token_requests
    assert (granted_status, retried_with) == (200, nonce), token_requests
    assert next_nonce, "a successful token response carries the next nonce"
    return nonce


def node_token_requests(run: NodeRun, idp: Idp) -> list[tuple[int, str | None, str | None, str | None]]:
    return [
        (r["status"], (r["error"] or {}).get("error"), r["dpopNonce"], r["proof"]["payload"].get("nonce"))
        for r in run.sent_to(f"{idp.base}/api/v1/token")
    ]


def test_openid_client_retries_use_dpop_nonce_by_itself(nonce_idp: Idp):
    """openid-client's clientCredentialsGrant with a DPoP handle: refused with use_dpop_nonce,
    it sends the request again with the DPoP-Nonce header's value, on its own. Its handle keeps
    the nonce for the origin and puts it in the management API proofs too, where AgentIdP asks
    for none and accepts them."""
    agent = dpop_agent(nonce_idp.org, "openid-client-nonce")
    run = run_dpop_client(nonce_idp, "openid-client", agent)
    assert_node_run(nonce_idp, run, agent, "ES256")
    token_requests = node_token_requests(run, nonce_idp)
    assert_nonce_dance(token_requests)
    assert run.output["nonceRetries"] == 1
    # The nonce of the token response, the last one the handle saw.
    latest = token_requests[-1][2]
    resource_proofs = [r["proof"]["payload"] for r in run.requests if r["authorization"] == "DPoP"]
    assert len(resource_proofs) == 2 and all(p.get("nonce") == latest for p in resource_proofs), resource_proofs
    assert denial_reasons(nonce_idp.org, agent.client_id) == [], "a nonce request is not a denial"


def test_oauth4webapi_retries_use_dpop_nonce_as_documented(nonce_idp: Idp):
    """oauth4webapi leaves the retry to its caller: processClientCredentialsResponse throws an
    error for which isDPoPNonceError is true, and the same request sent again carries the nonce
    the DPoP handle cached from the refusal."""
    agent = dpop_agent(nonce_idp.org, "oauth4webapi-nonce")
    run = run_dpop_client(nonce_idp, "oauth4webapi", agent, DPOP_ALG="Ed25519")
    assert_node_run(nonce_idp, run, agent, "Ed25519")
    assert_nonce_dance(node_token_requests(run, nonce_idp))
    assert run.output["nonceRetries"] == 1


def test_dpop_package_meets_a_nonce_by_hand(nonce_idp: Idp):
    """With the `dpop` package the client reads the DPoP-Nonce header itself and passes it to
    generateProof; the management API proofs carry none."""
    agent = dpop_agent(nonce_idp.org, "dpop-package-nonce")
    run = run_dpop_client(nonce_idp, "dpop", agent)
    assert_node_run(nonce_idp, run, agent, "ES256")
    assert_nonce_dance(node_token_requests(run, nonce_idp))
    resource_proofs = [r["proof"]["payload"] for r in run.requests if r["authorization"] == "DPoP"]
    assert resource_proofs and all("nonce" not in p for p in resource_proofs), resource_proofs


def test_requests_oauth2client_retries_use_dpop_nonce_by_itself(nonce_idp: Idp):
    """requests-oauth2client's token request: refused with use_dpop_nonce, it keeps the nonce
    (DPoPKey.as_nonce) and sends the request again, on its own; the token then works at the
    management API (its proofs there carry no nonce: the library keeps the authorization
    server's and a resource server's apart)."""
    agent = dpop_agent(nonce_idp.org, "ro2c-nonce")
    ro2c = ro2c_client(nonce_idp, agent)
    token = ro2c.client.client_credentials(scope=READ)
    assert_ro2c_token(nonce_idp, ro2c, agent, token, "ES256")
    token_requests = [
        (s.status, s.error, s.dpop_nonce, s.proof.claims.get("nonce"))
        for s in ro2c.to(f"{nonce_idp.base}/api/v1/token")
    ]
    nonce = assert_nonce_dance(token_requests)
    assert token.dpop_key.as_nonce == nonce

    url = f"{nonce_idp.base}{agent.own_path}"
    own = ro2c.session.get(url, auth=token, timeout=HTTP_TIMEOUT)
    assert own.status_code == 200 and own.json()["agentId"] == agent.agent_id, own.text
    assert_ro2c_resource_calls(nonce_idp, ro2c, token, [url])
    assert "nonce" not in ro2c.to(url)[0].proof.claims
    assert_bound(nonce_idp.org, agent, token.access_token, token.dpop_key.dpop_jkt)
