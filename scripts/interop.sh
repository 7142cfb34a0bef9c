#!/usr/bin/env bash
# Interop with the official MCP SDKs (issue 13): MCP clients and servers written by others work
# with AgentIdP unchanged (tests/interop/test_mcp_interop.py):
#   - the official Python SDK (`mcp`) and TypeScript SDK (`@modelcontextprotocol/sdk`), each with
#     its client-credentials provider, discover AgentIdP from an MCP server's 401 (RFC 9728, then
#     RFC 8414), get a token for that server (RFC 8707 `resource`) and call a tool;
#   - the MCP servers are FastMCP's (JWTVerifier behind RemoteAuthProvider): one refuses a token
#     for another server, and a server refuses a token of another organization that registered
#     the same identifier;
#   - private_key_jwt (tests/interop/test_private_key_jwt.py): Authlib's PrivateKeyJWT,
#     openid-client's PrivateKeyJwt and the MCP Python SDK's PrivateKeyJWTOAuthProvider each get
#     a token with a signed assertion and use it; replayed, foreign-key and wrong-audience
#     assertions are refused.
#   - delegation (tests/interop/test_delegation.py): openid-client's genericGrantRequest and
#     requests-oauth2client's token_exchange each exchange a subject agent's token for the actor
#     (RFC 8693), jose and jwskate verify the result against the JWKS and read its `act`; chains,
#     refusals and the kill switch.
#   - DPoP, RFC 9449 (tests/interop/test_dpop.py, tests/interop/dpop_client.mjs): oauth4webapi's
#     `DPoP(client, keyPair)` handle (ES256, Ed25519, PS256 keys from its generateKeyPair) on
#     clientCredentialsGrantRequest and protectedResourceRequest, openid-client's getDPoPHandle,
#     the npm `dpop` package's generateProof by hand, and requests-oauth2client's DPoPToken (ES256,
#     EdDSA, PS256; also through OAuth2ClientCredentialsAuth on an ApiClient) each get a DPoP-bound
#     token (cnf.jkt checked with jose or jwskate against the JWKS) and call the management API
#     with it; with AGENTIDP_DPOP_NONCES=true openid-client and requests-oauth2client retry a
#     use_dpop_nonce refusal on their own (oauth4webapi with isDPoPNonceError, `dpop` by hand);
#     refusals as the libraries see them: the bound token as Bearer (DPoP challenge,
#     invalid_token), a proof from another key and a replayed proof (invalid_dpop_proof), a token
#     request without a proof for an agent with requireDpop.
#
#   scripts/interop.sh              # everything
#   scripts/interop.sh -- ARGS      # passes ARGS to pytest (e.g. -k typescript)
#
# Needs python3 (3.11), node (20 or later) and npm. The Python packages
# (tests/interop/requirements.txt) go into a virtual environment under .tools/venv-interop, the
# npm packages (tests/interop/package-lock.json) into tests/interop/node_modules (both
# gitignored), made on first use and again when the pinned list changes.
set -euo pipefail
cd "$(dirname "$0")/.."

pytest_args=()
if [[ "${1:-}" == "--" ]]; then
    shift
    pytest_args=("$@")
fi

step() { printf '\n==> %s\n' "$*"; }

for tool in python3 node npm; do
    command -v "$tool" >/dev/null || { echo "interop: $tool is needed" >&2; exit 1; }
done
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if (( node_major < 20 )); then
    echo "interop: node 20 or later is needed (this is $(node --version))" >&2
    exit 1
fi

venv=.tools/venv-interop
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s tests/interop/requirements.txt "$stamp"; then
    step "Python environment for the interop tests ($venv)"
    if [[ ! -x "$venv/bin/python" ]]; then
        mkdir -p .tools
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
    cp tests/interop/requirements.txt "$stamp"
fi

# `npm ci` empties node_modules first, so the stamp (a copy of the lock it installed) goes in after.
npm_stamp=tests/interop/node_modules/.interop-package-lock.json
if [[ ! -d tests/interop/node_modules ]] || ! cmp -s tests/interop/package-lock.json "$npm_stamp"; then
    step "npm packages for the interop tests (tests/interop/node_modules)"
    (cd tests/interop && npm ci --no-audit --no-fund)
    cp tests/interop/package-lock.json "$npm_stamp"
fi

step "building agentidp-local and agentidp-admin (debug)"
cargo build --locked --bin agentidp-local --bin agentidp-admin

step "interop tests: MCP SDKs, FastMCP, Authlib, openid-client, oauth4webapi, dpop, requests-oauth2client (pytest tests/interop)"
"$venv/bin/python" -m pytest -p no:cacheprovider tests/interop -q -rs "${pytest_args[@]}"
