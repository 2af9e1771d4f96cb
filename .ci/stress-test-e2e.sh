#!/usr/bin/env bash
# End-to-end check of the one-command stress test (called from .ci/run).
#
# Local backend: start 5 servers, test-quick, logs, stop; then a self-contained
# `--servers 3 test-quick`. Asserts the results (100 successful messages spread over
# 5 resp. 3 servers), the log archive, and that no server process is left.
# Docker backend, where an engine answers: the compose test-quick, then asserts the
# result and that no container or network of the project is left.
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
STARTED_DOCKER=0

step() { printf '\n\033[1m--- e2e: %s\033[0m\n' "$*"; }
fail() { printf '\033[31mFAIL:\033[0m %s\n' "$*" >&2; exit 1; }
pass() { printf '\033[32mPASS:\033[0m %s\n' "$*"; }

# Stop whatever this check started, whatever happens.
cleanup() {
    local status=$?
    if ((status != 0)); then
        "$ST" --local stop >/dev/null 2>&1 || true
        ((STARTED_DOCKER == 0)) || "$ST" --docker stop >/dev/null 2>&1 || true
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

# Asserts a result: $1 file, $2 expected successful messages, $3 expected servers.
check_result() {
    local file=$1 messages=$2 servers=$3
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$file" "$messages" "$servers" <<'EOF' || fail "result $file does not hold what it should"
import json, sys
path, messages, servers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.load(open(path))
m = r["metrics"]
problems = []
if m["successful_messages"] != messages:
    problems.append(f"successful_messages = {m['successful_messages']}, want {messages}")
if m["failed_messages"] != 0:
    problems.append(f"failed_messages = {m['failed_messages']}: {m.get('error_breakdown')}")
if len(r["servers"]) != servers:
    problems.append(f"{len(r['servers'])} servers, want {servers}")
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
        jq -e --argjson n "$messages" --argjson s "$servers" \
            '.metrics.successful_messages == $n and .metrics.failed_messages == 0
             and (.servers | length) == $s and (.per_server | length) == $s
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
    pass "no server process left (pids: $(echo $pids))"
}

step "release build"
cargo build --release -p server -p loadgen -p analyze

mkdir -p results
marker="$(mktemp "${TMPDIR:-/tmp}/stampede-e2e.XXXXXX")"

step "local: start, test-quick, logs, stop"
"$ST" --local start
pids="$(awk '{print $2}' "$STAMPEDE_STATE_DIR/servers.pid")"
[[ "$(echo "$pids" | wc -w)" == 5 ]] || fail "start did not record 5 server processes"
"$ST" --local test-quick
check_result "$(result_since "$marker" quick)" 100 5
"$ST" --local logs
# The archive of the `logs` verb is <stamp>-logs.tar.gz (a test's is <stamp>-<test>-logs).
archive="$(find results -maxdepth 1 -name '*[0-9]-logs.tar.gz' -newer "$marker" | sort | tail -n 1)"
[[ -n "$archive" ]] || fail "logs wrote no results/*-logs.tar.gz"
[[ "$(tar -tzf "$archive" | grep -c 'server[0-9]*-logs/')" -ge 5 ]] || fail "$archive lacks server logs"
pass "logs archive $archive"
"$ST" --local stop
check_no_process "$pids"

step "local: --servers 3 test-quick (starts and stops its own servers)"
touch "$marker"
"$ST" --local --servers 3 test-quick
check_result "$(result_since "$marker" quick)" 100 3
[[ ! -s "$STAMPEDE_STATE_DIR/servers.pid" ]] || fail "test-quick left its servers running"
pass "test-quick stopped the servers it started"

if command -v docker >/dev/null 2>&1 && timeout 5 docker info >/dev/null 2>&1 &&
    { docker compose version >/dev/null 2>&1 || docker-compose version >/dev/null 2>&1; }; then
    step "docker: test-quick (compose), then stop"
    touch "$marker"
    STARTED_DOCKER=1
    "$ST" --docker test-quick
    file="$(result_since "$marker" quick)"
    check_result "$file" 100 5
    if command -v python3 >/dev/null 2>&1; then
        python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
want = ["smtp-server-%d" % n for n in range(1, 6)]
res = r.get("resources", {})
if sorted(res) != want:
    sys.exit("resources: %s, want %s" % (sorted(res), want))
# Even a run shorter than the engine'"'"'s 1 s stats tick keeps one sample per server.
bad = [k for k, v in res.items() if not v or not all(s["memory_bytes"] > 0 for s in v)]
sys.exit("no memory sample for %s" % bad if bad else 0)
' "$file" || fail "the Docker result does not carry the five containers' resource samples"
        pass "resources section holds samples of the five server containers"
    fi
    "$ST" --docker stop
    left="$(docker ps -aq --filter label=com.docker.compose.project=stampede)"
    [[ -z "$left" ]] || fail "containers left after stop: $left"
    ! docker network inspect stampede_stampede >/dev/null 2>&1 || fail "network stampede_stampede left after stop"
    pass "no container or network of the project left"
else
    step "docker: skipped (no Docker engine or compose answers)"
fi

rm -f "$marker"
step "all stress-test end-to-end checks passed"
