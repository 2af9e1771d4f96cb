#!/usr/bin/env bash
# End-to-end check of the one-command stress test (called from .ci/run).
#
# The README's command, verbatim: `./scripts/stress-test.sh test-quick` with the
# automatic backend, default ports, project and state directory, run only when
# 2525-2529 and 8081-8085 are free and no container of the compose project
# `stampede` exists (otherwise a visible skip naming the reason): a person's stack
# is never used, stopped or removed.
# Options: a bad --cooldown, --servers, --messages, --tls, --slo or --soak-duration,
# before or after the verb, fails at once with exit 2 naming the option, before any
# server starts.
# Settings: docker/stress-test.toml and .env agree; so do their TLS variant
# docker/stress-test-tls.toml and .env, which differ from the plain pair only in TLS;
# so do the limits profile's docker/stress-test-limits.toml and .env.
# TLS (local backend, and Docker where an engine answers): `--tls starttls test-burst
# --messages 200` and `--tls implicit test-quick`, certificate checking on (the
# servers' own CAs): every message succeeds over TLS, the result's `tls` key and
# `tls` phase hold the handshakes; a --tls test finding servers started without TLS
# stops instead of measuring plaintext.
# Local backend: start 5 servers, status, test-quick, logs, test-burst/-mixed
# (--messages), test-sustained (--duration), test-spike --duration 6s (the load
# shape's five stages scaled to 6 s), run-custom, `test-quick --servers 3
# --local` (options after the verb: the running servers are scaled to 3 and stay
# up), stop; a self-contained `--servers 3 test-quick`; test-all --cooldown; Ctrl-C
# (SIGINT to the script's process group) in the middle of a test; clean;
# scripts/analyze-results.sh. Asserts the results, the log archive, and that no
# server process is left.
# Docker backend, where an engine answers, under its own compose project
# (stampede-e2e: its own image, network, container names and ports): the compose
# file is read without a warning; test-quick; `start --servers 2`, status, the
# containers' CPU and memory limits, `test-quick --servers 3` scaling them to 3;
# then asserts the results and that no container, network or image of the project
# is left. Without an engine the Docker part is a skip naming the reason, and a
# failure with STAMPEDE_REQUIRE_DOCKER=1.
#
# Needs only cargo (release binaries are built here) and python3 or jq for the JSON
# checks. Takes two to three minutes once the release build is done.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
ST="$ROOT/scripts/stress-test.sh"

# The servers of this check use their own ports, compose project and state
# directory, so that a stack a developer has running (local or Docker) neither
# disturbs the check nor gets stopped by it.
export STAMPEDE_SMTP_BASE_PORT="${STAMPEDE_SMTP_BASE_PORT:-22525}"
export STAMPEDE_ADMIN_BASE_PORT="${STAMPEDE_ADMIN_BASE_PORT:-28081}"
export STAMPEDE_PROJECT=stampede-e2e
export STAMPEDE_COOLDOWN=0
export STAMPEDE_STATE_DIR="$ROOT/results/.stampede-e2e"
STARTED_DOCKER=0   # 1 while the Docker part runs
VERBATIM_DOCKER=0  # 1 while the README's command may hold containers of `stampede`
DEFAULT_IMAGE_EXISTED=1  # 0 when stampede:local was absent before the README's command

step() { printf '\n\033[1m--- e2e (%d s): %s\033[0m\n' "$SECONDS" "$*"; }
fail() { printf '\033[31mFAIL:\033[0m %s\n' "$*" >&2; exit 1; }
pass() { printf '\033[32mPASS:\033[0m %s\n' "$*"; }
skip() { printf '\033[33mSKIP:\033[0m %s\n' "$*"; }

# Stop whatever this check started, whatever happens.
cleanup() {
    local status=$?
    if ((status != 0)); then
        "$ST" --local stop >/dev/null 2>&1 || true
        # Leave the engine as it was: the project's containers, network and image go.
        ((STARTED_DOCKER == 0)) || "$ST" --docker clean >/dev/null 2>&1 || true
    fi
    if ((VERBATIM_DOCKER == 1)); then
        # Only reached when no container of `stampede` existed before: all are ours.
        docker ps -aq --filter label=com.docker.compose.project=stampede | xargs -r docker rm -f >/dev/null 2>&1 || true
        docker network rm stampede_stampede >/dev/null 2>&1 || true
    fi
    if ((DEFAULT_IMAGE_EXISTED == 0)); then
        docker image rm stampede:local >/dev/null 2>&1 || true
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

# Asserts that a Docker result ($1) carries memory samples of exactly the containers
# <prefix>smtp-server-1..$2 ($3: the container prefix of the project, default none).
check_resources() {
    command -v python3 >/dev/null 2>&1 || return 0
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
want = ["%ssmtp-server-%d" % (sys.argv[3], n) for n in range(1, int(sys.argv[2]) + 1)]
res = r.get("resources", {})
if sorted(res) != want:
    sys.exit("resources: %s, want %s" % (sorted(res), want))
# Even a run shorter than the engine'"'"'s 1 s stats tick keeps one sample per server.
bad = [k for k, v in res.items() if not v or not all(s["memory_bytes"] > 0 for s in v)]
sys.exit("no memory sample for %s" % bad if bad else 0)
' "$1" "$2" "${3:-}" || fail "the Docker result does not carry the $2 containers' resource samples"
    pass "resources section holds samples of the $2 server containers"
}

# Asserts that a result ($1) ran over TLS in mode $2 with one handshake per message
# (the named tests send one message per connection), and has the tls phase.
check_tls_result() {
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
mode = sys.argv[2]
tls = r.get("tls") or {}
m = r["metrics"]
problems = []
if tls.get("mode") != mode:
    problems.append("tls.mode %r, want %r" % (tls.get("mode"), mode))
if tls.get("handshakes") != m["successful_messages"]:
    problems.append("tls.handshakes %r, want one per message (%d)" % (tls.get("handshakes"), m["successful_messages"]))
if sum((tls.get("versions") or {}).values()) != tls.get("handshakes"):
    problems.append("tls.versions %r do not add up to the handshakes" % tls.get("versions"))
if not ((m.get("phases_ms") or {}).get("tls") or {}).get("p50", 0) > 0:
    problems.append("no tls phase timed in metrics.phases_ms")
print("  tls: %s" % json.dumps(tls))
sys.exit("; ".join(problems) if problems else 0)
' "$1" "$2" || fail "$1 does not show a $2 run"
    pass "$1: every message over $2 TLS, the certificates checked against the servers' CAs"
}

# Asserts a result's test type ($2) and, when given, its size mix ($3).
check_test_type() {
    command -v python3 >/dev/null 2>&1 || return 0
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
name = r["run"]["name"]
if name != sys.argv[2]:
    sys.exit("test type %r, want %r" % (name, sys.argv[2]))
' "$1" "$2" || fail "$1 is not a $2 result"
}

# Which of the README's default ports (2525-2529, 8081-8085) something listens on.
default_ports_busy() {
    local port busy=()
    for port in 2525 2526 2527 2528 2529 8081 8082 8083 8084 8085; do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && busy+=("$port")
    done
    echo "${busy[*]}"
}

COMPOSE=()
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif docker-compose version >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
fi
# Why the Docker part cannot run here; empty when it can.
DOCKER_SKIP=""
if ! command -v docker >/dev/null 2>&1; then
    DOCKER_SKIP="docker is not installed"
elif ! timeout 5 docker info >/dev/null 2>&1; then
    DOCKER_SKIP="no Docker engine answers ('docker info' failed or took over 5 s)"
elif ((${#COMPOSE[@]} == 0)); then
    DOCKER_SKIP="neither 'docker compose' nor 'docker-compose' is installed"
fi

step "release build"
cargo build --release -p server -p loadgen -p analyze -p units

mkdir -p results
marker="$(mktemp "${TMPDIR:-/tmp}/stampede-e2e.XXXXXX")"

step "the README's command, verbatim: ./scripts/stress-test.sh test-quick"
default_busy="$(default_ports_busy)"
if [[ -n "$default_busy" ]]; then
    skip "the README's command: the default ports $default_busy are in use (a stack of yours?); it is left alone"
elif [[ -z "$DOCKER_SKIP" && -n "$(docker ps -aq --filter label=com.docker.compose.project=stampede)" ]]; then
    skip "the README's command: containers of the compose project 'stampede' exist (a stack of yours?); they are left alone"
else
    if [[ -z "$DOCKER_SKIP" ]]; then
        docker image inspect stampede:local >/dev/null 2>&1 || DEFAULT_IMAGE_EXISTED=0
        VERBATIM_DOCKER=1
    fi
    # None of this check's settings (nor the caller's): the README's defaults.
    unset_env=()
    for var in $(compgen -e | grep '^STAMPEDE_' || true); do unset_env+=(-u "$var"); done
    touch "$marker"
    env "${unset_env[@]}" ./scripts/stress-test.sh test-quick
    check_result "$(result_since "$marker" quick)" 100 5
    [[ -z "$(default_ports_busy)" ]] || fail "the README's test-quick left servers listening on $(default_ports_busy)"
    if ((VERBATIM_DOCKER == 1)); then
        [[ -z "$(docker ps -aq --filter label=com.docker.compose.project=stampede)" ]] ||
            fail "the README's test-quick left containers of the project stampede"
        ((DEFAULT_IMAGE_EXISTED == 1)) || docker image rm stampede:local >/dev/null
        DEFAULT_IMAGE_EXISTED=1
        VERBATIM_DOCKER=0
    fi
    pass "the README's test-quick ran with its defaults and left no server running"
fi

step "the stress settings: docker/stress-test.toml and .env agree; so do the TLS pair, which adds only TLS, and the limits pair"
python3 - docker/stress-test.toml docker/stress-test.env docker/stress-test-tls.toml docker/stress-test-tls.env \
    docker/stress-test-limits.toml docker/stress-test-limits.env <<'EOF' ||
import sys, tomllib

def read_toml(path):
    out = {}
    for section, keys in tomllib.load(open(path, "rb")).items():
        for key, value in keys.items():
            # TOML's true is the env file's true.
            out["SMTP_" + key.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return out

def read_env(path):
    out = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out

def differences(name_a, a, name_b, b):
    return [f"{k}: {name_a} {a.get(k)!r}, {name_b} {b.get(k)!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

toml, env, tls_toml, tls_env = (read_toml(sys.argv[1]), read_env(sys.argv[2]),
                                read_toml(sys.argv[3]), read_env(sys.argv[4]))
limits_toml, limits_env = read_toml(sys.argv[5]), read_env(sys.argv[6])
# Per deployment, set by the launchers (see docker/stress-test-tls.toml): only the
# containers' env file holds them.
PER_DEPLOYMENT = {"SMTP_TLS_CA_OUT", "SMTP_IMPLICIT_TLS_PORT"}
problems = differences("stress-test.toml", toml, "stress-test.env", env)
problems += differences("stress-test-tls.toml", tls_toml, "stress-test-tls.env",
                        {k: v for k, v in tls_env.items() if k not in PER_DEPLOYMENT})
problems += [f"stress-test-tls.env lacks {k}" for k in sorted(PER_DEPLOYMENT - set(tls_env))]
is_tls = lambda k: k.startswith("SMTP_TLS_") or k in PER_DEPLOYMENT
problems += differences("stress-test.toml", toml, "stress-test-tls.toml (outside TLS)",
                        {k: v for k, v in tls_toml.items() if not is_tls(k)})
# The limits profile stands alone (its values are meant to differ from the stress
# ones); only its two files must agree.
problems += differences("stress-test-limits.toml", limits_toml, "stress-test-limits.env", limits_env)
if tls_toml.get("SMTP_TLS_SELF_SIGNED") != "true":
    problems.append("stress-test-tls.toml does not set tls_self_signed = true")
for p in problems:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
    fail "the stress settings files differ (docker/stress-test{,-tls,-limits}.{toml,env}: change them together)"
pass "docker/stress-test.toml and .env hold the same settings; docker/stress-test-tls.toml and .env too, the plain ones plus TLS; docker/stress-test-limits.toml and .env too"

step "the README's manual example: smtp-server --config docker/stress-test.toml takes a sustained run from one address"
# 150 connections in 3 s from one address: more than the production defaults'
# 100 a minute per IP, which would answer 421 to a third of them.
server_log="$(mktemp "${TMPDIR:-/tmp}/stampede-e2e-server.XXXXXX")"
target/release/smtp-server --config docker/stress-test.toml --bind 127.0.0.1 --port 0 --admin-port 0 >"$server_log" 2>&1 &
manual_server=$!
for _ in $(seq 1 50); do
    grep -q 'smtp_addr=' "$server_log" && break
    sleep 0.1
done
manual_addr="$(grep -o 'smtp_addr=[0-9.:]*' "$server_log" | head -n 1 | cut -d= -f2)"
[[ -n "$manual_addr" ]] || { kill "$manual_server"; fail "smtp-server --config docker/stress-test.toml did not start: $(cat "$server_log")"; }
manual_result="results/e2e-manual-$$.json"
target/release/loadgen --servers "$manual_addr" --mode sustained --duration 3s --rate 50 --size medium \
    --test-type manual --quiet --output "$manual_result"
kill -TERM "$manual_server"
wait "$manual_server" || true
rm -f "$server_log"
check_result "$manual_result" 150 1
rm -f "$manual_result"

step "options: bad values are refused up front, before or after the verb"
check_refused --cooldown --local --cooldown abc test-all
check_refused --cooldown --local test-all --cooldown abc
check_refused --cooldown test-quick --local --cooldown=1x
check_refused --servers --local test-quick --servers 0
check_refused --servers test-quick --local --servers=abc
check_refused --servers test-quick --local --servers
check_refused --messages --local test-burst --messages 0
check_refused --duration --local test-sustained --duration=1x
check_refused --tls --local --tls tls test-quick
check_refused --tls test-quick --local --tls=STARTTLS
check_refused --tls test-quick --local --tls
check_refused --slo --local test-capacity --slo 'p99 <= 500ms'
check_refused --slo --local --slo= test-capacity
check_refused --soak-duration --local test-soak --soak-duration 10x
check_refused --duration --local test-spike --duration=-1s

step "messages: --local build, help and README on run-custom"
build_out="$("$ST" --local build 2>&1)"
{ grep -q -- '--local: skipping the image' <<<"$build_out" && ! grep -q 'no Docker engine answers' <<<"$build_out"; } ||
    fail "--local build does not say that --local skips the image: $build_out"
pass "--local build: $(grep -- '--local' <<<"$build_out")"
help_run_custom="$("$ST" help | sed -n '/^  run-custom/,/^  help/p')"
# shellcheck disable=SC2016 # the backquotes are README text
readme_run_custom="$(grep '^| `run-custom ARGS`' README.md)"
# The flags run_loadgen adds when they are not given.
for flag in --servers --output --test-type --port --monitor-containers --tls-ca; do
    grep -q -- "$flag" <<<"$help_run_custom" || fail "help does not say that run-custom adds $flag"
    grep -q -- "$flag" <<<"$readme_run_custom" || fail "README does not say that run-custom adds $flag"
done
pass "help and README name the same flags that run-custom adds"

step "local: start, status, the tests (shortened), run-custom, test-quick --servers 3 (scales), stop"
"$ST" --local start
pids="$(recorded_pids)"
[[ "$(echo "$pids" | wc -w)" == 5 ]] || fail "start did not record 5 server processes"
status_out="$("$ST" --local status)"
echo "$status_out"
[[ "$(grep -c ' up ' <<<"$status_out")" == 5 ]] || fail "status does not show the 5 servers up"
pass "status shows 5 servers up"
"$ST" --local test-quick
quick5="$(result_since "$marker" quick)"
check_result "$quick5" 100 5
"$ST" --local logs
# The archive of the `logs` verb is <stamp>-logs.tar.gz (a test's is <stamp>-<test>-logs).
archive="$(find results -maxdepth 1 -name '*[0-9]-logs.tar.gz' -newer "$marker" | sort | tail -n 1)"
[[ -n "$archive" ]] || fail "logs wrote no results/*-logs.tar.gz"
[[ "$(tar -tzf "$archive" | grep -c 'server[0-9]*-logs/')" -ge 5 ]] || fail "$archive lacks server logs"
pass "logs archive $archive"
"$ST" --local test-burst --messages 200
check_result "$(result_since "$marker" burst)" 200 5
"$ST" --local test-mixed --messages 60
check_result "$(result_since "$marker" mixed)" 60 5
# 50 messages/s for 2 s: 100 messages on the timetable.
"$ST" --local test-sustained --duration 2s
check_result "$(result_since "$marker" sustained)" 100 5
# One load shape, shortened: test-spike --duration 6s scales its 60 s curve by 0.1
# (2 s at 200/s, 1 s at 4000/s, 3 s at 200/s: 5000 sends on the timetable), so a
# shortened shape still runs every stage of its curve.
"$ST" --local test-spike --duration 6s
spike="$(result_since "$marker" spike)"
check_result "$spike" 5000 5
check_test_type "$spike" spike
python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
stages = [(s["rate_from"], s["rate_to"], round(s["end_s"] - s["start_s"], 3), s["sent"]) for s in r.get("stages") or []]
want = [(200, 200, 2.0, 400), (200, 4000, 0.0, 0), (4000, 4000, 1.0, 4000), (4000, 200, 0.0, 0), (200, 200, 3.0, 600)]
print("  stages (from, to, seconds, sent):", stages)
sys.exit(0 if stages == want else "test-spike --duration 6s ran the stages %s, want %s" % (stages, want))
' "$spike" || fail "test-spike --duration 6s did not run the spike curve scaled to 6 s"
pass "test-spike --duration 6s: the spike curve scaled to 6 s, every stage on its timetable"
"$ST" --local run-custom --mode burst --messages 50 --workers 5 --size small
custom="$(result_since "$marker" custom)"
check_result "$custom" 50 5
check_test_type "$custom" custom
# Options after the verb: the five running servers are scaled to the three asked for.
touch "$marker"
"$ST" test-quick --servers 3 --local
quick3="$(result_since "$marker" quick)"
check_result "$quick3" 100 3 \
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
touch "$marker"
logs_out="$("$ST" --local logs 2>&1)"
{ grep -q 'no local server is running' <<<"$logs_out" && ! grep -q 'ok logs' <<<"$logs_out"; } ||
    fail "--local logs with nothing running does not say so: $logs_out"
[[ -z "$(find results -maxdepth 1 -name '*-logs.tar.gz' -newer "$marker" -print -quit)" ]] ||
    fail "--local logs with nothing running archived stale logs"
pass "--local logs with nothing running says so and archives nothing"

step "local: --servers 3 test-quick (starts and stops its own servers)"
touch "$marker"
"$ST" --local --servers 3 test-quick
quick3b="$(result_since "$marker" quick)"
check_result "$quick3b" 100 3
[[ ! -s "$STAMPEDE_STATE_DIR/servers.pid" ]] || fail "test-quick left its servers running"
pass "test-quick stopped the servers it started"

step "local: --servers 1 test-limits (the limits suite against the limits profile)"
touch "$marker"
"$ST" --local --servers 1 test-limits || fail "test-limits failed against smtp-server with its own limits profile"
limits_doc="$(find results -maxdepth 1 -name '*-limits-server1.json' -newer "$marker" -print -quit)"
[[ -n "$limits_doc" ]] || fail "test-limits wrote no results/*-limits-server1.json"
python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["schema"] == "stampede.limits.v1", d["schema"]
verdicts = [c["verdict"] for c in d["cases"]]
print("  cases:", len(verdicts), "verdicts:", verdicts)
sys.exit(0 if len(verdicts) == 10 and all(v == "pass" for v in verdicts) else "want 10 cases, all passed")
' "$limits_doc" || fail "$limits_doc: not every case passed"
[[ ! -s "$STAMPEDE_STATE_DIR/servers.pid" ]] || fail "test-limits left its servers running"
pass "test-limits: all ten cases passed against the limits profile ($limits_doc)"

step "local: --tls starttls test-burst --messages 200, --tls implicit test-quick (certificates checked)"
touch "$marker"
"$ST" --local --tls starttls test-burst --messages 200
tls_burst="$(result_since "$marker" burst)"
check_result "$tls_burst" 200 5
check_tls_result "$tls_burst" starttls
[[ ! -s "$STAMPEDE_STATE_DIR/servers.pid" ]] || fail "the TLS test left its servers running"
touch "$marker"
"$ST" test-quick --local --servers 2 --tls implicit
tls_quick="$(result_since "$marker" quick)"
check_result "$tls_quick" 100 2
check_tls_result "$tls_quick" implicit
# The implicit ports are the servers' own (free ports), not the SMTP ones.
python3 -c '
import json, sys
servers = json.load(open(sys.argv[1]))["servers"]
smtp = {"127.0.0.1:%d" % (int(sys.argv[2]) + i) for i in range(2)}
sys.exit("implicit run went to the SMTP ports: %s" % servers if smtp & set(servers) else 0)
' "$tls_quick" "$STAMPEDE_SMTP_BASE_PORT" || fail "the implicit run did not target the implicit-TLS ports"
pass "the implicit run targeted the servers' implicit-TLS ports"
# Servers started without TLS are not silently measured in plaintext by a --tls test.
"$ST" --local --servers 1 start >/dev/null
status=0
mismatch="$("$ST" --local --tls starttls test-quick 2>&1)" || status=$?
"$ST" --local stop >/dev/null
{ ((status == 1)) && grep -q 'started without TLS' <<<"$mismatch"; } ||
    fail "--tls starttls with servers started without TLS exited $status: $mismatch"
pass "--tls with servers started without TLS stops: $(grep 'started without TLS' <<<"$mismatch")"

step "local: test-all --cooldown 2s (shortened), ending with one table of the five"
touch "$marker"
all_out="$(mktemp "${TMPDIR:-/tmp}/stampede-e2e-all.XXXXXX")"
started=$SECONDS
"$ST" --local --servers 2 test-all --cooldown 2s --messages 50 --duration 1s | tee "$all_out"
elapsed=$((SECONDS - started))
[[ "$(grep -c 'cooldown 2 s' "$all_out")" == 4 ]] || fail "test-all did not pause 2 s four times (--cooldown 2s)"
((elapsed >= 8)) || fail "test-all took $elapsed s, less than its four 2 s cooldowns"
closing_table="$(sed -n '/test-all: 5 tests done/,$p' "$all_out")"
for test in quick burst sustained heavy mixed; do
    file="$(result_since "$marker" "$test")"
    check_result "$file" 50 2
    grep -q "│ $(basename "$file" .json) " <<<"$closing_table" || fail "test-all's closing table has no row for $file"
done
[[ "$(grep -c '^│ [0-9]' <<<"$closing_table")" == 5 ]] || fail "test-all's closing table does not hold exactly the five results: $closing_table"
pass "test-all paused 2 s between its tests (${elapsed} s in all) and ended with one table of its five results"
rm -f "$all_out"

step "local: Ctrl-C (SIGINT to the script's process group) stops the servers the test started"
ctrlc_out="$(mktemp "${TMPDIR:-/tmp}/stampede-e2e-ctrlc.XXXXXX")"
# Job control gives the script its own process group, as a terminal would, and keeps
# SIGINT from being ignored in a background job.
set -m
"$ST" --local test-sustained --duration 60s >"$ctrlc_out" 2>&1 &
group=$!
set +m
for _ in $(seq 1 300); do
    grep -q '==> loadgen' "$ctrlc_out" && break
    sleep 0.2
done
grep -q '==> loadgen' "$ctrlc_out" || { cat "$ctrlc_out"; fail "test-sustained did not reach loadgen within 60 s"; }
sleep 1
ctrlc_pids="$(recorded_pids)"
kill -INT -- "-$group"
status=0
wait "$group" || status=$?
cat "$ctrlc_out"
((status == 130)) || fail "the interrupted test exited $status, want 130"
check_no_process "$ctrlc_pids"
grep -q 'servers stopped' "$ctrlc_out" || fail "the interrupted test did not say that it stopped the servers"
rm -f "$ctrlc_out"

step "scripts/analyze-results.sh: list, summary, analyze, chart, compare (both forms)"
AR=scripts/analyze-results.sh
"$AR" list | grep -q "$(basename "$quick5")" || fail "analyze-results.sh list does not list $quick5"
"$AR" summary | grep -q "$(basename "$quick5" .json)" || fail "analyze-results.sh summary has no row for $quick5"
"$AR" analyze "$quick5" | grep -q 'messages' || fail "analyze-results.sh analyze shows no figures"
charts="$(mktemp -d "${TMPDIR:-/tmp}/stampede-e2e-charts.XXXXXX")"
"$AR" chart "$quick5" "$charts" >/dev/null
[[ -n "$(find "$charts" -name '*.png' -print -quit)" ]] || fail "analyze-results.sh chart wrote no PNG into $charts"
rm -rf "$charts"
# compare exits 1 on a regression, which two runs on a shared machine may show;
# 2 (a usage error) is what must not happen.
for form in "$quick5 $quick3" "--base $quick5 $quick3b --new $quick3"; do
    status=0
    # shellcheck disable=SC2086
    out="$("$AR" compare $form --format markdown 2>&1)" || status=$?
    ((status == 0 || status == 1)) || fail "analyze-results.sh compare $form exited $status: $out"
    grep -q '^|' <<<"$out" || fail "analyze-results.sh compare $form printed no table: $out"
    pass "analyze-results.sh compare $form -> exit $status with a table"
done
status=0
out="$("$AR" compare results/no-such-file.json "$quick5" 2>&1)" || status=$?
{ ((status == 2)) && grep -q 'no-such-file.json' <<<"$out"; } ||
    fail "analyze-results.sh compare with a missing file exited $status: $out"
pass "analyze-results.sh compare names a missing file (exit 2)"

step "local: clean removes the state directory"
mkdir -p "$STAMPEDE_STATE_DIR"
"$ST" --local clean
[[ ! -e "$STAMPEDE_STATE_DIR" ]] || fail "clean left $STAMPEDE_STATE_DIR"
pass "clean removed $STAMPEDE_STATE_DIR"

# Containers of this check's compose project, running or not.
project_containers() { docker ps -aq --filter "label=com.docker.compose.project=$STAMPEDE_PROJECT"; }
PREFIX="$STAMPEDE_PROJECT-"

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

if [[ -z "$DOCKER_SKIP" ]]; then
    [[ -z "$(project_containers)" ]] || fail "containers of the project $STAMPEDE_PROJECT exist before the check: $(project_containers)"
    STARTED_DOCKER=1

    step "docker ($STAMPEDE_PROJECT): test-quick (compose), then stop"
    touch "$marker"
    "$ST" --docker test-quick
    file="$(result_since "$marker" quick)"
    check_result "$file" 100 5
    check_resources "$file" 5 "$PREFIX"
    python3 -c '
import json, sys
run = json.load(open(sys.argv[1]))["run"]
want = {"git_sha": sys.argv[2], "hostname": sys.argv[3], "cpus": int(sys.argv[4])}
got = {"git_sha": run["git_sha"], "hostname": run["host"]["hostname"], "cpus": run["host"]["cpus"]}
sys.exit(0 if got == want else "run provenance %s, want %s" % (got, want))
' "$file" "$(git rev-parse HEAD)" "$(uname -n)" "$(getconf _NPROCESSORS_ONLN)" ||
        fail "the Docker result does not carry the host's git revision, name and CPU count"
    pass "the Docker result carries the host's git revision, name and CPU count"
    [[ -z "$(project_containers)" ]] || fail "test-quick left containers: $(project_containers)"

    step "docker ($STAMPEDE_PROJECT): --tls starttls test-burst --messages 200, --tls implicit test-quick (port 465)"
    touch "$marker"
    "$ST" --docker --tls starttls test-burst --messages 200
    file="$(result_since "$marker" burst)"
    check_result "$file" 200 5
    check_tls_result "$file" starttls
    touch "$marker"
    "$ST" --docker --servers 2 --tls implicit test-quick
    file="$(result_since "$marker" quick)"
    check_result "$file" 100 2
    check_tls_result "$file" implicit
    [[ -z "$(project_containers)" ]] || fail "the TLS tests left containers: $(project_containers)"

    step "docker ($STAMPEDE_PROJECT): start --servers 2, status, limits, test-quick --servers 3 (scales), stop"
    "$ST" --docker start --servers 2
    status_out="$("$ST" status)"
    echo "$status_out"
    for name in "${PREFIX}smtp-server-1" "${PREFIX}smtp-server-2"; do
        grep -q "^$name " <<<"$status_out" || fail "status does not show $name"
        limits="$(docker inspect -f '{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}' "$name")"
        [[ "$limits" == "1000000000 536870912" ]] ||
            fail "$name runs with NanoCpus/Memory $limits, want 1 CPU and 512 MiB from the compose file"
    done
    pass "status shows both containers; they run with the compose file's 1 CPU and 512 MiB"
    touch "$marker"
    "$ST" test-quick --servers 3
    file="$(result_since "$marker" quick)"
    check_result "$file" 100 3 smtp-server-1,smtp-server-2,smtp-server-3
    check_resources "$file" 3 "$PREFIX"
    running_now="$(docker ps -q --filter "label=com.docker.compose.project=$STAMPEDE_PROJECT" | wc -l)"
    [[ "$running_now" == 3 ]] || fail "$running_now containers run after scaling to 3, want 3"
    pass "the running containers were scaled to 3 and stay up"
    "$ST" --docker stop
    [[ -z "$(project_containers)" ]] || fail "containers left after stop: $(project_containers)"
    ! docker network inspect "${STAMPEDE_PROJECT}_stampede" >/dev/null 2>&1 ||
        fail "network ${STAMPEDE_PROJECT}_stampede left after stop"
    pass "no container or network of the project left"
    step "docker ($STAMPEDE_PROJECT): a start that is not healthy in time names the saved logs"
    # The health check first runs 2 s after a container starts: 1 s is too short.
    touch "$marker"
    status=0
    health_err="$(STAMPEDE_HEALTH_TIMEOUT=1s "$ST" --docker --servers 1 start 2>&1 >/dev/null)" || status=$?
    echo "$health_err"
    if ((status == 0)); then
        "$ST" --docker stop >/dev/null
        skip "the container was healthy within 1 s; the failure message was not exercised"
    else
        saved="$(grep -o 'results/[0-9-]*-failed-logs.tar.gz' <<<"$health_err" | head -n 1)"
        [[ -n "$saved" && -f "$saved" ]] || fail "the failed start does not name a saved log archive"
        tar -tzf "$saved" | grep -q 'server1-logs/smtp-server-1.log' || fail "$saved lacks the server's log"
        grep -q "last lines of the log of ${PREFIX}smtp-server-1" <<<"$health_err" || fail "the failed start printed no log lines"
        ! grep -q "stress-test.sh logs" <<<"$health_err" || fail "the failed start points at 'logs' after removing the containers"
        [[ -z "$(project_containers)" ]] || fail "the failed start left containers: $(project_containers)"
        pass "the failed start printed the last log lines, saved $saved and removed its container"
    fi
    "$ST" --docker clean >/dev/null
    ! docker image inspect "$STAMPEDE_PROJECT:local" >/dev/null 2>&1 || fail "the image $STAMPEDE_PROJECT:local is left after clean"
    pass "clean removed the project's image"
    STARTED_DOCKER=0
elif [[ "${STAMPEDE_REQUIRE_DOCKER:-0}" == 1 ]]; then
    fail "the Docker part cannot run: $DOCKER_SKIP (STAMPEDE_REQUIRE_DOCKER=1)"
else
    skip "the Docker part: $DOCKER_SKIP (STAMPEDE_REQUIRE_DOCKER=1 makes this a failure)"
fi

rm -f "$marker"
step "all stress-test end-to-end checks passed"
