#!/usr/bin/env bash
# The one test command: on a fresh machine it installs and starts what the tests need
# (DynamoDB Local, moto_server), runs every check and test, and stops what it started.
#
#   scripts/test.sh            # everything
#   scripts/test.sh -- ARGS    # passes ARGS to `cargo test` (e.g. a test name filter), and
#                              # skips the packaging checks
set -euo pipefail
cd "$(dirname "$0")/.."

cargo_test_args=()
if [[ "${1:-}" == "--" ]]; then
    shift
    cargo_test_args=("$@")
fi

# Each step says how much disk is free: a full run needs several GB (target/, .tools/).
step() { printf '\n==> %s (%s free)\n' "$*" "$(df -Ph . | awk 'NR == 2 { print $4 }')"; }

step "rustfmt"
cargo fmt --all -- --check

step "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "starting DynamoDB Local and moto_server"
# shellcheck source=scripts/test-services.sh
source scripts/test-services.sh
start_test_services

# The end-to-end tests log every response they receive; scripts/check-docs.sh checks each
# against docs/openapi.yaml. A fresh log per run, so a stale one can never pass.
export AGENTIDP_E2E_RESPONSE_LOG="$PWD/.tools/e2e-responses.jsonl"
mkdir -p .tools && rm -f "$AGENTIDP_E2E_RESPONSE_LOG"

step "cargo test (unit, conformance on both stores, end-to-end on both stores)"
cargo test --workspace --locked "${cargo_test_args[@]}"

step "developer docs and OpenAPI spec (scripts/check-docs.sh)"
if [[ ${#cargo_test_args[@]} -gt 0 ]]; then
    # A filtered cargo test may not have run the end-to-end tests: check-docs runs them itself.
    unset AGENTIDP_E2E_RESPONSE_LOG
fi
scripts/check-docs.sh

step "MCP SDK interop (scripts/interop.sh)"
scripts/interop.sh

step "API fuzzing against docs/openapi.yaml (scripts/fuzz-api.sh)"
scripts/fuzz-api.sh

step "serverless packaging: cfn-lint, sam validate --lint, sam build to arm64, every event through the Lambda runtime loop (scripts/check-packaging.sh)"
# Last, because its cold run is the longest (the release LTO build of five arm64 binaries,
# about 9 minutes on 2 cores); it reuses the services started above. A filtered run (`-- ARGS`)
# is for iterating on tests and skips it; the full command never does.
if [[ ${#cargo_test_args[@]} -gt 0 ]]; then
    echo "skipped: a filtered run (scripts/test.sh -- ${cargo_test_args[*]}); run scripts/test.sh for everything"
else
    scripts/check-packaging.sh
fi

step "sam local: the developer docs' examples through sam local start-api, every event through sam local invoke (scripts/sam-local.sh)"
# After the packaging checks, whose release build (.aws-sam/build) it reuses, on the services
# started above. It installs and starts Docker where it can; where Docker cannot run it says so
# and passes. A filtered run skips it, as it skips the packaging checks.
if [[ ${#cargo_test_args[@]} -gt 0 ]]; then
    echo "skipped: a filtered run (scripts/test.sh -- ${cargo_test_args[*]}); run scripts/test.sh for everything"
else
    scripts/sam-local.sh
fi
