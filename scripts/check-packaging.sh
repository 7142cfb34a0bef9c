#!/usr/bin/env bash
# Checks the serverless packaging without an AWS account and without Docker: cfn-lint and
# sam validate --lint, sam build to arm64, and every event in events/ through the Lambda runtime
# loop on DynamoDB Local and moto. scripts/check_packaging.py does the checks and lists its
# steps; this entry point makes the tools it runs (step 1): cargo-lambda, zig and the SAM CLI
# (which brings cfn-lint), pinned below (scripts/sam-local.sh reads the pins), in a venv under
# .tools/, and the rustup target aarch64-unknown-linux-gnu.
#
# DynamoDB Local and moto_server must be running, as scripts/test-services.sh starts them:
#
#   source scripts/test-services.sh && start_test_services && scripts/check-packaging.sh
#
# Options: --skip-build (no sam build); --measure (also each function's cold-start init time,
# for docs/performance.md). The last line says `check-packaging: N passed, 0 failed`.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LAMBDA_VERSION=1.9.2
ZIGLANG_VERSION=0.17.1
SAM_CLI_VERSION=1.170.0

tools="${AGENTIDP_TOOLS_DIR:-$PWD/.tools}"
venv="$tools/packaging-venv"
# For the Python's "so far" and total.
CHECK_PACKAGING_STARTED="$(date +%s)"
export CHECK_PACKAGING_STARTED
printf '\n==> %s (0s so far)\n' \
    "tools: cargo-lambda $CARGO_LAMBDA_VERSION, ziglang $ZIGLANG_VERSION, aws-sam-cli $SAM_CLI_VERSION in $venv"
stamp="$venv/.installed-$CARGO_LAMBDA_VERSION-$ZIGLANG_VERSION-$SAM_CLI_VERSION"
if [ ! -f "$stamp" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "cargo-lambda==$CARGO_LAMBDA_VERSION" "ziglang==$ZIGLANG_VERSION" "aws-sam-cli==$SAM_CLI_VERSION"
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
    || rustup target add aarch64-unknown-linux-gnu
# zig's and cargo-zigbuild's caches stay in .tools/ rather than in the home directory.
export XDG_CACHE_HOME="$tools/cache"
export ZIG_GLOBAL_CACHE_DIR="$tools/cache/zig"
export ZIG_LOCAL_CACHE_DIR="$tools/cache/zig-local"
mkdir -p "$XDG_CACHE_HOME"
export SAM_CLI_TELEMETRY=0
cargo lambda --version
sam --version
printf '    done in %ss\n' "$(($(date +%s) - CHECK_PACKAGING_STARTED))"

exec "$venv/bin/python" scripts/check_packaging.py "$@"
