#!/usr/bin/env bash
# Checks the developer documentation and the OpenAPI spec against the code:
#   - docs/openapi.yaml is valid OpenAPI 3.1, and its routes are exactly ROUTES of
#     shared/http/src/lib.rs; its error codes, audit actions, scopes and field limits are the code's;
#   - every ```bash example of docs/developers/**/*.md and README.md runs against a fresh
#     agentidp-local per page, and the responses they document match the real ones;
#   - every response the Rust end-to-end tests received conforms to the spec.
#
#   scripts/check-docs.sh              # everything
#   scripts/check-docs.sh -- ARGS      # passes ARGS to pytest (e.g. -k quick-start)
#
# The end-to-end responses are read from the file AGENTIDP_E2E_RESPONSE_LOG names, which
# scripts/test.sh sets while `cargo test` runs. When it is not set, this script runs the
# end-to-end tests on the embedded store itself to make that log.
#
# Needs python3 (3.11), curl and jq; the Python packages (tests/requirements.txt) go into a
# virtual environment under .tools/venv-docs (gitignored), made on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

pytest_args=()
if [[ "${1:-}" == "--" ]]; then
    shift
    pytest_args=("$@")
fi

step() { printf '\n==> %s\n' "$*"; }

for tool in curl jq python3; do
    if ! command -v "$tool" >/dev/null; then
        if [[ "$tool" != python3 ]] && command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
            step "installing $tool"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
        fi
        command -v "$tool" >/dev/null || { echo "check-docs: $tool is needed" >&2; exit 1; }
    fi
done

venv=.tools/venv-docs
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s tests/requirements.txt "$stamp"; then
    step "Python environment for the docs checks ($venv)"
    if [[ ! -x "$venv/bin/python" ]]; then
        mkdir -p .tools
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt "$stamp"
fi

step "building agentidp-local and agentidp-admin (debug)"
cargo build --locked --bin agentidp-local --bin agentidp-admin

if [[ -z "${AGENTIDP_E2E_RESPONSE_LOG:-}" ]]; then
    step "end-to-end tests on the embedded store, logging their responses"
    log_dir="$(mktemp -d "${TMPDIR:-/tmp}/agentidp-e2e-log.XXXXXX")"
    trap 'rm -rf "$log_dir"' EXIT
    export AGENTIDP_E2E_RESPONSE_LOG="$log_dir/e2e-responses.jsonl"
    cargo test --locked -p agentidp-local --test e2e -- embedded
fi

step "docs and OpenAPI checks (pytest tests/docs)"
"$venv/bin/python" -m pytest -p no:cacheprovider tests/docs -rs -q "${pytest_args[@]}"
