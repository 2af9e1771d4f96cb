#!/usr/bin/env bash
# End-to-end check of the one-command stress test (called from .ci/run).
#
# Options: a bad --cooldown or --servers, before or after the verb, fails at once
# with exit 2 naming the option, before any server starts.
# Local backend: start 5 servers, test-quick, logs, `test-quick --servers 3 --local`
# (options after the verb: the running servers are scaled to 3 and stay up), stop;
# then a self-contained `--servers 3 test-quick`. Asserts the results (100 successful
# messages spread over 5 resp. 3 servers), the log archive, and that no server
# process is left.
# Docker backend, where an engine answers: the compose file is read without a
# warning; the compose test-quick; `start --servers 2`, the containers' CPU and
# memory limits, `test-quick --servers 3` scaling them to 3; then asserts the results
# and that no container or network of the project (nor an image it built) is left.
#
# Needs only cargo (release binaries are built here) and python3 or jq for the JSON
# checks. Takes about a minute once the release build is done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
ST="$ROOT/scripts/stress-test.sh"

# The local servers of this check use their own ports so that servers a developer
# has running on 2525-2529 neither disturb the check nor get stopped by it.
export STAMPEDE_SMTP_BASE_PORT="${STAMPEDE_SMTP_BASE_PORT:-22525}"
export STAMPEDE_ADMIN_BASE_PORT="${STAMPEDE_ADMIN_BASE_PORT:-28081}"
export STAMPEDE_COOLDOWN=0
# Its own state directory, for the same reason.
export STAMPEDE_STATE_DIR="$ROOT/results/.stampede-e2e"
STARTED_DOCKER=0   # 1 while the Docker part runs
IMAGE_EXISTED=0    # 1 when stampede:local was there before this check

step() { printf '\n\033[1m--- e2e: %s\033[0m\n' "$*"; }
fail() { printf '\033[31mFAIL:\033[0m %s\n' "$*" >&2; exit 1; }
pass() { printf '\033[32mPASS:\033[0m %s\n' "$*"; }

# Stop whatever this check started, whatever happens.
cleanup() {
    local status=$?
    if ((status != 0)); then
        "$ST" --local stop >/dev/null 2>&1 || true
        if ((STARTED_DOCKER == 1)); then
            # Leave the engine as it was: an image this check built goes too.
            if ((IMAGE_EXISTED == 1)); then
                "$ST" --docker stop >/dev/null 2>&1 || true
            else
                "$ST" --docker clean >/dev/null 2>&1 || true
            fi
        fi
    fi
    exit "$status"
}
trap cleanup EXIT

# The newest result of a test written after the marker file.
result_since() {
    local marker=$1 test=$2 file
    file="$(find results -maxdepth 1 -name "*-$test.json" -newer "$marker" -print | sort | tail -n 1)"
    [[ -n "$file" ]] || fail "no results/*-$test.json written"
    echo "$file"
}

# Asserts a result: $1 file, $2 expected successful messages, $3 expected servers,
# $4 (optional) the exact server list, comma-separated.
check_result() {
    local file=$1 messages=$2 servers=$3 list=${4:-}
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$file" "$messages" "$servers" "$list" <<'EOF' || fail "result $file does not hold what it should"
import json, sys
path, messages, servers, listed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
r = json.load(open(path))
m = r["metrics"]
problems = []
if m["successful_messages"] != messages:
    problems.append(f"successful_messages = {m['successful_messages']}, want {messages}")
if m["failed_messages"] != 0:
    problems.append(f"failed_messages = {m['failed_messages']}: {m.get('error_breakdown')}")
if len(r["servers"]) != servers:
    problems.append(f"{len(r['servers'])} servers, want {servers}")
if listed and r["servers"] != listed.split(","):
    problems.append(f"servers {r['servers']}, want {listed.split(',')}")
per = r.get("per_server", [])
if len(per) != servers:
    problems.append(f"per_server has {len(per)} entries, want {servers}")
elif any(s["successful_messages"] == 0 for s in per):
    problems.append("a server got no message: " + str([s["successful_messages"] for s in per]))
elif sum(s["successful_messages"] for s in per) != messages:
    problems.append("per_server successes do not add up")
for p in problems:
    print("  " + p, file=sys.stderr)
print(f"  {path}: {m['successful_messages']} ok over {len(per)} servers "
      f"({[s['successful_messages'] for s in per]}), {m['messages_per_second']:.0f} msg/s")
sys.exit(1 if problems else 0)
EOF
    elif command -v jq >/dev/null 2>&1; then
        jq -e --argjson n "$messages" --argjson s "$servers" --arg l "$list" \
            '.metrics.successful_messages == $n and .metrics.failed_messages == 0
             and (.servers | length) == $s and (.per_server | length) == $s
             and ($l == "" or .servers == ($l | split(",")))
             and all(.per_server[]; .successful_messages > 0)' "$file" >/dev/null ||
            fail "result $file does not hold $messages successful messages over $servers servers"
    else
        fail "neither python3 nor jq is installed; one of them is needed to check the result"
    fi
    pass "$file: $messages successful messages over $servers servers"
}

# True when $1 runs (a zombie that init has not reaped yet has exited: it counts
# as gone).
running() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# Asserts that no process from the pid list is alive.
check_no_process() {
    local pids=$1 pid
    for pid in $pids; do
        if running "$pid"; then
            fail "server process $pid is still running after stop: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
        fi
    done
    [[ ! -s "$STAMPEDE_STATE_DIR/servers.pid" ]] || fail "the pid file is still there after stop"
    pass "no server process left (pids: ${pids//$'\n'/ })"
}

# Asserts that `stress-test.sh ARGS...` refuses a bad option: exit 2, the option
# ($1) named on stderr, and nothing started: no server log, result or pid file.
# Bounded by `timeout`, so a script that goes ahead with the run fails here quickly.
check_refused() {
    local option=$1 status=0 err
    shift
    err="$(mktemp "${TMPDIR:-/tmp}/stampede-e2e-err.XXXXXX")"
    touch "$marker"
    timeout 120 "$ST" "$@" >/dev/null 2>"$err" || status=$?
    ((status == 2)) || fail "'stress-test.sh $*' exited $status, want 2 (stderr: $(cat "$err"))"
    grep -q -- "$option" "$err" || fail "'stress-test.sh $*' did not name $option: $(cat "$err")"
    [[ -z "$(find results -newer "$marker" \( -name '*.log' -o -name '*.json' \) -print -quit)" ]] ||
        fail "'stress-test.sh $*' ran servers or a test before refusing"
    [[ ! -e "$STAMPEDE_STATE_DIR/servers.pid" ]] || fail "'stress-test.sh $*' left a pid file"
    pass "stress-test.sh $* -> exit 2: $(head -n 1 "$err")"
    rm -f "$err"
}

# Pids of the local servers the pid file lists.
recorded_pids() { awk '{print $2}' "$STAMPEDE_STATE_DIR/servers.pid"; }

step "release build"
cargo build --release -p server -p loadgen -p analyze -p units

mkdir -p results
marker="$(mktemp "${TMPDIR:-/tmp}/stampede-e2e.XXXXXX")"

step "options: bad values are refused up front, before or after the verb"
check_refused --cooldown --local --cooldown abc test-all
check_refused --cooldown --local test-all --cooldown abc
check_refused --cooldown test-quick --local --cooldown=1x
check_refused --servers --local test-quick --servers 0
check_refused --servers test-quick --local --servers=abc
check_refused --servers test-quick --local --servers

step "local: start, test-quick, logs, test-quick --servers 3 (scales), stop"
"$ST" --local start
pids="$(recorded_pids)"
[[ "$(echo "$pids" | wc -w)" == 5 ]] || fail "start did not record 5 server processes"
"$ST" --local test-quick
check_result "$(result_since "$marker" quick)" 100 5
"$ST" --local logs
# The archive of the `logs` verb is <stamp>-logs.tar.gz (a test's is <stamp>-<test>-logs).
archive="$(find results -maxdepth 1 -name '*[0-9]-logs.tar.gz' -newer "$marker" | sort | tail -n 1)"
[[ -n "$archive" ]] || fail "logs wrote no results/*-logs.tar.gz"
[[ "$(tar -tzf "$archive" | grep -c 'server[0-9]*-logs/')" -ge 5 ]] || fail "$archive lacks server logs"
pass "logs archive $archive"
# Options after the verb: the five running servers are scaled to the three asked for.
touch "$marker"
"$ST" test-quick --servers 3 --local
check_result "$(result_since "$marker" quick)" 100 3 \
    "127.0.0.1:$STAMPEDE_SMTP_BASE_PORT,127.0.0.1:$((STAMPEDE_SMTP_BASE_PORT + 1)),127.0.0.1:$((STAMPEDE_SMTP_BASE_PORT + 2))"
kept="$(recorded_pids)"
[[ "$(echo "$kept" | wc -w)" == 3 ]] || fail "after --servers 3 the pid file lists $(echo "$kept" | wc -w) servers, want 3"
for pid in $kept; do running "$pid" || fail "server $pid of the scaled session is not running"; done
for pid in $(echo "$pids" | tail -n 2); do
    ! running "$pid" || fail "server $pid (4 or 5) still runs after scaling to 3"
done
pass "the running servers were scaled to 3 and stay up"
"$ST" --local stop
check_no_process "$pids"

step "local: --servers 3 test-quick (starts and stops its own servers)"
touch "$marker"
"$ST" --local --servers 3 test-quick
check_result "$(result_since "$marker" quick)" 100 3
[[ ! -s "$STAMPEDE_STATE_DIR/servers.pid" ]] || fail "test-quick left its servers running"
pass "test-quick stopped the servers it started"

# Asserts that a Docker result ($1) carries memory samples of exactly the containers
# smtp-server-1..$2.
check_resources() {
    command -v python3 >/dev/null 2>&1 || return 0
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
want = ["smtp-server-%d" % n for n in range(1, int(sys.argv[2]) + 1)]
res = r.get("resources", {})
if sorted(res) != want:
    sys.exit("resources: %s, want %s" % (sorted(res), want))
# Even a run shorter than the engine'"'"'s 1 s stats tick keeps one sample per server.
bad = [k for k, v in res.items() if not v or not all(s["memory_bytes"] > 0 for s in v)]
sys.exit("no memory sample for %s" % bad if bad else 0)
' "$1" "$2" || fail "the Docker result does not carry the $2 containers' resource samples"
    pass "resources section holds samples of the $2 server containers"
}

# Containers of the compose project, running or not.
project_containers() { docker ps -aq --filter label=com.docker.compose.project=stampede; }

COMPOSE=()
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif docker-compose version >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
fi
step "compose: no obsolete version key, the installed compose reads the file silently"
# Compose v2 warns about a top-level `version:`; where only docker-compose 1.x is
# installed (it stays silent), this line keeps the key out.
! grep -q '^version:' docker-compose.stress-test.yml ||
    fail "docker-compose.stress-test.yml has a top-level version key (obsolete, Compose v2 warns)"
pass "docker-compose.stress-test.yml has no top-level version key"
if ((${#COMPOSE[@]} > 0)); then
    warnings="$("${COMPOSE[@]}" -p stampede -f docker-compose.stress-test.yml config -q 2>&1)" ||
        fail "${COMPOSE[*]} config failed: $warnings"
    [[ -z "$warnings" ]] || fail "${COMPOSE[*]} config warns: $warnings"
    pass "${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null)) accepts docker-compose.stress-test.yml silently"
fi

if ((${#COMPOSE[@]} > 0)) && timeout 5 docker info >/dev/null 2>&1; then
    # The check removes the image at the end only when it built it.
    docker image inspect stampede:local >/dev/null 2>&1 && IMAGE_EXISTED=1
    STARTED_DOCKER=1

    step "docker: test-quick (compose), then stop"
    touch "$marker"
    "$ST" --docker test-quick
    file="$(result_since "$marker" quick)"
    check_result "$file" 100 5
    check_resources "$file" 5
    [[ -z "$(project_containers)" ]] || fail "test-quick left containers: $(project_containers)"

    step "docker: start --servers 2, limits, test-quick --servers 3 (scales), stop"
    "$ST" --docker start --servers 2
    for name in smtp-server-1 smtp-server-2; do
        limits="$(docker inspect -f '{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}' "$name")"
        [[ "$limits" == "1000000000 536870912" ]] ||
            fail "$name runs with NanoCpus/Memory $limits, want 1 CPU and 512 MiB from the compose file"
    done
    pass "the server containers run with the compose file's 1 CPU and 512 MiB"
    touch "$marker"
    "$ST" test-quick --servers 3
    file="$(result_since "$marker" quick)"
    check_result "$file" 100 3 smtp-server-1,smtp-server-2,smtp-server-3
    check_resources "$file" 3
    running_now="$(docker ps -q --filter label=com.docker.compose.project=stampede | wc -l)"
    [[ "$running_now" == 3 ]] || fail "$running_now containers run after scaling to 3, want 3"
    pass "the running containers were scaled to 3 and stay up"
    "$ST" --docker stop
    [[ -z "$(project_containers)" ]] || fail "containers left after stop: $(project_containers)"
    ! docker network inspect stampede_stampede >/dev/null 2>&1 || fail "network stampede_stampede left after stop"
    pass "no container or network of the project left"
    if ((IMAGE_EXISTED == 0)); then
        "$ST" --docker clean >/dev/null
        ! docker image inspect stampede:local >/dev/null 2>&1 || fail "the image stampede:local is left after clean"
        pass "the image this check built is removed"
    fi
    STARTED_DOCKER=0
else
    step "docker: skipped (no Docker engine or compose answers)"
fi

rm -f "$marker"
step "all stress-test end-to-end checks passed"
