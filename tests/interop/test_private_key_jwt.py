"""private_key_jwt client authentication (RFC 7523 §2.2) with clients written by others (issue 14).

One `agentidp-local` serves every test of this file (a fresh data directory, started by
scripts/agentidp_local.py's `start` as in test_mcp_interop.py); each test registers its own agents
with the bootstrap admin of the default organization, each with a `private_key_jwt` credential
holding public keys that the test generated with `cryptography`, of three families: ES256 (P-256),
RS256/PS256 (RSA 2048) and EdDSA (Ed25519). The private keys go only to the clients:

  - Authlib (`OAuth2Client` on httpx2, `PrivateKeyJWT` from authlib.oauth2.rfc7523): a
    client_credentials token, the management API called with it, then its introspection and its
    revocation, each authenticated by Authlib with an assertion whose `aud` is the URL it calls;
  - openid-client (npm, panva; tests/interop/private_key_jwt_client.mjs): discovery from the
    platform's issuer and from the organization's, `PrivateKeyJwt`, `clientCredentialsGrant`,
    `tokenIntrospection` (its assertions' `aud` is the issuer);
  - the official MCP Python SDK's `PrivateKeyJWTOAuthProvider` against a FastMCP server
    (tests/interop/mcp_server.py) that trusts the organization's issuer: discovery from the
    server's 401, a token for the server, `whoami`;
  - what is refused, through the same clients where that is natural: a key that is not the
    registered one, another client's identity, an audience of another server, an assertion sent
    twice (replayed with a plain HTTP POST).

scripts/interop.sh installs the packages (tests/interop/requirements.txt, package-lock.json),
builds the binaries and runs this file with test_mcp_interop.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs

import anyio
import httpx2
import jwt
import pytest
from authlib.integrations.httpx_client import OAuth2Client, OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import PrivateKeyJWTOAuthProvider, SignedJWTParameters
from mcp.client.streamable_http import streamable_http_client

from test_mcp_interop import (
    CLIENT_TIMEOUT,
    HTTP_TIMEOUT,
    TOOL_SCOPE,
    ClientRun,
    Idp,
    McpServer,
    MemoryTokenStorage,
    Org,
    agentidp_local,
    assert_discovered_and_called,
    binary,
    claims_of,
    diagnostics,
    running_idp,
    start_mcp_servers,
)

HERE = Path(__file__).resolve().parent
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ["RS256", "PS256", "ES256", "EdDSA", "Ed25519"]
READ_SCOPE = "agents:read"
NODE_TIMEOUT = 30  # seconds, for one run of a node client (run_node_script)


# --- keys ---------------------------------------------------------------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_uint(value: int, length: int | None = None) -> str:
    return b64u(value.to_bytes(length or (value.bit_length() + 7) // 8, "big"))


@dataclass
class Key:
    """A key pair made by the test: the private half for a client, the public JWK for AgentIdP."""

    alg: str
    private: Any
    kid: str | None

    @classmethod
    def generate(cls, alg: str, kid: str | None = None) -> Key:
        if alg in ("RS256", "PS256"):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif alg == "EdDSA":
            private = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(alg)
        return cls(alg, private, kid)

    @property
    def pem(self) -> str:
        """The private key, PKCS#8 PEM."""
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")

    def required_members(self) -> dict[str, str]:
        """The public key's RFC 7638 required members."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            return {"e": b64u_uint(numbers.e), "kty": "RSA", "n": b64u_uint(numbers.n)}
        if isinstance(public, ec.EllipticCurvePublicKey):
            numbers = public.public_numbers()
            return {"crv": "P-256", "kty": "EC", "x": b64u_uint(numbers.x, 32), "y": b64u_uint(numbers.y, 32)}
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64u(raw)}

    def public_jwk(self) -> dict[str, str]:
        jwk = dict(self.required_members())
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk

    def thumbprint(self) -> str:
        """RFC 7638: SHA-256 of the required members, sorted, without whitespace."""
        canonical = json.dumps(self.required_members(), sort_keys=True, separators=(",", ":"))
        return b64u(hashlib.sha256(canonical.encode("utf-8")).digest())

    @property
    def key_id(self) -> str:
        """The name AgentIdP gives the key: its kid, else (a lone key) its thumbprint."""
        return self.kid if self.kid is not None else self.thumbprint()

    def joserfc_key(self) -> ECKey | RSAKey | OKPKey:
        """The private key as the key object Authlib's PrivateKeyJWT signs with."""
        kind = {"RS256": RSAKey, "PS256": RSAKey, "ES256": ECKey, "EdDSA": OKPKey}[self.alg]
        return kind.import_key(self.pem)


def jose_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and the claims of a compact JWS, unverified."""
    header = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))), claims_of(token)


# --- AgentIdP ------------------------------------------------------------------------------------


@dataclass
class KeyAgent:
    """An agent of the default organization with a private_key_jwt credential."""

    agent_id: str
    client_id: str
    credential: dict[str, Any]
    keys: list[Key]

    @property
    def key(self) -> Key:
        return self.keys[0]


def create_key_agent(org: Org, name: str, scopes: list[str], *keys: Key) -> KeyAgent:
    agent = org.api("POST", "/api/v1/agents", {"name": name, "scopes": scopes})
    credential = org.api(
        "POST",
        f"/api/v1/agents/{agent['agentId']}/credentials",
        {"type": "private_key_jwt", "jwks": {"keys": [key.public_jwk() for key in keys]}},
    )
    assert credential["type"] == "private_key_jwt", credential
    assert "clientSecret" not in credential, credential
    assert credential["keyIds"] == [key.key_id for key in keys], credential
    assert credential["clientId"], credential
    return KeyAgent(agent["agentId"], credential["clientId"], credential, list(keys))


def audit_events(org: Org, action: str) -> list[dict[str, Any]]:
    """Every audit event of the organization with this action, following the cursor."""
    events: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = org.api("GET", f"/api/v1/audit?limit=200&action={action}{cursor}", expect=200)
        events.extend(page["data"])
        if not page.get("nextCursor"):
            return events
        cursor = f"&cursor={page['nextCursor']}"


def issued_event(org: Org, access_token: str) -> dict[str, Any]:
    """The `token.issued` event of this token (its resource is `token/{jti}`)."""
    resource = f"token/{claims_of(access_token)['jti']}"
    events = [event for event in audit_events(org, "token.issued") if event.get("resource") == resource]
    assert len(events) == 1, f"{len(events)} token.issued events for {resource}"
    return events[0]


def denial_reasons(org: Org, client_id: str) -> list[str]:
    """The reasons of the `token.denied` events of a client (as it named itself), sorted."""
    events = audit_events(org, "token.denied")
    return sorted(event["details"].get("reason") for event in events if event["details"].get("clientId") == client_id)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    """One agentidp-local for the whole file: every test makes agents of its own."""
    yield from running_idp(tmp_path_factory.mktemp("agentidp"))


@pytest.fixture(scope="module")
def metadata(idp: Idp) -> dict[str, Any]:
    response = httpx2.get(f"{idp.base}/.well-known/oauth-authorization-server", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


# --- metadata ------------------------------------------------------------------------------------


def test_metadata_advertises_private_key_jwt(idp: Idp, metadata: dict[str, Any]):
    org_metadata = httpx2.get(
        f"{idp.base}/.well-known/oauth-authorization-server/orgs/{idp.org.org_id}", timeout=HTTP_TIMEOUT
    )
    assert org_metadata.status_code == 200, org_metadata.text
    for document, issuer in ((metadata, idp.base), (org_metadata.json(), idp.org.issuer)):
        assert document["issuer"] == issuer, document
        assert "private_key_jwt" in document["token_endpoint_auth_methods_supported"], document
        assert sorted(document["token_endpoint_auth_signing_alg_values_supported"]) == sorted(ALGORITHMS), document
        assert document["token_endpoint"] == f"{idp.base}/api/v1/token", document
        assert document["introspection_endpoint"] == f"{idp.base}/api/v1/token/introspect", document
        assert document["revocation_endpoint"] == f"{idp.base}/api/v1/token/revoke", document


# --- Authlib ---------------------------------------------------------------------------------------


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's PrivateKeyJWT with assertions that expire `lifetime` seconds after they are made.

    Authlib's own assertions expire an hour after they are made (`sign_jwt_bearer_assertion`'s
    `expires_in=3600`, which `PrivateKeyJWT.sign` does not let a caller change; a `claims={"exp":
    ...}` would be fixed at construction, and Authlib writes its `jti` into that same dict, so
    every later assertion would repeat it). AgentIdP takes assertions that expire at most 300 s
    ahead (test_authlib_default_one_hour_assertion_is_refused), so this subclass passes Authlib's
    own `expires_in` on each signature: everything else (key, kid, alg, iss, sub, aud, jti) is
    Authlib's."""

    def __init__(self, lifetime: int = 60, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lifetime = lifetime

    def sign(self, auth, token_endpoint):
        return private_key_jwt_sign(
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            alg=self.alg,
            header=dict(self.headers or {}),
            expires_in=self.lifetime,
        )


@dataclass
class AuthlibClient:
    """An Authlib OAuth2Client (httpx2) and every request it sent: (method, url, status, form)."""

    client: OAuth2Client
    sent: list[tuple[str, str, int, dict[str, str]]]

    def assertions(self) -> list[str]:
        return [form["client_assertion"] for _, _, _, form in self.sent if "client_assertion" in form]


def authlib_client(client_id: str, key: Key, auth: PrivateKeyJWT | None = None, **kwargs: Any) -> AuthlibClient:
    """Authlib's client with `auth` (by default PrivateKeyJWT with the key's alg and kid, and no
    fixed endpoint: each assertion's `aud` is the URL of the request it authenticates) at the
    token, introspection and revocation endpoints."""
    if auth is None:
        auth = ShortLivedPrivateKeyJWT(alg=key.alg, headers={"kid": key.kid} if key.kid else None)
    sent: list[tuple[str, str, int, dict[str, str]]] = []

    def record(response: httpx2.Response) -> None:
        request = response.request
        form = {}
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = {name: values[0] for name, values in parse_qs(request.content.decode("utf-8")).items()}
        sent.append((request.method, str(request.url), response.status_code, form))

    client = OAuth2Client(
        client_id=client_id,
        client_secret=key.joserfc_key(),
        token_endpoint_auth_method=auth,
        revocation_endpoint_auth_method=auth,
        timeout=HTTP_TIMEOUT,
        event_hooks={"response": [record]},
        **kwargs,
    )
    return AuthlibClient(client, sent)


def refused_by_authlib(client: AuthlibClient, token_endpoint: str) -> OAuthError:
    """Authlib's fetch_token fails with invalid_client after a 401 from the token endpoint."""
    with pytest.raises(OAuthError) as raised:
        client.client.fetch_token(token_endpoint, grant_type="client_credentials")
    assert raised.value.error == "invalid_client", repr(raised.value)
    method, url, status, form = client.sent[-1]
    assert (method, url, status) == ("POST", token_endpoint, 401), client.sent[-1]
    assert form.get("client_assertion_type") == JWT_BEARER, form
    return raised.value


def test_authlib_gets_a_token_uses_introspects_and_revokes_it(idp: Idp, metadata: dict[str, Any]):
    key = Key.generate("ES256", kid="authlib-es256")
    agent = create_key_agent(idp.org, "authlib-agent", [READ_SCOPE], key)
    authlib = authlib_client(agent.client_id, key, scope=READ_SCOPE)
    token_endpoint = metadata["token_endpoint"]
    introspection_endpoint = metadata["introspection_endpoint"]

    with authlib.client as client:
        token = client.fetch_token(token_endpoint, grant_type="client_credentials")
        access_token = token["access_token"]
        claims = claims_of(access_token)
        assert claims["sub"] == agent.agent_id and claims["client_id"] == agent.client_id, claims
        assert claims["iss"] == idp.base and claims["scope"] == READ_SCOPE, claims

        # The token as a bearer: Authlib's client adds it to its own requests.
        listed = client.get(f"{idp.base}/api/v1/agents")
        assert listed.status_code == 200, listed.text
        assert agent.agent_id in [a["agentId"] for a in listed.json()["data"]], listed.json()

        introspected = client.introspect_token(introspection_endpoint, token=access_token)
        assert introspected.status_code == 200, introspected.text
        body = introspected.json()
        assert body["active"] is True, body
        assert body["sub"] == agent.agent_id and body["client_id"] == agent.client_id, body

        revoked = client.revoke_token(metadata["revocation_endpoint"], token=access_token)
        assert revoked.status_code == 200, revoked.text
        after = client.introspect_token(introspection_endpoint, token=access_token)
        assert after.status_code == 200 and after.json() == {"active": False}, after.text
        still = client.get(f"{idp.base}/api/v1/agents")
        assert still.status_code == 401, still.text

    # Authlib authenticated each call with a fresh assertion whose aud is the URL it called.
    posts = [(url, status) for method, url, status, form in authlib.sent if "client_assertion" in form]
    assert posts == [
        (token_endpoint, 200),
        (introspection_endpoint, 200),
        (metadata["revocation_endpoint"], 200),
        (introspection_endpoint, 200),
    ], authlib.sent
    assertions = authlib.assertions()
    for assertion, (url, _) in zip(assertions, posts):
        header, payload = jose_parts(assertion)
        assert header["alg"] == "ES256" and header["kid"] == key.kid, header
        assert payload["iss"] == payload["sub"] == agent.client_id, payload
        assert payload["aud"] == url, payload
    assert len({jose_parts(a)[1]["jti"] for a in assertions}) == len(assertions), "jti repeated"

    event = issued_event(idp.org, access_token)
    assert event["details"]["clientAuthMethod"] == "private_key_jwt", event
    assert event["details"]["keyId"] == key.kid, event


def test_authlib_default_one_hour_assertion_is_refused(idp: Idp, metadata: dict[str, Any]):
    """Authlib's PrivateKeyJWT as it comes signs assertions that expire an hour ahead; AgentIdP
    takes at most 300 s (and 30 s of clock skew), so it refuses them: invalid_client, audited as
    `assertion_lifetime_too_long`."""
    key = Key.generate("RS256", kid="authlib-rs256")
    agent = create_key_agent(idp.org, "authlib-default-agent", [READ_SCOPE], key)
    authlib = authlib_client(agent.client_id, key, auth=PrivateKeyJWT(alg="RS256", headers={"kid": key.kid}))
    with authlib.client:
        refused_by_authlib(authlib, metadata["token_endpoint"])
    _, payload = jose_parts(authlib.assertions()[-1])
    assert payload["exp"] - payload["iat"] == 3600, payload
    assert denial_reasons(idp.org, agent.client_id) == ["assertion_lifetime_too_long"]


def test_authlib_with_keys_that_are_not_the_clients_is_refused(idp: Idp, metadata: dict[str, Any]):
    """Through Authlib, each refused as invalid_client with its reason audited, and no token:
    another key under the registered kid; the client's own key but an unregistered kid; an
    attacker agent's registered key presented as the victim's client_id; the client's own key
    with an assertion for another server (Authlib's `token_endpoint` set to that server's)."""
    token_endpoint = metadata["token_endpoint"]
    key = Key.generate("ES256", kid="victim-key")
    victim = create_key_agent(idp.org, "victim-agent", [READ_SCOPE], key)
    attacker_key = Key.generate("RS256", kid="attacker-key")
    attacker = create_key_agent(idp.org, "attacker-agent", [READ_SCOPE], attacker_key)

    cases = {
        "assertion_bad_signature": authlib_client(victim.client_id, Key.generate("ES256", kid=key.kid)),
        "assertion_unknown_key": authlib_client(victim.client_id, Key(key.alg, key.private, "another-kid")),
        "assertion_wrong_audience": authlib_client(
            victim.client_id,
            key,
            auth=ShortLivedPrivateKeyJWT(
                token_endpoint="https://other-idp.example/api/v1/token", alg="ES256", headers={"kid": key.kid}
            ),
        ),
        # The attacker signs with its own registered key, naming the victim as the client.
        "assertion_unknown_key (the attacker's key)": authlib_client(victim.client_id, attacker_key),
    }
    reasons: list[str] = []
    for case, authlib in cases.items():
        with authlib.client:
            refused_by_authlib(authlib, token_endpoint)
        _, payload = jose_parts(authlib.assertions()[-1])
        assert payload["iss"] == payload["sub"] == victim.client_id, payload
        reasons.append(case.split(" ")[0])
        assert denial_reasons(idp.org, victim.client_id) == sorted(reasons), case
    assert denial_reasons(idp.org, attacker.client_id) == []
    issued = [e for e in audit_events(idp.org, "token.issued") if e["actor"].get("clientId") == victim.client_id]
    assert issued == [], issued


def test_an_assertion_replayed_after_authlib_used_it_is_refused(idp: Idp, metadata: dict[str, Any]):
    """Authlib's assertion got a token; the same assertion, sent again by a plain HTTP POST
    (as someone who read it off the wire would), is refused and audited as a replay."""
    token_endpoint = metadata["token_endpoint"]
    key = Key.generate("PS256", kid="replayed")
    agent = create_key_agent(idp.org, "replay-agent", [READ_SCOPE], key)
    authlib = authlib_client(agent.client_id, key)
    with authlib.client as client:
        token = client.fetch_token(token_endpoint, grant_type="client_credentials")
    assert claims_of(token["access_token"])["client_id"] == agent.client_id
    [assertion] = authlib.assertions()
    assert jose_parts(assertion)[0]["alg"] == "PS256"

    for body in (
        {"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER, "client_assertion": assertion},
        {
            "grant_type": "client_credentials",
            "client_id": agent.client_id,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        },
    ):
        replayed = httpx2.post(token_endpoint, data=body, timeout=HTTP_TIMEOUT)
        assert replayed.status_code == 401, replayed.text
        assert replayed.json()["error"] == "invalid_client", replayed.text
    assert denial_reasons(idp.org, agent.client_id) == ["assertion_replayed", "assertion_replayed"]


# --- openid-client (npm) ---------------------------------------------------------------------------


@dataclass
class NodeRun:
    returncode: int
    output: dict[str, Any]
    stderr: str

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        return [(r["method"], r["url"], r["status"]) for r in self.output["requests"]]

    @property
    def assertions(self) -> list[str]:
        return [r["assertion"] for r in self.output["requests"] if r["assertion"]]


def run_node_script(script: str, packages: tuple[str, ...], settings: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    """One of tests/interop's node clients with `settings` in its environment: its exit code (0,
    or 1 for a failure it reports as JSON), the JSON it printed, and its stderr."""
    node = shutil.which("node")
    assert node, f"node is needed for {script}"
    for package in packages:
        assert (HERE / "node_modules" / package).is_dir(), (
            f"tests/interop/node_modules/{package} is missing: run `npm ci` in tests/interop (scripts/interop.sh does)"
        )
    result = subprocess.run(
        [node, str(HERE / script)],
        env={**os.environ, **settings},
        cwd=HERE,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT + 15,
    )
    assert result.returncode in (0, 1), f"{script} exited {result.returncode}\n{result.stderr}"
    try:
        output = json.loads(result.stdout)
    except ValueError as e:
        raise AssertionError(f"no JSON on stdout ({e}):\n{result.stdout}\n{result.stderr}") from e
    return result.returncode, output, result.stderr


def run_openid_client(issuer: str, client_id: str, key: Key, **env: str) -> NodeRun:
    """tests/interop/private_key_jwt_client.mjs: openid-client's discovery from `issuer`,
    PrivateKeyJwt with this key, a client_credentials token and its introspection."""
    settings = {
        "PKJ_ISSUER": issuer,
        "PKJ_CLIENT_ID": client_id,
        "PKJ_PRIVATE_KEY": key.pem,
        "PKJ_KEY_ALG": key.alg,
        "PKJ_SCOPE": READ_SCOPE,
        "PKJ_TIMEOUT_MS": str(NODE_TIMEOUT * 1000),
        **({"PKJ_KEY_ID": key.kid} if key.kid else {}),
        **env,
    }
    return NodeRun(*run_node_script("private_key_jwt_client.mjs", ("openid-client",), settings))


def assert_openid_client_run(run: NodeRun, idp: Idp, issuer: str, agent: KeyAgent, alg: str) -> None:
    """openid-client discovered `issuer`, got a token for the agent and found it active, each POST
    authenticated by an assertion of its own, with aud = the issuer."""
    assert run.returncode == 0, f"{run.output}\n{run.stderr}"
    output = run.output
    assert output["issuer"] == issuer, output
    token = output["token"]["access_token"]
    claims = claims_of(token)
    assert claims["sub"] == agent.agent_id, claims
    assert claims["client_id"] == agent.client_id, claims
    assert claims["org_id"] == idp.org.org_id, claims
    assert output["token"]["scope"] == READ_SCOPE, output["token"]
    introspection = output["introspection"]
    assert introspection["active"] is True, introspection
    assert introspection["sub"] == agent.agent_id and introspection["client_id"] == agent.client_id, introspection
    assert introspection["jti"] == claims["jti"], introspection

    assert run.requests == [
        ("GET", f"{issuer}/.well-known/openid-configuration", 200),
        ("POST", f"{idp.base}/api/v1/token", 200),
        ("POST", f"{idp.base}/api/v1/token/introspect", 200),
    ], run.requests
    assert len(run.assertions) == 2, run.output["requests"]
    for assertion in run.assertions:
        header, payload = jose_parts(assertion)
        assert header["alg"] == alg and header.get("kid") == agent.key.kid, header
        assert payload["aud"] == issuer, payload
        assert payload["iss"] == payload["sub"] == agent.client_id, payload
    event = issued_event(idp.org, token)
    assert event["details"]["clientAuthMethod"] == "private_key_jwt", event
    assert event["details"]["keyId"] == agent.key.key_id, event


@pytest.mark.parametrize("issuer_kind, alg", [("platform", "PS256"), ("organization", "ES256")])
def test_openid_client_discovers_authenticates_and_introspects(idp: Idp, issuer_kind: str, alg: str):
    """openid-client given the platform's issuer, or the organization's (`{base}/orgs/{orgId}`,
    whose OpenID Connect discovery document is at its path + /.well-known/openid-configuration):
    its assertions' aud is that issuer, which AgentIdP accepts at both endpoints."""
    issuer = idp.base if issuer_kind == "platform" else idp.org.issuer
    key = Key.generate(alg, kid=f"openid-client-{alg.lower()}")
    agent = create_key_agent(idp.org, f"openid-client-{issuer_kind}", [READ_SCOPE], key)
    run = run_openid_client(issuer, agent.client_id, key)
    assert_openid_client_run(run, idp, issuer, agent, alg)


def test_openid_client_ed25519_key(idp: Idp):
    """An Ed25519 key as openid-client 6 uses it: oauth4webapi names the assertion's algorithm
    `Ed25519` (RFC 9864's fully-specified name) and does not consult the metadata's
    token_endpoint_auth_signing_alg_values_supported; AgentIdP accepts that name beside `EdDSA`."""
    key = Key.generate("EdDSA", kid="openid-client-ed25519")
    agent = create_key_agent(idp.org, "openid-client-ed25519", [READ_SCOPE], key)
    run = run_openid_client(idp.base, agent.client_id, key)
    # Each assertion's header says `Ed25519` (checked with the rest of the run).
    assert_openid_client_run(run, idp, idp.base, agent, "Ed25519")


def test_openid_client_ed25519_key_with_the_alg_named_eddsa(idp: Idp):
    """The same key and client, with the header's `alg` renamed `EdDSA` through openid-client's
    `modifyAssertion` hook (the signature is the same): accepted."""
    key = Key.generate("EdDSA", kid="openid-client-eddsa")
    agent = create_key_agent(idp.org, "openid-client-eddsa", [READ_SCOPE], key)
    run = run_openid_client(idp.base, agent.client_id, key, PKJ_ASSERTION_ALG="EdDSA")
    assert_openid_client_run(run, idp, idp.base, agent, "EdDSA")


# --- the official MCP Python SDK's PrivateKeyJWTOAuthProvider --------------------------------------


@pytest.fixture(scope="module")
def mcp_server(idp: Idp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServer]:
    """A FastMCP server trusting the default organization's issuer, registered in it as a
    resource under its MCP URL with the scope `tools:call` (as in test_mcp_interop.py)."""
    jwks = httpx2.get(f"{idp.base}/.well-known/jwks.json", timeout=HTTP_TIMEOUT).json()
    [server] = start_mcp_servers(
        1,
        idp.org.issuer,
        f"{idp.base}/.well-known/jwks.json",
        jwks["keys"][0]["alg"],
        tmp_path_factory.mktemp("mcp"),
    )
    try:
        idp.org.register_resource(server.url, [TOOL_SCOPE])
        yield server
    finally:
        agentidp_local.stop(server.process)


def failure_text(error: BaseException) -> str:
    """An exception and, for an exception group (anyio's task groups raise them), its members."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(failure_text(member) for member in error.exceptions)
    return f"{type(error).__name__}: {error}"


@dataclass
class McpRun:
    """A run of the Python SDK: what it got (None if it failed), why it failed, and every HTTP
    request it made with the form it sent."""

    run: ClientRun | None
    failure: str | None
    forms: list[tuple[str, str, int, dict[str, str]]]

    @property
    def assertions(self) -> list[str]:
        return [form["client_assertion"] for _, _, _, form in self.forms if "client_assertion" in form]


def run_mcp_client(server_url: str, provider: PrivateKeyJWTOAuthProvider) -> McpRun:
    """The official Python SDK with this provider as the HTTP client's auth: discovery from the
    server's 401, the token request with the provider's assertion, `initialize`, the tools and a
    `whoami` call (as test_mcp_interop.run_python_client, with private_key_jwt)."""
    forms: list[tuple[str, str, int, dict[str, str]]] = []

    async def record(response: httpx2.Response) -> None:
        request = response.request
        form = {}
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            form = {name: values[0] for name, values in parse_qs(request.content.decode("utf-8")).items()}
        forms.append((request.method, str(request.url), response.status_code, form))

    async def session() -> ClientRun:
        with anyio.fail_after(CLIENT_TIMEOUT):
            async with httpx2.AsyncClient(
                auth=provider, timeout=HTTP_TIMEOUT, event_hooks={"response": [record]}
            ) as http_client:
                async with streamable_http_client(server_url, http_client=http_client) as (read, write):
                    async with ClientSession(read, write) as client:
                        await client.initialize()
                        tools = await client.list_tools()
                        result = await client.call_tool("whoami", {})
        assert not result.is_error, f"whoami failed: {result.content}"
        claims = result.structured_content
        if not isinstance(claims, dict):
            texts = [block.text for block in result.content if getattr(block, "type", None) == "text"]
            claims = json.loads(texts[0])
        requests = [(method, url, status) for method, url, status, _ in forms]
        return ClientRun([tool.name for tool in tools.tools], claims, requests)

    try:
        return McpRun(anyio.run(session), None, forms)
    except Exception as e:  # noqa: BLE001 - the caller asserts on the failure
        return McpRun(None, failure_text(e), forms)


def test_mcp_sdk_private_key_jwt_provider_discovers_agentidp_and_calls_a_tool(idp: Idp, mcp_server: McpServer):
    """PrivateKeyJWTOAuthProvider with the SDK's own signer (SignedJWTParameters: PyJWT, RS256,
    300 s, no kid) and an agent whose credential holds that one key without a kid (AgentIdP names
    it by its thumbprint). The SDK signs for aud = the issuer of the metadata it discovered, the
    organization's, and sends no client_id beside the assertion."""
    key = Key.generate("RS256")
    agent = create_key_agent(idp.org, "mcp-sdk-agent", [TOOL_SCOPE], key)
    provider = PrivateKeyJWTOAuthProvider(
        mcp_server.url,
        MemoryTokenStorage(),
        agent.client_id,
        SignedJWTParameters(
            issuer=agent.client_id, subject=agent.client_id, signing_key=key.pem
        ).create_assertion_provider(),
        scope=TOOL_SCOPE,
        issuer=idp.org.issuer,
    )
    result = run_mcp_client(mcp_server.url, provider)
    try:
        assert result.run is not None, result.failure
        assert_discovered_and_called(result.run, idp, mcp_server)
        assert result.run.claims["sub"] == agent.agent_id, result.run.claims
        assert result.run.claims["client_id"] == agent.client_id, result.run.claims
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnostics(idp, mcp_server)}") from e

    [token_form] = [form for method, url, _, form in result.forms if url == f"{idp.base}/api/v1/token"]
    assert token_form["resource"] == mcp_server.url and "client_id" not in token_form, token_form
    header, payload = jose_parts(token_form["client_assertion"])
    assert header["alg"] == "RS256" and "kid" not in header, header
    assert payload["aud"] == idp.org.issuer, payload
    assert payload["iss"] == payload["sub"] == agent.client_id, payload
    assert payload["exp"] - payload["iat"] == 300, payload

    events = [
        e for e in audit_events(idp.org, "token.issued") if e["actor"].get("clientId") == agent.client_id
    ]
    assert len(events) == 1, events
    details = events[0]["details"]
    assert details["clientAuthMethod"] == "private_key_jwt" and details["keyId"] == key.thumbprint(), details
    assert details["resource"] == mcp_server.url, details


def test_mcp_sdk_signer_cannot_name_one_of_several_keys(idp: Idp, mcp_server: McpServer):
    """A credential holding two keys (a rotation: an old ES256 key and a new EdDSA one), where
    AgentIdP needs the assertion's kid to pick the key. The SDK's SignedJWTParameters signs
    without a kid and has no way to add one (its additional_claims go into the payload), so its
    token request is refused: invalid_client, audited as `assertion_unknown_key`. The provider's
    `assertion_provider` may be any callback, and one that puts the kid in the header works."""
    old, new = Key.generate("ES256", kid="2026-old"), Key.generate("EdDSA", kid="2026-new")
    agent = create_key_agent(idp.org, "mcp-sdk-rotating-agent", [TOOL_SCOPE], old, new)

    def provider(assertion_provider) -> PrivateKeyJWTOAuthProvider:
        return PrivateKeyJWTOAuthProvider(
            mcp_server.url,
            MemoryTokenStorage(),
            agent.client_id,
            assertion_provider,
            scope=TOOL_SCOPE,
            issuer=idp.org.issuer,
        )

    sdk_signer = SignedJWTParameters(
        issuer=agent.client_id, subject=agent.client_id, signing_key=new.pem, signing_algorithm="EdDSA"
    ).create_assertion_provider()
    refused = run_mcp_client(mcp_server.url, provider(sdk_signer))
    assert refused.run is None, refused.run
    assert "Token exchange failed (401)" in refused.failure and "invalid_client" in refused.failure, refused.failure
    [header] = [jose_parts(a)[0] for a in refused.assertions]
    assert header["alg"] == "EdDSA" and "kid" not in header, header
    assert denial_reasons(idp.org, agent.client_id) == ["assertion_unknown_key"]

    async def signer_with_kid(audience: str) -> str:
        now = int(time.time())
        claims = {"iss": agent.client_id, "sub": agent.client_id, "aud": audience, "iat": now, "exp": now + 60}
        claims["jti"] = str(uuid.uuid4())
        return jwt.encode(claims, new.pem, algorithm="EdDSA", headers={"kid": new.kid})

    accepted = run_mcp_client(mcp_server.url, provider(signer_with_kid))
    assert accepted.run is not None, f"{accepted.failure}\n{diagnostics(idp, mcp_server)}"
    assert_discovered_and_called(accepted.run, idp, mcp_server)
    events = [
        e for e in audit_events(idp.org, "token.issued") if e["actor"].get("clientId") == agent.client_id
    ]
    assert [e["details"]["keyId"] for e in events] == [new.kid], events
