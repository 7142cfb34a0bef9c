#!/usr/bin/env bash
# Checks the serverless packaging without an AWS account and without Docker:
#
#   1. tools: cargo-lambda, zig and the SAM CLI (which brings cfn-lint), pinned, in a venv under
#      .tools/; the rustup target aarch64-unknown-linux-gnu;
#   2. cfn-lint template.yaml, and sam validate --lint;
#   3. sam build: every function of the template must come out as an arm64 `bootstrap`;
#   4. the runtime loop: `cargo lambda watch` (AWS's Lambda Runtime API, emulated) runs each
#      function binary against DynamoDB Local and moto_server, and every sample event in events/
#      is invoked on its function with `cargo lambda invoke`, answering the status that
#      events/expected-status.json gives it. Before that, `agentidp-admin --store dynamodb
#      create-org` creates the tables and an organization (docs/deploy.md's bootstrap step), and
#      that organization's bootstrap credential must get a token from the tokens function.
#      The functions log at `debug`, the most the template's LogLevel allows (or at
#      AGENTIDP_LOG if set), and scripts/check-function-logs.py then searches what they wrote
#      for every secret, bcrypt hash, token and private key the run handled.
#
# DynamoDB Local and moto_server must be running, as scripts/test-services.sh starts them:
#
#   source scripts/test-services.sh && start_test_services && scripts/check-packaging.sh
#
# It builds in the workspace's own target directory (sam build's release arm64 binaries, and
# the debug binaries that cargo test has mostly built already), so nothing is built twice.
# Options: --skip-build (steps 1, 2 and 4 only); --measure (then also step 5, for
# docs/performance.md: each function's cold-start init time, release build, under the Runtime
# API emulator; builds release binaries for this host, so it is not part of CI).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

CARGO_LAMBDA_VERSION=1.9.2
ZIGLANG_VERSION=0.17.1
SAM_CLI_VERSION=1.170.0

skip_build=0
measure=0
for arg in "$@"; do
    case "$arg" in
        --skip-build) skip_build=1 ;;
        --measure) measure=1 ;;
        *) echo "check-packaging: unknown option $arg" >&2; exit 2 ;;
    esac
done

tools="${AGENTIDP_TOOLS_DIR:-$repo/.tools}"
venv="$tools/packaging-venv"
started=$SECONDS
step_started=$SECONDS
step() {
    printf '\n==> %s (%ss so far)\n' "$*" "$((SECONDS - started))"
    step_started=$SECONDS
}
done_step() { printf '    done in %ss\n' "$((SECONDS - step_started))"; }
fail() { echo "check-packaging: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------------------------
step "tools: cargo-lambda $CARGO_LAMBDA_VERSION, ziglang $ZIGLANG_VERSION, aws-sam-cli $SAM_CLI_VERSION in $venv"
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
done_step

# ------------------------------------------------------------------------------------------------
step "cfn-lint template.yaml"
cfn-lint template.yaml
done_step

step "sam validate --lint"
sam validate --lint
done_step

# The template's functions and their binaries: the logical id above each
# `Type: AWS::Serverless::Function`, and its `Binary:`.
mapfile -t functions < <(awk '
    /^  [A-Za-z0-9]+:$/ { name = $1; sub(":", "", name) }
    /^    Type: AWS::Serverless::Function$/ { fn = name }
    /^        Binary: / && fn != "" { print fn " " $2; fn = "" }
' template.yaml)
[ "${#functions[@]}" -ge 5 ] || fail "found only ${#functions[@]} functions in template.yaml"

# ------------------------------------------------------------------------------------------------
if [ "$skip_build" = 0 ]; then
    step "sam build (cargo lambda build --release --arm64, one binary per function)"
    # First all five binaries in one cargo build, whose two jobs link two binaries at a time
    # (each link is a single-threaded LTO of the whole program, the longest part); sam build's
    # own cargo lambda build of each function then finds it up to date. The functions share one
    # feature set (see functions/key-rotation/Cargo.toml), so building them together compiles
    # nothing a single-function build would not.
    release_bins=()
    for entry in "${functions[@]}"; do
        read -r name binary <<<"$entry"
        release_bins+=(--bin "$binary")
    done
    cargo lambda build --locked --release --arm64 "${release_bins[@]}"
    AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" sam build
    for entry in "${functions[@]}"; do
        read -r name binary <<<"$entry"
        bootstrap=".aws-sam/build/$name/bootstrap"
        [ -x "$bootstrap" ] || fail "sam build made no $bootstrap"
        # An ELF file (7f 45 4c 46) whose e_machine, at byte 18, is EM_AARCH64 (0xb7). Read with
        # od rather than file(1), which a fresh machine may not have.
        [ "$(od -An -tx1 -N4 "$bootstrap" | tr -d ' ')" = 7f454c46 ] \
            && [ "$(od -An -tx1 -j18 -N2 "$bootstrap" | tr -d ' ')" = b700 ] \
            || fail "$bootstrap is not an arm64 ELF executable"
        printf '    %-22s %-24s %8s bytes  arm64 ELF\n' "$name" "$binary" "$(stat -c %s "$bootstrap")"
    done
    done_step
fi

# Step 5 (--measure): for each function, five cold starts of its release binary (built for this
# host: arm64 binaries cannot run here) under `cargo lambda watch --only-lambda-apis`, the
# emulator alone. Init is what Lambda reports as Init Duration: from the binary's execve to its
# first connection to the Runtime API (the first "next invocation" request), read from strace's
# timestamps. Then the first (cold) invocation, from that request to the response, and a warm
# one, as the round trip of an HTTP invocation through the emulator, are timed. Uses the
# tables, secrets and environment of the runtime loop, with the production bcrypt cost (10,
# or AGENTIDP_MEASURE_BCRYPT_COST), since a first invocation may hash or verify a secret.
measure_cold_starts() {
    step "cold starts (release build for this host, Runtime API emulator only)"
    command -v strace >/dev/null || fail "--measure needs strace"
    local bins=() entry name binary
    for entry in "${functions[@]}"; do
        read -r name binary <<<"$entry"
        bins+=(--bin "$binary")
    done
    cargo build --locked --release --quiet "${bins[@]}"
    local mport
    mport="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    set -m
    cargo lambda watch --only-lambda-apis -A 127.0.0.1 -P "$mport" >"$work/emulator.log" 2>&1 &
    emulator_pid=$!
    set +m
    for _ in $(seq 1 60); do
        curl -s -o /dev/null -m 1 "http://127.0.0.1:$mport/" && break
        sleep 0.5
    done
    printf '    %-24s %10s %10s %10s   %s\n' binary "init ms" "1st ms" "warm ms" "(medians of 5; event)"
    for entry in "${functions[@]}"; do
        read -r name binary <<<"$entry"
        local event
        case "$binary" in
            agentidp-agents) event=events/agents/list-agents.json ;;
            agentidp-credentials) event=events/credentials/list-credentials.json ;;
            agentidp-tokens) event=events/tokens/token.json ;;
            agentidp-audit) event=events/audit/list-audit.json ;;
            agentidp-key-rotation) event=rotation ;;
            *) fail "no event to measure $binary with" ;;
        esac
        local inits=() firsts=() warms=() run
        for run in 1 2 3 4 5; do
            local file="$event"
            if [ "$event" = rotation ]; then
                file="$work/measure-rotation.json"
                "$venv/bin/python" - "$prefix-measure-$run-$RANDOM" "$file" <<'PY'
import json, os, sys, uuid, boto3
client = boto3.client("secretsmanager", endpoint_url=os.environ["AGENTIDP_TEST_MOTO_ENDPOINT"])
arn = client.create_secret(Name=sys.argv[1], SecretString=open("events/fixture/signing-keys.json").read())["ARN"]
json.dump({"Step": "createSecret", "SecretId": arn, "ClientRequestToken": str(uuid.uuid4())}, open(sys.argv[2], "w"))
PY
            fi
            # The invocation waits in the emulator until the function asks for it. With
            # --only-lambda-apis the emulator serves one function, named `_`.
            # curl rather than cargo lambda invoke: its start-up (a few ms) barely counts.
            curl -sf -o "$work/measure.out" -X POST --data-binary "@$file" \
                "http://127.0.0.1:$mport/2015-03-31/functions/_/invocations" 2>"$work/measure.err" &
            local invoke_pid=$!
            sleep 0.3
            AGENTIDP_BCRYPT_COST="${AGENTIDP_MEASURE_BCRYPT_COST:-10}" AWS_LAMBDA_FUNCTION_NAME="$binary" AWS_LAMBDA_FUNCTION_VERSION=1 \
                AWS_LAMBDA_FUNCTION_MEMORY_SIZE=1024 AWS_LAMBDA_RUNTIME_API="http://127.0.0.1:$mport/.rt" \
                strace -f --seccomp-bpf -ttt -e trace=execve,connect -o "$work/strace.txt" \
                "$target_dir/release/$binary" 2>>"$work/measure.log" &
            function_pid=$!
            local deadline=$((SECONDS + 60))
            while kill -0 "$invoke_pid" 2>/dev/null; do
                kill -0 "$function_pid" 2>/dev/null \
                    || fail "$binary exited before answering: $(tail -n 5 "$work/measure.log")"
                [ "$SECONDS" -lt "$deadline" ] || fail "$binary did not answer within 60 s"
                sleep 0.01
            done
            wait "$invoke_pid" || fail "the cold invocation of $binary failed: $(tail -n 3 "$work/measure.err")"
            local done_ns first_ns
            done_ns=$(date +%s%N)
            local warm_start warm_end
            warm_start=$(date +%s%N)
            curl -sf -o /dev/null -X POST --data-binary "@$file" \
                "http://127.0.0.1:$mport/2015-03-31/functions/_/invocations" || true
            warm_end=$(date +%s%N)
            # strace and the function it started, by their ids.
            kill $(pgrep -P "$function_pid") "$function_pid" 2>/dev/null || true
            wait "$function_pid" 2>/dev/null || true
            function_pid=""
            read -r init first_ns < <(python3 - "$work/strace.txt" "$mport" <<'PY'
import re, sys
start = connect = None
for line in open(sys.argv[1]):
    m = re.match(r"\d+\s+(\d+\.\d+) (\w+)\(", line)
    if not m:
        continue
    t, call = float(m.group(1)), m.group(2)
    if call == "execve" and start is None:
        start = t
    if call == "connect" and connect is None and f"htons({sys.argv[2]})" in line:
        connect = t
print(round((connect - start) * 1000, 1), int(connect * 1e9))
PY
)
            inits+=("$init")
            firsts+=("$(( (done_ns - first_ns) / 1000000 ))")
            warms+=("$(( (warm_end - warm_start) / 1000000 ))")
        done
        median() { printf '%s\n' "$@" | sort -n | sed -n 3p; }
        printf '    %-24s %10s %10s %10s   %s\n' "$binary" "$(median "${inits[@]}")" "$(median "${firsts[@]}")" "$(median "${warms[@]}")" "$event"
    done
    kill -- "-$emulator_pid" 2>/dev/null || kill "$emulator_pid" 2>/dev/null || true
    wait "$emulator_pid" 2>/dev/null || true
    emulator_pid=""
    done_step
}

# ------------------------------------------------------------------------------------------------
step "runtime loop: the function binaries under cargo lambda watch, on DynamoDB Local and moto"
[ -n "${AWS_ENDPOINT_URL_DYNAMODB:-}" ] && [ -n "${AGENTIDP_TEST_MOTO_ENDPOINT:-}" ] \
    || fail "DynamoDB Local and moto_server are needed: source scripts/test-services.sh && start_test_services"
work="$(mktemp -d "${TMPDIR:-/tmp}/agentidp-packaging.XXXXXX")"
watch_pid=""
emulator_pid=""
function_pid=""
cleanup() {
    local pid
    for pid in $function_pid; do
        kill "$pid" 2>/dev/null || true
    done
    # cargo lambda watch runs the functions as its children: end the whole group it leads.
    for pid in $watch_pid $emulator_pid; do
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# What the sample events assume (issuer, low limits, cheap bcrypt), and where everything is.
set -a
# shellcheck source=/dev/null
source events/fixture/environment
set +a
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}" AWS_EC2_METADATA_DISABLED=true
export AWS_ENDPOINT_URL_SECRETS_MANAGER="$AGENTIDP_TEST_MOTO_ENDPOINT"
export AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH=true
# The most verbose level a deployment can set, so that the log search below sees all a function
# could ever write to CloudWatch.
export AGENTIDP_LOG="${AGENTIDP_LOG:-debug}"
# One table per AGENTIDP_*_TABLE variable of the template's Globals, under a fresh prefix.
prefix="agentidp-pkg-$(date +%s)-$$"
while read -r variable; do
    suffix="$(echo "${variable#AGENTIDP_}" | sed 's/_TABLE$//' | tr 'A-Z_' 'a-z-')"
    export "$variable=$prefix-$suffix"
done < <(sed -n 's/^ *\(AGENTIDP_[A-Z_]*_TABLE\): !Ref .*/\1/p' template.yaml)

# The signing keys: a secret holding the fixture's key set (for the tokens function), one with
# its public keys as the rotation publishes them (a JWKS, for the functions that only verify
# tokens: a wrong key there fails their bearer events), and one more for the rotation function
# to rotate (it publishes to the public one, after every API event has run).
read -r AGENTIDP_SIGNING_KEY_SECRET_ID AGENTIDP_PUBLIC_KEYS_SECRET_ID rotation_secret < <("$venv/bin/python" - "$prefix" <<'PY'
import base64, json, os, sys, boto3
from cryptography.hazmat.primitives.serialization import load_pem_private_key
client = boto3.client("secretsmanager", endpoint_url=os.environ["AGENTIDP_TEST_MOTO_ENDPOINT"])
keys = open("events/fixture/signing-keys.json").read()
def coordinate(n):
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()
jwks = []
for key in json.loads(keys)["keys"]:
    assert key["alg"] == "ES256", "the fixture's keys are ES256; publish other kinds here too"
    point = load_pem_private_key(key["privateKeyPem"].encode(), None).public_key().public_numbers()
    jwks.append({"kty": "EC", "use": "sig", "alg": "ES256", "kid": key["kid"], "crv": "P-256",
                 "x": coordinate(point.x), "y": coordinate(point.y)})
names = []
for suffix, value in (("-signing-keys", keys), ("-public-keys", json.dumps({"keys": jwks})),
                      ("-rotation", keys)):
    names.append(client.create_secret(Name=sys.argv[1] + suffix, SecretString=value)["ARN"])
print(*names)
PY
)
export AGENTIDP_SIGNING_KEY_SECRET_ID AGENTIDP_PUBLIC_KEYS_SECRET_ID

echo "    agentidp-admin --store dynamodb create-org (creates the tables, then the organization)"
cargo build --locked --quiet --bin agentidp-admin
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
"$target_dir/debug/agentidp-admin" --store dynamodb create-org --name packaging-check --plan free >"$work/org.json"
echo "    the events' fixture (fixed ids) into the same tables"
# --workspace: the features cargo test --workspace built with, so its artifacts are reused.
cargo test --locked --quiet --workspace --test events -- --ignored --exact seed_dynamodb_fixture >/dev/null

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
# Its own process group, so that cleanup ends the functions it starts too.
set -m
cargo lambda watch -A 127.0.0.1 -P "$port" --ignore-changes >"$work/watch.log" 2>&1 &
watch_pid=$!
set +m
for _ in $(seq 1 120); do
    curl -s -o /dev/null -m 1 "http://127.0.0.1:$port/" && break
    kill -0 "$watch_pid" 2>/dev/null || { cat "$work/watch.log" >&2; fail "cargo lambda watch exited"; }
    sleep 0.5
done

# invoke BINARY EVENT_FILE: prints the status code (API events) or ok/error (others). Keeps the
# response in $work/responses/, for the secrets and tokens the log search looks for.
mkdir -p "$work/responses"
invoke() {
    local out start
    start=$(date +%s%N)
    if out="$(cargo lambda invoke "$1" -A 127.0.0.1 -P "$port" --data-file "$2" --output-format json 2>"$work/invoke.err")"; then
        printf '%s\n' "$out" >"$(mktemp "$work/responses/XXXXXX")"
        python3 -c 'import json,sys; r = json.loads(sys.stdin.read()); print(r.get("statusCode", "ok") if isinstance(r, dict) else "ok")' <<<"$out"
    else
        echo error
    fi
    echo "$(( ($(date +%s%N) - start) / 1000000 ))" >"$work/invoke.ms"
}

failures=0
checked=0
api_checked=0
leaked=0
check() {
    local binary=$1 file=$2 want=$3 got
    got="$(invoke "$binary" "$file")"
    checked=$((checked + 1))
    api_checked=$((api_checked + 1))
    if [ "$got" = "$want" ]; then
        printf '    ok   %-24s %-56s %-5s %6s ms\n' "$binary" "$file" "$got" "$(cat "$work/invoke.ms")"
    else
        failures=$((failures + 1))
        printf '    FAIL %-24s %-56s expected %s, got %s\n' "$binary" "$file" "$want" "$got"
        tail -n 5 "$work/invoke.err" | sed 's/^/         /'
    fi
}

# The organization agentidp-admin created: its bootstrap credential gets a token.
python3 - "$work/org.json" events/tokens/token-client-secret-post.json "$work/bootstrap-token.json" <<'PY'
import json, sys, urllib.parse
org = json.load(open(sys.argv[1]))
event = json.load(open(sys.argv[2]))
event["body"] = urllib.parse.urlencode({"grant_type": "client_credentials",
    "client_id": org["clientId"], "client_secret": org["clientSecret"]})
event["headers"]["content-length"] = str(len(event["body"]))
json.dump(event, open(sys.argv[3], "w"))
PY
first=$SECONDS
check agentidp-tokens "$work/bootstrap-token.json" 200
echo "    (the first invoke compiled the functions: $((SECONDS - first))s)"

expected() {
    python3 -c 'import json,sys; print(json.load(open("events/expected-status.json"))[sys.argv[1]])' "$1"
}
for group in agents credentials tokens audit; do
    for file in events/"$group"/*.json; do
        check "agentidp-$group" "$file" "$(expected "${file#events/}")"
    done
done
for file in events/key-rotation/*.json; do
    python3 - "$file" "$rotation_secret" "$work/rotation.json" <<'PY'
import json, sys
event = json.load(open(sys.argv[1]))
event["SecretId"] = sys.argv[2]
json.dump(event, open(sys.argv[3], "w"))
PY
    want="$(expected "${file#events/}")"
    got="$(invoke agentidp-key-rotation "$work/rotation.json")"
    checked=$((checked + 1))
    if [ "$got" = "$want" ]; then
        printf '    ok   %-24s %-56s %-5s %6s ms\n' agentidp-key-rotation "$file" "$got" "$(cat "$work/invoke.ms")"
    else
        failures=$((failures + 1))
        printf '    FAIL %-24s %-56s expected %s, got %s\n' agentidp-key-rotation "$file" "$want" "$got"
        tail -n 5 "$work/invoke.err" | sed 's/^/         /'
    fi
done
# Every event file was invoked: the count of events/expected-status.json plus the bootstrap one.
listed="$(python3 -c 'import json; print(len(json.load(open("events/expected-status.json"))))')"
[ "$checked" -eq $((listed + 1)) ] || fail "invoked $checked events, expected $((listed + 1))"
# What the functions wrote, as CloudWatch would keep it: cargo lambda watch passes on their
# stdout and stderr.
"$venv/bin/python" scripts/check-function-logs.py "$work/watch.log" "$work" "$api_checked" \
    "$AGENTIDP_SIGNING_KEY_SECRET_ID" "$rotation_secret" || leaked=1
done_step

if [ "$failures" -gt 0 ] || [ "$leaked" = 1 ]; then
    measure=0
fi
if [ "$measure" = 1 ]; then
    measure_cold_starts
fi

if [ "$failures" -gt 0 ]; then
    echo "--- cargo lambda watch log (last 40 lines) ---" >&2
    tail -n 40 "$work/watch.log" >&2
    fail "$failures of $checked invocations did not answer as expected"
fi
# Not the log's tail here: it holds the secrets.
[ "$leaked" = 0 ] || fail "the functions' log holds secrets, tokens or keys (above)"
printf '\ncheck-packaging took %ss\n' "$((SECONDS - started))"
printf 'check-packaging: %s passed, 0 failed\n' "$checked"
