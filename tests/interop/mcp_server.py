"""An MCP server written with FastMCP, as a service that trusts AgentIdP would write it, for
the interop tests (tests/interop/test_mcp_interop.py starts it; scripts/interop.sh runs them).

    python tests/interop/mcp_server.py PORT ISSUER JWKS_URI ALGORITHM

It serves MCP (streamable HTTP) at http://127.0.0.1:PORT/mcp, and that URL is also its resource
identifier: the `resource` of its RFC 9728 metadata (served at
/.well-known/oauth-protected-resource/mcp, and named by the `resource_metadata` of its 401
challenge) and the audience it requires of a token. It accepts a bearer token only when
FastMCP's JWTVerifier finds it signed by a key of JWKS_URI with ALGORITHM, with `iss` equal to
ISSUER, `aud` equal to its own URL, and the scope `tools:call`; anything else is a 401.

Its metadata names ISSUER as its one authorization server and `tools:call` as the scope it
supports, so an MCP client discovers everything else from a first 401. Its one tool, `whoami`,
answers with the verified token's claims. Nothing here is specific to AgentIdP: it is FastMCP's
RemoteAuthProvider + JWTVerifier as documented.
"""

from __future__ import annotations

import argparse
import os

# Before fastmcp is imported, which reads its settings from the environment once: no update
# check (it asks PyPI) and plain log lines in the test's log file.
os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.setdefault("FASTMCP_ENABLE_RICH_LOGGING", "false")

from fastmcp import FastMCP  # noqa: E402
from fastmcp.server.auth import RemoteAuthProvider  # noqa: E402
from fastmcp.server.auth.providers.jwt import JWTVerifier  # noqa: E402
from fastmcp.server.dependencies import get_access_token  # noqa: E402

REQUIRED_SCOPE = "tools:call"
CLAIMS = ("iss", "aud", "sub", "scope", "client_id", "org_id", "exp", "iat", "jti")


def build(port: int, issuer: str, jwks_uri: str, algorithm: str) -> FastMCP:
    base_url = f"http://127.0.0.1:{port}"
    verifier = JWTVerifier(
        jwks_uri=jwks_uri,
        issuer=issuer,
        audience=f"{base_url}/mcp",
        algorithm=algorithm,
        required_scopes=[REQUIRED_SCOPE],
    )
    auth = RemoteAuthProvider(
        token_verifier=verifier,
        authorization_servers=[issuer],
        base_url=base_url,
        resource_name=f"interop MCP server on port {port}",
    )
    server = FastMCP(name=f"interop-{port}", auth=auth)

    @server.tool
    def whoami() -> dict:
        """The claims of the access token this call was authorized with."""
        token = get_access_token()
        if token is None:
            raise RuntimeError("no access token in this request's context")
        claims = token.claims or {}
        return {name: claims[name] for name in CLAIMS if name in claims}

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("issuer", help="the only issuer whose tokens are accepted, as the `iss` claim has it")
    parser.add_argument("jwks_uri")
    parser.add_argument("algorithm", help="the tokens' signing algorithm, e.g. RS256")
    args = parser.parse_args()
    server = build(args.port, args.issuer, args.jwks_uri, args.algorithm)
    server.run(transport="http", host="127.0.0.1", port=args.port, show_banner=False)


if __name__ == "__main__":
    main()
