"""Clients and servers written by others, with AgentIdP and unchanged (issue 13, item 5).

Each test starts its own `agentidp-local` on a fresh data directory (scripts/agentidp_local.py's
`start`) and, with the bootstrap admin of its default organization, registers an agent with
`tools:call` and a credential for it. Two MCP servers written with FastMCP
(tests/interop/mcp_server.py: `JWTVerifier` behind `RemoteAuthProvider`), A and B, each on its
own loopback port, trust that organization: their authorization server and the issuer they
require is the organization's issuer, `{base}/orgs/{orgId}`, and the audience they require is
their own MCP URL, `http://127.0.0.1:PORT/mcp`, which is the resource identifier in their
RFC 9728 metadata and the identifier each is registered under in AgentIdP.

  - the official Python SDK (`mcp`, ClientCredentialsOAuthProvider) and the official TypeScript
    SDK (`@modelcontextprotocol/sdk`, ClientCredentialsProvider; tests/interop/mcp_client.mjs)
    each find AgentIdP from the server's 401 alone, get a token for the server, list its tools and
    call `whoami`, which answers with the claims the server verified;
  - a token for A is refused by B (another audience);
  - another organization that registers A's URL as its own resource gets tokens whose `aud` is
    A's URL, and A refuses them (another issuer), while it accepts the first organization's.

scripts/interop.sh installs the packages (tests/interop/requirements.txt, package-lock.json),
builds the binaries and runs this file.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import agentidp_local  # noqa: E402

HTTP_TIMEOUT = 10  # seconds, for each request the tests make themselves
CLIENT_TIMEOUT = 45  # seconds, for one whole MCP client run (discovery, token, two calls)
SERVER_READY_TIMEOUT = 30  # seconds, for a FastMCP server to answer its metadata
TOOL_SCOPE = "tools:call"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "agentidp-interop-httpx", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def binary(name: str) -> Path:
    """The debug build of a binary (scripts/interop.sh builds it)."""
    return agentidp_local.debug_binary(name, "scripts/interop.sh")


def server_environment() -> dict[str, str]:
    """The server's and the admin CLI's settings are the defaults, whatever the caller's are."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("AGENTIDP_") and name != "AWS_ENDPOINT_URL_DYNAMODB"
    }
    env["AGENTIDP_BCRYPT_COST"] = "4"
    return env


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a JWT, unverified (the servers under test verify)."""
    parts = token.split(".")
    assert len(parts) == 3, f"not a JWT: {token[:40]}..."
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    return json.loads(base64.urlsafe_b64decode(payload))


def tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError as e:
        return f"({path}: {e})"


# --- AgentIdP: an organization, through the token endpoint and the management API -------------


@dataclass
class Org:
    """An organization of the server at `base`, driven by one of its admin credentials."""

    base: str
    client_id: str
    client_secret: str
    _admin_token: str | None = None

    def token_response(self, client_id: str, client_secret: str, **params: str) -> httpx2.Response:
        return httpx2.post(
            f"{self.base}/api/v1/token",
            data={"grant_type": "client_credentials", **params},
            auth=(client_id, client_secret),
            timeout=HTTP_TIMEOUT,
        )

    def token(self, client_id: str, client_secret: str, **params: str) -> str:
        response = self.token_response(client_id, client_secret, **params)
        assert response.status_code == 200, f"token request {params}: {response.status_code} {response.text}"
        return response.json()["access_token"]

    @property
    def admin_token(self) -> str:
        if self._admin_token is None:
            self._admin_token = self.token(self.client_id, self.client_secret)
        return self._admin_token

    @property
    def org_id(self) -> str:
        org_id = claims_of(self.admin_token).get("org_id")
        assert isinstance(org_id, str) and org_id, f"the admin token has no org_id: {claims_of(self.admin_token)}"
        return org_id

    @property
    def issuer(self) -> str:
        """The organization's issuer: the `iss` of its tokens for a resource, and the issuer of its
        RFC 8414 metadata at {base}/.well-known/oauth-authorization-server/orgs/{orgId}."""
        return f"{self.base}/orgs/{self.org_id}"

    def api(self, method: str, path: str, body: dict | None = None, expect: int = 201) -> dict:
        response = httpx2.request(
            method,
            f"{self.base}{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=HTTP_TIMEOUT,
        )
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def create_agent(self, name: str, scopes: list[str]) -> tuple[str, str]:
        """A new agent with these scopes, and the client_id and client_secret of its credential."""
        agent = self.api("POST", "/api/v1/agents", {"name": name, "scopes": scopes})
        credential = self.api("POST", f"/api/v1/agents/{agent['agentId']}/credentials", {})
        return credential["clientId"], credential["clientSecret"]

    def register_resource(self, identifier: str, scopes: list[str]) -> dict:
        resource = self.api(
            "POST", "/api/v1/resources", {"identifier": identifier, "name": f"MCP server {identifier}", "scopes": scopes}
        )
        assert resource["identifier"] == identifier, resource
        return resource


@dataclass
class Idp:
    server: agentidp_local.Server
    org: Org

    @property
    def base(self) -> str:
        return self.server.url

    def log(self) -> str:
        return self.server.read_log()

    def create_org(self, name: str) -> Org:
        """Another organization, made by the operator CLI on the running server's store."""
        result = subprocess.run(
            [str(binary("agentidp-admin")), "--data-dir", str(self.server.data_dir), "create-org", "--name", name],
            env=server_environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"create-org: {result.returncode}\n{result.stdout}\n{result.stderr}"
        created = json.loads(result.stdout)
        org = Org(self.base, created["clientId"], created["clientSecret"])
        assert org.org_id == created["orgId"], (org.org_id, created)
        return org


def running_idp(workdir: Path) -> Iterator[Idp]:
    """agentidp-local in `workdir`, with its bootstrap organization, until the caller is done."""
    server = agentidp_local.start(
        binary("agentidp-local"),
        workdir / "data",
        workdir / "agentidp-local.log",
        env=server_environment(),
        cwd=workdir,
    )
    try:
        yield Idp(server, Org(server.url, server.client_id, server.client_secret))
    finally:
        server.stop()


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[Idp]:
    yield from running_idp(tmp_path)


@dataclass
class Agent:
    client_id: str
    client_secret: str


@pytest.fixture
def agent(idp: Idp) -> Agent:
    """An agent of the default organization with `tools:call`, and its credential."""
    return Agent(*idp.org.create_agent("interop-agent", [TOOL_SCOPE]))


# --- FastMCP servers ----------------------------------------------------------------------------


@dataclass
class McpServer:
    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        """The MCP endpoint, its resource identifier and the audience it requires."""
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def metadata_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/oauth-protected-resource/mcp"

    def read_log(self) -> str:
        return tail(self.log)

    def assert_logged(self, text: str) -> None:
        """The server's log says `text` within 5 s: why FastMCP refused a token, for example."""
        deadline = time.monotonic() + 5
        while text not in self.log.read_text(encoding="utf-8", errors="replace"):
            assert time.monotonic() < deadline, f"{self.url} never logged {text!r}:\n{self.read_log()}"
            time.sleep(0.1)

    def post_initialize(self, token: str) -> httpx2.Response:
        """An MCP initialize request with this bearer token, as a plain HTTP client sends it."""
        return httpx2.post(
            self.url,
            json=INITIALIZE,
            headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"},
            timeout=HTTP_TIMEOUT,
        )


def start_mcp_servers(count: int, issuer: str, jwks_uri: str, algorithm: str, workdir: Path) -> list[McpServer]:
    """`count` FastMCP servers (tests/interop/mcp_server.py), started together, each ready when its
    RFC 9728 metadata answers 200 with its own URL as `resource`. A server that exits first (its
    free port taken meanwhile) is tried again on another port, three times in all."""
    servers: list[McpServer] = []
    try:
        for index in range(count):
            servers.append(_spawn_mcp_server(index, 1, issuer, jwks_uri, algorithm, workdir))
        for index in range(count):
            for attempt in range(1, 4):
                error = _wait_mcp_server_ready(servers[index])
                if error is None:
                    break
                agentidp_local.stop(servers[index].process)
                if attempt == 3:
                    raise AssertionError(f"MCP server {index} did not start: {error}\n{servers[index].read_log()}")
                servers[index] = _spawn_mcp_server(index, attempt + 1, issuer, jwks_uri, algorithm, workdir)
        return servers
    except BaseException:
        for server in servers:
            agentidp_local.stop(server.process)
        raise


def _spawn_mcp_server(index: int, attempt: int, issuer: str, jwks_uri: str, algorithm: str, workdir: Path) -> McpServer:
    port = agentidp_local.free_port()
    log = workdir / f"mcp-server-{index}-{attempt}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, str(HERE / "mcp_server.py"), str(port), issuer, jwks_uri, algorithm],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return McpServer(process, port, log)


def _wait_mcp_server_ready(server: McpServer) -> str | None:
    """None once the server serves its metadata; else why not."""
    deadline = time.monotonic() + SERVER_READY_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return f"it exited with {server.process.returncode}"
        try:
            response = httpx2.get(server.metadata_url, timeout=2)
        except httpx2.TransportError:
            response = None
        if response is not None:
            try:
                resource = response.json().get("resource") if response.status_code == 200 else None
            except ValueError:
                resource = None
            if resource == server.url:
                return None
            return f"its metadata answered {response.status_code}: {response.text}"
        time.sleep(0.1)
    return f"no metadata within {SERVER_READY_TIMEOUT} s"


@pytest.fixture
def mcp_servers(idp: Idp, tmp_path: Path) -> Iterator[list[McpServer]]:
    """Servers A and B, trusting the default organization's issuer, each registered in it as a
    resource under its MCP URL with the scope `tools:call`."""
    jwks = httpx2.get(f"{idp.base}/.well-known/jwks.json", timeout=HTTP_TIMEOUT).json()
    algorithm = jwks["keys"][0]["alg"]
    servers = start_mcp_servers(2, idp.org.issuer, f"{idp.base}/.well-known/jwks.json", algorithm, tmp_path)
    try:
        for server in servers:
            idp.org.register_resource(server.url, [TOOL_SCOPE])
        yield servers
    finally:
        for server in servers:
            agentidp_local.stop(server.process)


def diagnostics(idp: Idp, *servers: McpServer) -> str:
    parts = [f"--- agentidp-local log ---\n{idp.log()}"]
    parts += [f"--- MCP server {server.url} log ---\n{server.read_log()}" for server in servers]
    return "\n".join(parts)


# --- the clients --------------------------------------------------------------------------------


@dataclass
class ClientRun:
    """What an MCP client saw: the server's tools, `whoami`'s answer, and every HTTP request it
    made (method, URL, status), in order."""

    tools: list[str]
    claims: dict[str, Any]
    requests: list[tuple[str, str, int]] = field(default_factory=list)


class MemoryTokenStorage:
    """The Python SDK's TokenStorage, in memory: nothing stored beforehand."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def run_python_client(server_url: str, client_id: str, client_secret: str, issuer: str) -> ClientRun:
    """The official Python SDK: ClientCredentialsOAuthProvider as the HTTP client's auth, the
    streamable HTTP transport and a ClientSession; it is given the credential and the issuer it
    belongs to, and finds everything else itself."""
    requests: list[tuple[str, str, int]] = []

    async def record(response: httpx2.Response) -> None:
        requests.append((response.request.method, str(response.request.url), response.status_code))

    async def session() -> ClientRun:
        provider = ClientCredentialsOAuthProvider(
            server_url,
            MemoryTokenStorage(),
            client_id,
            client_secret,
            scope=TOOL_SCOPE,
            issuer=issuer,
        )
        with anyio.fail_after(CLIENT_TIMEOUT):
            async with httpx2.AsyncClient(
                auth=provider,
                timeout=HTTP_TIMEOUT,
                event_hooks={"response": [record]},
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
            assert texts, f"whoami answered no text: {result}"
            claims = json.loads(texts[0])
        return ClientRun([tool.name for tool in tools.tools], claims, requests)

    return anyio.run(session)


def run_node_client(server_url: str, client_id: str, client_secret: str, issuer: str) -> ClientRun:
    """The official TypeScript SDK, through tests/interop/mcp_client.mjs."""
    node = shutil.which("node")
    assert node, "node is needed for the TypeScript SDK client"
    assert (HERE / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir(), (
        "tests/interop/node_modules is missing: run `npm ci` in tests/interop (scripts/interop.sh does)"
    )
    env = {
        **os.environ,
        "MCP_CLIENT_ID": client_id,
        "MCP_CLIENT_SECRET": client_secret,
        "MCP_EXPECTED_ISSUER": issuer,
        "MCP_SCOPE": TOOL_SCOPE,
        "MCP_CLIENT_TIMEOUT_MS": str(CLIENT_TIMEOUT * 1000),
    }
    result = subprocess.run(
        [node, str(HERE / "mcp_client.mjs"), server_url],
        env=env,
        cwd=HERE,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT + 15,
    )
    assert result.returncode == 0, f"mcp_client.mjs exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    output = json.loads(result.stdout)
    requests = [(r["method"], r["url"], r["status"]) for r in output["requests"]]
    return ClientRun(output["tools"], output["result"], requests)


def assert_discovered_and_called(run: ClientRun, idp: Idp, server: McpServer) -> None:
    """The client listed `whoami`, its token was AgentIdP's for this server and this organization,
    and it got there by discovery: a 401 from the server, the server's RFC 9728 metadata, the
    organization's RFC 8414 metadata, the token endpoint, then the server again."""
    assert "whoami" in run.tools, run.tools
    claims = run.claims
    assert claims.get("aud") == server.url, claims
    assert claims.get("iss") == idp.org.issuer, claims
    assert claims.get("org_id") == idp.org.org_id, claims
    assert TOOL_SCOPE in str(claims.get("scope", "")).split(), claims
    assert claims.get("sub"), claims
    assert claims.get("client_id"), claims

    org_metadata = f"{idp.base}/.well-known/oauth-authorization-server/orgs/{idp.org.org_id}"
    steps = [
        ("POST", server.url, 401),
        ("GET", server.metadata_url, 200),
        ("GET", org_metadata, 200),
        ("POST", f"{idp.base}/api/v1/token", 200),
        ("POST", server.url, 200),
    ]
    position = 0
    for request in run.requests:
        if position < len(steps) and request == steps[position]:
            position += 1
    assert position == len(steps), (
        f"the client's requests do not follow the discovery steps {steps} in order "
        f"(matched {position}):\n" + "\n".join(map(str, run.requests))
    )


# --- the tests ----------------------------------------------------------------------------------


def test_python_sdk_discovers_agentidp_and_calls_a_tool(idp: Idp, agent: Agent, mcp_servers: list[McpServer]):
    server = mcp_servers[0]
    try:
        run = run_python_client(server.url, agent.client_id, agent.client_secret, idp.org.issuer)
        assert_discovered_and_called(run, idp, server)
    except Exception as e:
        raise AssertionError(f"{e!r}\n{diagnostics(idp, server)}") from e
    print("Python SDK requests:", *run.requests, sep="\n  ")


def test_typescript_sdk_discovers_agentidp_and_calls_a_tool(idp: Idp, agent: Agent, mcp_servers: list[McpServer]):
    server = mcp_servers[1]
    try:
        run = run_node_client(server.url, agent.client_id, agent.client_secret, idp.org.issuer)
        assert_discovered_and_called(run, idp, server)
    except Exception as e:
        raise AssertionError(f"{e!r}\n{diagnostics(idp, server)}") from e
    print("TypeScript SDK requests:", *run.requests, sep="\n  ")


def test_token_for_one_server_is_refused_by_another(idp: Idp, agent: Agent, mcp_servers: list[McpServer]):
    server_a, server_b = mcp_servers
    token = idp.org.token(agent.client_id, agent.client_secret, resource=server_a.url)
    claims = claims_of(token)
    assert claims["aud"] == server_a.url and claims["iss"] == idp.org.issuer, claims
    assert TOOL_SCOPE in claims["scope"].split(), claims

    refused = server_b.post_initialize(token)
    assert refused.status_code == 401, f"B answered {refused.status_code}: {refused.text}\n{server_b.read_log()}"
    assert "invalid_token" in refused.headers.get("www-authenticate", ""), refused.headers
    server_b.assert_logged(f"audience mismatch (got {server_a.url!r}, expected {server_b.url!r})")

    accepted = server_a.post_initialize(token)
    assert accepted.status_code == 200, f"A answered {accepted.status_code}: {accepted.text}\n{server_a.read_log()}"


def test_another_org_registering_the_same_identifier_gets_no_access(
    idp: Idp, agent: Agent, mcp_servers: list[McpServer]
):
    """The cross-organization attack: resource identifiers are unique only within an
    organization, so an attacker's organization can register server A's URL too and get tokens
    with A's URL as `aud` and the scope A requires. They carry the attacker organization's issuer,
    which A does not trust."""
    server_a = mcp_servers[0]
    attacker = idp.create_org("attacker")
    assert attacker.org_id != idp.org.org_id
    attacker.register_resource(server_a.url, [TOOL_SCOPE])
    attacker_agent = attacker.create_agent("attacker-agent", [TOOL_SCOPE])

    forged = attacker.token(*attacker_agent, resource=server_a.url)
    claims = claims_of(forged)
    # Everything A checks but the issuer would pass.
    assert claims["aud"] == server_a.url, claims
    assert TOOL_SCOPE in claims["scope"].split(), claims
    assert claims["org_id"] == attacker.org_id, claims
    assert claims["iss"] == attacker.issuer != idp.org.issuer, claims

    refused = server_a.post_initialize(forged)
    assert refused.status_code == 401, f"A answered {refused.status_code}: {refused.text}\n{server_a.read_log()}"
    assert "invalid_token" in refused.headers.get("www-authenticate", ""), refused.headers
    server_a.assert_logged(f"issuer mismatch (got {attacker.issuer!r}, expected {idp.org.issuer!r})")

    genuine = idp.org.token(agent.client_id, agent.client_secret, resource=server_a.url)
    assert claims_of(genuine)["iss"] == idp.org.issuer
    accepted = server_a.post_initialize(genuine)
    assert accepted.status_code == 200, f"A answered {accepted.status_code}: {accepted.text}\n{server_a.read_log()}"

    # The attacker's organization has metadata of its own, naming its own issuer: a client that
    # follows A's metadata is led to the first organization's, never to the attacker's.
    metadata = httpx2.get(
        f"{idp.base}/.well-known/oauth-authorization-server/orgs/{attacker.org_id}", timeout=HTTP_TIMEOUT
    )
    assert metadata.status_code == 200 and metadata.json()["issuer"] == attacker.issuer, metadata.text
    advertised = httpx2.get(server_a.metadata_url, timeout=HTTP_TIMEOUT).json()["authorization_servers"]
    assert advertised == [idp.org.issuer], advertised
