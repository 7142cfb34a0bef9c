#!/usr/bin/env bash
# The functions under `sam local`, on DynamoDB Local and moto: `sam local start-api` with the
# developer docs' examples through it, then `sam local invoke` of every event in events/.
# scripts/sam_local.py does the work and lists its steps; this entry point makes what it needs:
#   - the SAM CLI, cargo-lambda and zig in .tools/packaging-venv, at the versions
#     scripts/check-packaging.sh pins (the same environment it makes);
#   - the docs harness's environment, .tools/venv-docs, as scripts/check-docs.sh makes it;
#   - DynamoDB Local and moto_server (scripts/test-services.sh), unless the caller started them.
#
#   scripts/sam-local.sh                          # the checks; last line `sam-local: N passed, M failed`
#   scripts/sam-local.sh --serve [--port 3000]    # the same set-up, then sam local start-api for you
#   options: --pull-image (SAM pulls AWS's base image), --rebuild (sam build even if current),
#            --page TEXT (only the docs pages whose path contains TEXT, and no events)
#
# On a machine without Docker it installs and starts it (as root); where Docker cannot run it
# says why and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

pin() { sed -n "s/^$1=//p" scripts/check-packaging.sh; }
venv=.tools/packaging-venv
stamp="$venv/.installed-$(pin CARGO_LAMBDA_VERSION)-$(pin ZIGLANG_VERSION)-$(pin SAM_CLI_VERSION)"
if [ ! -f "$stamp" ]; then
    echo "sam-local: SAM CLI, cargo-lambda and zig into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "cargo-lambda==$(pin CARGO_LAMBDA_VERSION)" \
        "ziglang==$(pin ZIGLANG_VERSION)" "aws-sam-cli==$(pin SAM_CLI_VERSION)"
    touch "$stamp"
fi
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu

docs=.tools/venv-docs
if [[ ! -x "$docs/bin/python" ]] || ! cmp -s tests/requirements.txt "$docs/.requirements"; then
    echo "sam-local: the docs harness's Python packages into $docs"
    [[ -x "$docs/bin/python" ]] || python3 -m venv "$docs"
    "$docs/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt "$docs/.requirements"
fi

if [ -z "${AWS_ENDPOINT_URL_DYNAMODB:-}" ] || [ -z "${AGENTIDP_TEST_MOTO_ENDPOINT:-}" ]; then
    exec scripts/test-services.sh "$venv/bin/python" scripts/sam_local.py "$@"
fi
exec "$venv/bin/python" scripts/sam_local.py "$@"
