#!/usr/bin/env bash
# Fuzzes the API with Schemathesis against its spec, docs/openapi.yaml, on a fresh
# agentidp-local: every response must be a non-5xx, and its status, content type, headers and
# body must be the ones the spec declares for the operation.
#
#   scripts/fuzz-api.sh                 # the CI run (bounded, seeded)
#   FUZZ_MAX_EXAMPLES=300 FUZZ_AUX_EXAMPLES=60 FUZZ_SEED=7 scripts/fuzz-api.sh  # longer, other
#
# On a fresh machine it makes the virtual environment .tools/venv-fuzz (gitignored) from the
# pinned tests/fuzz-requirements.txt, builds the debug agentidp-local, starts it on a free
# loopback port with a temporary data directory (scripts/agentidp_local.py), takes a bearer
# token from its bootstrap admin credential, runs `schemathesis run` (four passes, see below),
# stops the server and exits non-zero on any failure, printing one summary line.
# Schemathesis' cache, JUnit reports and logs (one per pass) and the server's log are left in
# .tools/fuzz/ (from there, `../venv-fuzz/bin/st replay <Test Case ID>` replays a failure
# against a running server).
#
# Needs python3 (3.10 or later) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

# Bounded to fit CI (the whole run takes a few minutes on 2 cores): at most this many examples
# per operation and phase in the authenticated pass, and in the three shorter ones (see below).
max_examples="${FUZZ_MAX_EXAMPLES:-150}"
aux_examples="${FUZZ_AUX_EXAMPLES:-30}"
seed="${FUZZ_SEED:-20260328}"

step() { printf '\n==> %s\n' "$*"; }

for tool in curl python3; do
    command -v "$tool" >/dev/null || { echo "fuzz-api: $tool is needed" >&2; exit 1; }
done

venv=.tools/venv-fuzz
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/schemathesis" ]] || ! cmp -s tests/fuzz-requirements.txt "$stamp"; then
    step "Python environment for the fuzz run ($venv)"
    if [[ ! -x "$venv/bin/python" ]]; then
        mkdir -p .tools
        python3 -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/fuzz-requirements.txt
    cp tests/fuzz-requirements.txt "$stamp"
fi
py="$repo/$venv/bin/python"

step "building agentidp-local (debug)"
cargo build --locked --bin agentidp-local

work="$(mktemp -d "${TMPDIR:-/tmp}/agentidp-fuzz.XXXXXX")"
server_pid=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ -f "$work/server.log" ]]; then
        mkdir -p .tools/fuzz && cp "$work/server.log" .tools/fuzz/server.log
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

json_field() { "$py" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# The server's limits, raised for the fuzzer alone. Schemathesis sends thousands of requests
# within a few minutes, from one address, with one organization's token, and most of its
# client authentications fail on purpose (random or missing credentials). With the defaults
# (600 management requests per organization per minute; a client id locked out after 10
# failures, an address after 100) nearly every response after the first minute would be a 429
# (`RATE_LIMITED` or `slow_down`): still conformant, but it would test nothing else. The limits
# themselves are covered by the Rust tests. Bcrypt cost 4 (the minimum) keeps each client
# authentication cheap; the cost is not what is under test here.
export AGENTIDP_BCRYPT_COST=4
export AGENTIDP_ORG_REQUESTS_PER_MINUTE=10000000
export AGENTIDP_LOCKOUT_CLIENT_FAILURES=1000000
export AGENTIDP_LOCKOUT_ADDRESS_FAILURES=1000000
export AGENTIDP_LOCKOUT_CLIENT_FAILURES_PER_MINUTE=1000000
# The free plan's 100 agents and 10 resources would be used up early by the creates the fuzzer
# sends; past that every create is a 403 PLAN_LIMIT_EXCEEDED and the records it would have made
# (and the operations on them the stateful phase chains) go untested.
export AGENTIDP_FREE_MAX_AGENTS=1000000
export AGENTIDP_FREE_MAX_RESOURCES=1000000
export AGENTIDP_FREE_MAX_TRUSTED_ISSUERS=1000000
# The fuzzer's token is taken once, before the run: the longest lifetime lets a long run
# (FUZZ_MAX_EXAMPLES in the thousands) finish with it.
export AGENTIDP_TOKEN_LIFETIME_SECONDS=86400
unset AGENTIDP_ISSUER

step "starting agentidp-local on a free loopback port"
data_dir="$work/data"
# scripts/agentidp_local.py stays running in front of the server: $server_pid is its pid, and
# killing it stops the server.
exec {server_out}< <(exec "$py" scripts/agentidp_local.py --binary target/debug/agentidp-local \
    --data-dir "$data_dir" --log "$work/server.log")
server_pid=$!
read -r port _ client_id client_secret <&"$server_out" || exit 1
base_url="http://127.0.0.1:$port"
echo "listening on $base_url (data dir $data_dir)"

token="$(curl -fsS -u "$client_id:$client_secret" -d grant_type=client_credentials \
    "$base_url/api/v1/token" | json_field access_token)"
introspected="$(curl -fsS -u "$client_id:$client_secret" --data-urlencode "token=$token" \
    "$base_url/api/v1/token/introspect")"
admin_agent_id="$(json_field sub <<<"$introspected")"
org_id="$(json_field org_id <<<"$introspected")"

# An agent of its own for the hook below to send the admin's changes to.
decoy_agent_id="$(curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"name": "fuzz-decoy", "description": "Takes the changes the fuzzer aims at the admin."}' \
    "$base_url/api/v1/agents" | json_field agentId)"

# A second token, revoked at once: the third pass below sends it.
revoked_token="$(curl -fsS -u "$client_id:$client_secret" -d grant_type=client_credentials \
    "$base_url/api/v1/token" | json_field access_token)"
curl -fsS -o /dev/null -u "$client_id:$client_secret" --data-urlencode "token=$revoked_token" \
    "$base_url/api/v1/token/revoke"

# An agent that may only read agents, with a credential and a token: the fourth pass.
reader_agent_id="$(curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"name": "fuzz-reader", "scopes": ["agents:read"]}' \
    "$base_url/api/v1/agents" | json_field agentId)"
reader_credential="$(curl -fsS -X POST -H "Authorization: Bearer $token" \
    "$base_url/api/v1/agents/$reader_agent_id/credentials")"
reader_client_id="$(json_field clientId <<<"$reader_credential")"
reader_client_secret="$(json_field clientSecret <<<"$reader_credential")"
reader_token="$(curl -fsS -u "$reader_client_id:$reader_client_secret" \
    -d grant_type=client_credentials "$base_url/api/v1/token" | json_field access_token)"

# Credentials go to Schemathesis through the environment, not the command line. It applies
# them by the spec's security schemes: a bearer token where an operation accepts `agentidp`
# (every management endpoint), HTTP Basic with the bootstrap credential where it accepts
# `clientSecretBasic` (token, introspection, revocation: the first alternative they list).
export FUZZ_BEARER_TOKEN="$token" FUZZ_REVOKED_TOKEN="$revoked_token"
export FUZZ_CLIENT_ID="$client_id" FUZZ_CLIENT_SECRET="$client_secret"
export FUZZ_READER_TOKEN="$reader_token"
export FUZZ_READER_CLIENT_ID="$reader_client_id" FUZZ_READER_CLIENT_SECRET="$reader_client_secret"
export FUZZ_ADMIN_AGENT_ID="$admin_agent_id" FUZZ_DECOY_AGENT_ID="$decoy_agent_id"
export FUZZ_ORG_ID="$org_id"
cat >"$work/authenticated.toml" <<'EOF'
[auth.openapi.agentidp]
bearer = "${FUZZ_BEARER_TOKEN}"

[auth.openapi.clientSecretBasic]
username = "${FUZZ_CLIENT_ID}"
password = "${FUZZ_CLIENT_SECRET}"
EOF
: >"$work/anonymous.toml"
cat >"$work/revoked.toml" <<'EOF'
[auth.openapi.agentidp]
bearer = "${FUZZ_REVOKED_TOKEN}"
EOF
cat >"$work/read-only.toml" <<'EOF'
[auth.openapi.agentidp]
bearer = "${FUZZ_READER_TOKEN}"

[auth.openapi.clientSecretBasic]
username = "${FUZZ_READER_CLIENT_ID}"
password = "${FUZZ_READER_CLIENT_SECRET}"
EOF

# Hooks that keep the fuzzer's own agent usable and reach credential rotation and revocation:
# scripts/fuzz_hooks.py says how.
export SCHEMATHESIS_HOOKS="$repo/scripts/fuzz_hooks.py"

# Checks: every built-in one except
#   positive_data_acceptance — it expects a 2xx for every request the spec's schemas allow, but
#     the API rightly refuses some with 400 for rules a schema cannot state: `expiresAt` must be
#     in the future; `cursor` must be one the same query returned; a client authenticates with
#     HTTP Basic or with `client_id`/`client_secret` in the body, never both (the fuzzer sends
#     Basic and generates the body fields too); `to` must not be before `from`.
#   use_after_free — it expects a 404 from a resource after its DELETE, but DELETE on an agent
#     decommissions it and DELETE on a credential revokes it: both keep the record, which GET
#     and the lists go on answering (status `decommissioned`, `revoked`), as the spec says.
checks_excluded="positive_data_acceptance,use_after_free"

mkdir -p .tools/fuzz
rm -rf .tools/fuzz/report .tools/fuzz/*.log

# Four passes, on the same server, with the same seed and checks:
#   authenticated  every phase (examples in the spec, coverage of each schema's edges, random
#                  fuzzing, stateful sequences linked by the ids the API returns), with valid
#                  credentials: where the behaviour is;
#   anonymous      no credentials at all: every management endpoint's 401 and its
#                  `WWW-Authenticate: Bearer realm="agentidp"`, the OAuth endpoints' 401
#                  `invalid_client` (with made-up Basic credentials or none);
#   revoked        a revoked bearer token: the 401 with `error="invalid_token"`;
#   read-only      the token and credential of an agent with `agents:read` only: the 403
#                  `INSUFFICIENT_SCOPE` of every other endpoint and its `WWW-Authenticate`,
#                  and the OAuth endpoints for a client that is not the admin.
# Schemathesis sends no credentials of its own for an `oauth2` scheme (it only generates HTTP
# and API-key ones), so without the last three no 401 or 403 of the management API would be
# checked. They are shorter: only the authentication in front of the endpoints differs (the
# read-only agent is made before the authenticated pass, which may change it like any agent,
# hence it runs first).
#
# Each pass runs in .tools/fuzz, so that Schemathesis' cache (.schemathesis/) stays out of the
# work tree. One worker: the run is reproducible from its seed, as far as the ids and times the
# server makes allow (and Python 3.11's parser is not safe to call from several threads, which
# Schemathesis' coverage phase does with more workers). No example database, for the same
# reason.
status=0
summaries=()
total_cases=0
started=$SECONDS
run_pass() {
    local name="$1" phases="$2" examples="$3"
    shift 3
    step "schemathesis run docs/openapi.yaml, pass \"$name\" (phases $phases, max $examples examples per operation, seed $seed)"
    local log=".tools/fuzz/$name.log" pass_status
    set +e
    (
        cd .tools/fuzz
        "$repo/$venv/bin/schemathesis" --no-color --config-file "$work/$name.toml" run \
            "$repo/docs/openapi.yaml" \
            --url "$base_url" \
            --phases "$phases" \
            --checks all --exclude-checks "$checks_excluded" \
            --max-examples "$examples" --seed "$seed" \
            --workers 1 --generation-database none \
            --continue-on-failure "$@" \
            --report junit --report-dir "report/$name" \
            --request-timeout 30
    ) 2>&1 | tee "$log"
    pass_status=${PIPESTATUS[0]}
    set -e
    [[ "$pass_status" == 0 ]] || status=1
    local cases verdict
    cases="$(sed -n 's/^ *\([0-9]*\) generated.*/\1/p' "$log" | tail -n 1)"
    verdict="$(grep -E '^=+ .* in [0-9.]+s =+$' "$log" | tail -n 1 | sed -E 's/^=+ (.*) in [0-9.]+s =+$/\1/')"
    total_cases=$((total_cases + ${cases:-0}))
    summaries+=("$name: ${cases:-?} cases, ${verdict:-no verdict (exit $pass_status)}")
}
# In the two passes without valid credentials, Schemathesis' warnings only say what they are
# meant to do (every management request is refused): not shown.
run_pass read-only coverage,fuzzing "$aux_examples" --warnings off
run_pass authenticated examples,coverage,fuzzing,stateful "$max_examples"
run_pass anonymous coverage,fuzzing "$aux_examples" --warnings off
run_pass revoked coverage,fuzzing "$aux_examples" --warnings off
elapsed=$((SECONDS - started))

# The run only means something if the fuzzer's own credentials held to the end.
if ! curl -fsS -o /dev/null -H "Authorization: Bearer $token" "$base_url/api/v1/agents?limit=1"; then
    echo "fuzz-api: the bearer token no longer works; the run lost its credentials midway" >&2
    status=1
fi
if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "fuzz-api: agentidp-local exited during the run:" >&2
    tail -n 50 "$work/server.log" >&2
    status=1
fi

operations="$(sed -n 's/^ *Tested: *\([0-9]*\).*/\1/p' .tools/fuzz/authenticated.log | tail -n 1)"
result=passed
[[ "$status" == 0 ]] || result=FAILED
echo
passes=""
for summary in "${summaries[@]}"; do
    passes+="${passes:+; }$summary"
done
printf 'fuzz-api: %s: %s operations, %s test cases in %ss (seed %s; %s)\n' "$result" \
    "${operations:-?}" "$total_cases" "$elapsed" "$seed" "$passes"
exit "$status"
