#!/usr/bin/env bash
# Load benchmark: agentidp-local against panva's oidc-provider (bench/oidc-provider), side by
# side, with wrk on this machine's loopback. Prints a table of req/s, p50 and p99 per scenario and
# concurrency, and the AgentIdP / oidc-provider throughput ratio of this one run.
#
#   bench/load.sh                                   # everything, ~15 minutes on 2 cores
#   DURATION=5 ROUNDS=1 CONCURRENCY="8" bench/load.sh
#
# Scenarios (each at every concurrency in CONCURRENCY, the two servers alternating):
#   token-warm    POST /token, one client whose secret the server has already verified
#   token-resource  the same, with `resource` (RFC 8707) naming a registered resource: the token's
#                 aud is the resource and its scope `bench:call`, asked for and held by the agent
#                 (oidc-provider: the same resource, through its resourceIndicators feature)
#   token-many    POST /token, COLD_CLIENTS distinct clients in turn, each new to the server:
#                 AgentIdP is restarted before each of these runs, so every client's first
#                 request runs bcrypt (oidc-provider compares static secrets in plain text)
#   token-pkjwt   POST /token, one client authenticating with private_key_jwt (RFC 7523): an ES256
#                 assertion instead of a secret, on the warm client's agent (so the same token);
#                 oidc-provider: a static client with the same id and public key. Each assertion is
#                 accepted once (both servers refuse a jti seen before), so a pool of unique ones is
#                 signed (bench/sign_assertions.mjs) right before each run, one of it checked first
#                 (200, and on both servers 401 when replayed), and wrk's threads walk through the
#                 rest, none sent twice; a run that uses up its pool stops the script
#   token-dpop    token-warm with a DPoP proof (RFC 9449) in a `DPoP` header: an ES256 key of the
#                 bench's own (typ dpop+jwt, jwk, htm POST, htu the server's token endpoint as its
#                 metadata names it, iat, jti), so the token is DPoP-bound (token_type DPoP, cnf.jkt
#                 in the JWT on both servers; oidc-provider with its dPoP feature, no nonces on
#                 either). A proof is single use on both servers too, so as in token-pkjwt a pool
#                 is signed right before each run, its first proof checked (200 and a bound token,
#                 and refused when replayed on both), the rest each sent once. Proofs are fresh
#                 for AGENTIDP_DPOP_PROOF_MAX_AGE_SECONDS (default 60) either side of their iat
#                 on AgentIdP, 300 s on oidc-provider: iat is the signing time, or a few seconds
#                 ahead of it when the pool would not otherwise stay fresh to the run's end (both
#                 accept that); the script stops rather than start a run its proofs would not last
#   introspect    POST /token/introspect of a valid token, client_secret_basic
#   token-exchange  POST /token, grant token-exchange (RFC 8693): an actor agent, named in the warm
#                 agent's delegation policy, exchanges the warm agent's token for one of its own
#                 acting for it (AgentIdP only: no peer has it built in; read beside token-warm)
#   introspect-chain  introspect, of a token three actors deep (AgentIdP only; read beside
#                 introspect: the chain's token ids and agents join the one read of a plain token)
#   agents-list   GET /api/v1/agents?limit=20 (AgentIdP only; oidc-provider has no equivalent)
#   audit-query   GET /api/v1/audit?limit=50 (AgentIdP only)
#
# Needs: wrk, curl, jq (Debian: apt-get install -y wrk curl jq), python3, node >= 20 and npm, and a
# release build (cargo build --release --bin agentidp-local; built here if missing). oidc-provider
# is installed from bench/oidc-provider/package-lock.json with `npm ci` when node_modules is
# missing. AgentIdP is started by scripts/agentidp_local.py. token-pkjwt's key and assertions and
# token-dpop's key and proofs are made by bench/sign_assertions.mjs with node's own crypto (nothing
# more to install).
#
# Environment:
#   DURATION=10         seconds per measured run
#   ROUNDS=2            rounds per scenario and concurrency; the order of the two servers
#                       alternates between rounds (AgentIdP first in odd rounds)
#   CONCURRENCY="1 8 32"
#   SCENARIOS="token-warm token-resource token-many token-pkjwt token-dpop introspect agents-list audit-query"
#   COLD_CLIENTS=500    distinct credentials for token-many (created before the runs)
#   PKJWT_POOL=N        assertions signed for each token-pkjwt run (default: enough for 4 times the
#                       highest rate yet measured at that concurrency in token-warm or token-pkjwt,
#                       at least 6,000 a second of the run)
#   DPOP_POOL=N         proofs signed for each token-dpop run (default: as PKJWT_POOL's, from
#                       token-warm and token-dpop)
#   A_PORT=3900 O_PORT=3901
#   BCRYPT_FLOOR_MS=30  a token or introspection request that took at least this long inside
#                       AgentIdP is counted as one that may have run bcrypt (cost 10 verifies in
#                       ~55 ms here); the exact count of verifications comes from the log
#   RESULTS=FILE        also write the table there (default .tools/bench/results-DATE.md)
#   KEEP=1              keep the run's data directory and server logs
#   DATA_PARENT=DIR     where AgentIdP's data directory goes (default: under .tools/bench, on the
#                       repository's disk). DATA_PARENT=/dev/shm puts SQLite on tmpfs, where fsync
#                       costs nothing: an experiment that shows what durability costs, not a
#                       configuration to quote
#   SIGNING_ALG=RS256   the access tokens' algorithm on both servers: RS256, ES256 or EdDSA
#   NICE=0              niceness of both servers and wrk; as root, NICE=-10 keeps other work on a
#                       shared machine (builds, tests) from taking the cores mid-run
#
# The servers and wrk share the machine's cores; the output says how busy each was.
# AgentIdP runs with limits raised so a load run is not refused (printed below):
#   AGENTIDP_ORG_REQUESTS_PER_MINUTE, AGENTIDP_FREE_MONTHLY_TOKEN_REQUESTS, AGENTIDP_FREE_MAX_AGENTS.
# Everything else, bcrypt cost 10 included, is the default.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-"1 8 32"}
SCENARIOS=${SCENARIOS:-"token-warm token-resource token-many token-pkjwt token-dpop introspect agents-list audit-query"}
COLD_CLIENTS=${COLD_CLIENTS:-500}
PKJWT_POOL=${PKJWT_POOL:-}
DPOP_POOL=${DPOP_POOL:-}
A_PORT=${A_PORT:-3900}
O_PORT=${O_PORT:-3901}
BCRYPT_FLOOR_MS=${BCRYPT_FLOOR_MS:-30}
BIN=${AGENTIDP_BIN:-$ROOT/target/release/agentidp-local}
NICE=${NICE:-0}
OIDC_DIR=$ROOT/bench/oidc-provider
mkdir -p "$ROOT/.tools/bench"
RESULTS=${RESULTS:-$ROOT/.tools/bench/results-$(date -u +%Y%m%dT%H%M%SZ).md}

# The limits a load run would otherwise hit. Printed with the results.
SIGNING_ALG=${SIGNING_ALG:-RS256}
BENCH_ENV=(
  AGENTIDP_SIGNING_ALG="$SIGNING_ALG"
  AGENTIDP_ORG_REQUESTS_PER_MINUTE=10000000
  AGENTIDP_FREE_MONTHLY_TOKEN_REQUESTS=1000000000000
  AGENTIDP_FREE_MAX_AGENTS=100000
)

die() { echo "load.sh: $*" >&2; exit 1; }

for tool in wrk curl jq python3 node npm; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install -y wrk curl jq python3; node >= 20 with npm)"
done
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
  || die "node >= 20 is needed for oidc-provider 8.8.1"
PKJWT=0
[[ " $SCENARIOS " == *" token-pkjwt "* ]] && PKJWT=1
# An assertion lives 300 s (AgentIdP's default maximum), counted from the signing of its pool.
if ((PKJWT && DURATION > 240)); then
  die "token-pkjwt's assertions expire 300 s after they are signed: DURATION must be at most 240"
fi
[[ -z $PKJWT_POOL || $PKJWT_POOL =~ ^[1-9][0-9]*$ ]] || die "PKJWT_POOL must be a positive integer"
DPOP=0
[[ " $SCENARIOS " == *" token-dpop "* ]] && DPOP=1
[[ -z $DPOP_POOL || $DPOP_POOL =~ ^[1-9][0-9]*$ ]] || die "DPOP_POOL must be a positive integer"
# How far a DPoP proof's iat may be from the server's time, either way: AgentIdP's setting (the
# caller's environment reaches it) and oidc-provider's fixed 300 s; the smaller one binds.
DPOP_MAX_AGE=${AGENTIDP_DPOP_PROOF_MAX_AGE_SECONDS:-60}
[[ $DPOP_MAX_AGE =~ ^[1-9][0-9]*$ ]] || die "AGENTIDP_DPOP_PROOF_MAX_AGE_SECONDS must be a positive integer"
DPOP_WINDOW=$((DPOP_MAX_AGE < 300 ? DPOP_MAX_AGE : 300))
# A pool's proofs share one iat, so the whole run has to fit in the window on both sides of it.
if ((DPOP && DURATION > 2 * DPOP_WINDOW - 20)); then
  die "token-dpop's proofs are accepted within ${DPOP_WINDOW}s of their iat either way: DURATION must be at most" \
    "$((2 * DPOP_WINDOW - 20)) (or raise AGENTIDP_DPOP_PROOF_MAX_AGE_SECONDS, up to 300 for oidc-provider)"
fi
if [[ ! -x $BIN ]]; then
  echo "building $BIN (release, LTO: several minutes on 2 cores)" >&2
  (cd "$ROOT" && cargo build --release --bin agentidp-local) || die "the release build failed"
fi
# The revision measured, and whether the binary is older than the code it should be built from.
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
git -C "$ROOT" diff --quiet HEAD -- shared local 2>/dev/null || REV="$REV + uncommitted changes"
BUILT=$(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ)
if [[ -n $(find "$ROOT/shared" "$ROOT/local/src" -newer "$BIN" -name '*.rs' -print -quit) ]]; then
  echo "warning: $BIN is older than sources in shared/ or local/src; rebuild to measure them" >&2
  BUILT="$BUILT (older than the sources)"
fi
if [[ ! -d $OIDC_DIR/node_modules/oidc-provider ]]; then
  (cd "$OIDC_DIR" && npm ci --no-audit --no-fund >/dev/null) || die "npm ci in $OIDC_DIR failed"
fi
for port in "$A_PORT" "$O_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use; set A_PORT / O_PORT"
  fi
done

WORK=$(mktemp -d "$ROOT/.tools/bench/run.XXXXXX")
if [[ -n ${DATA_PARENT:-} ]]; then
  DATA=$(mktemp -d "$DATA_PARENT/agentidp-bench.XXXXXX")
else
  DATA=$WORK/agentidp
fi
A_PID=""    # AgentIdP's, for its CPU time
A_RUNNER="" # scripts/agentidp_local.py's, in front of AgentIdP: killing it stops AgentIdP
O_PID=""
cleanup() {
  for pid in $A_RUNNER $O_PID; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $A_RUNNER $O_PID; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ ${KEEP:-0} == 1 ]]; then
    echo "kept $WORK" >&2
  else
    rm -rf "$WORK" "$DATA"
  fi
}
trap cleanup EXIT

wait_port() {
  local port=$1 i
  for i in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  die "nothing listens on $port"
}

A=http://127.0.0.1:$A_PORT
O=http://127.0.0.1:$O_PORT

start_agentidp() { # sets A_PID, A_RUNNER, and ADMIN_ID and ADMIN_SECRET: the bootstrap credential
  echo "=== agentidp started" >>"$WORK/agentidp.log"
  local out
  exec {out}< <(exec env "${BENCH_ENV[@]}" NO_COLOR=1 nice -n "$NICE" python3 "$ROOT/scripts/agentidp_local.py" \
    --binary "$BIN" --data-dir "$DATA" --port "$A_PORT" --stdout "$WORK/agentidp.out" --log "$WORK/agentidp.log")
  A_RUNNER=$!
  read -r _ A_PID ADMIN_ID ADMIN_SECRET <&"$out" || die "agentidp-local did not start"
  exec {out}<&-
}

stop_agentidp() {
  kill "$A_RUNNER"
  wait "$A_RUNNER" 2>/dev/null || true
  A_RUNNER=""
  A_PID=""
}

start_oidc() {
  local pkjwt=()
  ((PKJWT)) && pkjwt=(--pkjwt-client "$WORK/pkjwt-client.json")
  nice -n "$NICE" node "$OIDC_DIR/server.mjs" --port "$O_PORT" --clients "$WORK/clients.txt" --alg "$SIGNING_ALG" \
    "${pkjwt[@]}" >>"$WORK/oidc.out" 2>>"$WORK/oidc.log" &
  O_PID=$!
  wait_port "$O_PORT"
}

# --- The machine ---------------------------------------------------------------------------
CPU_MODEL=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
NPROC=$(nproc)
# Latency of one synchronous 4 KiB write where AgentIdP keeps its database: the floor of a commit.
mkdir -p "$DATA"
# The file is written first, then overwritten in place, as SQLite's WAL is once it has wrapped.
dd if=/dev/zero of="$DATA/dsync.test" bs=4k count=200 2>/dev/null
sync
DSYNC_S=$( { dd if=/dev/zero of="$DATA/dsync.test" bs=4k count=200 oflag=dsync conv=notrunc 2>&1 >/dev/null; } \
  | awk '/copied/ {print $(NF-3)}')
rm -f "$DATA/dsync.test"
FSYNC_MS=$(awk -v s="$DSYNC_S" 'BEGIN {printf "%.2f", s * 1000 / 200}')

# --- AgentIdP setup ------------------------------------------------------------------------
start_agentidp

token_for() { # client_id secret -> access token from AgentIdP
  curl -sf -u "$1:$2" -d grant_type=client_credentials "$A/api/v1/token" | jq -r .access_token
}
ADMIN_TOKEN=$(token_for "$ADMIN_ID" "$ADMIN_SECRET")
[[ -n $ADMIN_TOKEN && $ADMIN_TOKEN != null ]] || die "no admin token from AgentIdP"

api() { # METHOD PATH [JSON]
  curl -sf -X "$1" "$A$2" -H "Authorization: Bearer $ADMIN_TOKEN" \
    -H 'Content-Type: application/json' ${3:+-d "$3"}
}
new_agent() { api POST /api/v1/agents "{\"name\":\"$1\",\"scopes\":[\"agents:read\"]}" | jq -r .agentId; }
new_credential() { api POST "/api/v1/agents/$1/credentials" '{}' | jq -r '"\(.clientId):\(.clientSecret)"'; }

# The warm agent also holds a scope of the benchmark's resource, so its resource tokens carry one.
RESOURCE=https://bench.example.com/mcp
RESOURCE_FORM="resource=https%3A%2F%2Fbench.example.com%2Fmcp&scope=bench%3Acall"
api POST /api/v1/resources "{\"identifier\":\"$RESOURCE\",\"name\":\"bench\",\"scopes\":[\"bench:call\"]}" \
  | jq -e --arg r "$RESOURCE" '.identifier == $r' >/dev/null || die "registering the resource failed"
WARM_AGENT=$(api POST /api/v1/agents '{"name":"bench-warm","scopes":["agents:read","bench:call"]}' | jq -r .agentId)
WARM=$(new_credential "$WARM_AGENT")
echo "$WARM" >"$WORK/clients.txt"
# token-pkjwt's client: a private_key_jwt credential of the same agent, an ES256 key made here.
SIGN=(node "$ROOT/bench/sign_assertions.mjs")
if ((PKJWT)); then
  PKJWT_KEY=$WORK/pkjwt-key.json
  PKJWT_PUBLIC=$("${SIGN[@]}" keygen --key "$PKJWT_KEY") || die "making the private_key_jwt key failed"
  PKJWT_ID=$(api POST "/api/v1/agents/$WARM_AGENT/credentials" \
    "$(jq -cn --argjson jwk "$PKJWT_PUBLIC" '{type: "private_key_jwt", jwks: {keys: [$jwk]}}')" | jq -r .clientId)
  [[ -n $PKJWT_ID && $PKJWT_ID != null ]] || die "creating the private_key_jwt credential failed"
  jq -n --arg id "$PKJWT_ID" --argjson jwk "$PKJWT_PUBLIC" '{client_id: $id, jwks: {keys: [$jwk]}}' \
    >"$WORK/pkjwt-client.json"
fi
echo "creating $COLD_CLIENTS credentials for token-many ..." >&2
: >"$WORK/cold.txt"
made=0
agent_no=0
while ((made < COLD_CLIENTS)); do
  agent_no=$((agent_no + 1))
  agent=$(new_agent "bench-cold-$agent_no")
  # Ten active credentials per agent is the free plan's limit; made in parallel (bcrypt each).
  batch=$((COLD_CLIENTS - made < 10 ? COLD_CLIENTS - made : 10))
  pids=()
  for i in $(seq 1 "$batch"); do
    new_credential "$agent" >"$WORK/cred.$i" &
    pids+=($!)
  done
  wait "${pids[@]}"
  for i in $(seq 1 "$batch"); do cat "$WORK/cred.$i" >>"$WORK/cold.txt"; done
  made=$((made + batch))
done
rm -f "$WORK"/cred.*
grep -c ':sk_live_' "$WORK/cold.txt" | grep -qx "$COLD_CLIENTS" || die "credential creation failed"
cat "$WORK/cold.txt" >>"$WORK/clients.txt"

basic() { printf 'Basic %s' "$(printf '%s' "$1" | base64 -w0)"; }
WARM_BASIC=$(basic "$WARM")
while read -r line; do basic "$line"; echo; done <"$WORK/cold.txt" >"$WORK/cold-basic.txt"

A_TOKEN=$(token_for "${WARM%%:*}" "${WARM#*:}")
[[ -n $A_TOKEN && $A_TOKEN != null ]] || die "no token for the warm client from AgentIdP"
# token-exchange and introspect-chain: three actor agents the warm agent's policy names.
ACTORS=()
for i in 1 2 3; do
  actor=$(api POST /api/v1/agents "{\"name\":\"bench-actor-$i\"}" | jq -r .agentId)
  ACTORS+=("$actor:$(new_credential "$actor")")
done
api PATCH "/api/v1/agents/$WARM_AGENT" "$(jq -cn '{delegation: {mayAct: $ARGS.positional}}' \
  --args "${ACTORS[0]%%:*}" "${ACTORS[1]%%:*}" "${ACTORS[2]%%:*}")" >/dev/null || die "setting the delegation policy failed"
EXCHANGE_FORM="grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token"
exchange_as() { # ACTOR_INDEX SUBJECT_TOKEN -> the exchanged token
  local actor=${ACTORS[$1]#*:}
  curl -sf -u "$actor" -d "$EXCHANGE_FORM" -d "subject_token=$2" "$A/api/v1/token" | jq -r .access_token
}
CHAIN_TOKEN=$A_TOKEN
for i in 0 1 2; do CHAIN_TOKEN=$(exchange_as "$i" "$CHAIN_TOKEN"); done
claims_of_chain=$(printf '%s' "$CHAIN_TOKEN" | jq -R 'split(".")[1] | gsub("-"; "+") | gsub("_"; "/") | @base64d | fromjson')
jq -e '.act.act.act.sub != null' <<<"$claims_of_chain" >/dev/null || die "the chain token is not three actors deep"
ACTOR_BASIC=$(basic "${ACTORS[0]#*:}")
claims() { jq -R 'split(".")[1] | gsub("-"; "+") | gsub("_"; "/") | @base64d | fromjson'; }
curl -sf -u "$WARM" -d grant_type=client_credentials -d "$RESOURCE_FORM" "$A/api/v1/token" | jq -r .access_token \
  | claims | jq -e --arg r "$RESOURCE" '.aud == $r and .scope == "bench:call"' >/dev/null \
  || die "AgentIdP's token for the resource is not audienced to it"

# --- oidc-provider setup -------------------------------------------------------------------
start_oidc
O_TOKEN=$(curl -sf -u "$WARM" -d grant_type=client_credentials -d resource=urn:agentidp-bench:opaque \
  -d scope=agents:read "$O/token" | jq -r .access_token)
[[ -n $O_TOKEN && $O_TOKEN != null ]] || die "no token from oidc-provider"
curl -sf -u "$WARM" -d grant_type=client_credentials "$O/token" | jq -e '.access_token' >/dev/null \
  || die "oidc-provider issues no JWT access token"
curl -sf -u "$WARM" -d grant_type=client_credentials -d "$RESOURCE_FORM" "$O/token" | jq -r .access_token \
  | claims | jq -e --arg r "$RESOURCE" '.aud == $r and .scope == "bench:call"' >/dev/null \
  || die "oidc-provider's token for the resource is not audienced to it"
curl -sf -u "$WARM" -d "token=$O_TOKEN" "$O/token/introspection" | jq -e '.active == true' >/dev/null \
  || die "oidc-provider does not introspect its token"
curl -sf -u "$WARM" -d "token=$A_TOKEN" "$A/api/v1/token/introspect" | jq -e '.active == true' >/dev/null \
  || die "AgentIdP does not introspect its token"
# token-dpop: the bench's DPoP key (the warm client's, on both servers), and each server's token
# endpoint as its metadata names it: the htu its proofs must carry. It must be the URL wrk calls.
if ((DPOP)); then
  DPOP_KEY=$WORK/dpop-key.json
  "${SIGN[@]}" keygen --key "$DPOP_KEY" >/dev/null || die "making the DPoP key failed"
  A_HTU=$(curl -sf "$A/.well-known/oauth-authorization-server" | jq -r .token_endpoint)
  O_HTU=$(curl -sf "$O/.well-known/openid-configuration" | jq -r .token_endpoint)
  [[ $A_HTU == "$A/api/v1/token" ]] || die "AgentIdP's metadata names $A_HTU as its token endpoint, not $A/api/v1/token"
  [[ $O_HTU == "$O/token" ]] || die "oidc-provider's metadata names $O_HTU as its token endpoint, not $O/token"
  curl -sf "$A/.well-known/oauth-authorization-server" \
    | jq -e '.dpop_signing_alg_values_supported | index("ES256")' >/dev/null \
    || die "AgentIdP does not announce DPoP with ES256"
  curl -sf "$O/.well-known/openid-configuration" | jq -e '.dpop_signing_alg_values_supported | index("ES256")' \
    >/dev/null || die "oidc-provider does not announce DPoP with ES256"
fi

# --- wrk scripts ---------------------------------------------------------------------------
DONE_LUA='
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end'

static_lua() { # FILE METHOD BODY AUTHORIZATION
  cat >"$1" <<EOF
wrk.method = "$2"
wrk.body = "$3"
wrk.headers["Authorization"] = "$4"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
$DONE_LUA
EOF
}

many_lua() { # FILE THREADS: each wrk thread walks its own share of the distinct clients
  cat >"$1" <<EOF
local creds = {}
for line in io.lines("$WORK/cold-basic.txt") do creds[#creds + 1] = line end
local threads, n = $2, 0
local counter = 0
setup = function(thread) thread:set("tid", n); n = n + 1 end
request = function()
  local i = ((tid or 0) + counter * threads) % #creds + 1
  counter = counter + 1
  return wrk.format("POST", nil, {
    ["Authorization"] = creds[i],
    ["Content-Type"] = "application/x-www-form-urlencoded",
  }, "grant_type=client_credentials")
end
$DONE_LUA
EOF
}

# token-pkjwt and token-dpop: each wrk thread sends its own share of the run's pool of single-use
# JWTs (every THREADS-th line), each once. Line 1 is the one load.sh checked with curl and
# replayed: never sent here. A thread that has sent its whole share stops rather than send one
# again, and done() reports it. PRELUDE is Lua run once per thread (the request's constant parts);
# SEND, Lua returning the request that carries `jwt`; SPENT, the request a thread returns as it
# stops (wrk does not send it, and it could not succeed).
PKJWT_FORM="grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
pool_lua() { # FILE THREADS POOL PRELUDE SEND SPENT
  cat >"$1" <<EOF
local threads, n, all = $2, 0, {}
setup = function(thread)
  thread:set("tid", n)
  n = n + 1
  all[#all + 1] = thread
end
local pool = {}
init = function(args)
  local i = 0
  for line in io.lines("$3") do
    if i > 0 and (i - 1) % threads == tid then pool[#pool + 1] = line end
    i = i + 1
  end
  share, used, exhausted = #pool, 0, 0
end
$4
request = function()
  if used >= share then
    exhausted = exhausted + 1
    wrk.thread:stop()
    $6
  end
  used = used + 1
  $5
end
$DONE_LUA
local write_result = done
done = function(summary, latency, requests)
  local u, s, e = 0, 0, 0
  for _, t in ipairs(all) do
    u, s, e = u + t:get("used"), s + t:get("share"), e + t:get("exhausted")
  end
  io.write(string.format("POOL %d %d %d\n", u, s, e))
  write_result(summary, latency, requests)
end
EOF
}
pkjwt_lua() { # FILE THREADS
  pool_lua "$1" "$2" "$WORK/pkjwt-pool.txt" \
    "local headers = { [\"Content-Type\"] = \"application/x-www-form-urlencoded\" }
local form = \"$PKJWT_FORM&client_assertion=\"" \
    'return wrk.format("POST", nil, headers, form .. pool[used])' \
    'return wrk.format("POST", nil, headers, "grant_type=client_credentials")'
}
# token-dpop: token-warm's request (client_secret_basic), with the proof in a DPoP header. Spent,
# a thread's last request carries no proof: it is not sent, but it could not get a Bearer token
# counted as a DPoP one either, as its DPoP header is no proof.
dpop_lua() { # FILE THREADS
  pool_lua "$1" "$2" "$WORK/dpop-pool.txt" \
    "local headers = {
  [\"Authorization\"] = \"$WARM_BASIC\",
  [\"Content-Type\"] = \"application/x-www-form-urlencoded\",
}" \
    'headers["DPoP"] = pool[used]
  return wrk.format("POST", nil, headers, "grant_type=client_credentials")' \
    'headers["DPoP"] = "spent"
    return wrk.format("POST", nil, headers, "grant_type=client_credentials")'
}

pkjwt_token_url() { # SERVER
  if [[ $1 == a ]]; then echo "$A/api/v1/token"; else echo "$O/token"; fi
}

# How many single-use JWTs a run of SCENARIO at concurrency C for SECONDS may send: 4 times the
# highest rate yet measured at C in token-warm or SCENARIO, at least 6,000 a second, and the probe.
pool_size() { # SCENARIO C SECONDS
  awk -v s="$1" -v c="$2" -v secs="$3" '
    ($1 == "token-warm" || $1 == s) && $2 == c && $5 > max { max = $5 }
    END { n = 4 * max * secs; if (n < 6000 * secs) n = 6000 * secs; printf "%d\n", n + 1 }' "$ROWS"
}

# Signs the pool of assertions for one run on SERVER, audienced to its token endpoint and sized
# for SECONDS at concurrency C, then checks its first line: a token (200), and 401 when replayed.
pkjwt_pool() { # SERVER C SECONDS
  local server=$1 url count status replay
  url=$(pkjwt_token_url "$server")
  count=${PKJWT_POOL:-$(pool_size token-pkjwt "$2" "$3")}
  rm -f "$WORK/pkjwt-pool.txt"
  "${SIGN[@]}" sign --key "$PKJWT_KEY" --client "$PKJWT_ID" --aud "$url" --count "$count" \
    --out "$WORK/pkjwt-pool.txt" || die "signing $count assertions failed"
  [[ $(wc -l <"$WORK/pkjwt-pool.txt") == "$count" ]] || die "the pool does not hold $count assertions"
  local probe
  probe=$(head -n 1 "$WORK/pkjwt-pool.txt")
  status=$(curl -s -o "$WORK/probe.json" -w '%{http_code}' -d "$PKJWT_FORM&client_assertion=$probe" "$url")
  [[ $status == 200 ]] && jq -e '.access_token | type == "string" and length > 0' "$WORK/probe.json" >/dev/null \
    || die "$url refused a fresh assertion: $status $(cat "$WORK/probe.json")"
  status=$(curl -s -o "$WORK/probe.json" -w '%{http_code}' -d "$PKJWT_FORM&client_assertion=$probe" "$url")
  replay="$status $(jq -r .error "$WORK/probe.json" 2>/dev/null)"
  [[ $replay == "401 invalid_client" ]] \
    || die "$url did not refuse a replayed assertion as 401 invalid_client: $status $(cat "$WORK/probe.json")"
  echo "token-pkjwt $server c=$2: $count assertions signed for ${3}s; the first gave 200, replayed $replay" >&2
}

# Signs the pool of DPoP proofs for one run on SERVER (htu: its token endpoint), sized for SECONDS
# at concurrency C, then checks its first line: 200, token_type DPoP and an access token (a JWT on
# both servers) whose cnf.jkt is the key's thumbprint; and refused when replayed. The pool shares
# one iat: the signing time, or ahead of it when the run would otherwise end more than the window
# after it (by the last pool's signing rate), so that the whole run falls within the window either
# side of iat; checked once the pool is signed and probed, before the run starts.
DPOP_SIGN_RATE=4000 # proofs a second, a guess until a pool has been signed here
dpop_pool() { # SERVER C SECONDS
  local server=$1 url htu count lead started signed summary iat jkt status replay expected now
  url=$(pkjwt_token_url "$server")
  htu=$([[ $server == a ]] && echo "$A_HTU" || echo "$O_HTU")
  count=${DPOP_POOL:-$(pool_size token-dpop "$2" "$3")}
  # Seconds from the signing's start to the run's end, the signing overestimated by half, and a
  # margin for the probes, wrk's start and its last responses; beyond the window, the lead.
  lead=$(awk -v n="$count" -v rate="$DPOP_SIGN_RATE" -v secs="$3" -v w="$DPOP_WINDOW" 'BEGIN {
    l = 1.5 * n / rate + secs + 8 - w; if (l > w - 5) l = w - 5; printf "%d\n", (l > 0 ? l + 0.999 : 0) }')
  rm -f "$WORK/dpop-pool.txt"
  started=$(date +%s.%N)
  summary=$("${SIGN[@]}" dpop --key "$DPOP_KEY" --htu "$htu" --count "$count" --iat-lead "$lead" \
    --out "$WORK/dpop-pool.txt") || die "signing $count DPoP proofs failed"
  signed=$(date +%s.%N)
  DPOP_SIGN_RATE=$(awk -v n="$count" -v a="$started" -v b="$signed" 'BEGIN { printf "%d\n", n / (b - a + 0.001) }')
  read -r iat jkt < <(jq -r '"\(.iat) \(.jkt)"' <<<"$summary")
  [[ $(wc -l <"$WORK/dpop-pool.txt") == "$count" ]] || die "the pool does not hold $count DPoP proofs"
  local probe
  probe=$(head -n 1 "$WORK/dpop-pool.txt")
  status=$(curl -s -o "$WORK/probe.json" -w '%{http_code}' -H "Authorization: $WARM_BASIC" -H "DPoP: $probe" \
    -d grant_type=client_credentials "$url")
  [[ $status == 200 ]] && jq -e '.token_type == "DPoP" and (.access_token | type == "string")' "$WORK/probe.json" \
    >/dev/null || die "$url refused a fresh DPoP proof: $status $(cat "$WORK/probe.json"); the proof: $probe"
  jq -r .access_token "$WORK/probe.json" | claims | jq -e --arg jkt "$jkt" '.cnf.jkt == $jkt' >/dev/null \
    || die "$url issued a token not bound to the proof's key (cnf.jkt $jkt): $(cat "$WORK/probe.json")"
  status=$(curl -s -o "$WORK/probe.json" -w '%{http_code}' -H "Authorization: $WARM_BASIC" -H "DPoP: $probe" \
    -d grant_type=client_credentials "$url")
  replay="$status $(jq -r .error "$WORK/probe.json" 2>/dev/null)"
  # oidc-provider answers a replay as a grant error: "DPoP proof JWT Replay detected".
  expected=$([[ $server == a ]] && echo "400 invalid_dpop_proof" || echo "400 invalid_grant")
  [[ $replay == "$expected" ]] \
    || die "$url did not refuse a replayed DPoP proof as $expected: $status $(cat "$WORK/probe.json")"
  now=$(date +%s)
  if ((iat - now > DPOP_WINDOW - 2 || now + $3 + 5 > iat + DPOP_WINDOW)); then
    die "token-dpop $server c=$2: proofs of iat $iat, signed in $(awk -v a="$started" -v b="$signed" \
      'BEGIN { printf "%.1f", b - a }')s, would not stay within ${DPOP_WINDOW}s of the clock (now $now)" \
      "for a ${3}s run: lower DURATION or DPOP_POOL, or raise AGENTIDP_DPOP_PROOF_MAX_AGE_SECONDS (at most 300 helps)"
  fi
  echo "token-dpop $server c=$2: $count proofs signed for ${3}s (iat now$( ((lead)) && echo " + ${lead}s"))," \
    "the first gave 200 and a DPoP token, replayed $replay" >&2
}

static_lua "$WORK/a-token.lua" POST "grant_type=client_credentials" "$WARM_BASIC"
static_lua "$WORK/o-token.lua" POST "grant_type=client_credentials" "$WARM_BASIC"
static_lua "$WORK/resource-token.lua" POST "grant_type=client_credentials&$RESOURCE_FORM" "$WARM_BASIC"
static_lua "$WORK/a-introspect.lua" POST "token=$A_TOKEN" "$WARM_BASIC"
static_lua "$WORK/o-introspect.lua" POST "token=$O_TOKEN" "$WARM_BASIC"
static_lua "$WORK/a-get.lua" GET "" "Bearer $ADMIN_TOKEN"
static_lua "$WORK/exchange.lua" POST "$EXCHANGE_FORM&subject_token=$A_TOKEN" "$ACTOR_BASIC"
static_lua "$WORK/a-introspect-chain.lua" POST "token=$CHAIN_TOKEN" "$WARM_BASIC"

# --- measuring -----------------------------------------------------------------------------
cpu_ticks() { # PID -> utime + stime of the process, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
machine_busy() { # -> busy and total jiffies of all cores
  awk '/^cpu / {busy = $2 + $3 + $4 + $7 + $8; total = busy + $5 + $6; print busy, total}' /proc/stat
}
TICKS=$(getconf CLK_TCK)

# The last running total of bcrypt verifications that the current server process logged within
# the first LINES lines of its log (0 when it has logged none since it started).
verifications_logged() { # LINES
  head -n "$1" "$WORK/agentidp.log" | awk '
    /^=== agentidp started/ { n = 0 }
    match($0, /bcrypt_verifications=[0-9]+/) { n = substr($0, RSTART + 21, RLENGTH - 21) }
    END { print n + 0 }'
}

# One measured run. Prints: rps p50_ms p99_ms errors server_cores machine_cores cpu_ms_per_req
# slow_requests wrk_cores bcrypt_verifications requests
run() { # SERVER(a|o) URL LUA CONCURRENCY SCENARIO
  local server=$1 url=$2 lua=$3 c=$4 scenario=$5 pid threads out before after log_from line
  pid=$([[ $server == a ]] && echo "$A_PID" || echo "$O_PID")
  threads=$((c < NPROC ? c : NPROC))
  log_from=$(wc -l <"$WORK/agentidp.log")
  before=$(cpu_ticks "$pid")
  read -r busy0 total0 < <(machine_busy)
  times >"$WORK/times.0" # this shell's children's CPU so far: wrk's share is the difference
  out=$(nice -n "$NICE" wrk -t "$threads" -c "$c" -d "${DURATION}s" --timeout 10s -s "$lua" "$url" 2>&1) \
    || die "wrk failed: $out"
  times >"$WORK/times.1"
  read -r busy1 total1 < <(machine_busy)
  local wrk_s
  wrk_s=$(cat "$WORK/times.0" "$WORK/times.1" | awk '
    function secs(t) { split(t, p, "m"); sub("s", "", p[2]); return p[1] * 60 + p[2] }
    NR == 2 { before = secs($1) + secs($2) } NR == 4 { after = secs($1) + secs($2) }
    END { printf "%.3f", after - before }')
  after=$(cpu_ticks "$pid")
  line=$(grep '^RESULT' <<<"$out") || die "wrk printed no result: $out"
  if grep -q '^POOL' <<<"$out"; then
    local used share exhausted
    read -r _ used share exhausted < <(grep '^POOL' <<<"$out")
    ((exhausted == 0)) || die "$scenario on $server at c=$c ran out of its pool: $used of $share sent" \
      "and $exhausted more asked for; none is sent twice, so the run is void." \
      "Set $([[ $scenario == token-dpop ]] && echo DPOP_POOL || echo PKJWT_POOL) higher."
    echo "$scenario $server $c $used $share" >>"$WORK/pool-used.txt"
  fi
  local bcrypt=- slow=-
  if [[ $server == a ]]; then
    # Exact: the server's running total of bcrypt verifications, logged with every request.
    bcrypt=$(($(verifications_logged "$(wc -l <"$WORK/agentidp.log")") - $(verifications_logged "$log_from")))
    # Requests that took long enough inside the server to have run bcrypt (queueing behind other
    # requests counts too): how many clients felt a verification.
    slow=$(tail -n "+$((log_from + 1))" "$WORK/agentidp.log" | sed 's/\x1b\[[0-9;]*m//g' \
      | grep -E 'path=/api/v1/token(/introspect)?[}: ]' | grep -o 'elapsed_ms=[0-9]*' \
      | awk -F= -v floor="$BCRYPT_FLOOR_MS" '$2 >= floor {n++} END {print n + 0}')
  fi
  awk -v r="$line" -v cpu=$((after - before)) -v tck="$TICKS" -v nproc="$NPROC" -v wrk="$wrk_s" \
    -v busy=$((busy1 - busy0)) -v total=$((total1 - total0)) -v bcrypt="$bcrypt" -v slow="$slow" 'BEGIN {
      split(r, f, " ")
      requests = f[2]; secs = f[3] / 1e6
      printf "%.1f %.2f %.2f %d %.2f %.2f %.2f %s %.2f %s %d\n", requests / secs, f[4] / 1000, f[5] / 1000,
        f[6] + f[7], cpu / tck / secs, busy / total * nproc, requests ? cpu / tck * 1000 / requests : 0,
        slow, wrk / secs, bcrypt, requests
    }'
}

ROWS=$WORK/rows.txt
: >"$ROWS"
scenario_url() { # SCENARIO SERVER -> url and lua, or nothing when the server has no such endpoint
  case "$1/$2" in
    token-warm/a) echo "$A/api/v1/token $WORK/a-token.lua" ;;
    token-warm/o) echo "$O/token $WORK/o-token.lua" ;;
    token-resource/a) echo "$A/api/v1/token $WORK/resource-token.lua" ;;
    token-resource/o) echo "$O/token $WORK/resource-token.lua" ;;
    token-many/a) echo "$A/api/v1/token $WORK/many.lua" ;;
    token-many/o) echo "$O/token $WORK/many.lua" ;;
    token-pkjwt/a) echo "$A/api/v1/token $WORK/pkjwt.lua" ;;
    token-pkjwt/o) echo "$O/token $WORK/pkjwt.lua" ;;
    token-dpop/a) echo "$A/api/v1/token $WORK/dpop.lua" ;;
    token-dpop/o) echo "$O/token $WORK/dpop.lua" ;;
    introspect/a) echo "$A/api/v1/token/introspect $WORK/a-introspect.lua" ;;
    introspect/o) echo "$O/token/introspection $WORK/o-introspect.lua" ;;
    token-exchange/a) echo "$A/api/v1/token $WORK/exchange.lua" ;;
    introspect-chain/a) echo "$A/api/v1/token/introspect $WORK/a-introspect-chain.lua" ;;
    agents-list/a) echo "$A/api/v1/agents?limit=20 $WORK/a-get.lua" ;;
    audit-query/a) echo "$A/api/v1/audit?limit=50 $WORK/a-get.lua" ;;
  esac
}

# A short unmeasured run per scenario and server first: JIT, caches, connection pools.
warm_up() { # SCENARIO
  local server spec
  for server in a o; do
    spec=$(scenario_url "$1" "$server")
    [[ -n $spec ]] || continue
    [[ $1 == token-many ]] && continue
    if [[ $1 == token-pkjwt || $1 == token-dpop ]]; then
      # A pool of its own; and the warm-up is a first check that the pools last.
      local out kind=${1#token-}
      "${kind}_lua" "$WORK/$kind.lua" 2
      "${kind}_pool" "$server" 8 2
      out=$(nice -n "$NICE" wrk -t 2 -c 8 -d 2s -s "${spec#* }" "${spec%% *}" 2>&1) || true
      grep -q '^POOL [0-9]* [0-9]* 0$' <<<"$out" || die "$1's warm-up on $server: $out"
      rm -f "$WORK/$kind-pool.txt"
      continue
    fi
    nice -n "$NICE" wrk -t 2 -c 8 -d 2s -s "${spec#* }" "${spec%% *}" >/dev/null 2>&1 || true
  done
}

echo "measuring: scenarios [$SCENARIOS], concurrency [$CONCURRENCY], ${DURATION}s x $ROUNDS rounds" >&2
for scenario in $SCENARIOS; do
  warm_up "$scenario"
  for c in $CONCURRENCY; do
    [[ $scenario == token-many ]] && many_lua "$WORK/many.lua" $((c < NPROC ? c : NPROC))
    [[ $scenario == token-pkjwt ]] && pkjwt_lua "$WORK/pkjwt.lua" $((c < NPROC ? c : NPROC))
    [[ $scenario == token-dpop ]] && dpop_lua "$WORK/dpop.lua" $((c < NPROC ? c : NPROC))
    for round in $(seq 1 "$ROUNDS"); do
      order="a o"
      ((round % 2 == 0)) && order="o a"
      for server in $order; do
        spec=$(scenario_url "$scenario" "$server")
        [[ -n $spec ]] || continue
        if [[ $scenario == token-many && $server == a ]]; then
          # A fresh instance: no client's secret has been verified yet.
          stop_agentidp
          start_agentidp
        fi
        if [[ $scenario == token-pkjwt ]]; then
          pkjwt_pool "$server" "$c" "$DURATION" # right before the run: fresh, unused, unexpired
        fi
        if [[ $scenario == token-dpop ]]; then
          dpop_pool "$server" "$c" "$DURATION" # likewise
        fi
        result=$(run "$server" "${spec%% *}" "${spec#* }" "$c" "$scenario")
        rm -f "$WORK/pkjwt-pool.txt" "$WORK/dpop-pool.txt"
        echo "$scenario $c $round $server $result" | tee -a "$ROWS" >&2
      done
    done
  done
done

# --- report --------------------------------------------------------------------------------
{
  echo "## Load run $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "- machine: $NPROC cores, $CPU_MODEL; $(uname -sr)"
  echo "- synchronous 4 KiB write (dd oflag=dsync) in the data directory: $FSYNC_MS ms"
  echo "- wrk $(wrk -v 2>&1 | awk 'NR==1 {print $2}'), node $(node --version), oidc-provider $(jq -r .version "$OIDC_DIR/node_modules/oidc-provider/package.json"), agentidp at $REV, binary built $BUILT"
  echo "- niceness of the servers and wrk: $NICE"
  echo "- ${DURATION}s per run, $ROUNDS rounds alternating the servers; figures are the mean over rounds (p99: the worst round)"
  echo "- AgentIdP: bcrypt cost 10, SQLite store (WAL, synchronous=FULL) in $(df --output=fstype "$DATA" | tail -1) at ${DATA_PARENT:-.tools/bench}, info logs to a file; ${BENCH_ENV[*]}"
  env | grep '^AGENTIDP_' | sort | sed 's/^/- set by the caller: /' || true
  echo "- token-many: $COLD_CLIENTS distinct clients; AgentIdP restarted before each run"
  pool_use() { # SCENARIO WHAT: the pools' sizes and the fullest run's share of its pool
    awk -v s="$1" -v what="$2" '
      $1 != s { next }
      { f = $4 / $5; if (f >= max) { max = f; m = $4 } if (!lo || $5 < lo) lo = $5; if ($5 > hi) hi = $5 }
      END { printf "%d to %d %s for wrk; the fullest run took %d of its pool (%.0f%%)", lo, hi, what, m, max * 100 }' \
      "$WORK/pool-used.txt"
  }
  if grep -qs '^token-pkjwt ' "$WORK/pool-used.txt"; then
    echo "- token-pkjwt: private_key_jwt, ES256 assertions (aud: the token endpoint, exp: 300 s), each sent" \
      "once, from a pool signed right before each run: $(pool_use token-pkjwt assertions)"
  fi
  if grep -qs '^token-dpop ' "$WORK/pool-used.txt"; then
    echo "- token-dpop: client_secret_basic and ES256 DPoP proofs (htu: the token endpoint; iat within" \
      "${DPOP_WINDOW} s, AgentIdP's AGENTIDP_DPOP_PROOF_MAX_AGE_SECONDS=$DPOP_MAX_AGE; no nonces), each sent" \
      "once, from a pool signed right before each run: $(pool_use token-dpop proofs)"
  fi
  echo
  echo "| scenario | c | AgentIdP req/s | p50 ms | p99 ms | oidc-provider req/s | p50 ms | p99 ms | ratio | CPU ms/req AgentIdP / oidc-provider | cores in AgentIdP's runs: server / wrk / rest | cores in oidc-provider's runs: server / wrk / rest | AgentIdP requests >= ${BCRYPT_FLOOR_MS} ms | AgentIdP bcrypt verifications / requests |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  awk '
    {
      key = $1 " " $2; s = $4
      if (!(key in seen)) { seen[key] = 1; order[++n] = key }
      k = key " " s
      cnt[k]++; rps[k] += $5; p50[k] += $6; if ($7 > p99[k]) p99[k] = $7
      err[k] += $8; cores[k] += $9; busy[k] += $10; cpr[k] += $11; wrk[k] += $13
      if (s == "a") { slow[k] += $12; bcrypt[k] += $14; served[k] += $15 }
    }
    function cell(k, what) {
      if (!(k in cnt)) return "n/a"
      if (what == "rps") return sprintf("%.0f%s", rps[k] / cnt[k], err[k] ? " (" err[k] " errors)" : "")
      if (what == "p50") return sprintf("%.2f", p50[k] / cnt[k])
      if (what == "p99") return sprintf("%.2f", p99[k])
      if (what == "cpr") return sprintf("%.2f", cpr[k] / cnt[k])
      if (what == "cores") return sprintf("%.2f / %.2f / %.2f", cores[k] / cnt[k], wrk[k] / cnt[k],
        (busy[k] - cores[k] - wrk[k]) / cnt[k])
    }
    END {
      for (i = 1; i <= n; i++) {
        key = order[i]; split(key, kk, " "); a = key " a"; o = key " o"
        ratio = (o in cnt && rps[o] > 0) ? sprintf("%.2f", (rps[a] / cnt[a]) / (rps[o] / cnt[o])) : "n/a"
        printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s | %s | %d | %d / %d |\n", kk[1], kk[2],
          cell(a, "rps"), cell(a, "p50"), cell(a, "p99"), cell(o, "rps"), cell(o, "p50"), cell(o, "p99"),
          ratio, cell(a, "cpr"), cell(o, "cpr"), cell(a, "cores"), cell(o, "cores"), slow[a], bcrypt[a], served[a]
      }
    }' "$ROWS"
  echo
  awk '
    { k = $1 " " $2 " " $4; cnt[k]++; rps[k] += $5; if ($7 > p99[k]) p99[k] = $7 }
    function verdict(ok) { return ok ? "met" : "NOT met" }
    END {
      a = "token-warm 8 a"; o = "token-warm 8 o"
      if ((a in cnt) && (o in cnt)) {
        r = (rps[a] / cnt[a]) / (rps[o] / cnt[o])
        printf "Goal, token endpoint, warm client, c=8: ratio %.2f (>= 1), p99 %.2f ms (< 10): %s\n",
          r, p99[a], verdict(r >= 1 && p99[a] < 10)
      }
      a = "token-resource 8 a"; w = "token-warm 8 a"
      if ((a in cnt) && (w in cnt)) {
        printf "Resource-bound tokens, c=8: AgentIdP token-resource / token-warm %.2f (goal: within a few percent of 1)\n",
          (rps[a] / cnt[a]) / (rps[w] / cnt[w])
      }
      a = "token-pkjwt 8 a"; o = "token-pkjwt 8 o"
      if ((a in cnt) && (o in cnt)) {
        r = (rps[a] / cnt[a]) / (rps[o] / cnt[o])
        printf "Goal, private_key_jwt token, c=8: ratio %.2f (>= 1), AgentIdP p99 %.2f ms: %s\n", r, p99[a], verdict(r >= 1)
      }
      a = "token-pkjwt 8 a"; w = "token-warm 8 a"
      if ((a in cnt) && (w in cnt)) {
        printf "private_key_jwt against a client secret, c=8: AgentIdP token-pkjwt / token-warm %.2f\n",
          (rps[a] / cnt[a]) / (rps[w] / cnt[w])
      }
      a = "token-dpop 8 a"; o = "token-dpop 8 o"
      if ((a in cnt) && (o in cnt)) {
        r = (rps[a] / cnt[a]) / (rps[o] / cnt[o])
        printf "Goal, DPoP token, c=8: ratio %.2f (>= 1), AgentIdP p99 %.2f ms: %s\n", r, p99[a], verdict(r >= 1)
      }
      a = "token-dpop 8 a"; w = "token-warm 8 a"; o = "token-dpop 8 o"; v = "token-warm 8 o"
      if ((a in cnt) && (w in cnt)) {
        printf "DPoP against a plain token request, c=8: AgentIdP token-dpop / token-warm %.2f", \
          (rps[a] / cnt[a]) / (rps[w] / cnt[w])
        if ((o in cnt) && (v in cnt)) printf "; oidc-provider %.2f", (rps[o] / cnt[o]) / (rps[v] / cnt[v])
        printf "\n"
      }
      a = "token-exchange 8 a"; w = "token-warm 8 a"
      if ((a in cnt) && (w in cnt)) {
        r = (rps[w] / cnt[w]) / (rps[a] / cnt[a])
        printf "Goal, token exchange, c=8: AgentIdP token-warm / token-exchange %.2f (within 1.5): %s\n", r, verdict(r <= 1.5)
      }
      a = "introspect-chain 8 a"; w = "introspect 8 a"
      if ((a in cnt) && (w in cnt)) {
        printf "Introspection of a token three actors deep, c=8: AgentIdP introspect-chain / introspect %.2f\n",
          (rps[a] / cnt[a]) / (rps[w] / cnt[w])
      }
      a = "introspect 8 a"; o = "introspect 8 o"
      if ((a in cnt) && (o in cnt)) {
        r = (rps[a] / cnt[a]) / (rps[o] / cnt[o])
        printf "Goal, introspection, c=8: ratio %.2f (>= 1): %s\n", r, verdict(r >= 1)
      }
    }' "$ROWS"
  echo
  echo "ratio: AgentIdP req/s / oidc-provider req/s. rest: cores busy with anything else on the machine."
  echo "AgentIdP requests >= ${BCRYPT_FLOOR_MS} ms: token or introspection requests that took that long inside the"
  echo "server, by its log (bcrypt at cost 10 takes ~60 ms here; queueing counts too)."
  echo "AgentIdP bcrypt verifications: exact, the server's own counter as its log reports it, summed over"
  echo "the rounds, against the requests wrk completed in those rounds."
  echo
  echo "Per run (scenario, c, round, server, req/s, p50 ms, p99 ms, errors, server cores, machine cores,"
  echo "server CPU ms/req, requests >= ${BCRYPT_FLOOR_MS} ms, wrk cores, bcrypt verifications, requests):"
  echo
  echo '```'
  cat "$ROWS"
  echo '```'
} | tee "$RESULTS"
echo "written to $RESULTS" >&2
